"""Many streams in one ORT call: states stacked along the batch axis, unstacked back.

A server with a thousand sensors steps them all with one call of batch 1,000 instead of a
thousand calls of batch 1. Each stream's state is a ``(1, units)`` array; stacking is one
``np.concatenate`` per state tensor.

Even that costs more than ORT's own work on a small LSTM (~0.1 µs of Python per stream is
all a 50x speed-up over a loop leaves), so after a call the streams form a :class:`Group`
that keeps the stacked state and window buffers, and each stream only remembers its row.
When the next call steps the same streams in the same order, the group's arrays go straight
back into ORT: no stacking, no unstacking. A stream that is stepped alone, reset, fed or
read takes its rows out (``Stream._sync``) and the group is dropped; the next call then
stacks afresh and forms a new one.

A model with a Masking layer (see ``Model``, Notes) leaves the fast path for any call
with a masked reading in a stream's window; models without one never look.
"""

from __future__ import annotations

import numpy as np

from .device import to_host
from .errors import InputError, counted
from .state import check_position, order
from .stream import (busy_message, conflict_message, fill_missing, nonfinite, previous_row,
                     run_windows, skips_gap)


class Group:
    """The stacked state of streams stepped together; stream ``i`` owns row ``i``."""

    __slots__ = ("model", "streams", "states", "buf", "pred", "calls", "dirty", "busy")

    def __init__(self, model, streams, states, buf, pred=None):
        self.model, self.streams = model, streams
        self.states = states   # one (n, units) array per state tensor (carrying modes)
        self.buf = buf         # (n, m, features): every stream's window buffer, m equal for all
        self.pred = pred       # (n, targets) last predictions: sequence mode with a mask only
        self.calls, self.dirty = 0, False
        self.busy = False      # a call is stepping the group: its rows must not be taken
        for i, stream in enumerate(streams):
            stream._group, stream._gi = self, i

    def row(self, i: int):
        """Stream ``i``'s part, read in place: ``(state, buffer, calls, prediction)``.

        ``state``: one ``(1, units)`` array per tensor, None where the streams carry no state;
        ``calls``: steps taken in the group, which the stream's own count lacks;
        ``prediction``: None where the group keeps none.
        """
        state = None if self.states is None else tuple(to_host(s)[i:i + 1] for s in self.states)
        return state, self.buf[i], self.calls, None if self.pred is None else self.pred[i]


def step_at(model, streams: list, readings, at) -> np.ndarray:
    """``Model.step`` with positions: the order rule per stream, then one call for the new ones."""
    n = len(streams)
    readings = model._named(readings)                       # a DataFrame's columns, by name
    xs = model._check_chunk(readings, n)                    # (n_streams, features)
    raw = np.asarray(readings, np.float64).reshape(n, -1)
    if isinstance(at, (str, bytes)) or not hasattr(at, "__len__") or np.ndim(at) == 0:
        raise InputError(f"step got {counted(n, 'stream')} and one position, at={at!r:.40}; "
                         f"expected {counted(n, 'position')}, one per stream (a list or an "
                         f"array)")
    ats = [None if a is None else check_position(a) for a in at]
    if len(ats) != n:
        raise InputError(f"step got {counted(n, 'stream')} and {len(ats)} positions (at=); "
                         f"expected {counted(n, 'position')}, one per stream")
    held = [s._last() is not None for s in streams]        # a value a gap may hold
    kinds = ["new" if a is None else order(s._pos, s._seen, x, a, model._seen_dtype)
             for s, x, a in zip(streams, raw, ats)]
    bad = [f"stream {i}: {conflict_message(a, s._seen, x)}"
           for i, (s, x, a, k) in enumerate(zip(streams, raw, ats, kinds)) if k == "conflict"]
    if bad:
        raise InputError(f"{len(bad)} of {n} readings cannot be fed, no stream was stepped: "
                         + " | ".join(bad[:10]))
    new = [i for i, k in enumerate(kinds) if k == "new"]
    if len(new) == n:
        out = _step_checked(model, streams, xs)            # the usual case: all of them new
    else:
        out = np.full((n, model.n_targets), np.nan, np.float32)
        for i, kind in enumerate(kinds):
            if kind == "replay" and streams[i]._answer is not None:
                out[i] = streams[i]._answer
        if new:
            out[new] = _step_checked(model, [streams[i] for i in new], xs[new])
    for i in new:
        skipped = bool(np.isnan(raw[i]).any()) and skips_gap(streams[i].missing, held[i])
        if ats[i] is not None and not skipped:     # None: fed unchecked; a skipped gap
            stream = streams[i]                    # claims no position (see skips_gap)
            stream._pos, stream._seen, stream._answer = ats[i], raw[i], out[i].copy()
    return out


def step_many(model, streams: list, readings) -> np.ndarray:
    """``Model.step``: one reading per stream, ``(n_streams, features)`` -> ``(n_streams, targets)``."""
    return _step_checked(model, streams, model._check_chunk(readings, len(streams)))


def _step_checked(model, streams: list, xs) -> np.ndarray:
    """``step_many`` on readings ``xs`` ``(n_streams, features)`` the model has checked."""
    n = len(streams)
    if n == 1 and streams[0]._group is None and streams[0].model is model \
            and not nonfinite(xs[0], model._fin):
        # One stream, not in a group: its own step, through its pre-bound buffers, costs
        # ~5-7 µs less than stacking a batch of one. (A NaN or inf takes the path below,
        # whose error names the stream.)
        y = streams[0].step(xs[0])                          # (targets,) or None
        return np.full((1, model.n_targets), np.nan, np.float32) if y is None else y[None]
    finite = bool(np.isfinite(xs).all())
    group = model._group
    if group is not None and not group.dirty and group.streams == streams \
            and finite and (model._mask is None or not _masked(model, group, xs)):
        return _step_group(model, group, xs)
    if len({id(s) for s in streams}) != n:
        raise InputError("a stream appears twice in one call; step each stream once per call")
    if any(s.model is not model for s in streams):
        bad = [i for i, s in enumerate(streams) if s.model is not model]
        raise InputError(f"streams {bad[:10]} belong to another model; a model steps only the "
                         f"streams it created")
    if finite:
        return _step_fed(model, streams, xs)
    xs, keep = _fill_rows(model, streams, xs)
    out = np.full((n, model.n_targets), np.nan, np.float32)
    out[keep] = _step_fed(model, [s for s, k in zip(streams, keep) if k], xs)
    return out


def _masked(model, group, xs) -> bool:
    """Whether a call of the group would see a masked reading in any stream's window."""
    if model._masked(xs).any():
        return True
    return model.window > 1 and bool(model._masked(group.buf[:, 1:]).any())


def _step_fed(model, streams, xs):
    """Step the streams given a finite reading each; sequence mode does not feed masked ones."""
    if model._mask is not None and model.mode == "sequence":
        masked = model._masked(xs)                          # (n,)
        if masked.any():
            out = np.empty((len(xs), model.n_targets), np.float32)
            # Not fed: the prediction stands; a stateful Keras model's sample of one masked
            # reading answers the head of a zero output (see Stream._step_masked).
            repeat = not model.info.keras_stateful
            out[masked] = np.concatenate([previous_row(model, s._previous() if repeat else None)
                                          for s, m in zip(streams, masked) if m])
            out[~masked] = _step_rows(model, [s for s, m in zip(streams, masked) if not m],
                                      xs[~masked])
            if model.carry_state and model.slots > 1:
                for stream in (s for s, m in zip(streams, masked) if m):
                    stream._turn(stream._state)         # a masked window: its slot stays
            return out
    return _step_rows(model, streams, xs)


def _step_group(model, group, xs):
    """The fast path: the same streams as last call, all ready, all finite."""
    if group.busy:                 # the same streams stepped on two threads at once
        raise InputError(busy_message(group.streams[0]))
    group.busy = True
    try:
        return _step_group_rows(model, group, xs)
    finally:
        group.busy = False


def _step_group_rows(model, group, xs):
    """:func:`_step_group` once the group is marked busy."""
    if model.window == 1:
        buf = xs[:, None]                                   # (n, 1, features)
    else:
        buf = np.concatenate((group.buf[:, 1:], xs[:, None]), axis=1)   # (n, window, features)
    states = group.states if model.carry_state else model.zeros(len(xs))
    y, new = model._run(buf, states)                        # y (n, window, targets)
    group.buf, group.calls = buf, group.calls + 1
    if model.carry_state:
        group.states = new
    ys = np.ascontiguousarray(y[:, -1])
    if group.pred is not None:
        group.pred = ys.copy()
    return ys


def _fill_rows(model, streams, xs):
    """Apply each stream's own missing policy; one error listing every bad row."""
    keep, rows, problems = np.ones(len(xs), bool), [], []
    for i, (stream, x) in enumerate(zip(streams, xs)):
        if np.isfinite(x).all():
            rows.append(x)
            continue
        try:
            filled = fill_missing(model, x, stream._last(), stream.missing)
        except InputError as exc:
            problems.append(f"stream {i}: {exc}")
            continue
        if filled is None:
            keep[i] = False
        else:
            rows.append(filled)
    if problems:
        raise InputError(f"{len(problems)} of {len(xs)} readings cannot be fed, no stream was "
                         f"stepped: " + " | ".join(problems[:10]))
    dtype = model.dtype if model.tokens else np.float32
    return np.array(rows, dtype).reshape(-1, model.n_features), keep


def _step_rows(model, streams, xs) -> np.ndarray:
    """Step ``streams`` with their checked, finite readings ``xs`` (n, features); each is
    marked busy meanwhile (see ``Stream``, Threads)."""
    for stream in streams:
        if stream._busy:
            raise InputError(busy_message(stream))
    for stream in streams:
        stream._busy = True
    try:
        return _step_free(model, streams, xs)
    finally:
        for stream in streams:
            stream._busy = False


def _step_free(model, streams, xs) -> np.ndarray:
    """:func:`_step_rows` once the streams are marked busy."""
    n, window = len(streams), model.window
    ys = np.full((n, model.n_targets), np.nan, np.float32)
    if not n:
        return ys
    for stream in streams:
        if stream._group is not None:
            stream._sync()
    if window == 1:
        bufs, ready = list(xs[:, None]), streams            # (1, features) views each
        x = xs[:, None]                                     # (n, 1, features)
    else:
        bufs = [np.concatenate((s._buf[1 - window:], x[None])) for s, x in zip(streams, xs)]
        index = [i for i, b in enumerate(bufs) if len(b) == window]
        ready = [streams[i] for i in index]
        x = np.stack([bufs[i] for i in index]) if index else None   # (r, window, features)
    if ready:
        if model.carry_state:
            states = _stack(model, ready)                   # (r, units) each
        else:
            states = model.zeros(len(ready))
        masked = None
        if model._mask is not None and model.mode != "sequence":
            masked = model._masked(x)                       # (r, window)
        if masked is not None and masked.any():
            last, new = run_windows(model, x, masked, states)
        else:
            y, new = model._run(x, states)                  # y (r, window, targets)
            last = y[:, -1]
        if window == 1:
            ys = np.ascontiguousarray(last)
        else:
            ys[index] = last
    # Nothing can fail from here on. Ready all: the streams form a group (see Group), unless
    # they carry several state slots (SlotStream), whose state turns from slot to slot.
    slots = model.carry_state and model.slots > 1
    if len(ready) == n and not slots:
        for stream in streams:
            stream._steps += 1
        buf = xs[:, None] if window == 1 else x              # (n, window, features)
        pred = ys.copy() if model._mask is not None and model.mode == "sequence" else None
        model._group = Group(model, list(streams), new if model.carry_state else None, buf,
                             pred)
        return ys
    for stream, buf in zip(streams, bufs):
        stream._buf = buf
        stream._steps += 1
    if ready and model.carry_state:
        for stream, state in zip(ready, zip(*[list(s[:, None]) for s in new])):
            if slots:
                stream._turn(state)                         # the window's slot keeps it
            else:
                stream._state = state                       # (1, units) row views
    return ys


def _stack(model, streams):
    """The streams' states stacked along the batch axis, one array per state tensor."""
    # Bound runners may hold OrtValues (on the device): to_host copies them down once per
    # call. Host runners hold numpy arrays already, and skip to_host's per-stream call,
    # which adds up at thousands of streams.
    if model._runner.bound:
        return [np.concatenate([to_host(s._state[j]) for s in streams])
                for j in range(len(model.units))]
    return [np.concatenate([s._state[j] for s in streams]) for j in range(len(model.units))]
