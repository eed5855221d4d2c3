"""The ``--state`` database under faults: odd keys, two runs on one file, quiet feeds, kill -9,
a lost or foreign ``-wal``, names that are not files, a full disk, a new model version.

Every case runs the real ``lstm-run`` on a real file; a second run is a real second process
on the same file; a crash is a real ``kill -9``. Where a file must be refused, its bytes are
compared before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.io import LineReader
from runtime.statefile import db_key, py_key
from helpers import LSTM_RUN, ROOT, TIMEOUT, Live, tiny_onnx

HEADER = b"time,sensor,temperature,humidity\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("state-models")
    return {"tiny": tiny_onnx(d / "tiny.onnx"), "other": tiny_onnx(d / "other.onnx", seed=5)}


def lstm_run(args, data: bytes = b"", cwd: Path = ROOT) -> tuple[int, str, str]:
    proc = subprocess.run(LSTM_RUN + [str(a) for a in args], input=data, capture_output=True,
                          timeout=TIMEOUT, cwd=cwd)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace")


def one_line_error(code: int, err: str, says: str) -> None:
    assert code == 2, f"exit {code}; stderr:\n{err}"
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("Error:") and says.lower() in lines[0].lower(), err


def csv(n: int, sensors=("a", "b"), start: int = 0) -> bytes:
    return b"".join(f"t{i},{sensors[i % len(sensors)]},{20 + i % 5},{40 + i % 3}\n".encode()
                    for i in range(start, start + n))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def steps(path: Path, *, main_only: bool = False) -> dict[str, int]:
    """Each sensor's saved step count; ``main_only``: from the main file, its -wal ignored."""
    uri = f"file:{path}?immutable=1" if main_only else f"file:{path}?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        return {py_key(k): n for k, n in db.execute("SELECT key, steps FROM streams")}
    finally:
        db.close()


def saved(tiny: Path, state: Path, data: bytes) -> Path:
    code, _, err = lstm_run([tiny, "--stream-column", "sensor", "--state", state], data)
    assert code == 0, err
    return state


# ---- 1. keys -------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["ok", "\ud800", "\\ud800", "a\udcffb", "é", ""])
def test_keys_round_trip(key):
    assert py_key(db_key(key)) == key


def test_lone_surrogate_key_keeps_every_sensor(models, tmp_path):
    state = tmp_path / "s.db"
    lines = [{"sensor": s, "temperature": 21.0, "humidity": 40.0} for s in ("ok", "\ud800")]
    data = "".join(json.dumps(r) + "\n" for r in lines).encode()
    for run in (1, 2):
        code, out, err = lstm_run([models["tiny"], "--stream-column", "sensor",
                                   "--state", state], data)
        assert code == 0 and "Traceback" not in err, err
        assert [json.loads(line)["step"] for line in out.splitlines()] == [run, run]
    assert steps(state) == {"ok": 2, "\ud800": 2}
    assert set(runtime.load_snapshots(state)) == {"ok", "\ud800"}


# ---- 2. one run per file -------------------------------------------------------------

def test_second_run_on_the_same_file_is_refused(models, tmp_path):
    state = tmp_path / "s.db"
    first = Live([models["tiny"], "--stream", "--stream-column", "sensor", "--state", state])
    try:
        first.send(HEADER + csv(3))
        for _ in range(4):
            first.read_line()
        code, out, err = lstm_run([models["tiny"], "--stream-column", "sensor", "--state",
                                   state], HEADER + csv(3))
        one_line_error(code, err, "in use by another lstm-run")
        assert out == ""
        first.send(csv(1, start=3))
        first.read_line()
        first.finish()
    finally:
        first.kill()
    assert steps(state) == {"a": 2, "b": 2}          # the first run's readings, all of them


def test_npz_being_converted_elsewhere_is_refused(models, tmp_path):
    """The lock covers an .npz too: while another process holds it (as a run converting it
    does), a run on it is refused and the npz is left as it was."""
    import fcntl
    model = runtime.load(models["tiny"], device="cpu")
    state = tmp_path / "s.npz"
    runtime.save_snapshots(state, {"a": model.stream().snapshot()})
    before = digest(state)
    with open(state, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, out, err = lstm_run([models["tiny"], "--state", state], HEADER + csv(1))
    one_line_error(code, err, "in use by another lstm-run")
    assert out == "" and digest(state) == before


# ---- 3, 4. a quiet feed saves and checkpoints; kill -9; a lost or foreign -wal ---------

def test_reader_tick_yields_an_empty_batch_on_a_quiet_feed():
    r, w = os.pipe()
    try:
        os.write(w, b"a,1\n")
        batches = LineReader(r, tick=0.01).batches()
        assert next(batches) == [(1, b"a,1")]
        assert next(batches) == []                   # nothing more: the caller's turn
        os.write(w, b"b,2\n")
        assert next(batches) == [(2, b"b,2")]
    finally:
        os.close(r)
        os.close(w)


def wait_for(condition, what: str, timeout: float = 30) -> None:
    """Poll until ``condition()`` holds; fail the test (not a timing assertion) if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened within {timeout} s: {what}")
        time.sleep(0.05)


def main_file_has(state: Path, want: dict) -> bool:
    try:
        return steps(state, main_only=True) == want
    except sqlite3.Error:
        return False


def test_quiet_feed_is_saved_into_the_main_file_before_kill_9(models, tmp_path):
    state = tmp_path / "s.db"
    live = Live([models["tiny"], "--stream", "--stream-column", "sensor", "--state", state,
                 "--save-interval", "0.2"])
    try:
        live.send(HEADER + csv(10))
        for _ in range(11):
            live.read_line()
        # No more lines: the saves must come from the quiet feed alone.
        wait_for(lambda: main_file_has(state, {"a": 5, "b": 5}), "the main file holds steps 5")
        live.proc.send_signal(signal.SIGKILL)
        live.proc.wait()
    finally:
        live.kill()
    # The main file alone is complete: a lost -wal loses nothing, and is said.
    Path(f"{state}-wal").unlink(missing_ok=True)
    Path(f"{state}-shm").unlink(missing_ok=True)
    code, out, err = lstm_run([models["tiny"], "--stream-column", "sensor", "--state", state],
                              HEADER + csv(2, start=10))
    assert code == 0, err
    assert "has no -wal file" in err and "not closed cleanly" in err
    assert [line.split(",")[4] for line in out.splitlines()[1:]] == ["6", "6"]


def test_foreign_wal_is_refused_and_nothing_is_written(models, tmp_path):
    state = saved(models["tiny"], tmp_path / "s.db", HEADER + csv(4))
    other = tmp_path / "other.db"
    live = Live([models["tiny"], "--stream", "--stream-column", "sensor", "--state", other,
                 "--save-every", "1", "--save-interval", "0"])
    try:
        live.send(HEADER + csv(6))
        for _ in range(7):
            live.read_line()
        wait_for(lambda: steps(other) == {"a": 3, "b": 3}, "the other run committed")
        live.proc.send_signal(signal.SIGKILL)          # its -wal holds its commits
        live.proc.wait()
    finally:
        live.kill()
    shutil.copy(f"{other}-wal", f"{state}-wal")       # another database's commits
    before = digest(state), digest(Path(f"{state}-wal"))
    code, _, err = lstm_run([models["tiny"], "--stream-column", "sensor", "--state", state],
                            HEADER + csv(1))
    one_line_error(code, err, "-wal file s.db-wal belongs to another database")
    assert (digest(state), digest(Path(f"{state}-wal"))) == before


# ---- 7. names and files that are not what they seem ---------------------------------

@pytest.mark.parametrize("name", [":memory:", "file:st.db?mode=memory", "FILE:x.db"])
def test_memory_and_uri_names_are_refused(models, tmp_path, name):
    code, _, err = lstm_run([models["tiny"], "--state", name], HEADER + csv(1), cwd=tmp_path)
    one_line_error(code, err, "not a file")
    assert list(tmp_path.iterdir()) == []


def test_symlink_to_a_device_is_refused(models, tmp_path):
    link = tmp_path / "s.db"
    link.symlink_to(os.devnull)
    had_journal = Path(f"{os.devnull}-journal").exists()
    code, _, err = lstm_run([models["tiny"], "--state", link], HEADER + csv(1))
    one_line_error(code, err, "not a regular file")
    assert Path(f"{os.devnull}-journal").exists() == had_journal


@pytest.mark.parametrize("value, says", [("9", "upgrade lstm-edge"),
                                         ("zz", "its state format is 'zz', not a version")])
def test_refused_future_format_stays_byte_identical(models, tmp_path, value, says):
    state = saved(models["tiny"], tmp_path / "s.db", HEADER + csv(4))
    db = sqlite3.connect(state, isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")              # header bytes 18-19: 01 01
    db.execute("UPDATE meta SET value = ? WHERE name = 'format'", (value,))
    db.close()
    before = digest(state)
    code, _, err = lstm_run([models["tiny"], "--state", state], HEADER + csv(1))
    one_line_error(code, err, says)
    assert digest(state) == before and state.read_bytes()[18:20] == b"\x01\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_empty_file_is_refused_not_taken_for_a_new_database(models, tmp_path):
    state = tmp_path / "s.npz"
    state.write_bytes(b"")
    code, out, err = lstm_run([models["tiny"], "--state", state], HEADER + csv(1))
    one_line_error(code, err, "empty (0 bytes)")
    assert out == "" and state.read_bytes() == b""


def as_nobody() -> None:
    """In the child, where the tests run as root (who may write anything): user nobody."""
    if os.geteuid() == 0:
        os.setgid(65534)
        os.setuid(65534)


def test_read_only_state_is_found_at_start(models):
    folder = Path(tempfile.mkdtemp(prefix="lstm-edge-ro-"))     # reachable by nobody
    try:
        folder.chmod(0o777)
        model = Path(shutil.copy(models["tiny"], folder / "tiny.onnx"))
        model.chmod(0o644)
        state = saved(model, folder / "s.db", HEADER + csv(4))
        state.chmod(0o444)
        try:
            proc = subprocess.run(LSTM_RUN + [str(model), "--state", str(state)],
                                  input=HEADER + csv(20), capture_output=True, timeout=TIMEOUT,
                                  cwd=folder, preexec_fn=as_nobody)
        except PermissionError:
            pytest.skip("the tool is not installed where user nobody may run it")
        one_line_error(proc.returncode, proc.stderr.decode(), "cannot be opened for writing")
        assert proc.stdout == b"" and sorted(p.name for p in folder.iterdir()) == \
            ["s.db", "tiny.onnx"]
    finally:
        shutil.rmtree(folder)


def test_state_on_a_read_only_filesystem_is_found_at_start(models, small_disk):
    """Root may write any file, but not to a read-only mount: the same refusal, at start."""
    state = saved(models["tiny"], small_disk / "s.db", HEADER + csv(4))
    remount = subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True)
    if remount.returncode != 0:
        pytest.skip(f"cannot remount read-only: {remount.stderr.decode().strip()}")
    code, out, err = lstm_run([models["tiny"], "--state", state], HEADER + csv(20))
    one_line_error(code, err, "cannot be written")
    assert out == "" and sorted(p.name for p in small_disk.iterdir()) == ["s.db"]


def test_new_database_holds_its_tables_after_kill_9(models, tmp_path):
    """Created, then killed before any save: the main file alone is a state database."""
    state = tmp_path / "s.db"
    live = Live([models["tiny"], "--stream", "--stream-column", "sensor", "--state", state])
    try:
        live.send(HEADER)
        live.read_line()
        live.proc.send_signal(signal.SIGKILL)
        live.proc.wait()
    finally:
        live.kill()
    assert steps(state, main_only=True) == {}          # the tables are there, empty


# ---- 10. a full disk at start ----------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real, small filesystem (tmpfs, 256 KiB) to fill up; skipped where none can be
    mounted (not root, no tmpfs)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_full_disk_at_start_says_so_and_keeps_the_file(models, small_disk):
    model = runtime.load(models["tiny"], device="cpu")
    stream = model.stream()
    stream.feed(np.array([[21.0, 40.0], [22.0, 41.0]]))
    state = small_disk / "s.npz"
    runtime.save_snapshots(state, {"a": stream.snapshot()})
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:         # fill the disk to the last byte
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 512)
    before = digest(state)
    code, out, err = lstm_run([models["tiny"], "--stream", "--stream-column", "sensor",
                               "--state", state], HEADER + csv(300))
    one_line_error(code, err, "the disk is full")
    assert "kept as it was" in err and "delete" not in err
    assert out == "" and digest(state) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "s.npz"]


# ---- issue 20: a new model version on an old state file ----------------------------------

def test_new_model_is_refused_naming_both(models, tmp_path):
    state = saved(models["tiny"], tmp_path / "s.db", HEADER + csv(4))
    before = digest(state)
    code, _, err = lstm_run([models["other"], "--state", state], HEADER + csv(1))
    old = runtime.load(models["tiny"]).fingerprint[:12]
    new = runtime.load(models["other"]).fingerprint[:12]
    one_line_error(code, err, "another model")
    assert f"tiny.onnx, sha256 {old}" in err and f"other.onnx, sha256 {new}" in err
    assert "--on-new-model fresh" in err and digest(state) == before


def test_new_model_fresh_keeps_the_old_file_beside(models, tmp_path):
    state = saved(models["tiny"], tmp_path / "s.db", HEADER + csv(4))
    old = steps(state)
    code, out, err = lstm_run([models["other"], "--stream-column", "sensor", "--state", state,
                               "--on-new-model", "fresh"], HEADER + csv(2))
    assert code == 0, err
    backup = tmp_path / "s.db.old-1"
    assert f"kept it as {backup}" in err
    assert [line.split(",")[4] for line in out.splitlines()[1:]] == ["1", "1"]
    assert steps(backup) == old and steps(state) == {"a": 1, "b": 1}


# ---- 4. SQLite's own check at start ------------------------------------------------------

def test_damaged_page_is_refused_at_start(models, tmp_path):
    state = saved(models["tiny"], tmp_path / "s.db", HEADER + csv(4, sensors=("a", "b", "c")))
    data = bytearray(state.read_bytes())
    size = int.from_bytes(data[16:18], "big")          # the page size, from the header
    for page in range(1, len(data) // size):            # every page's b-tree header
        data[page * size] = 0x07                         # no valid page type
    state.write_bytes(bytes(data))
    before = digest(state)
    code, out, err = lstm_run([models["tiny"], "--stream-column", "sensor", "--state", state],
                              HEADER + csv(1))
    one_line_error(code, err, "its pages are damaged (SQLite quick_check")
    assert out == "" and digest(state) == before
