"""``lstm-export`` on user trial A's models: several outputs of one size refused before any
conversion, a constant feature's std of 0 named with its fix, the summary's word on a file
without a scaler, and a declared window of a model that returns sequences streamed as
Keras's ``predict`` runs it.

Each refusal is checked through the command (exit code, one ``Error:`` line, no traceback);
the numbers against Keras's ``model.predict``, on tiny untrained (seeded) models.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from runtime import load  # noqa: E402
from trainer.export import export  # noqa: E402

TOL = 1e-5


def lstm_export(*args):
    code = "from trainer.cli import export_main; export_main(prog_name='lstm-export')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)


def error_line(result, code: int = 2) -> str:
    """The one ``Error:`` line of a refused command (exit ``code``, no traceback)."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def two_heads():
    """keras.Model(inp, [Dense(1, name="co2")(h), Dense(1, name="temp")(h)])."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 2))
    h = L.LSTM(4)(inp)
    return keras.Model(inp, [L.Dense(1, name="co2")(h), L.Dense(1, name="temp")(h)])


def test_a_list_of_two_outputs_of_one_size_is_refused_before_conversion(tmp_path):
    """Converted whole, it wrote y with both heads stacked on the batch axis (with --atol 1,
    or --no-check); now refused, with --atol or not, and nothing is written."""
    two_heads().save(tmp_path / "two.keras")
    out = tmp_path / "two.onnx"
    line = error_line(lstm_export(tmp_path / "two.keras", "-o", out, "--atol", "1"))
    for words in ("has 2 outputs (co2 (n, 1), temp (n, 1)); the contract has one y",
                  "keras.layers.Concatenate()(m.outputs)", "--targets co2,temp",
                  "keras.Model(m.input, m.outputs[0]) (co2 alone)"):
        assert words in line, line
    assert not out.exists()


def test_the_joined_heads_the_refusal_offers_keep_both_heads_numbers(tmp_path):
    model = two_heads()
    joined = keras.Model(model.input, L.Concatenate()(model.outputs))
    report = export(joined, tmp_path / "joined.onnx", targets="co2,temp")
    x = np.random.default_rng(0).normal(size=(6, 5, 2)).astype("float32")
    want = np.concatenate(model.predict(x, verbose=0), axis=1)                # (6, 2)
    np.testing.assert_allclose(load(report.path, device="cpu").predict(x), want, atol=TOL)


def test_a_constant_feature_is_named_with_its_std_fix(tmp_path):
    """The docs' MinMaxScaler recipe gives std = data_max_ - data_min_ = 0 for a column that
    never changed: the refusal names it and says what scikit-learn does (a range of 1)."""
    keras.utils.set_random_seed(0)
    keras.Sequential([keras.Input((3, 3)), L.LSTM(2), L.Dense(1)]).save(tmp_path / "m.keras")
    (tmp_path / "s.json").write_text('{"x": {"mean": [1, 0, 5], "std": [2, 0, 3]}, '
                                     '"y": {"mean": [5], "std": [3]}}')
    line = error_line(lstm_export(tmp_path / "m.keras", "--scaler", tmp_path / "s.json",
                                  "--features", "temp,door,co2", "--targets", "co2",
                                  "-o", tmp_path / "m.onnx"))
    for words in ("std is 0 for feature 'door' (#1)", "data_max_ - data_min_ = 0",
                  "write 1 as its std"):
        assert words in line, line


def test_the_summary_says_what_no_scaler_means(tmp_path):
    """Without --scaler the answers come in the units the model was trained in: scaled ones
    for a model trained on scaled data, which the summary now says, pointing to --scaler."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3, 1)), L.LSTM(2), L.Dense(1)])
    summary = export(model, tmp_path / "m.onnx", check=False).summary()
    line = next(s for s in summary.splitlines() if s.startswith("scaler:"))
    for words in ("none: the file reads and answers the units the model was trained in",
                  "MinMaxScaler, StandardScaler", "--scaler",
                  "docs/keras-models.md#bring-your-own-keras-model"):
        assert words in line, line


def test_a_declared_window_returning_sequences_streams_keras_per_window(tmp_path):
    """Input((6, 1)), LSTM(return_sequences=True), TimeDistributed(Dense): Keras's predict
    runs windows of 6 only. The stream answers each reading with the last timestep of
    model.predict on the 6 readings ending there; it carried its state without bound."""
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((6, 1)), L.LSTM(4, return_sequences=True),
                              L.TimeDistributed(L.Dense(1))])
    rng = np.random.default_rng(0)
    model.compile(loss="mse", optimizer="adam")
    model.fit(rng.normal(size=(32, 6, 1)), rng.normal(size=(32, 6, 1)), epochs=1, verbose=0)
    report = export(model, tmp_path / "wide.onnx")
    assert (report.info.window, report.info.carry_state) == (6, False)
    assert any("last timestep of model.predict" in note for note in report.notes)

    series = rng.normal(size=(30, 1)).astype("float32")                      # (readings, 1)
    windows = np.stack([series[i:i + 6] for i in range(len(series) - 5)])    # (25, 6, 1)
    keras_last = model.predict(windows, verbose=0)[:, -1]                    # (25, 1)
    m = load(report.path, device="cpu")
    streamed = m.stream().feed(series)[5:]                                   # (25, 1)
    np.testing.assert_allclose(streamed, keras_last, atol=TOL)
    # Model.predict gives what Keras's does: every timestep of each window (answers: every)
    assert report.info.extra.get("answers") == "every"
    np.testing.assert_allclose(m.predict(windows), model.predict(windows, verbose=0), atol=TOL)
