"""The runtime on user trial A's files: a graph whose y is not one answer per stream refused
at load in one line, ONNX Runtime's failures said once (no log line of its own, no message
cut mid-word), and ``--info``/start-up telling the device user what a file without a scaler
and a whole-series sequence file answer.

The models are tiny graphs built by hand (no Keras), so the file runs in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import runtime
from runtime.errors import ContractError

from helpers import run, tiny_onnx, with_props

HEADER = "temperature,humidity\n"
ROWS = "".join(f"{20 + k % 3},{40 + k % 5}\n" for k in range(6))


def _rewired(path: Path, nodes, initializers=(), **kwargs) -> Path:
    """The tiny graph (``tiny_onnx(path, **kwargs)``) with its y renamed ``y_pre`` and
    ``nodes`` making y from it."""
    tiny_onnx(path, **kwargs)
    model = onnx.load(str(path))
    for node in model.graph.node:
        if "y" in node.output:
            node.output[list(node.output).index("y")] = "y_pre"
    for name, values in initializers:
        model.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return path


def stacked_onnx(path: Path) -> Path:
    """y concatenated with itself on the batch axis, as a Keras model of two outputs
    converted whole answered: y ``[batch, time, 1]`` declared, ``2 * batch`` rows out."""
    return _rewired(path, [helper.make_node("Concat", ["y_pre", "y_pre"], ["y"], axis=0)])


def two_rows_onnx(path: Path) -> Path:
    """The first two rows of y stacked twice: right for two streams, two answers for one."""
    return _rewired(path, [helper.make_node("Concat", ["y_pre", "y_pre"], ["y2"], axis=0),
                           helper.make_node("Slice", ["y2", "zero", "two", "zero"], ["y"])],
                    [("zero", [0]), ("two", [2])])


def failing_onnx(path: Path) -> Path:
    """A window file (3 readings) whose y keeps the first timestep only: loads, and fails
    inside ONNX Runtime's kernel at every step (a step binding's y of 3 timesteps cannot take
    one), as the trial's file of two outputs failed."""
    return _rewired(path, [helper.make_node("Slice", ["y_pre", "zero", "one", "one"], ["y"])],
                    [("zero", [0]), ("one", [1])], window=3, carry_state=False)


def one_error_line(stderr: str, says: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), stderr
    assert "\x1b[" not in stderr and "[E:onnxruntime" not in stderr, stderr
    assert says in lines[0], stderr
    return lines[0]


@pytest.mark.parametrize("make, shape", [(stacked_onnx, "(2, 1, 1)"),
                                         (two_rows_onnx, "(2, 1, 1)")],
                         ids=["stacked", "two-rows"])
def test_y_of_another_batch_than_x_is_refused_at_load(tmp_path, make, shape):
    """It ended lstm-run -i in a numpy traceback, --info in ORT's log line and a message cut
    mid-word, and predict in a bare ValueError."""
    path = make(tmp_path / "m.onnx")
    with pytest.raises(ContractError, match="y's batch must equal x's"):
        runtime.load(path, device="cpu").predict(np.zeros((2, 1, 2)))
    for args in ([path, "-i", "-"], [path, "--info"]):
        _, err = run([*args, "--device", "cpu"], (HEADER + ROWS).encode(), code=2)
        line = one_error_line(err, "y's batch must equal x's")
        assert f"gives y of shape {shape}" in line and "re-export" in line, line


def test_an_ort_failure_is_one_line_without_its_log(tmp_path):
    """lstm-run --info of a graph that fails when run: ORT printed its own coloured log line
    ("[E:onnxruntime:, sequential_executor.cc ... ExecuteKernel]") before the Error line."""
    _, err = run([failing_onnx(tmp_path / "always.onnx"), "--info", "--device", "cpu"], code=2)
    one_error_line(err, "ONNX Runtime could not run always.onnx")


def test_ort_messages_lose_source_positions_and_are_cut_between_words():
    from runtime.model import _ort_words

    long = RuntimeError(
        "Error in execution: Non-zero status code returned while running Reshape node. "
        "Name:'Reshape' Status Message: /onnxruntime_src/onnxruntime/core/framework/"
        "op_kernel.cc:87 virtual OrtValue* onnxruntime::OpKernelContext::OutputMLValue(int, "
        "const onnxruntime::TensorShape&) [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : The "
        "output OrtValue provided for output 'y' of node 'Reshape' (Reshape) has shape "
        "{1,1,1} but the computed output shape for this run is {2,1,1}. When calling Run() "
        "with pre-allocated output OrtValues on a model with dynamic output shapes, either "
        "supply unallocated output OrtValues or ensure the pre-allocated shapes match.")
    words = _ort_words(long)
    assert "op_kernel.cc" not in words and "OutputMLValue" not in words, words
    assert "INVALID_ARGUMENT : The output OrtValue provided for output 'y'" in words, words
    assert "{1,1,1} but the computed output shape for this run is {2,1,1}" in words, words
    short = _ort_words(long, limit=120)
    assert short.endswith(" …") and len(short) <= 122 and short[:-2] in words, short
    assert words.startswith(short[:-2].rsplit(" ", 1)[0])


def test_info_says_what_a_file_without_a_scaler_answers(tmp_path):
    out, _ = run([tiny_onnx(tmp_path / "plain.onnx"), "--info", "--device", "cpu"])
    row = next(line for line in out.splitlines() if line.startswith("scaler"))
    assert "none: the file reads and answers the units the model was trained in" in row, row
    assert "lstm-export --scaler" in row, row


def test_a_whole_series_sequence_file_says_so_at_info_and_start_up(tmp_path):
    """A Keras model on keras.Input((None, F)) answering once per sequence (answers: last):
    the file carries its state from the first reading on, which the device user now sees."""
    path = with_props(tiny_onnx(tmp_path / "none.onnx"), answers="last")
    out, _ = run([path, "--info", "--device", "cpu"])
    row = next(line for line in out.splitlines() if line.startswith("history"))
    for words in ("carried from the first reading on", "a whole-series sequence",
                  "trained on windows of N readings", "--window N --no-carry-state"):
        assert words in row, row
    _, err = run([path, "-i", "-", "--device", "cpu"], (HEADER + ROWS).encode())
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "--window N --no-carry-state" in notes[0], err
    # a window model, or the same file run on windows, gets neither
    _, err = run([path, "-i", "-", "--device", "cpu", "--window", "3", "--no-carry-state"],
                 (HEADER + ROWS).encode())
    assert "note:" not in err, err
    out, _ = run([tiny_onnx(tmp_path / "plain.onnx"), "--info", "--device", "cpu"])
    assert "history" not in out, out
