"""``Model.predict`` against Keras's ``model.predict`` on the same Keras-shaped arrays.

Window mode is the airline tutorial's plain model (``Input((3, 1))``, trained, MinMax
scaled); sequence mode the kinds of tests/test_runtime_keras.py; masked models against Keras
where Keras's answer is defined the stream's way, else against the stream itself.
"""

import numpy as np
import pytest

import runtime
from runtime.errors import InputError, ShapeError

keras = pytest.importorskip("keras")
export = pytest.importorskip("trainer.export")

from helpers import LOOK_BACK, SPAN, create_dataset, passengers  # noqa: E402

ATOL = 1e-5


def _load(model, **kw):
    proto, _ = export.to_onnx(model, **kw)
    return runtime.load(proto.SerializeToString(), device="cpu")


@pytest.fixture(scope="module")
def airline():
    """The tutorial's window model: (model, scaler, raw test series, testX scaled, rawX)."""
    dataset = passengers()
    low, high = float(dataset.min()), float(dataset.max())
    scaled = (dataset - low) / (high - low)
    train, test = scaled[:96], scaled[96:]
    trainX, trainY = create_dataset(train, LOOK_BACK)
    testX, _ = create_dataset(test, LOOK_BACK)
    trainX, testX = trainX[..., None], testX[..., None]     # (samples, timesteps, features)
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((LOOK_BACK, 1)), keras.layers.LSTM(4),
                              keras.layers.Dense(1)])
    model.compile(loss="mean_squared_error", optimizer="adam")
    model.fit(trainX, trainY, epochs=3, batch_size=1, verbose=0)
    scaler = {"x": {"mean": [low], "std": [high - low]}, "y": {"mean": [low], "std": [high - low]}}
    return model, scaler, dataset[96:], testX, testX * (high - low) + low


def test_window_predict_equals_keras_and_the_first_stream_answer_is_testpredict0(airline):
    model, scaler, raw_test, testX, rawX = airline
    rt = _load(model, scaler=scaler)
    assert (rt.mode, rt.window) == ("window", LOOK_BACK)
    want = model.predict(testX, verbose=0) * SPAN + scaler["y"]["mean"][0]   # testPredict
    got = rt.predict(rawX)
    diff = np.abs(got - want).max() / SPAN
    print(f"window Model.predict: max abs diff {diff:.2e} scaled")
    assert got.shape == (44, 1) and diff <= ATOL
    s = rt.stream()
    answers = [s.step(x) for x in raw_test]
    first = next(i for i, a in enumerate(answers) if a is not None)
    assert first == LOOK_BACK - 1                           # line 3: the first non-warm-up line
    assert abs(answers[first][0] - want[0, 0]) / SPAN <= ATOL
    # Many windows, more than one chunk of 4,096.
    many = np.repeat(rawX, 100, axis=0)                     # (4400, 3, 1)
    np.testing.assert_allclose(rt.predict(many), np.repeat(got, 100, axis=0), atol=1e-4)


def test_predict_shape_and_value_errors_speak_keras(airline):
    model, scaler, raw_test, testX, rawX = airline
    rt = _load(model, scaler=scaler)
    with pytest.raises(ShapeError, match=r"^X: expected \(samples, timesteps, features\) = "
                                         r"\(n, 3, 1\), got \(44, 3\) — add a features axis: "
                                         r"x.reshape\(44, 3, 1\)"):
        rt.predict(rawX[..., 0])
    with pytest.raises(ShapeError, match=r"these are readings \(one row per time step\), not "
                                         r"windows: make windows of 3 consecutive readings"):
        rt.predict(raw_test)
    with pytest.raises(ShapeError, match=r"windows of 3 timesteps, got 5"):
        rt.predict(np.zeros((2, 5, 1)))
    bad = rawX.copy()
    bad[7, 1, 0] = np.nan
    with pytest.raises(InputError, match=r"NaN or inf in 1 of 44 samples \(windows\) \(first: 7\)"):
        rt.predict(bad)
    with pytest.raises(InputError, match="X must hold numbers"):
        rt.predict(np.array([[["a"], ["b"], ["c"]]]))
    assert rt.predict(np.zeros((0, 3, 1))).shape == (0, 1)


SEQUENCE = {
    "lstm": lambda: keras.Sequential([keras.Input((None, 2)),
                                      keras.layers.LSTM(6, return_sequences=True),
                                      keras.layers.Dense(1)]),
    "gru": lambda: keras.Sequential([keras.Input((None, 2)),
                                     keras.layers.GRU(5, return_sequences=True),
                                     keras.layers.Dense(2)]),
    "embedding": lambda: keras.Sequential([keras.Input((None,), dtype="int32"),
                                           keras.layers.Embedding(10, 3),
                                           keras.layers.LSTM(5, return_sequences=True),
                                           keras.layers.Dense(1)]),
    # answers once per sequence: Keras gives (samples, targets), the file says so
    "last": lambda: keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(6),
                                      keras.layers.Dense(2)]),
}


@pytest.mark.parametrize("kind", list(SEQUENCE))
def test_sequence_predict_equals_keras_whole_sequences(kind):
    keras.utils.set_random_seed(5)
    model = SEQUENCE[kind]()
    rt = _load(model)
    assert rt.mode == "sequence" and rt.info.answers_last == (kind == "last")
    rng = np.random.default_rng(0)
    X = rng.integers(0, 10, (5, 30)) if kind == "embedding" else \
        rng.normal(size=(5, 30, 2)).astype(np.float32)
    want = model.predict(X, verbose=0)              # (samples, [timesteps,] targets) as Keras
    got = rt.predict(X)
    print(f"{kind} sequence Model.predict: max abs diff {np.abs(got - want).max():.2e}")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=ATOL)
    if kind == "embedding":
        with pytest.raises(ShapeError, match=r"expected \(samples, timesteps\) = \(n, n\)"):
            rt.predict(X[..., None])


def test_masked_window_predict_equals_keras_and_the_stream():
    keras.utils.set_random_seed(6)
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.Masking(0.0),
                              keras.layers.LSTM(5), keras.layers.Dense(1)])
    rt = _load(model)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 4, 2)).astype(np.float32)
    X[rng.uniform(size=(40, 4)) < 0.3] = 0.0
    X[:, -1] = rng.normal(size=(40, 2))                     # Keras: a window's last reading fed
    want = model.predict(X, verbose=0)
    got = rt.predict(X)
    print(f"masked window Model.predict: max abs diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=ATOL)
    for i in (0, 13, 39):                                   # each window streamed on its own
        np.testing.assert_allclose(rt.stream().feed(X[i])[-1], got[i], atol=1e-6)


def test_masked_sequence_predict_equals_the_stream():
    keras.utils.set_random_seed(8)
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.Masking(0.0),
                              keras.layers.LSTM(5, return_sequences=True), keras.layers.Dense(1)])
    rt = _load(model)
    rng = np.random.default_rng(2)
    X = rng.normal(size=(6, 20, 2)).astype(np.float32)
    X[rng.uniform(size=(6, 20)) < 0.3] = 0.0
    X[1, :5] = 0.0                                          # masked before any prediction
    got = rt.predict(X)
    for i in range(len(X)):
        np.testing.assert_allclose(got[i], rt.stream().feed(X[i]), atol=1e-6)
    assert not np.isnan(got).any()
    # Keras's answer throughout, the masked lead included (lstm_edge.mask_answer).
    want = model.predict(X, verbose=0)
    np.testing.assert_allclose(got, want, atol=ATOL)


def test_an_answers_key_other_than_its_modes_is_refused():
    from runtime.contract import ModelInfo
    from runtime.errors import ContractError
    assert ModelInfo.from_metadata({"lstm_edge.answers": "last"}).answers_last
    with pytest.raises(ContractError, match='answers must be "last" or absent in sequence '
                                            'mode, got .every.'):
        ModelInfo.from_metadata({"lstm_edge.answers": "every"})
    window = {"lstm_edge.window": "6", "lstm_edge.carry_state": "false"}
    assert ModelInfo.from_metadata({**window, "lstm_edge.answers": "every"}).answers_every
    with pytest.raises(ContractError, match='answers must be "every" or absent in window '
                                            'mode, got .last.'):
        ModelInfo.from_metadata({**window, "lstm_edge.answers": "last"})
