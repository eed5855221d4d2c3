"""One stream: its own recurrent state and window buffer, fed one sample (or chunk) at a time.

The streaming mode comes from the model (see CONTRACT.md, "Streaming modes"):

- ``sequence`` (window 1, carrying state): each sample is fed once, the state carried.
- ``window`` (not carrying state): the last ``window`` samples run from a zero state; the
  prediction equals Keras ``model.predict(last_window)``.
- ``stateful`` (window > 1, carrying state): the last ``window`` samples run from the state
  the previous window ended in, and that window's final state is carried on; equals a
  stateful Keras ``predict`` over the sliding windows.

A call either completes or leaves the stream exactly as it was: every check runs before
anything is assigned, and the new state, buffer and count are assigned only after the ORT
call succeeded. State arrays are never written in place, only replaced, so a snapshot or a
many-stream call can hold views of them safely.
"""

from __future__ import annotations

import warnings

import numpy as np

from .device import to_host
from .errors import InputError
from .snapshot import Snapshot

_CHUNK = 4096   # window mode runs at most this many windows in one ORT call

# The per-step finite check is ``x.dot(zeros) != 0`` (0.3 µs, a third of np.isfinite().all()):
# NaN and inf both turn the product into NaN, but inf * 0 makes numpy warn. An inf sample is
# refused with an InputError right after, so that warning is noise, and only ours is muted.
for _module in ("runtime.stream", "runtime.model"):
    warnings.filterwarnings("ignore", "invalid value encountered in dot", RuntimeWarning, _module)


class Stream:
    """One stream of samples through a model; create it with ``Model.stream()``.

    Attributes
    ----------
    model : the model the stream belongs to.
    missing : what a NaN in a sample does: ``"error"``, ``"skip"`` or ``"hold"``.
    """

    __slots__ = ("model", "missing", "_state", "_buf", "_steps", "_own", "_group", "_gi")

    def __init__(self, model, missing: str):
        self.model, self.missing, self._own, self._group = model, missing, None, None
        self.reset()

    def __repr__(self):
        return (f"<Stream of {self.model.name}: {self._steps} steps, "
                f"{'ready' if self.ready else 'warming up'}>")

    # --- the verbs -----------------------------------------------------------------------

    def step(self, sample):
        """Feed one sample (raw units); returns ``(targets,)`` or None while warming up/skipped.

        Raises
        ------
        InputError, ShapeError : the sample cannot be fed; the stream is unchanged.
        """
        if self._group is not None:
            self._sync()
        model = self.model
        x = model._check(sample)                           # (features,)
        if float(x.dot(model._fin)) != 0.0:                # NaN or inf somewhere: rare
            x = fill_missing(model, x, self._last(), self.missing)
            if x is None:
                return None
        return self._advance(x)

    def feed(self, samples) -> np.ndarray:
        """Feed a chunk ``(n, features)``; returns ``(n, targets)``, NaN rows while warming up.

        Same predictions and final state as :meth:`step` one by one; one ORT call for the
        whole chunk in ``sequence`` and ``window`` mode, one per sample in ``stateful`` mode.
        """
        self._sync()
        model = self.model
        xs = model._check_chunk(samples)                   # (n, features)
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

    def snapshot(self) -> Snapshot:
        """The stream's state and window buffer as plain numpy arrays (copies)."""
        self._sync()
        model = self.model
        return Snapshot(state=self.state, buffer=self._buf.copy(), steps=self._steps,
                        fingerprint=model.fingerprint, window=model.window,
                        carry_state=model.carry_state)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """Graph input name -> ``(units,)`` copy of the state that input gets next."""
        self._sync()
        return {name: np.array(to_host(v)[0]) for name, v in
                zip(self.model.state_inputs, self._state)}

    @property
    def steps(self) -> int:
        """Samples fed since the stream was created or reset (skipped ones not counted)."""
        return self._steps + (self._group.calls if self._group is not None else 0)

    @property
    def ready(self) -> bool:
        """Whether the window has filled, so that a step gives a prediction."""
        return self._group is not None or len(self._buf) >= self.model.window

    # --- inside --------------------------------------------------------------------------

    def _last(self):
        self._sync()
        return self._buf[-1] if len(self._buf) else None

    def _restore(self, state, buf, steps):
        self.reset()
        self._state, self._buf, self._steps = state, buf, steps

    def _sync(self):
        """Leave a many-stream group (see ``batch.Group``): take this stream's rows of it."""
        group = self._group
        if group is None:
            return
        i = self._gi
        if self.model.carry_state:
            self._state = tuple(s[i:i + 1] for s in group.states)   # (1, units) views
        self._buf, self._steps = group.buf[i], self._steps + group.calls
        group.dirty, self._group = True, None

    def _advance(self, x):
        """Feed one checked sample ``(features,)``; the heart of every mode."""
        model = self.model
        window = model.window
        if window == 1:
            buf = x[None]                                  # (1, features)
        else:
            buf = np.concatenate((self._buf[1 - window:], x[None]))  # (<= window, features)
            if len(buf) < window:
                self._buf, self._steps = buf, self._steps + 1
                return None
        if model.carry_state:
            y, self._state = self._run(buf[None])          # (1, window, targets)
        else:
            y, _ = model._run(buf[None], model._zero_state)
        self._buf, self._steps = buf, self._steps + 1
        return y[0, -1]

    def _run(self, x):
        """One call from this stream's state; on a bound runner, into the spare buffers."""
        model = self.model
        if not model._runner.bound:
            return model._run(x, self._state)
        if self._own is None:   # two sets of device buffers: one holds the state, one is written
            runner = model._runner
            self._own = tuple(tuple(runner.empty((1, u)) for u in model.units) for _ in "ab")
        out = self._own[1] if self._state is self._own[0] else self._own[0]
        y, _ = model._run(x, self._state, out)
        return y, out

    def _feed_sequence(self, xs):
        if not len(xs):
            return np.empty((0, self.model.n_targets), np.float32)
        y, state = self._run(xs[None])                     # (1, n, targets)
        self._state, self._buf, self._steps = state, xs[-1:], self._steps + len(xs)
        return y[0]

    def _feed_windows(self, xs):
        model, window = self.model, self.model.window
        seq = np.concatenate((self._buf, xs))              # (m + n, features)
        first = max(window - 1, len(self._buf))            # first row ending a full window
        ys = np.full((len(xs), model.n_targets), np.nan, np.float32)
        if len(seq) > first:
            wins = np.lib.stride_tricks.sliding_window_view(seq, window, axis=0)
            wins = wins[first - window + 1:].transpose(0, 2, 1)   # (r, window, features)
            at = first - len(self._buf)
            for start in range(0, len(wins), _CHUNK):
                part = np.ascontiguousarray(wins[start:start + _CHUNK])
                y, _ = model._run(part, model.zeros(len(part)))
                ys[at + start:at + start + len(part)] = y[:, -1]
        self._buf, self._steps = seq[-window:].copy(), self._steps + len(xs)
        return ys

    def _feed_stateful(self, xs):
        saved = (self._state, self._buf, self._steps)
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


def _problems(model, x, policy: str) -> list[str]:
    """What is wrong with the non-finite values of one sample, under a missing policy."""
    names = model.features
    inf = [names[i] for i in np.flatnonzero(np.isinf(x))]
    nan = [names[i] for i in np.flatnonzero(np.isnan(x))]
    problems = []
    if inf:
        problems.append(f"inf in {', '.join(inf)} (infinite values cannot be fed; clip them)")
    if nan and policy == "error":
        problems.append(f"NaN (missing) in {', '.join(nan)} (load with missing='skip' or "
                        f"'hold' to stream through gaps)")
    return problems


def fill_missing(model, x, last, policy: str, check_only: bool = False):
    """A sample with NaN/inf under a policy: raise, None (skip), or the filled sample.

    ``hold`` replaces each NaN feature with its value in ``last``, the last sample fed; with
    nothing fed yet there is nothing to hold and the sample is skipped.
    """
    problems = _problems(model, x, policy)
    if problems:
        raise InputError("the sample has " + "; ".join(problems))
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
        raise InputError(f"{len(problems)} of {len(xs)} samples cannot be fed: "
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
