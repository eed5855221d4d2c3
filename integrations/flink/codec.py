"""One sensor's stream as the bytes Flink keeps in keyed state, and the reading's time.

Imports numpy and the runtime only (no pyflink), so that it is tested in the main
environment too. The bytes are a :class:`runtime.Snapshot` in a fixed binary layout (no
pickle, no zip): what a stream needs to continue bit-identically in any streaming mode, plus
the time of the sensor's last reading, against which the next one is checked.

>>> import runtime                                   # doctest: +SKIP
>>> model = runtime.load("exported/water-flow.onnx")  # doctest: +SKIP
>>> codec = StateCodec(model)                        # doctest: +SKIP
>>> blob = codec.encode(model.stream().snapshot(), last_time=3600.0)   # doctest: +SKIP
>>> snap, last, written = codec.decode(blob)         # doctest: +SKIP
"""

from __future__ import annotations

import math
import struct
from datetime import datetime, timezone

import numpy as np

from runtime import Snapshot, SnapshotError
from runtime.lines import BadLine

# version (u1), flags (u1: 1 = has a prediction), buffer rows (u4), steps (i8),
# last reading's time (f8, NaN: none), wall-clock time of the write (f8, for the state TTL),
# sha256 of the model file (32 bytes)
_HEAD = struct.Struct("<BBIqdd32s")
VERSION = 1


class StateCodec:
    """Turns a model's stream snapshots into compact bytes and back.

    Parameters
    ----------
    model : the loaded :class:`runtime.Model`; its state widths, features and targets fix
        the layout, and its fingerprint goes into every blob so that state written for one
        model file is never restored into another.
    """

    def __init__(self, model):
        self.model = model
        self.names = model.state_inputs
        self.units = model.units
        # State slots (lstm_edge.state_slots, B > 1): each tensor holds (B, units), written
        # with the slot the next window starts from first, so that it decodes as slot 0.
        self.slots = int(model.slots) if model.carry_state else 1
        self.n_state = int(sum(self.units)) * self.slots
        self.n_features = model.n_features
        self.n_targets = model.n_targets
        self.buf_dtype = np.dtype("<i8") if model.tokens else np.dtype("<f4")
        self.digest = bytes.fromhex(model.fingerprint)

    def encode(self, snap: Snapshot, last_time: float = math.nan,
               written: float = math.nan) -> bytes:
        """The bytes of ``snap``, the time of the sensor's last reading and of this write."""
        buf = np.ascontiguousarray(snap.buffer, self.buf_dtype)      # (m, features)
        turn = -(snap.next_slot or 0)                               # next slot first
        state = np.concatenate([np.roll(np.asarray(snap.state[n], "<f4"), turn, axis=0).ravel()
                                for n in self.names])
        flags = 0 if snap.prediction is None else 1
        parts = [_HEAD.pack(VERSION, flags, len(buf), snap.steps, last_time, written,
                                self.digest),
                 state.tobytes(), buf.tobytes()]
        if flags:
            parts.append(np.asarray(snap.prediction, "<f4").tobytes())
        return b"".join(parts)

    def decode(self, blob: bytes) -> tuple[Snapshot, float, float]:
        """``(snapshot, last_time, written)`` from :meth:`encode`'s bytes.

        Raises
        ------
        SnapshotError : the bytes were written for another model file or are cut short.
        """
        blob = bytes(blob)
        if len(blob) < _HEAD.size:
            raise SnapshotError(f"the keyed state holds {len(blob)} bytes, fewer than a "
                                f"stream's header ({_HEAD.size}); it was not written by this job")
        version, flags, rows, steps, last, written, digest = _HEAD.unpack_from(blob)
        if version != VERSION:
            raise SnapshotError(f"the keyed state has layout version {version}, this job reads "
                                f"{VERSION}; restore it with the lstm-edge that wrote it")
        if digest != self.digest:
            raise SnapshotError(f"the keyed state was written for another model file (sha256 "
                                f"{digest.hex()[:12]}…, this one is {self.digest.hex()[:12]}…); "
                                f"start the job without the checkpoint, or with the model it "
                                f"was taken with")
        at = _HEAD.size
        size = (self.n_state * 4 + rows * self.n_features * self.buf_dtype.itemsize
                + (self.n_targets * 4 if flags & 1 else 0))
        if len(blob) != at + size:
            raise SnapshotError(f"the keyed state holds {len(blob)} bytes, expected "
                                f"{at + size}; it is cut short or was not written by this job")
        flat = np.frombuffer(blob, "<f4", self.n_state, at)
        at += self.n_state * 4
        state, i = {}, 0
        for name, u in zip(self.names, self.units):
            width = u * self.slots
            state[name] = flat[i:i + width].reshape(self.slots, u) if self.slots > 1 \
                else flat[i:i + width]
            i += width
        n = rows * self.n_features
        buf = np.frombuffer(blob, self.buf_dtype, n, at).reshape(rows, self.n_features)
        at += n * self.buf_dtype.itemsize
        pred = np.frombuffer(blob, "<f4", self.n_targets, at) if flags & 1 else None
        snap = Snapshot(state=state, buffer=buf, steps=steps, fingerprint=self.model.fingerprint,
                        window=self.model.window, carry_state=self.model.carry_state,
                        prediction=pred, next_slot=0 if self.slots > 1 else None)
        return snap, last, written


def reading_time(text, column: str) -> float:
    """A time field as seconds: a number as it is, or an ISO-8601 time (UTC where no zone).

    Raises :class:`runtime.lines.BadLine` for anything else, so the line gets an error record.

    >>> reading_time("17", "t"), reading_time("1970-01-01T00:01:00Z", "t")
    (17.0, 60.0)
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    elif isinstance(text, str):
        try:
            value = float(text)
        except ValueError:
            try:
                when = datetime.fromisoformat(text.strip())
            except ValueError:
                value = math.nan
            else:
                if when.tzinfo is None:
                    when = when.replace(tzinfo=timezone.utc)
                value = when.timestamp()
    else:
        value = math.nan
    if not math.isfinite(value):
        shown = str(text) if len(str(text)) <= 40 else str(text)[:37] + "..."
        raise BadLine(f"time column {column!r}: {shown!r} is not a number or an ISO-8601 time "
                      f"(e.g. 2022-03-20T11:00:00+01:00); the time orders each sensor's "
                      f"readings, so every line needs one")
    return value
