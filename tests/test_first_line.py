"""The first line of an input: a bad one is one error record where the format is clear.

A logger's header-less file is followed from its top at every start (``tail -n +1 -F``), so
a first line that stopped ``lstm-run`` with exit 2 would stop the service for good. The
documented unit names the logger's columns (``--columns``), so no line has to tell the
format; auto-detection reads a date/time and one field per feature as a reading even where a
value is bad; ``--format headerless`` reads the ISO-time-led lines its help says it does.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import ROOT, TIMEOUT, WATER_MODEL, run, split_lines
from test_service import _kill_group, unit_script

GOOD = b"2022-03-20T15:00:00+01:00,100.6\n"
BAD_FIRST = {
    "a reading of ERR": b"2022-03-20T14:00:00+01:00,ERR\n",
    "a line cut by a logger crash": b"2022-03-20T14:0\n",
    "NUL padding": b"2022-03-20T14:00:00+01:00,100.5\x00\x00\n",
}


@pytest.mark.parametrize("first", list(BAD_FIRST.values()), ids=list(BAD_FIRST))
def test_the_units_command_survives_a_bad_first_line(tmp_path, first):
    """The unit's own command line on a logger file whose first line is bad: an error
    record for it, the next reading fed, the service still running (it exited 2)."""
    if shutil.which("bash") is None or shutil.which("tail") is None:
        pytest.skip("the unit's command needs bash and tail")
    sensors, log = tmp_path / "water-flow.csv", tmp_path / "predictions.csv"
    sensors.write_bytes(first + GOOD)
    command, script = unit_script(tmp_path, sensors, log)
    proc = subprocess.Popen([command[0], "-c", script], stderr=subprocess.PIPE, cwd=ROOT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(log.read_bytes().splitlines()) < 2 if log.exists() else True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)                      # systemctl stop
        proc.wait(TIMEOUT)
    finally:
        _kill_group(proc)
    err = proc.stderr.read().decode()
    assert proc.returncode == 128 + signal.SIGTERM and "Error:" not in err, err
    answers = log.read_bytes().splitlines()
    assert len(answers) == 2 and b"line 1: " in err.encode()
    assert answers[1].startswith(GOOD.rstrip() + b",1,false,"), answers


@pytest.mark.parametrize("first", [BAD_FIRST["a reading of ERR"], BAD_FIRST["NUL padding"]],
                         ids=["ERR", "NUL"])
def test_auto_detection_reads_a_bad_time_led_first_line_as_a_reading(first):
    out, err = run([WATER_MODEL, "--stream"], first + GOOD)
    lines = split_lines(out)
    assert len(lines) == 2 and lines[0].split(",")[2:5] == ["", "", ""], out
    assert lines[1].startswith("2022-03-20T15:00:00+01:00,100.6,1,false,"), out
    assert "line 1: " in err


def test_a_first_line_cut_short_says_how_to_pin_the_format():
    _, err = run([WATER_MODEL, "--stream"], BAD_FIRST["a line cut by a logger crash"] + GOOD,
                 code=2)
    assert "is not a header: it starts with a date/time" in err
    assert '--columns "time,Water flow [l/s]"' in err and "one error record" in err


def test_format_headerless_reads_iso_time_led_lines_as_its_help_says():
    lines = b"2022-03-20T14:00:00+01:00,100.5\n" + GOOD
    pinned, _ = run([WATER_MODEL, "--stream", "--format", "headerless"], lines)
    auto, _ = run([WATER_MODEL, "--stream"], lines)
    assert pinned == auto and [r.split(",")[2] for r in split_lines(pinned)] == ["1", "2"]
    features_only, _ = run([WATER_MODEL, "--stream", "--format", "headerless"],
                           b"100.5\n100.6\n")
    assert [r.split(",")[1] for r in split_lines(features_only)] == ["1", "2"]


def test_a_header_without_the_models_features_says_what_to_do():
    _, err = run([WATER_MODEL, "--stream"], b"passengers\n112\n", code=2)
    assert "the CSV header has no column for the model's feature(s) 'Water flow [l/s]'; it " \
           "has 'passengers'; " in err
    assert "lstm-export MODEL.keras --features passengers" in err and "--columns" in err
    assert err.count("Error:") == 1


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["plain", "bom"])
def test_a_first_and_last_line_without_its_newline_is_not_saved_as_fed(tmp_path, bom):
    """One reading and no newline (a logger cut mid-line), with or without Excel's UTF-8 BOM:
    an error record, and the state file holds no step, so the whole line sent again is fed."""
    path, state = tmp_path / "cut.csv", tmp_path / "state.db"
    path.write_bytes(bom + GOOD.rstrip(b"\n"))
    out, err = run([WATER_MODEL, "--state", state, "-i", path])
    assert "the input ended in the middle of this line" in out and "line 1: " in err, out
    path.write_bytes(bom + GOOD)
    out, _ = run([WATER_MODEL, "--state", state, "-i", path])
    assert split_lines(out)[0].startswith(GOOD.decode().rstrip() + ",1,false,"), out
