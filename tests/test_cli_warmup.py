"""``lstm-run`` says when a stream never left warm-up, and ``--info`` says how long it is.

The case: a model declared with ``input_shape=(10, 3)`` but trained on 9 timesteps,
streamed one window per sensor (``--stream-column sample``): every line warms up, and
without a word the run would end with exit 0 and no prediction at all.
"""

from __future__ import annotations

import subprocess

import pytest

from helpers import LSTM_RUN, TIMEOUT, Live, tiny_onnx, with_props


def run(args, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([*LSTM_RUN, *map(str, args)], input=stdin, capture_output=True,
                          timeout=TIMEOUT)


def windows_as_sensors(sensors: int, readings: int) -> bytes:
    lines = ["sample,temperature,humidity"]
    lines += [f"s{i},{20 + k * 0.1},{40 + i}" for i in range(sensors) for k in range(readings)]
    return ("\n".join(lines) + "\n").encode()


def test_a_window_that_never_fills_is_reported_with_the_override(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx", window=10, carry_state=False)
    proc = run([model, "--stream", "--stream-column", "sample"], windows_as_sensors(12, 9))
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    out = proc.stdout.decode().splitlines()
    assert len(out) == 1 + 12 * 9 and all(",true," in line for line in out[1:])
    want = ("sensor 's0': 9 readings, never a full window of 10: no prediction was made; if "
            "the model was trained on windows of 9 timesteps, run with --window 9")
    assert want in err.splitlines(), err
    assert err.count("never a full window of 10") == 10          # ten sensors, then the rest
    assert "... and 2 more streams that never had a full window of 10" in err
    fixed = run([model, "--stream-column", "sample", "--window", "9"], windows_as_sensors(12, 9))
    assert fixed.returncode == 0 and "never a full window" not in fixed.stderr.decode()
    assert fixed.stdout.decode().count(",false,") == 12            # one prediction per sensor


def test_one_stream_without_a_stream_column_is_reported_too(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx", window=5, carry_state=False)
    proc = run([model], b"20,40\n21,41\n")
    assert proc.returncode == 0
    assert ("the stream: 2 readings, never a full window of 5: no prediction was made; if the "
            "model was trained on windows of 2 timesteps, run with --window 2") in proc.stderr.decode()
    ready = run([model], b"20,40\n" * 5)
    assert ready.returncode == 0 and "never a full window" not in ready.stderr.decode()


def test_info_states_the_warm_up_and_the_state_slots(tmp_path):
    path = with_props(tiny_onnx(tmp_path / "m.onnx", window=3, carry_state=True),
                      state_slots="4")
    out = run([path, "--info"]).stdout.decode()
    assert "warm-up      2 readings: the first prediction comes with reading 3" in out, out
    assert ("state slots  4 state slots: window j continues window j-4, as Keras "
            "predict(batch_size=4)") in out, out
    plain = run([tiny_onnx(tmp_path / "s.onnx"), "--info"]).stdout.decode()
    assert "none: every reading gets a prediction" in plain and "state slots" not in plain


def test_a_model_converted_whole_is_never_told_to_take_another_window(tmp_path):
    """Its graph reads exactly its window (docs/contract.md, "Window models converted
    whole") and lstm-run refuses any other --window: the advice names none."""
    keras = pytest.importorskip("keras")
    export = pytest.importorskip("trainer.export")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((3, 2)), keras.layers.Bidirectional(
        keras.layers.LSTM(3)), keras.layers.Dense(1)])
    path = export.export(model, tmp_path / "m.onnx", features="temperature,humidity",
                         targets="temperature", steps=20).path
    proc = run([path], b"20,40\n21,41\n")
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "--window" not in err, err
    assert ("the stream: 2 readings, never a full window of 3: no prediction was made; give at "
            "least 3 readings per sensor") in err, err
    assert run([path, "--window", "2"]).returncode == 2       # what the old advice said
    out = run([path, "--info"]).stdout.decode()
    assert "(a window of 3 timesteps)" in out and "--window" not in out, out


def test_replayed_lines_are_not_taken_for_a_short_window(tmp_path):
    """Three lines, one reading sent three times: the stream had one reading because two
    were replays, which says nothing of the window it was trained on."""
    model = tiny_onnx(tmp_path / "m.onnx", window=3, carry_state=False)
    line = b"2022-01-01T00:00:00Z,20,40\n"
    proc = run([model], b"time,temperature,humidity\n" + line * 3)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "2 replayed reading(s)" in err, err
    assert "never a full window" not in err, err


def test_a_sensor_dropped_and_back_is_not_taken_for_a_short_window(tmp_path):
    """--max-streams 1: sensor a's third reading comes after a was dropped, to a fresh
    stream; its one reading there says nothing of the window."""
    model = tiny_onnx(tmp_path / "m.onnx", window=3, carry_state=False)
    live = Live([model, "--stream", "--stream-column", "s", "--max-streams", "1"])
    try:
        live.send(b"s,temperature,humidity\n")
        live.read_line()
        for key in b"aabba":                        # one line at a time: one batch each
            live.send(bytes([key]) + b",20,40\n")
            live.read_line()
        _, err = live.finish()
    finally:
        live.kill()
    assert "dropped stream 'a'" in err and "dropped stream 'b'" in err, err
    assert "never a full window" not in err, err
