"""Window models that do not step one reading at a time: converted whole, streamed, equal Keras.

Each model is written as the tutorials write it (LSTM autoencoders, encoder-decoders, the
TF tutorial's single-shot multi-step model, bidirectional layers, pooling heads, a
BatchNormalization after the last LSTM), trained briefly on a scaled three-feature series,
saved as ``.keras`` or ``.h5``, exported, and compared with the author's own Keras call:
``model.predict`` on the sliding windows, de-scaled. The stream is fed reading by reading
(``Stream.step``) and through ``lstm-run``; the tolerance is 1e-5 plus 1e-6 relative.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

import runtime  # noqa: E402
from trainer.errors import ExportError, ParityError  # noqa: E402
from trainer.export import export  # noqa: E402

T, F, H = 12, 3, 4            # window, features, forecast steps
READINGS = 60                 # readings each stream comparison feeds
FEATURES = ["temp", "rh", "co2"]
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
           PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def series(n, seed=0):
    """A raw three-feature series around (20, 50, 600), ``(n, F)`` float32."""
    t = np.arange(n)[:, None]
    rng = np.random.default_rng(seed)
    wave = np.sin(t / np.array([7.0, 11.0, 5.0])) + 0.1 * rng.normal(size=(n, F))
    return (np.array([20.0, 50.0, 600.0]) + wave * np.array([3.0, 8.0, 40.0])).astype(np.float32)


RAW = series(400)
MEAN, STD = RAW.mean(axis=0).astype(np.float64), RAW.std(axis=0).astype(np.float64)
SCALER = {"x": {"mean": MEAN.tolist(), "std": STD.tolist()}}


def sliding(x, width):
    return np.lib.stride_tricks.sliding_window_view(x, width, axis=0).transpose(0, 2, 1)


def scaled(raw):
    return ((raw - MEAN) / STD).astype(np.float32)


def training_data(kind):
    """(X, Y) in scaled units: windows, and what the kind learns from each."""
    z = scaled(RAW)
    X = sliding(z[:-H], T)                                          # (n, T, F)
    future = sliding(z[T:], H)[:len(X)]                             # (n, H, F)
    return X, {"reconstruction": X, "forecast": future, "forecast1": future[..., :1],
               "one": future[:, -1, :1]}[kind]


def tutorial_models():
    """name -> (builder, what it learns, scaler y names or None for the x scaler)."""
    def seq(*layers):
        return keras.Sequential([keras.Input((T, F)), *layers])

    def seq2seq():
        inputs = keras.Input((T, F))
        encoded, h, c = L.LSTM(16, return_state=True)(inputs)
        decoded = L.LSTM(16, return_sequences=True)(L.RepeatVector(H)(encoded),
                                                     initial_state=[h, c])
        return keras.Model(inputs, L.TimeDistributed(L.Dense(1))(decoded))

    return {
        "autoencoder": (lambda: seq(L.LSTM(16), L.RepeatVector(T),
                                    L.LSTM(16, return_sequences=True),
                                    L.TimeDistributed(L.Dense(F))), "reconstruction"),
        "multi_step": (lambda: seq(L.LSTM(32), L.Dense(H * F), L.Reshape([H, F])), "forecast"),
        "repeat_decoder": (lambda: seq(L.GRU(16), L.RepeatVector(H),
                                       L.GRU(16, return_sequences=True),
                                       L.TimeDistributed(L.Dense(1))), "forecast1"),
        "seq2seq_return_state": (seq2seq, "forecast1"),
        "bidirectional": (lambda: seq(L.Bidirectional(L.LSTM(8)), L.Dense(1)), "one"),
        "go_backwards": (lambda: seq(L.LSTM(8, go_backwards=True), L.Dense(1)), "one"),
        "flatten_head": (lambda: seq(L.LSTM(8, return_sequences=True), L.Flatten(),
                                     L.Dense(1)), "one"),
        "gap_head": (lambda: seq(L.LSTM(8, return_sequences=True),
                                 L.GlobalAveragePooling1D(), L.Dense(1)), "one"),
        "lstm_bn": (lambda: seq(L.LSTM(32), L.BatchNormalization(), L.Dense(1)), "one"),
        "gru_bn": (lambda: seq(L.GRU(32), L.BatchNormalization(), L.Dense(1)), "one"),
        "lstm_dense_bn": (lambda: seq(L.LSTM(16), L.Dense(8), L.BatchNormalization(),
                                      L.Dense(1)), "one"),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """name -> (saved path, Keras model): each trained for two epochs, saved once."""
    folder = tmp_path_factory.mktemp("windows")
    done = {}

    def get(name, suffix=".keras"):
        if (name, suffix) not in done:
            builder, kind = tutorial_models()[name]
            keras.utils.set_random_seed(0)
            model = builder()
            model.compile("adam", "mse")
            X, Y = training_data(kind)
            model.fit(X, Y, epochs=2, batch_size=32, verbose=0)
            path = folder / f"{name}{suffix}"
            model.save(path)
            done[name, suffix] = (path, model)
        return done[name, suffix]
    return get


def y_scaler(kind):
    names = FEATURES if kind in ("reconstruction", "forecast") else FEATURES[:1]
    index = [FEATURES.index(n) for n in names]
    return {"mean": MEAN[index].tolist(), "std": STD[index].tolist()}, names


def keras_answers(model, kind, raw):
    """The author's own call on every full window of ``raw``, de-scaled: (windows, outputs)."""
    scale, _ = y_scaler(kind)
    out = model.predict(scaled(sliding(raw, T)), verbose=0).astype(np.float64)
    out = out * np.asarray(scale["std"]) + np.asarray(scale["mean"])
    return out.reshape(len(out), -1)


def assert_close(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    excess = np.abs(got - want) - (1e-5 + 1e-6 * np.abs(want))
    assert excess.max() <= 0, f"max abs diff {np.abs(got - want).max():.3g}"


def stepped(path, raw):
    """Stream.step reading by reading: (readings - T + 1, outputs) past the warm-up."""
    stream = runtime.load(path).stream()
    answers = [stream.step(x) for x in raw]
    assert all(a is None for a in answers[:T - 1])
    return np.stack(answers[T - 1:])


def export_scaled(path, name, out, **kw):
    kind = tutorial_models()[name][1]
    scale, names = y_scaler(kind)
    scaler = SCALER if kind == "reconstruction" else {**SCALER, "y": scale}
    return export(path, out, scaler=scaler, features=FEATURES, targets=names, **kw)


def lstm_export(*args, cwd):
    code = "from trainer.cli import export_main; export_main(prog_name='lstm-export')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def lstm_run(*args, cwd, data=None):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)], cwd=cwd,
                          env=ENV, input=data, capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------- in-process

IN_PROCESS = ["multi_step", "repeat_decoder", "seq2seq_return_state", "bidirectional",
              "go_backwards", "flatten_head", "gap_head", "gru_bn", "lstm_dense_bn"]


@pytest.mark.parametrize("name", IN_PROCESS)
def test_window_model_exports_and_streams_as_keras_predicts(trained, tmp_path, name):
    path, model = trained(name, ".h5" if name in ("go_backwards", "gru_bn") else ".keras")
    kind = tutorial_models()[name][1]
    report = export_scaled(path, name, tmp_path / "m.onnx")
    raw = series(READINGS, seed=1)
    want = keras_answers(model, kind, raw)
    loaded = runtime.load(report.path)
    assert loaded.mode == "window" and loaded.window == T
    assert_close(stepped(report.path, raw), want)
    assert_close(loaded.predict(sliding(raw, T)).reshape(len(want), -1), want)
    block = report.info.block
    if kind.startswith("forecast"):
        assert block.kind == "forecast" and block.steps == H and report.info.horizon == H
        assert loaded.targets[0] == f"{block.names[0]}+1"
        assert loaded.targets[-1] == f"{block.names[-1]}+{H}"
    else:
        assert block is None and report.info.horizon == 1
    print(f"{name}: stream vs Keras predict max abs diff "
          f"{np.abs(stepped(report.path, raw) - want).max():.2g} (raw units)")


def test_a_whole_window_file_refuses_another_window_at_run_time(trained, tmp_path):
    path, _ = trained("multi_step")
    report = export_scaled(path, "multi_step", tmp_path / "m.onnx")
    with pytest.raises(runtime.ContractError, match=f"exactly {T} readings.*drop the override"):
        runtime.load(report.path, window=T + 1)
    with pytest.raises(runtime.ContractError, match="carry_state=true"):
        runtime.load(report.path, carry_state=True)


def test_many_streams_stepped_together_equal_one_by_one(trained, tmp_path):
    path, model = trained("multi_step")
    report = export_scaled(path, "multi_step", tmp_path / "m.onnx")
    loaded = runtime.load(report.path)
    raws = [series(30, seed=s) for s in (2, 3, 4)]
    streams = [loaded.stream() for _ in raws]
    together = np.stack([loaded.step(streams, np.stack([r[t] for r in raws]))
                         for t in range(30)])                       # (time, streams, outputs)
    for k, raw in enumerate(raws):
        assert_close(together[T - 1:, k], keras_answers(model, "forecast", raw))


# --------------------------------------------------------------------------- the commands

@pytest.mark.slow
def test_autoencoder_through_the_commands_scores_its_reconstruction_error(trained, tmp_path):
    """lstm-export with --scaler, lstm-run's score = Keras's mean absolute error, scaled."""
    path, model = trained("autoencoder")
    (tmp_path / "scaler.json").write_text(json.dumps(SCALER))
    done = lstm_export(path, "--scaler", "scaler.json", "--features", ",".join(FEATURES),
                       "-o", "ae.onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "reconstruction" in runtime.load(tmp_path / "ae.onnx").info.extra["block"]
    raw = series(READINGS, seed=1)
    rebuilt = keras_answers(model, "reconstruction", raw).reshape(-1, T, F)   # raw units
    streamed = stepped(tmp_path / "ae.onnx", raw)
    assert_close(streamed, rebuilt.reshape(len(rebuilt), -1))
    print(f"autoencoder: stream vs Keras predict max abs diff "
          f"{np.abs(streamed - rebuilt.reshape(len(rebuilt), -1)).max():.2g} (raw units)")
    lines = "time," + ",".join(FEATURES) + "\n" + "".join(
        f"{i}," + ",".join(f"{v:.9g}" for v in row) + "\n" for i, row in enumerate(raw))
    ran = lstm_run("ae.onnx", cwd=tmp_path, data=lines)
    assert ran.returncode == 0, ran.stderr
    rows = list(csv.DictReader(ran.stdout.splitlines()))
    assert "score" in rows[0] and not any(k.startswith("pred_") for k in rows[0])
    assert [r["score"] for r in rows[:T - 1]] == [""] * (T - 1)
    # The tutorials' anomaly score, from Keras: mean |reconstruction - window|, scaled.
    want = np.mean(np.abs(rebuilt - sliding(raw, T)) / STD, axis=(1, 2))
    got = np.array([float(r["score"]) for r in rows[T - 1:]])
    assert np.abs(got - want).max() <= 1e-5
    info = lstm_run("ae.onnx", "--info", cwd=tmp_path)
    assert "reconstruction of the window's 12 readings" in info.stdout, info.stderr
    # A missing value held (--missing hold): the score is of the window as it was fed.
    held = raw.copy()
    held[20, 1] = held[19, 1]
    text = lines.splitlines(keepends=True)
    fields = text[21].split(",")
    text[21] = ",".join([fields[0], fields[1], "", fields[3]])
    ran = lstm_run("ae.onnx", "--missing", "hold", cwd=tmp_path, data="".join(text))
    assert ran.returncode == 0, ran.stderr
    rows = list(csv.DictReader(ran.stdout.splitlines()))
    got = np.array([float(r["score"]) for r in rows[T - 1:]])
    rebuilt_held = keras_answers(model, "reconstruction", held).reshape(-1, T, F)
    want = np.mean(np.abs(rebuilt_held - sliding(held, T)) / STD, axis=(1, 2))
    assert np.abs(got - want).max() <= 1e-5
    # Many sensors, interleaved: stepped together in rounds rather than fed per sensor.
    sensors = {f"s{k}": series(T + 3, seed=10 + k) for k in range(20)}
    lines = "sensor," + ",".join(FEATURES) + "\n" + "".join(
        f"{key}," + ",".join(f"{v:.9g}" for v in raw[t]) + "\n"
        for t in range(T + 3) for key, raw in sensors.items())
    ran = lstm_run("ae.onnx", "--stream-column", "sensor", cwd=tmp_path, data=lines)
    assert ran.returncode == 0, ran.stderr
    rows = list(csv.DictReader(ran.stdout.splitlines()))
    for key, raw in sensors.items():
        mine = [r for r in rows if r["sensor"] == key]
        got = np.array([float(r["score"]) for r in mine[T - 1:]])
        rebuilt = keras_answers(model, "reconstruction", raw).reshape(-1, T, F)
        want = np.mean(np.abs(rebuilt - sliding(raw, T)) / STD, axis=(1, 2))
        assert np.abs(got - want).max() <= 1e-5


@pytest.mark.slow
def test_multi_step_h5_through_the_commands_names_each_step(trained, tmp_path):
    path, model = trained("multi_step", ".h5")
    scale, _ = y_scaler("forecast")
    (tmp_path / "scaler.json").write_text(json.dumps({**SCALER, "y": scale}))
    done = lstm_export(path, "--scaler", "scaler.json", "--features", ",".join(FEATURES),
                       "--targets", ",".join(FEATURES), "-o", "ms.onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    raw = series(READINGS, seed=1)
    lines = "".join(",".join(f"{v:.9g}" for v in row) + "\n" for row in raw)
    ran = lstm_run("ms.onnx", cwd=tmp_path,
                   data=",".join(FEATURES) + "\n" + lines)
    assert ran.returncode == 0, ran.stderr
    rows = list(csv.DictReader(ran.stdout.splitlines()))
    names = [f"pred_{n}+{s}" for s in range(1, H + 1) for n in FEATURES]
    assert [k for k in rows[0] if k.startswith("pred_")] == names
    got = np.array([[float(r[n]) for n in names] for r in rows[T - 1:]])
    assert_close(got, keras_answers(model, "forecast", raw))
    info = lstm_run("ms.onnx", "--info", cwd=tmp_path)
    assert "each 1 to 4 steps ahead" in info.stdout, info.stderr


@pytest.mark.slow
def test_batch_normalization_after_the_last_lstm_exports_through_the_cli(trained, tmp_path):
    """The issue's traceback: Sequential([Input((24, 19)), LSTM(32), BN, Dense(1)])."""
    path, model = trained("lstm_bn")
    scale, _ = y_scaler("one")
    (tmp_path / "s.json").write_text(json.dumps({**SCALER, "y": scale}))
    done = lstm_export(path, "--scaler", "s.json", "-o", "bn.onnx", cwd=tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    raw = series(READINGS, seed=1)
    assert_close(stepped(tmp_path / "bn.onnx", raw), keras_answers(model, "one", raw))


def test_horizon_is_written_and_labelled(trained, tmp_path):
    path, _ = trained("lstm_bn")
    done = lstm_export(path, "--horizon", "72", "-o", "h.onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert runtime.load(tmp_path / "h.onnx").info.horizon == 72
    info = lstm_run("h.onnx", "--info", cwd=tmp_path)
    assert "(72 steps ahead)" in info.stdout, info.stderr


# --------------------------------------------------------------------------- more kinds

def test_batch_normalization_in_sequence_mode_is_per_step(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, F)), L.LSTM(8, return_sequences=True),
                              L.BatchNormalization(), L.Dense(1)])
    X, Y = training_data("reconstruction")
    model.compile("adam", "mse")
    model.fit(X, Y[..., :1], epochs=1, verbose=0)
    report = export(model, tmp_path / "m.onnx", steps=50)
    assert report.info.streaming_mode == "sequence" and report.parity["max_abs_diff"] <= 1e-5


def test_normalization_layer_is_folded_into_the_scaling(tmp_path):
    keras.utils.set_random_seed(0)
    norm = L.Normalization()
    norm.adapt(RAW[None])
    model = keras.Sequential([keras.Input((None, F)), norm, L.LSTM(8, return_sequences=True),
                              L.Dense(1)])
    report = export(model, tmp_path / "m.onnx", steps=50)
    assert report.info.streaming_mode == "sequence"
    raw = series(READINGS, seed=1)
    want = model.predict(raw[None], verbose=0)[0]                  # (time, 1), raw in
    stream = runtime.load(report.path).stream()
    assert_close(np.stack([stream.step(x) for x in raw]), want)


def test_normalization_in_a_window_model_converted_whole(tmp_path):
    keras.utils.set_random_seed(0)
    norm = L.Normalization()
    norm.adapt(RAW[None])
    model = keras.Sequential([keras.Input((T, F)), norm, L.Bidirectional(L.LSTM(4)),
                              L.Dense(1)])
    report = export(model, tmp_path / "m.onnx")
    raw = series(READINGS, seed=1)
    assert_close(stepped(report.path, raw), model.predict(sliding(raw, T), verbose=0))


def test_subclassed_feedback_model_wrapped_exports_whole(tmp_path):
    """The TF tutorial's FeedBack model: an LSTMCell run autoregressively for H steps."""
    class FeedBack(keras.Model):
        def __init__(self):
            super().__init__()
            self.cell = L.LSTMCell(8)
            self.rnn = L.RNN(self.cell, return_state=True)
            self.dense = L.Dense(F)

        def call(self, inputs):
            x, *state = self.rnn(inputs)
            prediction = self.dense(x)
            predictions = [prediction]
            for _ in range(1, H):
                x, state = self.cell(prediction, states=state)
                prediction = self.dense(x)
                predictions.append(prediction)
            return keras.ops.stack(predictions, axis=1)              # (batch, H, F)

    keras.utils.set_random_seed(0)
    feedback = FeedBack()
    X, _ = training_data("forecast")
    feedback(X[:2])
    with pytest.raises(ExportError, match="wrap it in a functional model"):
        export(feedback, tmp_path / "f.onnx")
    inputs = keras.Input((T, F))
    wrapped = keras.Model(inputs, feedback(inputs))
    report = export(wrapped, tmp_path / "w.onnx")
    assert report.info.block.kind == "forecast" and report.info.block.steps == H
    raw = series(READINGS, seed=1)
    want = wrapped.predict(sliding(raw, T), verbose=0).reshape(-1, H * F)
    assert_close(stepped(report.path, raw), want)


def test_return_sequences_on_a_fixed_window_streams_its_windows_by_default(tmp_path):
    """Keras's predict runs a model of a fixed time axis on windows of that length only: the
    default file answers each reading with the last timestep of the window ending there, and
    Model.predict gives every timestep, as Keras does."""
    model = keras.Sequential([keras.Input((T, F)), L.LSTM(4, return_sequences=True),
                              L.Dense(1)])
    report = export(model, tmp_path / "m.onnx", steps=30)
    assert report.info.streaming_mode == "window" and report.info.window == T
    raw = series(READINGS, seed=1)
    windows = sliding(raw, T)
    want = model.predict(windows, verbose=0)                       # (samples, T, 1)
    assert_close(stepped(report.path, raw), want[:, -1])
    assert_close(runtime.load(report.path, device="cpu").predict(windows), want)


# --------------------------------------------------------------------------- refusals

def two_inputs():
    window, site = keras.Input((T, F)), keras.Input((2,))
    encoded = L.LSTM(4)(window)
    return keras.Model([window, site], L.Dense(1)(L.Concatenate()([encoded, site])))


def test_static_inputs_are_refused_with_a_workaround_that_exports(tmp_path):
    """[sensor window, site features]: refused; one file per site with them fixed exports."""
    keras.utils.set_random_seed(0)
    model = two_inputs()
    with pytest.raises(ExportError, match="one file per sensor with them fixed") as err:
        export(model, tmp_path / "m.onnx")
    assert "w[:, 0, :1] * 0.0 + static_values" in str(err.value)
    static_values = np.array([0.5, -1.0], np.float32)               # this sensor's site
    w = keras.Input((T, F))
    wrapped = keras.Model(w, model([w, w[:, 0, :1] * 0.0 + static_values]))
    report = export(wrapped, tmp_path / "site.onnx")
    raw = series(READINGS, seed=1)
    windows = sliding(raw, T)
    want = model.predict([windows, np.tile(static_values, (len(windows), 1))], verbose=0)
    assert_close(stepped(report.path, raw), want)


def cnn_lstm():
    return keras.Sequential([keras.Input((2, 6, F)),
                             L.TimeDistributed(L.Conv1D(4, 3, activation="relu")),
                             L.TimeDistributed(L.Flatten()), L.LSTM(4), L.Dense(1)])


REFUSALS = {
    "two_inputs": (two_inputs, "repeat them as extra feature columns of every reading"),
    "cnn_lstm_4d": (cnn_lstm, r"keras.layers.Reshape\(\(2, 6, 3\)\)"),
    "pooling_in_sequence_mode": (lambda: keras.Sequential([
        keras.Input((None, F)), L.LSTM(4, return_sequences=True), L.GlobalMaxPooling1D(),
        L.Dense(1)]), r"give it a fixed window, keras.Input\(\(T, features\)\)"),
    "masking_autoencoder": (lambda: keras.Sequential([
        keras.Input((T, F)), L.Masking(0.0), L.LSTM(4), L.RepeatVector(T),
        L.LSTM(4, return_sequences=True)]), r"drop it and leave missing values empty.*--missing hold"),
    "repeat_vector_carrying_state": (lambda: keras.Sequential([
        keras.Input((T, F)), L.LSTM(4), L.RepeatVector(2), L.LSTM(2)]), "drop --carry-state"),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_refusals_say_what_to_do(kind, tmp_path):
    builder, words = REFUSALS[kind]
    extra = {"carry_state": True} if kind.endswith("carrying_state") else {}
    with pytest.raises(ExportError, match=words) as err:
        export(builder(), tmp_path / "m.onnx", **extra)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


def test_mixed_float16_check_failure_suggests_the_tolerance(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T, F)), L.LSTM(8, dtype="mixed_float16"),
                              L.Dense(1, dtype="mixed_float16")])
    with pytest.raises(ParityError, match=r"float16 rounding.*--atol 1e-3"):
        export(model, tmp_path / "m.onnx", atol=1e-9)
    report = export(model, tmp_path / "m.onnx", atol=1e-3)
    assert report.parity["max_abs_diff"] <= 1e-3


def test_triton_variant_of_a_block_model_answers_as_the_stream(trained, tmp_path):
    """The Triton repository's graph (window kept as state) gives each reading's block."""
    import onnxruntime as ort

    from integrations.triton.repository import write_repository

    path, _ = trained("multi_step")
    report = export_scaled(path, "multi_step", tmp_path / "ms.onnx")
    write_repository(report.path, tmp_path / "models")
    session = ort.InferenceSession(str(tmp_path / "models" / "ms" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    feeds = {i.name: np.zeros([1 if not isinstance(d, int) else d for d in i.shape], np.float32)
             for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    raw, served = series(30, seed=5), []
    for reading in raw:
        feeds["x"] = reading[None, None]
        out = dict(zip(names, session.run(None, feeds)))
        served.append(out["y"][0, 0])
        feeds.update({n: out["out_" + n[3:]] for n in feeds if n.startswith("in_")})
    assert_close(np.stack(served[T - 1:]), stepped(report.path, raw))


def test_horizon_decides_a_window_shaped_block_and_must_match_a_forecast(tmp_path):
    keras.utils.set_random_seed(0)
    same_shape = keras.Sequential([keras.Input((T, F)), L.LSTM(4), L.RepeatVector(T),
                                   L.LSTM(4, return_sequences=True),
                                   L.TimeDistributed(L.Dense(F))])
    assert export(same_shape, tmp_path / "a.onnx").info.block.kind == "reconstruction"
    forecast = export(same_shape, tmp_path / "f.onnx", horizon=T).info
    assert forecast.block.kind == "forecast" and forecast.horizon == T
    with pytest.raises(ExportError, match=f"--horizon must be {T}"):
        export(same_shape, tmp_path / "g.onnx", horizon=2)


def test_a_scaler_that_does_not_fit_is_said_once(tmp_path):
    model = keras.Sequential([keras.Input((T, F)), L.LSTM(4), L.Dense(1)])
    wrong = {"x": {"mean": [0.0, 0.0], "std": [1.0, 1.0]}}
    with pytest.raises(ExportError) as err:
        export(model, tmp_path / "m.onnx", scaler=wrong)
    assert str(err.value).count("the scaler does not fit") == 1
