"""A stream's state as plain numpy arrays, saved to and restored from ``.npz`` files.

A snapshot holds everything a stream needs to continue bit-identically: the recurrent state
(one ``(units,)`` array per state tensor), the window buffer (the last samples fed, at most
``window`` of them), how many samples were fed, and a fingerprint of the ONNX file, so that a
snapshot is never restored into another model. Files hold no pickles: arrays plus one JSON
header, readable by ``numpy.load(path, allow_pickle=False)`` anywhere.
"""

from __future__ import annotations

import json
import os
import tempfile
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
    state : graph input name (``in_h0``, ``in_c0``, ...) -> ``(units,)`` float32 array.
    buffer : ``(m, features)`` the last ``m <= window`` samples fed, oldest first
        (token-id models: ``(m, 1)`` ids).
    steps : samples fed since the stream was created or reset.
    fingerprint : sha256 of the ONNX file the stream ran.
    window, carry_state : the streaming mode the stream ran in.
    version : the snapshot format.
    """

    state: dict[str, np.ndarray]
    buffer: np.ndarray
    steps: int
    fingerprint: str
    window: int
    carry_state: bool
    version: int = FORMAT
    extra: dict = field(default_factory=dict)  # free-form, JSON-serialisable, kept verbatim

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

    def _header(self) -> dict:
        return {"state": list(self.state), "steps": int(self.steps),
                "fingerprint": self.fingerprint, "window": int(self.window),
                "carry_state": bool(self.carry_state), "version": int(self.version),
                "extra": self.extra}


def save_snapshots(path, snapshots: dict) -> Path:
    """Write many streams' snapshots to one ``.npz`` file, atomically.

    The file is written next to ``path`` under a temporary name and moved into place with
    :func:`os.replace`, so a reader never sees half a file and a crash leaves the old one.

    Parameters
    ----------
    path : where to write; written as given (no ``.npz`` is appended).
    snapshots : key -> :class:`Snapshot`; keys are turned into strings.
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
    arrays[_HEADER] = np.array(json.dumps({"format": FORMAT, "streams": headers}))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_snapshots(path) -> dict[str, Snapshot]:
    """Read the snapshots :func:`save_snapshots` (or :meth:`Snapshot.save`) wrote."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz[_HEADER]))
            arrays = {k: npz[k] for k in npz.files if k != _HEADER}
    except FileNotFoundError:
        raise SnapshotError(f"no snapshot file at {path}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise SnapshotError(f"{path} is not a snapshot file written by lstm-edge ({exc})") from None
    if header.get("format", 0) > FORMAT:
        raise SnapshotError(f"{path} has snapshot format {header.get('format')}, this runtime "
                            f"reads up to {FORMAT}; upgrade lstm-edge")
    snaps = {}
    for i, h in enumerate(header["streams"]):
        snaps[h["key"]] = Snapshot(
            state={name: arrays[f"s{i}.state.{name}"] for name in h["state"]},
            buffer=arrays[f"s{i}.buffer"], steps=h["steps"], fingerprint=h["fingerprint"],
            window=h["window"], carry_state=h["carry_state"], version=h["version"],
            extra=h.get("extra", {}))
    return snaps
