"""A stream's persisted state: its fields, their checks, the slot order and one byte codec.

Everything that keeps a stream between runs goes through this module: the ``.npz`` snapshot
files (:mod:`runtime.snapshot`), the rows of the ``lstm-run --state`` database
(:mod:`runtime.store`) and a host's keyed state (a Flink operator's, a broker session's).

Fields (:class:`StreamState`)
    the recurrent state per state input, ``(units,)``, or ``(B, units)`` with ``B > 1`` state
    slots (row ``k`` is slot ``k``; ``next_slot`` the slot the next full window starts from);
    the window buffer (the last readings fed, oldest first); the step count; the last
    prediction (masked ``sequence`` steps repeat it); the model it belongs to (fingerprint,
    window, carry_state); and, for exactly-once delivery (docs/lstm-run.md, "Resuming exactly"), the
    *position* of the last reading fed (a time in epoch seconds, a float, or a sequence
    number, an int), that reading as it was given and the answer it got. Named *sections* carry bytes that
    other features own (the codec keeps them opaque, the stream carries them along).

Byte codec (:meth:`StreamState.to_bytes` / :meth:`StreamState.from_bytes`)
    Little-endian; version :data:`CODEC`; the last four bytes are the CRC32 of all before them,
    so a flipped bit anywhere is refused, never restored. A blob describes itself (names,
    sizes, the model's fingerprint), so it can be read without the model.

Many at a time (:class:`Columns`)
    A store saving or loading thousands of streams encodes and decodes them together: the
    states of one layout as columns, the fixed part of all their blobs in one numpy array,
    each row's CRC32 still its own (:func:`pack_many`, :func:`pack_columns`,
    :func:`unpack_many`). The bytes are :meth:`StreamState.to_bytes`'s; :func:`sound` checks
    the rows for what :func:`problems` finds, and leaves any row it doubts to be checked
    (and refused, saying why) one by one.

The order rule (:func:`order`)
    One function decides what a reading at a position does to a stream: ``"new"`` (fed),
    ``"replay"`` (the last reading again: answered with the answer it got, not fed), ``"old"``
    (at or before the position, not the last reading: skipped, not fed) or ``"conflict"``
    (the position of the last reading with other values: an error). ``Stream.step(reading,
    at=...)``, ``Stream.feed(readings, at=...)`` and ``Model.step(streams, readings, at=...)``
    apply it; ``lstm-run`` and the integrations call those, never a copy of the rule.

A host operator that keeps each sensor's state as bytes (one record at a time)::

    snap = StreamState.from_bytes(blob) if blob else None   # SnapshotError: refuse the record
    stream.restore(snap)                                    # one stream object per task
    kind = stream.order(values, at=when)                    # "new" | "replay" | "old" | ...
    y = stream.step(values, at=when)                        # the rule applied
    blob = stream.snapshot().to_bytes()

Batched (many sensors per call): restore each sensor's stream, then
``model.step(streams, readings, at=positions)`` (a NaN row for a skipped reading, the old
answer for a replay; a conflict raises :class:`~runtime.errors.InputError` naming every bad
row, nothing stepped), then ``stream.snapshot().to_bytes()`` per stream.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from .errors import InputError, SnapshotError

FORMAT = 2     # the snapshot format: 2 adds position, last reading, answer and sections
CODEC = 1      # the byte codec's version
MAGIC = b"LEst"
ORDERS = ("new", "replay", "old", "conflict")

_HEAD = struct.Struct("<4sBB32sIBHHHIIcIqBq")   # see pack: the fixed part of a blob
# The same fixed part as a numpy record, to read or write many blobs' heads in one call.
_HEADS = np.dtype([("magic", "S4"), ("codec", "u1"), ("flags", "u1"), ("fp", "V32"),
                   ("window", "<u4"), ("carry", "u1"), ("slots", "<u2"), ("next_slot", "<u2"),
                   ("n", "<u2"), ("features", "<u4"), ("targets", "<u4"), ("code", "S1"),
                   ("rows", "<u4"), ("steps", "<i8"), ("kind", "u1"), ("pos", "<i8")])
assert _HEADS.itemsize == _HEAD.size
# The head bytes that blobs of one layout share: all but next_slot, and steps, kind, pos.
_AT = {name: spec[1] for name, spec in (_HEADS.fields or {}).items()}   # name -> offset
_SHARED = (slice(0, _AT["next_slot"]), slice(_AT["n"], _AT["steps"]))
_SPEC = struct.Struct("<HI")                     # a name's length, then a number
_FLOAT, _BITS = struct.Struct("<d"), struct.Struct("<q")   # a time keeps its float64 bits
_DTYPES: dict[bytes, np.dtype] = {b"f": np.dtype("<f4"), b"l": np.dtype("<i8"),
                                  b"i": np.dtype("<i4")}
_CODES = {v.str: k for k, v in _DTYPES.items()}
_PRED, _LAST, _ANSWER, _EXTRA = 1, 2, 4, 8      # flags: which optional parts follow
_CRC = struct.Struct("<I")
_NO_SECTIONS = struct.pack("<H", 0)              # the tail of a blob with no extra, no sections
_NONE, _TIME, _SEQ = 0, 1, 2                     # kinds of position


@dataclass(frozen=True)
class StreamState:
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
    extra : free-form, JSON-serialisable, kept verbatim.
    prediction : ``(targets,)`` the stream's last prediction, which a masked step of a
        ``sequence`` model repeats; None where the model has no mask or nothing was predicted.
    next_slot : the slot the next full window starts from (``B > 1`` state slots); None for
        one slot.
    position : the position of the last reading fed with ``at=``: a float (a time, epoch
        seconds) or an int (a sequence number); None where none was given.
    last : ``(features,)`` float64 that reading as it was given (NaN where missing).
    answer : ``(targets,)`` float32 the prediction that reading got (NaN while warming up or
        skipped), which a replay of it is answered with.
    sections : name -> bytes, owned by other features (see :meth:`Stream.sections`).
    """

    state: dict[str, np.ndarray]
    buffer: np.ndarray
    steps: int
    fingerprint: str
    window: int
    carry_state: bool
    version: int = FORMAT
    extra: dict = field(default_factory=dict)
    prediction: np.ndarray | None = None
    next_slot: int | None = None
    position: float | int | None = None
    last: np.ndarray | None = None
    answer: np.ndarray | None = None
    sections: dict[str, bytes] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """This state in the byte codec, CRC32 last; read back by :meth:`from_bytes`."""
        return pack(self)

    @classmethod
    def from_bytes(cls, data, where: str = "the stream state"):
        """The state :meth:`to_bytes` wrote; SnapshotError (naming ``where``) for anything else."""
        return _unpack(cls, bytes(data), where)


# ---- the order rule ----------------------------------------------------------------------

def order(position, last, reading, at, dtype=np.float32) -> str:
    """What a reading at position ``at`` is to a stream whose last reading was ``last`` at
    ``position``: ``"new"``, ``"replay"``, ``"old"`` or ``"conflict"`` (see the module).

    The values are compared as the model reads them, in ``dtype`` (float32; a token model's
    ids: int64): ``0.1 + 0.2`` resent as ``0.3`` is the same float32 reading, so a replay, not
    a conflict. NaN (a gap) equals NaN.

    >>> order(None, None, [1.0], 5), order(5, np.array([1.0]), [1.0], 5)
    ('new', 'replay')
    >>> order(5, np.array([1.0]), [2.0], 5), order(5, np.array([1.0]), [1.0], 4)
    ('conflict', 'old')
    >>> order(5, np.array([0.1 + 0.2]), [0.3], 5)
    'replay'
    """
    if position is None or at > position:
        return "new"
    if at < position or last is None:
        return "old"
    return "replay" if same_reading(last, reading, dtype) else "conflict"


def same_reading(a, b, dtype=np.float32) -> bool:
    """Whether two readings as given (float64) are one reading to the model: equal in
    ``dtype``, NaN equal to NaN. A value beyond float32's range is inf there (never fed)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    if np.dtype(dtype).kind != "f":
        return bool(np.array_equal(a, b, equal_nan=True))   # ids: exact, as fed
    with np.errstate(over="ignore"):
        return bool(np.array_equal(a.astype(dtype), b.astype(dtype), equal_nan=True))


def check_position(at, what: str = "at", error: type = InputError) -> float | int:
    """A position as the state keeps it: an int (sequence number) or a finite float (time)."""
    if isinstance(at, (int, np.integer)) and not isinstance(at, (bool, np.bool_)) \
            and -(1 << 63) <= int(at) < (1 << 63):
        return int(at)
    if isinstance(at, (float, np.floating)) and math.isfinite(at):
        return float(at)
    raise error(f"{what} is {at!r}; expected a time in seconds (a finite number) or a "
                        f"sequence number (an int from -2**63 to 2**63 - 1)")


def describe_position(position) -> str:
    """A position in words, a time as a date where it reads as one (epoch seconds).

    >>> describe_position(1647770400.0), describe_position(17), describe_position(12.5)
    ('time 2022-03-20T10:00:00Z (1647770400 s)', 'sequence number 17', 'time 12.5 s')
    """
    if isinstance(position, int):
        return f"sequence number {position}"
    seconds = f"{position:.6f}".rstrip("0").rstrip(".") + " s"
    if not 1e8 <= position < 4.2e9:          # 1973-2103: a date, else plain seconds
        return f"time {seconds}"
    when = datetime.fromtimestamp(position, timezone.utc).isoformat().replace("+00:00", "Z")
    return f"time {when} ({seconds})"


# ---- checks ------------------------------------------------------------------------------

def problems(snap: StreamState, model) -> list[str]:
    """Everything that keeps ``snap`` from being restored into ``model``, one item each."""
    out = []
    if snap.fingerprint != model.fingerprint:
        out.append(f"it was made for another model (file sha256 {snap.fingerprint[:12]}…, this "
                   f"one is {model.fingerprint[:12]}…)")
    if snap.version > FORMAT:
        out.append(f"snapshot format {snap.version} is newer than this runtime's {FORMAT}; "
                   f"upgrade lstm-edge")
    if (snap.window, snap.carry_state) != (model.window, model.carry_state):
        out.append(f"it was taken with window={snap.window}, carry_state={snap.carry_state}; "
                   f"this model streams with window={model.window}, "
                   f"carry_state={model.carry_state}")
    if isinstance(snap.steps, bool) or not isinstance(snap.steps, (int, np.integer)) \
            or snap.steps < 0:
        out.append(f"its step count is {snap.steps!r}, expected a whole number 0 or more")
    if tuple(snap.state) != model.state_inputs:
        out.append(f"it holds state {tuple(snap.state)}, this model needs {model.state_inputs}")
    out += _slot_problems(snap, model)
    if not out:
        out += _array_problems(snap, model)
    return out


def _slot_problems(snap, model) -> list[str]:
    slots, taken = model_slots(model), slots_of(snap)
    if (snap.next_slot is None) != (slots == 1) or (slots > 1 and taken != slots):
        return [f"it was taken with {taken} state slot{'s' if taken != 1 else ''}; this model "
                f"streams with {slots} (lstm_edge.state_slots): start the stream fresh, or "
                f"load the model with state_slots={taken}"]
    if slots > 1 and not 0 <= (snap.next_slot or 0) < slots:
        return [f"its next slot is {snap.next_slot}, expected 0 to {slots - 1}"]
    return []


def _array_problems(snap, model) -> list[str]:
    out, slots, flags = [], model_slots(model), flag_columns(model)
    for (name, value), units in zip(snap.state.items(), model.units):
        value = np.asarray(value)
        want = (units,) if slots == 1 else (slots, units)
        if value.shape != want or value.dtype.kind not in "fiu":
            out.append(f"state {name} has shape {value.shape} (dtype {value.dtype}), expected "
                       f"{want} numbers")
        elif not np.isfinite(value).all():
            out.append(f"state {name} holds NaN or inf, which no stream ever carries")
        elif name in flags and not np.isin(found := value[..., flags[name]], (0, 1)).all():
            bad = found[~np.isin(found, (0, 1))]
            out.append(f"state {name} holds the flag {bad[0]:g}, expected 0 (a fresh stream) "
                       f"or 1 (a reading was seen), the only flags a stream carries")
    buf = np.asarray(snap.buffer)
    if buf.dtype.kind not in "fiu" or buf.ndim != 2 or buf.shape[1] != model.n_features \
            or len(buf) > model.window:
        out.append(f"its window buffer has shape {buf.shape} (dtype {buf.dtype}), expected at "
                   f"most ({model.window}, {model.n_features}) numbers")
    elif not np.isfinite(buf).all():
        out.append("its window buffer holds NaN or inf")
    elif len(buf) > snap.steps:
        out.append(f"its window buffer holds {len(buf)} readings after {snap.steps} steps")
    for name, value, size in (("prediction", snap.prediction, model.n_targets),
                              ("answer", snap.answer, model.n_targets),
                              ("last reading", snap.last, model.n_features)):
        if value is not None and np.shape(value) != (size,):
            out.append(f"its {name} has shape {np.shape(value)}, expected ({size},)")
    if (snap.position is None) != (snap.last is None):
        out.append("it has a position without the reading there, or the reading without one")
    if snap.position is not None:
        try:
            check_position(snap.position, "its position", SnapshotError)
        except SnapshotError as exc:
            out.append(str(exc))
    return out


def flag_columns(model) -> dict[str, np.ndarray]:
    """State input name -> the columns of a ``prev`` state that are flags, each 0 (a fresh
    stream) or 1 (a real reading), nothing else (docs/contract.md): the last column of a
    differenced model's previous reading (``lstm_edge.difference`` ``"state"``), and the
    column after each of the last season's readings (``lstm_edge.seasonal``), in that order.
    The last changes of a linear path hold no flag."""
    extra = model.info.extra
    try:
        difference = json.loads(extra.get("difference", "null")) == "state"
        season = int(json.loads(extra["seasonal"])["season"]) if "seasonal" in extra else 0
    except (ValueError, TypeError, KeyError):
        return {}                                   # for the record only: nothing to check
    units = dict(zip(model.state_inputs, model.units))
    prev = [n for spec in model.info.state if spec.kind == "prev" for n in spec.inputs]
    out = {}
    if difference and prev:
        name = prev.pop(0)
        out[name] = np.array([units[name] - 1])
    if season > 0 and prev and units[prev[0]] % season == 0:
        name = prev[0]
        stride = units[name] // season              # a season's reading: targets, then a flag
        out[name] = np.arange(stride - 1, units[name], stride)
    return out


def check(snap: StreamState, model, where: str = "the snapshot") -> None:
    """Raise one SnapshotError naming ``where`` and every problem, if ``snap`` has any."""
    found = problems(snap, model)
    if found:
        advice = _advice(snap, model, found)
        raise SnapshotError(f"{where}: {'; '.join(found)}" + (f"; {advice}" if advice else ""))


def _advice(snap: StreamState, model, found: list[str]) -> str:
    """What to do about the problems ``found``: where the only one is the model (another
    file, another ``window``/``carry_state`` at load), the state is sound and another load
    continues it; otherwise the state is bad."""
    fresh = "or start the stream fresh"
    if len(found) == 1 and snap.fingerprint != model.fingerprint:
        return (f"continue it with the model file it was taken with (sha256 "
                f"{snap.fingerprint[:12]}…), {fresh}")
    if len(found) == 1 and (snap.window, snap.carry_state) != (model.window, model.carry_state):
        args = [f"window={snap.window}"] if snap.window != model.window else []
        if snap.carry_state != model.carry_state:
            args.append(f"carry_state={snap.carry_state}")
        return f"load the model with {', '.join(args)} (the snapshot's) to continue it, {fresh}"
    if found == _slot_problems(snap, model):
        return ""                                  # its own advice: load with state_slots=
    return f"restore a good copy, {fresh}"


# ---- slot order --------------------------------------------------------------------------

def model_slots(model) -> int:
    """The state slots a stream of ``model`` keeps: ``B``, or 1 where it carries no state."""
    return int(model.slots) if model.carry_state else 1


def slots_of(snap: StreamState) -> int:
    """How many state slots a state holds: 1, or the rows of its ``(B, units)`` state."""
    if snap.next_slot is None or not snap.state:
        return 1
    shape = np.shape(next(iter(snap.state.values())))
    return int(shape[0]) if len(shape) == 2 else 1


def ring(snap: StreamState, slots: int) -> tuple[list[tuple], int]:
    """The state as ``B`` per-slot tuples of ``(1, units)`` float32 arrays, slot ``k`` at
    ``k``, and the next slot: what a stream holds."""
    arrays = [np.array(v, np.float32).reshape(slots, -1) for v in snap.state.values()]
    return [tuple(a[k:k + 1] for a in arrays) for k in range(slots)], int(snap.next_slot or 0)


def stack_ring(names, ring_slots: list[tuple], next_slot: int | None) -> dict[str, np.ndarray]:
    """The inverse of :func:`ring`: name -> ``(units,)``, or ``(B, units)`` for ``B > 1``
    (one slot: views of the slot's arrays, not copies)."""
    if next_slot is None:
        return {n: np.asarray(s, np.float32)[0] for n, s in zip(names, ring_slots[0])}
    return {n: np.concatenate([np.asarray(r[t], np.float32) for r in ring_slots])
            for t, n in enumerate(names)}


# ---- the codec ---------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _names(names: tuple, units: tuple) -> bytes:
    """The state tensors' names and units as a blob spells them (the same for every row)."""
    return b"".join(_SPEC.pack(len(raw), u) + raw
                    for raw, u in zip((n.encode() for n in names), units))


@functools.lru_cache(maxsize=64)
def _fingerprint(text: str) -> bytes:
    return bytes.fromhex(text)


def pack(s) -> bytes:
    """``s``: a :class:`StreamState`, or anything with its attributes (``Stream.to_bytes``)."""
    names = tuple(s.state)
    arrays = [np.asarray(s.state[n]) for n in names]
    slots = arrays[0].shape[0] if arrays and arrays[0].ndim == 2 else 1
    units = tuple(a.shape[-1] for a in arrays)
    buf = np.asarray(s.buffer)
    code = _CODES.get(buf.dtype.str)
    if code is None:
        buf, code = buf.astype("<f4"), b"f"
    flags = _flags(s)
    kind = _NONE if s.position is None else _SEQ if isinstance(s.position, int) else _TIME
    pos = 0 if s.position is None else (s.position if kind == _SEQ
                                        else _BITS.unpack(_FLOAT.pack(s.position))[0])
    parts = [_HEAD.pack(MAGIC, CODEC, flags, _fingerprint(s.fingerprint), s.window,
                        bool(s.carry_state), slots, s.next_slot or 0, len(names),
                        buf.shape[1] if buf.ndim == 2 else 0, _targets(s), code,
                        len(buf), int(s.steps), kind, pos), _names(names, units)]
    parts += [a.astype("<f4", copy=False).tobytes() for a in arrays]
    parts.append(buf.tobytes())
    for flag, value, t in ((_PRED, s.prediction, "<f4"), (_LAST, s.last, "<f8"),
                           (_ANSWER, s.answer, "<f4")):
        if flags & flag:
            parts.append(np.asarray(value).astype(t, copy=False).tobytes())
    body = b"".join(parts) + _tail(s.extra, s.sections)
    return body + _CRC.pack(zlib.crc32(body))


def _flags(s) -> int:
    return ((_PRED if s.prediction is not None else 0) | (_LAST if s.last is not None else 0)
            | (_ANSWER if s.answer is not None else 0) | (_EXTRA if s.extra else 0))


def _targets(s) -> int:
    return len(s.prediction) if s.prediction is not None else \
        len(s.answer) if s.answer is not None else 0


def _tail(extra: dict, sections: dict) -> bytes:
    """What follows the arrays: the extra JSON (where there is one), then the sections."""
    parts = []
    if extra:
        raw = json.dumps(extra).encode()
        parts += [struct.pack("<I", len(raw)), raw]
    parts.append(struct.pack("<H", len(sections)))
    for name, section in sections.items():
        raw = name.encode()
        parts += [_SPEC.pack(len(raw), len(section)), raw, bytes(section)]
    return b"".join(parts)


@dataclass
class Columns:
    """Many states of one layout, field by field: row ``i`` of every array is state ``i``.

    A *layout* is what the blobs of a kind share: the model, the state names and shapes, the
    buffer's shape and dtype, which optional parts follow. The fields are
    :class:`StreamState`'s with a leading axis of rows (lists: one item per row).
    :func:`pack_columns` encodes them together; a store saving many streams makes them.
    """

    fingerprint: str
    window: int
    carry_state: bool
    state: dict[str, np.ndarray]       # name -> (rows, units), or (rows, B, units)
    buffer: np.ndarray                 # (rows, m, features)
    steps: list
    next_slot: list | None             # None: one slot
    position: list                     # None, an int or a float per row
    prediction: np.ndarray | None      # (rows, targets)
    last: np.ndarray | None            # (rows, features)
    answer: np.ndarray | None          # (rows, targets)
    extra: list
    sections: list

    @classmethod
    def stack(cls, states: list) -> "Columns":
        """The columns of states of one layout (see :func:`pack_many`)."""
        first = states[0]

        def column(name):
            return None if getattr(first, name) is None else \
                np.stack([getattr(s, name) for s in states])

        return cls(first.fingerprint, first.window, first.carry_state,
                   {n: np.stack([s.state[n] for s in states]) for n in first.state},
                   np.stack([s.buffer for s in states]), [s.steps for s in states],
                   None if first.next_slot is None else [s.next_slot for s in states],
                   [s.position for s in states], column("prediction"), column("last"),
                   column("answer"), [s.extra for s in states], [s.sections for s in states])


def pack_many(states) -> list[bytes]:
    """``[pack(s) for s in states]``, the same bytes, states of one layout encoded together
    (:class:`Columns`, :func:`pack_columns`)."""
    groups: dict = {}
    for i, s in enumerate(states):
        groups.setdefault(_layout(s), []).append(i)
    out: list[bytes] = [b""] * len(states)
    for layout, rows in groups.items():
        group = [states[i] for i in rows]
        blobs = [pack(s) for s in group] if layout is None else \
            pack_columns(Columns.stack(group))
        for i, blob in zip(rows, blobs):
            out[i] = blob
    return out


def _layout(s) -> tuple | None:
    """What states encoded together share; None for one whose fields are not all arrays."""
    try:
        arrays, buf = tuple(s.state.values()), s.buffer
        if buf.ndim != 2 or any(a.ndim not in (1, 2) for a in arrays):
            return None
        return (s.fingerprint, s.window, bool(s.carry_state), tuple(s.state),
                tuple(a.shape for a in arrays), buf.dtype.str, buf.shape, _flags(s),
                s.next_slot is None,
                *(None if v is None else v.shape for v in (s.prediction, s.last, s.answer)))
    except AttributeError:        # lists where arrays belong: encoded one by one
        return None


def pack_columns(c: Columns) -> list[bytes]:
    """Each row's blob, as :func:`pack` writes it: the fixed part of every row (head, names,
    arrays) in one ``(rows, bytes)`` array, then each row's tail (sections) and CRC32."""
    k, names = len(c.steps), tuple(c.state)
    arrays = [np.asarray(c.state[n]).astype("<f4", copy=False) for n in names]
    buf = c.buffer
    code = _CODES.get(buf.dtype.str)
    if code is None:
        buf, code = buf.astype("<f4"), b"f"
    flags = ((_PRED if c.prediction is not None else 0) | (_LAST if c.last is not None else 0)
             | (_ANSWER if c.answer is not None else 0))
    targets = next((v.shape[1] for v in (c.prediction, c.answer) if v is not None), 0)
    head = np.zeros(k, _HEADS)
    head["flags"] = [flags | _EXTRA if extra else flags for extra in c.extra]
    for name, value in (("magic", MAGIC), ("codec", CODEC),
                        ("fp", np.void(_fingerprint(c.fingerprint))),
                        ("window", c.window), ("carry", bool(c.carry_state)),
                        ("slots", arrays[0].shape[1] if arrays and arrays[0].ndim == 3 else 1),
                        ("n", len(names)), ("features", buf.shape[2]),
                        ("targets", targets),
                        ("code", code), ("rows", buf.shape[1])):
        head[name] = value
    if c.next_slot is not None:
        head["next_slot"] = c.next_slot
    head["steps"] = c.steps
    head["kind"], head["pos"] = _positions(c.position)
    columns = [head, *arrays, buf]
    for flag, value, t in ((_PRED, c.prediction, "<f4"), (_LAST, c.last, "<f8"),
                           (_ANSWER, c.answer, "<f4")):
        if flags & flag:
            columns.append(np.asarray(value).astype(t, copy=False))
    columns = [np.ascontiguousarray(col).view(np.uint8).reshape(k, -1) for col in columns]
    names_row = np.frombuffer(_names(names, tuple(a.shape[-1] for a in arrays)), np.uint8)
    columns.insert(1, np.broadcast_to(names_row, (k, len(names_row))))
    if not any(c.extra) and not any(c.sections):        # every tail the same: a column too
        columns.append(np.broadcast_to(np.frombuffer(_NO_SECTIONS, np.uint8), (k, 2)))
        bodies = np.concatenate(columns, axis=1)         # (k, bytes before the CRC)
        crc = np.array([zlib.crc32(row.data) for row in bodies], "<u4")
        blobs = np.concatenate((bodies, crc.view(np.uint8).reshape(k, 4)), axis=1).tobytes()
        size = bodies.shape[1] + _CRC.size
        return [blobs[i * size:(i + 1) * size] for i in range(k)]
    fixed = np.concatenate(columns, axis=1)              # (k, bytes before the tail)
    raw, size, out = fixed.tobytes(), fixed.shape[1], []
    for i, (extra, sections) in enumerate(zip(c.extra, c.sections)):
        body = raw[i * size:(i + 1) * size] + _tail(extra, sections)
        out.append(body + _CRC.pack(zlib.crc32(body)))
    return out


def _positions(positions: list) -> tuple[list[int], np.ndarray]:
    """Each position's kind, and its number as the head keeps it (a time: its float64 bits)."""
    kinds = [_NONE if p is None else _SEQ if isinstance(p, int) else _TIME for p in positions]
    times = np.array([p if k == _TIME else 0.0 for p, k in zip(positions, kinds)], "<f8")
    seqs = np.array([p if k == _SEQ else 0 for p, k in zip(positions, kinds)], "<i8")
    return kinds, np.where(np.array(kinds) == _TIME, times.view("<i8"), seqs)


def _unpack(cls, data: bytes, where: str):
    if len(data) < _HEAD.size + 4 or data[:4] != MAGIC:
        raise SnapshotError(f"{where} is not a snapshot file or stream state lstm-edge can read "
                            f"(it starts {data[:8]!r}); restore a good copy, or start the "
                            f"stream fresh")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise SnapshotError(f"{where} fails its checksum (CRC32): the stored state is corrupt; "
                            f"restore a good copy, or start the stream fresh")
    if data[4] > CODEC:
        raise SnapshotError(f"{where} has state codec {data[4]}, this runtime reads up to "
                            f"{CODEC}; upgrade lstm-edge")
    try:
        snap = _fields(cls, body)
    except (ValueError, KeyError, UnicodeDecodeError, struct.error) as exc:
        raise SnapshotError(f"{where} is malformed ({exc}); restore a good copy, or start the "
                            f"stream fresh") from None
    if snap.steps < 0:
        raise SnapshotError(f"{where} has a step count of {snap.steps}, expected 0 or more: "
                            f"the state is corrupt; restore a good copy, or start the stream "
                            f"fresh")
    return snap


def _fields(cls, body: bytes):
    """The fields of a blob whose checksum held; ValueError/struct.error where it is short."""
    (_, _, flags, fp, window, carry, slots, next_slot, n, features, targets, code, rows,
     steps, kind, pos) = _HEAD.unpack_from(body)
    at, specs = _HEAD.size, []
    for _ in range(n):
        size, units = _SPEC.unpack_from(body, at)
        specs.append((body[at + _SPEC.size:at + _SPEC.size + size].decode(), units))
        at += _SPEC.size + size

    def array(dtype, count):
        nonlocal at
        out = np.frombuffer(body, dtype, count, at).copy()   # ValueError where short
        at += count * out.itemsize
        return out

    state = {}
    for name, units in specs:
        a = array("<f4", units * slots)
        state[name] = a.reshape(slots, units) if slots > 1 else a
    buffer = array(_DTYPES[code], rows * features).reshape(rows, features)
    pred = array("<f4", targets) if flags & _PRED else None
    last = array("<f8", features) if flags & _LAST else None
    answer = array("<f4", targets) if flags & _ANSWER else None
    extra = {}
    if flags & _EXTRA:
        (size,) = struct.unpack_from("<I", body, at)
        extra = json.loads(body[at + 4:at + 4 + size])
        at += 4 + size
    sections = {}
    (count,) = struct.unpack_from("<H", body, at)
    at += 2
    for _ in range(count):
        size, length = _SPEC.unpack_from(body, at)
        at += _SPEC.size
        sections[body[at:at + size].decode()] = body[at + size:at + size + length]
        at += size + length
    if at != len(body):
        raise ValueError(f"{len(body) - at} bytes after its last field" if at < len(body)
                         else f"it ends after {len(body)} bytes, {at} expected")
    position = None if kind == _NONE else pos if kind == _SEQ else \
        _FLOAT.unpack(_BITS.pack(pos))[0]
    return cls(state=state, buffer=buffer, steps=steps, fingerprint=fp.hex(), window=window,
               carry_state=bool(carry), extra=extra, prediction=pred,
               next_slot=next_slot if slots > 1 else None, position=position, last=last,
               answer=answer, sections=sections)


def unpack_many(blobs: list) -> tuple[list[tuple[list[int], Columns]], list[int]]:
    """Many blobs decoded together: ``[(rows, columns)]`` and the rows left over.

    Blobs of one length and layout whose magic, checksum and step counts hold, with no extra
    and no sections, are read as :class:`Columns` (a few numpy calls each); every other row
    is left over, for :meth:`StreamState.from_bytes`, which refuses it or reads it one by one
    (and so says what is wrong with it, as it says for one blob).
    """
    by_length: dict[int, list[int]] = {}
    for i, blob in enumerate(blobs):
        by_length.setdefault(len(blob) if isinstance(blob, bytes) else -1, []).append(i)
    done, left = [], by_length.pop(-1, [])
    for rows in by_length.values():
        while len(rows) > 1:
            read, rows = _unpack_layout(blobs, rows)
            if read is None:
                break
            done.append(read)
        left += rows
    return done, sorted(left)


def _unpack_layout(blobs: list, rows: list[int]):
    """Of blobs of one length, those of the first one's layout: ``((rows, columns), the
    others)``; ``(None, rows)`` where the first is not one :func:`unpack_many` reads."""
    try:
        first = _unpack(StreamState, blobs[rows[0]], "")
    except SnapshotError:
        return None, rows
    if first.extra or first.sections:
        return None, rows
    names = _names(tuple(first.state), tuple(np.shape(a)[-1] for a in first.state.values()))
    length = len(blobs[rows[0]])
    fixed = length - len(_NO_SECTIONS) - _CRC.size       # where the tail (no sections) starts
    arr = np.frombuffer(b"".join(blobs[i] for i in rows), np.uint8).reshape(len(rows), length)
    ref, end = arr[0], _HEAD.size + len(names)
    same = (arr[:, fixed:fixed + 2] == 0).all(axis=1)        # no sections
    for part in (*_SHARED, slice(_HEAD.size, end)):          # the layout's head, the names
        same &= (arr[:, part] == ref[part]).all(axis=1)
    crc = np.ascontiguousarray(arr[:, -4:]).view("<u4")[:, 0]
    same &= crc == [zlib.crc32(memoryview(blobs[i])[:-4]) for i in rows]
    head = np.ascontiguousarray(arr[:, :_HEAD.size]).view(_HEADS)[:, 0]
    same &= head["steps"] >= 0
    same[0] = True                                      # _unpack read it: the loop goes on
    mine = np.flatnonzero(same)
    others = [rows[i] for i in np.flatnonzero(~same)]
    arr, head, at = arr[mine], head[mine], end

    def column(dtype, shape):
        nonlocal at
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        out = np.ascontiguousarray(arr[:, at:at + size]).view(dtype).reshape(len(arr), *shape)
        at += size
        return out

    state = {n: column("<f4", np.shape(a)) for n, a in first.state.items()}
    buffer = column(first.buffer.dtype, first.buffer.shape)
    prediction, last, answer = (None if getattr(first, f) is None else
                                column(t, getattr(first, f).shape)
                                for f, t in (("prediction", "<f4"), ("last", "<f8"),
                                             ("answer", "<f4")))
    kinds, pos = head["kind"].tolist(), head["pos"]
    times, seqs = pos.view("<f8").tolist(), pos.tolist()
    positions = [None if k == _NONE else q if k == _SEQ else t
                 for k, q, t in zip(kinds, seqs, times)]
    read = Columns(first.fingerprint, first.window, first.carry_state, state, buffer,
                   head["steps"].tolist(),
                   None if first.next_slot is None else head["next_slot"].tolist(), positions,
                   prediction, last, answer, [{}] * len(arr), [{}] * len(arr))
    return ([rows[i] for i in mine], read), others


def _row(column: np.ndarray | None) -> np.ndarray | None:
    return None if column is None else column[0]


def sound(c: Columns, model) -> np.ndarray:
    """``(rows,)`` bool: the rows :func:`problems` finds nothing wrong with, found with a few
    numpy calls; a False row may still be sound (ask :func:`check` why not)."""
    first = StreamState(state={n: a[0] for n, a in c.state.items()}, buffer=c.buffer[0],
                        steps=c.steps[0], fingerprint=c.fingerprint, window=c.window,
                        carry_state=c.carry_state,
                        next_slot=None if c.next_slot is None else c.next_slot[0],
                        position=c.position[0], prediction=_row(c.prediction),
                        last=_row(c.last), answer=_row(c.answer))
    rows = len(c.steps)
    if problems(first, model):          # what every row of the layout shares is wrong
        return np.zeros(rows, bool)
    steps = np.asarray(c.steps)
    ok = (steps >= 0) & (steps >= c.buffer.shape[1])
    for a in (*c.state.values(), c.buffer):
        ok &= np.isfinite(a.reshape(rows, -1)).all(axis=1)
    units = dict(zip(model.state_inputs, model.units))
    for name, cols in flag_columns(model).items():
        flags = c.state[name].reshape(rows, -1, units[name])[..., cols]   # (rows, slots, flags)
        ok &= np.isin(flags, (0, 1)).all(axis=(1, 2))
    if c.next_slot is not None:
        ok &= np.asarray(c.next_slot) < model_slots(model)
    ok &= [(p is None) == (c.last is None) and (p is None or isinstance(p, int)
                                                 or math.isfinite(p)) for p in c.position]
    return ok


def from_v1_row(cls, layout: dict, steps, buffer: bytes, state: bytes, prediction):
    """A state from a row of a format-1 state database (columns as that format kept them).

    ``layout``: the database's meta values (state names, units, slots, buffer dtype,
    features, fingerprint, window, carry_state). Format-1 rows hold each tensor's B slots
    in the order they come next; window ``j`` has slot ``j mod B``, so after ``steps -
    window + 1`` full windows the first of them is that slot. (A masked reading of a
    window-1 model turns the slot uncounted: there the numbering may differ, the order and
    so every prediction do not.)
    """
    names, units = json.loads(layout["state"]), json.loads(layout["units"])
    slots, window = int(layout.get("slots", "1")), int(layout["window"])
    dtype, features = np.dtype(layout["buffer_dtype"]), int(layout["features"])
    values = np.frombuffer(state, np.float32)
    cuts = np.cumsum([0] + [u * slots for u in units])
    if len(values) != cuts[-1] or len(buffer) % (features * dtype.itemsize):
        raise ValueError("its arrays have the wrong size")
    nxt = max(0, int(steps) - window + 1) % slots
    arrays = {n: np.roll(values[a:b].reshape(slots, -1), nxt, axis=0)   # row k: slot k
              for n, a, b in zip(names, cuts[:-1], cuts[1:])}
    return cls(
        state={n: a if slots > 1 else a[0].copy() for n, a in arrays.items()},
        next_slot=nxt if slots > 1 else None, steps=steps,
        buffer=np.frombuffer(buffer, dtype).reshape(-1, features).copy(),
        fingerprint=layout["fingerprint"], window=window,
        carry_state=json.loads(layout["carry_state"]), version=1,
        prediction=None if prediction is None else np.frombuffer(prediction, np.float32).copy())
