"""Folding a linear path (trainer.fold, trainer.forecast_graph): fewer, cheaper nodes, the
same answers (within float32 rounding of y where the biases are summed), flags 0 and 1,
one step and chunks, one stream and many."""

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest

from runtime import load
from trainer.fold import fold
from test_fold import assert_same, save, unfolded_water, water_readings

THREE_LAGS = {"weights": [[[0.4]], [[-0.2]], [[0.1]]], "bias": [0.05]}


def session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_one_lag_reads_the_gated_changes_and_adds_one_bias():
    before, after = unfolded_water(linear=True), fold(unfolded_water(linear=True))
    assert len(before.graph.node) == 30 and len(after.graph.node) == 21
    ops = Counter(n.op_type for n in after.graph.node)
    assert ops["Slice"] == 1 and ops["Add"] == 3 and ops["Gather"] == 2
    matmul = next(n for n in after.graph.node if n.op_type == "MatMul" and "fold_prev" in n.input[0])
    assert matmul.input[0].startswith("fold_prev_mul")          # the gated changes themselves


def test_three_lags_keep_their_state_with_gathers():
    after = fold(unfolded_water(linear=THREE_LAGS))
    ops = Counter(n.op_type for n in after.graph.node)
    assert len(after.graph.node) == 28 and ops["Slice"] == 1 and ops["Conv"] == 1


@pytest.mark.parametrize("linear", [True, THREE_LAGS], ids=["one lag", "three lags"])
@pytest.mark.parametrize("steps", [1, 6])
def test_fresh_seen_and_a_previous_reading_of_zero(linear, steps):
    a, b = session(unfolded_water(linear=linear)), session(fold(unfolded_water(linear=linear)))
    rng = np.random.default_rng(1)
    feeds = {"x": (100 + rng.standard_normal((4, steps, 1))).astype(np.float32),
             "in_h0": rng.standard_normal((4, 32)).astype(np.float32),
             "in_c0": rng.standard_normal((4, 32)).astype(np.float32),
             "in_x0": np.array([[0, 0], [0, 1], [99.5, 1], [99.5, 0]], np.float32)}
    if "in_x1" in {i.name for i in a.get_inputs()}:
        feeds["in_x1"] = np.array([[0, 0], [0.3, -0.1], [0, 0], [1.2, 0.4]], np.float32)
    for expected, got in zip(a.run(None, feeds), b.run(None, feeds)):
        assert_same(expected, got)


def test_three_lags_step_by_step_and_in_one_chunk():
    """Carrying every state by hand through ONNX Runtime (the bundled file's metadata has no
    state for a three-lag path, so the runtime is not used here)."""
    a, b = session(unfolded_water(linear=THREE_LAGS)), session(fold(unfolded_water(linear=THREE_LAGS)))
    x = water_readings()[:200]
    names = [i.name for i in a.get_inputs() if i.name != "x"]
    widths = {i.name: i.shape[1] for i in a.get_inputs() if i.name != "x"}
    for chunk in (1, 7, 200):
        state_a = state_b = {n: np.zeros((2, widths[n]), np.float32) for n in names}
        for k in range(0, len(x), chunk):
            xs = np.stack([x[k:k + chunk], x[k:k + chunk] * 0.5])           # two streams
            out_a = a.run(None, {"x": xs, **state_a})
            out_b = b.run(None, {"x": xs, **state_b})
            for u, v in zip(out_a, out_b):
                assert_same(u, v)
            state_a = dict(zip(names, out_a[1:]))
            state_b = dict(zip(names, out_b[1:]))


def test_same_answers_and_states_on_the_bundled_series(tmp_path):
    reference = save(unfolded_water(linear=True), tmp_path / "ref.onnx")
    path = save(fold(unfolded_water(linear=True)), tmp_path / "f.onnx")
    x = water_readings()
    old, new = load(reference, device="cpu"), load(path, device="cpu")
    s_old, s_new = old.stream(), new.stream()
    for r in x[:400]:
        assert_same(s_old.step(r), s_new.step(r))
    for name, value in s_old.state.items():
        assert_same(value, s_new.state[name])
    assert_same(old.stream().feed(x), new.stream().feed(x))
    streams_old = [old.stream() for _ in range(5)]
    streams_new = [new.stream() for _ in range(5)]
    for k in range(0, 40, 5):
        assert_same(old.step(streams_old, x[k:k + 5]), new.step(streams_new, x[k:k + 5]))
