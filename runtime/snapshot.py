"""A stream's state as plain numpy arrays, saved to and restored from ``.npz`` files.

A snapshot holds everything a stream needs to continue bit-identically: the recurrent state
(one ``(units,)`` array per state tensor, ``(B, units)`` with B state slots), the window
buffer (the last readings fed, at most ``window`` of them), how many readings were fed, and a fingerprint of the ONNX file, so that a
snapshot is never restored into another model. Files hold no pickles: arrays plus one JSON
header, readable by ``numpy.load(path, allow_pickle=False)`` anywhere.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import SnapshotError

FORMAT = 1          # the snapshot format version this module writes and reads
_HEADER = "header"  # the npz entry holding the JSON header


@dataclass(frozen=True)
class Snapshot:
    """One stream's state, detached from any session.

    Attributes
    ----------
    state : graph input name (``in_h0``, ``in_c0``, ...) -> ``(units,)`` float32 array; for a
        model with ``B > 1`` state slots, ``(B, units)``, row ``k`` holding slot ``k``.
    buffer : ``(m, features)`` the last ``m <= window`` readings fed, oldest first
        (token-id models: ``(m, 1)`` ids).
    steps : readings fed since the stream was created or reset.
    fingerprint : sha256 of the ONNX file the stream ran.
    window, carry_state : the streaming mode the stream ran in.
    version : the snapshot format.
    prediction : ``(targets,)`` the stream's last prediction, which a masked step of a
        ``sequence`` model repeats; None where the model has no mask or nothing was predicted.
    next_slot : the slot the next full window starts from (``B > 1`` state slots); None for
        one slot, and then absent from the file, which stays as older runtimes wrote it.
    """

    state: dict[str, np.ndarray]
    buffer: np.ndarray
    steps: int
    fingerprint: str
    window: int
    carry_state: bool
    version: int = FORMAT
    extra: dict = field(default_factory=dict)  # free-form, JSON-serialisable, kept verbatim
    prediction: np.ndarray | None = None      # stored only where set; older readers skip it
    next_slot: int | None = None              # stored only where set; older readers refuse
                                              # the (B, units) state before they miss it

    def save(self, path) -> Path:
        """Write this snapshot to ``path`` (``.npz``), atomically; returns the path."""
        return save_snapshots(path, {"stream": self})

    @staticmethod
    def load(path) -> "Snapshot":
        """Read a snapshot written by :meth:`save` (or a one-stream :func:`save_snapshots`)."""
        snaps = load_snapshots(path)
        if len(snaps) != 1:
            raise SnapshotError(f"{path} holds {len(snaps)} streams ({', '.join(map(str, snaps))}),"
                                f" expected one; read it with runtime.load_snapshots")
        return next(iter(snaps.values()))

    @staticmethod
    def from_bytes(data) -> "Snapshot":
        """Read a one-stream snapshot from the bytes of a file :meth:`save` wrote."""
        snaps = load_snapshots(io.BytesIO(bytes(data)))
        if len(snaps) != 1:
            raise SnapshotError(f"the snapshot bytes hold {len(snaps)} streams, expected one; "
                                f"read them with runtime.load_snapshots")
        return next(iter(snaps.values()))

    def _header(self) -> dict:
        return {"state": list(self.state), "steps": int(self.steps),
                "fingerprint": self.fingerprint, "window": int(self.window),
                "carry_state": bool(self.carry_state), "version": int(self.version),
                "extra": self.extra,
                **({} if self.next_slot is None else {"next_slot": int(self.next_slot)})}


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
        if not isinstance(snap, Snapshot):
            raise SnapshotError(f"snapshot {key!r} is a {type(snap).__name__}, expected a "
                                f"runtime.Snapshot (from Stream.snapshot())")
        headers.append({"key": str(key), **snap._header()})
        arrays[f"s{i}.buffer"] = snap.buffer
        for name, value in snap.state.items():
            arrays[f"s{i}.state.{name}"] = value
        if snap.prediction is not None:
            arrays[f"s{i}.prediction"] = snap.prediction
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
    if isinstance(path, io.IOBase):
        source, path = path, "the snapshot bytes"
    else:
        from .store import is_database, read_snapshots
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
