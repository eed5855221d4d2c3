"""Keras layers to a streaming ONNX graph, emitted from the layer weights with ``onnx.helper``.

One table, :data:`EMITTERS`, maps each supported Keras layer class (by name, looked up along
the class's MRO) to a small function that appends that layer's ONNX nodes; :data:`REFUSED`
says why the layers that cannot stream are refused. Nothing else in the exporter knows
about layer kinds.

Why not tf2onnx for the whole model: tf2onnx 1.17 fuses only sigmoid Keras 3 LSTMs (not
GRUs, not ``hard_sigmoid``), turns ``TimeDistributed`` into a ``Loop``, and freezes the
state of ``stateful=True`` layers into constants. Emitting from the weights gives the exact
gate order, a lean graph (the runtime's step-latency target is 1.1x raw ONNX Runtime) and one
code path for every model kind. A window model this table refuses (it does not step one
reading at a time) is converted whole over its window instead: see :mod:`trainer.window_graph`.

Layout: ONNX Runtime's CPU kernels refuse the batch-first ``layout=1`` of LSTM/GRU/RNN
("Batchwise recurrent operations (layout == 1) are not supported", checked on ORT 1.31), so
the graph transposes ``x`` to time-major once at the start and ``y`` back once at the end;
every layer in between reads and writes ``(time, batch, width)``. State tensors are
``(batch, units)`` by contract, hence one Unsqueeze per state input and one Squeeze per
state output around each fused operator.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from runtime.contract import StateSpec
from .errors import ExportError

# Input scalings with |mean / std| above this are applied by Sub/Div nodes rather than
# folded into the first layer's weights: folding computes x @ (W / std) - (mean / std) @ W,
# whose cancellation costs about |mean / std| float32 ulps.
FOLD_LIMIT = 64.0

RECURRENT_OPS = {"LSTM", "GRU", "RNN"}
LOOP_OPS = {"Loop", "Scan", "If"}


@dataclass
class Flow:
    """The tensor between two layers: time-major ``(time, batch, width)``."""

    name: str
    width: int
    pre: tuple[np.ndarray, np.ndarray] | None = None  # input scaling (mean, std) not applied yet
    head: tuple[str, str] | None = None                # (W, b) initializers when flow = z @ W + b


@dataclass
class Graph:
    """Nodes, initializers and graph inputs/outputs being built, with unique names."""

    opset: int
    nodes: list = field(default_factory=list)
    inits: dict = field(default_factory=dict)          # name -> np.ndarray
    inputs: list = field(default_factory=list)         # ValueInfoProto
    outputs: list = field(default_factory=list)
    state: list = field(default_factory=list)          # StateSpec, in layer order
    extra: dict = field(default_factory=dict)          # extra metadata (e.g. mask_value)
    _count: Counter = field(default_factory=Counter)

    def fresh(self, hint: str) -> str:
        self._count[hint] += 1
        return f"{hint}_{self._count[hint]}"

    def const(self, hint: str, array) -> str:
        name = self.fresh(hint)
        self.inits[name] = np.asarray(array)
        return name

    def op(self, op_type: str, inputs, *, outputs=None, n_out: int = 1, **attrs):
        """Append one node; returns its output name (or the list of them when n_out > 1)."""
        if outputs is None:
            outputs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs),
                                           name=self.fresh("n_" + op_type), **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def axes(self, *axes: int) -> str:
        name = "axes_" + "_".join(map(str, axes))
        self.inits.setdefault(name, np.array(axes, dtype=np.int64))
        return name

    def materialize(self, flow: Flow) -> Flow:
        """Apply a pending input scaling as ``(x - mean) / std`` nodes."""
        if flow.pre is None:
            return Flow(flow.name, flow.width)
        mean, std = flow.pre
        centred = self.op("Sub", [flow.name, self.const("x_mean", mean.astype(np.float32))])
        return Flow(self.op("Div", [centred, self.const("x_std", std.astype(np.float32))]),
                    flow.width)

    def absorb(self, flow: Flow, kernel: np.ndarray, bias: np.ndarray | None):
        """Fold a pending input scaling into ``kernel (in, out)`` and ``bias (out,)``.

        Returns the input tensor name and the (possibly rewritten) kernel and bias; the
        scaling becomes Sub/Div nodes instead when folding would cost precision.
        """
        if flow.pre is None:
            return flow.name, kernel, bias
        mean, std = (a.astype(np.float64) for a in flow.pre)
        if np.max(np.abs(mean / std)) > FOLD_LIMIT:
            return self.materialize(flow).name, kernel, bias
        k64 = kernel.astype(np.float64)
        b64 = np.zeros(kernel.shape[1]) if bias is None else bias.astype(np.float64)
        # ((x - m) / s) @ K + b  ==  x @ (K / s) + (b - (m / s) @ K)
        return (flow.name, (k64 / std[:, None]).astype(np.float32),
                (b64 - (mean / std) @ k64).astype(np.float32))


def value_info(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


# --------------------------------------------------------------------------- activations

HARD_SIGMOID = (1.0 / 6.0, 0.5)  # Keras 3: relu6(x + 3) / 6, i.e. clip(x / 6 + 0.5, 0, 1)

# Keras activation name -> (ONNX RNN activation, alpha, beta) for the fused operators.
RNN_ACTIVATIONS = {
    "sigmoid": ("Sigmoid", None, None),
    "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None),
    "hard_sigmoid": ("HardSigmoid", *HARD_SIGMOID),
    "linear": ("Affine", 1.0, 0.0),
    "softsign": ("Softsign", None, None),
    "softplus": ("Softplus", None, None),
    "elu": ("Elu", 1.0, None),
}


def _activation_name(layer, key: str = "activation") -> str:
    """The Keras name of a built-in activation, else ``custom:<function name>``."""
    import keras

    fn = getattr(layer, key, None)
    if fn is None:
        return "linear"
    name = getattr(fn, "__name__", type(fn).__name__)
    try:
        if keras.activations.get(name) is fn:
            return name
    except (ValueError, TypeError):
        pass
    return f"custom:{name}"


def _rnn_activations(layer, keys) -> dict:
    names, alphas, betas = [], [], []
    for key in keys:
        act = _activation_name(layer, key)
        if act not in RNN_ACTIVATIONS:
            raise ExportError(f"layer {layer.name!r} ({type(layer).__name__}): {key}={act!r} "
                              f"has no fused ONNX equivalent; use one of "
                              f"{', '.join(sorted(RNN_ACTIVATIONS))}")
        onnx_name, alpha, beta = RNN_ACTIVATIONS[act]
        names.append(onnx_name)
        alphas += [alpha] if alpha is not None else []
        betas += [beta] if beta is not None else []
    attrs = {"activations": names}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs


def _unary(op_type, **attrs):
    return lambda g, x: g.op(op_type, [x], **attrs)


# Keras activation name -> function(graph, tensor) -> tensor, for Dense and Activation.
ACTIVATIONS = {
    "linear": lambda g, x: x,
    "relu": _unary("Relu"),
    "sigmoid": _unary("Sigmoid"),
    "tanh": _unary("Tanh"),
    "softmax": _unary("Softmax", axis=-1),
    "hard_sigmoid": _unary("HardSigmoid", alpha=HARD_SIGMOID[0], beta=HARD_SIGMOID[1]),
    "elu": _unary("Elu", alpha=1.0),
    "selu": _unary("Selu"),  # ONNX's default alpha/gamma are Keras's constants
    "softplus": _unary("Softplus"),
    "softsign": _unary("Softsign"),
    "exponential": _unary("Exp"),
    "leaky_relu": _unary("LeakyRelu", alpha=0.2),  # Keras 3 default negative_slope
    "relu6": lambda g, x: g.op("Clip", [x, g.const("zero", np.float32(0)),
                                        g.const("six", np.float32(6))]),
    "silu": lambda g, x: g.op("Mul", [x, g.op("Sigmoid", [x])]),
    "swish": lambda g, x: g.op("Mul", [x, g.op("Sigmoid", [x])]),
}


def _activate(g: Graph, layer, flow: Flow) -> Flow:
    act = _activation_name(layer)
    if act == "linear":
        return flow
    flow = g.materialize(flow)
    if act in ACTIVATIONS:
        return Flow(ACTIVATIONS[act](g, flow.name), flow.width)
    # A custom activation: tf2onnx converts it (see trainer.traced).
    from .traced import trace

    out, width = trace(g, layer.activation, flow.name, flow.width, f"{layer.name}_activation",
                       f"layer {layer.name!r} ({type(layer).__name__}): activation {act!r}")
    return Flow(out, width)


# --------------------------------------------------------------------------- recurrent layers

def _reorder(array: np.ndarray, order, units: int) -> np.ndarray:
    """Reorder the gate blocks along the last axis: Keras order -> ONNX order."""
    return np.concatenate([array[..., k * units:(k + 1) * units] for k in order], axis=-1)


def _fused(g: Graph, layer, flow: Flow, kind: str, kernel, recurrent, wb, rb, attrs) -> Flow:
    """One fused LSTM/GRU/RNN node from ONNX-ordered ``kernel (in, gates*H)``, ``recurrent
    (H, gates*H)`` and biases ``wb``/``rb`` (gates*H,) or None, with its state tensors."""
    units = recurrent.shape[0]
    x_name, kernel, wb = g.absorb(flow, kernel, wb)
    spec = StateSpec.for_layer(len(g.state), layer.name, kind, units)
    g.state.append(spec)
    initial = []
    for name in spec.inputs:
        g.inputs.append(value_info(name, TensorProto.FLOAT, ["batch", units]))
        initial.append(g.op("Unsqueeze", [name, g.axes(0)]))          # (1, batch, units)
    w = g.const(f"{layer.name}_W", kernel.T[None].astype(np.float32))   # (1, gates*H, in)
    r = g.const(f"{layer.name}_R", recurrent.T[None].astype(np.float32))  # (1, gates*H, H)
    if wb is None and rb is None:
        b = ""
    else:
        zeros = np.zeros(kernel.shape[1], np.float32)
        b = g.const(f"{layer.name}_B", np.concatenate(
            [zeros if wb is None else wb, zeros if rb is None else rb])[None].astype(np.float32))
    op_type = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[kind]
    outs = g.op(op_type, [x_name, w, r, b, "", *initial], n_out=1 + len(spec.outputs),
                hidden_size=units, **attrs)
    for out, name in zip(outs[1:], spec.outputs):                      # (1, batch, units)
        g.op("Squeeze", [out, g.axes(0)], outputs=[name])
        g.outputs.append(value_info(name, TensorProto.FLOAT, ["batch", units]))
    return Flow(g.op("Squeeze", [outs[0], g.axes(1)]), units)          # (time, batch, units)


def _check_recurrent(layer) -> None:
    if type(layer).__name__ == "RNN" and _cell_emitter(layer) is None:
        raise ExportError(f"layer {layer.name!r} (RNN) wraps a cell the exporter cannot fuse "
                          f"({type(getattr(layer, 'cell', None)).__name__}); use "
                          f"keras.layers.LSTM, GRU or SimpleRNN (or RNN around one LSTMCell, "
                          f"GRUCell or SimpleRNNCell)")
    if getattr(layer, "go_backwards", False):
        raise ExportError(f"layer {layer.name!r} ({type(layer).__name__}) has go_backwards=True: "
                          f"it reads the sequence from its end, which a stream of readings "
                          f"never has")


def emit_lstm(g: Graph, layer, flow: Flow) -> Flow:
    _check_recurrent(layer)
    weights = layer.get_weights()
    kernel, recurrent = weights[0], weights[1]
    bias = weights[2] if layer.use_bias else None
    units = recurrent.shape[0]
    order = (0, 3, 1, 2)  # Keras i, f, c, o -> ONNX i, o, f, c
    if bias is not None:
        bias = _reorder(bias, order, units)
    return _fused(g, layer, flow, "lstm", _reorder(kernel, order, units),
                  _reorder(recurrent, order, units), bias, None,
                  _rnn_activations(layer, ("recurrent_activation", "activation", "activation")))


def emit_gru(g: Graph, layer, flow: Flow) -> Flow:
    _check_recurrent(layer)
    weights = layer.get_weights()
    kernel, recurrent = weights[0], weights[1]  # gate order z, r, h in both Keras and ONNX
    wb = rb = None
    if layer.use_bias:
        bias = weights[2]
        # reset_after: (2, 3H) = input bias, recurrent bias; else (3H,) added to the input.
        wb, rb = (bias[0], bias[1]) if layer.reset_after else (bias, None)
    attrs = _rnn_activations(layer, ("recurrent_activation", "activation"))
    attrs["linear_before_reset"] = 1 if layer.reset_after else 0
    return _fused(g, layer, flow, "gru", kernel, recurrent, wb, rb, attrs)


def emit_simple_rnn(g: Graph, layer, flow: Flow) -> Flow:
    _check_recurrent(layer)
    weights = layer.get_weights()
    bias = weights[2] if layer.use_bias else None
    return _fused(g, layer, flow, "rnn", weights[0], weights[1], bias, None,
                  _rnn_activations(layer, ("activation",)))


class _CellLayer:
    """``RNN(LSTMCell(...))`` seen as the ``LSTM`` it equals: the cell's settings, the
    wrapper's name, weights and direction (likewise GRUCell and SimpleRNNCell)."""

    def __init__(self, layer):
        self._layer = layer

    def __getattr__(self, key):
        if key in ("name", "get_weights", "go_backwards"):
            return getattr(self._layer, key)
        return getattr(self._layer.cell, key)


# Keras cell class -> the emitter of the layer that wraps it.
CELLS = {"LSTMCell": emit_lstm, "GRUCell": emit_gru, "SimpleRNNCell": emit_simple_rnn}


def _cell_emitter(layer):
    return next((CELLS[cls.__name__] for cls in type(getattr(layer, "cell", None)).__mro__
                 if cls.__name__ in CELLS), None)


def emit_rnn(g: Graph, layer, flow: Flow) -> Flow:
    """``keras.layers.RNN`` around one LSTM/GRU/SimpleRNN cell streams as that layer."""
    return _cell_emitter(layer)(g, _CellLayer(layer), flow)


# --------------------------------------------------------------------------- per-step layers

def _dense(g: Graph, layer, flow: Flow, kernel: np.ndarray, bias) -> Flow:
    """``flow @ kernel + bias`` then the layer's activation, on the last axis."""
    x_name, kernel, bias = g.absorb(flow, kernel, bias)
    w = g.const(f"{layer.name}_kernel", kernel.astype(np.float32))     # (in, out)
    out = g.op("MatMul", [x_name, w])                                  # (time, batch, out)
    head = None
    if bias is not None:
        b = g.const(f"{layer.name}_bias", bias.astype(np.float32))
        out = g.op("Add", [out, b])
        head = (w, b)
    return _activate(g, layer, Flow(out, kernel.shape[1], head=head))


def emit_dense(g: Graph, layer, flow: Flow) -> Flow:
    weights = layer.get_weights()
    return _dense(g, layer, flow, weights[0], weights[1] if layer.use_bias else None)


def emit_conv1d(g: Graph, layer, flow: Flow) -> Flow:
    kernel_size = layer.kernel_size[0]
    if kernel_size != 1 or layer.strides[0] != 1 or layer.groups != 1:
        reach = "earlier readings (it would need a buffer the contract has no state for)" \
            if layer.padding == "causal" else "future time steps"
        raise ExportError(f"layer {layer.name!r} (Conv1D, kernel_size={kernel_size}) mixes "
                          f"{reach}; only kernel_size=1, strides=1 convolutions stream")
    weights = layer.get_weights()  # kernel (1, in, out): a Dense on every step
    return _dense(g, layer, flow, weights[0][0], weights[1] if layer.use_bias else None)


def emit_time_distributed(g: Graph, layer, flow: Flow) -> Flow:
    """TimeDistributed(Dense) is a Dense on the time axis; others are traced per step."""
    if lookup(layer.layer) is emit_dense:
        return emit_dense(g, layer.layer, flow)
    from .traced import emit_traced

    return emit_traced(g, layer, flow)


def emit_activation(g: Graph, layer, flow: Flow) -> Flow:
    return _activate(g, layer, flow)


def emit_identity(g: Graph, layer, flow: Flow) -> Flow:
    """Dropout and noise layers do nothing at inference."""
    return flow


def emit_masking(g: Graph, layer, flow: Flow) -> Flow:
    """Masking adds no nodes: it becomes ``lstm_edge.mask_value`` for the runtime to honour.

    Keras 3 skips a masked step: every recurrent layer keeps its state and repeats its
    previous output, so the prediction repeats too. A fused operator cannot skip steps, so the
    runtime does it: a sample whose features all equal ``mask_value`` (raw units, one value
    per feature) is not fed, the state is untouched, and the stream's previous prediction
    stands. Written by the exporter in :func:`trainer.export.to_onnx`, which knows the scaler.
    """
    if g.state:
        raise ExportError(f"layer {layer.name!r} (Masking) comes after a recurrent layer; "
                          f"only a Masking layer in front of the first one can stream")
    g.extra["mask_value"] = float(layer.mask_value)
    return flow


def emit_embedding(g: Graph, layer, flow: Flow) -> Flow:
    if getattr(layer, "mask_zero", False):
        raise ExportError(f"layer {layer.name!r} (Embedding) has mask_zero=True, which the "
                          f"exporter does not stream; retrain with mask_zero=False")
    table = g.const(f"{layer.name}_embeddings", layer.get_weights()[0].astype(np.float32))
    return Flow(g.op("Gather", [table, flow.name]), layer.output_dim)  # (time, batch, dim)


def emit_batch_norm(g: Graph, layer, flow: Flow) -> Flow:
    if layer.axis not in (-1, 2):
        raise ExportError(f"layer {layer.name!r} (BatchNormalization) normalises axis "
                          f"{layer.axis}; only the features axis (-1) streams")
    gamma = layer.gamma.numpy() if layer.scale else 1.0
    beta = layer.beta.numpy() if layer.center else 0.0
    scale = gamma / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)   # (features,)
    shift = beta - layer.moving_mean.numpy() * scale
    flow = g.materialize(flow)
    out = g.op("Mul", [flow.name, g.const(f"{layer.name}_scale", scale.astype(np.float32))])
    return Flow(g.op("Add", [out, g.const(f"{layer.name}_shift", shift.astype(np.float32))]),
                flow.width)


def emit_normalization(g: Graph, layer, flow: Flow) -> Flow:
    """``keras.layers.Normalization``: ``(x - mean) / max(sqrt(variance), eps)`` per feature,
    a pending input scaling like ``--scaler``'s (folded into the next weighted layer)."""
    import keras

    axis = tuple(layer.axis) if isinstance(layer.axis, (list, tuple)) else (layer.axis,)
    if axis not in ((-1,), (2,)) or getattr(layer, "invert", False):
        raise ExportError(f"layer {layer.name!r} (Normalization) with axis={layer.axis}"
                          f"{', invert=True' if getattr(layer, 'invert', False) else ''} does "
                          f"not scale each feature on its own; use axis=-1, or pass the "
                          f"scaling as --scaler (mean, std per feature) instead")
    mean = np.asarray(layer.mean, np.float64).reshape(-1)                    # (features,)
    std = np.maximum(np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1)),
                     keras.backend.epsilon())
    mean, std = np.broadcast_to(mean, (flow.width,)), np.broadcast_to(std, (flow.width,))
    if flow.pre is None:
        return Flow(flow.name, flow.width, pre=(mean, std))
    first_mean, first_std = flow.pre        # ((x - m1) / s1 - m2) / s2 = (x - m1 - m2 s1) / (s1 s2)
    return Flow(flow.name, flow.width, pre=(first_mean + mean * first_std, first_std * std))


def emit_layer_norm(g: Graph, layer, flow: Flow) -> Flow:
    axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
    if axis not in (-1, (-1,), 2, (2,)) or g.opset < 17 or getattr(layer, "rms_scaling", False):
        raise ExportError(f"layer {layer.name!r} (LayerNormalization) needs axis=-1 and "
                          f"opset 17 or later to stream (got axis={layer.axis}, opset {g.opset})")
    width = flow.width
    gamma = layer.gamma.numpy() if layer.scale else np.ones(width, np.float32)
    beta = layer.beta.numpy() if layer.center else np.zeros(width, np.float32)
    flow = g.materialize(flow)
    return Flow(g.op("LayerNormalization", [flow.name, g.const("ln_scale", gamma),
                                            g.const("ln_bias", beta)],
                     axis=-1, epsilon=float(layer.epsilon)), width)


# The one table: Keras layer class name -> emitter. Looked up along the class's MRO, so a
# subclass of a supported layer is exported as its base.
EMITTERS = {
    "LSTM": emit_lstm,
    "GRU": emit_gru,
    "SimpleRNN": emit_simple_rnn,
    "RNN": emit_rnn,   # after LSTM/GRU/SimpleRNN in their MRO: only a bare RNN(cell) lands here
    "Dense": emit_dense,
    "TimeDistributed": emit_time_distributed,
    "Conv1D": emit_conv1d,
    "Activation": emit_activation,
    "Embedding": emit_embedding,
    "Masking": emit_masking,
    "BatchNormalization": emit_batch_norm,
    "Normalization": emit_normalization,
    "LayerNormalization": emit_layer_norm,
    "Dropout": emit_identity,
    "SpatialDropout1D": emit_identity,
    "GaussianDropout": emit_identity,
    "GaussianNoise": emit_identity,
    "AlphaDropout": emit_identity,
    "ActivityRegularization": emit_identity,
}

RECURRENT = {"LSTM", "GRU", "SimpleRNN", "RNN"}
# Anything else is tried by trainer.traced (tf2onnx), which refuses layers mixing time steps.

# Layers that cannot stream, and why (the message names the layer).
REFUSED = {
    "Bidirectional": "reads every sequence backwards from its end as well, which a stream "
                     "of readings never has",
    "Flatten": "flattens the time axis, so every output depends on the whole window",
    "RepeatVector": "repeats one vector over a new time axis (an encoder-decoder), so its "
                    "answer needs the whole window",
    "GlobalAveragePooling1D": "averages over the whole time axis",
    "GlobalMaxPooling1D": "takes the maximum over the whole time axis",
    "AveragePooling1D": "pools neighbouring time steps",
    "MaxPooling1D": "pools neighbouring time steps",
    "Attention": "attends to every time step, future ones included",
    "MultiHeadAttention": "attends to every time step, future ones included",
    "Reshape": "reshapes its input, which can move the time axis",
    "Permute": "may move the time axis",
    "Cropping1D": "drops time steps",
    "ZeroPadding1D": "adds time steps",
    "UpSampling1D": "adds time steps",
    "ConvLSTM1D": "has no fused ONNX operator",
}


def lookup(layer):
    """The table's emitter for ``layer``, or None; refused layers raise :class:`ExportError`."""
    for cls in type(layer).__mro__:
        name = cls.__name__
        if name in EMITTERS and cls.__module__.startswith(("keras", "tf_keras")):
            return EMITTERS[name]
        if name in REFUSED:
            raise ExportError(f"layer {layer.name!r} ({type(layer).__name__}) cannot step "
                              f"one reading at a time: it {REFUSED[name]}")
    return None


def emitter(layer):
    """The emitter for ``layer``: the table's, else tf2onnx for a time-local layer."""
    from .traced import emit_traced

    return lookup(layer) or emit_traced


def is_recurrent(layer) -> bool:
    return any(cls.__name__ in RECURRENT for cls in type(layer).__mro__)


def check_layers(layers) -> None:
    """Refuse, before emitting anything, the layers that cannot stream.

    A layer the table does not know is left to :mod:`trainer.traced`, which refuses it
    when it mixes time steps or tf2onnx cannot convert it.
    """
    for layer in layers:
        lookup(layer)  # raises for the REFUSED ones
        if is_recurrent(layer):
            _check_recurrent(layer)
    if not any(is_recurrent(layer) for layer in layers):
        raise ExportError("the model has no recurrent layer (LSTM, GRU or SimpleRNN): there "
                          "is no state to stream; run it with onnxruntime directly instead")
    _check_zero_output_for_mask(layers)


def _check_zero_output_for_mask(layers) -> None:
    """Refuse ``zero_output_for_mask=True`` on the last recurrent layer behind a Masking.

    At a masked reading Keras then outputs zeros from that layer (so y is the head applied
    to zeros), where the contract's masked step repeats the previous prediction. Inner
    layers' zeros are masked again by the next recurrent layer and change nothing.
    """
    if not any(type(layer).__name__ == "Masking" for layer in layers):
        return
    last = [layer for layer in layers if is_recurrent(layer)][-1]
    if getattr(last, "zero_output_for_mask", False):
        raise ExportError(
            f"layer {last.name!r} ({type(last).__name__}) has zero_output_for_mask=True after "
            f"a Masking layer: at a masked reading Keras outputs zeros from it (the prediction "
            f"becomes the head's output for zeros), while a stream repeats the previous "
            f"prediction; if repeating is what you want, rebuild the model with "
            f"zero_output_for_mask=False and new.set_weights(model.get_weights()) (the "
            f"weights are the same), then export that")


def emit(layers, *, features: int | None, tokens: bool, scaler: dict | None, opset: int):
    """Emit the streaming graph for a chain of Keras layers.

    Returns the :class:`onnx.GraphProto`, the list of :class:`StateSpec` and extra
    metadata (e.g. ``mask_value``). ``x`` is ``(batch, time, features)`` float32, or
    ``(batch, time)`` int64 token ids when ``tokens``.
    """
    g = Graph(opset)
    if tokens:
        g.inputs.append(value_info("x", TensorProto.INT64, ["batch", "time"]))
        flow = Flow(g.op("Transpose", ["x"], perm=[1, 0]), 1)             # (time, batch)
    else:
        g.inputs.append(value_info("x", TensorProto.FLOAT, ["batch", "time", features]))
        flow = Flow(g.op("Transpose", ["x"], perm=[1, 0, 2]), features)   # (time, batch, F)
        if scaler and scaler.get("x"):
            flow.pre = (np.asarray(scaler["x"]["mean"], np.float64),
                        np.asarray(scaler["x"]["std"], np.float64))
    for layer in layers:
        flow = emitter(layer)(g, layer, flow)
    if flow.pre is not None:  # nothing absorbed it (no weighted layer before the end)
        flow = g.materialize(flow)
    if scaler and scaler.get("y"):
        flow = _unscale(g, flow, np.asarray(scaler["y"]["mean"], np.float64),
                        np.asarray(scaler["y"]["std"], np.float64))
    g.op("Transpose", [flow.name], outputs=["y"], perm=[1, 0, 2])       # (batch, time, out)
    outputs = [value_info("y", TensorProto.FLOAT, ["batch", "time", flow.width]), *g.outputs]
    inits = [numpy_helper.from_array(a, name) for name, a in g.inits.items()]
    graph = helper.make_graph(g.nodes, "lstm_edge", g.inputs, outputs, inits)
    return graph, g.state, g.extra


def _unscale(g: Graph, flow: Flow, mean: np.ndarray, std: np.ndarray) -> Flow:
    """``y * std + mean``: folded into the last Dense when it is linear, else Mul/Add."""
    if flow.head is not None:
        w, b = flow.head
        g.inits[w] = (g.inits[w].astype(np.float64) * std).astype(np.float32)
        g.inits[b] = (g.inits[b].astype(np.float64) * std + mean).astype(np.float32)
        return Flow(flow.name, flow.width)
    out = g.op("Mul", [flow.name, g.const("y_std", std.astype(np.float32))])
    return Flow(g.op("Add", [out, g.const("y_mean", mean.astype(np.float32))]), flow.width)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each operator type the graph has, most common first."""
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def check_fused(model: onnx.ModelProto, recurrent_layers: int) -> None:
    """Refuse a graph with a Loop/Scan/If or other than one fused operator per layer."""
    counts = op_counts(model)
    loops = {op: n for op, n in counts.items() if op in LOOP_OPS}
    fused = sum(n for op, n in counts.items() if op in RECURRENT_OPS)
    if loops or fused != recurrent_layers:
        raise ExportError(f"the graph breaks the fused-operator rule: expected "
                          f"{recurrent_layers} LSTM/GRU/RNN node(s) and no Loop/Scan, "
                          f"found {fused} fused and {loops or 'no loops'}; nothing was written")
