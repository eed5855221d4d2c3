"""TensorFlow's start-up noise is kept off stderr; real problems are not.

Through real subprocesses: the filter on its own (noise written to descriptor 2 as
TensorFlow's C++ side writes it, a real error beside it, an abort), then a clean
``lstm-train`` and ``lstm-export`` run as a user runs them, whose stderr must be empty.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1795320011.827650    8277 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.\n"
    "E0000 00:00:1795320013.347374    8277 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"
    "E0000 00:00:1795320013.610167    8277 node_def_util.cc:682] NodeDef mentions attribute "
    "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset>\n"
)
REAL = ("E0000 00:00:1795320013.610167    8277 bfc_allocator.cc:1] Allocator ran out of memory\n"
        "Error: the project's own message\n")


def user_env(**extra) -> dict:
    """The environment of a user's shell: none of the test suite's TensorFlow settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    return {**env, **extra}


def filtered(tail: str) -> subprocess.CompletedProcess:
    code = ("import os, sys\nfrom trainer.quiet import filter_stderr\nfilter_stderr()\n"
            f"os.write(2, {(NOISE + REAL.splitlines(True)[0]).encode()!r})\n"
            f"print({REAL.splitlines()[1]!r}, file=sys.stderr)\n" + tail)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=user_env())


def test_noise_is_dropped_and_real_errors_kept():
    proc = filtered("sys.exit(2)")
    assert proc.returncode == 2
    assert proc.stderr == REAL


def test_an_abort_still_shows_what_was_written():
    proc = filtered("sys.stderr.flush()\nos.abort()")
    assert proc.returncode != 0
    assert proc.stderr == REAL


def test_asking_for_tensorflow_logs_turns_the_filter_off():
    code = ("import os\nfrom trainer.quiet import filter_stderr\nfilter_stderr()\n"
            f"os.write(2, {NOISE.encode()!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=user_env(TF_CPP_MIN_LOG_LEVEL="0"))
    assert proc.stderr == NOISE


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="no TensorFlow")
@pytest.mark.parametrize("level", [None, "3"])
def test_a_clean_train_and_export_print_nothing_on_stderr(water_csv, tmp_path, level):
    env = user_env(**({"TF_CPP_MIN_LOG_LEVEL": level} if level else {}))
    train = subprocess.run(
        [str(BIN / "lstm-train"), water_csv, "--target", "Water flow [l/s]", "--mode",
         "sequence", "--look-back", "6", "--units", "4", "--epochs", "2", "-o",
         tmp_path / "m.keras"], capture_output=True, text=True, timeout=300, env=env)
    assert train.returncode == 0, train.stderr
    assert train.stderr == "", train.stderr
    assert "validation:" in train.stdout
    export = subprocess.run([str(BIN / "lstm-export"), tmp_path / "m.keras", "-o",
                             tmp_path / "m.onnx", "--steps", "50"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert export.returncode == 0, export.stderr
    assert export.stderr == "", export.stderr
    assert "wrote" in export.stdout
