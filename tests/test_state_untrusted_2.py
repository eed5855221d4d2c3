"""The ``--state`` file as untrusted input, second round (user trial B): a disk that fills or a
file size limit at start, values of every kind in every table, and tables, triggers and
indexes lstm-run never made.

Each case runs the real ``lstm-run`` on a real file and asserts one ``Error:`` line, exit 2,
no traceback, no answer written (the checks run at start, before a line is read) and the file
byte for byte as it was. No case needs root but the tmpfs one, which skips without it.
"""

from __future__ import annotations

import os
import resource
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

import runtime
from runtime.errors import SnapshotError
from runtime.statefile import beside, remove_strays, write_trouble
from helpers import LSTM_RUN, ROOT, TIMEOUT, tiny_onnx

HEADER = b"time,sensor,temperature,humidity\n"
DATA = HEADER + b"t0,a,20,40\nt1,b,21,41\nt2,a,22,42\n"
ARGS = ["--stream", "--stream-column", "sensor"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("untrusted-2") / "tiny.onnx")


@pytest.fixture(scope="module")
def good(tiny, tmp_path_factory) -> Path:
    """A state file of sensors a and b, with a valid positions row (sensor z) beside them."""
    state = tmp_path_factory.mktemp("good") / "good.db"
    code, _, err = lstm_run([tiny, *ARGS, "--state", state], DATA)
    assert code == 0, err
    with sqlite3.connect(state) as db:
        db.execute("CREATE TABLE positions (key TEXT PRIMARY KEY, steps INTEGER NOT NULL, "
                   "ready INTEGER NOT NULL, position NOT NULL, last BLOB NOT NULL, answer BLOB, "
                   "seen REAL NOT NULL) WITHOUT ROWID")
        db.execute("INSERT INTO positions VALUES ('z', 3, 1, 7, zeroblob(16), zeroblob(4), 1.0)")
    db.close()
    return state


def lstm_run(args, data: bytes = b"", limit: int | None = None) -> tuple[int, str, str]:
    def fsize():                     # ulimit -f in the child only
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    proc = subprocess.run(LSTM_RUN + [str(a) for a in args], input=data, capture_output=True,
                          timeout=TIMEOUT, cwd=ROOT, preexec_fn=fsize if limit else None)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace")


def refused(code: int, out: str, err: str, *says: str) -> str:
    """One ``Error:`` line, exit 2, no answer, no traceback, and it says each of ``says``."""
    assert code == 2, f"exit {code}; stderr:\n{err}"
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("Error:"), err
    assert out == "", out                           # refused before a line is read
    for words in says:
        assert words in lines[0], err
    return lines[0]


def tampered(good: Path, folder: Path, *sql: str) -> Path:
    state = folder / "s.db"
    shutil.copy(good, state)
    db = sqlite3.connect(state)
    try:
        for statement in sql:
            db.execute(statement)
        db.commit()
    finally:
        db.close()
    assert beside(state) == set()                   # sqlite3 folded its WAL in
    return state


# ---- an I/O error or a full disk at start: said as such, the file kept, never "delete" ----

def test_io_error_at_start_on_a_good_file_says_so_and_keeps_it(tiny, good, tmp_path):
    # ulimit -f below the 32 KiB -shm SQLite makes beside a WAL database: SQLITE_IOERR (EFBIG)
    # where the old message said "restore a good copy, or delete it"
    state = tampered(good, tmp_path)
    before = state.read_bytes()
    code, out, err = lstm_run([tiny, *ARGS, "--state", state], DATA, limit=20 << 10)
    line = refused(code, out, err, "cannot open it as a state database",
                   "a file size limit", "ulimit -f", "the file is kept as it was")
    assert "delete" not in line and "restore" not in line
    assert state.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]    # no stray -wal/-shm
    code, _, err = lstm_run([tiny, *ARGS, "--state", state], DATA)      # the limit lifted
    assert code == 0 and "resumed 2 stream(s)" in err, err


def test_new_file_under_a_file_size_limit_says_so(tiny, tmp_path):
    state = tmp_path / "new.db"
    code, out, err = lstm_run([tiny, *ARGS, "--state", state], DATA, limit=20 << 10)
    line = refused(code, out, err, "cannot create it as a state database",
                   "a file size limit", "raise the limit")
    assert "delete" not in line and "restore" not in line and "kept as it was" not in line
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs to fill up; skipped where none can be mounted (not root)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_full_disk_at_restart_keeps_a_good_wal_state(tiny, good, small_disk):
    # user trial r1: SQLite fails sizing the -shm (SQLITE_IOERR_SHMSIZE, not SQLITE_FULL)
    state = small_disk / "s.db"
    shutil.copy(good, state)
    with open(small_disk / "filler", "wb", buffering=0) as f:     # the disk fills up
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    before = state.read_bytes()
    code, out, err = lstm_run([tiny, *ARGS, "--state", state], DATA)
    line = refused(code, out, err, "the disk is full", "free space on it and start again",
                   "the file is kept as it was")
    assert "delete" not in line and state.read_bytes() == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "s.db"]
    os.unlink(small_disk / "filler")
    code, _, err = lstm_run([tiny, *ARGS, "--state", state], DATA)
    assert code == 0 and "resumed 2 stream(s)" in err, err


def test_write_trouble_tells_a_full_disk_from_free_space(tmp_path, monkeypatch):
    class Full:
        f_bavail, f_frsize, f_files, f_favail = 0, 4096, 100, 50
    monkeypatch.setattr(os, "statvfs", lambda _: Full)
    what, todo = write_trouble(tmp_path / "s.db", "disk I/O error")
    assert what.startswith("the disk is full (disk I/O error; 0 KiB free") and "free space" in todo
    Full.f_bavail, Full.f_favail = 1 << 20, 0                          # no inodes left
    assert "no free inodes" in write_trouble(tmp_path / "s.db", "x")[0]


def test_remove_strays_removes_only_empty_files_it_did_not_find(tmp_path):
    db = tmp_path / "s.db"
    db.write_bytes(b"")
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    wal.write_bytes(b""), shm.write_bytes(b"\0\0\0")          # what a full disk leaves
    remove_strays(db, set())
    assert not wal.exists() and not shm.exists()
    wal.write_bytes(b"frames"), shm.write_bytes(b"\0" * 32768)  # a -wal with commits: precious
    remove_strays(db, set())
    assert wal.read_bytes() == b"frames" and shm.exists()
    wal.write_bytes(b"")                                       # there before the open: theirs
    remove_strays(db, {"-wal", "-shm"})
    assert wal.exists() and shm.exists()


# ---- values of every kind in every table: one line, exit 2, the file unchanged ----------

TAMPERED = {
    # user trial r3: a BLOB key no UTF-8 decoder takes, a commit count that is no number
    "blob-key": (["INSERT INTO streams SELECT X'ff00', fingerprint, steps, buffer, state, "
                  "prediction, seen, run, line, position FROM streams WHERE key = 'a'"],
                 "its key is a BLOB of bytes no sensor key has (X'ff00')"),
    "blob-key-of-a-text-key": (["INSERT INTO streams SELECT CAST('a' AS BLOB), fingerprint, "
                                "steps, buffer, state, prediction, seen, run, line, position "
                                "FROM streams WHERE key = 'a'"],
                               "its key 'a' is a BLOB, where lstm-run stores it as TEXT"),
    "commits-abc": (["UPDATE meta SET value = 'abc' WHERE name = 'commits'"],
                    "its meta row commits is 'abc', not a whole number"),
    "commits-negative": (["UPDATE meta SET value = '-5' WHERE name = 'commits'"],
                         "its meta row commits is '-5'"),
    "run-real": (["UPDATE meta SET value = 1.5 WHERE name = 'run'"],
                 "its meta row run is '1.5'"),
    "run-huge": (["UPDATE meta SET value = '9' || printf('%.40c', '9') WHERE name = 'run'"],
                 "its meta row run is '99999"),
    "run-blob": (["UPDATE meta SET value = X'31' WHERE name = 'run'"],
                 "its meta row run holds bytes"),
    "lines-text": (["UPDATE meta SET value = 'x' WHERE name = 'lines'"],
                   "its meta row lines is 'x'"),
    "closed-2": (["UPDATE meta SET value = '2' WHERE name = 'closed'"],
                 "its meta row closed is '2', not 0 or 1"),
    "id-not-hex": (["UPDATE meta SET value = 'zz' WHERE name = 'id'"],
                   "its meta row id is 'zz'"),
    "saved-at-inf": (["UPDATE meta SET value = '1e999' WHERE name = 'saved_at'"],
                     "its meta row saved_at is '1e999'"),
    "format-superscript": (["UPDATE meta SET value = '²' WHERE name = 'format'"],
                           "its state format is '²', not a version number"),
    "format-0": (["UPDATE meta SET value = '0' WHERE name = 'format'"],
                 "its state format is '0'"),
    "window-blob": (["UPDATE meta SET value = CAST(value AS BLOB) WHERE name = 'window'"],
                    "its meta row window holds bytes"),
    "seen-text": (["UPDATE streams SET seen = 'abc' WHERE key = 'a'"],
                  "sensor 'a': its seen time is 'abc', not a number"),
    "steps-text": (["UPDATE streams SET steps = 'abc' WHERE key = 'a'"],
                   "sensor 'a': its step count is 'abc'"),
    "state-null-bytes": (["UPDATE streams SET state = X'' WHERE key = 'a'"], "sensor 'a'"),
    "positions-steps-text": (["UPDATE positions SET steps = 'x'"],
                             "a row of its table positions (key 'z') is not one lstm-run "
                             "writes (steps 'x'"),
    "positions-steps-negative": (["UPDATE positions SET steps = -3"], "steps -3"),
    "positions-ready-7": (["UPDATE positions SET ready = 7"], "ready 7"),
    "positions-position-inf": (["UPDATE positions SET position = 9e999"], "position inf"),
    "positions-position-text": (["UPDATE positions SET position = '5'"], "position '5'"),
    "positions-last-short": (["UPDATE positions SET last = X'00'"], "last 1 bytes"),
    "positions-answer-text": (["UPDATE positions SET answer = 'x'"], "answer 'x'"),
    "positions-seen-null-ish": (["UPDATE positions SET seen = 'never'"], "seen 'never'"),
    "positions-blob-key": (["UPDATE positions SET key = X'ff'"],
                           "a row of its table positions: its key is a BLOB"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_values_are_refused_in_one_line(tiny, good, tmp_path, case):
    sql, says = TAMPERED[case]
    state = tampered(good, tmp_path, *sql)
    before = state.read_bytes()
    code, out, err = lstm_run([tiny, *ARGS, "--state", state], DATA)
    refused(code, out, err, f"the state file {state}", says)
    assert state.read_bytes() == before and beside(state) == set()


def test_a_huge_value_is_cut_in_the_message(tiny, good, tmp_path):
    state = tampered(good, tmp_path, "UPDATE meta SET value = printf('%.100000c', 'x') "
                     "WHERE name = 'model'", "UPDATE meta SET value = 'f' WHERE name = "
                     "'fingerprint'", "UPDATE meta SET value = 'x' || char(10) || 'y' "
                     "WHERE name = 'closed'")
    code, out, err = lstm_run([tiny, *ARGS, "--state", state], DATA)
    assert len(refused(code, out, err, "its meta row closed is 'x\\ny'")) < 400


def test_load_snapshots_refuses_a_blob_key_without_a_traceback(good, tmp_path):
    state = tampered(good, tmp_path, "UPDATE streams SET key = X'ff00' WHERE key = 'a'")
    with pytest.raises(SnapshotError, match="its key is a BLOB"):
        runtime.load_snapshots(state)


# ---- tables, triggers, indexes lstm-run never made: refused at start, named --------------

FOREIGN = {
    # user trial r4: answered, then "no such column: key" at the first save
    "positions-of-another-program": (["CREATE TABLE positions2 (x)", "DROP TABLE positions",
                                      "ALTER TABLE positions2 RENAME TO positions",
                                      "INSERT INTO positions VALUES (1)"],
                                     "its table positions is not the one lstm-run keeps "
                                     "(columns x, where lstm-run's are key TEXT PRIMARY KEY"),
    "positions-a-view": (["DROP TABLE positions",
                          "CREATE VIEW positions AS SELECT 1 AS x"],
                         "its positions is a view, where lstm-run keeps a table"),
    "streams-column-added": (["ALTER TABLE streams ADD COLUMN extra"],
                             "its table streams is not the one lstm-run keeps"),
    "streams-column-retyped": (["ALTER TABLE streams RENAME TO old",
                                "CREATE TABLE streams (key TEXT PRIMARY KEY, fingerprint TEXT "
                                "NOT NULL, steps TEXT NOT NULL, buffer BLOB NOT NULL, state "
                                "BLOB NOT NULL, prediction BLOB, seen REAL NOT NULL, run INTEGER "
                                "NOT NULL, line INTEGER NOT NULL, position NUMERIC)",
                                "DROP TABLE old"],
                               "steps TEXT NOT NULL"),
    "meta-column-added": (["ALTER TABLE meta ADD COLUMN extra"],
                          "its table meta is not the one lstm-run keeps"),
    "trigger": (["CREATE TRIGGER gone AFTER INSERT ON streams BEGIN DELETE FROM streams; END"],
                "it has a trigger gone on its table streams"),
    "unique-index": (["CREATE UNIQUE INDEX u ON streams (key, state)"],
                     "it has a unique index u on its table streams"),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_tables_lstm_run_did_not_make_are_refused_at_start(tiny, good, tmp_path, case):
    sql, says = FOREIGN[case]
    state = tampered(good, tmp_path, *sql)
    before = state.read_bytes()
    code, out, err = lstm_run([tiny, *ARGS, "--state", state], DATA)
    line = refused(code, out, err, says)
    assert "disk space" not in line and "delete" not in line
    assert state.read_bytes() == before and beside(state) == set()


def test_what_does_no_harm_is_accepted(tiny, good, tmp_path):
    """A table of the user's own and a plain index for their queries do not stop a run."""
    state = tampered(good, tmp_path, "CREATE TABLE notes (x)", "CREATE INDEX i ON streams (seen)")
    code, out, err = lstm_run([tiny, *ARGS, "--state", state], DATA)
    assert code == 0 and "resumed 2 stream(s)" in err, err
