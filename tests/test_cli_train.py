"""lstm-train through a real subprocess: exit codes, one-line errors, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

LSTM_TRAIN = str(Path(sys.executable).parent / "lstm-train")
TARGET = "Water flow [l/s]"


def run(*args, cwd=None):
    proc = subprocess.run([LSTM_TRAIN, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize("args, says", [
    (["--target", "flow"], "no numeric column 'flow'; the numeric columns are 'Water flow [l/s]'"),
    (["--target", TARGET, "--look-back", "5000"], "--look-back 5000 + --horizon 1 is longer "
                                                   "than the data (1268 rows)"),
    (["--target", TARGET, "--horizon", "0"], "--horizon must be at least 1"),
    (["--target", TARGET, "--features", "Time"], "it is the time column"),
    (["--target", TARGET, "--members", "0"], "'--members': expected a count of at least 1 or "
                                             "'auto', got '0'"),
])
def test_bad_arguments_exit_2_with_one_line(water_csv, tmp_path, args, says):
    proc = run(water_csv, *args, "-o", tmp_path / "m.keras")
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr
    assert not (tmp_path / "m.keras").exists()


def test_missing_file_and_junk_value(tmp_path):
    proc = run(tmp_path / "nope.csv", "--target", "a")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    junk = tmp_path / "junk.csv"
    junk.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(40)) + "7,x7\n")
    proc = run(junk, "--target", "b")
    assert proc.returncode == 2
    assert "line 42, column 'b': expected a number, found 'x7'" in proc.stderr


def test_help_shows_examples_and_shapes():
    proc = run("--help")
    assert proc.returncode == 0
    assert "lstm-train data/water-flow.csv" in proc.stdout
    assert "(samples, timesteps, features)" in proc.stdout


@pytest.mark.slow
def test_trains_and_reports_against_baselines(water_csv, tmp_path):
    proc = run(water_csv, "--target", TARGET, "--look-back", 6, "--units", 4, "--epochs", 1,
               "-o", tmp_path / "m.keras")
    assert proc.returncode == 0, proc.stderr
    for word in ("MAE", "RMSE", "model", "naive", "mean"):
        assert word in proc.stdout
    assert (tmp_path / "m.keras").is_file() and (tmp_path / "m.lstm-edge.json").is_file()
