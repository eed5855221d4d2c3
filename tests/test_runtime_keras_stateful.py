"""Keras as the reference for state slots and ``Model.predict``: the stateful airline tutorial.

The model is written the way the tutorial writes it, in Keras 3: ``Input(batch_shape=(B, 3,
1))``, ``LSTM(stateful=True)``, trained a few epochs with ``shuffle=False`` and
``reset_states()`` after each, on MinMax-scaled airline passengers (``look_back=3``). The
reference is the tutorial's own call: ``model.predict(testX, batch_size=B)`` right after
``reset_states()``. A stream fed the test series, ``feed``, ``Model.step`` and
``Model.predict`` must all give it, for B = 4 (window j continues window j - 4) and B = 1.
"""


import numpy as np
import pytest
from onnx import helper

import runtime
from runtime.errors import ContractError, ShapeError, SnapshotError

keras = pytest.importorskip("keras")
export = pytest.importorskip("trainer.export")
# passengers is not used here; tests/test_readme_byo.py still imports it from this module.
from helpers import LOOK_BACK, SPAN, passengers, reset_states, tutorial  # noqa: E402,F401

ATOL = 1e-5     # in the model's scaled units, as Keras's predict gives them: raw passengers


def exported(model, scaler, slots=None) -> bytes:
    """The file ``lstm-export`` writes, ``lstm_edge.state_slots`` set where given."""
    proto, _ = export.to_onnx(model, scaler=scaler)
    props = {p.key: p.value for p in proto.metadata_props}
    written = props.get("lstm_edge.state_slots", "1")
    if slots is not None and "lstm_edge.state_slots" in props:   # an exporter that writes it
        assert written == str(model.inputs[0].shape[0]), written
    if slots is not None:
        props["lstm_edge.state_slots"] = str(slots)
    helper.set_model_props(proto, props)
    return proto.SerializeToString()


@pytest.fixture(scope="module", params=[4, 1], ids=["B=4", "B=1"])
def case(request):
    batch = request.param
    model, scaler, raw_test, testX = tutorial(batch)
    reset_states(model)
    want = model.predict(testX, batch_size=batch, verbose=0)        # the tutorial's call
    want = want * scaler["y"]["std"][0] + scaler["y"]["mean"][0]     # inverse_transform
    rawX = testX * scaler["x"]["std"][0] + scaler["x"]["mean"][0]   # (44, 3, 1) passengers
    return batch, model, scaler, raw_test, rawX, want


def _close(got, want, what):
    diff = np.abs(got - want).max()
    print(f"{what}: max abs diff {diff:.2e} passengers, {diff / SPAN:.2e} scaled")
    np.testing.assert_allclose(got / SPAN, want / SPAN, atol=ATOL, rtol=0)


def test_stream_step_and_feed_equal_keras_predict_with_batch_size(case):
    batch, model, scaler, raw_test, rawX, want = case
    rt = runtime.load(exported(model, scaler, batch), device="cpu")
    assert (rt.mode, rt.window, rt.slots) == ("stateful", LOOK_BACK, batch)
    s = rt.stream()
    got = [s.step(x) for x in raw_test]
    assert all(g is None for g in got[:LOOK_BACK - 1])
    # The first prediction (line LOOK_BACK) is testPredict[0]; the tutorial drops its last window.
    got = np.array(got[LOOK_BACK - 1:LOOK_BACK - 1 + len(want)])
    _close(got, want, f"B={batch} stream.step")
    fed = rt.stream().feed(raw_test)[LOOK_BACK - 1:LOOK_BACK - 1 + len(want)]
    _close(fed, want, f"B={batch} stream.feed")
    half = rt.stream()                                      # feed in two chunks: slots carry on
    fed = np.concatenate([half.feed(raw_test[:20]), half.feed(raw_test[20:])])
    _close(fed[LOOK_BACK - 1:LOOK_BACK - 1 + len(want)], want, f"B={batch} two feeds")


def test_predict_equals_keras_predict(case):
    batch, model, scaler, raw_test, rawX, want = case
    rt = runtime.load(exported(model, scaler, batch), device="cpu")
    got = rt.predict(rawX)
    assert got.shape == want.shape == (44, 1)
    _close(got, want, f"B={batch} Model.predict")
    odd = rt.predict(rawX[:43])                              # a last group short of B
    _close(odd, want[:43], f"B={batch} Model.predict, 43 samples")
    # Keras's windows given to a stream: refused, pointing to predict, never reshaped.
    with pytest.raises(ShapeError, match=r"44 samples \(windows\) of 3 timesteps.*model\.predict"):
        rt.stream().feed(rawX)
    with pytest.raises(ShapeError, match=r"a step takes one reading.*model\.predict"):
        rt.stream().step(rawX[0])
    with pytest.raises(ShapeError, match=r"model\.predict"):
        rt.step([rt.stream() for _ in range(44)], rawX)
    with pytest.raises(ShapeError, match=r"expected \(samples, timesteps, features\) = "
                                         r"\(n, 3, 1\), got \(44, 4, 1\)"):
        rt.predict(np.zeros((44, 4, 1)))


def test_many_streams_in_one_call_keep_their_own_slots(case):
    batch, model, scaler, raw_test, rawX, want = case
    rt = runtime.load(exported(model, scaler, batch), device="cpu")
    streams = [rt.stream() for _ in range(3)]
    lone = rt.stream()
    lone.feed(raw_test[:5])                                 # a fourth stream, ahead of the rest
    rows = []
    for i, x in enumerate(raw_test):
        group = streams + ([lone] if i >= 5 else [])
        out = rt.step(group, np.repeat(x[None], len(group), axis=0))
        rows.append(out[:3])
    rows = np.array(rows)[LOOK_BACK - 1:LOOK_BACK - 1 + len(want)]   # (44, 3, 1)
    for k in range(3):
        _close(rows[:, k], want, f"B={batch} Model.step, stream {k}")


def test_snapshot_continues_every_slot(case, tmp_path):
    batch, model, scaler, raw_test, rawX, want = case
    rt = runtime.load(exported(model, scaler, batch), device="cpu")
    s = rt.stream()
    s.feed(raw_test[:21])
    path = s.snapshot().save(tmp_path / "s.npz")
    again = rt.stream(path)
    rest = np.array([again.step(x) for x in raw_test[21:]])
    _close(rest[:len(want) - 19], want[19:], f"B={batch} after a snapshot")
    saved = runtime.Snapshot.load(path)                     # what the file holds, read back
    state = saved.state["in_h0"]
    if batch == 1:                                          # as runtimes before slots kept it
        assert saved.next_slot is None and state.shape == (4,)
    else:
        assert saved.next_slot == (21 - LOOK_BACK + 1) % batch and state.shape == (4, 4)
        one = runtime.load(exported(model, scaler, batch), device="cpu", state_slots=1)
        with pytest.raises(SnapshotError, match="4 state slots; this model streams with 1"):
            one.stream(path)


def test_batch_size_matters_so_the_slots_are_what_holds_parity():
    """Streamed with one slot, the B=4 model is off from Keras: the check above can fail."""
    model, scaler, raw_test, testX = tutorial(4)
    reset_states(model)
    want = model.predict(testX, batch_size=4, verbose=0)
    want = want * scaler["y"]["std"][0] + scaler["y"]["mean"][0]
    rt = runtime.load(exported(model, scaler, 4), device="cpu", state_slots=1)
    got = rt.stream().feed(raw_test)[LOOK_BACK - 1:LOOK_BACK - 1 + len(want)]
    print(f"B=4 streamed with one slot: {np.abs(got - want).max() / SPAN:.3f} scaled off Keras")
    assert np.abs(got - want).max() / SPAN > 1e-3


def test_state_slots_below_one_are_refused():
    model, scaler, _, _ = tutorial(1)
    with pytest.raises(ContractError, match="state_slots must be at least 1"):
        runtime.load(exported(model, scaler, 0), device="cpu")
    with pytest.raises(ContractError, match="state_slots must be at least 1"):
        runtime.load(exported(model, scaler, 1), device="cpu", state_slots=0)


@pytest.mark.parametrize("batch", [1, 3])
def test_predict_of_a_stateful_model_of_one_reading_per_sample_carries_as_keras(batch):
    """``Input(batch_shape=(B, 1, F))``, stateful: Keras's predict carries the state from
    sample to sample (row i of a batch into row i of the next); so does Model.predict, for B
    = 1 too (it ran each sample from a zero state, a silent difference)."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input(batch_shape=(batch, 1, 2)),
                              keras.layers.LSTM(5, stateful=True), keras.layers.Dense(1)])
    X = np.random.default_rng(1).normal(size=(12, 1, 2)).astype(np.float32)
    want = model.predict(X, batch_size=batch, verbose=0)            # (12, 1)
    rt = runtime.load(exported(model, None), device="cpu")
    assert (rt.mode, rt.slots, rt.info.keras_stateful) == ("sequence", batch, True)
    got = rt.predict(X)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL)
    with pytest.raises(ShapeError, match=r"\(n, 1, 2\), got \(12, 4, 2\)"):
        rt.predict(np.zeros((12, 4, 2)))
