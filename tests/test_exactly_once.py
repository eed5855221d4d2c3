"""Exactly once per sensor on feeds that deliver twice, through real processes.

A real ``tail -n +1 -f`` over a growing file, its pipeline stopped (SIGTERM, ``kill -9``)
and started again three times, and a whole input resent after a ``kill -9`` at a random
point: each must end in what one uninterrupted run gives, every reading fed once. The
reference is ``lstm-run`` over the whole input in one run, without a state file.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

import runtime
from helpers import ATOL, LSTM_RUN, ROOT, RTOL, TIMEOUT, csv_rows, run, split_lines, tiny_onnx

START = datetime(2026, 3, 1, tzinfo=timezone.utc)
MODELS = {"sequence": dict(window=1, carry_state=True), "window": dict(window=3, carry_state=False),
          "stateful": dict(window=3, carry_state=True)}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("once")
    return {k: tiny_onnx(d / f"{k}.onnx", seed=i, **v) for i, (k, v) in enumerate(MODELS.items())}


def rows(n: int, sensors: int, seed: int = 0) -> list[dict]:
    """``n`` readings, sensors in turn, each sensor's times a minute apart."""
    rng = np.random.default_rng(seed)
    return [{"time": (START + timedelta(minutes=i // sensors)).isoformat(),
             "sensor": f"s{i % sensors}", "temperature": round(float(rng.normal(21, 3)), 2),
             "humidity": round(float(rng.normal(45, 8)), 2)} for i in range(n)]


def text(data: list[dict], jsonl: bool = False) -> bytes:
    if jsonl:
        return "".join(json.dumps(r) + "\n" for r in data).encode()
    head = "time,sensor,temperature,humidity\n"
    return (head + "".join(f"{r['time']},{r['sensor']},{r['temperature']},{r['humidity']}\n"
                           for r in data)).encode()


def answers(out: str, jsonl: bool = False) -> list[dict]:
    if jsonl:
        return [json.loads(line) for line in split_lines(out)]
    return csv_rows(out)


def by_reading(found: list[dict]) -> dict[tuple, tuple]:
    """(sensor, time) -> (step, prediction) of the answers that carry one."""
    return {(a["sensor"], a["time"]): (str(a["step"]), str(a["pred_temperature"]))
            for a in found if str(a.get("step", "")) not in ("", "None")}


def same_states(db: Path, reference: Path) -> None:
    got, want = runtime.load_snapshots(db), runtime.load_snapshots(reference)
    assert sorted(got) == sorted(want)
    for key, snap in want.items():
        mine = got[key]
        assert (mine.steps, mine.position) == (snap.steps, snap.position), key
        np.testing.assert_array_equal(mine.buffer, snap.buffer)
        for name, value in snap.state.items():
            np.testing.assert_allclose(mine.state[name], value, rtol=RTOL, atol=ATOL)


# ---- a restarted tail -f ----------------------------------------------------------------

class Reader:
    """A live process's stdout, read line by line within a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.buf = proc, b""

    def read(self, n: int, timeout: float = TIMEOUT) -> list[str]:
        """The first ``n`` lines the process wrote."""
        deadline, fd = time.monotonic() + timeout, self.proc.stdout.fileno()
        while self.buf.count(b"\n") < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            assert ready, f"fewer than {n} answers within {timeout} s: {self.buf[-300:]!r}"
            chunk = os.read(fd, 65536)
            assert chunk, f"the process ended early: {self.proc.stderr.read()!r}"
            self.buf += chunk
        return self.buf.decode().split("\n")[:n]


class Pipeline(Reader):
    """``tail -n +1 -f FILE | lstm-run ... --state DB``, in its own process group."""

    def __init__(self, model: Path, log: Path, db: Path):
        command = (f"tail -n +1 -f {log} | {' '.join(LSTM_RUN)} {model} --stream "
                   f"--stream-column sensor --state {db} --save-every 1 --device cpu")
        super().__init__(subprocess.Popen(command, shell=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, start_new_session=True,
                                          cwd=ROOT))

    def stop(self, sig: int) -> str:
        """Signal tail and lstm-run alike; lstm-run's stderr."""
        os.killpg(self.proc.pid, sig)
        self.proc.wait(TIMEOUT)
        return self.proc.stderr.read().decode()


def test_a_restarted_tail_f_feeds_each_reading_once(models, tmp_path):
    data = rows(80, sensors=3)
    log, db = tmp_path / "feed.csv", tmp_path / "state.db"
    whole, _ = run([models["stateful"], "--stream-column", "sensor", "--device", "cpu"],
                   text(data))
    reference = by_reading(csv_rows(whole))
    log.write_bytes(text(data[:20]))
    seen: list[dict] = []
    stops = [signal.SIGTERM, signal.SIGKILL, signal.SIGTERM, signal.SIGTERM]
    for run_no, (upto, sig) in enumerate(zip((20, 40, 60, 80), stops)):
        if run_no:
            with log.open("ab") as f:                        # the file grew while we were down
                f.write(text(data[upto - 20:upto]).split(b"\n", 1)[1])
        pipe = Pipeline(models["stateful"], log, db)
        got = csv_rows("\n".join(pipe.read(upto + 1)) + "\n")  # tail resends the whole file
        err = pipe.stop(sig)
        assert "Traceback" not in err, err
        assert len(got) == upto
        marks = [g["order"] for g in got]
        if run_no in (1, 3):                                 # after a SIGTERM: all was saved
            assert marks.count("replay") == 3, marks         # each sensor's last reading
            assert all(m.startswith("skipped: ") for m in marks[:upto - 20 - 3])
            assert all(m == "" for m in marks[upto - 20:]), marks
        if sig == signal.SIGTERM and run_no:                 # the summary, at every end
            assert "sensor 's0': 1 replayed reading(s) answered as before" in err, err
        for g in got:
            if g["order"] == "replay" or g["order"] == "":   # a step: the uninterrupted one's
                assert (g["step"], g["pred_temperature"]) == reference[(g["sensor"],
                                                                        g["time"])], g
            else:
                assert g["step"] == "" and g["pred_temperature"] == "", g
        seen += got
    assert by_reading([g for g in seen if g["order"] == ""]) == reference   # every one fed
    final = tmp_path / "reference.db"
    run([models["stateful"], "--stream-column", "sensor", "--device", "cpu", "--state", final],
        text(data))
    same_states(db, final)


# ---- a whole input resent after kill -9 -------------------------------------------------

def send(proc: subprocess.Popen, data: bytes) -> None:
    """Write ``data`` to the process's stdin; a process killed meanwhile takes what it took."""
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
    except BrokenPipeError:
        pass

@pytest.mark.parametrize("sensors", [1, 1000])
@pytest.mark.parametrize("jsonl", [False, True], ids=["csv", "jsonl"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_resending_everything_after_kill_9_gives_the_uninterrupted_state(
        models, tmp_path, kind, jsonl, sensors):
    data = rows(40 if sensors == 1 else 3 * sensors, sensors, seed=sensors)
    body = text(data, jsonl)
    args = [models[kind], "--stream-column", "sensor", "--device", "cpu", "--state"]
    reference = tmp_path / "reference.db"
    whole, _ = run(args + [reference], body)
    cut = int(np.random.default_rng(len(data)).integers(1, len(data)))   # answers to wait for
    db = tmp_path / "state.db"
    proc = subprocess.Popen(LSTM_RUN + [str(a) for a in args + [db, "--stream", "--save-every",
                                                                "1"]],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    head = b"\n".join(body.split(b"\n")[:cut + (0 if jsonl else 1)]) + b"\n"
    writer = threading.Thread(target=send, args=(proc, head))   # the pipes fill both ways
    writer.start()
    Reader(proc).read(cut + (0 if jsonl else 1))
    proc.kill()                                                  # kill -9 mid-stream
    proc.wait(TIMEOUT)
    writer.join(TIMEOUT)
    again, _ = run(args + [db], body)                             # everything again
    same_states(db, reference)
    want = by_reading(answers(whole, jsonl))
    found = answers(again, jsonl)
    assert len(found) == len(data)
    for a in found:
        if str(a.get("order", "")) in ("", "replay", "None"):
            assert by_reading([a]) == {k: want[k] for k in by_reading([a])}, a
        else:
            assert a["order"].startswith("skipped: "), a


def test_no_order_check_feeds_every_line_as_it_comes(models):
    data = rows(6, sensors=1)
    twice = text(data) + text(data).split(b"\n", 1)[1]        # every line again
    args = [models["sequence"], "--stream-column", "sensor", "--device", "cpu"]
    out, err = run(args + ["--no-order-check"], twice)
    got = csv_rows(out)
    assert "order" not in got[0] and [g["step"] for g in got] == [str(i) for i in range(1, 13)]
    assert "replayed" not in err
    out, err = run(args, twice)
    got = csv_rows(out)
    assert [g["order"] for g in got[6:]] == ["skipped: not after this sensor's last reading "
                                             f"(time {data[-1]['time'][:19]}Z)"] * 5 + ["replay"]
    assert got[11]["step"] == got[5]["step"] == "6" and "1 replayed reading(s)" in err


def test_a_clock_that_jumps_beyond_2_to_the_53_is_refused_not_made_a_position(models):
    """A clock that jumps to 1e30 s gets an error record (it was fed and became the sensor's
    position, so every later true time was skipped as older); the next line is fed."""
    data = b"time,sensor,temperature,humidity\n" \
        b"2024-01-01T00:00:00,a,21,40\n1e30,a,22,41\n2024-01-01T00:01:00,a,23,42\n"
    out, err = run([models["sequence"], "--stream-column", "sensor", "--device", "cpu"], data)
    got = csv_rows(out)
    assert [g["step"] for g in got] == ["1", "", "2"]
    assert "'1e30' is 2**53 or more" in got[1]["error"] and "skipped" not in err


def test_a_found_time_column_refuses_a_line_without_a_time_so_a_resend_feeds_nothing_twice(
        models, tmp_path):
    """A column found by its name (``time``) holds each line's position once its first value
    is a time: a later line whose time is not one gets an error record instead of being fed
    unchecked, so resending the whole input with --state feeds no reading twice."""
    data = b"time,sensor,temperature,humidity\n2024-01-01T00:00:00,a,21,40\nbad5,a,22,41\n" \
        b"2024-13-01T00:02:00,a,23,42\n2024-01-01T00:03:00,a,24,43\n"
    db = tmp_path / "state.db"
    args = [models["sequence"], "--stream-column", "sensor", "--device", "cpu", "--state", db]
    out, err = run(args, data)
    got = csv_rows(out)
    assert [g["step"] for g in got] == ["1", "", "", "2"]
    assert "time column 'time': 'bad5' is not a number or an ISO-8601 time" in got[1]["error"]
    assert "'2024-13-01T00:02:00' is not a number" in got[2]["error"]
    assert "2 of 5 lines were refused" in err   # the header is a line
    again, err = run(args, data)                      # the logger uploads its file again
    assert [g["step"] for g in csv_rows(again)] == ["", "", "", "2"]
    assert "1 older reading(s) skipped" in err and "1 replayed reading(s)" in err


def test_a_column_named_time_that_holds_no_times_turns_the_check_off_and_says_so(models):
    """Where the first good line's ``time`` is not a time, the column is not a time column:
    every line is fed as it comes (as before), and stderr says once that nothing is checked."""
    data = b"time,sensor,temperature,humidity\nmorning,a,21,40\n2024-01-01T00:00:00,a,22,41\n" \
        b"morning,a,21,40\n"
    out, err = run([models["sequence"], "--stream-column", "sensor", "--device", "cpu"], data)
    assert [g["step"] for g in csv_rows(out)] == ["1", "2", "3"]
    assert err.count("no order check: column 'time' holds 'morning'") == 1, err
    assert "--time-column" in err and "refused" not in err


def test_a_line_cut_short_at_the_end_of_the_input_is_not_fed_and_the_whole_line_is_later(
        models, tmp_path):
    """A feed that dies mid-line (``--endless``: a killed ``tail -f``) leaves ``...,2`` of
    ``...,23.5,42``. With --state it gets an error record and is not saved as fed, so the
    whole line sent again is fed once: the answers equal one uninterrupted run's. Without
    --state (nothing saved) it is fed as before."""
    data = text(rows(6, 1))
    whole = csv_rows(run([models["sequence"], "--device", "cpu"], data)[0])
    cut = data[:-5]                                       # the last line without its tail
    db = tmp_path / "state.db"
    args = [models["sequence"], "--device", "cpu", "--state", db]
    first, err = run(args + ["--endless"], cut, code=75)
    got = csv_rows(first)
    assert [g["step"] for g in got] == ["1", "2", "3", "4", "5", ""]
    assert "the input ended in the middle of this line" in got[-1]["error"]
    again, _ = run(args, data)                           # the feed restarts from the top
    assert [g["step"] for g in csv_rows(again)] == ["", "", "", "", "5", "6"]
    assert csv_rows(again)[-1]["pred_temperature"] == whole[-1]["pred_temperature"]
    plain = csv_rows(run([models["sequence"], "--device", "cpu"], cut)[0])
    assert plain[-1]["step"] == "6" and not plain[-1]["error"]


def test_a_sequence_number_the_state_cannot_keep_is_an_error_record(models, tmp_path):
    """2**63 does not fit the state's int64 positions: an error record, and the state saves."""
    data = b"seq,temperature,humidity\n9223372036854775808,21,40\n9223372036854775807,22,41\n"
    args = [models["sequence"], "--device", "cpu", "--seq-column", "seq",
            "--state", tmp_path / "state.db"]
    got = csv_rows(run(args, data)[0])
    assert [g["step"] for g in got] == ["", "1"] and "out of range" in got[0]["error"]
    assert [g["order"] for g in csv_rows(run(args, data)[0])] == ["", "replay"]


def test_a_header_repeated_by_a_restarted_logger_is_answered_with_the_header(models):
    """A CSV feed whose logger restarted writes its header again: the header comes back, as
    for the first one; no error record, so --strict goes on."""
    data = text(rows(2, 1)) + text(rows(4, 1))          # then it uploads its file again
    out, err = run([models["sequence"], "--device", "cpu", "--strict"], data)
    lines = split_lines(out)
    assert lines[0] == lines[3] and lines[0].startswith("time,sensor,temperature,humidity,step")
    assert [g["step"] for g in csv_rows(out) if g["time"] != "time"] == ["1", "2", "", "2",
                                                                        "3", "4"]
    assert "refused" not in err


def test_json_sensors_without_times_leave_the_order_check_on_for_those_with_them(
        models, tmp_path):
    """JSON lines (and MQTT payloads) of many sensors: one that sends no time must neither
    turn the check off for the others (a redelivered reading of theirs was fed twice when
    its line came first) nor be refused once another sensor's time is found. A sensor that
    had a position refuses a line without one, as before."""
    timed = [{"sensor": "p", "time": f"2026-03-01T00:0{i}:00", "temperature": 20.0 + i,
              "humidity": 40.0} for i in range(3)]
    bare = [{"sensor": "legacy", "temperature": 21.0 + i, "humidity": 41.0} for i in range(2)]
    args = [models["sequence"], "--device", "cpu", "--stream-column", "sensor",
            "--state", tmp_path / "state.db"]
    first = "".join(json.dumps(r) + "\n" for r in timed[:2]).encode()
    run(args, first)
    # after a restart the broker delivers the legacy sensor first, then p's last reading again
    again = [bare[0], timed[1], timed[2], bare[1], {"sensor": "p", "temperature": 1.0,
                                                     "humidity": 1.0}]
    out, err = run(args, "".join(json.dumps(r) + "\n" for r in again).encode())
    got = answers(out, jsonl=True)
    assert [g.get("step") for g in got] == [1, 2, 3, 2, None]
    assert got[1]["order"] == "replay" and "no 'time' key" in got[4]["error"]
    assert err.count("sensor 'legacy': its lines have no 'time' key") == 1, err


def test_epoch_nanoseconds_are_refused_where_they_cannot_be_told_apart(models):
    """Times of 2**53 or more (epoch nanoseconds) round together as float64 seconds, so two
    readings 1 ns apart looked like one reading sent twice with other values: with
    --time-column each gets an error record that names the cause; milliseconds work."""
    ns = b"time,temperature,humidity\n1772323200000000000,21,40\n1772323200000000001,22,41\n"
    got = csv_rows(run([models["sequence"], "--device", "cpu", "--time-column", "time"], ns)[0])
    assert [g["step"] for g in got] == ["", ""] and "epoch nanoseconds" in got[0]["error"]
    ms = b"time,temperature,humidity\n1772323200000,21,40\n1772323200001,22,41\n"
    got = csv_rows(run([models["sequence"], "--device", "cpu", "--time-column", "time"], ms)[0])
    assert [g["step"] for g in got] == ["1", "2"]


def test_a_month_column_orders_the_readings_and_no_time_column_is_said(models, tmp_path):
    """``1949-01`` (ISO 8601's month, the airline CSV's) is a time: a resend is replayed or
    skipped, not fed again. Without any time column, --state says once that a line sent
    again is fed again, and how to name the column; --no-order-check says it is meant."""
    data = ("month,temperature,humidity\n"
            "1949-01,21.5,40.1\n1949-02,22.0,41.0\n1949-03,21.0,44.0\n").encode()
    state = tmp_path / "m.db"
    first, _ = run([models["sequence"], "--time-column", "month", "--state", state], data)
    again, _ = run([models["sequence"], "--time-column", "month", "--state", state], data)
    assert [r["order"] for r in csv_rows(again)] == ["skipped: not after this sensor's last "
                                                     "reading (month 1949-03-01T00:00:00Z)"] * 2 \
        + ["replay"]
    assert csv_rows(again)[-1]["pred_temperature"] == csv_rows(first)[-1]["pred_temperature"]
    plain = data.replace(b"month", b"label")
    _, err = run([models["sequence"], "--state", tmp_path / "n.db"], plain)
    assert err.count("no order check: the input has no time column") == 1, err
    assert "--time-column or --seq-column" in err
    _, err = run([models["sequence"], "--state", tmp_path / "o.db", "--no-order-check"], plain)
    assert "no order check" not in err, err
