"""lstm-train on data it cannot honestly train on, through a real subprocess: one ``Error:``
line naming what was expected, what was found and what to do, exit 2 — or a note where it
can train and the data still deserve a word."""

import subprocess
import sys
from pathlib import Path

import pytest

LSTM_TRAIN = str(Path(sys.executable).parent / "lstm-train")
FAST = ["--epochs", "1", "--units", "2", "--quiet", "--anchor-budget", "0"]


def run(*args):
    proc = subprocess.run([LSTM_TRAIN, *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def hourly(rows, values=None, start=0):
    """A CSV text of ``rows`` hourly readings, oldest first."""
    values = values or [10.0 + (i * 7 % 5) + 0.1 * i for i in range(rows)]
    return "time,level\n" + "".join(f"2022-03-{1 + (start + i) // 24:02d}T{(start + i) % 24:02d}"
                                     f":00:00,{v}\n" for i, v in enumerate(values))


def refused(tmp_path, text, *args, data=None):
    csv = tmp_path / "d.csv"
    if data is not None:
        csv.write_bytes(data)
    else:
        csv.write_text(text)
    proc = run(csv, *args, "-o", tmp_path / "m.keras")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "m.keras").exists()
    return proc.stderr


@pytest.mark.parametrize("rows, mode", [(10, "window"), (11, "sequence"), (11, "stateful")])
def test_too_few_validation_rows_is_one_line_with_the_rows_needed(tmp_path, rows, mode):
    err = refused(tmp_path, hourly(rows), "--target", "level", "--look-back", 2, "--mode", mode,
                  *FAST)
    assert "hold 1 prediction; early stopping and the prediction intervals need at least 2" in err
    assert "give at least 12 rows" in err


def test_a_look_back_longer_than_the_data_says_what_fits(tmp_path):
    err = refused(tmp_path, hourly(20), "--target", "level")
    assert "--look-back 24 + --horizon 1 is longer than the data (20 rows); use --look-back " \
           "12 or less or give at least 37 rows" in err
    err = refused(tmp_path, hourly(30), "--target", "level")     # longer than its training part
    assert "a training part of 21 rows cannot hold a window of 25 readings plus its target 1 " \
           "row(s) later; use --look-back 19 or less or give at least 37 rows" in err


@pytest.mark.parametrize("output", ["x.onnx", "mymodel"])
def test_an_output_keras_cannot_save_is_refused_before_training(tmp_path, output):
    csv = tmp_path / "d.csv"
    csv.write_text(hourly(40))
    proc = run(csv, "--target", "level", "-o", tmp_path / output)
    assert proc.returncode == 2, proc.stderr
    stem = tmp_path / Path(output).stem
    assert "lstm-train saves a Keras model, named .keras or .h5" in proc.stderr
    assert f"lstm-export {stem}.keras -o {stem}.onnx" in proc.stderr
    assert list(tmp_path.iterdir()) == [csv]


def test_rows_newest_first_are_refused_naming_the_line(tmp_path):
    lines = hourly(40).splitlines()
    err = refused(tmp_path, "\n".join([lines[0], *reversed(lines[1:])]) + "\n",
                  "--target", "level")
    assert "d.csv, line 3: the time column 'time' goes back" in err
    assert "the rows run newest first: reverse them" in err


def test_a_constant_target_is_refused(tmp_path):
    err = refused(tmp_path, hourly(40, [7.0] * 40), "--target", "level")
    assert "the target 'level' is 7 on every row: there is nothing to forecast" in err


@pytest.mark.parametrize("name", ["time", "stamp"])
def test_epoch_seconds_newest_first_are_refused_not_made_a_feature(tmp_path, name):
    """As ISO dates are: named like time, or unnamed as the first column (before training)."""
    rows = [f"{1646092800 + 3600 * i},{10.0 + i * 7 % 5}" for i in range(40)]
    err = refused(tmp_path, "\n".join([f"{name},level", *reversed(rows)]) + "\n",
                  "--target", "level", "--look-back", 4, *FAST)
    assert f"d.csv, line 3: the time column '{name}' goes back ('1646229600' after " \
           f"'1646233200' on line 2)" in err
    assert "the rows run newest first: reverse them" in err


def test_a_target_flat_on_the_training_and_validation_rows_is_refused(tmp_path):
    """It changes in the test tail only: the model would learn from no change (before
    training, which would score it nan and calibrate intervals of width 0)."""
    err = refused(tmp_path, hourly(40, [7.0] * 35 + [8.0, 9.0, 7.0, 8.0, 9.0]),
                  "--target", "level", "--look-back", 4, *FAST)
    assert "the target 'level' is 7 on every training row (lines 2..29, the first 70% of the " \
           "rows) and first changes on line 37" in err
    assert "give more rows, a smaller --val-fraction/--test-fraction, or another --target" in err


def test_a_target_named_twice_is_refused(tmp_path):
    err = refused(tmp_path, hourly(40), "--target", "level,level")
    assert "--target names 'level' twice" in err


def test_a_missing_column_is_not_explained_in_lstm_export_words(tmp_path):
    err = refused(tmp_path, hourly(40), "--target", "Level")
    assert "no numeric column 'Level'; the numeric columns are 'level'" in err
    assert "lstm-export" not in err


def test_a_semicolon_separated_csv_is_named_so(tmp_path):
    err = refused(tmp_path, hourly(40).replace(",", ";"), "--target", "level")
    assert "looks ';'-separated" in err and "the numeric columns are ;" not in err


def test_a_latin1_csv_names_its_line_and_how_to_convert_it(tmp_path):
    text = hourly(40).replace("level", "temp").splitlines()
    data = ("\n".join(text[:30]) + "\n").encode() + b"2022-03-02T10:00:00,21\xb0\n"
    err = refused(tmp_path, "", "--target", "temp", data=data)
    assert "d.csv, line 31: not UTF-8 text" in err and "0xb0, '°' in Latin-1" in err
    assert "iconv -f latin1 -t utf-8" in err


@pytest.fixture(scope="module")
def flawed(tmp_path_factory):
    """One run on hourly readings with a time repeated, an 11-hour hole and --season 500."""
    lines = hourly(60).splitlines()
    hole = hourly(30, start=70).splitlines()[1:]
    text = "\n".join([*lines[:21], lines[20], *lines[21:], *hole])       # line 21 again: a replay
    tmp = tmp_path_factory.mktemp("flawed")
    (tmp / "d.csv").write_text(text + "\n")
    proc = run(tmp / "d.csv", "--target", "level", "--look-back", 4, "--season", 500, *FAST,
               "-o", tmp / "m.keras")
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_repeated_time_is_noted_naming_the_line(flawed):
    assert "d.csv, line 22: the time '2022-03-01T19:00:00' repeats line 21's" in flawed.stderr


def test_a_hole_in_the_time_column_is_noted_in_the_report(flawed):
    assert ("note: the time column 'time' has 1 hole(s) over 5 x its usual spacing of "
            "1:00:00, the longest 11:00:00 between lines 62 and 63") in flawed.stdout


def test_a_season_longer_than_the_data_says_the_seasonal_row_is_left_out(flawed):
    assert "note: --season 500 reaches back before the first row" in flawed.stderr
    assert "seasonal naive" not in flawed.stdout
