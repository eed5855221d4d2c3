"""``lstm-export`` with tutorial-style models it cannot answer for as they are: a note where
the file streams something other than the user may expect, a one-line refusal with the next
step where it would otherwise differ from Keras, and no file left behind by a failed command.

Each next step offered is followed here and checked against Keras's ``model.predict``.
"""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from runtime import load  # noqa: E402
from trainer.errors import ExportError  # noqa: E402
from trainer.export import export  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOL = 1e-5
PASSENGERS = {"mean": [104.0], "std": [518.0]}       # MinMaxScaler on the airline series


def lstm_export(*args, cwd=None):
    """Run the command as a user would; stderr shown on failure."""
    code = "from trainer.cli import export_main; export_main(prog_name='lstm-export')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def error_line(result, code: int = 2) -> str:
    """The one ``Error:`` line of a refused command (exit ``code``, no traceback)."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def passengers() -> np.ndarray:
    with open(ROOT / "data" / "airline-passengers.csv", newline="") as fh:
        return np.array([float(row["passengers"]) for row in csv.DictReader(fh)], "float32")


def write_passengers(path: Path, rows: slice, name: str = "passengers") -> Path:
    path.write_text(f"{name}\n" + "".join(f"{v:g}\n" for v in passengers()[rows]))
    return path


def scaled_windows(raw: np.ndarray, window: int) -> np.ndarray:
    """(samples, window, 1) windows of ``raw`` scaled as PASSENGERS says, one per reading."""
    norm = (raw - PASSENGERS["mean"][0]) / PASSENGERS["std"][0]
    return np.stack([norm[i:i + window] for i in range(len(norm) - window + 1)])[..., None]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tutorial models the refusals are about, untrained (seeded): the numbers only have
    to be Keras's, not good forecasts."""
    folder = tmp_path_factory.mktemp("refusals")
    keras.utils.set_random_seed(0)
    models = {
        "window": keras.Sequential([keras.Input((3, 1)), L.LSTM(4), L.Dense(1)]),
        "lags": keras.Sequential([keras.Input((1, 3)), L.LSTM(4), L.Dense(1)]),
        "four": keras.Sequential([keras.Input((12, 4)), L.LSTM(4), L.Dense(1)]),
        "vector": keras.Sequential([keras.Input((6, 1)), L.LSTM(4), L.Dense(6)]),
        "bidirectional": keras.Sequential([keras.Input((6, 1)), L.Bidirectional(L.LSTM(4)),
                                           L.Dense(6)]),
        "lambda": keras.Sequential([keras.Input((6, 1)), L.LSTM(4, return_sequences=True),
                                    L.Lambda(lambda x: x[:, -1, :]), L.Dense(1)]),
    }
    for name, model in models.items():
        model.save(folder / f"{name}.keras")
    (folder / "scaler.json").write_text(
        '{"x": {"mean": [104], "std": [518]}, "y": {"mean": [104], "std": [518]}}')
    return folder


# --------------------------------------------------------------------------- D1

def test_a_model_on_a_none_time_axis_answering_once_per_sequence_gets_a_note(tmp_path):
    """keras.Input((None, 1)) + LSTM(16) + Dense(1), trained on windows of 24: the file
    streams the whole history (as the note says) and --window N gives Keras per window."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((None, 1)), L.LSTM(4), L.Dense(1)])
    series = np.random.default_rng(0).normal(size=(12, 1)).astype("float32")   # (readings, 1)

    report = export(model, tmp_path / "seq.onnx", steps=100)
    assert report.info.streaming_mode == "sequence"
    note = " ".join(report.notes)
    for words in ("answers once per sequence", "one long sequence since the last reset",
                  "equals Keras on the whole history, not on a window",
                  "--window N --no-carry-state"):
        assert words in note, report.notes
    got = load(report.path).stream().feed(series)                             # (12, 1)
    history = np.concatenate([model.predict(series[None, :k + 1], verbose=0)
                              for k in range(len(series))])                   # (12, 1)
    np.testing.assert_allclose(got, history, atol=TOL)                        # what it says

    windowed = export(model, tmp_path / "win.onnx", window=8, carry_state=False)
    assert not windowed.notes
    got = load(windowed.path).stream().feed(series)[7:]
    windows = np.stack([series[i:i + 8] for i in range(len(series) - 7)])     # (5, 8, 1)
    np.testing.assert_allclose(got, model.predict(windows, verbose=0), atol=TOL)


def test_a_none_time_axis_model_returning_sequences_gets_no_window_note(tmp_path):
    """A sequence model proper (a prediction at every reading) streams as trained."""
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((None, 1)), L.LSTM(4, return_sequences=True),
                              L.Dense(1)])
    report = export(model, tmp_path / "m.onnx", steps=100)
    assert report.info.streaming_mode == "sequence" and not report.notes


# --------------------------------------------------------------------------- D2

def test_one_scaler_entry_for_four_features_is_refused(saved, tmp_path):
    (tmp_path / "one.json").write_text(
        '{"x": {"mean": [417], "std": [1595.5]}, "y": {"mean": [417], "std": [1595.5]}}')
    result = lstm_export(saved / "four.keras", "--scaler", tmp_path / "one.json",
                         "-o", tmp_path / "m.onnx")
    line = error_line(result)
    assert "expected 4 means and stds, one per feature in order, found 1" in line
    assert "repeating the value where features share a scaling" in line
    assert not (tmp_path / "m.onnx").exists()


def test_one_y_scaler_entry_for_two_different_targets_is_refused(tmp_path):
    """y repeats one entry across the steps of one target's forecast, never across targets."""
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(4),
                              keras.layers.Dense(2)])
    scaler = {"x": {"mean": [1.0, 2.0], "std": [1.0, 1.0]}, "y": {"mean": [1.0], "std": [2.0]}}
    with pytest.raises(ExportError, match="y has 1 mean and std for 2 different targets"):
        export(model, tmp_path / "m.onnx", scaler=scaler, features="t,rh", targets="t,rh")
    assert not (tmp_path / "m.onnx").exists()


def test_a_lag_model_with_its_scaler_listed_per_lag_streams_as_keras_predicts(saved, tmp_path):
    """reshape(n, 1, 3): three lags of one series, the scaler given once per lag."""
    model = keras.models.load_model(saved / "lags.keras")
    lags = {"mean": PASSENGERS["mean"] * 3, "std": PASSENGERS["std"] * 3}
    report = export(model, tmp_path / "m.onnx", scaler={"x": lags, "y": PASSENGERS},
                    features="lag3,lag2,lag1", targets="passengers")
    raw = passengers()[:40]
    windows = scaled_windows(raw, 3)                                          # (38, 3, 1)
    want = model.predict(windows.transpose(0, 2, 1), verbose=0) * 518.0 + 104.0
    rows = np.stack([raw[i:i + 3] for i in range(len(raw) - 2)])              # (38, 3) readings
    np.testing.assert_allclose(load(report.path).stream().feed(rows), want,
                               atol=TOL * 518.0)


# --------------------------------------------------------------------------- D4

def test_a_failed_calibration_leaves_no_file_and_says_no_wrote(saved, tmp_path):
    tiny = write_passengers(tmp_path / "tiny.csv", slice(60, 67))
    target = tmp_path / "new" / "dir" / "out.onnx"
    result = lstm_export(saved / "window.keras", "--scaler", saved / "scaler.json",
                         "--features", "passengers", "--targets", "passengers",
                         "--calibrate", tiny, "-o", target)
    assert "expected at least 10" in error_line(result)
    assert "wrote" not in result.stdout, result.stdout
    assert not (tmp_path / "new").exists()                       # nor the folders made for it

    before = tmp_path / "out.onnx"
    before.write_bytes(b"the file that was there")
    result = lstm_export(saved / "window.keras", "--scaler", saved / "scaler.json",
                         "--features", "passengers", "--targets", "passengers",
                         "--calibrate", tiny, "-o", before)
    assert "expected at least 10" in error_line(result) and "wrote" not in result.stdout
    assert before.read_bytes() == b"the file that was there"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx", "tiny.csv"]


def test_a_calibration_that_works_is_written_with_the_file(saved, tmp_path):
    cal = write_passengers(tmp_path / "cal.csv", slice(60, 96))
    result = lstm_export(saved / "window.keras", "--scaler", saved / "scaler.json",
                         "--features", "passengers", "--targets", "passengers",
                         "--calibrate", cal, "-o", tmp_path / "out.onnx")
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'out.onnx'}" in result.stdout
    assert "intervals: split-conformal" in result.stdout and "cal.csv" in result.stdout
    props = {p.key for p in onnx.load(str(tmp_path / "out.onnx")).metadata_props}
    assert "lstm_edge.intervals" in props
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.csv", "out.onnx"]


# --------------------------------------------------------------------------- D6

def test_a_lambda_layer_is_refused_with_the_way_that_works(saved, tmp_path):
    line = error_line(lstm_export(saved / "lambda.keras", "-o", tmp_path / "m.onnx"))
    assert "Lambda layer" in line and "safe_mode=False" in line
    assert "trainer.export.export(model" in line and "save the model again" not in line
    # What it says, done: Keras's own answers per window.
    model = keras.models.load_model(saved / "lambda.keras", safe_mode=False)
    report = export(model, tmp_path / "m.onnx")
    series = np.random.default_rng(2).normal(size=(15, 1)).astype("float32")
    windows = np.stack([series[i:i + 6] for i in range(len(series) - 5)])     # (10, 6, 1)
    np.testing.assert_allclose(load(report.path).stream().feed(series)[5:],
                               model.predict(windows, verbose=0), atol=TOL)


def test_one_name_for_a_lag_model_says_how_to_name_its_features(saved, tmp_path):
    line = error_line(lstm_export(saved / "lags.keras", "--features", "passengers",
                                  "-o", tmp_path / "m.onnx"))
    assert "1 features named (passengers) but the model has 3" in line
    assert "name one per input feature" in line and "--features a,b,c" in line
    assert "3 features of one timestep" in line
    anchor = line.split("docs/keras-models.md#")[1].split()[0].rstrip(").,;")
    headings = [h.lstrip("#").strip().lower().replace(" ", "-")
                for h in (ROOT / "docs" / "keras-models.md").read_text().splitlines()
                if h.startswith("#")]
    assert anchor in headings


@pytest.mark.parametrize("name", ["vector", "bidirectional"])
def test_one_target_for_six_outputs_says_how_to_make_a_block(saved, tmp_path, name):
    line = error_line(lstm_export(saved / f"{name}.keras", "--targets", "flow",
                                  "-o", tmp_path / "m.onnx"))
    assert line.startswith("Error: 1 targets named (flow) but the model has 6; name one per "
                           "output"), line                          # the real cause leads
    assert "Bidirectional" not in line
    assert "keras.Sequential([model, keras.layers.Reshape((6, 1))])" in line
    assert "--targets flow --horizon 6" in line
    # What it says, done: a block forecasting 6 steps of flow, Keras's numbers. (Its window
    # is 6 readings of 1 feature too, which without --horizon reads as an autoencoder's.)
    model = keras.models.load_model(saved / f"{name}.keras")
    keras.Sequential([model, keras.layers.Reshape((6, 1))]).save(tmp_path / "b.keras")
    report = export(tmp_path / "b.keras", tmp_path / "b.onnx", targets="flow", horizon=6)
    assert (report.info.block.kind, report.info.block.steps) == ("forecast", 6)
    series = np.random.default_rng(3).normal(size=(12, 1)).astype("float32")
    windows = np.stack([series[i:i + 6] for i in range(len(series) - 5)])     # (7, 6, 1)
    np.testing.assert_allclose(load(report.path).stream().feed(series)[5:],
                               model.predict(windows, verbose=0), atol=TOL)


def test_a_calibration_csv_without_the_target_says_what_it_needs(saved, tmp_path):
    cal = write_passengers(tmp_path / "cal.csv", slice(60, 96), name="Passengers count")
    line = error_line(lstm_export(saved / "window.keras", "--scaler", saved / "scaler.json",
                                  "--features", "passengers", "--targets", "passengers",
                                  "--calibrate", cal, "-o", tmp_path / "m.onnx"))
    assert "no numeric column 'passengers'; the numeric columns are 'Passengers count'" in line
    assert "needs a column named as each of the model's features and targets" in line
    assert "--features/--targets" in line
    assert not (tmp_path / "m.onnx").exists()


def test_an_argument_misfit_is_said_alone_whichever_way_the_model_converts(saved):
    """Names that do not fit fail the same way streamed or converted whole: said once."""
    model = keras.models.load_model(saved / "bidirectional.keras")
    with pytest.raises(ExportError) as err:
        export(model, "unused.onnx", targets="a,b")
    assert str(err.value).startswith("2 targets named (a, b) but the model has 6")
    assert "Reshape((3, 2))" in str(err.value) and "converting it whole" not in str(err.value)


@pytest.mark.parametrize("text, found", [
    ('{"mean": [104], "std": [518]}', "found the keys 'mean', 'std'"),
    ('{"X": {"mean": [104], "std": [518]}, "Y": {"mean": [104], "std": [518]}}',
     "found the keys 'X', 'Y'"),
])
def test_a_scaler_file_of_another_shape_is_refused_not_ignored(saved, tmp_path, text, found):
    """It was exported as "no scaler": raw readings into a model trained on scaled ones."""
    (tmp_path / "s.json").write_text(text)
    result = lstm_export(saved / "window.keras", "--scaler", tmp_path / "s.json",
                         "-o", tmp_path / "m.onnx")
    line = error_line(result)
    assert found in line and 'under "x" and "y"' in line
    assert not (tmp_path / "m.onnx").exists()


def test_an_x_only_scaler_says_the_answers_are_in_scaled_units(saved, tmp_path):
    (tmp_path / "x.json").write_text('{"x": {"mean": [104], "std": [518]}}')
    result = lstm_export(saved / "window.keras", "--scaler", tmp_path / "x.json",
                         "-o", tmp_path / "m.onnx")
    assert result.returncode == 0, result.stderr
    assert "x scaling only: raw values in, the model's scaled units out" in result.stdout


def test_a_horizon_other_than_the_sidecars_is_refused(saved, tmp_path):
    """Alerts would check readings against the forecast made the wrong number of readings
    before, with intervals calibrated for another horizon."""
    model = tmp_path / "h.keras"
    model.write_bytes((saved / "window.keras").read_bytes())
    (tmp_path / "h.lstm-edge.json").write_text('{"format": 1, "horizon": 6}')
    line = error_line(lstm_export(model, "--horizon", "1", "-o", tmp_path / "m.onnx"))
    assert "says the model forecasts 6 readings ahead" in line and "drop --horizon" in line
    assert not (tmp_path / "m.onnx").exists()
