"""The ``--state`` database and the order answers-then-state, against real processes and pipes.

A slow reader, a reader that stalls and one that goes away are separate processes reading
lstm-run's stdout through a real pipe, with ``PYTHONUNBUFFERED`` set (stdout a raw file)
and unset. Every resume is checked against one uninterrupted run of the same lines.
"""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.serve import ServeConfig, Server
from runtime.store import StateStore

from helpers import ATOL, LSTM_RUN, RTOL, TIMEOUT, csv_rows, tiny_onnx

ROOT = Path(__file__).resolve().parent.parent
UNBUFFERED = pytest.mark.parametrize("unbuffered", ["1", None], ids=["PYTHONUNBUFFERED", "buffered"])

# A reader at the other end of lstm-run's stdout: copies what it reads to a file.
#   slow N:  N bytes at a time, 5 ms apart
#   stall N: stops after N bytes for 5 s (longer than lstm-run's grace), then reads the rest
#   close N: exits after N complete lines
READER = r"""
import os, sys, time
out = open(sys.argv[1], "wb", buffering=0)
mode, n = sys.argv[2], int(sys.argv[3])
got = lines = 0
while True:
    if mode == "stall" and got >= n:
        time.sleep(5)
        mode = "slow"
    data = os.read(0, 4096 if mode != "close" else 1)
    if not data:
        break
    out.write(data)
    got += len(data)
    lines += data.count(b"\n")
    if mode == "close" and lines >= n:
        break
    if mode == "slow":
        time.sleep(0.005)
"""


def env_with(unbuffered):
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    return env


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("store-model") / "tiny.onnx")


def rows_for(n: int, sensors=("a",), seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"t{i},{sensors[i % len(sensors)]},{rng.normal(21, 3):.3f},{rng.normal(45, 8):.3f}"
            for i in range(n)]


def csv_of(rows: list[str]) -> bytes:
    return ("time,sensor,temperature,humidity\n" + "\n".join(rows) + "\n").encode()


def whole_run(model: Path, rows: list[str]) -> dict[tuple[str, int], float]:
    """(sensor, step) -> prediction of one uninterrupted run."""
    proc = subprocess.run(LSTM_RUN + [str(model), "--stream-column", "sensor"],
                          input=csv_of(rows), capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode()
    return answers(proc.stdout.decode())


def answers(text: str) -> dict[tuple[str, int], float]:
    out = {}
    for r in csv_rows(text):
        if r.get("step"):
            out[(r["sensor"], int(r["step"]))] = float(r["pred_temperature"])
    return out


def committed(state: Path) -> dict[str, int]:
    return {k: s.steps for k, s in runtime.load_snapshots(state).items()}


def complete_text(data: bytes) -> str:
    """The complete lines of what a reader got (a last partial line is not an answer)."""
    return data[:data.rfind(b"\n") + 1].decode()


def resume_matches(model: Path, state: Path, rows: list[str], whole: dict) -> bool:
    """Resume from ``state`` with each sensor's lines after its committed step; the answers
    are those of the uninterrupted run."""
    steps = committed(state) if state.exists() else {}
    seen: dict[str, int] = {}
    rest = []
    for row in rows:
        sensor = row.split(",")[1]
        seen[sensor] = seen.get(sensor, 0) + 1
        if seen[sensor] > steps.get(sensor, 0):
            rest.append(row)
    if not rest:
        return False
    proc = subprocess.run(LSTM_RUN + [str(model), "--stream-column", "sensor", "--state",
                                      str(state)], input=csv_of(rest), capture_output=True,
                          timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr.decode()
    got = answers(proc.stdout.decode())
    assert len(got) == len(rest)
    keys = sorted(got)
    np.testing.assert_allclose([got[k] for k in keys], [whole[k] for k in keys],
                               rtol=RTOL, atol=ATOL)
    return True


def stop(*procs: subprocess.Popen) -> None:
    """Kill whatever of ``procs`` still runs (a failed test must leave no process behind)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def start_reader(mode: str, n: int, sink: Path, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", READER, str(sink), mode, str(n)],
                            stdin=subprocess.PIPE, env=env)


# ---- item 2: answers out, then the state; a slow or stalled reader; SIGTERM -----------

@UNBUFFERED
@pytest.mark.parametrize("mode", ["slow", "stall"])
def test_sigterm_while_the_reader_is_slow(model, tmp_path, unbuffered, mode):
    rows = rows_for(20000)
    source = tmp_path / "in.csv"
    source.write_bytes(csv_of(rows))
    sink, state = tmp_path / "got.csv", tmp_path / "state.db"
    reader = start_reader(mode, 100_000, sink, env_with(unbuffered))
    proc = subprocess.Popen(LSTM_RUN + [str(model), "--stream-column", "sensor", "--state",
                                        str(state), "-i", str(source)],
                            stdout=reader.stdin, stderr=subprocess.PIPE, cwd=ROOT,
                            env=env_with(unbuffered))
    reader.stdin.close()
    try:
        deadline = time.monotonic() + 30
        while (not sink.exists() or sink.stat().st_size < 100_000) \
                and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(0.5)               # the stalled reader's pipe fills, lstm-run blocks
        assert proc.poll() is None, "lstm-run finished before the signal"
        proc.send_signal(signal.SIGTERM)
        proc.wait(TIMEOUT)
        reader.wait(TIMEOUT)
    finally:
        stop(proc, reader)
    err = proc.stderr.read().decode()
    assert proc.returncode == 143 and "Traceback" not in err, err
    got = answers(complete_text(sink.read_bytes()))
    delivered = max(step for _, step in got)
    saved = committed(state).get("a", 0) if state.exists() else 0
    assert saved <= delivered                     # never an answer that did not go out
    if mode == "slow":
        assert saved == delivered                 # the reader took them all: all counted
    else:   # the 2 s grace ran out: said, not timed here (timings live in bench.state)
        assert "did not take the last answers" in err
    resume_matches(model, state, rows, whole_run(model, rows))


@UNBUFFERED
def test_a_reader_that_goes_away_gives_141_and_counts_what_it_got(model, tmp_path, unbuffered):
    rows = rows_for(40, sensors=("a", "b"))
    sink, state = tmp_path / "got.csv", tmp_path / "state.db"
    k = 15
    reader = start_reader("close", 1 + k, sink, env_with(unbuffered))
    proc = subprocess.Popen(LSTM_RUN + [str(model), "--stream", "--stream-column", "sensor",
                                        "--state", str(state), "--save-interval", "0"],
                            stdin=subprocess.PIPE, stdout=reader.stdin, stderr=subprocess.PIPE,
                            cwd=ROOT, env=env_with(unbuffered))
    reader.stdin.close()
    data = csv_of(rows).splitlines(keepends=True)
    try:
        proc.stdin.write(b"".join(data[:1 + k]))
        proc.stdin.flush()
        reader.wait(TIMEOUT)                      # it read its k answers and went away
        with pytest.raises((BrokenPipeError, OSError)):
            for line in data[1 + k:] * 50:        # until lstm-run notices and exits
                proc.stdin.write(line)
                proc.stdin.flush()
                time.sleep(0.02)                  # one line a batch: the first is 'b''s
        proc.wait(TIMEOUT)
    finally:
        stop(proc, reader)
    err = proc.stderr.read().decode()
    assert proc.returncode == 141 and "Traceback" not in err, err
    got = answers(complete_text(sink.read_bytes()))
    assert len(got) == k
    # The state counts no answer the reader did not take. The sensor whose answers were cut
    # off ('b', line k + 2) keeps its last saved row (none here: no save before); the other
    # one counts exactly its answers.
    steps = committed(state)
    assert steps.get("b", 0) == 0 and steps["a"] == max(s for (x, s) in got if x == "a")
    resume_matches(model, state, rows, whole_run(model, rows))


# ---- item 6 and 11: kill -9 at any moment; resume exactly from the step counts ---------

def test_kill_9_at_any_moment_resumes_exactly(model, tmp_path):
    rows = rows_for(6000, sensors=tuple("abcdefgh"), seed=3)
    whole = whole_run(model, rows)
    state = tmp_path / "state.db"
    todo, delivered = rows, {}
    for delay in (0.2, 0.05, 0.3, 0.1):
        proc = subprocess.Popen(LSTM_RUN + [str(model), "--stream", "--stream-column", "sensor",
                                            "--state", str(state), "--save-every", "1"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=ROOT)

        data = csv_of(todo)

        def feed(proc=proc, data=data):
            try:
                for i in range(0, len(data), 512):
                    proc.stdin.write(data[i:i + 512])
                    proc.stdin.flush()
                    time.sleep(0.002)
            except (BrokenPipeError, OSError):
                pass

        writer = threading.Thread(target=feed)
        writer.start()
        out, first = b"", None
        fd = proc.stdout.fileno()
        while True:                                    # read until `delay` after the 1st answer
            left = TIMEOUT if first is None else first + delay - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out += chunk
                first = first or time.monotonic()
        proc.kill()
        proc.wait()
        out += proc.stdout.read()
        writer.join()
        # The database opens, is whole, and holds no more than what was answered.
        db = sqlite3.connect(state)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        db.close()
        assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".converting"))]
        got = answers(complete_text(out))
        for sensor, step in got:
            delivered[sensor] = max(delivered.get(sensor, 0), step)
        for sensor, steps in committed(state).items():
            assert steps <= delivered[sensor]     # the state never runs ahead of the answers
        for key, value in got.items():
            np.testing.assert_allclose(value, whole[key], rtol=RTOL, atol=ATOL)
        steps = committed(state)
        seen: dict[str, int] = {}
        todo = []
        for row in rows:
            sensor = row.split(",")[1]
            seen[sensor] = seen.get(sensor, 0) + 1
            if seen[sensor] > steps.get(sensor, 0):
                todo.append(row)
    if resume_matches(model, state, rows, whole):
        # a run that ends normally folds the WAL back into the file
        assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db"]


# ---- saves write only what changed -----------------------------------------------------

def test_a_save_writes_only_the_sensors_that_changed(model, tmp_path):
    m = runtime.load(model, device="cpu")
    state = tmp_path / "state.db"
    server = Server(m, ServeConfig(stream_column="sensor", state=state))
    server.load_state()
    lines = [(1, b"time,sensor,temperature,humidity")]
    lines += [(i + 2, f"t,{s},21,40".encode()) for i, s in enumerate("abcabc")]
    server.handle(lines)
    server.delivered()
    server.save_state()

    def rows():
        db = sqlite3.connect(state)
        try:
            return {r[0]: r for r in db.execute("SELECT * FROM streams")}
        finally:
            db.close()

    before = rows()
    changes = server.store.db.total_changes
    server.handle([(20, b"t,b,22,41")])
    server.delivered()
    server.save_state()
    after = rows()
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert after["b"] != before["b"] and after["b"][2] == 3 and after["b"][8] == 20
    assert server.store.db.total_changes - changes == 1 + 5     # one row, the meta values
    server.save_state()                                          # nothing changed: no commit
    assert server.store.db.total_changes - changes == 6
    server.close()


def test_a_full_disk_keeps_the_last_save(model, tmp_path):
    m = runtime.load(model, device="cpu")
    state = tmp_path / "state.db"
    server = Server(m, ServeConfig(stream_column="sensor", state=state))
    server.load_state()
    server.handle([(1, b"time,sensor,temperature,humidity"), (2, b"t,a,21,40")])
    server.delivered()
    server.save_state()
    pages = server.store.db.execute("PRAGMA page_count").fetchone()[0]
    server.store.db.execute(f"PRAGMA max_page_count = {pages}")   # the disk is full now
    server.handle([(i + 3, f"t,s{i},21,40".encode()) for i in range(3000)])
    server.delivered()
    with pytest.raises(runtime.SnapshotError, match="could not be saved.*full"):
        server.save_state()
    server.store.close()
    assert committed(state) == {"a": 1}


# ---- old npz files, leftovers ----------------------------------------------------------

def test_an_npz_state_file_is_converted_once_and_resumes(model, tmp_path):
    rows = rows_for(30, sensors=("a", "b"), seed=5)
    whole = whole_run(model, rows)
    m = runtime.load(model, device="cpu")
    streams = {"a": m.stream(), "b": m.stream()}
    for row in rows[:10]:                     # what lstm-run of old left in its npz
        _, sensor, t, h = row.split(",")
        streams[sensor].step([float(t), float(h)])
    state = tmp_path / "state.npz"
    runtime.save_snapshots(state, {k: s.snapshot() for k, s in streams.items()})
    leftover = tmp_path / ".state.npz.0badc0de.tmp"           # a save killed long ago
    leftover.write_bytes(b"half")
    keep = tmp_path / ".state.npz.notours.tmp"
    keep.write_bytes(b"someone else's")
    halfway = [tmp_path / "state.npz.converting", tmp_path / "state.npz.converting-wal"]
    for path in halfway:                                       # a conversion killed midway
        path.write_bytes(b"half a database")
    proc = subprocess.run(LSTM_RUN + [str(model), "--stream-column", "sensor", "--state",
                                      str(state)], input=csv_of(rows[10:20]),
                          capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "converted" in err, err
    assert state.read_bytes()[:16] == b"SQLite format 3\x00"
    assert not leftover.exists() and keep.exists()
    assert not any(path.exists() for path in halfway)
    got = answers(proc.stdout.decode())
    assert sorted(s for _, s in got) == sorted(s for (k, s) in whole if 5 < s <= 10)
    for key, value in got.items():
        np.testing.assert_allclose(value, whole[key], rtol=RTOL, atol=ATOL)
    proc = subprocess.run(LSTM_RUN + [str(model), "--stream-column", "sensor", "--state",
                                      str(state)], input=csv_of(rows[20:]),
                          capture_output=True, timeout=TIMEOUT, cwd=ROOT)
    assert proc.returncode == 0 and "converted" not in proc.stderr.decode()
    assert committed(state) == {"a": 15, "b": 15}


def test_the_store_reads_back_what_streams_hold(model, tmp_path):
    """Rows round-trip bit for bit through save and load, window buffer and all."""
    for window, carry in ((1, True), (3, False), (3, True)):
        m = runtime.load(model, device="cpu", window=window, carry_state=carry)
        streams = {f"s{i}": m.stream() for i in range(5)}
        rng = np.random.default_rng(window)
        for i, s in enumerate(streams.values()):
            s.feed(rng.normal(21, 3, (i + 1, 2)))
        m.step(list(streams.values())[2:], rng.normal(21, 3, (3, 2)))   # some in a group
        path = tmp_path / f"w{window}{carry}.db"
        store = StateStore(path, m)
        store.save((k, s, 0.0, 1) for k, s in streams.items())
        store.close()
        store = StateStore(path, m)
        loaded = {k: s for k, s, _ in store.load()}
        store.close()
        for key, stream in streams.items():
            a, b = stream.snapshot(), loaded[key].snapshot()
            assert a.steps == b.steps
            np.testing.assert_array_equal(a.buffer, b.buffer)
            for name in a.state:
                np.testing.assert_array_equal(a.state[name], b.state[name])
            x = rng.normal(21, 3, 2)
            np.testing.assert_array_equal(stream.step(x), loaded[key].step(x))


@UNBUFFERED
def test_a_non_blocking_stdout_with_a_slow_reader_gets_every_answer(model, unbuffered):
    """Short writes and EAGAIN are waited out, never taken for an unwritable output."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    rows = rows_for(5000)
    proc = subprocess.Popen(LSTM_RUN + [str(model), "--stream-column", "sensor"],
                            stdin=subprocess.PIPE, stdout=w, stderr=subprocess.PIPE, cwd=ROOT,
                            env=env_with(unbuffered))
    os.close(w)
    writer = threading.Thread(target=lambda: (proc.stdin.write(csv_of(rows)), proc.stdin.close()))
    writer.start()
    got = b""
    try:
        while True:
            time.sleep(0.01)                        # a slow reader: the pipe fills up
            chunk = os.read(r, 8192)
            if not chunk:
                break
            got += chunk
        proc.wait(TIMEOUT)
    finally:
        os.close(r)
        writer.join()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode()
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert len(answers(got.decode())) == len(rows)
