"""One stream: its own recurrent state and window buffer, fed one reading (or chunk) at a time.

The streaming mode comes from the model (see docs/contract.md, "Streaming modes"):

- ``sequence`` (window 1, carrying state): each reading is fed once, the state carried.
- ``window`` (not carrying state): the last ``window`` readings run from a zero state; the
  prediction equals Keras ``model.predict(last_window)``.
- ``stateful`` (window > 1, carrying state): the last ``window`` readings run from the state
  the previous window ended in, and that window's final state is carried on; equals a
  stateful Keras ``predict`` over the sliding windows.

A call either completes or leaves the stream exactly as it was: every check runs before
anything is assigned, and the new state, buffer and count are assigned only after the ORT
call succeeded.

State arrays are never written in place, only replaced, with one exception: the two state
sets of a stream's :class:`~runtime.device.StepBinding`, which a step of that stream writes
(into the set its state is not in: a call that raises leaves the state as it was). Nothing
else keeps those sets: ``state``, snapshots, many-stream calls and ``feed``'s rollback copy
them, and a state from anywhere else is copied into a set on the next step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .device import ORT_ERRORS, to_host
from .errors import InputError, counted
from .snapshot import Snapshot
from .state import (Columns, check, check_position, describe_position, model_slots, order, pack,
                    pack_columns, pack_many, ring, stack_ring)

_CHUNK = 4096   # window mode runs at most this many windows in one ORT call
# np.vdot without its __array_function__ dispatch (~0.1 µs): a step's x is always a plain
# ndarray the runtime made itself. Where numpy lacks the attribute, the public function.
_vdot = getattr(np.vdot, "_implementation", np.vdot)
# A float reading whose squares sum below this is finite and within float32's range, so
# casting it to float32 can neither fail nor warn (NaN and inf compare False).
_SQUARES_BELOW = float(np.finfo(np.float32).max) ** 2


def nonfinite(x, zeros) -> bool:
    """Whether the reading ``x`` holds a NaN or an inf: the per-step check, ~0.3 µs.

    ``x · 0`` is 0 for a finite reading and NaN otherwise, one call where
    ``np.isfinite(x).all()`` takes two and three times as long. ``np.vdot``, unlike
    ``ndarray.dot``/``@``, does not report floating-point flags, so ``inf * 0`` makes no
    "invalid value" warning (test_inf_and_nan_raise_no_numpy_warning holds it to that).
    """
    return _vdot(x, zeros) != 0.0


def within_float32(x) -> bool:
    """Whether the float reading ``x`` is finite and float32 holds every value: one sum of
    squares (NaN, inf and a value beyond float32's range all make it not less than
    ``float32.max ** 2``). ``_step_hot`` writes it out, a call less per step."""
    return float(_vdot(x, x)) < _SQUARES_BELOW


class Stream:
    """One stream of readings through a model; create it with ``Model.stream()``.

    Attributes
    ----------
    model : the model the stream belongs to.
    missing : what a NaN in a reading does: ``"error"``, ``"skip"`` or ``"hold"``.

    Threads. A stream is used by one thread at a time (other streams of the same model may
    be stepped on other threads meanwhile). :meth:`step`, :meth:`feed` and
    ``Model.step`` mark the stream busy while they run (~0.05 µs a step): one started while
    another thread steps it raises InputError, the stream unchanged, instead of losing a
    step. The check can miss two calls that start within a few bytecodes of each other: it
    reports misuse, it is no lock. Hand a stream from thread to thread with a lock (or a
    queue) around its steps.
    """

    __slots__ = ("model", "missing", "_state", "_buf", "_steps", "_pred", "_age", "_bind",
                 "_hot", "_group", "_gi", "_pos", "_seen", "_answer", "_sections", "_busy")

    def __init__(self, model, missing: str):
        self.model, self.missing, self._bind, self._group = model, missing, None, None
        self._busy = False   # a step, feed or many-stream call of it is in progress
        self._hot = None   # the step binding, where ``_step_hot`` may take a step (see there)
        self.reset()

    def __repr__(self):
        return (f"<Stream of {self.model.name}: {self._steps} steps, "
                f"{'ready' if self.ready else 'warming up'}>")

    # --- the verbs -----------------------------------------------------------------------

    def step(self, reading, at=None):
        """Feed one reading (raw units); returns ``(targets,)`` or None while warming up/skipped.

        A model with a Masking layer does not feed a masked reading: in ``sequence`` mode the
        step returns the previous prediction, None if there is none yet (see ``Model``).

        ``at``: the reading's position, a time (float, epoch seconds) or a sequence number
        (int). The order rule then applies (:func:`runtime.state.order`): a reading after the
        stream's :attr:`position` is fed; the last reading again (same position, same values)
        is not fed and gets the answer it got then; one at or before the position otherwise
        is skipped (None, not fed). A reading skipped for a gap (a NaN under ``missing``
        ``"skip"``, or ``"hold"`` with nothing fed yet) claims no position, so that its
        corrected resend is fed. Without ``at`` the position is left as it was.

        A pandas Series (one reading, its index naming the features) is taken by name.

        Raises
        ------
        InputError, ShapeError : the reading cannot be fed (or, with ``at``, has the position
            of the last reading and other values, as float32; or another thread is stepping
            the stream); the stream is unchanged.
        """
        if self._busy:                     # see the class's Threads
            raise InputError(busy_message(self))
        self._busy = True
        try:
            hot = self._hot
            if hot is not None and at is None and self._group is None \
                    and type(reading) is np.ndarray and reading.shape == hot.row.shape:
                y = self._step_hot(hot, reading)
                if y is not None:
                    return y
            if at is not None:
                return self._step_at(reading, check_position(at))
            return self._step(reading)
        finally:
            self._busy = False

    def _step(self, reading):
        """:meth:`step` of one reading without a position, past the hot path."""
        if self._group is not None:
            self._sync()
        model = self.model
        x = model._check(reading)                          # (features,)
        if _vdot(x, model._fin) != 0.0:                    # NaN or inf: rare; see nonfinite
            x = fill_missing(model, x, self._last(), self.missing)
            if x is None:
                return None
        if model._mask is not None:
            return self._step_masked(x)
        return self._advance(x)

    def feed(self, readings, at=None) -> np.ndarray:
        """Feed a chunk ``(n, features)``; returns ``(n, targets)``, NaN rows while warming up.

        Same predictions and final state as :meth:`step` one by one; one ORT call for the
        whole chunk in ``sequence`` and ``window`` mode, one per reading in ``stateful`` mode
        (and with state slots). ``readings`` are consecutive time steps of one series, not
        windows: an array ``(samples, timesteps, features)`` goes to ``Model.predict``.
        Masked readings of a ``sequence`` model repeat the previous prediction (NaN if none).
        ``at``: ``n`` positions, the order rule applied row by row as :meth:`step` does (a
        replay gets its earlier answer, a skipped row NaN; only the new rows are fed); a
        None position feeds its row unchecked. A list or an array, not one position:
        InputError. A DataFrame's columns are taken by name: in another order they are
        reordered to :attr:`Model.features`; another name, a missing one or one more (a time
        column) is refused, with the fix ``df[list(model.features)]``.
        """
        if self._busy:
            raise InputError(busy_message(self))
        self._busy = True
        try:
            return self._feed_at(readings, at) if at is not None else self._feed(readings)
        finally:
            self._busy = False

    def _feed(self, readings) -> np.ndarray:
        """:meth:`feed` without positions."""
        self._sync()
        model = self.model
        xs = model._check_chunk(readings)                  # (n, features)
        keep = None
        if not np.isfinite(xs).all():
            xs, keep = fill_chunk(model, xs, self._last(), self.missing)
        if model.mode == "sequence":
            ys = self._feed_sequence(xs)
        elif model.mode == "window":
            ys = self._feed_windows(xs)
        else:
            ys = self._feed_stateful(xs)
        if keep is None:
            return ys
        out = np.full((len(keep), model.n_targets), np.nan, np.float32)
        out[keep] = ys
        return out

    def reset(self) -> None:
        """Back to a fresh stream: zero state, empty window."""
        if self._group is not None:
            self._group.dirty, self._group = True, None
        model = self.model
        self._state = model._zero_state                    # shared; never written in place
        self._buf = np.empty((0, model.n_features), model.dtype if model.tokens else np.float32)
        self._steps = 0
        self._pred = None   # the last prediction, kept for masked steps (sequence mode)
        self._age = (0, None)   # (unmasked readings ending the buffer, the buffer): see _mask_age
        # The order rule's (see _step_at): the last position given, the reading given there
        # (float64, as given) and the answer it got.
        self._pos: float | int | None = None
        self._seen: np.ndarray | None = None
        self._answer: np.ndarray | None = None
        self._sections: dict[str, bytes] = {}

    def restore(self, snapshot=None, where: str = "the snapshot") -> None:
        """Continue from ``snapshot`` (a :class:`~runtime.state.StreamState`, None: fresh), in place.

        What ``model.stream(snapshot)`` gives, without making the stream's step buffers anew
        (~70 µs): for a host that keeps each stream's state itself (Flink's keyed state) and
        runs them all through one stream object. Raises one SnapshotError naming ``where``
        and every problem (:func:`runtime.state.check`); the stream is then unchanged.
        """
        if snapshot is None:
            self.reset()
            return
        check(snapshot, self.model, where)
        self.reset()
        model = self.model
        slots, nxt = ring(snapshot, model.slots if model.carry_state else 1)
        self._load(slots, nxt)
        self._buf = np.asarray(snapshot.buffer).astype(model.dtype if model.tokens else
                                                       np.float32)
        self._steps = int(snapshot.steps)
        self._pred = _f32(snapshot.prediction)
        self._pos, self._answer = snapshot.position, _f32(snapshot.answer)
        self._seen = None if snapshot.last is None else np.array(snapshot.last, np.float64)
        self._sections = dict(snapshot.sections)

    def snapshot(self) -> Snapshot:
        """The stream's state, window buffer and position as plain numpy arrays (copies).

        Read in place, also from a many-stream group (the stream stays in it).
        """
        f = self._fields()
        return Snapshot(state={n: np.array(a) for n, a in f.state.items()},
                        buffer=f.buffer.copy(), steps=f.steps, fingerprint=f.fingerprint, window=f.window, carry_state=f.carry_state,
                        next_slot=f.next_slot, prediction=_copy(f.prediction),
                        position=f.position, last=_copy(f.last), answer=_copy(f.answer),
                        sections=dict(f.sections))

    def to_bytes(self) -> bytes:
        """``snapshot().to_bytes()`` without the copies: the state in the byte codec."""
        return self._fields().to_bytes()

    def order(self, reading, at) -> str:
        """What :meth:`step` with ``at`` would do with ``reading``, changing nothing: ``"new"``,
        ``"replay"``, ``"old"`` or ``"conflict"`` (:func:`runtime.state.order`)."""
        return order(self._pos, self._seen, self._as_seen(reading), check_position(at),
                     self.model._seen_dtype)

    @property
    def position(self):
        """The position (``at``) of the last reading fed with one: a time or a sequence
        number; None for a fresh stream."""
        return self._pos

    @property
    def answer(self) -> np.ndarray | None:
        """``(targets,)`` the answer the reading at :attr:`position` got (NaN while warming
        up), which a replay of it gets again; None where there is none."""
        return None if self._answer is None else self._answer.copy()

    @property
    def sections(self) -> dict[str, bytes]:
        """Named byte strings other features keep with the stream (alerts: pending forecasts).

        Saved and restored with the stream's state, opaque to it; a reset empties them. The
        owner stores its own ``to_bytes()`` under its name and reads it back with
        ``from_bytes()``.
        """
        return self._sections

    @property
    def state(self) -> dict[str, np.ndarray]:
        """Graph input name -> ``(units,)`` copy of the state that input gets next.

        With ``B > 1`` state slots, the slot the next full window starts from; a snapshot
        holds them all.
        """
        self._sync()
        return {name: np.array(to_host(v)[0]) for name, v in
                zip(self.model.state_inputs, self._state)}

    @property
    def steps(self) -> int:
        """Readings fed since the stream was created or reset (skipped ones not counted)."""
        return self._steps + (self._group.calls if self._group is not None else 0)

    @property
    def ready(self) -> bool:
        """Whether the window has filled, so that a step gives a prediction (in ``sequence``
        mode with ``Model.mask_answer``, also before the first reading fed)."""
        model = self.model
        return self._group is not None or len(self._buf) >= model.window \
            or (model.window == 1 and model.mask_answer is not None)

    @property
    def holding(self) -> bool:
        """Whether the stream has a reading that ``missing='hold'`` fills a gap from."""
        return self._last() is not None

    # --- inside --------------------------------------------------------------------------

    def _last(self):
        self._sync()
        return self._buf[-1] if len(self._buf) else None

    def _previous(self):
        """The stream's last prediction, or None (masked steps repeat it)."""
        self._sync()
        return self._pred

    def _fields(self) -> "_Fields":
        """The stream's fields as a state holds them, read in place (no copies)."""
        model, group = self.model, self._group
        state, buf, steps, pred = self._state, self._buf, self._steps, self._pred
        if group is not None:
            rows, buf, calls, group_pred = group.row(self._gi)
            state, steps = rows if rows is not None else state, steps + calls
            pred = pred if group_pred is None else group_pred
        slots, nxt = self._slots(state)
        return _Fields(stack_ring(model.state_inputs, slots, nxt), buf, steps,
                       model.fingerprint, model.window, model.carry_state, nxt, pred,
                       self._pos, self._seen, self._answer, self._sections)

    def _load(self, slots, nxt) -> None:
        """Take the per-slot states ``slots`` (see :func:`runtime.state.ring`)."""
        self._state = slots[0]

    def _slots(self, state):
        """The stream's state as per-slot tuples, and the next slot (None: one slot)."""
        return [tuple(to_host(s) for s in state)], None

    def _step_at(self, reading, at):
        """``step`` with a position: the order rule, then the step (see :meth:`step`)."""
        raw = self._as_seen(reading)
        kind = order(self._pos, self._seen, raw, at, self.model._seen_dtype)
        if kind == "replay":
            answer = self._answer
            return None if answer is None or np.isnan(answer).all() else answer.copy()
        if kind == "old":
            return None
        if kind == "conflict":
            raise InputError(conflict_message(at, self._seen, raw))
        skips = self.missing != "error" and skips_gap(self.missing, self._last() is not None)
        y = self._step(reading)
        if y is None and skips and np.isnan(raw).any():
            return None                 # a gap skipped: its position stays free (skips_gap)
        self._pos, self._seen = at, raw
        # NaN while warming up or skipped, as a many-stream call keeps it (see ``answer``).
        self._answer = np.full(self.model.n_targets, np.nan, np.float32) if y is None \
            else y.copy()
        return y

    def _as_seen(self, reading) -> np.ndarray:
        """``(values,)`` float64, a copy of ``reading`` as given: what the order rule compares
        and keeps. Raises the project's error where it is not numbers."""
        try:
            if type(reading) is np.ndarray and reading.ndim == 1:
                return reading.astype(np.float64)
            return np.array(self.model._named(reading, "reading"), np.float64).reshape(-1)
        except (ValueError, TypeError):                    # not numbers, or ragged
            self.model._check(reading)                     # raises, saying why
            raise

    def _feed_at(self, readings, at) -> np.ndarray:
        """``feed`` with positions: the order rule row by row, only the new rows fed."""
        readings = self.model._named(readings)             # a DataFrame's columns, by name
        n = len(self.model._check_chunk(readings))         # InputError, ShapeError: said there
        raw = np.asarray(readings, np.float64).reshape(n, -1)   # (n, features) as given
        if isinstance(at, (str, bytes)) or not hasattr(at, "__len__") or np.ndim(at) == 0:
            raise InputError(f"feed got {counted(n, 'reading')} and one position, "
                             f"at={at!r:.40}; expected {counted(n, 'position')}, one per "
                             f"reading (a list or an array), or step(reading, at=...) for one")
        ats = [None if a is None else check_position(a) for a in at]
        if len(ats) != n:
            raise InputError(f"feed got {counted(n, 'reading')} and {len(ats)} positions (at=); "
                             f"expected {counted(n, 'position')}, one per reading")
        pos, seen, fed, src, at_last = self._pos, self._seen, [], [], None
        dtype = self.model._seen_dtype
        held = self._last() is not None                    # a value a gap may hold
        for i, (x, a) in enumerate(zip(raw, ats)):
            kind = "new" if a is None else order(pos, seen, x, a, dtype)   # None: unchecked
            if kind == "conflict" and at_last is not None and pos == a:
                raise InputError(f"rows {at_last} and {i} both give {describe_position(a)}, "
                                 f"with other values ({_values(seen, x)}, then "
                                 f"{_values(x, seen)}); nothing from the chunk was fed: give "
                                 f"each position once in a chunk")
            if kind == "conflict":
                raise InputError(f"row {i}: " + conflict_message(a, seen, x)
                                 + "; nothing from the chunk was fed")
            if kind == "new":
                fed.append(i)
                skipped = bool(np.isnan(x).any()) and skips_gap(self.missing, held)
                held = held or not skipped
                if a is not None and not skipped:          # a skipped gap claims no position
                    pos, seen, at_last = a, x, i
            # the row whose answer row i gets: itself, the last new one, or -1 (the stream's)
            src.append(i if kind == "new" else None if kind == "old"
                       else at_last if at_last is not None else -1)
        out = np.full((len(raw), self.model.n_targets), np.nan, np.float32)
        if fed:
            out[fed] = self._feed(np.asarray(readings)[fed])
        for i, j in enumerate(src):
            if j is not None and j != i:
                row = out[j] if j >= 0 else self._answer
                if row is not None:
                    out[i] = row
        if at_last is not None:
            self._pos, self._seen, self._answer = pos, seen, out[at_last].copy()
        return out

    def _sync(self):
        """Leave a many-stream group (see ``batch.Group``): take this stream's rows of it."""
        group = self._group
        if group is None:
            return
        if group.busy:          # its rows are being stepped: taken now, that step is lost
            raise InputError(busy_message(self))
        i = self._gi
        if self.model.carry_state:
            self._state = tuple(s[i:i + 1] for s in group.states)   # (1, units) views
        self._buf, self._steps = group.buf[i], self._steps + group.calls
        if group.pred is not None:
            self._pred = group.pred[i]
        group.dirty, self._group = True, None

    def _advance(self, x):
        """Feed one checked reading ``(features,)``; the heart of every mode."""
        model = self.model
        window = model.window
        if window == 1:
            buf = x[None]                                  # (1, features)
        else:
            buf = np.concatenate((self._buf[1 - window:], x[None]))  # (<= window, features)
            if model._mask is not None:
                self._age = (self._mask_age(x), buf)
            if len(buf) < window:
                self._buf, self._steps = buf, self._steps + 1
                return None
            if model._mask is not None and self._age[0] < window:
                return self._advance_masked(buf, model._masked(buf))
        y = self._call(buf)                                # (targets,)
        self._buf, self._steps = buf, self._steps + 1
        return y

    def _call(self, buf):
        """Run one full window ``buf`` ``(window, features)``; returns ``(targets,)``.

        From the stream's state, carried on (``sequence``, ``stateful``), or from a zero
        state (``window``). The hot path of ``step``: one call through the stream's
        pre-bound buffers (see ``StepBinding``), made on its first call here, so that
        streams only ever stepped together (``Model.step``) never make them. The result is
        a copy: the buffer it comes from is overwritten by the next call.
        """
        bind = self._bind
        if bind is None:
            bind = self._bind = self.model._step_binding()
            if self.model._hot and type(self)._call is Stream._call:
                self._hot = bind
        bind.x[0] = buf
        try:
            if self.model.carry_state:
                self._state = bind.run(self._state)
            else:
                bind.run_fresh()
        except ORT_ERRORS as exc:
            raise self.model._step_error(exc) from None
        return bind.last.copy()

    def _step_hot(self, bind, reading):
        """``step`` of a finite float reading ``(features,)`` in one go; None: not taken.

        What ``_check``, ``_advance`` and ``_call`` do for a ``sequence`` stream without a
        mask, once its state is in its step binding (every step after its first), without
        their copies and branches: one sum of squares checks the reading (finite, within
        float32), which is cast straight into the binding's input. ~1 µs of a ~9 µs step
        (issue 24). Anything else (a NaN, an int reading, a state from elsewhere) returns
        None before anything changed, and ``step`` takes its full path.
        """
        if reading.dtype.kind != "f" or not float(_vdot(reading, reading)) < _SQUARES_BELOW:
            return None
        sets, state = bind.sets, self._state
        i = 0 if state is sets[0] else 1 if state is sets[1] else -1
        if i < 0:
            return None
        bind.row[...] = reading
        try:
            bind.calls[i]()
        except ORT_ERRORS as exc:
            raise self.model._step_error(exc) from None
        self._state, self._buf, self._steps = sets[1 - i], bind.window.copy(), self._steps + 1
        return bind.last.copy()

    def _step_masked(self, x):
        """``step`` for a model with a mask (see ``Model``, Notes)."""
        model = self.model
        if model.window > 1:
            return self._advance(x)                        # looks at the whole window
        if not model._masked_one(x):
            y = self._advance(x)
            if model.carry_state:
                self._pred = y.copy()
            return y
        if model.carry_state and not model.info.keras_stateful:
            # Not fed: the prediction stands (before the first: Keras's for nothing fed).
            return self._pred.copy() if self._pred is not None else self._nothing()
        if not model.carry_state:
            self._buf, self._steps = x[None], self._steps + 1   # a window of one masked reading
        # A stateful Keras model's sample of one masked reading: the head of a zero output,
        # whatever the carried state, which stays.
        return self._nothing()

    def _nothing(self):
        """What a step answers where nothing was fed: ``mask_answer``, None without one."""
        answer = self.model.mask_answer
        return None if answer is None else answer.copy()

    def _mask_age(self, x) -> int:
        """How many unmasked readings end the window once ``x`` joins it (window modes).

        A window holds a masked reading when that is less than ``window``. Kept per step, so
        that a step looks at its new reading only; counted afresh from the buffer where the
        buffer was replaced elsewhere (feed, many-stream calls, restore, reset).
        """
        age, seen = self._age
        if seen is not self._buf:
            flags = self.model._masked(self._buf)          # (m,)
            age = len(flags) - 1 - int(np.flatnonzero(flags)[-1]) if flags.any() else len(flags)
        return 0 if self.model._masked_one(x) else age + 1

    def _advance_masked(self, buf, masked):
        """A full window ``(window, features)`` holding masked readings: run the others only."""
        model = self.model
        if model.carry_state:
            states = [to_host(s) for s in self._state]      # (1, units) each
        else:
            states = model._zero_state
        ys, new = run_windows(model, buf[None], masked[None], states)
        if model.carry_state:
            self._state = tuple(new)
        self._buf, self._steps = buf, self._steps + 1
        return self._nothing() if masked.all() else ys[0]

    def _run(self, x):
        """A chunk ``(1, n, features)`` from this stream's state -> (y, new state).

        On a bound runner the new state is written into the step binding's set the state is
        not in, so that it stays on the device for the next step.
        """
        model = self.model
        if not model._runner.bound:
            return model._run(x, self._state)
        if self._bind is None:
            self._bind = model._step_binding()
        out = self._bind.spare(self._state)
        y, _ = model._run(x, self._state, out)
        return y, out

    def _feed_sequence(self, xs):
        model = self.model
        if not len(xs):
            return np.empty((0, model.n_targets), np.float32)
        if model._mask is not None:
            masked = model._masked(xs)                     # (n,)
            if masked.any():
                return self._feed_sequence_masked(xs, ~masked)
        y, state = self._run(xs[None])                     # (1, n, targets)
        self._state, self._buf, self._steps = state, xs[-1:], self._steps + len(xs)
        if model._mask is not None:
            self._pred = y[0, -1].copy()
        return y[0]

    def _feed_sequence_masked(self, xs, keep):
        """The unmasked rows in one call; each masked row repeats the prediction before it."""
        model, fed = self.model, xs[keep]                  # (k, features)
        ys = np.empty((0, model.n_targets), np.float32)
        state = self._state
        if len(fed):
            y, state = self._run(fed[None])                # (1, k, targets)
            ys = y[0]
        table = np.concatenate((previous_row(model, self._pred), ys))   # (1 + k, targets)
        out = table[np.cumsum(keep)]                       # row i: the last prediction by i
        if model.info.keras_stateful:                      # each reading its own sample
            out[~keep] = nothing_fed(model)
        if len(fed):
            self._state, self._buf = state, fed[-1:]
            self._steps, self._pred = self._steps + len(fed), ys[-1].copy()
        return out

    def _feed_windows(self, xs):
        model, window = self.model, self.model.window
        seq = np.concatenate((self._buf, xs))              # (m + n, features)
        first = max(window - 1, len(self._buf))            # first row ending a full window
        ys = np.full((len(xs), model.n_targets), np.nan, np.float32)
        if len(seq) > first:
            wins = np.lib.stride_tricks.sliding_window_view(seq, window, axis=0)
            wins = wins[first - window + 1:].transpose(0, 2, 1)   # (r, window, features)
            masked = None
            if model._mask is not None:
                flags = model._masked(seq)                 # (m + n,)
                if flags[first - window + 1:].any():
                    masked = np.lib.stride_tricks.sliding_window_view(flags, window)
                    masked = masked[first - window + 1:]   # (r, window)
            at = first - len(self._buf)
            for start in range(0, len(wins), _CHUNK):
                part = np.ascontiguousarray(wins[start:start + _CHUNK])
                if masked is None:
                    y, _ = model._run(part, model.zeros(len(part)))
                    y = y[:, -1]
                else:
                    y, _ = run_windows(model, part, masked[start:start + _CHUNK],
                                       model.zeros(len(part)))
                ys[at + start:at + start + len(part)] = y
        self._buf, self._steps = seq[-window:].copy(), self._steps + len(xs)
        return ys

    def _feed_stateful(self, xs):
        # A copy of the state: the steps below write the step binding's sets in turn.
        saved = (tuple(np.array(to_host(s)) for s in self._state), self._buf, self._steps)
        ys = np.full((len(xs), self.model.n_targets), np.nan, np.float32)
        try:
            for i, x in enumerate(xs):
                y = self._advance(x)
                if y is not None:
                    ys[i] = y
        except BaseException:
            self._state, self._buf, self._steps = saved    # all of the chunk, or none of it
            raise
        return ys


def to_bytes_many(streams) -> list[bytes]:
    """``[s.to_bytes() for s in streams]``, the same bytes, encoded together: what a store
    saving many streams calls.

    Streams with one state slot are read as columns (:class:`runtime.state.Columns`), many
    rows per numpy call: those last stepped together (a ``batch.Group``) from the group's
    stacked arrays, in place (they stay in the group). The others field by field
    (:func:`runtime.state.pack_many`).
    """
    out: list[bytes] = [b""] * len(streams)
    together: dict[tuple, list[int]] = {}
    alone = []
    for i, s in enumerate(streams):
        if type(s) is not Stream:
            alone.append(i)
            continue
        group = s._group
        # Rows of one key make one layout: the same buffer length, the same optional fields.
        where = (id(group), -1) if group is not None else (None, len(s._buf))
        together.setdefault((*where, s._pos is None, s._answer is None, s._pred is None),
                            []).append(i)
    jobs = [(alone, pack_many([streams[i]._fields() for i in alone]))]
    jobs += [(rows, pack_columns(_columns([streams[i] for i in rows])))
             for rows in together.values()]
    for rows, blobs in jobs:
        for i, blob in zip(rows, blobs):
            out[i] = blob
    return out


def _columns(streams: list) -> Columns:
    """The state columns of one-slot streams of one key of :func:`to_bytes_many`."""
    first = streams[0]
    model, group = first.model, first._group

    def stacked(name):
        return None if getattr(first, name) is None else \
            np.stack([getattr(s, name) for s in streams])

    if group is None:
        buf, steps, pred = stacked("_buf"), [s._steps for s in streams], stacked("_pred")
    else:
        idx = [s._gi for s in streams]
        buf, steps = group.buf[idx], [s._steps + group.calls for s in streams]
        pred = group.pred[idx] if group.pred is not None else stacked("_pred")
    if group is not None and group.states is not None:
        state = {n: to_host(v)[idx] for n, v in zip(model.state_inputs, group.states)}
    else:                                      # each stream's own (1, units) arrays
        state = {n: np.concatenate([to_host(s._state[t]) for s in streams])
                 for t, n in enumerate(model.state_inputs)}
    return Columns(model.fingerprint, model.window, model.carry_state, state, buf, steps,
                   None, [s._pos for s in streams], pred, stacked("_seen"),
                   stacked("_answer"), [{}] * len(streams), [s._sections for s in streams])


def from_columns(model, kind: type, c: Columns, ok, missing: str) -> list:
    """Streams of ``kind`` continuing from the rows of ``c`` (``ok``: the rows
    :func:`runtime.state.sound` passed; None for the others); ``Model.restore_many``."""
    rows, slots = len(c.steps), model_slots(model)
    # One (rows, B, 1, units) array per tensor; by_slot[k][i]: row i's slot k, a tuple of
    # (1, units) views, one per tensor.
    parts = [np.asarray(a, np.float32).reshape(rows, slots, 1, -1) for a in c.state.values()]
    by_slot = [list(zip(*(list(p[:, k]) for p in parts))) or [()] * rows
               for k in range(slots)]
    bufs = c.buffer.astype(model.dtype if model.tokens else np.float32)   # (rows, m, features)
    pred, answer = _f32(c.prediction), _f32(c.answer)
    last = None if c.last is None else np.asarray(c.last, np.float64)
    out: list = []
    for i in range(rows):
        if not ok[i]:
            out.append(None)
            continue
        s = kind(model, missing)
        s._load([ring[i] for ring in by_slot],
                0 if c.next_slot is None else c.next_slot[i])
        s._buf, s._steps, s._pos, s._sections = bufs[i], c.steps[i], c.position[i], \
            dict(c.sections[i])
        s._pred = None if pred is None else pred[i]
        s._seen = None if last is None else last[i]
        s._answer = None if answer is None else answer[i]
        out.append(s)
    return out


def busy_message(stream) -> str:
    """Why a stream that is being stepped (on another thread) cannot be stepped or read."""
    return (f"a stream of {stream.model.name} is being stepped by another call, on another "
            f"thread; a stream is stepped by one thread at a time (the state of each step "
            f"is the last one's): step each stream from one thread, or lock around its "
            f"steps")


def conflict_message(at, seen, raw) -> str:
    """Why a reading at the position of the last one, with other values, is not fed."""
    return (f"a reading at {describe_position(at)} was already fed with other values "
            f"({_values(seen, raw)}, now {_values(raw, seen)}); it was not fed again: a "
            f"position names one reading, so send each once, or turn the order check off")


def _values(x, other=None) -> str:
    """The first values of a reading, ``:g``; where that would read as ``other`` does, as
    float32's shortest form, which tells apart any two readings the order rule does."""
    if x is None:
        return "none"
    values = np.asarray(x, np.float64).reshape(-1)[:8]
    text = ", ".join(f"{v:g}" for v in values)
    if other is not None and text == ", ".join(f"{v:g}" for v in
                                                 np.asarray(other, np.float64).reshape(-1)[:8]):
        with np.errstate(over="ignore"):
            text = ", ".join(str(v) for v in values.astype(np.float32))
    return text


class _Fields(NamedTuple):
    """A stream's state fields, not copied: what ``snapshot`` copies and ``to_bytes`` encodes."""

    state: dict
    buffer: np.ndarray
    steps: int
    fingerprint: str
    window: int
    carry_state: bool
    next_slot: int | None
    prediction: np.ndarray | None
    position: float | int | None
    last: np.ndarray | None
    answer: np.ndarray | None
    sections: dict
    extra: dict = {}

    def to_bytes(self) -> bytes:
        return pack(self)


def _copy(value):
    return None if value is None else np.array(value)


def _f32(value):
    return None if value is None else np.array(value, np.float32)


def previous_row(model, pred) -> np.ndarray:
    """``(1, targets)``: a stream's last prediction; where it has none yet, Keras's answer
    for nothing fed (``Model.mask_answer``), NaN in a file without one."""
    if pred is None:
        return nothing_fed(model)[None]
    return pred[None]


def nothing_fed(model) -> np.ndarray:
    """``(targets,)``: the answer where every reading was masked (see ``Model``, Notes)."""
    if model.mask_answer is None:
        return np.full(model.n_targets, np.nan, np.float32)
    return model.mask_answer.copy()


def run_windows(model, wins, masked, states):
    """Windows with masked readings, each run on its unmasked readings only (Keras's skip).

    Parameters
    ----------
    wins : ``(r, window, features)``.
    masked : ``(r, window)`` bool, True for a masked reading.
    states : the windows' initial states, one ``(r, units)`` numpy array per tensor.

    Returns
    -------
    ``(r, targets)`` the prediction after each window's last unmasked reading,
    ``model.mask_answer`` (NaN without one) for a window with none, and the final states (a
    window with none keeps its initial state). Windows with the same number of unmasked
    readings share one ORT call.
    """
    keep = ~masked
    counts = keep.sum(axis=1)                              # (r,)
    ys = np.empty((len(wins), model.n_targets), np.float32)
    ys[:] = nothing_fed(model)                             # a window with none keeps it
    new = [np.array(s, np.float32) for s in states]        # copies: written row by row
    for k in np.unique(counts):
        if k == 0:
            continue
        rows = np.flatnonzero(counts == k)
        x = wins[rows][keep[rows]].reshape(len(rows), k, -1)   # (rows, k, features)
        y, out = model._run(x, [s[rows] for s in states])
        ys[rows] = y[:, -1]
        for target, value in zip(new, out):
            target[rows] = value
    return ys, new


def _problems(model, x, policy: str) -> list[str]:
    """What is wrong with the non-finite values of one reading, under a missing policy."""
    names = model.features
    inf = [names[i] for i in np.flatnonzero(np.isinf(x))]
    nan = [names[i] for i in np.flatnonzero(np.isnan(x))]
    problems = []
    if inf:
        problems.append(f"inf in {', '.join(inf)} (an infinite value, or one beyond "
                        f"float32's range of ±3.4e38, cannot be fed; clip it)")
    if nan and policy == "error":
        problems.append(f"NaN (missing) in {', '.join(nan)} (load with missing='skip' or "
                        f"'hold' to stream through gaps)")
    return problems


def skips_gap(policy: str, held: bool) -> bool:
    """Whether a reading with a NaN (a gap) is skipped, not fed, under ``policy``: always
    with ``skip``, with ``hold`` while there is no ``held`` reading (see :func:`fill_missing`;
    ``error`` refuses it). A skipped reading claims no position (``at``), so that a corrected
    resend of it is fed, not refused as a conflict."""
    return policy == "skip" or (policy == "hold" and not held)


def fill_missing(model, x, last, policy: str, check_only: bool = False):
    """A reading with NaN/inf under a policy: raise, None (skip), or the filled reading.

    ``hold`` replaces each NaN feature with its value in ``last``, the last reading fed; with
    nothing fed yet there is nothing to hold and the reading is skipped.
    """
    problems = _problems(model, x, policy)
    if problems:
        raise InputError("the reading has " + "; ".join(problems))
    if check_only:
        return x
    if policy == "skip" or last is None:
        return None
    return np.where(np.isnan(x), last, x).astype(last.dtype)


def fill_chunk(model, xs, last, policy: str):
    """Rows of a chunk with NaN/inf under a policy; returns (the rows to feed, keep mask).

    Raises one :class:`InputError` listing every bad row. ``hold`` fills from the row fed
    before, within the chunk too.
    """
    bad = np.flatnonzero(~np.isfinite(xs).all(axis=1))
    problems = [f"row {i}: {'; '.join(p)}" for i in bad
                if (p := _problems(model, xs[i], policy))]
    if problems:
        raise InputError(f"{len(problems)} of {len(xs)} readings cannot be fed: "
                         + " | ".join(problems[:10]) + (" | …" if len(problems) > 10 else ""))
    keep, out = np.ones(len(xs), bool), xs.copy()
    for i in bad:
        j = i - 1
        while j >= 0 and not keep[j]:                      # the row fed before this one
            j -= 1
        filled = fill_missing(model, xs[i], out[j] if j >= 0 else last, policy)
        if filled is None:
            keep[i] = False
        else:
            out[i] = filled
    rows = out[keep]
    return (rows.astype(model.dtype) if model.tokens else rows), keep
