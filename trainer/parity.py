"""The export check: the ONNX graph, stepped one sample at a time, against Keras.

ONNX Runtime is driven directly (not through the project's ``runtime`` package) so the check
is independent of the code it vouches for. The Keras reference is rebuilt from the same
layers' configs and weights with ``return_sequences=True, return_state=True,
stateful=False``, so it gives a prediction per step and each layer's final state and takes
an initial state. Differences are measured in the model's normalised units (raw difference
divided by the target scaler's std): a raw target like CO2 at ~700 ppm has a float32 ulp of
6e-5, so a raw-unit tolerance of 1e-4 would measure rounding, not the export. Where even
that is not enough (air pressure at 101325 Pa with a std of 10: one float32 ulp of the raw
output is 8e-4 normalised), ``y`` is allowed ``atol`` plus one ulp of the largest raw
output divided by std, its ``resolution``, reported beside the figures. States are compared
relative to their own size where it exceeds 1 (see :func:`_state_diff`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ParityError
from .graph import is_recurrent

STREAMS = 4   # parallel streams in the long check: the batch axis is exercised too
WINDOWS = 4   # consecutive windows in the stateful check


@dataclass
class Subject:
    """What the check needs to know about the exported model."""

    onnx_bytes: bytes
    layers: list            # the Keras layers, in order
    original: object        # the original keras.Model, for predict
    state: tuple            # StateSpec per recurrent layer
    tokens: bool            # x holds token ids
    features: int           # F (1 for tokens)
    vocab: int              # token-id range, for token models
    scaler: dict | None     # {"x": {mean, std}, "y": {mean, std}}
    window: int
    carry_state: bool
    forecast: dict | None = None  # residual / differencing in the graph (forecast_graph.plan)


def reference_model(layers, subject: Subject):
    """A stateless Keras model returning per-step y and every recurrent layer's state."""
    import keras

    if subject.tokens:
        inp = keras.Input(shape=(None,), dtype="int64", name="x")
    else:
        inp = keras.Input(shape=(None, subject.features), name="x")
    x, state_in, state_out = inp, [], []
    specs = iter(subject.state)
    for layer in layers:
        if not is_recurrent(layer):
            x = layer(x)  # stateless per-step layers are shared with the original as they are
            continue
        config = layer.get_config()
        for key in ("batch_input_shape", "input_shape", "batch_shape"):
            config.pop(key, None)  # the reference has its own, batch-free input
        spec = next(specs)
        config.update(return_sequences=True, return_state=True, stateful=False)
        clone = type(layer).from_config(config)
        initial = [keras.Input(shape=(spec.units,), name=n) for n in spec.inputs]
        x, *states = clone(x, initial_state=initial)
        clone.set_weights(layer.get_weights())
        state_in += initial
        state_out += states
    return keras.Model([inp, *state_in], [x, *state_out])


def _series(rng, subject: Subject, batch: int, steps: int):
    """Random input in raw units around the scaler's mean/std, and its normalised twin."""
    if subject.tokens:
        ids = rng.integers(0, subject.vocab, size=(batch, steps)).astype(np.int64)
        return ids, ids
    raw = rng.normal(size=(batch, steps, subject.features))
    if subject.scaler and subject.scaler.get("x"):
        mean = np.asarray(subject.scaler["x"]["mean"])
        std = np.asarray(subject.scaler["x"]["std"])
        raw = (raw * std + mean).astype(np.float32)                   # (batch, time, F)
        return raw, ((raw - mean) / std).astype(np.float32)
    raw = raw.astype(np.float32)
    return raw, raw


def _normalised_y(subject: Subject, y: np.ndarray, raw=None) -> np.ndarray:
    y = _framed_y(subject, y, raw)
    if subject.scaler and subject.scaler.get("y"):
        return (y.astype(np.float64) - np.asarray(subject.scaler["y"]["mean"])) \
            / np.asarray(subject.scaler["y"]["std"])
    return y


def _framed_y(subject: Subject, y: np.ndarray, raw) -> np.ndarray:
    """A residual graph's y less the target's reading it added: the network's change."""
    residual = (subject.forecast or {}).get("residual")
    if residual is None:
        return y
    return y.astype(np.float64) - raw[..., residual].astype(np.float64)[:, -y.shape[1]:]


def _framed_x(subject: Subject, raw, norm, states):
    """What the network reads for ``raw``, the way the graph differences it.

    The graph takes ``x[t] - x[t-1]`` in raw float32 and ``d[0]`` from the carried reading
    (sequence mode; "no change" for a fresh stream) or as 0 (windows). Returns the
    normalised input, the recurrent layers' states (without the reading), and the reading
    state the graph should hand on (None where it has none).
    """
    kind = (subject.forecast or {}).get("difference")
    if not kind:
        return norm, states, None
    states, carried = list(states), None
    if kind == "state":
        held = states.pop()                                         # (batch, F + 1)
        start = np.where(held[:, -1:] > 0.5, held[:, :-1], raw[:, 0])   # (batch, F)
        ones = np.ones((len(raw), 1), np.float32)
        carried = np.concatenate([raw[:, -1], ones], axis=1)
    else:
        start = raw[:, 0]
    change = raw - np.concatenate([start[:, None], raw[:, :-1]], axis=1)   # float32
    x = subject.scaler["x"] if subject.scaler and subject.scaler.get("x") else None
    if x is not None:
        change = ((change - np.asarray(x["mean"])) / np.asarray(x["std"])).astype(np.float32)
    return change, states, carried


def _initial_states(rng, subject: Subject, raw) -> list:
    """Random recurrent states; a carried reading for half the streams, fresh (0) for the rest."""
    states = []
    for spec in subject.state:
        for _ in spec.inputs:
            if spec.kind == "prev":
                held = np.zeros((len(raw), spec.units), np.float32)
                half = len(raw) // 2
                held[:half, :-1] = raw[:half, 0] + rng.normal(size=raw[:half, 0].shape)
                held[:half, -1] = 1.0
                states.append(held)
            else:
                states.append(rng.normal(scale=0.5, size=(len(raw), spec.units))
                              .astype(np.float32))
    return states


def _names(subject: Subject) -> list[str]:
    return [n for spec in subject.state for n in spec.inputs]


def _run(session, subject: Subject, x, states):
    feed = {"x": x, **dict(zip(_names(subject), states))}
    y, *out = session.run(None, feed)
    return y, out


def _stepwise(session, subject: Subject, x, states):
    """Feed ``x`` one sample at a time, carrying the state."""
    ys = []
    for t in range(x.shape[1]):
        y, states = _run(session, subject, x[:, t:t + 1], states)
        ys.append(y)
    return np.concatenate(ys, axis=1), states


def _maxdiff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _state_diff(a, b) -> float:
    """Max difference of a state, relative to the state's size where it exceeds 1.

    An LSTM's cell state is unbounded: a trained model carrying it over 1,000 steps reaches
    |c| of 50 and more, where one float32 ulp is already 4e-6 and rounding alone adds up
    to more than any fixed ``atol``. ``h`` (bounded by 1) is measured as is.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


def check(subject: Subject, *, steps: int = 1000, atol: float = 1e-4, seed: int = 0) -> dict:
    """Run :func:`compare` with Keras on the CPU (see :func:`compare` for the figures)."""
    import tensorflow as tf

    # A TensorFlow that sees a GPU would run the reference LSTMs through cuDNN; the CPU
    # kernels are the ones the export is vouched against.
    with tf.device("/CPU:0"):
        return compare(subject, steps=steps, atol=atol, seed=seed)


def compare(subject: Subject, *, steps: int = 1000, atol: float = 1e-4, seed: int = 0) -> dict:
    """Compare the ONNX graph with Keras; return the figures or raise :class:`ParityError`.

    Comparisons, each a max abs difference in normalised units:

    * ``y`` and every state output: ONNX stepped one sample at a time over ``steps`` steps
      for several streams from a random initial state (and the same as one chunk), against
      the Keras reference on the whole sequence;
    * ``chunk_vs_steps``: the whole chunk in one call against one sample at a time;
    * ``window_vs_predict`` (window models): a window from zero state against the original
      model's ``predict``;
    * ``stateful_vs_predict`` (stateful models): consecutive windows carrying the state
      against the original stateful model's ``predict`` over the same windows.
    """
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    session = ort.InferenceSession(subject.onnx_bytes, providers=["CPUExecutionProvider"])
    reference = reference_model(subject.layers, subject)
    outputs = [n for spec in subject.state for n in spec.outputs]
    raw, norm = _series(rng, subject, STREAMS, steps)
    states = _initial_states(rng, subject, raw)
    norm, keras_states, carried = _framed_x(subject, raw, norm, states)
    expected = reference.predict([norm, *keras_states], batch_size=STREAMS, verbose=0)
    expected = expected if isinstance(expected, list) else [expected]
    expected = expected + ([carried] if carried is not None else [])
    y_chunk, s_chunk = _run(session, subject, raw, states)
    # A window-differenced graph differences within one call: only whole chunks mean
    # anything to it (the runtime feeds it whole windows), so it is not stepped.
    stepped = (subject.forecast or {}).get("difference") != "window"
    runs = [(y_chunk, s_chunk)]
    if stepped:
        y_step, s_step = _stepwise(session, subject, raw, states)
        runs.append((y_step, s_step))
    per_output = {"y": max(_maxdiff(_normalised_y(subject, y, raw), expected[0])
                           for y, _ in runs)}
    for k, name in enumerate(outputs):
        per_output[name] = max(_state_diff(s[k], expected[1 + k]) for _, s in runs)
    if stepped:
        per_output["chunk_vs_steps"] = max(
            [_maxdiff(_normalised_y(subject, y_chunk, raw), _normalised_y(subject, y_step, raw))]
            + [_state_diff(a, b) for a, b in zip(s_chunk, s_step)])
    per_output.update(_against_original(session, subject, rng))
    resolution = _resolution(subject, y_chunk)
    report = {"max_abs_diff": max(per_output.values()), "per_output": per_output,
              "steps": steps, "streams": STREAMS, "atol": atol,
              "units": "normalised", "states": "relative to max(1, |state|)",
              "resolution": resolution}
    # Outputs holding y in raw float32 may differ by its resolution on top of atol.
    allowed = {name: atol + (resolution if name in _Y_FIGURES else 0.0) for name in per_output}
    failures = [f"{name}: max abs diff {diff:.3g} > atol {allowed[name]:.3g}"
                for name, diff in per_output.items() if not diff <= allowed[name]]
    if failures:
        raise ParityError("the ONNX graph does not reproduce Keras (nothing was written): "
                          + "; ".join(failures))
    return report


_Y_FIGURES = {"y", "chunk_vs_steps", "window_vs_predict", "stateful_vs_predict"}


def _resolution(subject: Subject, y_raw: np.ndarray) -> float:
    """One float32 ulp of the largest raw output, in normalised units (0 without a scaler)."""
    if not (subject.scaler and subject.scaler.get("y")):
        return 0.0
    largest = np.max(np.abs(y_raw.reshape(-1, y_raw.shape[-1])), axis=0)   # (outputs,)
    std = np.asarray(subject.scaler["y"]["std"])
    return float(np.max(np.spacing(largest.astype(np.float32)) / std))


def _original_window(subject: Subject) -> int:
    time_axis = subject.original.inputs[0].shape[1]
    return time_axis if time_axis is not None else subject.window


def _compare_last(subject: Subject, y_onnx, predicted, raw=None) -> float:
    """Keras returns (batch, outputs) for return_sequences=False: its last step."""
    y = _normalised_y(subject, y_onnx, raw)
    predicted = np.asarray(predicted)
    return _maxdiff(y[:, -1] if predicted.ndim == 2 else y, predicted)


def _against_original(session, subject: Subject, rng) -> dict:
    figures = {}
    stateful = any(getattr(layer, "stateful", False) for layer in subject.layers)
    zeros = lambda batch: [np.zeros((batch, spec.units), np.float32)  # noqa: E731
                           for spec in subject.state for _ in spec.inputs]
    if stateful:
        batch = subject.original.inputs[0].shape[0] or 1
        length = _original_window(subject)
        raw, norm = _series(rng, subject, batch, length * WINDOWS)
        _reset(subject.original)
        states, worst = zeros(batch), 0.0
        for k in range(WINDOWS):
            part = slice(k * length, (k + 1) * length)
            window, _, _ = _framed_x(subject, raw[:, part], norm[:, part], [])
            predicted = subject.original.predict_on_batch(window)
            y, states = _run(session, subject, raw[:, part], states)
            worst = max(worst, _compare_last(subject, y, predicted, raw[:, part]))
        _reset(subject.original)
        figures["stateful_vs_predict"] = worst
    elif subject.window > 1 and not subject.carry_state:
        length = _original_window(subject)
        raw, norm = _series(rng, subject, STREAMS, length)
        norm, _, _ = _framed_x(subject, raw, norm, [])
        predicted = subject.original.predict(norm, batch_size=STREAMS, verbose=0)
        y, _ = _run(session, subject, raw, zeros(STREAMS))
        figures["window_vs_predict"] = _compare_last(subject, y, predicted, raw)
    return figures


def _reset(model) -> None:
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
