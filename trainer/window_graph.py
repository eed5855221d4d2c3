"""Window models converted whole: any Keras model that is a function of its last readings.

A window model restarts from a zero state at every window, so its answer is a pure function
of the last ``window`` readings, whatever its layers do inside the window: an autoencoder's
``RepeatVector`` decoder, a ``return_state`` encoder-decoder, ``Bidirectional`` or
``go_backwards`` layers, ``Reshape``/``Flatten``/``GlobalAveragePooling1D`` heads. The
streaming emitter (:mod:`trainer.graph`) refuses these because they do not step one reading
at a time; here the whole model is converted by tf2onnx over a fixed window instead
(``tf2onnx.convert.from_function`` with the time axis fixed, so every layer unrolls or fuses
over a known length). The file has no state inputs: the runtime's window mode runs the last
``window`` readings through it for every prediction, as it does for any window model.

The scalers are applied inside the converted function, so the graph still reads raw readings
and writes raw values. An output of more than one step becomes a *block* (docs/contract.md,
``lstm_edge.block``): ``(steps, names)`` flattened step-major into ``y``'s last axis.
"""

from __future__ import annotations

import numpy as np

from .errors import ExportError


def refusal(model, *, window, carry_state, sidecar: dict | None) -> str | None:
    """Why ``model`` cannot be converted whole (None: it can), in words a user acts on
    ("": the streaming emitter's message already says it)."""
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) != 1:
        return ""             # the chain's own message says what to do
    shape = tuple(inputs[0].shape)
    if len(shape) != 3:
        return ""
    if shape[1] is None:
        return ("its time axis is not fixed; give it a fixed window, keras.Input((T, "
                "features)), and it exports as a window model (each prediction from the last "
                "T readings, from a zero state)")
    if any(getattr(layer, "stateful", False) for layer in _leaves(model)):
        return "it has stateful=True layers, whose state runs from window to window"
    if any(type(layer).__name__ == "Masking" for layer in _leaves(model)):
        return ("a Masking layer is not honoured by a model converted whole: drop it and "
                "leave missing values empty for lstm-run to skip or hold (--missing skip, "
                "--missing hold)")
    if carry_state or (sidecar or {}).get("mode") in ("sequence", "stateful"):
        return "a model converted whole restarts every window: drop --carry-state"
    if window is not None and int(window) != int(shape[1]):
        return (f"a model converted whole reads exactly its {shape[1]} timesteps: drop "
                f"--window {window}")
    return None


def block_of(model, window: int, features: int, *, horizon, sidecar) -> tuple[int, dict | None]:
    """``(K, block)`` from the model's output shape ``(batch, K)`` or ``(batch, steps, K)``.

    A ``(window, features)`` output is a reconstruction of the window (an autoencoder)
    unless ``--horizon`` or the sidecar says it forecasts; any other 3-D output is a
    forecast of ``steps`` readings ahead.
    """
    shape = tuple(model.outputs[0].shape)
    if len(shape) == 2:
        return int(shape[1]), None
    if len(shape) != 3 or None in shape[1:]:
        raise ExportError(f"model {model.name!r} outputs {shape}; a window model outputs "
                          f"(samples, targets) or a block (samples, steps, targets) of fixed "
                          f"size: end it with a Dense (and a Reshape for several steps)")
    steps, width = int(shape[1]), int(shape[2])
    forecast = horizon is not None or (sidecar or {}).get("horizon") is not None
    kind = "reconstruction" if (steps, width) == (window, features) and not forecast \
        else "forecast"
    return width, {"kind": kind, "steps": steps}


def convert(model, *, window: int, features: int, scaler: dict | None, block: dict | None,
            names: int, opset: int) -> object:
    """The ONNX graph ``x (batch, window, features) -> y (batch, 1, outputs)`` of the model.

    The x scaling, the model and the y de-scaling run in one ``tf.function``: raw readings in,
    raw values out, the block flattened step-major (``Reshape`` keeps the last axis fastest).
    """
    import tensorflow as tf
    import tf2onnx

    x_mean, x_std = _pair(scaler, "x", features)
    y_mean, y_std = _pair(scaler, "y", names)

    def whole(x):
        if x_mean is not None:
            x = (x - x_mean) / x_std
        out = tf.cast(model(x, training=False), tf.float32)      # (batch, [steps,] K)
        if y_mean is not None:
            out = out * y_std + y_mean
        return tf.reshape(out, (-1, 1, names * (block["steps"] if block else 1)))

    spec = [tf.TensorSpec([None, window, features], tf.float32, name="x")]
    function = tf.function(whole)
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=opset)
        _freeze_captures(proto, function.get_concrete_function(*spec))
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything
        raise ExportError(f"model {model.name!r} cannot be converted by tf2onnx as a window "
                          f"model ({(str(exc).splitlines() or [type(exc).__name__])[0][:160]})"
                          f"; report it with the model") from None
    _name_y(proto, names * (block["steps"] if block else 1))
    return proto


def _pair(scaler: dict | None, key: str, width: int):
    part = (scaler or {}).get(key)
    if not part:
        return None, None
    return (np.asarray(part["mean"], np.float32).reshape(width),
            np.asarray(part["std"], np.float32).reshape(width))


def _freeze_captures(proto, concrete) -> None:
    """Constant tensors the function captured (a Normalization's mean and variance) as
    initializers: tf2onnx leaves captured eager tensors as extra graph inputs."""
    from onnx import numpy_helper

    values = {inner.name: outer for outer, inner in concrete.graph.captures}
    used = {name for node in proto.graph.node for name in node.input}
    for value in list(proto.graph.input):
        if value.name in values:
            if value.name in used:         # ONNX Runtime warns about an unused initializer
                array = np.asarray(values[value.name].numpy())
                proto.graph.initializer.append(numpy_helper.from_array(array, value.name))
            proto.graph.input.remove(value)


def _name_y(proto, outputs: int) -> None:
    """Call the converted graph's one output ``y``, shaped ``[batch, 1, outputs]``."""
    from onnx import TensorProto, helper

    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1 or graph.input[0].name != "x":
        raise ExportError("tf2onnx gave a graph with other inputs or outputs than x and y; "
                          "report it with the model")
    graph.node.append(helper.make_node("Identity", [graph.output[0].name], ["y"],
                                       name="window_y"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                      ["batch", 1, outputs]))
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"


def _leaves(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _leaves(layer)
        if getattr(layer, "layer", None) is not None:          # Bidirectional, TimeDistributed
            yield layer.layer
