"""A state file deleted or replaced while lstm-run runs: one ``Error:`` line and exit 2.

Saving on into the unlinked file would lose every sensor's state without a word, and the
lock would no longer keep a second lstm-run off the path.
"""

from __future__ import annotations

import subprocess
import time

from helpers import LSTM_RUN, ROOT, TIMEOUT, WATER_MODEL


def test_a_state_file_deleted_under_a_running_lstm_run_ends_it_with_exit_2(tmp_path):
    state = tmp_path / "state.db"
    proc = subprocess.Popen(LSTM_RUN + [str(WATER_MODEL), "--stream", "--state", str(state),
                                        "--save-every", "1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"2022-03-20T10:00:00Z,100.1\n")
        proc.stdin.flush()
        assert b",1,false," in proc.stdout.readline()
        deadline = time.monotonic() + TIMEOUT
        while not state.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)
        proc.stdin.write(b"2022-03-20T11:00:00Z,100.2\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    said = err.decode()
    assert proc.returncode == 2, said
    assert said.count("Error:") == 1 and "Traceback" not in said
    assert "it was deleted or replaced while this lstm-run ran" in said
    assert b"Traceback" not in out
