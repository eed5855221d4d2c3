"""``lstm-run`` on real feeds, through real subprocesses and pipes.

A logger's file followed by ``tail -f`` (header dropped, a leading time column), header-less
lines named by ``--columns``, a reset from the feed, error records that keep the whole line,
hints in the CLI's words, a Keras file given instead of ONNX, the live view and the measured
latency of ``--info``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime import lines
from helpers import FEATURES, LSTM_RUN, ROOT, csv_rows, run, split_lines, tiny_onnx

WATER = ROOT / "exported" / "water-flow.onnx"
WATER_CSV = ROOT / "data" / "water-flow.csv"
TARGET = "Water flow [l/s]"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("feed")
    return {"sequence": tiny_onnx(d / "sequence.onnx"),
            "window": tiny_onnx(d / "window.onnx", window=3, carry_state=False, seed=1)}


class Answers:
    """Read a live process's stdout line by line, each line within a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.buf = proc, b""

    def next(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no answer within {timeout} s; got so far {self.buf!r}"
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                assert chunk, f"the pipeline ended early: {self.proc.stderr.read()!r}"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


# ---- a logger's file through tail -f -----------------------------------------------------

def test_tail_f_on_a_growing_logger_file(tmp_path):
    """tail -f drops the header; each appended line is answered while tail keeps the pipe open."""
    rows = WATER_CSV.read_text().splitlines()
    header, body = rows[0], rows[1:41]
    assert body[0].count(",") == 1 and lines.is_timestamp(body[0].split(",")[0])
    log = tmp_path / "sensor.csv"
    log.write_text("\n".join([header, *body[:20]]) + "\n")      # tail -f shows the last 10
    proc = subprocess.Popen(f"tail -f {log} | {' '.join(LSTM_RUN)} {WATER} --stream",
                            shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, cwd=ROOT)
    answers = Answers(proc)
    try:
        got = [answers.next() for _ in range(10)]
        with log.open("a") as f:
            for row in body[20:]:                                 # a writer, line by line
                f.write(row + "\n")
                f.flush()
                got.append(answers.next())                        # answered before the next
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    stderr = proc.stderr.read().decode()
    assert "leading time column" in stderr and "Traceback" not in stderr, stderr
    fed = body[10:]
    assert [g.split(",")[:2] for g in got] == [r.split(",") for r in fed]
    # The same readings through the runtime's own stream, from a fresh state.
    stream = runtime.load(WATER).stream()
    expected = [stream.step([float(r.split(",")[1])]) for r in fed]
    pred = np.array([float(g.split(",")[4]) for g in got])
    np.testing.assert_allclose(pred, np.array(expected)[:, 0], rtol=1e-5, atol=1e-5)
    assert all(g.split(",")[5:] == ["", "", ""] for g in got)      # fed (order), no error, input


def test_columns_name_headerless_fields_and_the_stream_column(tiny):
    """--columns: features found by name, others passed through, --stream-column works."""
    rows = [("t1", "a", 21.0, 40.0), ("t2", "b", 22.0, 41.0), ("t3", "a", 23.0, 42.0)]
    data = "".join(f"{t},{s},{h},{x}\n" for t, s, x, h in rows).encode()   # humidity first
    out, _ = run([tiny["sequence"], "--columns", "time,sensor,humidity,temperature",
                  "--stream-column", "sensor"], data)
    got = [lines.split_csv(line) for line in split_lines(out)]
    assert [g[:4] for g in got] == [[t, s, str(h), str(x)] for t, s, x, h in rows]
    # The same lines with a header, the usual way, give the same answers.
    ref, _ = run([tiny["sequence"], "--stream-column", "sensor"],
                 b"time,sensor,humidity,temperature\n" + data)
    assert [list(r.values()) for r in csv_rows(ref)] == got


def test_columns_take_a_first_line_of_those_names_as_the_header(tiny):
    out, _ = run([tiny["sequence"], "--columns", "time,temperature,humidity"],
                 b"time,temperature,humidity\nt1,21,40\n")
    assert split_lines(out)[0].startswith("time,temperature,humidity,step,")


def test_a_time_column_that_does_not_fit_says_to_use_columns(tiny):
    _, err = run([tiny["sequence"]], b"2024-01-01T00:00:00,a,21,40\n", code=2)
    assert "--columns" in err and "starts with a date/time" in err


# ---- reset from the feed -----------------------------------------------------------------

def _feed(n: int, sensors: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"sensor": f"s{i % sensors}", "temperature": round(float(rng.normal(21, 3)), 2),
             "humidity": round(float(rng.normal(45, 8)), 2)} for i in range(n)]


@pytest.mark.parametrize("kind", ["sequence", "window"])
@pytest.mark.parametrize("sensors", [1, 8])   # one feed() per sensor / batched rounds
def test_a_reset_line_equals_a_fresh_stream_from_there_on(tiny, kind, sensors):
    feed = _feed(12 * sensors, sensors)
    at = 5 * sensors                              # sensor s0's line that starts over
    assert feed[at]["sensor"] == "s0"
    with_reset = [dict(r, start=(i == at)) for i, r in enumerate(feed)]
    args = [tiny[kind], "--stream-column", "sensor", "--reset-column", "start"]
    out, _ = run(args, "".join(json.dumps(r) + "\n" for r in with_reset).encode())
    got = [json.loads(line) for line in split_lines(out)]
    after = [r for i, r in enumerate(with_reset) if i >= at and r["sensor"] == "s0"]
    fresh, _ = run(args, "".join(json.dumps(dict(r, start=False)) + "\n"
                                 for r in after).encode())
    expected = [json.loads(line) for line in split_lines(fresh)]
    mine = [g for i, g in enumerate(got) if i >= at and g["sensor"] == "s0"]
    strip = ("start",)
    assert [{k: v for k, v in g.items() if k not in strip} for g in mine] == \
        [{k: v for k, v in e.items() if k not in strip} for e in expected]
    assert mine[0]["step"] == 1
    # Without the reset the same lines carry on from the earlier state: another answer.
    carried, _ = run(args, "".join(json.dumps(dict(r, start=False)) + "\n"
                                   for r in feed).encode())
    old = [json.loads(x) for i, x in enumerate(split_lines(carried))
           if i >= at and feed[i]["sensor"] == "s0"]
    assert old[0]["step"] > 1
    assert [o["pred_temperature"] for o in old] != [m["pred_temperature"] for m in mine]


def test_reset_column_in_csv_and_a_bad_flag(tiny):
    data = b"t,temperature,humidity,new\n1,21,40,0\n2,22,41,\n3,23,42,true\n4,24,43,maybe\n"
    out, err = run([tiny["window"], "--reset-column", "new"], data)
    rows = csv_rows(out)
    assert [r["step"] for r in rows] == ["1", "2", "1", ""]
    assert "'maybe' is not a reset flag" in rows[3]["error"] and "line 5" in err


# ---- error records keep the whole line ---------------------------------------------------

@pytest.mark.parametrize("data, args, kept", [
    (b"time,temperature,humidity\n6,b,extra,4\n", [], "6,b,extra,4"),
    (b"1,2\n5,6,7\n", [], "5,6,7"),
    (b"1,2\n5\n", [], "5"),
    (b"t1,21,40\nt2,b,extra,more\n", ["--columns", "time,temperature,humidity"],
     "t2,b,extra,more"),
])
def test_csv_error_records_keep_the_whole_line(tiny, data, args, kept):
    out, _ = run([tiny["sequence"], *args], data)
    last = lines.split_csv(split_lines(out)[-1])
    assert last[-1] == kept and last[-2].startswith("expected")
    first = lines.split_csv(split_lines(out)[0])
    assert len(last) == len(first)          # every line has the same columns


def test_csv_bad_value_keeps_every_field_in_its_column(tiny):
    out, _ = run([tiny["sequence"]], b"time,temperature,humidity\nt9,warm,40\n")
    row = csv_rows(out)[0]
    assert (row["time"], row["temperature"], row["humidity"]) == ("t9", "warm", "40")
    assert row["input"] == "" and "'warm' is not a number" in row["error"]


def test_jsonl_error_records_keep_the_text(tiny):
    out, _ = run([tiny["sequence"]], b'{"temperature": 1, "humidity": 2}\n{broken\n[1, 2]\n')
    got = [json.loads(line) for line in split_lines(out)]
    assert got[1]["input"] == "{broken" and "not valid JSON" in got[1]["error"]
    assert got[2]["input"] == "[1, 2]"


# ---- CLI words in hints ------------------------------------------------------------------

def test_missing_value_hint_speaks_cli_options(tiny):
    out, err = run([tiny["sequence"]], b"temperature,humidity\n21,\n")
    assert "--missing skip" in err and "missing='" not in err
    assert "--missing skip" in csv_rows(out)[0]["error"]


# ---- a Keras file instead of ONNX --------------------------------------------------------

@pytest.mark.parametrize("name, content, says", [
    ("m.keras", b"PK\x03\x04 a zip archive", "a Keras model file (.keras)"),
    ("m.h5", b"\x89HDF\r\n\x1a\n....", "a Keras HDF5 model file"),
    ("saved", None, "a TensorFlow SavedModel directory"),
])
def test_keras_files_are_named_and_the_export_command_given(tmp_path, name, content, says):
    path = tmp_path / name
    if content is None:
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"\x08\x01")
    else:
        path.write_bytes(content)
    _, err = run([path], code=2)
    assert says in err and f"lstm-export {path} -o exported/" in err, err
    assert err.count("\n") == 1


def test_a_real_keras_file(tmp_path):
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((None, 1)), keras.layers.LSTM(2),
                              keras.layers.Dense(1)])
    model.save(tmp_path / "real.keras")
    _, err = run([tmp_path / "real.keras", "--info"], code=2)
    assert "is a Keras model file (.keras)" in err and "lstm-export" in err


# ---- the live view and the latency -------------------------------------------------------

@pytest.mark.parametrize("unbuffered", ["1", None])
def test_progress_goes_to_stderr_and_never_to_stdout(tiny, tmp_path, unbuffered):
    state = tmp_path / "s.npz"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    proc = subprocess.Popen(LSTM_RUN + [str(tiny["sequence"]), "--stream", "--progress",
                                        "--stream-column", "sensor", "--state", str(state),
                                        "--save-every", "5"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env)
    answers = Answers(proc)
    feed = _feed(30, 3)
    got = []
    for i, r in enumerate(feed):
        proc.stdin.write((json.dumps(r) + "\n").encode())
        proc.stdin.flush()
        got.append(json.loads(answers.next()))
        if i == 14:
            time.sleep(1.1)             # a second passes: the next batch redraws the view
    proc.stdin.close()
    rest = proc.stdout.read()
    assert proc.wait(timeout=30) == 0
    err = proc.stderr.read().decode()
    assert answers.buf + rest == b"" and len(got) == 30
    assert all("step" in g for g in got)
    status = [line for line in err.splitlines() if line.startswith("lstm-run:")]
    assert len(status) >= 2, err                  # one mid-run, one at the end
    assert "3 sensors, 0 errors, last save" in status[-1] and "30 lines" in status[-1]
    assert "/s)" in status[0]


def test_no_progress_without_a_terminal(tiny):
    _, err = run([tiny["sequence"], "--stream"], b"temperature,humidity\n1,2\n")
    assert "lstm-run:" not in err


def test_info_gives_the_measured_latency():
    out, _ = run([WATER, "--info"])
    row = next(line for line in out.splitlines() if line.startswith("latency"))
    micros = float(row.split()[1].replace(",", ""))
    rate = float(row.split("(")[1].split()[0].replace(",", ""))
    assert micros > 0 and rate == pytest.approx(1e6 / micros, rel=0.01)


def test_progress_is_on_by_default_when_stderr_is_a_terminal(tiny):
    import pty
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(LSTM_RUN + [str(tiny["sequence"]), "--stream"],
                              input=b"temperature,humidity\n1,2\n3,4\n", stdout=subprocess.PIPE,
                              stderr=slave, timeout=60, cwd=ROOT)
        os.close(slave)
        seen = b""
        while select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"\r\x1b[Klstm-run: 3 lines" in seen, seen          # redrawn in place, then ended
    assert b"lstm-run" not in proc.stdout and len(proc.stdout.splitlines()) == 3


# ---- detection, without a subprocess ------------------------------------------------------

@pytest.mark.parametrize("first, kind, header", [
    (b"2024-01-01T00:00:00Z,21,40", "time", False),          # a time, then the features
    (b"2024-01-01 00:00,21,", "time", False),                # a missing value is still a sample
    (b"2024-13-45,21,40", None, None),                       # not a date: a header, refused
    (b"2024-01-01,21", None, None),                          # one field short: refused
    (b"20240101,21,40", "headerless", False),                # all numbers: features only
])
def test_detect_recognises_a_leading_time_column_only_where_unambiguous(first, kind, header):
    if kind is None:
        with pytest.raises(lines.InputError):
            lines.detect(first, FEATURES, ("temperature",))
        return
    fmt, is_header = lines.detect(first, FEATURES, ("temperature",))
    assert is_header is header
    if kind == "time":
        assert fmt.columns == ["time", *FEATURES] and fmt.header() is None and fmt.note
    else:
        assert isinstance(fmt, lines.HeaderlessFormat)


def test_detect_with_columns():
    fmt, is_header = lines.detect(b"t,Humidity,temperature", FEATURES, ("temperature",),
                                  columns=("t", "humidity", "temperature"))
    assert is_header and fmt.header().startswith("t,humidity,temperature,step")
    fmt, is_header = lines.detect(b"x,1,2", FEATURES, ("temperature",),
                                  columns=("t", "humidity", "temperature"))
    assert not is_header and fmt.parse(1, b"x,1,2").values.tolist() == [2.0, 1.0]
    with pytest.raises(lines.InputError, match="JSON lines name their keys"):
        lines.detect(b'{"a": 1}', FEATURES, ("temperature",), columns=("a",))
