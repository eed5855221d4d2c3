"""Models written the way the tutorials write them (Keras 3), trained by the user, exported.

Each model is trained for a few epochs on small data, saved as ``.keras`` (and ``.h5``),
exported with ``lstm-export`` and run as docs/contract.md says — through plain ONNX Runtime
by :func:`contract_predict` (independent of ``runtime/``) and, where the runtime on this
branch streams the mode, through ``runtime`` streams — against the author's own Keras calls:
``model.predict(testX)``, and the stateful tutorials' loop with ``reset_states()`` at batch
size 1 and 4. Equal within 1e-5, or a clear refusal; each refusal message users once met is
checked to be gone or replaced.
"""

import csv
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from runtime import load  # noqa: E402
from trainer.errors import ExportError, ParityError  # noqa: E402
from trainer.export import export  # noqa: E402

from helpers import create_dataset  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "data"

TOL = 1e-5
EPOCHS = 3


# --------------------------------------------------------------------------- the tutorials

def airline():
    """Passengers scaled to [0, 1] with MinMaxScaler's arithmetic, split 67/33 as written."""
    with open(DATA / "airline-passengers.csv", newline="") as fh:
        values = np.array([float(row["passengers"]) for row in csv.DictReader(fh)])
    dataset = ((values - values.min()) / (values.max() - values.min()))[:, None]
    dataset = dataset.astype("float32")                               # (144, 1)
    train_size = int(len(dataset) * 0.67)
    return dataset[:train_size], dataset[train_size:]


def airline_window():
    train, test = airline()
    look_back = 3
    train_x, train_y = create_dataset(train, look_back)
    test_x, _ = create_dataset(test, look_back)
    train_x = np.reshape(train_x, (train_x.shape[0], train_x.shape[1], 1))
    test_x = np.reshape(test_x, (test_x.shape[0], test_x.shape[1], 1))
    model = keras.Sequential([keras.Input((look_back, 1)), L.LSTM(4), L.Dense(1)])
    model.compile(loss="mean_squared_error", optimizer="adam")
    model.fit(train_x, train_y, epochs=EPOCHS, batch_size=1, verbose=0)
    return model, test[:, :], test_x, model.predict(test_x, verbose=0)


def airline_stateful(batch_size):
    """The stateful tutorial: batch_shape, fit one epoch at a time, reset_states() between."""
    train, test = airline()
    look_back = 3
    train_x, train_y = create_dataset(train, look_back)
    test_x, _ = create_dataset(test, look_back)
    keep = len(train_x) // batch_size * batch_size                   # whole batches only
    train_x, train_y = train_x[:keep, :, None], train_y[:keep]
    test_x = test_x[:len(test_x) // batch_size * batch_size, :, None]
    model = keras.Sequential([keras.Input(batch_shape=(batch_size, look_back, 1)),
                              L.LSTM(4, stateful=True), L.Dense(1)])
    model.compile(loss="mean_squared_error", optimizer="adam")
    for _ in range(EPOCHS):
        model.fit(train_x, train_y, epochs=1, batch_size=batch_size, verbose=0, shuffle=False)
        model.layers[0].reset_states()
    model.predict(train_x, batch_size=batch_size, verbose=0)
    model.layers[0].reset_states()
    test_predict = model.predict(test_x, batch_size=batch_size, verbose=0)
    return model, test, test_x, test_predict


def next_number():
    """The next-number LSTM: raw values 10..90, three in, the next out."""
    seq = np.arange(10, 100, 10, dtype="float32")
    x = np.stack([seq[i:i + 3] for i in range(len(seq) - 3)])[..., None]
    y = seq[3:]
    model = keras.Sequential([keras.Input((3, 1)), L.LSTM(30, activation="relu"), L.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=EPOCHS, verbose=0)
    series = np.array([[70.0], [80.0], [90.0]], "float32")
    return model, series, series[None], model.predict(series[None], verbose=0)


def sine_relu():
    """``LSTM(50, activation="relu", input_shape=(10, 1))`` on a sine."""
    t = np.arange(300, dtype="float32")
    wave = np.sin(0.1 * t)[:, None].astype("float32")
    x = np.stack([wave[i:i + 10] for i in range(250)])
    y = wave[10:260, 0]
    model = keras.Sequential([keras.Input((10, 1)), L.LSTM(50, activation="relu"), L.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=EPOCHS, verbose=0)
    series = wave[250:]
    test_x = np.stack([series[i:i + 10] for i in range(len(series) - 9)])
    return model, series, test_x, model.predict(test_x, verbose=0)


def multivariate_relu():
    """Two input series, their sum as the target, three steps in (the multivariate tutorial)."""
    in1 = np.arange(10, 100, 10, dtype="float32")
    in2 = in1 + 5
    dataset = np.stack([in1, in2], axis=1)                            # (9, 2)
    x = np.stack([dataset[i:i + 3] for i in range(len(dataset) - 2)])
    y = (in1 + in2)[2:]
    model = keras.Sequential([keras.Input((3, 2)), L.LSTM(50, activation="relu"), L.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, epochs=EPOCHS, verbose=0)
    series = np.array([[80, 85], [90, 95], [100, 105]], "float32")
    return model, series, series[None], model.predict(series[None], verbose=0)


def sentiment():
    """An Embedding sentiment classifier over padded token ids, sigmoid out."""
    rng = np.random.default_rng(0)
    x = rng.integers(1, 50, size=(64, 8))
    y = (x[:, -1] > 25).astype("float32")
    model = keras.Sequential([keras.Input((8,)), L.Embedding(50, 8), L.LSTM(8),
                              L.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, y, epochs=EPOCHS, verbose=0)
    test_x = rng.integers(1, 50, size=(6, 8))
    return model, None, test_x, model.predict(test_x, verbose=0)


def char_model():
    """A character model: one-hot chars in, TimeDistributed(Dense(softmax)) at every step."""
    text = "hello world, hello stream. " * 6
    chars = sorted(set(text))
    onehot = np.eye(len(chars), dtype="float32")[[chars.index(c) for c in text]]
    x = np.stack([onehot[i:i + 10] for i in range(0, len(text) - 11, 3)])
    y = np.stack([onehot[i + 1:i + 11] for i in range(0, len(text) - 11, 3)])
    model = keras.Sequential([keras.Input((10, len(chars))), L.LSTM(16, return_sequences=True),
                              L.TimeDistributed(L.Dense(len(chars), activation="softmax"))])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(x, y, epochs=EPOCHS, verbose=0)
    return model, None, x[:5], model.predict(x[:5], verbose=0)


TUTORIALS = {
    "airline_window": airline_window,
    "airline_stateful_1": lambda: airline_stateful(1),
    "airline_stateful_4": lambda: airline_stateful(4),
    "next_number": next_number,
    "sine_relu": sine_relu,
    "multivariate_relu": multivariate_relu,
    "sentiment": sentiment,
    "char_model": char_model,
}
BOTH_FORMATS = {"airline_window", "airline_stateful_1", "airline_stateful_4"}


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """name -> (model, test series, testX, Keras's testPredict, saved paths), trained once."""
    folder, done = tmp_path_factory.mktemp("tutorials"), {}

    def get(name):
        if name not in done:
            keras.utils.set_random_seed(0)
            model, series, test_x, expected = TUTORIALS[name]()
            paths = [folder / f"{name}.keras"]
            paths += [folder / f"{name}.h5"] if name in BOTH_FORMATS else []
            for path in paths:
                model.save(path)
            done[name] = (model, series, test_x, expected, paths)
        return done[name]

    return get


# --------------------------------------------------------------------------- the contract

def metadata(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def contract_predict(path, readings):
    """One stream's predictions, as docs/contract.md says, with plain ONNX Runtime.

    ``readings`` is ``(n, features)`` (``(n,)`` token ids); returns one prediction per full
    window (window modes) or per reading (sequence mode).
    """
    meta = metadata(path)
    window = int(meta.get("lstm_edge.window", 1))
    carry = meta.get("lstm_edge.carry_state", "true") == "true"
    slots = int(meta.get("lstm_edge.state_slots", 1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()[1:]]
    zeros = {i.name: np.zeros((1, i.shape[1]), "float32") for i in session.get_inputs()[1:]}
    dtype = session.get_inputs()[0].type
    readings = np.asarray(readings, "int64" if "int" in dtype else "float32")
    if carry and window == 1:                                          # sequence mode
        return session.run(["y"], {"x": readings[None], **zeros})[0][0]
    slot = [dict(zeros) for _ in range(slots)]
    out = []
    for j in range(len(readings) - window + 1):
        state = slot[j % slots] if carry else zeros
        y, *new = session.run(None, {"x": readings[None, j:j + window], **state})
        slot[j % slots] = dict(zip(names, new))
        out.append(y[0, -1])
    return np.array(out)


def lstm_export(*args, cwd=None):
    code = "from trainer.cli import export_main; export_main(prog_name='lstm-export')"
    return subprocess.run([sys.executable, "-W", "default", "-c", code, *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def exported(tutorial_tuple, tmp_path, suffix=".keras"):
    model, series, test_x, expected, paths = tutorial_tuple
    path = next(p for p in paths if p.suffix == suffix)
    return export(path, tmp_path / f"{path.stem}{suffix}.onnx")


# --------------------------------------------------------------------------- parity

@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_airline_window_equals_predict(tutorial, tmp_path, suffix):
    model, series, test_x, expected, _ = tutorial("airline_window")
    report = exported(tutorial("airline_window"), tmp_path, suffix)
    assert report.info.streaming_mode == "window" and report.info.window == 3
    got = contract_predict(report.path, series)[:len(test_x)]          # window j -> testX[j]
    np.testing.assert_allclose(got, expected, atol=TOL)
    stream = load(report.path).stream()
    ys = stream.feed(series)                                          # NaN while warming up
    np.testing.assert_allclose(ys[2:2 + len(test_x)], expected, atol=TOL)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_airline_stateful_batch_1_equals_the_tutorial_loop(tutorial, tmp_path, suffix):
    model, series, test_x, expected, _ = tutorial("airline_stateful_1")
    report = exported(tutorial("airline_stateful_1"), tmp_path, suffix)
    props = metadata(report.path)
    assert props["lstm_edge.state_slots"] == "1" and report.info.streaming_mode == "stateful"
    got = contract_predict(report.path, series)[:len(test_x)]
    np.testing.assert_allclose(got, expected, atol=TOL)
    ys = load(report.path).stream().feed(series)
    np.testing.assert_allclose(ys[2:2 + len(test_x)], expected, atol=TOL)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_airline_stateful_batch_4_keeps_4_state_slots(tutorial, tmp_path, suffix):
    """predict(testX, batch_size=4) after reset_states(): window j continues window j-4."""
    model, series, test_x, expected, paths = tutorial("airline_stateful_4")
    report = exported(tutorial("airline_stateful_4"), tmp_path, suffix)
    props = metadata(report.path)
    assert props["lstm_edge.state_slots"] == "4"
    parity = json.loads(props["lstm_edge.parity"])
    assert (parity["mode"], parity["slots"]) == ("stateful", 4)
    assert parity["per_output"]["stateful_vs_predict"] <= TOL
    got = contract_predict(report.path, series)[:len(test_x)]
    np.testing.assert_allclose(got, expected, atol=TOL)
    # The old single-slot reading was the silent wrong answer the key removes.
    one_slot = tmp_path / "one.onnx"
    export(paths[0], one_slot, state_slots=1)
    assert metadata(one_slot)["lstm_edge.state_slots"] == "1"
    assert np.max(np.abs(contract_predict(one_slot, series)[:len(test_x)] - expected)) > 1e-3


@pytest.mark.parametrize("name", ["next_number", "sine_relu", "multivariate_relu"])
def test_window_tutorials_equal_predict(tutorial, tmp_path, name):
    model, series, test_x, expected, _ = tutorial(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)   # the relu models used to warn
        report = exported(tutorial(name), tmp_path)
    assert report.info.streaming_mode == "window"
    window = report.info.window
    got = contract_predict(report.path, series)[:len(test_x)]
    np.testing.assert_allclose(got, expected, atol=TOL * max(1.0, np.abs(expected).max()))
    ys = load(report.path).stream().feed(series)
    np.testing.assert_allclose(ys[window - 1:window - 1 + len(test_x)], expected,
                               atol=TOL * max(1.0, np.abs(expected).max()))


def test_sentiment_classifier_equals_predict(tutorial, tmp_path):
    model, _, test_x, expected, _ = tutorial("sentiment")
    report = exported(tutorial("sentiment"), tmp_path)
    assert report.info.streaming_mode == "window" and report.info.window == 8
    got = np.array([contract_predict(report.path, ids)[-1] for ids in test_x])
    np.testing.assert_allclose(got, expected, atol=TOL)
    runtime_model = load(report.path)
    for ids, want in zip(test_x, expected):
        ys = runtime_model.stream().feed(ids[:, None])
        np.testing.assert_allclose(ys[-1], want, atol=TOL)
    # A classifier's output is not called a forecast.
    text = report.summary()
    assert "step(s) ahead" not in text and "normalised units" not in text


def test_char_model_equals_predict_at_every_step(tutorial, tmp_path):
    """A model of a fixed window that returns sequences (the char model): Keras's predict runs
    windows of that length, each from a zero state. By default the file is window mode:
    Model.predict gives every timestep, as Keras does, and a stream answers a full window
    with its last timestep. Exported with --window 1 --carry-state, a stream from a zero
    state gives every timestep of one window."""
    model, _, test_x, expected, paths = tutorial("char_model")
    report = exported(tutorial("char_model"), tmp_path)
    assert report.info.streaming_mode == "window"
    runtime_model = load(report.path)
    np.testing.assert_allclose(runtime_model.predict(test_x), expected, atol=TOL)
    for sample, want in zip(test_x, expected):
        np.testing.assert_allclose(runtime_model.stream().feed(sample)[-1], want[-1], atol=TOL)
    keras_file = next(p for p in paths if p.suffix == ".keras")
    carried = export(keras_file, tmp_path / "carried.onnx", window=1, carry_state=True)
    assert carried.info.streaming_mode == "sequence"
    for sample, want in zip(test_x, expected):                       # each from a zero state
        np.testing.assert_allclose(contract_predict(carried.path, sample), want, atol=TOL)
        np.testing.assert_allclose(load(carried.path).stream().feed(sample), want, atol=TOL)


# --------------------------------------------------------------------------- quoted messages

def test_relu_lstm_exports_through_the_cli_without_numpy_warnings(tutorial, tmp_path):
    """Item 1: four RuntimeWarnings and 'does not reproduce Keras ... nan' are gone."""
    path = tutorial("sine_relu")[4][0]
    result = lstm_export(path, "-o", tmp_path / "relu.onnx")
    assert result.returncode == 0, result.stderr
    assert "RuntimeWarning" not in result.stderr and "Traceback" not in result.stderr
    assert "does not reproduce" not in result.stderr
    assert "checked 64 windows of 10 readings, each from a zero state" in result.stdout


def test_keras_divergence_is_named_not_blamed_on_the_graph(tmp_path):
    """Item 8: a relu sequence model whose Keras state overflows says it diverges."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 2)),
                              L.LSTM(5, activation="relu", return_sequences=True), L.Dense(1)])
    lstm = model.layers[0]
    lstm.set_weights([w * 3 for w in lstm.get_weights()])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ParityError, match="the model itself diverges") as err:
            export(model, tmp_path / "m.onnx")
    assert "does not reproduce" not in str(err.value) and "--steps" in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


def test_declared_time_axis_gets_a_note_naming_the_window_and_override(tmp_path):
    """Item 3: the window written from the declared input is said, with --window N."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((10, 3)), L.LSTM(4), L.Dense(1)])
    model.save(tmp_path / "m.keras")
    result = lstm_export(tmp_path / "m.keras", "-o", tmp_path / "m.onnx", "--no-check")
    assert result.returncode == 0, result.stderr
    assert "note: window mode: each prediction reads the last 10 readings" in result.stderr
    assert "--window N" in result.stderr
    # A sidecar saying otherwise wins, and the note says so.
    (tmp_path / "m.lstm-edge.json").write_text(json.dumps(
        {"format": "lstm-edge.training/1", "mode": "window", "look_back": 9}))
    report = export(tmp_path / "m.keras", tmp_path / "m2.onnx", steps=20)
    assert report.info.window == 9
    assert any("declares 10 timesteps" in n and "the sidecar wins" in n for n in report.notes)


def test_one_timestep_of_several_features_gets_a_note(tmp_path):
    """Item 4: (samples, 1, 3) is named as a window of one reading of 3 features."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1, 3)), L.LSTM(4), L.Dense(1)])
    report = export(model, tmp_path / "m.onnx")
    note = " ".join(report.notes)
    assert "3 features at each of 1 timestep" in note and "reshape(n, 3, 1)" in note


def test_zero_output_for_mask_is_refused_with_the_fix(tmp_path):
    """Item 8: zero_output_for_mask=True after Masking is no longer silently wrong."""
    model = keras.Sequential([keras.Input((None, 2)), L.Masking(0.0),
                              L.GRU(4, return_sequences=True, zero_output_for_mask=True),
                              L.Dense(1)])
    with pytest.raises(ExportError, match="zero_output_for_mask=True") as err:
        export(model, tmp_path / "m.onnx")
    assert "zero_output_for_mask=False" in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("return_sequences", [True, False])
def test_masked_readings_are_fed_by_the_check(tmp_path, monkeypatch, return_sequences):
    """The check feeds masked readings: a stream that fed them would be caught."""
    import trainer.parity as parity

    keras.utils.set_random_seed(0)
    shape = (None, 2) if return_sequences else (8, 2)
    model = keras.Sequential([keras.Input(shape), L.Masking(0.0),
                              L.LSTM(4, return_sequences=return_sequences), L.Dense(1)])
    assert export(model, tmp_path / "ok.onnx", steps=200).parity["max_abs_diff"] <= 1e-5
    monkeypatch.setattr(parity, "_masked", lambda subject, norm: None)   # feed them instead
    with pytest.raises(ParityError):
        export(model, tmp_path / "bad.onnx", steps=200)


def test_nested_sequential_is_looked_inside(tmp_path):
    """Item 8: 'the model has no recurrent layer' was false for a Sequential used as a layer."""
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([L.LSTM(4, return_sequences=True), L.Dense(2)])
    x = keras.Input((None, 3))
    model = keras.Model(x, L.Dense(1)(inner(x)))
    report = export(model, tmp_path / "m.onnx", steps=100)
    assert [s.kind for s in report.info.state] == ["lstm"]
    assert report.parity["max_abs_diff"] <= TOL


def test_unrolled_model_checks_against_a_rolled_reference(tmp_path):
    """Item 8: unroll=True took 36-204 s because the reference unrolled 1,000 steps."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 2)),
                              L.LSTM(4, unroll=True, return_sequences=True), L.Dense(1)])
    report = export(model, tmp_path / "m.onnx", steps=300)
    assert report.parity["max_abs_diff"] <= TOL and report.parity["steps"] == 300
    from trainer.parity import Subject, reference_model

    subject = Subject(b"", model.layers, model, report.info.state, False, 2, 0, None, 1, True)
    reference = reference_model(model.layers, subject)
    assert not any(getattr(layer, "unroll", False) for layer in reference.layers)


def test_directory_gets_the_exporters_message(tmp_path):
    """Item 8: click's "File '...' is a directory." is replaced by the exporter's message."""
    saved = tmp_path / "saved_model"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    result = lstm_export(saved)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is a directory." not in result.stderr
    assert "not a Keras file" in result.stderr and "SavedModel" in result.stderr


@pytest.mark.slow
def test_custom_layer_is_named_in_one_uncut_message(tmp_path):
    """The custom class is named; no message cut mid-word."""
    code = (
        "import keras\n"
        "@keras.saving.register_keras_serializable(package='mine')\n"
        "class Twice(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return 2 * x\n"
        "m = keras.Sequential([keras.Input((5, 2)), keras.layers.LSTM(3, return_sequences=True),"
        " Twice(), keras.layers.Dense(1)])\n"
        f"m.save({str(tmp_path / 'c.keras')!r}); m.save({str(tmp_path / 'c.h5')!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    for name in ("c.keras", "c.h5"):
        result = lstm_export(tmp_path / name)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(error) == 1 and "Twice" in error[0], result.stderr
        assert "custom_objects" in error[0] and "config={" not in error[0]


@pytest.mark.parametrize("command", ["export_main", "train_main"])
def test_dash_h_shows_help(command):
    """-h works for lstm-export and lstm-train."""
    code = f"from trainer.cli import {command}; {command}(prog_name='x')"
    result = subprocess.run([sys.executable, "-c", code, "-h"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "Usage:" in result.stdout, result.stderr


def test_summary_says_what_a_window_model_does(tutorial, tmp_path):
    """Keras layers listed; window state not shown as carried; no units
    wording without a scaler."""
    report = exported(tutorial("airline_window"), tmp_path)
    text = report.summary()
    assert "lstm" in text and "(LSTM)" in text and "params" in text       # the Keras layers
    assert "zeros at the start of every window (not carried)" in text
    assert "normalised" not in text
    assert "checked 64 windows of 3 readings, each from a zero state" in text


# --------------------------------------------------------------------------- cheap usability

@pytest.mark.parametrize("cell, kind", [("LSTMCell", "lstm"), ("GRUCell", "gru"),
                                        ("SimpleRNNCell", "rnn")])
def test_rnn_around_one_cell_streams_like_its_layer(tmp_path, cell, kind):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 2)),
                              L.RNN(getattr(L, cell)(4), return_sequences=True), L.Dense(1)])
    report = export(model, tmp_path / "m.onnx", steps=100)
    assert [s.kind for s in report.info.state] == [kind]
    assert report.parity["max_abs_diff"] <= TOL


def test_rnn_around_stacked_cells_is_refused():
    model = keras.Sequential([keras.Input((None, 2)), L.RNN(L.StackedRNNCells(
        [L.LSTMCell(3), L.LSTMCell(3)]), return_sequences=True), L.Dense(1)])
    with pytest.raises(ExportError, match="StackedRNNCells"):
        export(model, "unused.onnx")


def test_return_state_chain_using_only_the_sequence(tmp_path):
    keras.utils.set_random_seed(0)
    x = keras.Input((None, 2))
    sequence, _, _ = L.LSTM(4, return_sequences=True, return_state=True)(x)
    model = keras.Model(x, L.Dense(1)(sequence))
    report = export(model, tmp_path / "m.onnx", steps=100)
    assert report.parity["max_abs_diff"] <= TOL
    # Using a state off the chain is still refused.
    _, h, _ = L.LSTM(4, return_sequences=True, return_state=True)(x)
    with pytest.raises(ExportError, match="single chain"):
        export(keras.Model(x, L.Dense(1)(h)), tmp_path / "h.onnx")


def test_project_stateful_training_keeps_one_slot_and_streams_as_validated(tmp_path):
    """lstm-train --mode stateful fits blocks per batch row and validates with a batch-1 copy
    carrying the state window to window: its file keeps one slot and streams just that."""
    from trainer.model import ModelConfig, build_model, reset_states
    from trainer.train import TrainConfig, train

    # The level target on raw readings: the Keras probe below is then the whole model.
    cfg = TrainConfig(look_back=6, epochs=1, batch_size=16, verbose=0, seed=1,
                      target_kind="level", difference=False,
                      model=ModelConfig(mode="stateful", units=4))
    result = train(DATA / "water-flow.csv", "Water flow [l/s]", None, tmp_path / "s.keras", cfg)
    report = export(result.model_path, tmp_path / "s.onnx")
    assert metadata(report.path)["lstm_edge.state_slots"] == "1"
    assert report.parity["slots"] == 1 and report.info.streaming_mode == "stateful"

    model = keras.models.load_model(result.model_path)
    probe = build_model(cfg.model, 6, 1, 1, batch_size=1)
    probe.set_weights(model.get_weights())
    reset_states(probe)
    scaler = result.sidecar["scaler"]
    raw = np.array([[v] for v in np.linspace(90, 110, 40)], "float32")       # (40, 1)
    norm = (raw - scaler["x"]["mean"][0]) / scaler["x"]["std"][0]
    windows = np.stack([norm[i:i + 6] for i in range(len(raw) - 5)])
    want = probe.predict(windows, batch_size=1, verbose=0) * scaler["y"]["std"][0] \
        + scaler["y"]["mean"][0]
    got = load(report.path).stream().feed(raw)[5:]
    np.testing.assert_allclose(got, want, atol=1e-4 * scaler["y"]["std"][0])


def test_state_slots_override_and_its_refusal_outside_stateful_mode(tutorial, tmp_path):
    path = tutorial("airline_stateful_1")[4][0]
    result = lstm_export(path, "-o", tmp_path / "m.onnx", "--state-slots", "3", "--no-check")
    assert result.returncode == 0, result.stderr
    assert metadata(tmp_path / "m.onnx")["lstm_edge.state_slots"] == "3"
    window_model = tutorial("airline_window")[4][0]
    with pytest.raises(ExportError, match="--state-slots applies to a stream that carries its state"):
        export(window_model, tmp_path / "w.onnx", state_slots=2)


def test_stateful_model_of_one_timestep_with_batch_2_streams_as_keras_predicts(tmp_path):
    """batch_shape=(2, 1, 1): sample j continues sample j - 2 in Keras; the file says so."""
    keras.utils.set_random_seed(3)
    inp = keras.Input(batch_shape=(2, 1, 1))
    out = L.Dense(1)(L.LSTM(4, stateful=True)(inp))
    model = keras.Model(inp, out)
    report = export(model, tmp_path / "s.onnx")
    assert metadata(report.path)["lstm_edge.state_slots"] == "2"
    # The check ran it as it streams: chains through 2 slots, against predict(batch_size=2).
    assert report.parity["slots"] == 2 and "stateful_vs_predict" in report.parity["per_output"]
    series = np.random.default_rng(0).uniform(size=(20, 1)).astype(np.float32)
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
    want = model.predict(series[:, None, :], batch_size=2, verbose=0)     # (20, 1)
    got = load(report.path).stream().feed(series)
    np.testing.assert_allclose(got, want, atol=TOL)
    one = load(report.path, state_slots=1).stream().feed(series)
    assert np.abs(one - want).max() > 1e-3          # one carried state would be silently off


def test_info_says_what_the_export_check_ran(tutorial):
    """--info quotes the parity record in words: a window model's check is windows from zero."""
    path = tutorial("airline_window")[4][0]
    out = Path(path).with_suffix(".info.onnx")
    export(path, out)
    proc = subprocess.run([str(Path(sys.executable).parent / "lstm-run"), str(out), "--info"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    parity = next(line for line in proc.stdout.splitlines() if line.startswith("parity"))
    assert "64 windows of 3 readings, each from a zero state" in parity, parity
