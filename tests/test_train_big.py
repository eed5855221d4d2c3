"""lstm-train on a big series: progress on stderr as each phase starts, windows as views.

On a file of millions of rows every phase takes long (reading, fitting, predicting, the
anchors); stderr says which phase runs and how far it got, stdout keeps the report alone,
and the windows are views of the series instead of copies (25 times its bytes each).
"""

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from trainer import cli, progress
from trainer.model import ModelConfig
from trainer.progress import Progress
from trainer.train import TrainConfig, _Series, _split_windows, check_data
from trainer.windows import sequences, windows

LSTM_TRAIN = str(Path(sys.executable).parent / "lstm-train")
TARGET = "Water flow [l/s]"
FAST = ["--epochs", "2", "--patience", "5", "--units", "2", "--anchor-budget", "0"]

# The phases in the order they start: each a line of stderr beginning with these words.
PHASES = ["reading ", "checking 1,268 rows", "1,243 windows of 25 readings", "loading TensorFlow",
          "fitting on 863 windows", "epoch 1/2: loss ", "epoch 2/2: loss ",
          "predicting all 1,243 windows", "scoring the model", "calibrating the intervals",
          "saving "]


def lstm_train(*args):
    """lstm-train with its stderr on a terminal (a pty), as a user watching it runs it."""
    main, side = pty.openpty()
    proc = subprocess.Popen([LSTM_TRAIN, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=side, text=True)
    os.close(side)
    said = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:                 # EIO: every writer of the terminal has gone
            break
        if not chunk:
            break
        said += chunk
    os.close(main)
    out = proc.stdout.read()
    proc.wait(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out,
                                       said.decode().replace("\r\n", "\n"))


@pytest.mark.slow
def test_each_phase_says_so_on_stderr_in_order_and_quiet_says_nothing(water_csv, tmp_path):
    done = lstm_train(water_csv, "--target", TARGET, *FAST, "-o", tmp_path / "m.keras")
    assert done.returncode == 0, done.stderr
    said = [line.removeprefix("lstm-train: ") for line in done.stderr.splitlines()
            if line.startswith("lstm-train: ")]
    at = [next((i for i, line in enumerate(said) if line.startswith(p)), None) for p in PHASES]
    assert None not in at and at == sorted(at), done.stderr
    assert re.search(r"expect a peak of about [\d.]+ [GM]B of memory, TensorFlow included; the "
                     r"time an epoch takes is told within its first 20 s$", said[at[2]]), said
    # stdout is the report alone, with or without --quiet; --quiet leaves stderr silent.
    quiet = lstm_train(water_csv, "--target", TARGET, *FAST, "--quiet", "-o", tmp_path / "q.keras")
    assert quiet.returncode == 0, quiet.stderr
    assert "lstm-train:" not in quiet.stderr and "epoch" not in quiet.stderr, quiet.stderr
    for run in (done, quiet):
        assert run.stdout.startswith("test tail: 190 predictions"), run.stdout
        assert "lstm-train:" not in run.stdout and "/step" not in run.stdout, run.stdout


def test_away_from_a_terminal_a_big_file_is_told_and_a_small_one_is_not(water_csv, monkeypatch, capsys):
    import trainer.train as train_module

    monkeypatch.setattr(train_module, "is_terminal", lambda: False)  # a log file, a pipe
    check_data(water_csv, TARGET, None, TrainConfig())
    assert capsys.readouterr().err == ""        # read in a blink: a refusal stays one line
    monkeypatch.setattr(train_module, "BIG_FILE", 30_000)           # water-flow: 42 kB
    check_data(water_csv, TARGET, None, TrainConfig())
    assert capsys.readouterr().err.splitlines() == [
        f"lstm-train: reading {water_csv} (42 kB)", "lstm-train: checking 1,268 rows"]
    check_data(water_csv, TARGET, None, TrainConfig(verbose=0))     # --quiet
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_csv_is_read_once(water_csv, tmp_path, monkeypatch):
    import trainer.train as train_module

    reads = []
    read_csv = train_module.read_csv
    monkeypatch.setattr(train_module, "read_csv", lambda path: reads.append(path) or read_csv(path))
    monkeypatch.setattr(cli, "quiet_tensorflow", lambda: None)
    done = CliRunner().invoke(cli.train_main, [str(water_csv), "--target", TARGET, *FAST,
                                               "--quiet", "-o", str(tmp_path / "m.keras")])
    assert done.exit_code == 0, done.output
    assert reads == [str(water_csv)]


def test_a_long_phase_tells_how_far_it_got_and_the_time_left():
    now = [100.0]
    out = io.StringIO()
    tick = Progress(stream=out, clock=lambda: now[0], every=20).ticker("epoch 1/5", 400, "batches")
    for batch, seconds in ((10, 5), (100, 20), (150, 30), (300, 60), (400, 80)):
        now[0] = 100.0 + seconds
        tick.reached(batch)
    assert out.getvalue().splitlines() == [
        "lstm-train: epoch 1/5: 100 of 400 batches in 20 s, about 1 min 0 s to go",
        "lstm-train: epoch 1/5: 300 of 400 batches in 1 min 0 s, about 20 s to go"]


def test_predictions_in_chunks_are_keras_predictions_bit_for_bit(monkeypatch):
    import keras

    from trainer.model import build_model

    keras.utils.set_random_seed(3)
    model = build_model(ModelConfig(units=3), 5, 2, 1)
    x = np.random.default_rng(0).normal(size=(301, 5, 2)).astype(np.float32)
    monkeypatch.setattr(progress, "PREDICT_CHUNK", 64)
    out = io.StringIO()
    chunked = Progress(stream=out, every=0).predict(model, x, "predicting")
    assert np.array_equal(chunked, model.predict(x, verbose=0))
    assert "predicting: 64 of 301 windows" in out.getvalue()


def test_windows_and_sequences_are_views_of_the_series_not_copies():
    x = np.arange(60, dtype=np.float32).reshape(20, 3)              # (rows, features)
    inputs, _, _ = windows(x, x[:, :1], look_back=4, horizon=2)
    assert inputs.dtype == np.float32 and np.shares_memory(inputs, x)
    assert not inputs.flags.writeable
    assert inputs[3].tolist() == x[3:7].tolist()
    inputs, targets, _ = sequences(x, x[:, :1], length=4, horizon=1, stride=3)
    assert np.shares_memory(inputs, x) and np.shares_memory(targets, x)
    assert inputs[2].tolist() == x[6:10].tolist() and targets[2, :, 0].tolist() == x[7:11, 0].tolist()


@pytest.mark.parametrize("differenced", [False, True])
def test_the_training_parts_are_views_of_the_one_window_array(differenced):
    rows = 200
    xs = np.random.default_rng(1).normal(size=(rows, 3)).astype(np.float32)
    first = np.full(3, -0.5, np.float32) if differenced else None
    series = _Series(xs, xs[:, :1], split=140, test=170, first=first)
    inputs, targets, last, train, val = _split_windows(series, TrainConfig(look_back=6))
    assert inputs.dtype == np.float32 and inputs.shape == (rows - 6, 6, 3)
    # One array of windows: the series itself, or (differenced) one float32 copy of it.
    assert np.shares_memory(inputs, xs) != differenced
    assert np.shares_memory(inputs[train], inputs) and np.shares_memory(inputs[val], inputs)
    target = last + 1
    assert (target[train] < 140).all() and ((target[val] >= 140) & (target[val] < 170)).all()
    assert len(inputs[train]) + len(inputs[val]) == int((target < 170).sum())
    assert (inputs[:, 0] == (first if differenced else xs[:rows - 6])).all()
