"""lstm-train, second trial: numeric options refused by click, row-count advice that can be
followed, a tie told as a tie, a bad --plot refused before training, exit codes in --help,
and the report naming its parts by file line and time."""

import copy
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from trainer import cli
from trainer.errors import DataError
from trainer.train import TrainConfig, TrainResult, check_config, check_rows
from trainer.windows import split_points

from test_train_report import WATER_H6

LSTM_TRAIN = str(Path(sys.executable).parent / "lstm-train")
WATER = str(Path(__file__).parents[1] / "data" / "water-flow.csv")
TARGET = "Water flow [l/s]"


def lstm_train(*args, timeout=60):
    return subprocess.run([LSTM_TRAIN, WATER, "--target", TARGET, *args], capture_output=True,
                          text=True, timeout=timeout, env={"CUDA_VISIBLE_DEVICES": "",
                                                           "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("option, value", [
    ("--batch-size", "-5"), ("--batch-size", "0"), ("--dense", "-1"), ("--patience", "-1"),
    ("--epochs", "0"), ("--epochs", "-1"), ("--look-back", "0"),
    ("--units", "0"), ("--layers", "0"), ("--dropout", "1"), ("--dropout", "-0.1"),
    ("--val-fraction", "0"), ("--test-fraction", "1"), ("--seed", "-1"), ("--season", "0"),
    ("--anchor-budget", "-1")])
def test_a_numeric_option_out_of_range_is_a_usage_error(option, value):
    done = lstm_train(option, value, "-o", "/nonexistent/never.keras")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"Invalid value for '{option}'" in done.stderr, done.stderr
    assert "tensorflow" not in done.stderr.lower()


def advice(rows: int, cfg: TrainConfig) -> str:
    """The refusal's message for ``rows`` rows, or "" where the checks pass."""
    try:
        check_config(cfg, rows)
        check_rows(rows, cfg)
    except DataError as exc:
        return str(exc)
    return ""


def passes(rows: int, cfg: TrainConfig) -> bool:
    """Every row-count check train() makes, including its split with the window's rows."""
    if advice(rows, cfg):
        return False
    window = cfg.look_back + (1 if cfg.difference and cfg.model.mode != "sequence" else 0)
    split_points(rows, cfg.val_fraction, cfg.test_fraction, window + cfg.horizon)
    return True


@pytest.mark.parametrize("mode", ["window", "sequence", "stateful"])
@pytest.mark.parametrize("difference", [True, False])
@pytest.mark.parametrize("horizon", [1, 6])
@pytest.mark.parametrize("rows", [12, 20, 36, 50])
def test_following_either_half_of_the_row_advice_passes_the_checks(rows, horizon,
                                                                   difference, mode):
    from trainer.model import ModelConfig

    cfg = TrainConfig(horizon=horizon, difference=difference, model=ModelConfig(mode=mode))
    said = advice(rows, cfg)
    if not said:
        return
    shorter = re.search(r"--look-back (\d+) or less", said)
    if shorter:
        best = int(shorter.group(1))
        assert passes(rows, replace(cfg, look_back=best)), said
        assert not passes(rows, replace(cfg, look_back=best + 1)), said   # the largest
    more = re.search(r"give at least (\d+) rows", said)
    assert more, said
    need = int(more.group(1))
    assert not passes(need - 1, cfg), said                                # the fewest
    assert all(passes(r, cfg) for r in range(need, need + 200)), said     # and "at least"


def with_skill(model_mae, naive_mae):
    side = copy.deepcopy(WATER_H6)
    test = side["metrics"]["test"]
    test["model"]["mae"], test["naive"]["mae"] = [model_mae], [naive_mae]
    test["skill"] = [model_mae / naive_mae]
    return TrainResult(Path("m.keras"), Path("m.lstm-edge.json"), side).report()


def test_a_skill_that_rounds_to_one_is_a_tie_not_a_win():
    text = with_skill(0.20444, 0.20447)
    assert "skill 1.000" in text
    assert "the model ties (equal MAE at 3 decimals) with repeating the last value" in text
    assert "beats repeating" not in text
    assert "the model beats repeating the last value" in with_skill(0.20, 0.21)
    assert "the model does not beat repeating" in with_skill(0.22, 0.21)


def test_the_tie_rule_is_documented_where_the_verdict_is_explained():
    docs = (Path(__file__).parents[1] / "docs" / "forecasting.md").read_text()
    assert "rounds to 1.000" in docs and "tie" in docs


@pytest.mark.parametrize("plot", ["/proc/p4.png", "/nonexistent-file/x.png", "tail.txt"])
def test_a_plot_that_cannot_be_written_is_refused_before_training(plot, tmp_path):
    if plot == "/nonexistent-file/x.png":      # a parent that is a file, not a folder
        (tmp_path / "f").write_text("")
        plot = str(tmp_path / "f" / "x.png")
    done = lstm_train("--epochs", "1", "-o", str(tmp_path / "m.keras"), "--plot", plot)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --plot"), done.stderr
    assert not (tmp_path / "m.keras").exists()
    assert "Epoch" not in done.stdout + done.stderr


def test_a_plot_that_fails_after_training_comes_after_the_report(monkeypatch, tmp_path):
    import trainer.train as train_module

    result = TrainResult(tmp_path / "m.keras", tmp_path / "m.lstm-edge.json", WATER_H6,
                         plot_error="t.png: the plot cannot be written (disk full)")
    monkeypatch.setattr(train_module, "check_data", lambda *a, **k: None)
    monkeypatch.setattr(train_module, "train", lambda *a, **k: result)
    monkeypatch.setattr(cli, "quiet_tensorflow", lambda: None)
    done = CliRunner().invoke(cli.train_main, [WATER, "--target", TARGET, "--plot",
                                               str(tmp_path / "t.png")])
    assert done.exit_code == 2, done.output
    assert "skill 0.770" in done.stdout
    assert "the plot was not written" in done.stdout
    assert done.stderr.strip() == "Error: t.png: the plot cannot be written (disk full)"


def test_help_lists_the_exit_codes():
    done = subprocess.run([LSTM_TRAIN, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "Exit codes: 0 the model" in text and "2 a refusal" in text and "130" in text
    docs = (Path(__file__).parents[1] / "docs" / "forecasting.md").read_text()
    assert "Exit codes of lstm-train" in docs


def test_the_report_names_its_parts_by_file_line_and_time():
    side = copy.deepcopy(WATER_H6)
    side["data"].update(split=888, parts={
        "validation": {"lines": [890, 1079], "times": ["2022-05-01T00:00", "2022-05-08T21:00"]},
        "test": {"lines": [1080, 1269], "times": ["2022-05-08T22:00", "2022-05-16T19:00"]}})
    text = TrainResult(Path("m.keras"), Path("m.lstm-edge.json"), side).report()
    assert ("; file lines 1080..1269 (2022-05-08T22:00 to 2022-05-16T19:00), never trained"
            in text)
    assert ("validation: 190 predictions (file lines 890..1079 (2022-05-01T00:00 to "
            "2022-05-08T21:00)), used for early stopping" in text)
    assert "rows 1078" not in text


def test_the_plot_names_the_best_baseline_beside_naive(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from trainer.data import Selection
    from trainer.plot import plot_test

    seen = []
    monkeypatch.setattr(plt, "close", lambda fig: seen.append(fig))
    y = np.sin(np.arange(60.0))[:, None]
    sel = Selection(x=y, y=y, features=("v",), targets=("v",), lines=np.arange(2, 62),
                    time=None)
    last = np.arange(40, 54)
    plot_test(tmp_path / "p.png", sel, y[last + 6] + 0.1, last, 6,
              best=[("seasonal naive (24)", 0.05)])
    labels = [t.get_text() for t in seen[0].axes[0].get_legend().get_texts()]
    assert any("vs naive" in t and "x seasonal naive (24)'s MAE 0.05" in t for t in labels)
