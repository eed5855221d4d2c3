"""The columns a user would not choose, the three-way split, the season guess and the
report's figures, on small hand-made CSVs and hand-computed answers (no training)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.data import growing_features, read_csv, select
from trainer.errors import DataError
from trainer.forecast import best_by_mae, caution, guess_season, score
from trainer.windows import split_points, windows


def write(tmp_path, header, rows, name="d.csv"):
    path = tmp_path / name
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("header, first, step", [
    ("date", 19580101, None),          # YYYYMMDD under the name the issue saw
    ("day_stamp", 20240101, None),     # YYYYMMDD, any name
    ("t", 1_700_000_000, 3600),        # epoch seconds at a constant step, any name
    ("timestamp", 12.5, 0.5),          # named so, strictly increasing
])
def test_numeric_time_columns_are_recognised_never_features(tmp_path, header, first, step):
    n = 30
    if step is None:                                  # consecutive days of January
        times = [first + i for i in range(n)]
    else:
        times = [first + i * step for i in range(n)]
    path = write(tmp_path, f"{header},flow", [(t, 10 + i % 3) for i, t in enumerate(times)])
    table = read_csv(path)
    assert table.time_column == header and list(table.columns) == ["flow"]
    assert select(table, "flow").features == ("flow",)


@pytest.mark.parametrize("header, values", [
    ("hour", [i % 24 for i in range(48)]),                    # a cycle: a real feature
    ("time", [5, 3, 9, 1] * 12),                              # named time, not increasing
    ("count", list(range(100, 148))),                        # increasing, but no epoch or date
    ("t", [1_700_000_000 + i * i for i in range(48)]),         # epoch-sized, uneven steps
    ("code", [20241399 + i for i in range(48)]),              # 8 digits, month 13: no date
])
def test_numbers_that_are_not_time_stay_features(tmp_path, header, values):
    path = write(tmp_path, f"{header},flow", [(v, 1.5) for v in values])
    table = read_csv(path)
    assert table.time_column is None and header in table.columns


def test_a_counter_that_leaves_its_training_range_is_warned_about(tmp_path):
    rows = [(f"2024-01-01T{i % 24:02d}:00", 100 + 2.5 * i, 10 + (i % 5), 3 * (i % 7))
            for i in range(60)]
    path = write(tmp_path, "time,odometer,speed,level", rows)
    sel = select(read_csv(path), "speed")
    lines = growing_features(sel, split=40)
    assert len(lines) == 1
    assert "'odometer' only ever grows: 100% of its values" in lines[0]
    assert "--features speed,level" in lines[0]
    # A column that grows but stays within what training saw is not a counter problem.
    flat = [(r[0], min(r[1], 150.0), r[2], r[3]) for r in rows]
    assert growing_features(select(read_csv(write(tmp_path, "time,odometer,speed,level",
                                                      flat, "f.csv")), "speed"), 40) == []


def test_lstm_train_warns_on_stderr_and_reports_skill(tmp_path):
    rows = [(1_700_000_000 + 60 * i, 0.5 * i, 10 + np.sin(i / 3)) for i in range(120)]
    path = write(tmp_path, "epoch,distance,speed", [(a, f"{b:.2f}", f"{c:.3f}")
                                                    for a, b, c in rows])
    exe = Path(sys.executable).parent / "lstm-train"
    proc = subprocess.run([str(exe), str(path), "--target", "speed", "--look-back", "4",
                           "--units", "2", "--epochs", "1", "--quiet",
                           "-o", str(tmp_path / "m.keras")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "feature 'distance' only ever grows" in proc.stderr
    assert "--features speed" in proc.stderr
    assert "skill" in proc.stdout and "best by MAE" in proc.stdout
    # The statistical anchors stand beside the model (no season in minute readings).
    assert "AutoARIMA" in proc.stdout or "pip install 'lstm-edge[stats]'" in proc.stdout
    assert "no season known" in proc.stdout or "not installed" in proc.stdout
    side = json.loads((tmp_path / "m.lstm-edge.json").read_text())
    assert side["features"] == ["distance", "speed"]               # the time column is no feature
    assert side["data"]["time_column"] == "epoch"


@pytest.mark.parametrize("rows", [30, 97, 144, 509, 1268])
@pytest.mark.parametrize("val, test", [(0.15, 0.15), (0.2, 0.1), (0.1, 0.3)])
def test_the_test_tail_never_overlaps_validation(rows, val, test):
    split, first_test = split_points(rows, val, test, min_rows=5)
    assert 5 <= split < first_test < rows
    # Every window belongs to exactly one part, by its target row, and the parts keep order.
    _, _, last = windows(np.zeros((rows, 1)), np.zeros((rows, 1)), 4, 2)
    target = last + 2
    parts = np.select([target < split, target < first_test], [0, 1], 2)
    assert (np.diff(parts) >= 0).all()
    assert set(np.flatnonzero(parts == 1)).isdisjoint(np.flatnonzero(parts == 2))
    assert (target[parts == 2] >= first_test).all() and (target[parts == 1] < first_test).all()


def test_split_refuses_fractions_that_leave_no_room():
    with pytest.raises(DataError, match="--val-fraction"):
        split_points(100, 0.5, 0.5, 5)
    with pytest.raises(DataError, match="--test-fraction"):
        split_points(100, 0.1, 0.0, 5)


@pytest.mark.parametrize("times, season", [
    ([f"2024-01-{d:02d}" for d in range(1, 20)], 7),                        # daily
    ([f"2024-{1 + w // 4:02d}-{1 + 7 * (w % 4):02d}" for w in range(12)], 52),   # weekly
    ([str(1_700_000_000 + 3600 * i) for i in range(30)], 24),             # epoch, hourly
    ([f"2024-01-01 {h // 4:02d}:{15 * (h % 4):02d}" for h in range(40)], 96),    # 15 minutes
    (["19580101", "19580201", "19580301", "19580401"], 12),              # YYYYMMDD monthly
])
def test_season_is_guessed_from_the_spacing(times, season):
    assert guess_season(times)[0] == season


def test_score_skill_seasonal_naive_and_mase_by_hand():
    y = np.array([1.0, 2, 3, 2, 1, 2, 3, 2, 1, 2, 3, 2])[:, None]    # a season of 4
    last = np.array([8, 9, 10])                                    # predicting rows 9, 10, 11
    pred = np.array([[2.0], [3.5], [2.0]])
    fig = score(y, pred, last, 1, y[:8], season=4)
    assert fig["model"]["mae"] == pytest.approx([0.5 / 3])
    assert fig["naive"]["mae"] == pytest.approx([1.0])             # |2-1|, |3-2|, |2-3|
    assert fig["skill"] == pytest.approx([0.5 / 3])
    assert fig["seasonal_naive"]["mae"] == pytest.approx([0.0])    # a season ago: exact
    assert np.isnan(fig["mase"][0])                # in-sample seasonal naive is exact: no scale
    plain = score(y, pred, last, 1, y[:8], season=None)
    assert "seasonal_naive" not in plain
    assert plain["mase"] == pytest.approx([(0.5 / 3) / 1.0])     # in-sample naive MAE is 1
    assert best_by_mae(fig) == "seasonal_naive"
    assert "caution: the test tail holds 3 predictions" in caution(fig, 4)
