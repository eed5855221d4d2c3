"""Times without a UTC offset are read as UTC, and stderr says so once (a user trial: a
logger writing local clock time lost its repeated daylight-saving hour without a word)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "exported" / "water-flow.onnx"
LSTM_RUN = [sys.executable, "-m", "runtime.cli"]
HEADER = "Time,Water flow [l/s]\n"


def run(text: str) -> tuple[list[str], list[str]]:
    done = subprocess.run([*LSTM_RUN, str(MODEL)], input=text.encode(), capture_output=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().splitlines(), done.stderr.decode().splitlines()


def test_local_clock_times_are_noted_once_and_the_fall_back_hour_is_said():
    lines = ["2022-10-30T01:30:00,100.1", "2022-10-30T02:30:00,100.2",
             "2022-10-30T02:00:00,100.3", "2022-10-30T02:30:00,100.4"]   # the clock went back
    out, err = run(HEADER + "\n".join(lines) + "\n")
    noted = [line for line in err if "without a UTC offset" in line]
    assert len(noted) == 1 and "('2022-10-30T01:30:00'), read as UTC" in noted[0], err
    assert "daylight saving" in noted[0] and "2022-10-30T02:30:00+01:00" in noted[0]
    assert [row.split(",")[2] for row in out[1:3]] == ["1", "2"]      # fed, with the note
    assert "skipped" in out[3] and "already fed with other values" in out[4]


@pytest.mark.parametrize("first", ["2022-10-30T01:30:00+01:00", "2022-10-30T00:30:00Z",
                                   "1667089800", "2022-10-30"])
def test_times_with_an_offset_seconds_or_dates_get_no_note(first):
    out, err = run(HEADER + f"{first},100.1\n")
    assert out[1].split(",")[2] == "1" and not any("UTC offset" in line for line in err), err


@pytest.mark.parametrize("column, options", [("time", []), ("seq", ["--seq-column", "seq"])])
def test_positions_that_only_python_reads_as_numbers_get_an_error_record(column, options):
    """float() and int() read 1_000 and Arabic-Indic digits; a position must be a CSV
    number, as a reading's values are (runtime.lines.number)."""
    text = f"{column},Water flow [l/s]\n1,100.1\n1_000,100.2\n١٧,100.3\n2000,100.4\n"
    done = subprocess.run([*LSTM_RUN, str(MODEL), *options], input=text.encode(),
                          capture_output=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()
    rows = done.stdout.decode().splitlines()[1:]
    assert [row.split(",")[2] for row in rows] == ["1", "", "", "2"], rows
    assert "not a" in rows[1] and "not a" in rows[2]
