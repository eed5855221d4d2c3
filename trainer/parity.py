"""The export check: the ONNX graph, run the way it will stream, against Keras.

ONNX Runtime is driven directly (not through the project's ``runtime`` package) so the check
is independent of the code it vouches for. The Keras reference is rebuilt from the same
layers' configs and weights with ``return_sequences=True, return_state=True,
stateful=False, unroll=False``, so it gives a prediction per step and each layer's final
state and takes an initial state (an ``unroll=True`` layer gives the same numbers rolled,
and a 1,000-step unrolled graph takes minutes to build).

What runs depends on the streaming mode the file will have (docs/contract.md):

* ``window``: many windows of ``window`` readings, each from a zero state — random inputs
  around the scaler's centre and, without a scaler, in [0, 1] as a MinMax-scaled series is;
* ``stateful``: one stream's consecutive sliding windows, window *j* starting from state
  slot *j* mod ``state_slots`` and leaving its state there, as the stream will;
* ``sequence``: long runs of ``steps`` readings from a zero state, state carried.

A model with a Masking layer gets masked readings in every run; they are skipped the way
the contract says (state kept, previous prediction repeated). Its ``lstm_edge.mask_answer``,
what a stream answers where nothing was fed, is checked against Keras on windows whose every
reading is masked, from a zero and from a random carried state (``mask_answer``). Differences are measured in
the model's normalised units (raw difference divided by the target scaler's std): a raw
target like CO2 at ~700 ppm has a float32 ulp of 6e-5, so a raw-unit tolerance of 1e-4
would measure rounding, not the export. Where even that is not enough (air pressure at
101325 Pa with a std of 10: one float32 ulp of the raw output is 8e-4 normalised), ``y`` is
allowed ``atol`` plus one ulp of the largest raw output divided by std, its
``resolution``, reported beside the figures. States are compared relative to their own size
where it exceeds 1 (see :func:`_state_diff`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.contract import streaming_mode
from .errors import ParityError
from .forecast_graph import linear_reference, seasonal_reference
from .graph import is_recurrent

STREAMS = 4     # parallel streams in the sequence-mode check: the batch axis is exercised too
WINDOWS = 64    # windows from a zero state in the window-mode check
CHAIN = 24      # consecutive windows (at least) one stream runs in the stateful check
MASKED = 0.2    # share of readings set to the mask value for a model with Masking
DIVERGED = 1e6  # |prediction or state| in normalised units past which Keras itself diverges


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
    slots: int = 1          # state slots of a stateful stream (lstm_edge.state_slots)
    mask: float | None = None   # the Masking value in normalised units, None without one
    whole: bool = False     # converted whole over its window: no state, y (batch, 1, outputs)
    mask_answer: list | None = None  # lstm_edge.mask_answer (raw units), None where absent

    @property
    def mode(self) -> str:
        return streaming_mode(self.window, self.carry_state)


def reference_model(layers, subject: Subject):
    """A stateless Keras model returning per-step y and every recurrent layer's state."""
    import keras

    if subject.tokens:
        inp = keras.Input(shape=(None,), dtype="int64", name="x")
    else:
        inp = keras.Input(shape=(None, subject.features), name="x")
    x, state_in, state_out, mask = inp, [], [], None
    specs = iter(subject.state)
    for layer in layers:
        if type(layer).__name__ == "Masking":
            # Passed on explicitly: a functional graph with initial states drops Keras's
            # implicit mask, and the reference would then feed the masked readings.
            mask = keras.ops.any(keras.ops.not_equal(x, layer.mask_value), axis=-1)
        if not is_recurrent(layer):
            # Stateless per-step layers are shared with the original as they are;
            # TimeDistributed(Dense) is its Dense on the last axis (a TimeDistributed over a
            # fixed 1,000-step axis builds 1,000 copies and takes half a minute).
            inner = getattr(layer, "layer", None)
            x = _per_step(inner if type(inner).__name__ == "Dense" else layer, x)
            continue
        config = layer.get_config()
        for key in ("batch_input_shape", "input_shape", "batch_shape"):
            config.pop(key, None)  # the reference has its own, batch-free input
        spec = next(specs)
        config.update(return_sequences=True, return_state=True, stateful=False)
        if "unroll" in config:
            config["unroll"] = False   # same numbers; unrolling 1,000 steps takes minutes
        clone = type(layer).from_config(config)
        initial = [keras.Input(shape=(spec.units,), name=n) for n in spec.inputs]
        x, *states = clone(x, initial_state=initial, mask=mask)
        clone.set_weights(layer.get_weights())
        state_in += initial
        state_out += states
    return keras.Model([inp, *state_in], [x, *state_out])


def _per_step(layer, x):
    """``layer`` on every step of ``x`` ``(batch, time, width)``.

    A layer after a recurrent layer that returns its last step only was built for
    ``(batch, width)``: BatchNormalization then refuses the reference's ``(batch, time,
    width)`` (its input spec fixes ndim=2), so it runs on the steps folded into the batch.
    """
    try:
        return layer(x)
    except ValueError:
        return _steps_as_batch(layer)(x)


def _steps_as_batch(layer):
    """A Keras layer running ``layer`` on ``(batch * time, width)`` and unfolding the result."""
    import keras

    class StepsAsBatch(keras.layers.Layer):
        def call(self, x):
            shape = keras.ops.shape(x)                                # (batch, time, width)
            y = layer(keras.ops.reshape(x, (-1, shape[-1])), training=False)
            return keras.ops.reshape(y, (shape[0], shape[1], y.shape[-1]))

        def compute_output_shape(self, shape):
            return (*shape[:2], layer.compute_output_shape((None, shape[-1]))[-1])

    return StepsAsBatch(name=f"{layer.name}_per_step")


# --------------------------------------------------------------------------- inputs

def _series(rng, subject: Subject, batch: int, steps: int, spread: str = "normal",
            fed_every: int | None = None):
    """Random input in raw units and its normalised twin, ``(batch, steps, F)``.

    ``normal``: around the scaler's centre with its scale (the training range), or N(0, 1);
    ``unit``: uniform in [0, 1], where a MinMax-scaled tutorial series lives. A masking model
    gets masked readings, but never at a multiple of ``fed_every`` (default: the first
    reading only), so that every window of that length has a prediction.
    """
    if subject.tokens:
        ids = rng.integers(0, subject.vocab, size=(batch, steps)).astype(np.int64)
        return ids, ids
    if spread == "unit":
        norm = rng.uniform(size=(batch, steps, subject.features))
    else:
        norm = rng.normal(size=(batch, steps, subject.features))
    if subject.mask is not None:
        hit = rng.uniform(size=(batch, steps)) < MASKED
        hit[:, ::fed_every or steps] = False
        norm[hit] = subject.mask
    norm = norm.astype(np.float32)
    if subject.scaler and subject.scaler.get("x"):
        mean = np.asarray(subject.scaler["x"]["mean"])
        std = np.asarray(subject.scaler["x"]["std"])
        return (norm * std + mean).astype(np.float32), norm            # (batch, time, F)
    return norm, norm


def _masked(subject: Subject, norm) -> np.ndarray | None:
    """``(batch, time)`` True where every feature equals the mask value, None without one."""
    if subject.mask is None or subject.tokens:
        return None
    flags = np.all(norm == np.float32(subject.mask), axis=-1)
    return flags if flags.any() else None


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
    start = raw[..., residual].astype(np.float64)[:, -y.shape[1]:]
    seasonal = (subject.forecast or {}).get("seasonal")
    if seasonal:    # sequence runs start from a fresh stream: no season seen before them
        start = start + seasonal_reference(raw[..., residual], None, **seasonal)[0]
    linear = (subject.forecast or {}).get("linear")
    if linear:      # likewise: the first change of a run is 0
        change = np.diff(raw, axis=1, prepend=raw[:, :1])             # (b, T, F)
        start = start + linear_reference(change, None, **linear)[0][:, -y.shape[1]:]
    return y.astype(np.float64) - start


def _framed_x(subject: Subject, raw, norm, states):
    """What the network reads for ``raw``, the way the graph differences it.

    The graph takes ``x[t] - x[t-1]`` in raw float32 and ``d[0]`` from the carried reading
    (sequence mode; "no change" for a fresh stream) or as 0 (windows). Returns the
    normalised input, the recurrent layers' states (without the readings), and the reading
    states the graph should hand on (the previous reading, the last season's, the last
    changes of a linear path; [] for none).
    """
    kind = (subject.forecast or {}).get("difference")
    states, carried = list(states), []
    linear = (subject.forecast or {}).get("linear")
    held_changes = states.pop() if linear and len(linear["weights"]) > 1 else None
    seasonal = (subject.forecast or {}).get("seasonal")
    if seasonal:                    # the last season's readings: the last state
        residual = subject.forecast["residual"]
        carried.append(seasonal_reference(raw[..., residual], states.pop(), **seasonal)[1])
    if not kind:
        return norm, states, carried
    if kind == "state":
        held = states.pop()                                         # (batch, F + 1)
        start = np.where(held[:, -1:] > 0.5, held[:, :-1], raw[:, 0])   # (batch, F)
        ones = np.ones((len(raw), 1), np.float32)
        carried.insert(0, np.concatenate([raw[:, -1], ones], axis=1))
    else:
        start = raw[:, 0]
    change = raw - np.concatenate([start[:, None], raw[:, :-1]], axis=1)   # float32
    if held_changes is not None:    # the last changes: after the last season's readings
        carried.append(linear_reference(change, held_changes, **linear)[1])
    x = subject.scaler["x"] if subject.scaler and subject.scaler.get("x") else None
    if x is not None:
        change = ((change - np.asarray(x["mean"])) / np.asarray(x["std"])).astype(np.float32)
    return change, states, carried


def _names(subject: Subject) -> list[str]:
    return [n for spec in subject.state for n in spec.inputs]


def _zeros(subject: Subject, batch: int) -> list:
    return [np.zeros((batch, spec.units), np.float32)
            for spec in subject.state for _ in spec.inputs]


# --------------------------------------------------------------------------- running

def _run(session, subject: Subject, x, states):
    feed = {"x": x, **dict(zip(_names(subject), states))}
    y, *out = session.run(None, feed)
    return y, out


def _stepwise(session, subject: Subject, x, states, masked=None):
    """Feed ``x`` one reading at a time, carrying the state.

    A masked reading (``masked[b, t]``) is skipped as the contract says: the stream's
    state stays and its previous prediction repeats.
    """
    ys = []
    for t in range(x.shape[1]):
        y, new = _run(session, subject, x[:, t:t + 1], states)
        if masked is not None and masked[:, t].any():
            keep = masked[:, t]                                          # (batch,)
            new = [np.where(keep[:, None], old, s) for old, s in zip(states, new)]
            if ys:
                y = np.where(keep[:, None, None], ys[-1], y)
        ys.append(y)
        states = new
    return np.concatenate(ys, axis=1), states


def _keras(reference, subject: Subject, norm, states) -> list:
    expected = reference.predict_on_batch([norm, *states])   # one batch: no per-call set-up
    return expected if isinstance(expected, list) else [expected]


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


# --------------------------------------------------------------------------- the check

def check(subject: Subject, *, steps: int = 1000, atol: float = 1e-4, seed: int = 0) -> dict:
    """Run :func:`compare` with Keras on the CPU (see :func:`compare` for the figures)."""
    import tensorflow as tf

    # A TensorFlow that sees a GPU would run the reference LSTMs through cuDNN; the CPU
    # kernels are the ones the export is vouched against.
    # Each run shape traces Keras's predict function once; TensorFlow's "retracing" warning
    # about that is noise here. Non-finite values are looked for explicitly (_diverges).
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")
    try:
        with tf.device("/CPU:0"), np.errstate(all="ignore"):
            return compare(subject, steps=steps, atol=atol, seed=seed)
    finally:
        logger.setLevel(level)


def compare(subject: Subject, *, steps: int = 1000, atol: float = 1e-4, seed: int = 0) -> dict:
    """Compare the ONNX graph with Keras the way the file will stream; figures or raise.

    Comparisons, each a max abs difference in normalised units:

    * ``y`` and every state output: ONNX fed one reading at a time (and, where nothing is
      masked, the same as one chunk) against the Keras reference, over the mode's runs
      (see the module docstring);
    * ``chunk_vs_steps``: a whole run in one call against one reading at a time;
    * ``window_vs_predict`` (window mode): windows from a zero state against the original
      model's ``predict``;
    * ``stateful_vs_predict`` (stateful mode, when the original's batch is the number of
      slots): the stream's windows against the original's ``predict(windows,
      batch_size=B)`` after ``reset_states()``, the tutorials' own loop.

    Raises
    ------
    ParityError : a figure exceeds ``atol``, or Keras itself goes non-finite on the runs
        (the message then says the model diverges and what to do).
    """
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    session = ort.InferenceSession(subject.onnx_bytes, providers=["CPUExecutionProvider"])
    if subject.whole:
        per_output, what, y_raw = _check_whole(session, subject, rng)
        return _report(subject, per_output, what, y_raw, atol)
    try:
        reference = reference_model(subject.layers, subject)
    except Exception as exc:  # noqa: BLE001 - Keras raises anything from a layer it rebuilds
        raise ParityError(f"the check cannot rebuild the model in Keras to compare it "
                          f"({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})"
                          f"; nothing was written. Export with --no-check and compare "
                          f"lstm-run's predictions with your model's, and report it with "
                          f"the model") from None
    # A stateful model of one timestep with B > 1 slots streams as B interleaved chains of
    # single readings: the slot check runs it so (windows of one reading), against Keras.
    how = "stateful" if subject.carry_state and subject.slots > 1 else subject.mode
    run = {"window": _check_windows, "stateful": _check_stateful,
           "sequence": _check_sequence}[how]
    per_output, what, y_raw = run(session, reference, subject, rng, steps)
    if subject.mask is not None and not subject.tokens and not subject.forecast:
        per_output["mask_answer"] = _check_all_masked(reference, subject, rng)
    return _report(subject, per_output, what, y_raw, atol)


def _check_all_masked(reference, subject: Subject, rng) -> float:
    """The file's answer for readings all masked against Keras's (the head of a zero output).

    Keras is run on windows of ``window`` masked readings (sequence mode: 3), from a zero
    state and from a random one (a stateful stream's carried state): both give its answer.
    A file without ``lstm_edge.mask_answer`` answers nothing there, which is no answer Keras
    gives: the figure is then infinite and the export fails.
    """
    if subject.mask_answer is None:
        return float("inf")
    steps = subject.window if subject.window > 1 else 3
    norm = np.full((2, steps, subject.features), subject.mask, np.float32)
    states = [np.concatenate([np.zeros((1, s.shape[1]), np.float32),
                              rng.normal(size=(1, s.shape[1])).astype(np.float32)])
              for s in _zeros(subject, 1)]
    expected = _keras(reference, subject, norm, states)[0][:, -1]   # (2, outputs)
    got = np.asarray(subject.mask_answer, np.float32)[None, None]   # (1, 1, outputs)
    return _maxdiff(_normalised_y(subject, got)[0, 0], expected)


def _report(subject: Subject, per_output: dict, what: dict, y_raw, atol: float) -> dict:
    """The figures as ``lstm_edge.parity`` records them; raise where one exceeds ``atol``."""
    resolution = _resolution(subject, y_raw)
    report = {"max_abs_diff": max(per_output.values()), "per_output": per_output,
              "mode": subject.mode, **what, "atol": atol,
              "units": "normalised" if subject.scaler and subject.scaler.get("y") else "raw",
              "states": "relative to max(1, |state|)",
              "resolution": resolution}
    # Outputs holding y in raw float32 may differ by its resolution on top of atol.
    allowed = {name: atol + (resolution if name in _Y_FIGURES else 0.0) for name in per_output}
    failures = [f"{name}: max abs diff {diff:.3g} > atol {allowed[name]:.3g}"
                for name, diff in per_output.items() if not diff <= allowed[name]]
    if failures:
        raise ParityError("the ONNX graph does not reproduce Keras (nothing was written): "
                          + "; ".join(failures) + f" (checked {describe(report)}); where "
                          f"that is float32 rounding in a large model, --atol allows more, "
                          f"otherwise report it with the model")
    return report


def describe(report: dict) -> str:
    """What a parity report checked, in words, e.g. ``"64 windows of 10 readings, each from
    a zero state"``."""
    mode = report.get("mode")
    if mode == "window":
        return (f"{report['windows']} windows of {_readings(report['steps'])}, each from a "
                f"zero state")
    if mode == "stateful" or report.get("slots", 1) > 1:
        return (f"{report['windows']} consecutive windows of {_readings(report['steps'])}, "
                f"state carried in {report['slots']} slot(s)")
    return f"{report['streams']} runs of {_readings(report['steps'])} from a zero state"


def _readings(n: int) -> str:
    return f"{n} reading{'' if n == 1 else 's'}"


_Y_FIGURES = {"y", "chunk_vs_steps", "window_vs_predict", "stateful_vs_predict",
              "mask_answer"}


def _against_reference(session, reference, subject: Subject, raw, norm, states) -> tuple:
    """y and states: ONNX (step by step; and as one chunk where nothing is masked) against
    the Keras reference from the same initial ``states``; returns (figures, ONNX outputs)."""
    framed, keras_states, carried = _framed_x(subject, raw, norm, states)
    expected = _keras(reference, subject, framed, keras_states)
    expected += carried
    _diverges(subject, expected, norm.shape[1])
    masked = _masked(subject, norm)
    figures = {}
    if (subject.forecast or {}).get("difference") == "window":
        # A window-differenced graph differences within one call: only whole windows mean
        # anything to it (the runtime feeds it whole windows), so it is not stepped.
        y_chunk, s_chunk = _run(session, subject, raw, states)
        return (_figures(subject, expected, [(y_chunk, s_chunk)], raw, masked, figures),
                y_chunk, s_chunk)
    y_step, s_step = _stepwise(session, subject, raw, states, masked)
    results = [(y_step, s_step)]
    if masked is None:
        y_chunk, s_chunk = _run(session, subject, raw, states)
        results.append((y_chunk, s_chunk))
        y_one, s_one = y_step, s_step
    else:   # the graph itself cannot skip: chunk against steps on the readings unmasked
        raw = np.where(masked[..., None], raw + np.float32(1), raw)
        y_chunk, s_chunk = _run(session, subject, raw, states)
        y_one, s_one = _stepwise(session, subject, raw, states)
    figures["chunk_vs_steps"] = max(
        [_maxdiff(_normalised_y(subject, y_chunk, raw), _normalised_y(subject, y_one, raw))]
        + [_state_diff(a, b) for a, b in zip(s_chunk, s_one)])
    return _figures(subject, expected, results, raw, masked, figures), y_step, s_step


def _figures(subject: Subject, expected, results, raw, masked, figures: dict) -> dict:
    """y and every state output of each ONNX run against the Keras reference's."""
    # A run opening with masked readings has no prediction before its first fed reading
    # (Keras outputs zeros there, a stream nothing): y is compared from that reading on.
    fed = slice(None) if masked is None else np.cumsum(~masked, axis=1) > 0     # (batch, time)
    figures["y"] = max(_maxdiff(_normalised_y(subject, y, raw)[fed], expected[0][fed])
                       for y, _ in results)
    outputs = [n for spec in subject.state for n in spec.outputs]
    for k, name in enumerate(outputs):
        figures[name] = max(_state_diff(s[k], expected[1 + k]) for _, s in results)
    return figures


def _merge(total: dict, figures: dict) -> dict:
    for name, diff in figures.items():
        total[name] = max(total.get(name, 0.0), diff)
    return total


def _check_sequence(session, reference, subject: Subject, rng, steps: int):
    raw, norm = _series(rng, subject, STREAMS, steps)
    figures, y, _ = _against_reference(session, reference, subject, raw, norm,
                                       _zeros(subject, STREAMS))
    return figures, {"steps": steps, "streams": STREAMS}, y


def _check_windows(session, reference, subject: Subject, rng, steps: int):
    length, half = subject.window, WINDOWS // 2
    parts = [_series(rng, subject, half, length, "normal"),
             _series(rng, subject, WINDOWS - half, length,
                     "normal" if subject.scaler else "unit")]
    raw = np.concatenate([p[0] for p in parts])                         # (windows, W, F)
    norm = np.concatenate([p[1] for p in parts])
    figures, y, _ = _against_reference(session, reference, subject, raw, norm,
                                       _zeros(subject, WINDOWS))
    if _original_window(subject) in (None, length) and not _stateful(subject.original):
        framed, _, _ = _framed_x(subject, raw, norm, [])
        predicted = subject.original.predict(framed, batch_size=WINDOWS, verbose=0)
        figures["window_vs_predict"] = _compare_last(subject, y, predicted, raw)
    return figures, {"steps": length, "windows": WINDOWS, "streams": WINDOWS}, y


def _check_whole(session, subject: Subject, rng):
    """A model converted whole: windows through the graph against ``model.predict``.

    One window at a time and all together, so the batch axis is exercised too. A block
    ``(steps, K)`` is compared step by step, normalised per name as the scaler says.
    """
    length, half = subject.window, WINDOWS // 2
    parts = [_series(rng, subject, half, length, "normal"),
             _series(rng, subject, WINDOWS - half, length,
                     "normal" if subject.scaler else "unit")]
    raw = np.concatenate([p[0] for p in parts])                         # (windows, W, F)
    norm = np.concatenate([p[1] for p in parts])
    predicted = np.asarray(subject.original.predict(norm, batch_size=WINDOWS, verbose=0),
                           np.float64)                                  # (windows, [steps,] K)
    width = predicted.shape[-1]
    y, _ = _run(session, subject, raw, [])                              # (windows, 1, outputs)
    one = np.concatenate([_run(session, subject, raw[i:i + 1], [])[0] for i in range(4)])
    blocks = y.reshape(len(y), -1, width)                               # (windows, steps, K)
    figures = {"window_vs_predict": _maxdiff(_normalised_y(subject, blocks),
                                             predicted.reshape(blocks.shape)),
               "chunk_vs_steps": _maxdiff(_normalised_y(subject, one.reshape(4, -1, width)),
                                          _normalised_y(subject, blocks[:4]))}
    _diverges(subject, [predicted], length)
    return figures, {"steps": length, "windows": WINDOWS, "streams": WINDOWS}, blocks


def sliding(series: np.ndarray, window: int) -> np.ndarray:
    """Every window of ``window`` consecutive readings of one stream, ``(n, window, ...)``."""
    starts = np.arange(len(series) - window + 1)
    return series[starts[:, None] + np.arange(window)[None, :]]


def _check_stateful(session, reference, subject: Subject, rng, steps: int):
    """One stream's sliding windows: window j starts from slot j mod B, leaves its state there.

    Windows ``rB .. rB+B-1`` (one round) each start from a different slot, so a round is one
    batch of B windows: exactly the batch Keras's ``predict(windows, batch_size=B)`` runs.
    """
    length, slots = subject.window, subject.slots
    rounds = max(3, -(-CHAIN // slots))    # every slot carries its state at least twice
    count = slots * rounds
    raw_series, norm_series = _series(rng, subject, 1, count + length - 1, fed_every=length)
    raw, norm = sliding(raw_series[0], length), sliding(norm_series[0], length)  # (n, W, F)
    states, figures, ys = _zeros(subject, slots), {}, []
    for r in range(rounds):
        part = slice(r * slots, (r + 1) * slots)
        found, y, states = _against_reference(session, reference, subject, raw[part],
                                              norm[part], states)
        _merge(figures, found)
        ys.append(y)
    y = np.concatenate(ys)                                               # (n, W, outputs)
    if (_stateful(subject.original) and _original_batch(subject) == slots
            and _original_window(subject) in (None, length)):
        _reset(subject.original)
        framed, _, _ = _framed_x(subject, raw, norm, [])
        predicted = subject.original.predict(framed, batch_size=slots, verbose=0)
        _reset(subject.original)
        figures["stateful_vs_predict"] = _compare_last(subject, y, predicted, raw)
    return figures, {"steps": length, "windows": count, "slots": slots, "streams": 1}, y


def _diverges(subject: Subject, expected: list, steps: int) -> None:
    """Refuse with the model's own divergence where Keras's values run away on the runs.

    Non-finite, or beyond :data:`DIVERGED` in normalised units (a relu LSTM's state grows
    without bound): float32 rounding then differs by more than any tolerance, and the ONNX
    graph would be blamed for what the model itself does.
    """
    sizes = [np.abs(np.where(np.isfinite(e), e, np.inf)) for e in expected]
    if all(np.max(a, initial=0.0) <= DIVERGED for a in sizes):
        return
    y = sizes[0].reshape(sizes[0].shape[0], sizes[0].shape[1], -1)     # (batch, time, out)
    bad = (y > DIVERGED).any(axis=(0, 2))                               # (time,)
    first = int(np.argmax(bad)) + 1 if bad.any() else steps
    finite = all(np.all(np.isfinite(e)) for e in expected)
    units = " in normalised units" if subject.scaler and subject.scaler.get("y") else ""
    what = f"grow past {DIVERGED:.0e}{units}" if finite else "become non-finite"
    if subject.mode == "sequence":
        fix = (f"if it was trained on windows, export it in window mode (--window N "
               f"--no-carry-state); if its streams are short, check runs of that length "
               f"(--steps N, under {first})")
    else:
        fix = "retrain it (e.g. activation='tanh', or clip its inputs to the training range)"
    raise ParityError(
        f"the model itself diverges: Keras's own predictions {what} by reading {first} of a "
        f"run of {steps}, the state growing without bound. The ONNX graph is not what is "
        f"wrong, but a stream would run away the same way; {fix}; nothing was written")


def _resolution(subject: Subject, y_raw: np.ndarray) -> float:
    """One float32 ulp of the largest raw output, in normalised units (0 without a scaler)."""
    if not (subject.scaler and subject.scaler.get("y")):
        return 0.0
    largest = np.max(np.abs(y_raw.reshape(-1, y_raw.shape[-1])), axis=0)   # (outputs,)
    std = np.asarray(subject.scaler["y"]["std"])
    return float(np.max(np.spacing(largest.astype(np.float32)) / std))


def _original_window(subject: Subject):
    return subject.original.inputs[0].shape[1]


def _original_batch(subject: Subject) -> int:
    return subject.original.inputs[0].shape[0] or 1


def _compare_last(subject: Subject, y_onnx, predicted, raw=None) -> float:
    """Keras returns (batch, outputs) for return_sequences=False: its last step."""
    y = _normalised_y(subject, y_onnx, raw)
    predicted = np.asarray(predicted)
    return _maxdiff(y[:, -1] if predicted.ndim == 2 else y, predicted)


def _leaves(model):
    """Every layer of ``model``, looking inside models used as layers."""
    for layer in model.layers:
        yield from (_leaves(layer) if hasattr(layer, "layers") else (layer,))


def _stateful(model) -> bool:
    return any(getattr(layer, "stateful", False) for layer in _leaves(model))


def _reset(model) -> None:
    for layer in _leaves(model):
        if getattr(layer, "stateful", False):
            layer.reset_states()
