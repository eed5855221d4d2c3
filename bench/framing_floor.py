"""How cheap could the default forecast framing be? Hand-built graphs against the plain LSTM.

    python -m bench.framing_floor

``make bench`` measures the exported default framing at 1.41x the plain LSTM 32 per reading
(target 1.15x). This asks what any graph could reach in ONNX Runtime, where each node of a
one-reading call costs ~0.3 µs: the same LSTM 32 (seeded random weights, one feature), built
by hand in the fewest nodes for each framing, timed side by side with the runtime's session
options and a swapped pair of IO bindings per graph (as ``Stream.step`` runs one):

- ``plain``: the exporter's plain LSTM graph (10 nodes);
- ``residual target only``: the reading added back to the head's output, levels in (2 more);
- ``differenced, one reading per call, no fresh flag``: ``x - prev``, the fewest nodes that
  difference, valid only for calls of one reading and wrong on a fresh stream (4 more);
- ``differenced, any readings per call, no fresh flag``: the previous reading put in front
  on the time axis and sliced off (6 more).

The exported file must also take any number of readings per call (``feed``, Flink
batches, Triton) and difference the first reading of a fresh stream to 0, which a stream
whose state is all zeros (Triton's sequence batcher) can only learn from a flag in its
state: 3 nodes more than the last row (``trainer/fold.py``). Each row's differences are
checked against numpy before it is timed.
"""

from __future__ import annotations

import time

import numpy as np

UNITS, FEATURES = 32, 1


def graphs() -> dict:
    """name -> ModelProto, the plain LSTM and three framings of it (see the module)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"W": rng.normal(0, .3, (1, 4 * UNITS, FEATURES)),
               "R": rng.normal(0, .3, (1, 4 * UNITS, UNITS)),
               "B": rng.normal(0, .1, (1, 8 * UNITS)), "K": rng.normal(0, .3, (UNITS, 1)),
               "bias": np.array([0.1])}
    ints = {"ax0": [0], "ax1": [1], "zero": [0], "minus1": [-1]}

    def tensor(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    def build(name, framing, lstm_input, residual, prev):
        node = helper.make_node
        nodes = framing + [
            node("Unsqueeze", ["in_h", "ax0"], ["h0"]), node("Unsqueeze", ["in_c", "ax0"], ["c0"]),
            node("LSTM", [lstm_input, "W", "R", "B", "", "h0", "c0"], ["Y", "Yh", "Yc"],
                 hidden_size=UNITS),
            node("Squeeze", ["Yh", "ax0"], ["out_h"]), node("Squeeze", ["Yc", "ax0"], ["out_c"]),
            node("Squeeze", ["Y", "ax1"], ["Ys"]), node("MatMul", ["Ys", "K"], ["m"]),
            node("Add", ["m", "bias"], ["a"]),
            node("Transpose", ["a"], ["change" if residual else "y"], perm=[1, 0, 2])]
        if residual:
            nodes.append(node("Add", ["change", "x"], ["y"]))
        inputs = [tensor("x", ["batch", "time", FEATURES]), tensor("in_h", ["batch", UNITS]),
                  tensor("in_c", ["batch", UNITS])]
        outputs = [tensor("y", ["batch", "time", 1]), tensor("out_h", ["batch", UNITS]),
                   tensor("out_c", ["batch", UNITS])]
        if prev:
            inputs.append(tensor("in_x", ["batch", FEATURES]))
            outputs.append(tensor("out_x", ["batch", FEATURES]))
        init = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
        init += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items()]
        init.append(numpy_helper.from_array(np.array(-1, np.int64), "last"))
        used = {i for n in nodes for i in n.input}
        graph = helper.make_graph(nodes, name, inputs, outputs,
                                  [t for t in init if t.name in used])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model

    node = helper.make_node
    transpose = node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])
    return {
        "plain": build("plain", [transpose], "xt", False, False),
        "residual target only": build(
            "residual", [transpose, node("Gather", ["x", "last"], ["out_x"], axis=1)], "xt",
            True, True),
        "differenced, one reading per call, no fresh flag": build("one", [
            node("Unsqueeze", ["in_x", "ax1"], ["p"]), node("Sub", ["x", "p"], ["d"]),
            node("Squeeze", ["x", "ax1"], ["out_x"]),
            node("Transpose", ["d"], ["dt"], perm=[1, 0, 2])], "dt", True, True),
        "differenced, any readings per call, no fresh flag": build("any", [
            node("Unsqueeze", ["in_x", "ax1"], ["p"]), node("Concat", ["p", "x"], ["z"], axis=1),
            node("Slice", ["z", "zero", "minus1", "ax1"], ["before"]),
            node("Sub", ["x", "before"], ["d"]),
            node("Gather", ["x", "last"], ["out_x"], axis=1),
            node("Transpose", ["d"], ["dt"], perm=[1, 0, 2])], "dt", True, True),
    }


def stepper(model):
    """A one-reading step of ``model`` through two swapped IO bindings; returns ``run(n)``."""
    import onnxruntime as ort

    from runtime.device import SessionConfig

    session = ort.InferenceSession(model.SerializeToString(), SessionConfig().options(),
                                   providers=["CPUExecutionProvider"])
    states = [i.name for i in session.get_inputs() if i.name != "x"]
    width = {i.name: i.shape[-1] for i in session.get_inputs()}
    x, y = np.ones((1, 1, FEATURES), np.float32), np.zeros((1, 1, 1), np.float32)
    buffers = [{n: np.zeros((1, width[n]), np.float32) for n in states} for _ in range(2)]
    bindings = []
    for a, b in ((0, 1), (1, 0)):
        bind = session.io_binding()
        bind.bind_cpu_input("x", x)
        for n in states:
            bind.bind_input(n, "cpu", 0, np.float32, [1, width[n]], buffers[a][n].ctypes.data)
            bind.bind_output("out" + n[2:], "cpu", 0, np.float32, [1, width[n]],
                             buffers[b][n].ctypes.data)
        bind.bind_output("y", "cpu", 0, np.float32, [1, 1, 1], y.ctypes.data)
        bindings.append(bind)
    calls = [session._sess.run_with_iobinding for _ in bindings]   # as runtime.device does

    def run(n: int) -> float:
        """µs per step over ``n`` steps."""
        t0 = time.perf_counter()
        for i in range(n):
            calls[i & 1](bindings[i & 1]._iobinding, None)
        return (time.perf_counter() - t0) / n * 1e6

    return run, session


def check(models: dict) -> None:
    """Each differenced graph's answers against the plain LSTM fed numpy's differences."""
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 1, FEATURES)).astype(np.float32)
    h, c = (rng.normal(size=(2, UNITS)).astype(np.float32) for _ in range(2))
    prev = rng.normal(size=(2, FEATURES)).astype(np.float32)
    plain = ort.InferenceSession(models["plain"].SerializeToString())
    for name, model in models.items():
        if name.startswith("differenced"):
            got = ort.InferenceSession(model.SerializeToString()).run(
                None, {"x": x, "in_h": h, "in_c": c, "in_x": prev})
            want = plain.run(None, {"x": x - prev[:, None], "in_h": h, "in_c": c})
            assert np.allclose(got[0], want[0] + x, atol=1e-5), name
            assert np.array_equal(got[3], x[:, -1]), name


def measure(rounds: int = 15) -> dict:
    """name -> {"nodes", "us", "ratio"}: each graph's least round median, interleaved."""
    models = graphs()
    check(models)
    steps = {name: stepper(model)[0] for name, model in models.items()}
    medians: dict = {name: [] for name in steps}
    for _ in range(rounds):                   # interleaved rounds; the least median counts
        for name, run in steps.items():
            run(200)
            medians[name].append(float(np.median([run(200) for _ in range(5)])))
    plain = min(medians["plain"])
    return {name: {"nodes": len(models[name].graph.node), "us": min(m), "ratio": min(m) / plain}
            for name, m in medians.items()}


def table(rows: dict) -> list[str]:
    out = ["| graph built by hand | nodes | µs per reading (least round median) | ratio to plain |",
           "|---|---|---|---|"]
    return out + [f"| {name} | {r['nodes']} | {r['us']:.2f} | {r['ratio']:.2f}× |"
                  for name, r in rows.items()]


def main() -> None:
    print("\n".join(table(measure())))


if __name__ == "__main__":
    main()
