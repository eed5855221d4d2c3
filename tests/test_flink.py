"""The Flink job end to end: real Flink mini-clusters in subprocesses, real files, real kills.

The job runs in ``.venv-flink`` (PyFlink pins its own numpy; ``make flink-env`` makes it) and
is compared with the runtime's own streams in this environment: every sensor's answers must
equal a plain ``Stream.step`` over that sensor's readings, to the last digit printed.

The input is fed in phases into a watched folder (rows 0-40 of each sensor, 40-80, ...), so
that each phase continues every sensor from state the job holds. One run goes through
uninterrupted; another is killed (SIGKILL to its process group: client, JVM and Python
workers) at a moment when some answers are committed and others are written but not yet
committed, restarted with ``--resume latest``, and must give the same lines exactly once.
The FileSink commits part files only at checkpoints and a restart drops what was written
after the last one, so no dedupe is done anywhere: duplicates would show. Every job runs with
``--interval`` (the model with intervals written in): the uninterrupted run's lines equal a
real ``lstm-run --interval`` on the same lines, and the killed one's equal those, so each
sensor's alert state comes back from the checkpoint with its stream. These runs use the
batched operator (the default); the state-TTL run uses the per-record one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import runtime
from runtime.lines import format_value
from helpers import run, split_lines, without_intervals

ROOT = Path(__file__).resolve().parent.parent
FLINK_PY = ROOT / ".venv-flink" / "bin" / "python"
MODEL = ROOT / "exported" / "water-flow.onnx"
FEATURE = "Water flow [l/s]"
PRED = f"pred_{FEATURE}"
SENSORS = 12
ROWS = 240                 # readings per sensor, from data/water-flow.csv
PHASES = [(0, 40), (40, 80), (80, 120), (120, 160), (160, 240)]   # rows fed together
TIMEOUT = 150              # seconds a job may take to give all its answers
ALERTS = ["--interval", "0.9", "--min-run", "2", "--hold-off", "2", "--stuck", "4",
          "--adapt", "0.1"]


def _unavailable() -> str | None:
    if shutil.which("java") is None:
        return ("Java is not installed; install it with: "
                "apt-get install -y openjdk-17-jre-headless")
    if not (ROOT / ".venv-flink" / ".installed").exists():
        why = ROOT / ".venv-flink" / ".unavailable"
        return (why.read_text().strip() if why.exists()
                else "the Flink environment .venv-flink is missing; make it with: make flink-env")
    return None


pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


# ---- input -----------------------------------------------------------------------------

def sensor_rows() -> dict[str, list[tuple[str, str]]]:
    """Each sensor's (time, value) readings: its own slice of the bundled water-flow data."""
    with open(ROOT / "data" / "water-flow.csv", newline="") as f:
        data = list(csv.reader(f))[1:]
    return {f"s{k:02d}": [(t, v) for t, v in data[k * 37:k * 37 + ROWS]] for k in range(SENSORS)}


BAD_SENSOR, BAD_AT = "s03", 50          # a value that is not a number
LATE_SENSOR, LATE_AT = "s05", 80        # a reading older than the one before it
BYTES_SENSOR, BYTES_AT = "s07", 130     # a time that is not UTF-8: lstm-run's error record


WAKE_SENSOR = "wake"


def write_wake(folder: Path) -> list[str]:
    """One line of a sensor of its own, in a file of its own; returns it."""
    t, v = sensor_rows()["s00"][0]
    line = f"{WAKE_SENSOR},{t},{v}"
    (folder / ".wake.tmp").write_text(f"sensor,Time,{FEATURE}\n{line}\n")
    (folder / ".wake.tmp").rename(folder / "wake.csv")
    return [line]


def write_phase(folder: Path, phase: int) -> list[str]:
    """Write one phase's CSV files (two sensors per file, interleaved); returns its lines."""
    rows = sensor_rows()
    span = slice(*PHASES[phase])
    names = sorted(rows)
    written = []
    for i in range(0, SENSORS, 2):
        pair = names[i:i + 2]
        lines = []
        for j in range(span.start, span.stop):
            for s in pair:
                t, v = rows[s][j]
                if s == BAD_SENSOR and j == BAD_AT:
                    lines.append(f"{s},{t},x")
                if s == LATE_SENSOR and j == LATE_AT:
                    lines.append(f"{s},{rows[s][j - 10][0]},{rows[s][j - 10][1]}")
                if s == BYTES_SENSOR and j == BYTES_AT:
                    lines.append(f"{s},{t}\udcff,{v}")        # the byte 0xff, as written
                lines.append(f"{s},{t},{v}")
        tmp = folder / f".{phase}-{i}.tmp"                   # hidden until complete
        text = "sensor,Time," + FEATURE + "\n" + "\n".join(lines) + "\n"
        tmp.write_bytes(text.encode("utf-8", "surrogateescape"))
        tmp.rename(folder / f"{phase}-{i:02d}.csv")
        written += lines
    return written


def expected() -> dict[str, list[str]]:
    """Each sensor's predictions from the runtime itself, as the job prints them."""
    model = runtime.load(MODEL, device="cpu")
    out = {}
    for s, rows in sensor_rows().items():
        stream = model.stream()
        out[s] = [format_value(stream.step([float(v)])[0]) for _, v in rows]
    return out


# ---- running the job -------------------------------------------------------------------

class Job:
    """One ``python -m integrations.flink`` in its own process group, killed whole."""

    def __init__(self, tmp: Path, name: str, *extra: str):
        self.input, self.output = tmp / f"in-{name}", tmp / f"out-{name}"
        self.checkpoints = tmp / f"ck-{name}"
        self.input.mkdir(exist_ok=True)
        self.log = tmp / f"{name}.log"
        self.args = [str(FLINK_PY), "-m", "integrations.flink", str(with_intervals(tmp)),
                     "-i", str(self.input), "--watch", "0.2", "-o", str(self.output),
                     "--stream-column", "sensor", "--time-column", "Time",
                     "--checkpoint-dir", str(self.checkpoints), "--checkpoint-every", "1",
                     *ALERTS, *extra]
        self.proc = None

    def start(self, *extra: str) -> "Job":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args + list(extra), cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)     # client, JVM and Python workers
            self.proc.wait(timeout=30)
        self.proc = None

    def in_progress(self) -> int:
        """Lines written to hidden in-progress part files: out, but not yet committed."""
        if not self.output.is_dir():
            return 0
        lines = 0
        for p in self.output.glob(".part*"):
            try:
                lines += len(p.read_bytes().splitlines())
            except FileNotFoundError:    # committed since the glob: answers() counts it next
                pass
        return lines

    def answers(self) -> list[str]:
        """Every line of the finished part files (not the hidden in-progress ones)."""
        if not self.output.is_dir():
            return []
        return [line for p in sorted(self.output.glob("part*"))
                for line in p.read_text().splitlines()]

    def wait_for(self, count: int, at_least: bool = False) -> list[str]:
        """Poll until the finished parts hold ``count`` lines (or more); fail on a timeout."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            lines = self.answers()
            if len(lines) >= count if at_least else len(lines) == count:
                return lines
            if len(lines) > count and not at_least:
                pytest.fail(f"{len(lines)} answers, more than the {count} lines fed")
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"the job ended with exit code {self.proc.returncode}:\n"
                            f"{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"{len(self.answers())} of {count} answers after {TIMEOUT} s:\n"
                    f"{self.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flink")


def with_intervals(tmp: Path) -> Path:
    """MODEL with calibrated intervals written in (its predictions are MODEL's)."""
    import test_alerts
    path = tmp / "water-flow-intervals.onnx"
    return path if path.exists() else test_alerts.with_intervals(path)


@pytest.fixture(scope="module")
def uninterrupted(tmp) -> list[str]:
    """All answers of one run that is never stopped until every line is answered."""
    job = Job(tmp, "whole")
    try:
        fed = write_phase(job.input, 0)      # before the start: the job reads its header
        job.start()
        answers = job.wait_for(len(fed))
        for phase in range(1, len(PHASES)):
            fed += write_phase(job.input, phase)
            answers = job.wait_for(len(fed))
        return answers
    finally:
        job.kill()


def parse(lines: list[str]) -> list[dict]:
    alerts = f"lo_{FEATURE},hi_{FEATURE},anomaly,score,alert"
    header = f"sensor,Time,{FEATURE},step,warmup,{PRED},{alerts},order,error,input"
    return [dict(zip(header.split(","), row))
            for row in csv.reader(io.StringIO("\n".join(lines)))]


# ---- the tests -------------------------------------------------------------------------

@pytest.mark.slow     # the module's uninterrupted job runs before it
def test_every_sensor_equals_the_runtime_stream(uninterrupted):
    records = [r for r in parse(uninterrupted) if r["step"]]      # fed: errors and skips not
    want = expected()
    assert len(records) == SENSORS * ROWS
    for s, preds in want.items():
        mine = sorted((int(r["step"]), r[PRED]) for r in records if r["sensor"] == s)
        assert [step for step, _ in mine] == list(range(1, ROWS + 1)), s
        assert [p for _, p in mine] == preds, f"sensor {s} differs from runtime's stream"


def test_every_line_equals_lstm_runs_with_alerts(uninterrupted, tmp):
    """The same lines through a real lstm-run with the same options: the same answers,
    alert columns, error records and skipped line included."""
    folder = tmp / "lstm-run-input"
    folder.mkdir()
    fed = [line for phase in range(len(PHASES)) for line in write_phase(folder, phase)]
    text = "sensor,Time," + FEATURE + "\n" + "".join(line + "\n" for line in fed)
    want = split_lines(run([with_intervals(tmp), "--stream-column", "sensor",
                            "--time-column", "Time", *ALERTS],
                           text.encode("utf-8", "surrogateescape"))[0])
    assert any(r["alert"] == "outside" for r in parse(want[1:]))
    assert sorted(uninterrupted) == sorted(want[1:])


def test_a_bad_record_becomes_an_error_record(uninterrupted):
    errors = [r for r in parse(uninterrupted) if r["error"] and r["sensor"] == BAD_SENSOR]
    assert len(errors) == 1
    assert errors[0][FEATURE] == "x" and errors[0]["step"] == "" and errors[0][PRED] == ""
    assert "'x' is not a number" in errors[0]["error"]
    # the sensor's state was untouched: its answers equal the runtime's over the good lines
    # (test_every_sensor_equals_the_runtime_stream checks every value; here, the step count)
    steps = [int(r["step"]) for r in parse(uninterrupted)
             if r["sensor"] == BAD_SENSOR and r["step"]]
    assert sorted(steps) == list(range(1, ROWS + 1))


def test_a_reading_out_of_order_is_skipped_not_fed(uninterrupted):
    """As lstm-run answers it: ``skipped: ...`` in the order column, no step, no error."""
    skipped = [r for r in parse(uninterrupted) if r["order"] and r["sensor"] == LATE_SENSOR]
    assert len(skipped) == 1
    late = sensor_rows()[LATE_SENSOR][LATE_AT - 10]
    assert (skipped[0]["Time"], skipped[0][FEATURE]) == late
    assert skipped[0]["order"].startswith("skipped: not after this sensor's last reading")
    assert skipped[0]["step"] == skipped[0]["error"] == ""
    assert len([r for r in parse(uninterrupted) if r["order"]]) == 1    # nothing else skipped
    assert len([r for r in parse(uninterrupted) if r["error"]]) == 2    # 'x' and the bytes


def test_a_line_that_is_not_utf8_gets_lstm_runs_error_record(uninterrupted, tmp):
    """The job parses the line's bytes with lstm-run's parser: not a U+FFFD, fed as if good."""
    t, v = sensor_rows()[BYTES_SENSOR][BYTES_AT]
    raw = f"sensor,Time,{FEATURE}\n{BYTES_SENSOR},{t}\udcff,{v}\n".encode("utf-8",
                                                                       "surrogateescape")
    path = tmp / "bytes.csv"
    path.write_bytes(raw)
    want = split_lines(run([with_intervals(tmp), "-i", path, "--stream-column", "sensor",
                            "--time-column", "Time", *ALERTS])[0])[1]
    assert "not UTF-8" in want
    assert [line for line in uninterrupted if "not UTF-8" in line] == [want]


@pytest.mark.slow
def test_killed_and_restored_from_checkpoint_gives_each_answer_once(tmp, uninterrupted):
    job = Job(tmp, "killed")
    try:
        # A phase is written only once the one before it has been read in full: the source
        # reads a watched folder's files in no fixed order (newest first, in fact), and a
        # sensor's file read before its predecessor is refused as out of order.
        fed, phase = write_phase(job.input, 0), 1
        job.start()
        while True:   # kill once every line is answered but some answers are not committed
            deadline = time.monotonic() + TIMEOUT
            while len(job.answers()) + job.in_progress() < len(fed) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
            if (job.in_progress() and job.answers()) or phase == len(PHASES) - 1:
                break
            fed += write_phase(job.input, phase)
            phase += 1
        committed, in_flight = len(job.answers()), job.in_progress()
        job.kill()
        assert sorted(job.checkpoints.glob("*/chk-*/_metadata")), "no checkpoint was kept"
        job.start("--resume", "latest")
        # Lines restored pending (read before the kill, unanswered) are flushed once any line
        # reaches the restarted job: PyFlink's restored flush timers were seen not to fire
        # (docs: "Beyond one machine"). One line of a sensor of its own is that line here.
        wake = write_wake(job.input)
        fed += wake
        job.wait_for(len(fed))
        for later in range(phase, len(PHASES)):
            fed += write_phase(job.input, later)
            after = job.wait_for(len(fed))
    finally:
        job.kill()
    after = [line for line in after if not line.startswith(WAKE_SENSOR + ",")]
    print(f"killed in phase {phase} of {len(PHASES)} with {committed} answers committed and "
          f"{in_flight} written but not committed; {len(after)} answers in all after restart")
    keys = [(r["sensor"], r["step"]) for r in parse(after) if r["step"]]
    assert len(keys) == len(set(keys)) == SENSORS * ROWS      # no duplicates, none missing
    assert sorted(after) == sorted(uninterrupted)              # the same lines, exactly

    # The checkpoints' sensors live in 4 shards (4 a slot): another count would lose them.
    # Refused at once, latest or by path: the count is in the record of the checkpoint's job.
    refused = subprocess.run(job.args + ["--shards", "7", "--resume", "latest"], cwd=ROOT,
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert refused.returncode == 2 and "taken with 4 shards" in refused.stderr, refused.stderr
    chk = max(job.checkpoints.glob("*/chk-*/_metadata"), key=lambda p: p.stat().st_mtime).parent
    refused = subprocess.run(job.args + ["--shards", "7", "--resume", str(chk)], cwd=ROOT,
                             capture_output=True, text=True, timeout=TIMEOUT,
                             start_new_session=True)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "taken with 4 shards" in refused.stderr
    assert len(job.answers()) == len(after) + len(wake)     # nothing written by the refusals


@pytest.mark.slow
def test_a_sensor_silent_past_the_state_ttl_starts_afresh(tmp):
    """With the per-record operator (the batched one runs every other test here)."""
    job = Job(tmp, "ttl", "--state-ttl", "2", "--operator", "record")
    rows = sensor_rows()["s00"]

    def feed(name, part):
        text = "".join(f"{s},{t},{v}\n" for s in ("a", "b") for t, v in part)
        (job.input / f".{name}").write_text("sensor,Time," + FEATURE + "\n" + text)
        (job.input / f".{name}").rename(job.input / name)

    try:
        feed("1.csv", rows[:5])
        job.start()
        job.wait_for(10)
        time.sleep(3)                                      # the silence being tested
        feed("2.csv", rows[5:7])
        answers = parse(job.wait_for(14))
    finally:
        job.kill()
    fresh = runtime.load(MODEL, device="cpu").stream()
    want = [format_value(fresh.step([float(v)])[0]) for _, v in rows[5:7]]
    later = [r for r in answers if r["Time"] in (rows[5][0], rows[6][0])]
    for sensor in ("a", "b"):
        mine = [(r["step"], r[PRED]) for r in later if r["sensor"] == sensor]
        assert mine == [("1", want[0]), ("2", want[1])], sensor


@pytest.mark.slow
@pytest.mark.parametrize("operator", ["batched", "record"])
def test_lone_surrogate_keys_and_alerts_equal_lstm_run(tmp, operator):
    """A sensor named by a lone surrogate (JSON "\\ud800") no longer fails the job, and
    --interval's alert columns are lstm-run's: one bounded job per operator, against a real
    lstm-run with the same options on the same lines, each sensor's lines in order."""
    from helpers import alert_lines

    model = with_intervals(tmp)
    path = tmp / f"alerts-{operator}.jsonl"
    path.write_text("".join(x + "\n" for x in alert_lines()))
    options = ["--stream-column", "sensor", "--time-column", "t", "--interval", "0.9",
               "--min-run", "2", "--hold-off", "2", "--stuck", "3"]
    want = split_lines(run([model, "-i", path, *options])[0])
    job = subprocess.run([str(FLINK_PY), "-m", "integrations.flink", str(model), "-i",
                          str(path), "--operator", operator, *options], cwd=ROOT,
                         capture_output=True, text=True, timeout=TIMEOUT,
                         start_new_session=True)
    assert job.returncode == 0, job.stderr[-3000:]
    got = split_lines(job.stdout)

    def by_sensor(lines: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for line in lines:
            out.setdefault(json.loads(line)["sensor"], []).append(line)
        return out

    assert len(by_sensor(want)) == 3 and any('"\\ud800"' in line for line in want)
    assert by_sensor(got) == by_sensor(want)


def test_interval_the_model_cannot_give_is_refused_before_the_job(tmp):
    """--interval on a model without intervals, or at a level it was not calibrated at: one
    line, exit 2, as lstm-run refuses it."""
    path = tmp / "one.jsonl"
    path.write_text(json.dumps({"sensor": "a", "t": 1, FEATURE: 101.5}) + "\n")
    for model, level, words in ((without_intervals(tmp / "plain.onnx"), "0.9",
                                 "no calibrated intervals"),
                                (with_intervals(tmp), "0.85", "no interval at")):
        proc = subprocess.run([str(FLINK_PY), "-m", "integrations.flink", str(model), "-i",
                               str(path), "--stream-column", "sensor", "--time-column", "t",
                               "--interval", level], cwd=ROOT, capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_alert_options_without_interval_are_a_usage_error(tmp):
    """--stuck without --interval would be ignored (no reading is checked): refused before
    the job, as lstm-run refuses it."""
    path = tmp / "one.jsonl"
    path.write_text(json.dumps({"sensor": "a", "t": 1, FEATURE: 101.5}) + "\n")
    proc = subprocess.run([str(FLINK_PY), "-m", "integrations.flink", str(with_intervals(tmp)),
                           "-i", str(path), "--stream-column", "sensor", "--time-column", "t",
                           "--stuck", "6"], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 2 and "--stuck needs --interval LEVEL" in proc.stderr, proc.stderr


def test_an_output_or_checkpoint_that_cannot_be_used_is_one_line(tmp):
    """-o a folder that cannot be made, and --resume a path with no checkpoint: one line and
    exit 2 before the job starts, not a traceback (or Flink's failure, exit 1)."""
    path = tmp / "one.jsonl"
    path.write_text(json.dumps({"sensor": "a", "t": 1, FEATURE: 101.5}) + "\n")
    base = [str(FLINK_PY), "-m", "integrations.flink", str(without_intervals(tmp / "m.onnx")),
            "-i", str(path), "--stream-column", "sensor", "--time-column", "t"]
    for extra, words in ((["-o", "/proc/forbidden"], "cannot write the answers' folder"),
                         (["--resume", str(tmp / "chk-9")], "expected a checkpoint")):
        proc = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True,
                              timeout=TIMEOUT)
        assert proc.returncode == 2 and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
