"""A stderr that is closed or broken never takes stdout's answers down.

Warnings and ``line N:`` complaints go to stderr; the answers to stdout. Each test starts the
real command with a real broken stderr: a pipe whose reader has gone (``2> >(head -c 0)``),
or descriptor 2 closed before the program starts (``2>&-``), with and without
``PYTHONUNBUFFERED``; every input line must still be answered, with the documented exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import LSTM_RUN, ROOT, TIMEOUT, split_lines, tiny_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("stderr-models") / "tiny.onnx")


def half_bad(n: int = 1000) -> bytes:
    """A header, then ``n`` lines of which every other is refused (a warning each)."""
    rows = [f"t{i},s{i % 5},{21 + i % 7},{'bad' if i % 2 else 40}" for i in range(n)]
    return ("time,sensor,temperature,humidity\n" + "\n".join(rows) + "\n").encode()


def environ(unbuffered: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def close_stderr() -> None:
    os.close(2)      # in the child, before exec: the program starts with 2 closed (2>&-)


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("progress", [[], ["--progress"]], ids=["", "progress"])
def test_broken_stderr_pipe_leaves_every_answer(model, unbuffered, progress):
    read, write = os.pipe()
    os.close(read)               # the reader of stderr is gone: every write to it is EPIPE
    try:
        proc = subprocess.run(LSTM_RUN + [str(model), "--stream", "--stream-column", "sensor",
                                          *progress],
                              input=half_bad(), stdout=subprocess.PIPE, stderr=write,
                              env=environ(unbuffered), timeout=TIMEOUT, cwd=ROOT)
    finally:
        os.close(write)
    out = split_lines(proc.stdout.decode())
    assert proc.returncode == 0
    assert len(out) == 1001 and sum(",bad," in line for line in out) == 500


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "unbuffered"])
def test_closed_stderr_leaves_every_answer(model, unbuffered):
    proc = subprocess.run(LSTM_RUN + [str(model), "--stream", "--stream-column", "sensor"],
                          input=half_bad(), stdout=subprocess.PIPE, preexec_fn=close_stderr,
                          env=environ(unbuffered), timeout=TIMEOUT, cwd=ROOT)
    out = split_lines(proc.stdout.decode())
    assert proc.returncode == 0 and len(out) == 1001


def test_closed_stderr_keeps_the_exit_code_of_an_error(model, tmp_path):
    """With nowhere to say it, the error still ends the run with its code (2)."""
    proc = subprocess.run(LSTM_RUN + [str(model), "--state", str(tmp_path)],
                          input=half_bad(3), stdout=subprocess.PIPE, preexec_fn=close_stderr,
                          timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == b""


def test_lstm_export_with_closed_stderr_exits_2(tmp_path):
    pytest.importorskip("keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip archive")
    exe = Path(sys.executable).parent / "lstm-export"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "trainer.cli"]
    proc = subprocess.run(command + [str(bad), "-o", str(tmp_path / "m.onnx")],
                          stdout=subprocess.PIPE, preexec_fn=close_stderr, timeout=TIMEOUT * 2,
                          cwd=ROOT)
    assert proc.returncode == 2
