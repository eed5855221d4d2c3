"""A sensor dropped by ``--idle-timeout`` or ``--max-streams`` keeps its position (``--state``).

Its model state goes, but what the order check needs stays (the position, the last reading
and its answer), in memory and then in the state file's ``positions`` table: a resend of its
old readings (a restarted ``tail -n +1 -F``, a logger's re-upload) is answered as replays and
skipped lines, never fed again, whether the drop was in this run or one before; a new
reading of it afterwards is fed from a fresh state, as a sensor never seen is.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

from helpers import FLOW, LSTM_RUN, ROOT, TIMEOUT, WATER_MODEL, run, split_lines

COLUMNS = f"time,sensor,{FLOW}"
OLD = [f"2022-03-20T1{h}:00:00Z,A,100.{h}" for h in range(3)] + \
      ["2022-03-20T10:00:00Z,B,100.5", "2022-03-20T10:00:00Z,C,100.7"]
NEW_A = "2022-03-20T13:00:00Z,A,100.4"


def args(state: Path, *more: str) -> list[str]:
    return [WATER_MODEL, "--stream", "--columns", COLUMNS, "--stream-column", "sensor",
            "--state", state, *more]


def one_by_one(state: Path, lines: list[str], *more: str,
               pause: dict[int, float] | None = None) -> tuple[list[list[str]], str]:
    """lstm-run fed one line at a time (each its own batch, its answer read before the
    next); ``pause``: seconds to wait before line i. The answers' fields and stderr."""
    proc = subprocess.Popen(LSTM_RUN + [str(a) for a in args(state, *more)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    answers = []
    try:
        for i, line in enumerate(lines):
            time.sleep((pause or {}).get(i, 0))
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            answers.append(proc.stdout.readline().decode().rstrip("\n").split(","))
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 0 and b"Traceback" not in err, err.decode()
    return answers, err.decode()


def resent(state: Path, *more: str) -> list[list[str]]:
    """The whole logger file sent again in one go: every line a replay or skipped."""
    out, _ = run(args(state, *more), "\n".join(OLD).encode() + b"\n")
    return [line.split(",") for line in split_lines(out)]


def fresh_answer(line: str) -> list[str]:
    """The answer a sensor never seen gets to ``line``."""
    out, _ = run([WATER_MODEL, "--stream", "--columns", COLUMNS, "--stream-column", "sensor"],
                 line.encode() + b"\n")
    return out.rstrip("\n").split(",")


def assert_nothing_fed_again(again: list[list[str]], first: list[list[str]]) -> None:
    by_line = dict(zip(OLD, first))
    for line, answer in zip(OLD, again):
        order = answer[6]
        if order == "replay":                       # the answer it got, step included
            assert answer[:6] == by_line[line][:6], (line, answer)
        else:
            assert order.startswith("skipped: not after"), (line, answer)
    assert [a[6] for a in again] == ["skipped: not after this sensor's last reading (time "
                                     "2022-03-20T12:00:00Z)"] * 2 + ["replay"] * 3


def test_a_sensor_dropped_for_idleness_is_not_fed_again_after_a_restart(tmp_path):
    state = tmp_path / "state.db"
    # A's readings, then a pause longer than --idle-timeout, then B and C: A is dropped
    first, err = one_by_one(state, OLD, "--idle-timeout", "0.5", pause={3: 1.2})
    assert "dropped stream 'A': no line for 0.5 s" in err
    assert [a[3] for a in first] == ["1", "2", "3", "1", "1"]
    with sqlite3.connect(state) as db:
        kept = db.execute("SELECT key, steps, position FROM positions").fetchall()
        rows = db.execute("SELECT key FROM streams ORDER BY key").fetchall()
    assert kept == [("A", 3, 1647777600.0)] and rows == [("B",), ("C",)]
    # the service restarts: tail -n +1 sends the logger's whole file again
    assert_nothing_fed_again(resent(state, "--idle-timeout", "60"), first)
    # A comes back with a new reading: fed from a fresh state, its position row gone
    back, _ = run(args(state), NEW_A.encode() + b"\n")
    assert back.rstrip("\n").split(",") == fresh_answer(NEW_A)
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT key FROM positions").fetchall() == []
        assert db.execute("SELECT steps, position FROM streams WHERE key = 'A'").fetchall() \
            == [(1, 1647781200.0)]
    again = resent(state)                  # A's old readings: older than its new one
    assert [a[6] for a in again[:3]] == ["skipped: not after this sensor's last reading "
                                         "(time 2022-03-20T13:00:00Z)"] * 3


def test_a_sensor_pushed_out_by_max_streams_keeps_its_position_in_the_run(tmp_path):
    state = tmp_path / "state.db"
    # A at 10:00, 11:00; B and C push A out of a table of 2; A's 11:00 and 10:00 sent again
    lines = OLD[:2] + OLD[3:] + [OLD[1], OLD[0]]
    first, err = one_by_one(state, lines, "--max-streams", "2")
    assert "dropped stream 'A': the least recently seen" in err
    assert [(a[3], a[6]) for a in first] == [("1", ""), ("2", ""), ("1", ""), ("1", ""),
                                             ("2", "replay"), ("", "skipped: not after this "
                                             "sensor's last reading (time 2022-03-20T11:00:00Z)")]
    assert first[4][:6] == first[1][:6]
    # the next run: A's 12:00 reading is new (fed fresh, step 1), the rest replays
    again = resent(state, "--max-streams", "2")
    assert [(a[3], a[6]) for a in again] == [
        ("", "skipped: not after this sensor's last reading (time 2022-03-20T11:00:00Z)"),
        ("2", "replay"), ("1", ""), ("1", "replay"), ("1", "replay")]
    assert again[2] == fresh_answer(OLD[2])
