"""A state file with one unusable sensor row: the refusal offers to start that sensor alone
afresh, and the command it gives does so (deleting the file, the old advice, started every
sensor afresh: a restarted tail -n +1 then fed them all again)."""

from __future__ import annotations

import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "exported" / "water-flow.onnx"
LSTM_RUN = [sys.executable, "-m", "runtime.cli", str(MODEL), "--stream-column", "sensor"]
FEED = ("time,sensor,Water flow [l/s]\n"
        "2022-03-20T11:00:00Z,a,100.5\n2022-03-20T11:00:00Z,b,99.5\n"
        "2022-03-20T12:00:00Z,a,100.7\n2022-03-20T12:00:00Z,b,99.1\n")
MORE = "2022-03-20T13:00:00Z,a,100.9\n2022-03-20T13:00:00Z,b,99.3\n"


def run(state: Path, text: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LSTM_RUN, "--state", str(state)], input=text.encode(),
                          capture_output=True, timeout=120, cwd=state.parent)


def test_one_bad_row_can_be_started_afresh_alone(tmp_path):
    state = tmp_path / "it's.db"                     # a quote in the path: shell-quoted
    assert run(state, FEED).returncode == 0
    db = sqlite3.connect(state)
    db.execute("UPDATE streams SET state = X'00' WHERE key = 'b'")
    db.commit()
    db.close()
    refused = run(state, FEED + MORE)
    err = refused.stderr.decode()
    assert refused.returncode == 2 and "Traceback" not in err and refused.stdout == b"", err
    assert len(err.splitlines()) == 1 and "sensor 'b'" in err
    command = re.search(r"or start this sensor alone afresh, the others resuming: (sqlite3 .*?"
                        r"\"DELETE FROM streams WHERE key IN \('b'\)\")", err)
    assert command, err
    args = shlex.split(command.group(1))
    if shutil.which("sqlite3"):
        subprocess.run(args, check=True, cwd=tmp_path, timeout=30)   # as the user runs it
    else:
        db = sqlite3.connect(tmp_path / args[1])
        db.execute(args[2])
        db.commit()
        db.close()
    resumed = run(state, FEED + MORE)
    assert resumed.returncode == 0, resumed.stderr.decode()
    rows = [line.split(",") for line in resumed.stdout.decode().splitlines()[1:]]
    steps = {(r[1], r[0][11:13]): r[3] for r in rows}
    # a: resumed (replays, then its third step); b: fed afresh from step 1
    assert [steps[("a", h)] for h in ("11", "12", "13")] == ["", "2", "3"]
    assert [steps[("b", h)] for h in ("11", "12", "13")] == ["1", "2", "3"]
