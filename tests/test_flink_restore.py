"""Resuming the Flink job: whose checkpoint, how damaged, with which alert settings.

Real jobs (``python -m integrations.flink`` in ``.venv-flink``) on watched folders, killed
with SIGKILL once their answers are committed, then resumed:

- two jobs share one ``--checkpoint-dir`` (the second one's checkpoints newer): ``--resume
  latest`` of the first goes on from its own, every answer equal to one ``lstm-run`` over
  all its lines; a job on a third input is refused in one line, not handed their state;
- the first job's RocksDB checkpoint, damaged three ways (a state byte flipped, ``_metadata``
  cut short, a state file cut short): one ``Error:`` line, exit 2, no Flink traceback;
- a job resumed with other alert settings says so in one line, and its answers are those of
  ``lstm-run --state`` whose sensors carry their stream state but start the alerts afresh
  with the new settings.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import run, split_lines
from test_flink import (ALERTS, FEATURE, FLINK_PY, ROOT, TIMEOUT, Job, _unavailable,
                        sensor_rows, with_intervals)

pytestmark = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))

HEADER = f"sensor,Time,{FEATURE}"
FIRST, SECOND = (0, 40), (40, 70)       # the rows of each sensor read before and after


def lines_of(sensors: list[str], rows: tuple[int, int]) -> list[str]:
    data = sensor_rows()
    return [f"{s},{data[s][i][0]},{data[s][i][1]}" for i in range(*rows) for s in sensors]


def write(folder: Path, name: str, lines: list[str]) -> None:
    """A CSV file in a watched folder, whole at once (hidden until renamed)."""
    tmp = folder / f".{name}.tmp"
    tmp.write_text(HEADER + "\n" + "\n".join(lines) + "\n")
    tmp.rename(folder / name)


class SharedJob(Job):
    """A :class:`test_flink.Job` with its own options and a chosen checkpoint folder."""

    def __init__(self, tmp: Path, name: str, checkpoints: Path, *options: str):
        super().__init__(tmp, name)
        self.checkpoints = checkpoints
        self.model = with_intervals(tmp)
        self.args = [str(FLINK_PY), "-m", "integrations.flink", str(self.model),
                     "-i", str(self.input), "--watch", "0.2", "-o", str(self.output),
                     "--stream-column", "sensor", "--time-column", "Time",
                     "--checkpoint-dir", str(checkpoints), "--checkpoint-every", "1",
                     *options]

    def taken(self, lines: list[str]) -> None:
        """Start on ``lines``, and kill the job once their answers are all committed (so a
        checkpoint holds every sensor's state after them)."""
        write(self.input, "first.csv", lines)
        self.start()
        try:
            self.wait_for(len(lines))
        finally:
            self.kill()


def job(*args, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """One job to its end; on a timeout its whole process group is killed."""
    proc = subprocess.Popen([str(FLINK_PY), "-m", "integrations.flink", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the job did not end in {timeout} s:\n{err.decode()[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    err = proc.stderr.decode()
    assert "Traceback" not in err, err[-3000:]
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: "), err[-3000:]
    assert proc.returncode == code, err
    return err


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Job A (RocksDB) and then job B (another input) checkpoint into one folder; each is
    killed with its answers committed. A's second file is then in its folder."""
    tmp = tmp_path_factory.mktemp("flink-restore")
    checkpoints = tmp / "ck"
    a = SharedJob(tmp, "a", checkpoints, *ALERTS, "--state-backend", "rocksdb")
    b = SharedJob(tmp, "b", checkpoints, *ALERTS)
    a.taken(lines_of(["s00", "s01"], FIRST))
    b.taken(lines_of(["s02"], FIRST))
    write(a.input, "second.csv", lines_of(["s00", "s01"], SECOND))
    return tmp, a, b


def test_resume_latest_takes_this_jobs_checkpoint_not_the_newest_in_the_folder(shared):
    """The newest checkpoint in the folder is B's; A resumed with --resume latest goes on
    from its own: its answers, before and after, are one lstm-run's over all its lines."""
    tmp, a, b = shared
    newest = max(a.checkpoints.glob("*/chk-*/_metadata"), key=lambda p: p.stat().st_mtime)
    assert newest.parent.parent != own_checkpoint(a).parent      # B's is the newest
    fed = lines_of(["s00", "s01"], FIRST) + lines_of(["s00", "s01"], SECOND)
    a.start("--resume", "latest")
    try:
        got = a.wait_for(len(fed))
    finally:
        a.kill()
    source = tmp / "a-all.csv"
    source.write_text(HEADER + "\n" + "\n".join(fed) + "\n")
    want = split_lines(run([a.model, "-i", source, "--stream-column", "sensor", "--time-column",
                            "Time", *ALERTS])[0])[1:]
    assert sorted(got) == sorted(want)


def test_resume_latest_of_another_input_is_refused_in_one_line(shared):
    """A job on a third input, in the same folder: no checkpoint there is its own."""
    tmp, a, _ = shared
    other = tmp / "in-c"
    other.mkdir()
    write(other, "first.csv", lines_of(["s05"], FIRST))
    proc = job(a.model, "-i", other, "-o", tmp / "out-c", "--stream-column", "sensor",
               "--time-column", "Time", "--checkpoint-dir", a.checkpoints, "--resume",
               "latest", *ALERTS, timeout=90)
    err = one_line(proc)
    assert f"no checkpoint under {a.checkpoints} was taken by this job" in err
    assert f"reading {other}" in err and "start without --resume" in err
    assert not (tmp / "out-c").exists() or not list((tmp / "out-c").glob("part*"))


def own_checkpoint(a: SharedJob) -> Path:
    """A's newest chk-N: A ran and was killed before B started, so its job's folder is the
    one of the oldest checkpoint."""
    oldest = min(a.checkpoints.glob("*/chk-*/_metadata"), key=lambda p: p.stat().st_mtime)
    return max(oldest.parent.parent.glob("chk-*/_metadata"),
               key=lambda p: p.stat().st_mtime).parent


@pytest.mark.parametrize("damage", ["state byte", "metadata cut", "state file cut"])
def test_a_damaged_checkpoint_is_one_line_without_flink_tracebacks(shared, damage):
    """A's RocksDB checkpoint damaged: refused before the start where it can be seen
    (_metadata cut short, a state file shorter than _metadata records), else at the
    restore of the state (a flipped byte: RocksDB's block checksum); always one line,
    exit 2, Flink's tracebacks kept out of the terminal."""
    tmp, a, _ = shared
    a_chk = own_checkpoint(a)
    copy = tmp / f"ck-{damage.replace(' ', '-')}"
    shutil.copytree(a_chk.parent, copy / a_chk.parent.name)
    chk = copy / a_chk.parent.name / a_chk.name
    meta = chk / "_metadata"
    data = bytearray(meta.read_bytes())
    if damage == "state byte":
        at = data.index(b"LEst") + 60            # inside a sensor's state, past its head
        data[at] ^= 0xFF
        meta.write_bytes(bytes(data))
        want = "cannot be read"
    elif damage == "metadata cut":
        meta.write_bytes(bytes(data[:len(data) // 2]))
        want = "_metadata cannot be read"
    else:
        files = [p for p in chk.iterdir() if p.name != "_metadata"]
        assert files, "RocksDB's checkpoint kept no state file beside _metadata"
        with open(files[0], "r+b") as f:
            f.truncate(100)
        want = "is damaged"
    proc = job(a.model, "-i", a.input, "-o", tmp / f"out-{damage.replace(' ', '-')}",
               "--watch", "0.2", "--stream-column", "sensor", "--time-column", "Time",
               "--checkpoint-dir", copy, "--state-backend", "rocksdb", "--resume", chk,
               "--restarts", "0", *ALERTS, timeout=150)
    err = one_line(proc)
    assert want in err and "start without --resume" in err, err


def test_resumed_with_other_alert_settings_says_so_and_starts_the_alerts_afresh(tmp_path):
    """Resumed with --interval 0.8 --cusum 4 after 0.9: one Note line, and the answers after
    it are lstm-run's with --state where the stream state goes on and the alerts start
    afresh with the new settings (no pending forecast of the old level is checked)."""
    job_ = SharedJob(tmp_path, "c", tmp_path / "ck", *ALERTS)
    sensors = ["s03", "s04"]
    job_.taken(lines_of(sensors, FIRST))
    before = set(job_.answers())
    write(job_.input, "second.csv", lines_of(sensors, SECOND))
    new = ["--interval", "0.8", "--min-run", "2", "--hold-off", "2", "--stuck", "4",
           "--adapt", "0.1", "--cusum", "4"]
    job_.args = job_.args[:-len(ALERTS)] + new
    job_.start("--resume", "latest")
    try:
        got = [line for line in job_.wait_for(len(before) + len(lines_of(sensors, SECOND)))
               if line not in before]           # part files sort by name, not by time
    finally:
        job_.kill()
    log = job_.log.read_text()
    notes = [line for line in log.splitlines() if line.startswith("Note:")]
    assert len(notes) == 1, log[-3000:]
    assert "--interval 0.9" in notes[0] and "--interval 0.8" in notes[0]
    assert "--cusum 4" in notes[0] and "alerts start afresh" in notes[0]
    # the reference: the first lines fed with no alerts (stream state only), the rest with
    # the new settings, through lstm-run's --state
    state = tmp_path / "state.db"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text(HEADER + "\n" + "\n".join(lines_of(sensors, FIRST)) + "\n")
    second.write_text(HEADER + "\n" + "\n".join(lines_of(sensors, SECOND)) + "\n")
    options = ["--stream-column", "sensor", "--time-column", "Time", "--state", state]
    run([job_.model, "-i", first, *options])
    want = split_lines(run([job_.model, "-i", second, *options, *new])[0])[1:]
    assert sorted(got) == sorted(want)


def test_a_watching_jobs_checkpoint_resumed_without_watch_says_so(shared):
    """A watched its folder; resumed without --watch it reads the file it had not read and
    ends: a Note line says so, where it used to end without a word."""
    tmp, a, _ = shared
    a_chk = own_checkpoint(a)
    copy = tmp / "ck-no-watch"
    shutil.copytree(a_chk.parent, copy / a_chk.parent.name)
    proc = job(a.model, "-i", a.input, "-o", tmp / "out-no-watch", "--stream-column", "sensor",
               "--time-column", "Time", "--checkpoint-dir", copy, "--state-backend", "rocksdb",
               "--resume", copy / a_chk.parent.name / a_chk.name, *ALERTS, timeout=150)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    notes = [line for line in err.splitlines() if line.startswith("Note: --resume")]
    assert len(notes) == 1 and f"a job watching {a.input} (--watch)" in notes[0], err
    assert "add --watch SECONDS" in notes[0]
