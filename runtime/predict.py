"""``Model.predict``: Keras-shaped windows in, what Keras's ``model.predict`` gives out.

A user checking an export holds the arrays the tutorial made: ``testX`` shaped
``(samples, timesteps, features)`` (token ids: ``(samples, timesteps)``), a *sample* being
one window. :func:`predict` runs them the way the file's streaming mode says
(docs/contract.md, "Streaming modes"), in as few ONNX Runtime calls as it can:

- ``window``: every sample from a zero state, all in one batched call (chunks of 4,096);
  row ``i`` equals Keras ``model.predict(X)[i]``.
- ``stateful``: sample ``j`` starts from the state sample ``j - B`` ended in, ``B`` being
  the file's state slots, one call per group of ``B`` samples; equals Keras
  ``model.predict(X, batch_size=B)`` right after ``reset_states()``. Keras refuses a count
  of samples that is not a multiple of a ``batch_shape``'s B; the rows of a batch never
  mix, so a last, partial group is answered as Keras answers ``X`` padded to whole
  batches (any padding), cut back to its samples.
- ``sequence``: each sample a whole sequence from a zero state, one call; returns every
  timestep, as a Keras model with ``return_sequences=True`` does, or the last one where the
  file says Keras answered that alone (``lstm_edge.answers``: ``last``).

Raw units in and out, as everywhere in the runtime; masked readings are skipped as a
stream skips them. Nothing here touches a stream.

A stateful Keras model of one timestep per sample (``batch_shape=(B, 1, features)``) has
window 1 and carries state, which is ``sequence`` mode in the file: its Keras
``predict(X, batch_size=B)`` carries the state from sample to sample, which ``predict`` here
does too, as the file's ``lstm_edge.state_slots`` says (B = 1: what a stream fed ``X[:, 0]``
gives).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, ShapeError, counted
from .shapes import check_shape
from .stream import _CHUNK, previous_row, run_windows


def predict(model, X) -> np.ndarray:
    """Predict for an array of windows; see :meth:`runtime.Model.predict`."""
    x = _windows(model, X)                                 # (samples, timesteps, features)
    if model.carry_state and (model.window > 1 or model.slots > 1 or model.info.keras_stateful):
        return _stateful(model, x)
    if not model.carry_state and model.info.answers_every:
        return _sequence(model, x)                         # every timestep, from zero states
    if not model.carry_state:
        ys = _window(model, x)                             # (samples, outputs)
        block = model.block
        # A block comes back as Keras gives it: (samples, steps, names).
        return ys if block is None else ys.reshape(len(ys), block.steps, len(block.names))
    ys = _sequence(model, x)                               # (samples, timesteps, outputs)
    return ys[:, -1] if model.info.answers_last else ys


def _windows(model, X) -> np.ndarray:
    """``X`` checked and converted: ``(samples, timesteps, features)`` in the model's dtype."""
    columns = getattr(X, "columns", None)
    if columns is not None and getattr(X, "ndim", 2) == 2:
        from .model import _some
        # a table (a DataFrame) is readings, one row per time step, not windows
        raise InputError(f"X is a table of {counted(len(X), 'row')} (columns "
                         f"{_some(list(columns))}): predict takes windows, (samples, "
                         f"timesteps, features) as Keras's predict does; to answer each "
                         f"reading, feed the rows to a stream: "
                         f"model.stream().feed(df[list(model.features)])")
    try:
        a = np.asarray(X)
    except (ValueError, TypeError) as exc:   # ragged lists
        raise ShapeError(f"X cannot form one array ({exc}); every sample (window) needs the "
                         f"same number of timesteps and features") from None
    if a.dtype.kind not in "fiu":
        raise InputError(f"X must hold numbers, got dtype {a.dtype}; convert it with "
                         f"np.asarray(X, dtype=float)")
    # Sequence mode reads any length, unless the model was stateful (a window of one).
    steps = None if model.mode == "sequence" and model.slots == 1 \
        and not model.info.keras_stateful else model.window
    if model.tokens:
        check_shape(a.shape, (None, steps), what="X", axes=("samples", "timesteps"))
        a = a[..., None]                                   # (samples, timesteps, 1) ids
    else:
        check_shape(a.shape, (None, steps, model.n_features), model.features, what="X")
    a = model._as_model_dtype(a)
    bad = ~np.isfinite(a).all(axis=(1, 2))
    if bad.any():
        rows = np.flatnonzero(bad)
        raise InputError(f"X holds NaN or inf in {len(rows)} of {len(a)} samples (windows) "
                         f"(first: {', '.join(map(str, rows[:5]))}); Keras would predict NaN "
                         f"there: fill the gaps, or stream the series with missing='hold' "
                         f"or 'skip'")
    return a


def _masked(model, x):
    """``(samples, timesteps)`` masked readings, or None where nothing is masked."""
    if model._mask is None:
        return None
    flags = model._masked(x)
    return flags if flags.any() else None


def _window(model, x) -> np.ndarray:
    """Every sample from a zero state: ``(samples, targets)``."""
    ys = np.empty((len(x), model.n_targets), np.float32)
    masked = _masked(model, x)
    for start in range(0, len(x), _CHUNK):
        part = np.ascontiguousarray(x[start:start + _CHUNK])   # (r, window, features)
        zeros = model.zeros(len(part))
        if masked is None:
            y, _ = model._run(part, zeros)                 # (r, window, targets)
            ys[start:start + len(part)] = y[:, -1]
        else:
            ys[start:start + len(part)], _ = run_windows(
                model, part, masked[start:start + _CHUNK], zeros)
    return ys


def _stateful(model, x) -> np.ndarray:
    """Sample ``j`` from the state sample ``j - B`` left: ``(samples, targets)``.

    Keras ``predict(X, batch_size=B)`` runs rows ``g*B .. g*B + B - 1`` as one batch whose
    row ``i`` starts from the state row ``i`` of the batch before ended in: one call per
    group, the groups' states stacked along the batch axis.
    """
    count = model.slots
    masked = _masked(model, x)
    if count == 1 and model.window == 1 and masked is None and len(x):
        y, _ = model._run(np.ascontiguousarray(x.reshape(1, len(x), -1)), model.zeros(1))
        return y[0]                                        # one sequence: the same states
    states = model.zeros(count)                            # (B, units) each: slot k in row k
    ys = np.empty((len(x), model.n_targets), np.float32)
    for start in range(0, len(x), count):
        part = x[start:start + count]                      # (r <= B, window, features)
        r = len(part)
        begin = [s[:r] for s in states]
        if masked is not None and masked[start:start + r].any():
            ys[start:start + r], new = run_windows(model, part, masked[start:start + r], begin)
        else:
            y, new = model._run(np.ascontiguousarray(part), begin)
            ys[start:start + r] = y[:, -1]
        states = [np.concatenate((n, s[r:])) for n, s in zip(new, states)]
    return ys


def _sequence(model, x) -> np.ndarray:
    """Each sample a whole sequence from a zero state: ``(samples, timesteps, targets)``."""
    if not x.shape[0] or not x.shape[1]:
        return np.empty((*x.shape[:2], model.n_targets), np.float32)
    masked = _masked(model, x)
    if masked is None:
        y, _ = model._run(np.ascontiguousarray(x), model.zeros(len(x)))
        return y
    # As a stream does: a masked reading is not fed, its step repeats the prediction before.
    keep = ~masked                                         # (samples, timesteps)
    counts = keep.sum(axis=1)
    out = np.empty((*x.shape[:2], model.n_targets), np.float32)
    for k in np.unique(counts):
        rows = np.flatnonzero(counts == k)
        fed = np.empty((len(rows), 0, model.n_targets), np.float32)
        if k:
            fed, _ = model._run(x[rows][keep[rows]].reshape(len(rows), k, -1),
                                model.zeros(len(rows)))    # (rows, k, targets)
        table = np.concatenate((np.broadcast_to(previous_row(model, None),
                                                (len(rows), 1, model.n_targets)), fed), axis=1)
        at = np.cumsum(keep[rows], axis=1)                 # (rows, timesteps) into the table
        out[rows] = np.take_along_axis(table, at[..., None], axis=1)
    return out
