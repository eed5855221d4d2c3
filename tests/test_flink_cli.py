"""The Flink job's command line where it must agree with lstm-run or refuse before the start.

Real ``python -m integrations.flink`` subprocesses in ``.venv-flink``: a ``--resume`` the
checkpoint cannot be restored into (another model file, ``-o -`` after ``-o DIR``) is one
``Error:`` line and exit 2 before Flink starts; a bounded ``-o -`` run prints lstm-run's
lines, the CSV header and the blank line's blank answer included.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import runtime
from helpers import run, split_lines
from test_flink import FEATURE, FLINK_PY, MODEL, ROOT, TIMEOUT, _unavailable

pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


def job(*args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(FLINK_PY), "-m", "integrations.flink", *map(str, args)],
                          cwd=ROOT, capture_output=True, timeout=timeout,
                          start_new_session=True)


def checkpoint_of(model: Path, folder: Path, record: dict | None = None) -> Path:
    """A checkpoint folder as Flink leaves one, ``<job>/chk-3/_metadata``, whose inline keyed
    state holds a sensor's state bytes written with ``model``; ``record``: the job's record
    beside it (what the job writes when it starts)."""
    chk = folder / "0123456789abcdef0123456789abcdef" / "chk-3"
    chk.mkdir(parents=True)
    stream = runtime.load(model, device="cpu").stream()
    stream.step([101.5])
    # Flink's own framing around the pickled bytes does not matter to the check
    (chk / "_metadata").write_bytes(b"\x00\x00\x00\x04flink" + stream.to_bytes() + b"\x00" * 9)
    if record is not None:     # in the job's folder, as the job writes it
        (chk.parent / "lstm-edge-job.json").write_text(json.dumps({"shards": 4, **record}))
    return chk


def reexported(path: Path) -> Path:
    """MODEL as another export of it writes it: the same graph, other bytes (sha256)."""
    import onnx
    proto = onnx.load(str(MODEL))
    proto.doc_string = "re-exported"
    onnx.save(proto, str(path))
    return path


def one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode()
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: "), err
    return err


def test_resume_with_another_model_is_refused_before_the_start(tmp_path):
    """Finding 3: a re-exported model file (other bytes) against a checkpoint taken with the
    old one; it was 86 lines of traceback and a job that kept running, answering nothing."""
    old = tmp_path / "old" / "water-flow.onnx"
    old.parent.mkdir()
    old.write_bytes(MODEL.read_bytes())
    folder = tmp_path / "ck"
    source = tmp_path / "in.csv"
    source.write_text(f"sensor,Time,{FEATURE}\na,1,101.5\n")
    checkpoint_of(old, folder, {"source": str(source.resolve()), "model": "water-flow.onnx",
                                "sha256": runtime.load(old, device="cpu").fingerprint,
                                "output": "folder", "operator": "batched"})
    new = reexported(tmp_path / "new.onnx")
    for resume in ("latest", str(folder / "0123456789abcdef0123456789abcdef" / "chk-3")):
        proc = job(new, "-i", source, "-o", tmp_path / "answers", "--stream-column", "sensor",
                   "--time-column", "Time", "--checkpoint-dir", folder, "--resume", resume,
                   timeout=60)
        err = one_line(proc)
        assert proc.returncode == 2, err
        fp_old = runtime.load(old, device="cpu").fingerprint[:12]
        fp_new = runtime.load(new, device="cpu").fingerprint[:12]
        assert f"water-flow.onnx (sha256 {fp_old}" in err and f"new.onnx (sha256 {fp_new}" in err
        assert "resume with the model file the checkpoint was taken with" in err
        assert "start without --resume" in err


def test_resume_to_stdout_after_a_folder_names_the_output(tmp_path):
    """Finding 4: resuming with -o - a checkpoint taken with -o answers/ blamed --operator
    or --shards; it is refused before the start, naming -o."""
    folder = tmp_path / "ck"
    source = tmp_path / "in.csv"
    source.write_text(f"sensor,Time,{FEATURE}\na,1,101.5\n")
    checkpoint_of(MODEL, folder, {"source": str(source.resolve()), "model": MODEL.name,
                                  "sha256": runtime.load(MODEL, device="cpu").fingerprint,
                                  "output": "folder", "operator": "batched"})
    proc = job(MODEL, "-i", source, "-o", "-", "--stream-column", "sensor", "--time-column",
               "Time", "--checkpoint-dir", folder, "--resume", "latest", timeout=60)
    err = one_line(proc)
    assert proc.returncode == 2, err
    assert "taken with -o a folder" in err and "this job has -o -" in err
    assert "--shards" not in err and "--operator" not in err


def flink_words(line: str) -> str:
    """lstm-run's line with the order advice in the Flink job's option."""
    return line.replace("--no-order-check feeds every line as it comes",
                        "--no-time-column feeds every line as it comes")


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_bounded_stdout_equals_lstm_run_header_blank_lines_and_all(tmp_path, suffix):
    """Findings 5, 6 and the header: one sensor's lines with a blank line, a time that is
    no time and one that is missing; -o - prints lstm-run's lines (CSV: its header first),
    the blank line answered blank, the records' advice naming --no-time-column."""
    if suffix == "csv":
        lines = [f"sensor,Time,{FEATURE}", "a,1,101.5", "a,2,101.7", "", "a,not-a-time,101.0",
                 "a,,101.1", "a,3,101.9", "   ", "a,4,102.0"]
    else:
        def rec(t, v):
            return json.dumps({"sensor": "a", "Time": t, FEATURE: v})
        lines = [rec(1, 101.5), rec(2, 101.7), "", rec("not-a-time", 101.0),
                 json.dumps({"sensor": "a", FEATURE: 101.1}), rec(3, 101.9), "", rec(4, 102.0)]
    path = tmp_path / f"in.{suffix}"
    path.write_text("\n".join(lines) + "\n")
    options = ["--stream-column", "sensor", "--time-column", "Time"]
    want = [flink_words(line) for line in split_lines(run([MODEL, "-i", path, *options])[0])]
    assert want.count("") == lines.count("") + lines.count("   ")
    assert sum("--no-time-column" in line for line in want) == 2
    proc = job(MODEL, "-i", path, "-o", "-", *options)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    got = split_lines(proc.stdout.decode())
    if suffix == "csv":
        assert got[0] == want[0]          # the header, first
        got, want = got[1:], want[1:]
    # blank lines and error records may go to other shards than the sensor's: same lines,
    # and the sensor's own lines in order
    assert sorted(got) == sorted(want)
    assert [x for x in got if '"step"' in x or ",step" in x or x.startswith("a,")] == \
        [x for x in want if '"step"' in x or ",step" in x or x.startswith("a,")]


def test_bounded_stdout_of_headerless_csv_has_no_header_as_lstm_run(tmp_path):
    """--columns names a headerless input's columns: lstm-run prints no header, nor does -o -."""
    path = tmp_path / "in.csv"
    path.write_text("a,1,101.5\na,2,101.7\n")
    options = ["--columns", f"sensor,Time,{FEATURE}", "--stream-column", "sensor",
               "--time-column", "Time"]
    want = split_lines(run([MODEL, "-i", path, *options])[0])
    proc = job(MODEL, "-i", path, *options)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert split_lines(proc.stdout.decode()) == want
