"""lstm-train's printed report: one table per target in its own units, and a sentence in
words wherever a forecast in the table beats the model."""

import copy
import subprocess
import sys
from pathlib import Path

from trainer.train import TrainResult

LSTM_TRAIN = str(Path(sys.executable).parent / "lstm-train")

WATER_H6 = {   # the figures of docs/forecasting.md's water flow, 6 steps ahead
    "targets": ["Water flow [l/s]"], "horizon": 6, "mode": "sequence",
    "forecast": {"target_kind": "residual", "difference": True},
    "members": {"count": 1, "note": ""},
    "data": {"test": 1078, "rows": 1268},
    "metrics": {
        "season": 24,
        "test": {"steps": 190,
                 "model": {"mae": [0.5499], "rmse": [0.6849]},
                 "naive": {"mae": [0.7141], "rmse": [0.8905]},
                 "seasonal_naive": {"mae": [0.4771], "rmse": [0.6671]},
                 "mean": {"mae": [3.1], "rmse": [3.9]},
                 "anchors": {"AutoETS": {"mae": [0.70], "rmse": [0.88]},
                             "AutoARIMA": {"mae": [0.60], "rmse": [0.80]}},
                 "anchors_note": "",
                 "skill": [0.770], "seasonal_skill": [1.153], "mase": [0.090],
                 "intervals": [{"level": 0.9, "coverage": [0.88], "width": [2.1]}]},
        "validation": {"steps": 190, "model": {"mae": [0.6]}, "naive": {"mae": [0.7]},
                       "skill": [0.857]},
    },
}

# What the report printed before it judged the model against every row: kept line for line.
SINGLE = """\
test tail: 190 predictions of Water flow [l/s], 6 step(s) ahead (sequence mode, residual target, differenced inputs); rows 1078..1267, never trained or early-stopped on
                               MAE       RMSE  ÷ naive MAE
  model                     0.5499     0.6849        0.770
  naive                     0.7141     0.8905        1.000
  seasonal naive (24)       0.4771     0.6671        0.668
  mean                         3.1        3.9        4.341
  AutoETS                      0.7       0.88        0.980
  AutoARIMA                    0.6        0.8        0.840
  skill 0.770 = model MAE / naive MAE: the model beats repeating the last value
  vs seasonal naive 1.153; MASE 0.090 (scale: in-sample seasonal naive)
  best by MAE: seasonal naive
validation: 190 predictions, used for early stopping: model MAE 0.6, naive 0.7, skill 0.857
  intervals (calibrated on validation), test coverage: 90% 88.0% (width 2.1, half-width 1.05)
saved m.keras and m.lstm-edge.json"""


def report(side):
    return TrainResult(Path("m.keras"), Path("m.lstm-edge.json"), side).report()


def test_a_baseline_that_beats_the_model_gets_a_sentence():
    lines = report(WATER_H6).splitlines()
    said = ("  the model does not beat seasonal naive (24): its MAE is 1.153 x that forecast's "
            "on this test tail — use that forecast, or improve the model until it beats it")
    assert lines == SINGLE.splitlines()[:11] + [said] + SINGLE.splitlines()[11:]


def test_a_model_that_beats_every_row_gets_no_such_sentence():
    side = copy.deepcopy(WATER_H6)
    side["metrics"]["test"]["seasonal_naive"]["mae"] = [0.6]
    assert "does not beat" not in report(side)
    side["metrics"]["test"]["anchors"]["AutoARIMA"]["mae"] = [0.5]   # two rows beat it now
    side["metrics"]["test"]["seasonal_naive"]["mae"] = [0.54]
    assert ("the model does not beat seasonal naive (24) or AutoARIMA: its MAE is 1.018 x and "
            "1.100 x theirs") in report(side)


def occupancy_two_targets():
    """V1 (°C) and V4 (ppm), the figures of the tester's occupancy run (FINDINGS F5)."""
    side = copy.deepcopy(WATER_H6)
    side["targets"] = ["V1", "V4"]
    side["metrics"]["season"] = None
    t = side["metrics"]["test"] = {
        "steps": 76,
        "model": {"mae": [0.1761, 88.75], "rmse": [0.25, 153.4]},
        "naive": {"mae": [0.1885, 141.9], "rmse": [0.27, 214.0]},
        "mean": {"mae": [1.2, 300.0], "rmse": [1.5, 350.0]},
        "anchors": {"AutoARIMA": {"mae": [0.1717, 88.84], "rmse": [0.24, 151.6]}},
        "anchors_note": "no season known, so the anchors are non-seasonal (--season N)",
        "skill": [0.934, 0.625], "mase": [0.9, 0.6],
        "intervals": [{"level": 0.8, "coverage": [0.79, 0.80], "width": [0.64, 324.0]}]}
    assert "seasonal_naive" not in t
    side["metrics"]["validation"] = {"steps": 76, "model": {"mae": [0.2, 90.0]},
                                     "naive": {"mae": [0.21, 140.0]}, "skill": [0.95, 0.64]}
    return side


def test_several_targets_get_a_table_each_in_their_own_units():
    text = report(occupancy_two_targets())
    lines = text.splitlines()
    v1, v4 = lines.index(next(x for x in lines if x.startswith("  V1 "))), \
        lines.index(next(x for x in lines if x.startswith("  V4 ")))
    first, second = lines[v1:v4], lines[v4:]
    assert "  model                     0.1761       0.25        0.934" in first
    assert "  model                      88.75      153.4        0.625" in second
    assert "44.46" not in text and "0.780" not in text        # no figure pooled across units
    assert "  best by MAE: AutoARIMA" in first and "  best by MAE: model" in second
    assert any(x.startswith("  the model does not beat AutoARIMA") for x in first)
    assert not any("does not beat AutoARIMA" in x for x in second)
    assert "  skill 0.934 = model MAE / naive MAE: the model beats repeating the last value" in first
    assert text.count("no season known") == 1
    assert ("validation: 76 predictions, used for early stopping: V1 model MAE 0.2, naive 0.21, "
            "skill 0.950; V4 model MAE 90, naive 140, skill 0.640") in lines
    assert "  intervals of V1 (calibrated on validation), test coverage: 80% 79.0% (width 0.64, half-width 0.32)" \
        in lines
    assert "  intervals of V4 (calibrated on validation), test coverage: 80% 80.0% (width 324, half-width 162)" \
        in lines


def test_lstm_train_prints_a_table_per_target(tmp_path):
    csv = tmp_path / "two.csv"
    csv.write_text("time,temp,co2\n" + "".join(
        f"2022-03-{1 + i // 24:02d}T{i % 24:02d}:00:00,{20 + (i * 3 % 7) * 0.1:.1f},"
        f"{600 + (i * 5 % 11) * 20}\n" for i in range(60)))
    proc = subprocess.run([LSTM_TRAIN, csv, "--target", "temp,co2", "--look-back", "4",
                           "--epochs", "1", "--units", "2", "--quiet", "--anchor-budget", "0",
                           "-o", tmp_path / "m.keras"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    heads = [x.split()[0] for x in proc.stdout.splitlines() if x.rstrip().endswith("naive MAE")]
    assert heads == ["temp", "co2"], proc.stdout
    assert proc.stdout.count("best by MAE:") == 2
