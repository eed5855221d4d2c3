"""The contenders for one streaming step, each carrying its own state between calls.

Every stepper takes one sample ``(features,)`` per call and returns its prediction, so the
harness times them all the same way:

- ``runtime``: the project's ``Stream.step``;
- ``ort``: a bare ``InferenceSession.run`` on the same file, state carried by hand (the floor
  of the ONNX Runtime path: what the runtime adds over it is its own cost);
- ``keras``: the Keras layers called eagerly on one step with state carried (``model(x)``);
- ``tflite``: the TFLite interpreter on the same step model, state as explicit tensors;
- ``numpy``: the LSTM equations in plain numpy, from the same weights.
"""

from __future__ import annotations

import numpy as np


def runtime_stepper(model):
    stream = model.stream()
    return lambda sample: stream.step(sample)


def ort_stepper(path: str, threads: int = 1):
    """A bare session with the runtime's CPU settings; state carried by hand."""
    import onnxruntime as ort

    from runtime.device import SessionConfig

    opts = SessionConfig(threads=threads).options()      # the very options the runtime uses
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    feeds = {name: np.zeros((1, i.shape[-1]), np.float32)
             for name, i in inputs.items() if name != "x"}
    carry = [(o, "in_" + o[len("out_"):]) for o in outputs if o.startswith("out_")]
    x = np.zeros((1, 1, inputs["x"].shape[-1]), np.float32)          # (batch, time, features)

    def step(sample):
        x[0, 0] = sample
        feeds["x"] = x
        result = dict(zip(outputs, sess.run(outputs, feeds)))
        for out, inp in carry:
            feeds[inp] = result[out]
        return result["y"][0, -1]

    return step


def keras_step_model(model, batch: int = 1):
    """The model's layers rebuilt for one step: inputs x and every state, outputs y and states.

    Only Sequential-like stacks of LSTM/Dense/Dropout (the benchmark's own models).
    """
    import keras

    features = model.inputs[0].shape[-1]
    x = keras.Input(batch_shape=(batch, 1, features), name="x")
    h, states_in, states_out = x, [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.LSTM):
            cfg = layer.get_config() | {"return_sequences": True, "return_state": True,
                                        "stateful": False}
            clone = keras.layers.LSTM.from_config(cfg)
            s = [keras.Input(batch_shape=(batch, layer.units), name=f"s{len(states_in) + k}")
                 for k in range(2)]
            h, *out = clone(h, initial_state=s)
            clone.set_weights(layer.get_weights())
            states_in += s
            states_out += out
        elif isinstance(layer, keras.layers.Dense):
            clone = keras.layers.Dense.from_config(layer.get_config())
            h = clone(h)
            clone.set_weights(layer.get_weights())
    return keras.Model([x, *states_in], [h, *states_out])


def keras_stepper(model):
    import keras

    step_model = keras_step_model(model)
    states = [keras.ops.zeros(tuple(s.shape)) for s in step_model.inputs[1:]]
    x = np.zeros(tuple(step_model.inputs[0].shape), np.float32)

    def step(sample):
        nonlocal states
        x[0, 0] = sample
        y, *states = step_model([keras.ops.convert_to_tensor(x), *states], training=False)
        return y

    return step


def tflite_stepper(model):
    """TensorFlow's own converter and ``tf.lite.Interpreter`` on the one-step model."""
    import tensorflow as tf

    step_model = keras_step_model(model)
    converter = tf.lite.TFLiteConverter.from_keras_model(step_model)
    interp = tf.lite.Interpreter(model_content=converter.convert(), num_threads=1)
    interp.allocate_tensors()
    # The signature keeps Keras's names: inputs "x", "s0", "s1", ...; outputs "output_0"
    # (y), "output_1", ... (the states, in the order of the inputs they feed).
    runner = interp.get_signature_runner()
    ins = {k: d["index"] for k, d in runner.get_input_details().items()}
    outs = {k: d["index"] for k, d in runner.get_output_details().items()}
    n_states = len(step_model.inputs) - 1
    pairs = [(outs[f"output_{k + 1}"], ins[f"s{k}"]) for k in range(n_states)]
    x = np.zeros(tuple(step_model.inputs[0].shape), np.float32)
    for k, t in enumerate(step_model.inputs[1:]):
        interp.set_tensor(ins[f"s{k}"], np.zeros(tuple(t.shape), np.float32))

    def step(sample):
        x[0, 0] = sample
        interp.set_tensor(ins["x"], x)
        interp.invoke()
        for out, inp in pairs:
            interp.set_tensor(inp, interp.get_tensor(out))
        return interp.get_tensor(outs["output_0"])

    return step


def numpy_stepper(model):
    """The LSTM step in plain numpy: z = x W + h U + b; gates i, f, c, o in Keras's order."""
    import keras

    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.LSTM):
            w, u, b = layer.get_weights()
            layers.append(("lstm", w, u, b, np.zeros(layer.units, np.float32),
                           np.zeros(layer.units, np.float32)))
        elif isinstance(layer, keras.layers.Dense):
            layers.append(("dense", *layer.get_weights()))

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    def step(sample):
        h = np.asarray(sample, np.float32)
        for k, layer in enumerate(layers):
            if layer[0] == "lstm":
                _, w, u, b, hs, cs = layer
                z = h @ w + hs @ u + b
                i, f, g, o = np.split(z, 4)
                c = sigmoid(f) * cs + sigmoid(i) * np.tanh(g)
                h = sigmoid(o) * np.tanh(c)
                layers[k] = ("lstm", w, u, b, h, c)
            else:
                h = h @ layer[1] + layer[2]
        return h

    return step
