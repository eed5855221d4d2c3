"""Masking where nothing was fed: Keras's answer, in every path (issue F2, F10, F17).

With every step masked a Keras recurrent layer outputs zeros (its previous output starts at
zeros, whatever state it carries), so Keras answers the head of zeros: a window of masked
readings only, a sequence's masked readings before its first fed one, a stateful model's
all-masked window. The exporter writes that answer (``lstm_edge.mask_answer``); these tests
hold every path to Keras there, and lstm-run's step column to the readings fed.
"""

import json

import numpy as np
import onnx
import pytest

import runtime
from helpers import Live, csv_rows, preds, run

keras = pytest.importorskip("keras")
export = pytest.importorskip("trainer.export")

L = keras.layers
F, W = 2, 4
SCALER = {"x": {"mean": [10.0, -2.0], "std": [4.0, 0.5]}, "y": {"mean": [100.0], "std": [20.0]}}
RAW_MASK = np.float32(SCALER["x"]["mean"])           # the mask 0 in raw units: (F,)


def _raw(norm):
    return (norm * np.float32(SCALER["x"]["std"]) + RAW_MASK).astype(np.float32)


def _keras_raw(y):
    return np.asarray(y) * 20.0 + 100.0


def _model(*layers, shape=(W, F)):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input(**shape) if isinstance(shape, dict)
                              else keras.Input(shape), L.Masking(0.0), *layers])
    head = model.layers[-1]
    head.bias.assign(np.full(head.bias.shape, 0.7, np.float32))   # a visible answer
    return model


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """A stacked window model (GRU -> LSTM -> Dense): the head of zeros, through the scaler."""
    model = _model(L.GRU(5, return_sequences=True), L.LSTM(3), L.Dense(1))
    path = tmp_path_factory.mktemp("w") / "m.onnx"
    report = export.export(model, path, scaler=SCALER, features="a,b", targets="t", steps=50)
    empty = np.zeros((1, W, F), np.float32)
    return model, runtime.load(path, device="cpu"), path, report, \
        _keras_raw(model.predict(empty, verbose=0))[0]


def test_keras_answers_the_head_of_zeros_for_a_window_of_masked_readings(window):
    model, rt, _, report, want = window
    np.testing.assert_allclose(want, 0.7 * 20 + 100, rtol=1e-6)       # the Dense bias
    np.testing.assert_allclose(rt.mask_answer, want, rtol=1e-6)
    assert report.parity["per_output"]["mask_answer"] <= 1e-5        # checked at export


def test_every_window_path_answers_keras_for_a_window_of_masked_readings(window):
    model, rt, _, _, want = window
    rng = np.random.default_rng(0)
    norm = rng.normal(size=(12, F)).astype(np.float32)
    norm[3:9] = 0.0                                    # windows 6, 7, 8 are masked only
    raw = _raw(norm)
    wins = np.stack([norm[t - W + 1:t + 1] for t in range(W - 1, 12)])
    keras_y = _keras_raw(model.predict(wins, verbose=0))[:, 0]       # (9,)
    s = rt.stream()
    stepped = np.array([np.nan if (y := s.step(x)) is None else y[0] for x in raw])[W - 1:]
    fed = rt.stream().feed(raw)[W - 1:, 0]
    pair = [rt.stream(), rt.stream()]
    many = np.stack([rt.step(pair, np.stack([x, x]))[0, 0] for x in raw])[W - 1:]
    predicted = rt.predict(np.stack([raw[t - W + 1:t + 1] for t in range(W - 1, 12)]))[:, 0]
    for got in (stepped, fed, many, predicted):
        np.testing.assert_allclose(got, keras_y, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(keras_y[3:6], want[0], rtol=1e-6)


def test_sequence_masked_readings_before_the_first_fed_answer_keras(tmp_path):
    model = _model(L.LSTM(4, return_sequences=True), L.LSTM(3, return_sequences=True),
                   L.Dense(1), shape=(None, F))
    rt = runtime.load(export.export(model, tmp_path / "m.onnx", scaler=SCALER, steps=50).path)
    norm = np.random.default_rng(1).normal(size=(1, 8, F)).astype(np.float32)
    norm[0, [0, 1, 2, 5]] = 0.0
    want = _keras_raw(model.predict(norm, verbose=0))[0, :, 0]          # (8,)
    raw = _raw(norm[0])
    s = rt.stream()
    got = np.array([s.step(x)[0] for x in raw])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(rt.stream().feed(raw)[:, 0], want, rtol=1e-5, atol=1e-4)
    pair = [rt.stream(), rt.stream()]
    many = np.stack([rt.step(pair, np.stack([x, x]))[0, 0] for x in raw])
    np.testing.assert_allclose(many, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(rt.predict(raw[None])[0, :, 0], want, rtol=1e-5, atol=1e-4)
    assert s.steps == 4                                    # masked readings are not fed


def test_stateful_all_masked_window_answers_keras_and_keeps_the_state(tmp_path):
    model = _model(L.LSTM(4, stateful=True), L.Dense(1), shape={"batch_shape": (1, W, F)})
    rt = runtime.load(export.export(model, tmp_path / "m.onnx", scaler=SCALER, steps=50).path)
    assert rt.mode == "stateful"
    norm = np.random.default_rng(2).normal(size=(14, F)).astype(np.float32)
    norm[5:10] = 0.0                                       # windows ending 8, 9: masked only
    wins = np.stack([norm[t - W + 1:t + 1] for t in range(W - 1, 14)])
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
    want = _keras_raw(model.predict(wins, batch_size=1, verbose=0))[:, 0]
    raw = _raw(norm)
    s = rt.stream()
    got = np.array([np.nan if (y := s.step(x)) is None else y[0] for x in raw])[W - 1:]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(rt.stream().feed(raw)[W - 1:, 0], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(rt.predict(_raw(wins))[:, 0], want, rtol=1e-5, atol=1e-4)


def test_stateful_one_reading_per_sample_answers_keras_for_a_masked_one(tmp_path):
    """batch_shape=(1, 1, F): each reading its own sample, a masked one the head of zeros."""
    model = _model(L.LSTM(4, stateful=True), L.Dense(1), shape={"batch_shape": (1, 1, F)})
    rt = runtime.load(export.export(model, tmp_path / "m.onnx", scaler=SCALER, steps=50).path)
    norm = np.random.default_rng(3).normal(size=(6, F)).astype(np.float32)
    norm[[0, 3]] = 0.0
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
    want = _keras_raw(model.predict(norm[:, None], batch_size=1, verbose=0))[:, 0]
    raw = _raw(norm)
    s = rt.stream()
    np.testing.assert_allclose([s.step(x)[0] for x in raw], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(rt.stream().feed(raw)[:, 0], want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(rt.predict(raw[:, None])[:, 0], want, rtol=1e-5, atol=1e-4)


def _lines(values) -> bytes:
    return ("a,b\n" + "".join(f"{v[0]},{v[1]}\n" for v in values)).encode()


def test_lstm_run_answers_keras_and_an_old_file_says_so_once(window, tmp_path):
    _, rt, path, _, want = window
    readings = [RAW_MASK] * 6 + [RAW_MASK + 1]
    out, err = run([path], _lines(readings))
    got = preds(csv_rows(out), "pred_t")
    np.testing.assert_allclose(got[W - 1:W + 2], want[0], rtol=1e-6)
    assert err == ""
    proto = onnx.load(path)
    kept = [p for p in proto.metadata_props if p.key != "lstm_edge.mask_answer"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    onnx.save(proto, old)
    out, err = run([old], _lines(readings))
    assert np.isnan(preds(csv_rows(out), "pred_t")[W - 1:W + 2]).all()   # as before
    assert err.count("predates lstm_edge.mask_answer") == 1, err
    assert "re-export" in err


@pytest.fixture(scope="module")
def sequence_file(tmp_path_factory):
    model = _model(L.LSTM(4, return_sequences=True), L.Dense(1), shape=(None, F))
    path = tmp_path_factory.mktemp("s") / "m.onnx"
    export.export(model, path, scaler=SCALER, features="a,b", targets="t", steps=50)
    return path


@pytest.mark.parametrize("answer", [True, False], ids=["mask answer", "old file"])
def test_step_columns_do_not_depend_on_how_lines_are_batched(sequence_file, tmp_path, answer):
    path = sequence_file
    if not answer:                                   # an old file: warm-up columns too
        proto = onnx.load(path)
        kept = [p for p in proto.metadata_props if p.key != "lstm_edge.mask_answer"]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        path = tmp_path / "old.onnx"
        onnx.save(proto, path)
    readings = [RAW_MASK, RAW_MASK + 3, RAW_MASK, RAW_MASK, RAW_MASK + 5, RAW_MASK]
    data = _lines(readings)
    whole, _ = run([path, "--stream"], data)                 # one write: one batch
    live = Live([path, "--stream"])
    head, *rest = data.decode().splitlines(keepends=True)
    live.send(head.encode())
    answers = [live.read_line()]                             # the header line
    for line in rest:                                        # one line, one answer
        live.send(line.encode())
        answers.append(live.read_line())
    one, _ = live.finish()
    answers += one.splitlines()
    assert whole.splitlines() == answers
    rows = csv_rows(whole)
    assert [r["step"] for r in rows] == ["0", "1", "1", "1", "2", "2"]
    assert [r["warmup"] for r in rows] == (["false"] * 6 if answer
                                           else ["true"] + ["false"] * 5)


def test_a_window_known_for_certain_is_not_second_guessed(tmp_path):
    """A file from lstm-train's sidecar (its scaler says how it was fitted): its window is
    the training look-back, and --window 3 would give numbers no Keras run gives."""
    model = _model(L.LSTM(3), L.Dense(1), shape=(W + 2, F))
    scaler = {**SCALER, "kind": "robust"}
    path = export.export(model, tmp_path / "m.onnx", scaler=scaler, features="a,b",
                         targets="t", steps=50).path
    _, err = run([path], _lines([RAW_MASK + 1] * 3))
    assert f"give at least {W + 2} readings per sensor" in err, err
    assert "--window" not in err
    bare = export.export(model, tmp_path / "u.onnx", scaler=SCALER, features="a,b",
                         targets="t", steps=50).path
    _, err = run([bare], _lines([RAW_MASK + 1] * 3))
    assert "--window 3" in err, err                   # a user's declared axis may be wrong


def test_info_says_what_is_masked_and_what_it_answers(window):
    """``--info`` names the mask value (raw units) and Keras's answer for nothing fed."""
    _, rt, path, _, want = window
    out, _ = run([path, "--info"])
    mask = next(line for line in out.splitlines() if line.startswith("mask "))
    assert f"a reading of a = {RAW_MASK[0]:g}, b = {RAW_MASK[1]:g}" in mask, out
    assert f"a window of masked readings only is answered with Keras's answer for nothing fed " \
           f"(t {want[0]:.6g})" in mask, out
