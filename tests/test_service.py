"""lstm-run as a service: SIGHUP, log rotation, restarts with --append, --endless, the unit.

Real subprocesses on real files: a rotation by rename (then SIGHUP) and by copytruncate, a
SIGTERM and a restart with ``--state`` and ``--append``; the answers in the logs are checked
line for line against one uninterrupted run of the same readings, and the state against the
answers delivered. The systemd unit in ``examples/`` is checked by ``systemd-analyze verify``
and its command line is run as systemd would run it.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import runtime
from helpers import LSTM_RUN, TIMEOUT, stop

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "exported" / "water-flow.onnx"
UNIT = ROOT / "examples" / "lstm-run.service"
FLOW = "Water flow [l/s]"
ENDLESS_EXIT = 75
UNBUFFERED = pytest.mark.parametrize("unbuffered", ["1", None],
                                     ids=["PYTHONUNBUFFERED", "buffered"])


def readings(first: int, last: int) -> list[bytes]:
    """JSON lines n = first..last, alternating between sensors a and b; n names each line."""
    return [json.dumps({"sensor": "ab"[n % 2], "n": n, FLOW: round(100 + (n % 7) / 10, 2)})
            .encode() + b"\n" for n in range(first, last + 1)]


def env_with(unbuffered: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    return env


def start(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(LSTM_RUN + [str(MODEL), "--stream", "--stream-column", "sensor",
                                        *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env)


def feed(proc: subprocess.Popen, lines: list[bytes]) -> None:
    proc.stdin.write(b"".join(lines))
    proc.stdin.flush()


def wait_lines(path: Path, n: int, proc: subprocess.Popen) -> None:
    """Wait until ``path`` holds ``n`` complete lines (lstm-run answers as lines arrive)."""
    deadline = time.monotonic() + TIMEOUT
    while not (path.exists() and path.read_bytes().count(b"\n") >= n):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, f"{path} never got {n} lines"
        time.sleep(0.01)


def wait_stderr(proc: subprocess.Popen, words: str) -> str:
    """Read lstm-run's stderr until a line holds ``words``; what was read."""
    seen, deadline = b"", time.monotonic() + TIMEOUT
    while words.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([proc.stderr], [], [], left)[0], seen.decode()
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"lstm-run closed stderr before saying {words!r}: {seen.decode()}"
        seen += chunk
    return seen.decode()


def answers_by_n(*logs: Path) -> dict[int, dict]:
    """Every answer in the logs, by its line's n; a line answered twice fails."""
    got: dict[int, dict] = {}
    for log in logs:
        data = log.read_bytes()
        assert b"\0" not in data, f"{log} holds NUL bytes"
        for line in data.decode().splitlines():
            answer = json.loads(line)
            assert answer["n"] not in got, f"line n={answer['n']} answered twice"
            got[answer["n"]] = answer
    return got


def same_answers(got: dict[int, dict], want: dict[int, dict]) -> bool:
    """Equal fields, predictions within float32 rounding (batches are cut differently)."""
    pred = f"pred_{FLOW}"
    for n, answer in want.items():
        assert {k: v for k, v in got[n].items() if k != pred} == \
            {k: v for k, v in answer.items() if k != pred}, n
        assert got[n][pred] == pytest.approx(answer[pred], rel=1e-5, abs=1e-5), n
    return got.keys() == want.keys()


@UNBUFFERED
def test_rotation_by_rename_and_copytruncate_then_a_restart_loses_and_repeats_nothing(
        tmp_path, unbuffered):
    env = env_with(unbuffered)
    log, state = tmp_path / "predictions.jsonl", tmp_path / "state.db"
    service = ["--state", str(state), "-o", str(log), "--append", "--endless"]
    whole = subprocess.run(LSTM_RUN + [str(MODEL), "--stream-column", "sensor"],
                           input=b"".join(readings(1, 40)), capture_output=True, cwd=ROOT,
                           timeout=TIMEOUT, env=env)
    assert whole.returncode == 0, whole.stderr.decode()
    want = {json.loads(line)["n"]: json.loads(line) for line in whole.stdout.decode().splitlines()}

    proc = start(service, env)
    try:
        feed(proc, readings(1, 10))
        wait_lines(log, 10, proc)
        log.rename(tmp_path / "predictions.jsonl.1")           # logrotate's default ...
        proc.send_signal(signal.SIGHUP)                        # ... and its postrotate
        assert "state saved, " in wait_stderr(proc, "SIGHUP: answers flushed")
        feed(proc, readings(11, 20))
        wait_lines(log, 10, proc)
        shutil.copyfile(log, tmp_path / "predictions.jsonl.2")  # copytruncate, no signal
        with open(log, "r+b") as f:
            f.truncate(0)
        feed(proc, readings(21, 30))
        wait_lines(log, 10, proc)
        proc.send_signal(signal.SIGTERM)                       # systemctl stop
        proc.wait(TIMEOUT)
    finally:
        stop(proc)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read().decode()

    proc = start(service, env)                                 # Restart=, with --append
    try:
        feed(proc, readings(31, 40))
        proc.stdin.close()                                     # the feed dies
        proc.wait(TIMEOUT)
    finally:
        stop(proc)
    err = proc.stderr.read().decode()
    assert proc.returncode == ENDLESS_EXIT and "--endless" in err and "Traceback" not in err, err

    got = answers_by_n(tmp_path / "predictions.jsonl.1", tmp_path / "predictions.jsonl.2", log)
    assert sorted(got) == list(range(1, 41))                   # every answer exactly once ...
    assert same_answers(got, want)                             # ... as one uninterrupted run
    saved = runtime.load_snapshots(state)
    assert {k: s.steps for k, s in saved.items()} == {"a": 20, "b": 20}
    assert {k: max(a["step"] for a in got.values() if a["sensor"] == k) for k in "ab"} \
        == {"a": 20, "b": 20}


def test_sighup_saves_the_state_before_anything_else_does(tmp_path):
    """With no timed saves, the state after SIGHUP counts every answer written before it."""
    log, state = tmp_path / "out.jsonl", tmp_path / "state.db"
    proc = start(["--state", str(state), "--save-interval", "0", "-o", str(log)], os.environ)
    try:
        feed(proc, readings(1, 7))
        wait_lines(log, 7, proc)
        proc.send_signal(signal.SIGHUP)
        wait_stderr(proc, "SIGHUP: answers flushed, state saved")
        proc.kill()                                            # no exit save: only SIGHUP's
        proc.wait(TIMEOUT)
    finally:
        stop(proc)
    assert {k: s.steps for k, s in runtime.load_snapshots(state).items()} == {"a": 3, "b": 4}


def test_append_needs_a_file_and_the_end_of_an_endless_empty_feed_is_75(tmp_path):
    usage = subprocess.run(LSTM_RUN + [str(MODEL), "--append"], input=b"", capture_output=True,
                           cwd=ROOT, timeout=TIMEOUT)
    assert usage.returncode == 2 and b"--append needs -o FILE" in usage.stderr
    empty = subprocess.run(LSTM_RUN + [str(MODEL), "--endless"], input=b"", capture_output=True,
                           cwd=ROOT, timeout=TIMEOUT)
    assert empty.returncode == ENDLESS_EXIT and b"Traceback" not in empty.stderr


# ---- the systemd unit ------------------------------------------------------------------

def test_the_unit_passes_systemd_analyze_verify():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    done = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def exec_start(unit: Path) -> str:
    """The unit's ExecStart, its continuation lines joined, as systemd reads it."""
    text = re.sub(r"\\\n", " ", unit.read_text())
    return next(line.split("=", 1)[1] for line in text.splitlines()
                if line.startswith("ExecStart="))


def test_the_units_command_runs_and_lstm_run_is_its_main_process(tmp_path):
    """The unit's command line, its paths moved here: answers, SIGHUP to the main PID, stop."""
    if shutil.which("bash") is None or shutil.which("tail") is None:
        pytest.skip("the unit's command needs bash and tail")
    sensors, log = tmp_path / "water-flow.csv", tmp_path / "predictions.csv"
    sensors.write_bytes(b"")
    command, script = unit_script(tmp_path, sensors, log)
    proc = subprocess.Popen([command[0], "-c", script], stderr=subprocess.PIPE, cwd=ROOT,
                            start_new_session=True)
    try:
        # append until the first answer appears (tail says nothing when it follows the file)
        deadline = time.monotonic() + TIMEOUT
        while not log.exists() or not log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            with open(sensors, "ab") as f:
                f.write(b"2022-03-22T02:00:00+01:00,100.32\n")
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGHUP)                       # ExecReload: kill -HUP $MAINPID
        wait_stderr(proc, "SIGHUP: answers flushed, state saved")
        os.kill(proc.pid, signal.SIGTERM)                      # systemctl stop (the main PID)
        proc.wait(TIMEOUT)
    finally:
        _kill_group(proc)            # tail, which systemd's stop would have sent SIGTERM too
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read().decode()
    assert b",100.32,1,false," in log.read_bytes()


def unit_script(tmp_path: Path, sensors: Path, log: Path) -> tuple[list[str], str]:
    """The unit's command line with its paths moved under ``tmp_path``."""
    command = shlex.split(exec_start(UNIT))
    assert command[:2] == ["/bin/bash", "-c"]
    return command, (command[2].replace("/opt/lstm-edge/bin/lstm-run", shlex.join(LSTM_RUN))
                     .replace("/opt/lstm-edge/models/water-flow.onnx", str(MODEL))
                     .replace("/var/lib/lstm-edge/state.db", str(tmp_path / "state.db"))
                     .replace("/var/log/lstm-edge/predictions.csv", str(log))
                     .replace("/var/lib/sensors/water-flow.csv", str(sensors)))


def test_readings_written_while_the_service_is_down_are_fed_at_its_next_start(tmp_path):
    """The unit's feed starts at the logger file's first line: a reading written during a
    stop is fed after it, and the readings fed before are not fed again (the unit had
    tail -n 0, which lost every reading written while the service was down)."""
    if shutil.which("bash") is None or shutil.which("tail") is None:
        pytest.skip("the unit's command needs bash and tail")
    rows = (ROOT / "data" / "water-flow.csv").read_bytes().splitlines(keepends=True)[1:4]
    sensors, log = tmp_path / "water-flow.csv", tmp_path / "predictions.csv"
    command, script = unit_script(tmp_path, sensors, log)
    sensors.write_bytes(rows[0])
    for lines, feed in ((1, rows[1]), (3, b"")):            # answers so far; then written
        proc = subprocess.Popen([command[0], "-c", script], stderr=subprocess.PIPE, cwd=ROOT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            while len(log.read_bytes().splitlines()) < lines if log.exists() else True:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGTERM)                  # systemctl stop
            proc.wait(TIMEOUT)
        finally:
            _kill_group(proc)
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read().decode()
        with open(sensors, "ab") as f:
            f.write(feed)                                     # written while it is down
    answers = [line.split(b",") for line in log.read_bytes().splitlines()]
    # run 1: reading 1 fed; run 2: reading 1 again (its answer, a replay), reading 2 fed
    assert [(a[2], a[5]) for a in answers] == [(b"1", b""), (b"1", b"replay"), (b"2", b"")]
    assert answers[1][:5] == answers[0][:5] and answers[2][0] == rows[1].split(b",")[0]
    unit = UNIT.read_text()      # a stop's exit 143 is no failure; an early SIGHUP restarts
    assert "\nSuccessExitStatus=130 143\n" in unit and "\nRestartForceExitStatus=SIGHUP\n" in unit


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
