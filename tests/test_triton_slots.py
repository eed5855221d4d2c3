"""State slots served by Triton: a Keras stateful model of batch B answers as Keras does.

Keras's ``predict(X, batch_size=B)`` runs window j from the state window j - B left
(docs/contract.md, "State slots"), so a sensor keeps B states. The graph written for Triton
keeps them as one implicit state ``(B, units)`` per tensor and a slot counter; one slot
instead (what lstm-triton once advised) answers something else, which the first test
measures.
"""

import numpy as np
import onnx
import pytest

import runtime
from helpers import LOOK_BACK, SPAN, passengers, reset_states, slotted
from test_triton import TOL, ImplicitState, simulate
from integrations.triton.repository import write_repository

export = pytest.importorskip("trainer.export")
B = 3
ATOL = 1e-5     # of the passengers' span: Keras against ORT, as tests/test_runtime_keras_stateful


def served_answers(folder, raw):
    """One sensor sending the raw series one reading per request: its full windows' y."""
    triton, ys = ImplicitState(folder), []
    for t, x in enumerate(raw):
        got = triton.call([(7, x[None, None].astype(np.float32), t == 0, False)])[7]
        if not got["warmup"][0, 0]:
            ys.append(got["y"][0, -1])
    return np.array(ys)                                      # (windows, targets)


def stateful_tutorial():
    """The stateful tutorial's model, built with batch 3 (its weights as initialised:
    ``fit`` would need a sample count divisible by 3); its MinMax scaler, the raw test
    series and its windows, as many as batches of 3 hold."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input(batch_shape=(B, LOOK_BACK, 1)),
                              keras.layers.LSTM(4, stateful=True), keras.layers.Dense(1)])
    dataset = passengers()                                    # (144, 1)
    low, high = float(dataset.min()), float(dataset.max())
    raw_test = dataset[int(len(dataset) * 0.67):]             # (48, 1) passengers
    windows = np.stack([raw_test[i:i + LOOK_BACK] for i in range(42)])   # (42, 3, 1)
    scaler = {"x": {"mean": [low], "std": [high - low]}, "y": {"mean": [low], "std": [high - low]}}
    return model, scaler, raw_test, (windows - low) / (high - low)


def test_a_stateful_keras_model_of_batch_3_answers_as_keras(tmp_path):
    model, scaler, raw_test, test_x = stateful_tutorial()
    reset_states(model)
    want = model.predict(test_x, batch_size=B, verbose=0) * scaler["y"]["std"][0] \
        + scaler["y"]["mean"][0]                             # (42, 1) passengers
    proto, _ = export.to_onnx(model, scaler=scaler)
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["lstm_edge.state_slots"] == str(B)
    path = tmp_path / "tutorial.onnx"
    onnx.save(proto, path)
    report = write_repository(path, tmp_path / "models")
    assert report.served.slots == B and "3 state slots" in report.summary()
    got = served_answers(report.folder, raw_test)[:len(want)]
    print(f"B={B}: max |triton - keras| / span {np.abs(got - want).max() / SPAN:.2e}")
    assert np.abs(got - want).max() / SPAN <= ATOL

    # The old advice, "re-export with one slot", answers something else.
    props["lstm_edge.state_slots"] = "1"
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, tmp_path / "one.onnx")
    one = write_repository(tmp_path / "one.onnx", tmp_path / "models")
    off = np.abs(served_answers(one.folder, raw_test)[:len(want)] - want).max() / SPAN
    print(f"one slot instead: max |triton - keras| / span {off:.3f}")
    assert off > 1000 * ATOL                              # 0.033 of the span here


@pytest.mark.parametrize("window", [LOOK_BACK, 1], ids=["stateful", "sequence-of-one"])
def test_slots_per_sensor_match_the_runtime(tmp_path, window):
    """Several sensors per call, joining, leaving and starting over: the runtime's slots."""
    path = slotted(tmp_path, window)
    assert runtime.load(path, device="cpu").slots == B
    report = write_repository(path, tmp_path / "models")
    states = dict(report.served.states)
    assert states["in_slot"] == "out_slot" and report.served.variant
    worst, compared = simulate(report.folder, path)
    print(f"window {window}, {B} slots: {compared} predictions, max {worst:.2e}")
    assert compared > 50 and worst <= TOL


def test_a_refused_reading_does_not_move_the_slot(tmp_path):
    path = slotted(tmp_path, LOOK_BACK)
    report = write_repository(path, tmp_path / "models")
    stream = runtime.load(path, device="cpu", missing="skip").stream()
    triton = ImplicitState(report.folder)
    xs = np.random.default_rng(0).normal(20, 5, (12, 2)).astype(np.float32)
    xs[6, 1] = np.nan
    for t, x in enumerate(xs):
        got = triton.call([(1, x[None, None], t == 0, False)])[1]
        want = stream.step(x)
        assert int(triton.states[1]["in_slot"][0, 0]) == stream.slot
        if want is None:
            assert np.isnan(got["y"]).all()
        else:
            np.testing.assert_allclose(got["y"][0, -1], want, rtol=TOL, atol=0)
