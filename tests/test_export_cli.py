"""``lstm-export`` through a real subprocess: exit codes, one-line errors, never a traceback."""

import json
import subprocess
import sys

import onnx
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

SCALER = {"x": {"mean": [20.0, 50.0], "std": [2.0, 10.0]}, "y": {"mean": [700.0], "std": [80.0]}}


def lstm_export(*args, cwd=None):
    """Run the command as a user would; stderr shown on failure."""
    code = "from trainer.cli import export_main; export_main(prog_name='lstm-export')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_error(result, code, words):
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and words in errors[0], result.stderr


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A window model saved by the trainer's conventions: NAME.keras + NAME.lstm-edge.json."""
    folder = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 2)), L.LSTM(8, return_sequences=True),
                              L.LSTM(8), L.Dense(1)])
    model.save(folder / "co2.keras")
    (folder / "co2.lstm-edge.json").write_text(json.dumps(
        {"format": "lstm-edge.training/1", "features": ["temp", "rh"], "targets": ["co2"],
         "scaler": SCALER, "mode": "window", "look_back": 12, "horizon": 1, "metrics": {}}))
    bi = keras.Sequential([keras.Input((None, 2)), L.Bidirectional(L.LSTM(4), name="both_ways"),
                            L.Dense(1)])
    bi.save(folder / "bi.keras")
    # A forecast block of 6 steps from a window of 1 reading, as docs/keras-models.md says.
    block = keras.Sequential([keras.Input((1, 1)), L.LSTM(2), L.Dense(6), L.Reshape((6, 1))])
    block.save(folder / "block.keras")
    return folder


def test_export_writes_the_default_path_and_prints_a_summary(saved):
    result = lstm_export("co2.keras", "--steps", "1000", cwd=saved)
    assert result.returncode == 0, result.stderr
    path = saved / "exported" / "co2.onnx"
    proto = onnx.load(path)
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["lstm_edge.features"]) == ["temp", "rh"]
    parity = json.loads(props["lstm_edge.parity"])   # a window model: checked on windows
    assert (parity["mode"], parity["steps"], parity["windows"]) == ("window", 12, 64)
    for words in ("wrote exported/co2.onnx", "in_h0", "out_c1", "window (window=12, "
                  "carry_state=false)", "parity:", "LSTM 2", "KiB"):
        assert words in result.stdout, result.stdout


def test_overrides_and_output(saved):
    result = lstm_export("co2.keras", "-o", "deep/dir/m.onnx", "--window", "1",
                         "--carry-state", "--no-check", "--targets", "CO2", cwd=saved)
    assert result.returncode == 0, result.stderr
    props = {p.key: p.value for p in onnx.load(saved / "deep/dir/m.onnx").metadata_props}
    assert props["lstm_edge.window"] == "1" and props["lstm_edge.carry_state"] == "true"
    assert json.loads(props["lstm_edge.targets"]) == ["CO2"]
    assert "lstm_edge.parity" not in props


def test_refused_layer_is_one_line_exit_2(saved):
    assert_error(lstm_export("bi.keras", cwd=saved), 2, "'both_ways' (Bidirectional)")
    assert not (saved / "exported" / "bi.onnx").exists()


def test_parity_failure_exits_1_and_writes_nothing(saved):
    result = lstm_export("co2.keras", "-o", "fail.onnx", "--atol", "0", "--steps", "20",
                         cwd=saved)
    assert_error(result, 1, "does not reproduce Keras")
    assert not (saved / "fail.onnx").exists()


@pytest.mark.parametrize("name, content, words", [
    ("missing.keras", None, "does not exist"),
    ("notes.txt", "hello", "not a Keras file"),
    ("junk.keras", "hello", "corrupt or truncated"),
    ("cut.keras", "truncate", "corrupt or truncated"),
])
def test_bad_files_exit_2(tmp_path, saved, name, content, words):
    path = tmp_path / name
    if content == "truncate":
        path.write_bytes((saved / "co2.keras").read_bytes()[:1000])
    elif content is not None:
        path.write_text(content)
    assert_error(lstm_export(path), 2, words)


def test_opset_out_of_range_exit_2(saved):
    assert_error(lstm_export("co2.keras", "--opset", "21", cwd=saved), 2, "opset 21")


def test_help_has_examples():
    result = lstm_export("--help")
    assert result.returncode == 0 and "Examples:" in result.stdout and "--carry-state" in \
        result.stdout


@pytest.mark.parametrize("rows, found", [(1, "1 row holds 0 forecasts"),
                                         (15, "15 rows hold 9 forecasts")])
def test_a_short_calibration_csv_says_how_many_rows_a_block_needs(saved, rows, found):
    """Each forecast reads 1 reading and is scored on the 6 after it: 10 forecasts need
    1 - 1 + 6 + 9 = 16 rows (the message said '-5 forecasts' and 'the window is 1 readings')."""
    csv = saved / f"calibration-{rows}.csv"
    csv.write_text("flow\n" + "".join(f"{10 + i % 4}\n" for i in range(rows)))
    result = lstm_export("block.keras", "-o", f"block-{rows}.onnx", "--features", "flow",
                         "--targets", "flow", "--no-check", "--calibrate", csv, cwd=saved)
    assert_error(result, 2, f"{found} with all 6 steps ahead among the rows; expected at least "
                            f"10 to calibrate on (each forecast reads a window of 1 reading and "
                            f"is scored on the 6 readings after it); give at least 16 rows")
    assert not (saved / f"block-{rows}.onnx").exists()


def test_a_calibration_csv_of_the_rows_asked_for_calibrates(saved):
    csv = saved / "calibration-16.csv"
    csv.write_text("flow\n" + "".join(f"{10 + i % 4}\n" for i in range(16)))
    result = lstm_export("block.keras", "-o", "block-16.onnx", "--features", "flow",
                         "--targets", "flow", "--no-check", "--calibrate", csv, cwd=saved)
    assert result.returncode == 0, result.stderr
    props = {p.key: p.value for p in onnx.load(saved / "block-16.onnx").metadata_props}
    assert json.loads(props["lstm_edge.intervals"])["n"] == 15   # forecasts of step 1


def test_a_calibration_csv_newest_first_is_refused(saved):
    """Its rows would be a reversed series: every forecast scored against its past."""
    csv = saved / "calibration-reversed.csv"
    csv.write_text("time,flow\n" + "".join(f"2022-03-{28 - i // 24:02d}T{23 - i % 24:02d}:00:00Z,"
                                           f"{10 + i % 4}\n" for i in range(40)))
    result = lstm_export("block.keras", "-o", "block-rev.onnx", "--features", "flow",
                         "--targets", "flow", "--no-check", "--calibrate", csv, cwd=saved)
    assert result.returncode != 0 and "newest first" in result.stderr, result.stderr
    assert "each forecast is scored against the rows after it" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (saved / "block-rev.onnx").exists()
