"""``lstm-run`` says when a stream never left warm-up, and ``--info`` says how long it is.

The case: a model declared with ``input_shape=(10, 3)`` but trained on 9 timesteps,
streamed one window per sensor (``--stream-column sample``): every line warms up, and
without a word the run would end with exit 0 and no prediction at all.
"""

from __future__ import annotations

import subprocess

from helpers import LSTM_RUN, TIMEOUT, tiny_onnx, with_props


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
