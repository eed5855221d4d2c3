"""The ``--state`` file on disk, apart from what its rows hold: its name, its lock, its keys.

What :class:`runtime.store.StateStore` needs before SQLite opens the file: a path that names
a regular file (never ``:memory:``, a URI or a device), an exclusive lock for the run, sensor
keys stored losslessly, and the words that name a model in a refusal.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import SnapshotError


def db_key(key: str) -> str | bytes:
    """A sensor key as stored: text, or (a key no UTF-8 can hold, a lone surrogate from a JSON
    ``"\\ud800"``) the bytes of its ``surrogatepass`` encoding, a BLOB. Lossless both ways
    (:func:`py_key`), and a BLOB never equals a TEXT key in SQLite."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogatepass")
    return key


def py_key(value) -> str:
    """The sensor key a stored key (:func:`db_key`) came from."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogatepass")
    return str(value)


def backup_name(path: Path) -> Path:
    """Where ``--on-new-model fresh`` keeps an old state file: ``NAME.old-N`` beside it."""
    n = 1
    while (path.with_name(f"{path.name}.old-{n}")).exists():
        n += 1
    return path.with_name(f"{path.name}.old-{n}")


def model_words(model) -> str:
    """A model in words for a refusal: its file, fingerprint and Keras source."""
    src = model.info.source or {}
    made = f", exported from {src['file']}" if src.get("file") else ""
    return f"{model.name}, sha256 {model.fingerprint[:12]}…{made}"


def real_file(path: Path) -> Path:
    """The regular file a ``--state`` path names (symlinks followed), or SnapshotError.

    ``:memory:`` and ``file:`` URIs would keep nothing or something else than a file; a
    device (a symlink to /dev/null) would take SQLite's journal beside it.
    """
    name = str(path)
    if name == ":memory:" or name.lower().startswith("file:"):
        raise SnapshotError(f"the state file {name!r} is a SQLite name for a memory database "
                            f"or a URI, not a file: the state would not be kept; give a file "
                            f"path (./{name} for a file of that name)")
    real = Path(os.path.realpath(path))
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real
    except OSError as exc:
        raise SnapshotError(f"the state file {path} cannot be read ({exc.strerror}); check "
                            f"the path and its permissions") from None
    if not stat.S_ISREG(mode):
        raise SnapshotError(f"the state file {path} is not a regular file ({real} is a "
                            f"{'directory' if stat.S_ISDIR(mode) else 'device or pipe'}); "
                            f"give a file path")
    return real


def lock(file: Path, path: Path) -> int | None:
    """Hold an exclusive ``flock`` on the state file (created if missing); its descriptor.

    ``flock``, not SQLite's locks: those last a transaction, this lasts the run, and it
    leaves readers (``sqlite3 FILE``) free. Windows has no ``flock``: SQLite's locks only.
    """
    try:
        import fcntl
    except ImportError:                                # pragma: no cover - Windows
        return None
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise SnapshotError(f"the state file {path} cannot be opened for writing "
                            f"({exc.strerror}); make it and its folder writable, or give "
                            f"another --state file") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SnapshotError(f"the state file {path} is in use by another lstm-run; stop that "
                            f"one first, or give this one another --state file") from None
    return fd
