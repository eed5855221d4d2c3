"""Reading CSVs, missing values, windows and the scaler, against hand-computed answers."""

import csv

import numpy as np
import pytest

from trainer.data import check_time, check_training_target, read_csv, select
from trainer.errors import DataError
from trainer.windows import Scaler, sequences, split_point, windows


def write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_time_column_is_recognised_and_never_a_feature(water_csv, occupancy_csv):
    water = read_csv(water_csv)
    assert water.time_column == "Time" and list(water.columns) == ["Water flow [l/s]"]
    occ = read_csv(occupancy_csv)
    assert occ.time_column == "time" and list(occ.columns) == ["V1", "V2", "V3", "V4"]
    sel = select(occ, "V4")
    assert sel.features == ("V1", "V2", "V3", "V4") and sel.targets == ("V4",)
    assert sel.x.shape == (509, 4) and sel.y.shape == (509, 1)
    # The first data row, as written in the file.
    with open(occupancy_csv) as f:
        first = next(r for i, r in enumerate(csv.reader(f)) if i == 1)
    assert sel.x[0].tolist() == [float(v) for v in first[1:]]


def test_features_and_target_by_name(occupancy_csv):
    sel = select(read_csv(occupancy_csv), "V1", "V2, V4")
    assert sel.features == ("V2", "V4") and sel.x.shape == (509, 2)


def test_unknown_column_is_named_with_the_choices(occupancy_csv):
    with pytest.raises(DataError, match=r"no numeric column 'CO2'.*'V1', 'V2', 'V3', 'V4'"):
        select(read_csv(occupancy_csv), "CO2")
    with pytest.raises(DataError, match="it is the time column"):
        select(read_csv(occupancy_csv), "V1", "time,V2")


def test_junk_in_a_numeric_column_names_line_and_column(tmp_path):
    path = write(tmp_path, "t,a,b\n1,1.0,2\n2,oops,3\n3,2.0,4\n4,3.0,5\n")
    with pytest.raises(DataError, match=r"line 3, column 'a': expected a number, found 'oops'"):
        read_csv(path)


def test_text_column_is_left_out_of_default_features(tmp_path):
    path = write(tmp_path, "a,label,b\n1,up,2\n2,down,3\n3,up,4\n")
    table = read_csv(path)
    assert list(table.columns) == ["a", "b"] and table.ignored == ("label",)
    with pytest.raises(DataError, match="it holds text"):
        select(table, "label")


GAPPY = "time,a,b\n1,1.0,10\n2,,20\n3,3.0,\n4,4.0,40\n5,NA,50\n6,6.0,60\n"


def test_missing_error_names_the_lines(tmp_path):
    with pytest.raises(DataError, match=r"missing values on line\(s\) 3, 4, 6; .*--missing"):
        select(read_csv(write(tmp_path, GAPPY)), "b", "a")


@pytest.mark.parametrize("policy, a, b, lines", [
    ("drop", [1, 4, 6], [10, 40, 60], [2, 5, 7]),
    ("ffill", [1, 1, 3, 4, 4, 6], [10, 20, 20, 40, 50, 60], [2, 3, 4, 5, 6, 7]),
    ("interpolate", [1, 2, 3, 4, 5, 6], [10, 20, 30, 40, 50, 60], [2, 3, 4, 5, 6, 7]),
])
def test_missing_policies(tmp_path, policy, a, b, lines):
    sel = select(read_csv(write(tmp_path, GAPPY)), "b", "a", missing=policy)
    assert sel.x[:, 0].tolist() == a
    assert sel.y[:, 0].tolist() == b
    assert sel.lines.tolist() == lines


def test_leading_gap_takes_the_first_value_seen(tmp_path):
    sel = select(read_csv(write(tmp_path, "a,b\n,1\n5,2\n6,3\n")), "b", "a", missing="ffill")
    assert sel.x[:, 0].tolist() == [5, 5, 6]


def test_windows_match_a_hand_computed_example():
    x = np.array([[0, 10], [1, 11], [2, 12], [3, 13], [4, 14], [5, 15]], dtype=float)
    y = x[:, :1] * 100                                   # (rows, 1)
    inputs, targets, last = windows(x, y, look_back=2, horizon=2)
    assert inputs.shape == (3, 2, 2)                     # (samples, timesteps, features)
    assert inputs[0].tolist() == [[0, 10], [1, 11]]
    assert inputs[2].tolist() == [[2, 12], [3, 13]]
    assert targets.ravel().tolist() == [300, 400, 500]   # 2 rows after each window's end
    assert last.tolist() == [1, 2, 3]


def test_sequences_have_a_target_per_step():
    x = np.arange(8.0)[:, None]
    inputs, targets, first = sequences(x, x, length=3, horizon=1, stride=2)
    assert inputs.shape == (3, 3, 1) and targets.shape == (3, 3, 1)
    assert first.tolist() == [0, 2, 4]
    assert inputs[1, :, 0].tolist() == [2, 3, 4] and targets[1, :, 0].tolist() == [3, 4, 5]


def test_too_short_a_series_is_refused():
    with pytest.raises(DataError, match="needs at least 6 rows, the series has 5"):
        windows(np.zeros((5, 1)), np.zeros((5, 1)), look_back=4, horizon=2)


def test_split_is_chronological():
    assert split_point(100, 0.2, 10) == 80
    with pytest.raises(DataError, match="cannot hold a window"):
        split_point(10, 0.5, 8)
    with pytest.raises(DataError, match="leaves no row to validate on"):
        split_point(10, 0.01, 3)


def test_scaler_round_trip_and_constant_column():
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    s = Scaler.fit(x, x[:, :1], "standard")
    assert s.x(x).tolist() == [[-1, 0], [1, 0]]          # a constant column is not divided by 0
    assert np.allclose(s.y_inverse(s.y(x[:, :1])), x[:, :1])


# ---- epoch seconds as the time column, in whatever order the logger wrote them -------------

EPOCH0 = 1646092800          # 2022-03-01T00:00:00Z


def epoch_csv(tmp_path, name="time", order=None, extra=""):
    """A CSV of 40 hourly readings led by epoch seconds: ``order`` the row indices written
    (default oldest first); ``extra`` a header for a third column of a countdown."""
    order = range(40) if order is None else order
    head = f"{name},level" + (f",{extra}" if extra else "")
    body = [f"{EPOCH0 + 3600 * i},{10 + i % 5}" + (f",{4_000_000_000 - 3600 * i}" if extra else "")
            for i in order]
    return write(tmp_path, "\n".join([head, *body]) + "\n")


@pytest.mark.parametrize("name", ["time", "stamp"])
def test_epoch_seconds_newest_first_are_the_time_column_and_refused(tmp_path, name):
    """Named like time or not (then as the first column), epoch seconds newest first are
    the time column, refused as a date string column is, never a feature."""
    table = read_csv(epoch_csv(tmp_path, name, order=range(39, -1, -1)))
    assert table.time_column == name and list(table.columns) == ["level"]
    with pytest.raises(DataError, match=f"line 3: the time column '{name}' goes back .* the "
                                        f"rows run newest first: reverse them"):
        check_time(select(table, "level"), table.time_column, "d.csv")


@pytest.mark.parametrize("name", ["time", "stamp"])
def test_a_repeated_epoch_second_is_the_time_column_and_noted(tmp_path, name):
    table = read_csv(epoch_csv(tmp_path, name, order=[*range(21), 20, *range(21, 40)]))
    assert table.time_column == name and list(table.columns) == ["level"]
    notes, _ = check_time(select(table, "level"), table.time_column, "d.csv")
    assert len(notes) == 1 and f"line 23: the time '{EPOCH0 + 3600 * 20}' repeats line 22's" \
        in notes[0]


def test_a_named_epoch_column_out_of_order_is_refused_with_sort(tmp_path):
    order = [*range(10), 11, 10, *range(12, 40)]
    table = read_csv(epoch_csv(tmp_path, order=order))
    assert table.time_column == "time"
    with pytest.raises(DataError, match="line 13: .* sort the rows by time, oldest first"):
        check_time(select(table, "level"), table.time_column, "d.csv")


def test_a_shrinking_or_stalling_large_number_after_the_first_column_stays_a_feature(tmp_path):
    """A countdown (epoch-sized numbers at one step, newest-first-like) after the first
    column, and a meter that stalls now and then, are features: only the leading column,
    or one named like time, is read as time newest first or with repeats."""
    meter = [200_000_000 + 1000 * (i - i // 3) for i in range(40)]   # stalls every 3rd row
    path = write(tmp_path, "level,countdown,meter\n" + "".join(
        f"{10 + i % 5},{4_000_000_000 - 3600 * i},{meter[i]}\n" for i in range(40)))
    table = read_csv(path)
    assert table.time_column is None and list(table.columns) == ["level", "countdown", "meter"]
    # After a time column that is the first, the countdown is a feature as well.
    table = read_csv(epoch_csv(tmp_path, extra="countdown"))
    assert table.time_column == "time" and list(table.columns) == ["level", "countdown"]


def test_a_nameless_row_index_before_the_time_column_is_passed_over(tmp_path):
    """pandas writes its row index first with an empty name: the epoch column after it is
    still the leading one."""
    rows = [f"{i},{EPOCH0 + 3600 * (39 - i)},{10 + i % 5}" for i in range(40)]
    table = read_csv(write(tmp_path, ",stamp,level\n" + "\n".join(rows) + "\n"))
    assert table.time_column == "stamp" and list(table.columns) == ["", "level"]


def test_a_target_flat_on_the_training_rows_is_refused(tmp_path):
    values = [7.0] * 34 + [7.0, 8.0, 9.0, 7.0, 8.0, 9.0]   # changes in the test tail only
    path = write(tmp_path, "level\n" + "".join(f"{v}\n" for v in values))
    sel = select(read_csv(path), "level")
    with pytest.raises(DataError, match=r"the target 'level' is 7 on every training row \(lines "
                                        r"2\.\.29, the first 70% of the rows\) and first "
                                        r"changes on line 37"):
        check_training_target(sel, 28, "d.csv")
    check_training_target(sel, 36, "d.csv")                   # it changes on row 35
    flat = select(read_csv(write(tmp_path, "level\n" + "7\n" * 40)), "level")
    check_training_target(flat, 28, "d.csv")         # flat everywhere: check_targets's to say


def test_train_itself_refuses_a_target_flat_on_the_training_rows(tmp_path):
    """The Python API makes the refusal lstm-train makes, before any model is built."""
    from trainer.train import TrainConfig, train
    values = [7.0] * 34 + [7.0, 8.0, 9.0, 7.0, 8.0, 9.0]
    path = write(tmp_path, "level\n" + "".join(f"{v}\n" for v in values))
    with pytest.raises(DataError, match="is 7 on every training row"):
        train(path, "level", output=tmp_path / "m.keras", cfg=TrainConfig(look_back=4))
    assert not (tmp_path / "m.keras").exists()


@pytest.mark.parametrize("odd", ["1_000", "١٠٠", "１００"])
def test_what_only_python_reads_as_a_number_is_junk_as_lstm_run_says(tmp_path, odd):
    """float() reads digit separators and any Unicode digits; neither lstm-run nor pandas
    does, so a model must not train on them as numbers."""
    path = write(tmp_path, f"t,x\n1,1.0\n2,{odd}\n3,2.0\n4,3.0\n", name="odd.csv")
    with pytest.raises(DataError, match=f"line 3, column 'x': expected a number, found '{odd}'"):
        read_csv(path)
