"""Keras as the reference: exported models streamed by the runtime, per streaming mode and kind.

Each case builds a tiny Keras model, exports it with ``trainer.export.to_onnx`` and checks the
runtime's stream against what Keras predicts for the same data (docs/contract.md, "Streaming modes").
"""

import numpy as np
import pytest

import runtime

keras = pytest.importorskip("keras")
export = pytest.importorskip("trainer.export")

ATOL = 1e-4
N, F = 24, 2


def _sequence(layer):
    return keras.Sequential([keras.Input((None, F)), *layer, keras.layers.Dense(1)])


CASES = {
    "lstm": lambda: _sequence([keras.layers.LSTM(6, return_sequences=True)]),
    "gru": lambda: _sequence([keras.layers.GRU(5, return_sequences=True)]),
    "stacked": lambda: _sequence([keras.layers.LSTM(6, return_sequences=True),
                                  keras.layers.GRU(4, return_sequences=True)]),
    "embedding": lambda: keras.Sequential([keras.Input((None,), dtype="int32"),
                                           keras.layers.Embedding(10, 3),
                                           keras.layers.LSTM(5, return_sequences=True),
                                           keras.layers.Dense(1)]),
}


def _load(model, **kw):
    proto, _ = export.to_onnx(model, **kw)
    return runtime.load(proto.SerializeToString(), device="cpu")


def _data(tokens, n=N, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, n) if tokens else rng.normal(size=(n, F)).astype(np.float32)


@pytest.fixture(scope="module", params=list(CASES))
def sequence_case(request):
    keras.utils.set_random_seed(0)
    model = CASES[request.param]()
    return request.param, model, _load(model)


def test_sequence_step_matches_keras_whole_sequence(sequence_case):
    name, model, rt = sequence_case
    assert rt.mode == "sequence"
    xs = _data(name == "embedding")
    want = model.predict(xs[None], verbose=0)[0]                     # (n, 1)
    s = rt.stream()
    got = np.array([s.step(x) for x in xs])
    print(f"{name} sequence max abs diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=ATOL)
    np.testing.assert_allclose(rt.stream().feed(xs), want, atol=ATOL)


def test_window_matches_keras_predict_on_last_window():
    keras.utils.set_random_seed(1)
    look_back = 5
    model = keras.Sequential([keras.Input((look_back, F)), keras.layers.LSTM(6),
                              keras.layers.Dense(1)])
    rt = _load(model)
    assert (rt.mode, rt.window) == ("window", look_back)
    xs = _data(False)
    windows = np.stack([xs[t - look_back + 1:t + 1] for t in range(look_back - 1, N)])
    want = model.predict(windows, verbose=0)                          # (n - look_back + 1, 1)
    s = rt.stream()
    got = [s.step(x) for x in xs]
    assert all(g is None for g in got[:look_back - 1])
    got = np.array(got[look_back - 1:])
    print(f"window max abs diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=ATOL)
    np.testing.assert_allclose(rt.stream().feed(xs)[look_back - 1:], want, atol=ATOL)


def test_stateful_matches_keras_stateful_predict_over_windows():
    keras.utils.set_random_seed(2)
    look_back = 4
    model = keras.Sequential([keras.Input(batch_shape=(1, look_back, F)),
                              keras.layers.LSTM(6, stateful=True), keras.layers.Dense(1)])
    rt = _load(model)
    assert (rt.mode, rt.window) == ("stateful", look_back)
    xs = _data(False)
    windows = np.stack([xs[t - look_back + 1:t + 1] for t in range(look_back - 1, N)])
    model.reset_states() if hasattr(model, "reset_states") else None
    want = np.concatenate([model.predict(w[None], verbose=0) for w in windows])
    s = rt.stream()
    got = np.array([s.step(x) for x in xs][look_back - 1:])
    print(f"stateful max abs diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_truncated_export_is_a_contract_error(tmp_path):
    keras.utils.set_random_seed(4)
    path = tmp_path / "m.onnx"
    export.export(_sequence([keras.layers.LSTM(3, return_sequences=True)]), path, steps=20)
    runtime.load(path, device="cpu")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 7, 40):
        path.write_bytes(data[:cut])
        with pytest.raises(runtime.ContractError, match=f"{path} is not an ONNX model .*lstm-export"):
            runtime.load(path, device="cpu")
