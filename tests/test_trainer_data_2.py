"""Files a user trial found read wrongly: long format, non-ISO times, repeated times, a mostly
empty column, decimal commas. Each is refused in one line naming the fix, or read as
lstm-run reads it, with a note (lstm-train refuses before TensorFlow loads)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.data import check_time, read_csv, select
from trainer.errors import DataError

LSTM_TRAIN = str(Path(sys.executable).parent / "lstm-train")


def write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def hours(n, start=0):
    return [f"2022-03-{1 + (start + i) // 24:02d}T{(start + i) % 24:02d}:00:00" for i in range(n)]


def refused(path, *args):
    """lstm-train on ``path``: exit 2, one ``Error:`` line, no traceback; the line."""
    proc = subprocess.run([LSTM_TRAIN, str(path), *args, "-o", str(path.with_suffix(".keras"))],
                          capture_output=True, text=True, timeout=120,
                          env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr


def test_long_format_is_refused_naming_the_text_column_and_the_fix(tmp_path):
    rows = [f"{t},{s},{10 + k + i % 7}" for i, t in enumerate(hours(40))
            for k, s in enumerate(("s1", "s2", "s3"))]
    path = write(tmp_path, "time,sensor,value\n" + "\n".join(rows) + "\n")
    err = refused(path, "--target", "value")
    assert "found 3 interleaved: the text column 'sensor' ('s1', 's2', 's3')" in err
    assert "awk -F, 'NR==1 || $2==\"s1\"'" in err and "pivot(index='time', columns='sensor', " \
        "values='value')" in err


@pytest.mark.parametrize("name, stamp, fmt", [
    ("Time", "20.10.2022 13:00", "%d.%m.%Y %H:%M"),
    ("Date", "03/20/2022 11:00 AM", "%m/%d/%Y %I:%M %p"),
    ("stamp", "20.10.2022 13:00", "%d.%m.%Y %H:%M"),           # date-like, any name
])
def test_a_time_column_that_is_not_iso_is_refused_with_a_recipe(tmp_path, name, stamp, fmt):
    path = write(tmp_path, f"{name},Flow\n" + "".join(f"{stamp},{i % 5}\n" for i in range(30)))
    err = refused(path, "--target", "Flow")
    assert f"line 2: time column {name!r}: {stamp!r} is not an ISO 8601 time; lstm-run reads " \
           f"ISO 8601" in err and f"format={fmt!r}" in err


def test_a_day_column_of_words_stays_text(tmp_path):
    table = read_csv(write(tmp_path, "day,level\n" + "".join(f"Mon,{i}\n" for i in range(9))))
    assert table.time_column == "day" and list(table.columns) == ["level"]


def test_a_replayed_row_is_left_out_with_a_note_as_lstm_run_does(tmp_path):
    times, values = hours(30), [10 + i % 7 for i in range(30)]
    rows = [f"{t},{v}" for t, v in zip(times, values)]
    rows.insert(11, rows[10])                                    # line 13 repeats line 12
    table = read_csv(write(tmp_path, "time,level\n" + "\n".join(rows) + "\n"))
    sel = select(table, "level", source="d.csv")
    assert len(sel.y) == 30 and sel.y[:, 0].tolist() == values
    assert 13 not in sel.lines and sel.lines[-1] == 32           # CSV lines, as written
    notes, _ = check_time(sel, table.time_column, "d.csv")
    assert len(notes) == 1 and "line 13: the time '2022-03-01T10:00:00' repeats line 12's " \
        "with the same values (1 repeated row(s)" in notes[0]


def test_a_repeated_time_with_other_values_is_refused(tmp_path):
    rows = [f"{t},{10 + i % 7}" for i, t in enumerate(hours(30))]
    rows.insert(11, hours(30)[10] + ",99")
    path = write(tmp_path, "time,level\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"line 13: the time '2022-03-01T10:00:00' repeats line "
                                        r"12's with other values \(1 such line\(s\): 13\); .*"
                                        r"drop_duplicates\('time', keep='last'\)"):
        select(read_csv(path), "level", source=str(path))


def mostly_empty(tmp_path):
    return write(tmp_path, "time,flow,pressure\n" + "".join(
        f"{t},{10 + i % 7},{'3.5' if i % 10 == 0 else ''}\n" for i, t in enumerate(hours(60))))


def test_missing_values_are_named_by_column_with_a_features_hint(tmp_path):
    err = refused(mostly_empty(tmp_path), "--target", "flow")
    assert "missing by column: 'pressure' 90%; 'pressure' is mostly empty: leave it out with " \
           "--features flow" in err


def test_missing_drop_refuses_to_drop_most_rows(tmp_path):
    with pytest.raises(DataError, match=r"--missing drop would leave out 54 of 60 rows \(90%"):
        select(read_csv(mostly_empty(tmp_path)), "flow", missing="drop")
    path = write(tmp_path, "time,flow,p\n" + "".join(
        f"{t},{i},{'' if i == 5 else 1}\n" for i, t in enumerate(hours(20))))
    sel = select(read_csv(path), "flow", missing="drop", source="d.csv")
    assert len(sel.y) == 19 and "drop left out 1 of 20 rows (5%" in sel.notes[0]


@pytest.mark.parametrize("policy, says", [
    ("ffill", "--missing hold repeats the last value live"),
    ("interpolate", "lstm-run cannot interpolate live"),
])
def test_filling_notes_the_share_made_up(tmp_path, policy, says):
    table = read_csv(mostly_empty(tmp_path))
    sel = select(table, "flow", missing=policy, source="d.csv")
    assert np.isfinite(sel.x).all()
    notes, _ = check_time(sel, table.time_column, "d.csv")
    assert f"--missing {policy} made up 54 value(s) (filled: 'pressure' 90%)" in notes[0]
    assert says in notes[0]


def test_quoted_decimal_commas_are_named(tmp_path):
    path = write(tmp_path, "Time,Flow\n" + "".join(f'{t},"100,{i}"\n'
                                                   for i, t in enumerate(hours(30))))
    err = refused(path, "--target", "Flow")
    assert "line 2, column 'Flow': expected a number with a decimal point, found '100,0' with " \
           "a decimal comma (30 such values)" in err and "decimal=','" in err


def test_semicolons_with_decimal_commas_get_the_tr_recipe(tmp_path):
    path = write(tmp_path, "Zeit;Flow\n" + "".join(f"{t};100,{i}\n"
                                                   for i, t in enumerate(hours(30))))
    with pytest.raises(DataError, match=r"looks ';'-separated; convert it with tr ',;' '\.,'"):
        read_csv(path)


@pytest.mark.parametrize("first, second", [("2022/03/20", "2022/03/21"),
                                           ("2022/03/20 11:00", "2022/03/20 12:00"),
                                           ("20-03-2022 11:00", "20.03.2022 12:00")])
def test_the_time_recipe_given_runs_and_gives_times_the_trainer_reads(tmp_path, first, second):
    """lstm-run cannot order 2022/03/20, so the trainer refuses it (it read it as a date
    and trained on times the stream then fed unchecked); the recipe converts it. Mixed
    formats fit no one format: pandas guesses, and the message says to check."""
    pytest.importorskip("pandas")
    path = tmp_path / "t.csv"
    path.write_text(f"date,x\n{first},1\n{second},2\n")
    with pytest.raises(DataError, match="is not an ISO 8601 time") as err:
        read_csv(path)
    command = str(err.value).split("so convert it: ", 1)[1].split(" (", 1)[0]
    assert ("format='...'" not in command) and (("pandas guesses" in str(err.value))
                                                == ("format=" not in command))
    done = subprocess.run(["bash", "-c", command.replace("python ", f"{sys.executable} ", 1)],
                          cwd=tmp_path, capture_output=True, timeout=60)
    if "format=" not in command and done.returncode:
        return                                    # pandas could not guess: the user is told
    assert done.returncode == 0, done.stderr.decode()
    table = read_csv(tmp_path / "t-iso.csv")
    assert table.time_column == "date" and list(table.columns["x"]) == [1.0, 2.0]
