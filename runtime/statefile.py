"""The ``--state`` file on disk, apart from what its rows hold: its name, its lock, its keys.

What :class:`runtime.store.StateStore` needs before SQLite opens the file: a path that names
a regular file (never ``:memory:``, a URI or a device), an exclusive lock for the run, sensor
keys stored losslessly, the words that name a model in a refusal, and, where the file cannot
be written, why (a full disk, a file size limit) and the empty ``-wal``/``-shm`` a refused
open leaves beside it.
"""

from __future__ import annotations

import contextlib
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
    """The sensor key a stored key (:func:`db_key`) came from.

    The file is untrusted: a key :func:`db_key` never stores (a BLOB that is not the bytes of
    a key with a lone surrogate, a number, NULL) is a ValueError saying what it is.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        try:
            key = value.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise ValueError(f"its key is a BLOB of bytes no sensor key has "
                             f"(X'{value[:16].hex()}{'…' if len(value) > 16 else ''}')") from None
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return key
        # Valid UTF-8: db_key stores such a key as TEXT, so this BLOB is not one of its keys
        # (and would stand beside the TEXT row of the same sensor).
        raise ValueError(f"its key {key[:40]!r} is a BLOB, where lstm-run stores it as TEXT")
    raise ValueError(f"its key is {'NULL' if value is None else type(value).__name__}, not "
                     f"text")


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


# Less free space than this beside the file when a write fails: the disk is full. SQLite
# writes in pages and 32 KiB -shm regions; a WAL of one save can take far more.
FULL_BELOW = 1 << 20


def write_trouble(file: Path, said: str) -> tuple[str, str] | None:
    """Why a write beside ``file`` failed with an I/O error (``said``: the error's words),
    where it can be told: ``(what, todo)`` for a full disk (or no free inodes) or a file size limit (``ulimit -f``), else None.

    SQLite says SQLITE_IOERR, not SQLITE_FULL, where the disk fills while it sizes its
    ``-shm``, and where ``ulimit -f`` stops a write (EFBIG); it does not say the errno.
    """
    folder = file.parent
    try:
        fs = os.statvfs(folder)
    except (OSError, AttributeError):               # AttributeError: Windows
        fs = None
    if fs is not None:
        free = fs.f_bavail * fs.f_frsize
        if free < FULL_BELOW:
            return (f"the disk is full ({said}; {free // 1024} KiB free in {folder})",
                    "free space on it and start again")
        if fs.f_files and fs.f_favail == 0:
            return (f"the disk is full ({said}; no free inodes in {folder})",
                    "free inodes on it (delete files) and start again")
    try:
        import resource
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):      # pragma: no cover - Windows
        return None
    if limit != resource.RLIM_INFINITY:
        return (f"a file size limit stops the write ({said}; ulimit -f: {limit // 1024} KiB)",
                "raise the limit (ulimit -f unlimited; LimitFSIZE=infinity in a systemd "
                "unit) and start again")
    return None


def beside(file: Path) -> set[str]:
    """Which of ``file``'s ``-wal`` and ``-shm`` are there now (see :func:`remove_strays`)."""
    return {s for s in ("-wal", "-shm") if os.path.lexists(f"{file}{s}")}


def remove_strays(file: Path, had: set[str]) -> None:
    """Remove the ``-wal`` and ``-shm`` SQLite made beside ``file`` in an open that failed
    (a read-only open of a WAL database makes them; a full disk leaves them behind).

    Only files that were not there before (``had``, from :func:`beside`) and hold nothing:
    a ``-wal`` of 0 bytes (one with frames holds commits: it stays), and then a ``-shm`` no
    other connection has open (its index is rebuilt from the ``-wal``; SQLite holds a read
    lock on its byte 128, the "DMS" lock, while a connection has it mapped).
    """
    wal, shm = Path(f"{file}-wal"), Path(f"{file}-shm")
    with contextlib.suppress(OSError):
        if "-wal" not in had and wal.stat().st_size == 0:
            wal.unlink()
    if "-shm" in had or wal.exists() or not shm.exists():
        return
    try:
        import fcntl
    except ImportError:                             # pragma: no cover - Windows
        return
    with contextlib.suppress(OSError):
        fd = os.open(shm, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 128)   # no one else has it
            os.unlink(shm)
        finally:
            os.close(fd)
