"""The folded framing (trainer.fold): fewer nodes, the same numbers, the same contract.

The reference for the bundled model is its own unfolded graph, run by the runtime on the
bundled series (step by step, chunked, many streams); for a freshly trained model it is
Keras, through the exporter's parity check and a comparison after it.
"""

import json

import numpy as np
import onnx
import pytest

from runtime import load
from trainer.fold import fold
from helpers import DATA, ROOT

BUNDLED = ROOT / "exported" / "water-flow.onnx"


def water_readings():
    return np.genfromtxt(DATA / "water-flow.csv", delimiter=",", skip_header=1,
                         usecols=(1,), dtype=np.float32)[:, None]          # (rows, 1)


def unfolded_water(linear: bool | dict = False) -> onnx.ModelProto:
    """The bundled model's network with the framing :mod:`trainer.forecast_graph` builds,
    as the exporter had it before folding (27 nodes): the reference the folded graph meets.
    ``linear``: with the bundled model's linear path too, as the file holds it (a dict:
    that linear path, ``{"weights": ..., "bias": ...}``, instead).
    """
    from onnx import helper as h, numpy_helper as nh

    from runtime.contract import StateSpec
    from trainer import forecast_graph

    src = onnx.load(BUNDLED)
    w = {i.name: nh.to_array(i) for i in src.graph.initializer}
    held = json.loads({p.key: p.value for p in src.metadata_props}["lstm_edge.linear"])
    # The file's head bias holds its one-lag linear path's bias too (fold._fold_linear_bias).
    w["head_bias_1"] = (w["head_bias_1"].astype(np.float64)
                        - np.asarray(held["bias"])).astype(np.float32)
    inits = [nh.from_array(a, n) for n, a in (
        ("W", w["lstm_0_W_1"][..., :1]),          # a folded file's extra zero column dropped
        ("R", w["lstm_0_R_1"]), ("B", w["lstm_0_B_1"]), ("K", w["head_kernel_1"]),
        ("b", w["head_bias_1"]), ("ax0", np.array([0], np.int64)),
        ("ax1", np.array([1], np.int64)))]
    nodes = [h.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             h.make_node("Unsqueeze", ["in_h0", "ax0"], ["h0"]),
             h.make_node("Unsqueeze", ["in_c0", "ax0"], ["c0"]),
             h.make_node("LSTM", ["xt", "W", "R", "B", "", "h0", "c0"], ["ys", "hT", "cT"],
                         hidden_size=32),
             h.make_node("Squeeze", ["hT", "ax0"], ["out_h0"]),
             h.make_node("Squeeze", ["cT", "ax0"], ["out_c0"]),
             h.make_node("Squeeze", ["ys", "ax1"], ["s"]),
             h.make_node("MatMul", ["s", "K"], ["m"]), h.make_node("Add", ["m", "b"], ["mb"]),
             h.make_node("Transpose", ["mb"], ["y"], perm=[1, 0, 2])]
    f32 = onnx.TensorProto.FLOAT
    io = lambda name, dims: h.make_tensor_value_info(name, f32, dims)   # noqa: E731
    graph = h.make_graph(nodes, "water", [io("x", ["batch", "time", 1]),
                                          io("in_h0", ["batch", 32]), io("in_c0", ["batch", 32])],
                         [io("y", ["batch", "time", 1]), io("out_h0", ["batch", 32]),
                          io("out_c0", ["batch", 32])], inits)
    state = [StateSpec.for_layer(0, "lstm_0", "lstm", 32)]
    wrap = {"residual": [0], "difference": "state"}
    if isinstance(linear, dict):
        wrap["linear"] = linear
    elif linear:
        wrap["linear"] = held
    graph, _, _ = forecast_graph.apply(graph, state, {}, wrap, features=1, outputs=1,
                                       tokens=False)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    proto.metadata_props.extend(src.metadata_props)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save(proto, path):
    onnx.save(proto, path)
    return path


def assert_same(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-30), initial=0) <= 1e-6


def test_folding_takes_out_the_framing_nodes_and_keeps_the_contract():
    before = unfolded_water()
    after = fold(unfolded_water())
    onnx.checker.check_model(after, full_check=True)
    assert len(before.graph.node) == 27 and len(after.graph.node) == 19
    assert not {"Where", "Greater", "Expand", "Shape", "Gather"} & {
        n.op_type for n in after.graph.node if not n.name.startswith("fold_")}
    for field in ("input", "output"):
        assert [str(v) for v in getattr(after.graph, field)] == \
               [str(v) for v in getattr(before.graph, field)]
    assert [(p.key, p.value) for p in after.metadata_props] == \
           [(p.key, p.value) for p in before.metadata_props]


@pytest.mark.parametrize("candidate", ["folded", "bundled"])
def test_same_answers_and_states_on_the_bundled_series(tmp_path, candidate):
    """The folded graph, and the bundled file, against the unfolded graph: step by step,
    one chunk, and many streams in one call."""
    reference = save(unfolded_water(linear=candidate == "bundled"), tmp_path / "ref.onnx")
    path = save(fold(unfolded_water()), tmp_path / "f.onnx") if candidate == "folded" \
        else BUNDLED
    x = water_readings()
    old, new = load(reference, device="cpu"), load(path, device="cpu")
    s_old, s_new = old.stream(), new.stream()
    for r in x:
        assert_same(s_old.step(r), s_new.step(r))
    for name, value in s_old.state.items():
        assert_same(value, s_new.state[name])
    assert_same(old.stream().feed(x), new.stream().feed(x))
    streams_old = [old.stream() for _ in range(5)]
    streams_new = [new.stream() for _ in range(5)]
    for k in range(0, 40, 5):
        assert_same(old.step(streams_old, x[k:k + 5]), new.step(streams_new, x[k:k + 5]))


@pytest.mark.parametrize("steps", [1, 6])
def test_fresh_seen_and_a_previous_reading_of_zero(tmp_path, steps):
    """Flag 0 is a fresh stream (first change 0); flag 1 with a previous 0 is a real reading."""
    import onnxruntime as ort

    a, b = (ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
            for p in (unfolded_water(), fold(unfolded_water())))
    rng = np.random.default_rng(0)
    feeds = {"x": (100 + rng.standard_normal((4, steps, 1))).astype(np.float32),
             "in_h0": rng.standard_normal((4, 32)).astype(np.float32),
             "in_c0": rng.standard_normal((4, 32)).astype(np.float32),
             "in_x0": np.array([[0, 0], [0, 1], [99.5, 1], [99.5, 0]], np.float32)}
    for expected, got in zip(a.run(None, feeds), b.run(None, feeds)):
        assert_same(expected, got)


def test_a_graph_that_does_not_match_is_left_as_it_is():
    proto = unfolded_water()
    # A framing tensor that is also a graph output: the nodes are no longer the pattern's.
    proto.graph.output.append(onnx.helper.make_tensor_value_info("fc_known", 9, None))
    fold(proto)
    assert not any(n.name.startswith("fold_prev") for n in proto.graph.node)
    assert "Where" in {n.op_type for n in proto.graph.node}
    once = fold(unfolded_water())
    assert fold(unfolded_water()).SerializeToString() == once.SerializeToString()
    twice = onnx.ModelProto()
    twice.CopyFrom(once)
    assert fold(twice).SerializeToString() == once.SerializeToString()   # nothing left to fold


@pytest.mark.slow
def test_a_trained_one_feature_model_folds_and_matches_keras(tmp_path):
    """Both passes apply (one feature, its own target); the exporter's parity check and
    Keras on the differenced, scaled series agree with the folded file."""
    import keras

    from trainer.model import ModelConfig
    from trainer.train import TrainConfig, train

    csv = tmp_path / "one.csv"
    csv.write_text((DATA / "water-flow.csv").read_text().splitlines()[0] + "\n" + "\n".join(
        (DATA / "water-flow.csv").read_text().splitlines()[1:301]) + "\n")
    cfg = TrainConfig(look_back=6, epochs=1, batch_size=16, verbose=0, seed=2, difference=True,
                      model=ModelConfig(mode="sequence", units=4))
    result = train(csv, "Water flow [l/s]", None, tmp_path / "m.keras", cfg)
    from trainer.export import export

    report = export(result.model_path, tmp_path / "m.onnx", steps=100)
    ops = report.op_counts
    assert "Where" not in ops and "Gather" in ops and ops.get("Pad") == 1
    side = result.sidecar
    x = np.genfromtxt(csv, delimiter=",", skip_header=1, usecols=(1,), dtype=np.float64)[:, None]
    d = np.vstack([np.zeros((1, 1)), np.diff(x, axis=0)])
    sx = side["scaler"]["x"]
    net = ((d - np.asarray(sx["mean"])) / np.asarray(sx["std"])).astype(np.float32)
    change = keras.models.load_model(result.model_path).predict(net[None], verbose=0)[0]
    expected = change * np.asarray(side["forecast"]["delta_scale"]) + x
    got = load(tmp_path / "m.onnx", device="cpu").stream().feed(x.astype(np.float32))
    scale = np.asarray(side["forecast"]["delta_scale"])
    assert np.max(np.abs(got - expected) / scale) <= 1e-4
    assert json.loads(report.info.extra["difference"]) == "state"
