"""A stream's state in files: ``.npz`` snapshot files, and state databases read without a model.

A snapshot holds everything a stream needs to continue bit-identically (the fields are
:class:`runtime.state.StreamState`'s), and a fingerprint of the ONNX file, so that a snapshot
is never restored into another model. Files hold no pickles, readable by
``numpy.load(path, allow_pickle=False)`` anywhere: one JSON header naming the streams, and
each stream's state in the byte codec of :mod:`runtime.state` (a ``uint8`` array, CRC32
checked). Format-1 files (arrays per field) are read as they are.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import sqlite3
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import SnapshotError, counted
from .state import FORMAT, StreamState, from_v1_row

_HEADER = "header"  # the npz entry holding the JSON header
DATABASE = b"SQLite format 3\x00"    # the first 16 bytes of every SQLite database


class Snapshot(StreamState):
    """One stream's state, detached from any session (fields: :class:`~runtime.state.StreamState`).

    ``Stream.snapshot()`` makes one; ``model.stream(snapshot)`` continues from it.
    :meth:`to_bytes` gives it in the byte codec (CRC32 checked), :meth:`save` as a file.
    """

    def save(self, path) -> Path:
        """Write this snapshot to ``path`` (``.npz``), atomically; returns the path."""
        return save_snapshots(path, {"stream": self})

    @staticmethod
    def load(path) -> "Snapshot":
        """Read a snapshot written by :meth:`save` (or a one-stream :func:`save_snapshots`).

        ``path``: a file's path; bytes (:meth:`to_bytes`'s) go to :meth:`from_bytes`.
        """
        snaps = load_snapshots(path)
        if len(snaps) != 1:
            raise SnapshotError(f"{path} holds {len(snaps)} streams ({', '.join(map(str, snaps))}),"
                                f" expected one; read it with runtime.load_snapshots")
        return next(iter(snaps.values()))

    @classmethod
    def from_bytes(cls, data, where: str = "the stream state") -> "Snapshot":
        """Read :meth:`to_bytes`'s bytes, or the bytes of a one-stream file :meth:`save` wrote."""
        data = bytes(data)
        if not data.startswith(b"PK"):
            return super().from_bytes(data, where)
        snaps = load_snapshots(io.BytesIO(data))
        if len(snaps) != 1:
            raise SnapshotError(f"the snapshot bytes hold {len(snaps)} streams, expected one; "
                                f"read them with runtime.load_snapshots")
        return next(iter(snaps.values()))


def save_snapshots(path, snapshots: dict) -> Path:
    """Write many streams' snapshots to one ``.npz`` file, atomically.

    The file is written next to ``path`` under a temporary name and moved into place with
    :func:`os.replace`, so a reader never sees half a file and a crash leaves the old one.
    A new file gets the mode ``open()`` would give it (0666 less the umask); a file that is
    replaced keeps its mode.

    Parameters
    ----------
    path : where to write; written as given (no ``.npz`` is appended).
    snapshots : key -> :class:`Snapshot`; keys are turned into strings.

    Raises
    ------
    SnapshotError : a value is not a :class:`Snapshot`, or the file cannot be written (the
        message names the path and the reason); the old file, if any, is left as it was.
    """
    path = Path(path)
    arrays, headers = {}, []
    for i, (key, snap) in enumerate(snapshots.items()):
        if not isinstance(snap, StreamState):
            raise SnapshotError(f"snapshot {key!r} is a {type(snap).__name__}, expected a "
                                f"runtime.Snapshot (from Stream.snapshot())")
        headers.append({"key": str(key)})
        arrays[f"s{i}"] = np.frombuffer(snap.to_bytes(), np.uint8)
    arrays[_HEADER] = np.array(json.dumps({"format": FORMAT, "streams": headers}))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, arrays)
    except OSError as exc:
        reason = _reason(exc)
        for parent in (path.parent, *path.parent.parents):
            if parent.exists():
                if not parent.is_dir():
                    reason = f"{parent} is a file, not a folder"
                break
        raise SnapshotError(f"cannot write the snapshot file {path}: {reason}; check "
                            f"that its folder can be created and written to and that the disk "
                            f"has space, or save to another path") from None
    return path


def _write_atomically(path: Path, arrays: dict) -> None:
    """``np.savez`` into a temporary file beside ``path``, then :func:`os.replace` it there."""
    try:
        mode = os.stat(path).st_mode & 0o7777              # replacing a file: keep its mode
    except OSError:
        mode = None
    for _ in range(100):   # what tempfile.mkstemp does, without its 0600 mode
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)                           # the umask applies, as for open()
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.chmod(tmp, mode)
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_snapshots(path) -> dict[str, Snapshot]:
    """Read the snapshots :func:`save_snapshots` (or :meth:`Snapshot.save`) wrote.

    ``path`` may also be an ``lstm-run --state`` database (see :mod:`runtime.store`), or an
    open binary file.

    Raises
    ------
    SnapshotError : the file is missing, cannot be read, or is not a whole snapshot file
        (truncated, corrupt, another program's); the message names the path and the reason.
    """
    if isinstance(path, (bytes, bytearray, memoryview)):
        raise SnapshotError(f"a snapshot file's path was expected, got "
                            f"{counted(len(path), 'byte')} ({bytes(path[:8])!r}…); read bytes "
                            f"with Snapshot.from_bytes(data) (or model.stream(data)), a file of "
                            f"many streams with load_snapshots(io.BytesIO(data))")
    if isinstance(path, io.IOBase):
        source, path = path, "the snapshot bytes"
    else:
        if is_database(path):
            return read_snapshots(path)
        source = None
    try:
        with (source or open(path, "rb")) as f:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ValueError("it holds one array, not an .npz archive")
            with npz:
                header = json.loads(str(npz[_HEADER]))
                arrays = {k: npz[k] for k in npz.files if k != _HEADER}
    except FileNotFoundError:
        raise SnapshotError(f"no snapshot file at {path}; check the path, or start without "
                            f"one (the streams start fresh)") from None
    except OSError as exc:    # a folder, no permission, an I/O error
        raise SnapshotError(f"cannot read the snapshot file {path}: {_reason(exc)}; check "
                            f"the path and its permissions") from None
    except (ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile,
            zlib.error) as exc:
        # np.load takes any file that is neither .npz nor .npy for a pickle, and says so
        raise _not_ours(path, "not an .npz archive" if "pickle" in str(exc) else exc) from None
    if not isinstance(header, dict) or not isinstance(header.get("format", 0), int):
        raise _not_ours(path, "its header is not a JSON object with an integer format")
    if header.get("format", 0) > FORMAT:
        raise SnapshotError(f"{path} has snapshot format {header.get('format')}, this runtime "
                            f"reads up to {FORMAT}; upgrade lstm-edge")
    if header.get("format", 0) < 2:
        return _format_1(path, header, arrays)
    try:
        keys = [str(h["key"]) for h in header["streams"]]
        blobs = [arrays[f"s{i}"] for i in range(len(keys))]
    except (KeyError, TypeError) as exc:
        raise _not_ours(path, f"missing or malformed entry {exc}") from None
    return {key: Snapshot.from_bytes(blob.tobytes(), f"{path}: stream {key!r}")
            for key, blob in zip(keys, blobs)}


def _format_1(path, header: dict, arrays: dict) -> dict[str, Snapshot]:
    """The snapshots of a format-1 file: arrays per field, the rest in the JSON header."""
    try:
        snaps = {}
        for i, h in enumerate(header["streams"]):
            if _integer(h["steps"]) < 0:
                raise SnapshotError(f"{path}: stream {h['key']!r} has a step count of "
                                    f"{h['steps']}, expected 0 or more: the file is corrupt; "
                                    f"restore a good copy, or delete it to start fresh")
            snaps[h["key"]] = Snapshot(
                state={name: arrays[f"s{i}.state.{name}"] for name in h["state"]},
                buffer=arrays[f"s{i}.buffer"], steps=_integer(h["steps"]),
                fingerprint=h["fingerprint"], window=_integer(h["window"]),
                carry_state=h["carry_state"], version=_integer(h["version"]),
                extra=h.get("extra", {}), prediction=arrays.get(f"s{i}.prediction"),
                next_slot=None if h.get("next_slot") is None else _integer(h["next_slot"]))
    except SnapshotError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise _not_ours(path, f"missing or malformed entry {exc}") from None
    return snaps


def is_database(path) -> bool:
    """Whether ``path`` is a SQLite database (by its first bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == DATABASE
    except OSError:
        return False


def read_snapshots(path) -> dict[str, Snapshot]:
    """Every sensor's :class:`Snapshot` from an ``lstm-run --state`` database, without a model.

    What :func:`load_snapshots` returns for a database (see :mod:`runtime.store`); each row
    is checked against its checksum here, and against the model when it is restored
    (``model.stream(snapshot)``).
    """
    try:
        db = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            rows = db.execute("SELECT key, steps, buffer, state, prediction FROM streams "
                              "ORDER BY seen, key").fetchall()
        finally:
            db.close()
        version = int(meta["format"])
    except (sqlite3.Error, KeyError, ValueError, TypeError) as exc:
        raise SnapshotError(f"the state file {path} cannot be read as a state database "
                            f"({exc}); restore a good copy, or delete it to start fresh") from None
    from .statefile import py_key     # a key UTF-8 cannot hold is stored as a BLOB
    out = {}
    for stored, steps, buf, state, pred in rows:
        try:
            key = py_key(stored)
        except ValueError as exc:        # a key lstm-run never stores: a tampered file
            raise SnapshotError(f"the state file {path}: a row: {exc}; restore a good "
                                f"copy") from None
        where = f"the state file {path}: sensor {key!r}"
        if version >= 2:
            out[key] = Snapshot.from_bytes(state, f"{where}: its state")
            continue
        try:
            out[key] = from_v1_row(Snapshot, meta, steps, buf, state, pred)
        except (KeyError, ValueError, TypeError) as exc:
            raise SnapshotError(f"{where}: {exc}; restore a good copy, or delete it to start "
                                f"fresh") from None
    return out


def _integer(value) -> int:
    """A header count as an int; ValueError (a malformed entry) for anything else."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{value!r} where a whole number belongs")
    return value


def _not_ours(path, reason) -> SnapshotError:
    return SnapshotError(f"{path} is not a snapshot file lstm-edge can read ({reason}); it may "
                         f"be truncated or written by another program: restore a good copy, or "
                         f"delete it to start the streams fresh")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
