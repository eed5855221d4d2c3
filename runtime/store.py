"""Every sensor's stream state in one SQLite database: what ``lstm-run --state FILE`` keeps.

One row per sensor holds what its stream needs to go on exactly (the recurrent state, the
window buffer, the step count) and what ties the row to the answers already written (the
step count again, which every answer line carries, and the input line of its last answer).
A save writes only the sensors that changed since the last one, in one transaction, so its
cost follows the traffic, not the number of sensors; the database is in WAL mode, so a
``kill -9`` at any moment leaves the last committed save, readable, and no temporary files.
A checkpoint (:meth:`StateStore.checkpoint`, at creation and when the feed is quiet) makes
the main file complete without its ``-wal``. One process at a time: the file is locked
(``flock``) while open. Every check that may refuse a file (SQLite's ``quick_check``, each
table's columns, every meta value read back, the ``positions`` rows) runs read-only before
anything is written: the file is untrusted input.

Schema (format 2)::

    meta(name TEXT PRIMARY KEY, value TEXT)       format, fingerprint, window, carry_state,
                                                  state names and units, features, targets,
                                                  buffer dtype, commits, lines, run, saved_at,
                                                  model (in words), id (random, per file),
                                                  closed (0 while a run has it open)
    streams(key TEXT PRIMARY KEY, fingerprint TEXT, steps INTEGER, buffer BLOB, state BLOB,
            prediction BLOB, seen REAL, run INTEGER, line INTEGER, position NUMERIC)
    positions(key TEXT PRIMARY KEY, steps INTEGER, ready INTEGER, position, last BLOB,
              answer BLOB, seen REAL)            made at the first save that needs it

``key`` is TEXT, or a BLOB for a key UTF-8 cannot hold (:func:`db_key`).
``state`` is the sensor's whole stream state in the byte codec of :mod:`runtime.state`
(CRC32 checked); ``steps`` and ``position`` repeat its step count and position for
``sqlite3`` readers; ``seen`` the wall-clock time of the sensor's last line; ``run``/``line``
the run (``meta.run`` counts them) and the input line of that run whose answer the row
includes last. ``buffer`` and ``prediction`` are empty: format 1 kept the window buffer and
last prediction there and the bare state arrays in ``state``; a format-1 database is
rewritten as format 2 when it is opened, in one transaction.

``positions`` keeps what the order check needs of a sensor dropped by ``--idle-timeout`` or
``--max-streams`` (:class:`runtime.sensors.Position`), so a resend of its old readings is not
fed again: its step count, whether that step was ready, its position (an int or a float, as
given), its last reading (float64) and that reading's answer (float32, NULL for none) as raw
bytes. A row is ~40 bytes and the key for one feature and one target; the table keeps the
:data:`POSITIONS_KEPT` most recently seen, and a sensor's row goes when it is saved as a
stream again.

An old ``.npz`` snapshot file (:func:`runtime.save_snapshots`) given as ``--state`` is read
once and replaced by a database holding the same streams (see :func:`open_store`).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import re
import shlex
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SnapshotError
from .sensors import Position
from .statefile import (backup_name, beside, db_key, lock, model_words, py_key, real_file,
                        remove_strays, write_trouble)
from .snapshot import DATABASE as MAGIC
from .snapshot import load_snapshots
from .state import StreamState, from_v1_row, unpack_many
from .stream import to_bytes_many

FORMAT = 2
# Dropped sensors whose positions are kept: beyond it, the ones silent longest are forgotten
# (a resend of their readings is then fed again). ~60 MB of rows at most for short keys.
POSITIONS_KEPT = 1_000_000
_NPZ = b"PK"                         # an .npz is a zip archive

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    steps INTEGER NOT NULL,
    buffer BLOB NOT NULL,
    state BLOB NOT NULL,
    prediction BLOB,
    seen REAL NOT NULL,
    run INTEGER NOT NULL,
    line INTEGER NOT NULL,
    position NUMERIC
) WITHOUT ROWID;
"""
_POSITIONS = """
CREATE TABLE IF NOT EXISTS positions (
    key TEXT PRIMARY KEY,
    steps INTEGER NOT NULL,
    ready INTEGER NOT NULL,
    position NOT NULL,
    last BLOB NOT NULL,
    answer BLOB,
    seen REAL NOT NULL
) WITHOUT ROWID;
"""


def sweep_temporary(path) -> list[Path]:
    """Remove the ``.NAME.XXXXXXXX.tmp`` files an interrupted snapshot save left beside ``path``."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp$")
    gone = []
    try:
        for entry in os.scandir(path.parent):
            if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                gone.append(Path(entry.path))
    except OSError:
        pass      # an unreadable folder: the save will say so
    return gone


class ModelChanged(SnapshotError):
    """The state file holds the streams of another model (another fingerprint)."""


class StateStore:
    """One SQLite state database, opened for one model.

    Parameters
    ----------
    path : the database file; created (with its tables) when missing.
    model : the :class:`~runtime.Model` whose streams it keeps.
    on_new_model : a file of another model: ``"refuse"`` (:class:`ModelChanged`, both models
        named) or ``"fresh"`` (the file is copied to a backup beside it, see :func:`backup_name`,
        and every sensor starts fresh).

    The file is locked (``flock``) while it is open, so a second ``lstm-run`` on it is refused.
    Every check that can refuse the file runs on a read-only connection before anything is
    written: a refused file is left byte for byte as it was.

    Raises
    ------
    SnapshotError : the file is not a database this runtime can read, is in use, or holds the
        state of another model or streaming mode; the message names the file and what to do.
    """

    def __init__(self, path, model, *, on_new_model: str = "refuse"):
        self.path, self.model = Path(path), model
        self.units = tuple(int(u) for u in model.units)
        # State slots (lstm_edge.state_slots): a stream carrying B > 1 keeps B states per
        # tensor, stored tensor by tensor, each in the order the slots come next.
        self.slots = int(model.slots) if model.carry_state else 1
        self.dtype = np.dtype(model.dtype if model.tokens else np.float32)
        self.notes: list[str] = []     # what the caller should tell the user (a lost -wal, ...)
        self.file = real_file(self.path)
        self._existed = existed = self.file.exists()
        self._lock = lock(self.file, self.path)
        had = beside(self.file)
        try:
            self.meta = self._open(existed, on_new_model)
            if self.meta.get("format") == "1":
                self.meta = self._migrate(self.meta)
            # Both checked in _check_meta: whole numbers >= 0.
            self.run = int(self.meta.get("run", "0")) + 1
            self.commits = int(self.meta.get("commits", "0"))
            # Dropped sensors' positions: a count that may run high (a recount trims the
            # table); its rows were checked in _check.
            self.positions = 0
            if self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                               "name = 'positions'").fetchone():
                self.positions = self.db.execute("SELECT count(*) FROM positions").fetchone()[0]
        except BaseException:
            self.close(refused=True)
            if not existed:               # leave no empty file behind
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(OSError):
                        os.unlink(f"{self.file}{suffix}")
            else:                         # nor the empty -wal/-shm a refused open made
                remove_strays(self.file, had)
            raise
        st = os.stat(self.file)
        self._inode = (st.st_dev, st.st_ino)      # the file saved into: see _still_there

    def _connect(self, mode: str = "rwc") -> sqlite3.Connection:
        # A file: URI of the absolute path: no name is ever taken as ":memory:" or a URI.
        uri = f"file:{urllib.parse.quote(str(self.file.absolute()))}?mode={mode}"
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    def _open(self, existed: bool, on_new_model: str) -> dict:
        """Check the file (read-only), then set the database up; the meta table's values."""
        meta: dict = {}
        try:
            if existed:
                try:
                    meta = self._check()
                except ModelChanged as exc:
                    if on_new_model != "fresh":
                        raise
                    self._set_aside(exc)
            self.db = db = self._connect()
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL: a commit survives the process being killed (the WAL is in the OS's
            # hands); only a power cut may take back the last commits.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA cache_size=-65536")    # 64 MiB: the key index stays cached
            # Checkpoint (copy the WAL into the file, with an fsync) once the WAL holds
            # 64 MiB, not SQLite's default 4 MiB: a save of 1,000 of 100,000 sensors then
            # costs 4-5x less (bench/state.py). Quiet moments checkpoint too (checkpoint()).
            db.execute("PRAGMA wal_autocheckpoint=16384")
            db.execute(f"PRAGMA journal_size_limit={64 << 20}")
            if not meta:                 # nothing is written to a file that is there
                db.executescript(_SCHEMA)
                meta = {**self._model_meta(), "id": uuid.uuid4().hex, "closed": "1"}
                self._write_meta(meta)
                self.checkpoint()        # the main file alone holds the tables from now on
        except sqlite3.Error as exc:
            if existed:
                raise self._sqlite_error(exc, "cannot open it as a state database",
                                         "restore a good copy, or delete it to start the "
                                         "streams fresh") from None
            raise self._sqlite_error(exc, "cannot create it as a state database",
                                     "check the disk and the folder's permissions, or give "
                                     "another --state file") from None
        return meta

    def _check(self) -> dict:
        """Read and check an existing file without writing to it; its meta values."""
        if self.file.stat().st_size == 0:
            # A file truncated by a full disk or a bad copy: not taken for a new database.
            raise self._error("it is empty (0 bytes), not a state database", "restore a good "
                              "copy, or delete it to start the streams fresh")
        wal = Path(f"{self.file}-wal")
        had_wal = wal.exists()
        ro = self._connect("ro")
        try:
            tables = {str(name).lower() for (name,) in ro.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not {"meta", "streams"} <= tables:
                raise self._error(f"it is a SQLite database of another program (tables "
                                  f"{_shown(', '.join(sorted(tables)), 200)})",
                                  "give lstm-run a --state file of its own")
            # SQLite's own check of every page (0.08-0.15 s for 100,000 sensors, 43 MB): a damaged
            # file is refused at start, not met at the first save hours later.
            damage = ro.execute("PRAGMA quick_check(3)").fetchall()
            if damage != [("ok",)]:
                said = [line for d in damage for line in str(d[0]).splitlines()
                        if line.strip() and not line.startswith("***")]
                raise self._error(f"its pages are damaged (SQLite quick_check: "
                                  f"{'; '.join(said[:3])})", "restore a good copy, or "
                                  "delete it to start the streams fresh")
            meta = {}
            if tables:
                self._check_columns(ro, "meta")
                meta = dict(ro.execute("SELECT name, value FROM meta").fetchall())
            if meta:
                self._check_meta(meta)
            if tables:
                self._check_tables(ro, tables, meta)
            if had_wal and meta.get("id") and self._main_id() not in (None, meta["id"]):
                raise self._error(f"its -wal file {wal.name} belongs to another database",
                                  f"move {wal.name} away to resume from the file's last "
                                  f"checkpoint, or restore the two files together")
        finally:
            ro.close()
        if meta.get("closed") == "0" and not had_wal:
            self.notes.append(f"the state file {self.path} was not closed cleanly and has no "
                              f"-wal file: resuming from what the file holds (commit "
                              f"{meta.get('commits', '0')}). Where another program (sqlite3) "
                              f"opened it since, that is every commit; where its -wal file was "
                              f"deleted or not copied with it, the commits in that file are "
                              f"lost and their sensors resume from earlier steps")
        return meta

    def _main_id(self) -> str | None:
        """The database id in the main file alone (its -wal not applied)."""
        uri = f"file:{urllib.parse.quote(str(self.file.absolute()))}?immutable=1"
        main = sqlite3.connect(uri, uri=True)
        try:
            row = main.execute("SELECT value FROM meta WHERE name = 'id'").fetchone()
        except sqlite3.Error:
            return None           # no tables yet in the main file
        finally:
            main.close()
        return None if row is None else str(row[0])

    # -- the tables --

    def _check_columns(self, ro: sqlite3.Connection, table: str, *, version: int = FORMAT
                       ) -> None:
        """Refuse ``table`` unless its columns are lstm-run's (names, types, NOT NULL, key):
        a table another program made under that name is found now, not at the first save."""
        want = _columns(table, version)
        have = _columns_of(ro, table)
        if have != want:
            fix = (f"where another program made it, rename it (sqlite3 {self.path} \"ALTER "
                   f"TABLE {table} RENAME TO other\") and start again; otherwise restore a "
                   f"good copy" if table == "positions" else
                   "restore a good copy, or give lstm-run a --state file of its own")
            raise self._error(f"its table {table} is not the one lstm-run keeps (columns "
                              f"{_shown(_said(have), 200)}, where lstm-run's are "
                              f"{_said(want)})", fix)

    def _check_tables(self, ro: sqlite3.Connection, tables: set[str], meta: dict) -> None:
        """The columns of ``streams`` and ``positions``, what else SQLite keeps on them (a
        trigger, a unique index, a view in a table's name: each would fail or change a save
        hours later), and the rows of ``positions`` (read one at a time during the run)."""
        form = int(meta.get("format", FORMAT))
        self._check_columns(ro, "streams", version=form)
        if "positions" in tables:
            self._check_columns(ro, "positions")
        for kind, name, table, sql in ro.execute(
                "SELECT type, name, tbl_name, sql FROM sqlite_master"):
            name, table = str(name), str(table)
            ours = table.lower() in ("meta", "streams", "positions")
            if name.lower() in ("meta", "streams", "positions") and kind != "table":
                raise self._error(f"its {name} is a {kind}, where lstm-run keeps a table",
                                  f"where another program made it, drop it (sqlite3 "
                                  f"{self.path} \"DROP {str(kind).upper()} {name}\"); "
                                  f"otherwise restore a good copy")
            unique = kind == "index" and sql and re.search(r"\bUNIQUE\b", str(sql), re.I)
            if ours and (kind == "trigger" or unique):
                what = "trigger" if kind == "trigger" else "unique index"
                raise self._error(f"it has a {what} {_shown(name, 60)} on its table {table}, "
                                  f"which lstm-run never makes (it would act on every save)",
                                  f"where another program made it, drop it (sqlite3 "
                                  f"{self.path} \"DROP {str(kind).upper()} {name}\"); "
                                  f"otherwise restore a good copy")
        if "positions" in tables:
            self._check_positions(ro)

    def _check_positions(self, ro: sqlite3.Connection) -> None:
        """Every row of ``positions`` holds what :meth:`position` reads: one SQL pass."""
        m = self.model
        row = ro.execute(
            "SELECT key, steps, ready, position, last, answer, seen FROM positions WHERE "
            "typeof(key) NOT IN ('text', 'blob') OR typeof(steps) != 'integer' OR steps < 0 "
            "OR typeof(ready) != 'integer' OR ready NOT IN (0, 1) "
            "OR typeof(position) NOT IN ('integer', 'real') OR abs(position) > 1.7e308 "
            "OR typeof(last) != 'blob' OR length(last) != ? "
            "OR (answer IS NOT NULL AND (typeof(answer) != 'blob' OR length(answer) != ?)) "
            "OR typeof(seen) NOT IN ('integer', 'real') OR abs(seen) > 1.7e308 LIMIT 1",
            (8 * m.n_features, 4 * m.n_targets)).fetchone()
        if row is not None:
            said = ", ".join(f"{name} {len(v)} bytes" if isinstance(v, bytes) else
                             f"{name} {_shown(repr(v), 24)}" for name, v in
                             zip(("steps", "ready", "position", "last", "answer", "seen"), row[1:]))
            raise self._error(f"a row of its table positions (key {_shown(repr(row[0]), 40)}) "
                              f"is not one lstm-run writes ({said}, where lstm-run writes steps "
                              f"a whole number >= 0, ready 0 or 1, position and seen finite "
                              f"numbers, last {8 * m.n_features} bytes, answer "
                              f"{4 * m.n_targets} bytes or NULL)", "restore a good copy")
        for (key,) in ro.execute("SELECT key FROM positions WHERE typeof(key) = 'blob'"):
            try:
                py_key(key)
            except ValueError as exc:
                raise self._error(f"a row of its table positions: {exc}",
                                  "restore a good copy") from None

    def _set_aside(self, changed: ModelChanged) -> None:
        """``--on-new-model fresh``: copy the file to a backup, then empty it in place.

        Emptied, not renamed: the lock is on this file, so no other process can take it in
        between.
        """
        backup = backup_name(self.path)
        old = self._connect("ro")
        try:
            with sqlite3.connect(str(backup)) as copy:
                old.backup(copy)              # the -wal's commits included
            copy.close()
        finally:
            old.close()
        os.truncate(self.file, 0)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.file}{suffix}")
        self.notes.append(f"{changed}: kept it as {backup} and started every sensor fresh "
                          f"(--on-new-model fresh)")

    def checkpoint(self) -> bool:
        """Copy the WAL into the main file: the file alone is then complete.

        PASSIVE: it never waits for a reader (``sqlite3 FILE``); False where one kept it from
        copying every commit. Raises SnapshotError where the disk refuses (the commits stay
        in the WAL).
        """
        try:
            busy, frames, copied = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc, "its last saves could not be copied from its -wal "
                                     "file", "free disk space; keep the -wal file beside "
                                     "it") from None
        return not busy and frames == copied

    # -- meta --

    def _model_meta(self) -> dict[str, str]:
        m = self.model
        return {"format": str(FORMAT), "fingerprint": m.fingerprint, "window": str(m.window),
                "carry_state": json.dumps(bool(m.carry_state)),
                "state": json.dumps(list(m.state_inputs)), "units": json.dumps(self.units),
                "features": str(m.n_features), "targets": str(m.n_targets),
                "buffer_dtype": self.dtype.str, "model": model_words(m),
                **({"slots": str(self.slots)} if self.slots > 1 else {})}

    def _check_meta(self, meta: dict) -> None:
        want = self._model_meta()
        form = meta.get("format", "")
        if not isinstance(form, str) or not re.fullmatch(r"[0-9]{1,9}", form) or \
                int(form) < 1:
            raise self._error(f"its state format is {_shown(repr(form), 20)}, not a version number "
                              f"lstm-edge writes (1 to {FORMAT})",
                              "restore a good copy, or delete it to start the streams fresh")
        if int(form) > FORMAT:
            raise self._error(f"it has state format {form}, this runtime reads up "
                              f"to {FORMAT}", "upgrade lstm-edge")
        self._check_values(meta)
        if meta.get("fingerprint") != want["fingerprint"]:
            old = _shown(meta.get("model") or
                         f"sha256 {str(meta.get('fingerprint', 'none'))[:12]}…", 200)
            raise ModelChanged(
                f"the state file {self.path}: it holds the streams of another model ({old}); "
                f"this one is {want['model']}; give another --state file, or run with "
                f"--on-new-model fresh to keep it as a backup and start every sensor fresh")
        for name in ("window", "carry_state", "state", "units", "features", "targets",
                     "buffer_dtype", "slots"):
            if meta.get(name) != want.get(name):
                raise self._error(f"it was saved with {name}={_shown(meta.get(name), 60)}, "
                                  f"this model "
                                  f"streams with {name}={want[name]}",
                                  "load the model with the same --window/--carry-state, or "
                                  "give another --state file")

    def _check_values(self, meta: dict) -> None:
        """Every meta value lstm-run reads back is text of its kind (see :data:`_META`)."""
        for name, value in meta.items():
            if name not in _META:
                continue
            if not isinstance(value, str):
                kind = "NULL" if value is None else type(value).__name__
                raise self._error(f"its meta row {name} holds {kind} {_shown(repr(value), 40)}, "
                                  f"where lstm-run writes text", "restore a good copy")
            pattern, words, safe = _META[name]
            if pattern is None or re.fullmatch(pattern, value):
                if name != "saved_at" or math.isfinite(float(value)):
                    continue
            fix = "restore a good copy"
            if safe is not None:
                fix += (f", or set it back with sqlite3 {self.path} \"UPDATE meta SET value "
                        f"= '{safe}' WHERE name = '{name}'\"")
            raise self._error(f"its meta row {name} is {_shown(repr(value), 40)}, not {words}", fix)

    def _write_meta(self, values: dict) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                            list(values.items()))

    # -- saving --

    def save(self, slots: Iterable[tuple[str, object, float, int]], dropped: Iterable[str] = (),
             *, lines: int | None = None, positions: Mapping[str, Position] | None = None
             ) -> int:
        """Write the given sensors' rows and delete the dropped ones, in one transaction.

        Parameters
        ----------
        slots : ``(key, stream, seen, line)`` per changed sensor; ``seen`` in wall-clock
            seconds, ``line`` the input line of its last answer in this run.
        dropped : keys whose rows go.
        lines : input lines of this run answered, all of them included in the state (None:
            not known, left as it was).
        positions : dropped sensors' positions, kept in their place (see the module).

        Returns the number of rows written. Raises SnapshotError where the disk refuses
        (full, read-only); the database then holds the last commit, as it was.
        """
        self._still_there()
        with _gc_paused():
            rows = self._rows(slots)
        kept = [(db_key(k), p.steps, int(p.ready), p.position, p.last.astype("<f8").tobytes(),
                 None if p.answer is None else p.answer.astype("<f4").tobytes(), p.seen)
                for k, p in (positions or {}).items()]
        self.commits += 1
        # closed=0 until close(): a main file that says so and has no -wal beside it has
        # lost its last commits (see _check).
        meta = {"commits": str(self.commits), "run": str(self.run),
                "saved_at": repr(time.time()), "closed": "0"}
        if "id" not in self.meta:        # a file from before ids: one from its next save on
            meta["id"] = self.meta["id"] = uuid.uuid4().hex
            meta["model"] = model_words(self.model)
        if lines is not None:
            meta["lines"] = str(lines)
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.executemany("DELETE FROM streams WHERE key = ?",
                                    ((db_key(k),) for k in dropped))
                self.db.executemany(
                    "INSERT OR REPLACE INTO streams (key, fingerprint, steps, buffer, state, "
                    "prediction, seen, run, line, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows)
                self._keep_positions(kept, rows)
                self._write_meta(meta)
                self.db.execute("COMMIT")
                self.meta["closed"] = "0"
            except BaseException:
                if self.db.in_transaction:     # SQLITE_FULL has rolled it back already
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            self.commits -= 1
            raise self._sqlite_error(exc, "the state could not be saved; the file holds the "
                                     "last save", "free disk space or check the file's "
                                     "permissions, then resume from it") from None
        return len(rows)

    def _still_there(self) -> None:
        """SnapshotError where the file at the path is no longer the one open (deleted or
        replaced while the run went on): a save would go into a file no one can open, and the
        lock would no longer keep a second run off the path."""
        try:
            st = os.stat(self.path)
            there = (st.st_dev, st.st_ino) == self._inode
        except OSError:
            there = False
        if not there:
            raise self._error("it was deleted or replaced while this lstm-run ran, so this "
                              "run's state cannot be saved there (nor is the path locked)",
                              "stop any other lstm-run on it, then start again: the streams "
                              "resume from what the file at the path holds, or start fresh "
                              "where there is none")

    def _keep_positions(self, kept: list, rows: list) -> None:
        """Inside save's transaction: write the dropped sensors' positions, delete those of
        sensors saved as streams again, and trim the table to :data:`POSITIONS_KEPT`."""
        if kept:
            self.db.execute(_POSITIONS)         # one statement: executescript would commit
            self.db.executemany("INSERT OR REPLACE INTO positions (key, steps, ready, "
                                "position, last, answer, seen) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                kept)
            self.positions += len(kept)
        if self.positions and rows:
            self.db.executemany("DELETE FROM positions WHERE key = ?", ((r[0],) for r in rows))
        if self.positions > POSITIONS_KEPT:
            count = self.db.execute("SELECT count(*) FROM positions").fetchone()[0]
            if count > POSITIONS_KEPT:            # down to 90%: not one trim every save
                self.db.execute("DELETE FROM positions WHERE key IN (SELECT key FROM positions "
                                "ORDER BY seen LIMIT ?)", (count - POSITIONS_KEPT * 9 // 10,))
                count = POSITIONS_KEPT * 9 // 10
            self.positions = count

    def position(self, key: str) -> Position | None:
        """The position a dropped sensor left (see the module); None where there is none."""
        if not self.positions:
            return None
        row = self.db.execute("SELECT steps, ready, position, last, answer, seen FROM positions "
                              "WHERE key = ?", (db_key(key),)).fetchone()
        if row is None:
            return None
        steps, ready, position, last, answer, seen = row
        m = self.model
        try:
            last = np.frombuffer(last, "<f8").astype(np.float64)
            answer = None if answer is None else np.frombuffer(answer, "<f4").astype(np.float32)
            if not isinstance(position, (int, float)) or last.shape != (m.n_features,) or \
                    (answer is not None and answer.shape != (m.n_targets,)):
                raise ValueError("sizes")
        except (TypeError, ValueError):
            raise self._row_error(key, f"its kept position (table positions) cannot be read: "
                                  f"{type(position).__name__} position, "
                                  f"{len(last) if isinstance(last, bytes) else '?'} bytes of "
                                  f"reading") from None
        return Position(position, last, answer, int(steps), bool(ready), float(seen))

    def _rows(self, slots) -> list[list]:
        """The database rows of ``(key, stream, seen, line)``: each stream's state bytes."""
        fingerprint, run, slots = self.model.fingerprint, self.run, list(slots)
        blobs = to_bytes_many([stream for _, stream, _, _ in slots])
        return [[db_key(key), fingerprint, stream.steps, b"", blob, None, seen, run, line,
                 stream.position] for (key, stream, seen, line), blob in zip(slots, blobs)]

    def _migrate(self, meta: dict) -> dict:
        """Rewrite a format-1 database as format 2, in one transaction (see the module)."""
        rows = self.db.execute("SELECT key, steps, buffer, state, prediction FROM streams"
                               ).fetchall()
        blobs = []
        for key, steps, buf, state, pred in rows:
            try:
                blobs.append((from_v1_row(StreamState, meta, steps, buf, state, pred)
                              .to_bytes(), key))
            except (KeyError, ValueError, TypeError) as exc:
                raise self._row_error(key, f"its format-1 row cannot be read ({exc})") from None
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("ALTER TABLE streams ADD COLUMN position NUMERIC")
            self.db.executemany("UPDATE streams SET state = ?, buffer = x'', prediction = NULL "
                                "WHERE key = ?", blobs)
            self._write_meta({"format": str(FORMAT)})
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        return {**meta, "format": str(FORMAT)}

    # -- loading --

    def load(self) -> list[tuple[str, Any, float]]:
        """Every sensor's stream, least recently seen first: ``(key, stream, seen)``.

        Every row is checked before any stream is made (its checksum, its model, the sizes of
        its arrays and that they hold finite numbers); one error names every bad sensor.
        """
        with _gc_paused():
            try:
                rows = self.db.execute("SELECT key, fingerprint, steps, state, seen FROM "
                                       "streams ORDER BY seen, key").fetchall()
            except sqlite3.DatabaseError as exc:
                raise self._error(f"its rows cannot be read ({exc})", "restore a good copy, "
                                  "or delete it to start fresh") from None
            return self._streams(rows)

    def _streams(self, rows: list) -> list[tuple[str, Any, float]]:
        """:meth:`load`'s streams of the rows ``(key, fingerprint, steps, state, seen)``."""
        model, keys, bad = self.model, [], []
        for key, *_, seen in rows:
            try:
                keys.append(py_key(key))
            except ValueError as exc:
                keys.append(key)
                bad.append(f"a row: {exc}")
                continue
            if isinstance(seen, bool) or not isinstance(seen, (int, float)) or \
                    not math.isfinite(seen):
                bad.append(f"sensor {_shown(repr(keys[-1]), 40)}: its seen time is "
                           f"{_shown(repr(seen), 24)}, not a number")
        streams: list = [None] * len(rows)
        decoded, _ = unpack_many([blob if fingerprint == model.fingerprint else None
                                  for _, fingerprint, _, blob, _ in rows])
        for at, columns in decoded:          # many rows checked and restored together
            for i, stream in zip(at, model.restore_many(columns)):
                if stream is not None and stream.steps == rows[i][2]:
                    streams[i] = stream
        damaged = []                         # the keys of rows that are read but bad
        for i, (_, fingerprint, steps, blob, _) in enumerate(rows):
            if streams[i] is None and not isinstance(keys[i], str):
                continue                     # a key no sensor has: said above
            if streams[i] is None:           # the others one by one, saying what is wrong
                try:
                    streams[i] = self._restore(fingerprint, steps, blob)
                except SnapshotError as exc:
                    bad.append(f"sensor {_shown(repr(keys[i]), 40)}: {_bare(str(exc))}")
                    damaged.append(keys[i])
        if bad:
            more = f" (and {len(bad) - 5} more sensors)" if len(bad) > 5 else ""
            raise self._error("; ".join(bad[:5]) + more, self._start_afresh(damaged, len(bad)))
        return [(key, stream, row[4]) for key, stream, row in zip(keys, streams, rows)]

    def _start_afresh(self, keys: list[str], bad: int) -> str:
        """What to do about ``bad`` unusable rows, ``keys`` the sensors of those read: restore
        a good copy, or start those sensors alone afresh (deleting the file would start
        every sensor afresh, and a restarted ``tail -n +1`` would feed them all again)."""
        whole = "restore a good copy"
        if len(keys) != bad or len(keys) > 5 or any(len(k) > 40 or not k.isprintable()
                                                     or set(k) & set('"$`\\') for k in keys):
            return f"{whole}, or delete the file to start every sensor fresh"
        quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys)
        return (f"{whole}; or start {'this sensor' if len(keys) == 1 else 'these sensors'} "
                f"alone afresh, the others resuming: sqlite3 {shlex.quote(str(self.path))} "
                f"\"DELETE FROM streams WHERE key IN ({quoted})\" ({'its' if len(keys) == 1 else 'their'} "
                f"readings still in the feed are then fed again, to a fresh stream)")

    def _restore(self, fingerprint, steps, blob):
        """One row's stream, every check one by one; SnapshotError saying what is wrong."""
        model = self.model
        if fingerprint != model.fingerprint:
            raise SnapshotError(f"its row is for another model (sha256 "
                                f"{str(fingerprint)[:12]}…)")
        if not isinstance(blob, bytes):
            raise SnapshotError(f"its state is {type(blob).__name__}, not bytes")
        snap = StreamState.from_bytes(blob, "its state")
        if steps != snap.steps:
            raise SnapshotError(f"its step count is {steps!r}, its state's {snap.steps}: the "
                                f"row is inconsistent")
        stream = model.stream(missing=model.missing)
        stream.restore(snap, "its state")
        return stream

    def summary(self) -> dict:
        """The meta table's values (lines, commits, run, saved_at, ...) as strings."""
        return dict(self.db.execute("SELECT name, value FROM meta").fetchall())

    def close(self, *, refused: bool = False) -> None:
        """Mark the file closed cleanly and close it (SQLite folds the WAL into the file and
        removes it), then let the lock go. ``refused``: its rows were refused; it is left
        as it was."""
        db = getattr(self, "db", None)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                if not refused and getattr(self, "meta", {}).get("closed") != "1":
                    self._write_meta({"closed": "1"})
            with contextlib.suppress(sqlite3.Error):
                db.close()
            self.db = None        # type: ignore[assignment]
        lock = getattr(self, "_lock", None)
        if lock is not None:
            os.close(lock)        # after the connection: closing it drops SQLite's locks too
            self._lock = None

    # -- messages --

    def _error(self, what: str, todo: str) -> SnapshotError:
        return SnapshotError(f"the state file {self.path}: {what}; {todo}")

    def _sqlite_error(self, exc: sqlite3.Error, what: str, todo: str) -> SnapshotError:
        """``what`` failed with ``exc``; ``todo`` is said only where the file itself is bad.

        A full disk, a file size limit, an I/O error, a lock or a permission says what it is
        and that the file is kept: deleting a good state file would feed a restarted
        ``tail -n +1`` everything again.
        """
        code = getattr(exc, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF     # SQLITE_IOERR_SHMSIZE -> IOERR
        kept = "; the file is kept as it was" if self._existed else ""
        if primary in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
            trouble = write_trouble(self.file, str(exc))
            if trouble is None and primary == sqlite3.SQLITE_FULL:
                trouble = (f"the disk is full ({exc})", "free space on it and start again")
            if trouble is not None:
                return self._error(f"{what}: {trouble[0]}", trouble[1] + kept)
            return self._error(f"{what}: cannot write beside it (an I/O error: {exc})",
                               f"check the disk (dmesg, df) and start again{kept}")
        if primary == sqlite3.SQLITE_READONLY:
            return self._error(f"{what}: it is read-only ({exc})", "make it and its folder "
                               "writable, or give another --state file")
        if primary in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
            return self._error(f"{what}: it or its -wal/-shm beside it cannot be opened "
                               f"({exc})", f"check the permissions of the file, its -wal "
                               f"and -shm and its folder, then start again{kept}")
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return self._error(f"{what}: another program holds a lock on it ({exc})",
                               f"close that program (a sqlite3 shell in a transaction), then "
                               f"start again{kept}")
        if primary in (None, sqlite3.SQLITE_ERROR, sqlite3.SQLITE_CORRUPT,
                       sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_FORMAT, sqlite3.SQLITE_SCHEMA,
                       sqlite3.SQLITE_MISMATCH, sqlite3.SQLITE_RANGE, sqlite3.SQLITE_TOOBIG,
                       sqlite3.SQLITE_CONSTRAINT):
            return self._error(f"{what} ({exc})", todo)      # what the file holds is bad
        return self._error(f"{what} ({exc})", f"start again{kept}")

    def _row_error(self, key, what: str) -> SnapshotError:
        return self._error(f"sensor {_shown(repr(key), 40)}: {what}",
                           "restore a good copy, or delete the file to start the streams "
                           "fresh")


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector paused while many rows or streams are made at once:
    each of its full passes walks every object made so far, a third of the time a load of
    100,000 sensors takes (bench/state.py). It runs again after, for any cycle made."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# The meta rows lstm-run reads back, beyond those compared with the model's: a pattern of
# their text (None: any), in words, and a value that is safe to set (None: none is).
_META = {
    "commits": (r"[0-9]{1,18}", "a whole number >= 0", "0"),     # saves, for the notes
    "run": (r"[0-9]{1,18}", "a whole number >= 0", "0"),         # runs, for the rows' run
    "lines": (r"[0-9]{1,18}", "a whole number >= 0", "0"),       # said at a resume
    "closed": (r"[01]", "0 or 1", "0"),
    "id": (r"[0-9a-f]{32}", "32 hexadecimal digits", None),
    "saved_at": (r"[0-9]{1,15}(\.[0-9]*)?(e[+-]?[0-9]+)?", "a time in seconds", "0"),
    **{name: (None, "", None) for name in ("format", "fingerprint", "window", "carry_state",
                                           "state", "units", "features", "targets",
                                           "buffer_dtype", "slots", "model")},
}


@functools.cache
def _columns(table: str, version: int = FORMAT) -> list[tuple]:
    """``(name, type, notnull, pk)`` of each column of lstm-run's ``table``, as SQLite reports
    them for the schema above (format 1: ``streams`` without ``position``)."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA + _POSITIONS)
        cols = _columns_of(db, table)
    finally:
        db.close()
    return [c for c in cols if not (version == 1 and table == "streams" and c[0] == "position")]


def _columns_of(db: sqlite3.Connection, table: str) -> list[tuple]:
    """``(name, TYPE, notnull, pk)`` of each column of ``table`` in ``db``. A key's NOT NULL
    is not compared: format-1 files of rowid tables (before WITHOUT ROWID) lack it."""
    return [(name, str(kind).upper(), bool(notnull) and not pk, pk)
            for name, kind, notnull, pk in db.execute(
                'SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (table,))]


def _said(columns: list[tuple]) -> str:
    """Columns in words: ``key TEXT PRIMARY KEY, steps INTEGER NOT NULL, ...``."""
    return ", ".join(" ".join(filter(None, (str(name), str(kind), "NOT NULL" if notnull else "",
                                            "PRIMARY KEY" if pk else "")))
                     for name, kind, notnull, pk in columns) or "none"


def _shown(value, most: int) -> str:
    """A value from the file in a message: plain where it is short, printable text; else its
    repr, cut to ``most`` characters (a tampered value may be a megabyte, or hold a newline)."""
    text = value if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= most else text[:most] + "…"


def _bare(message: str) -> str:
    """A state error without its advice, which the store's message gives once."""
    for advice in ("; restore a good copy, or start the stream fresh", ": the state is corrupt"):
        message = message.replace(advice, "")
    return message


def open_store(path, model, *, warn=None, on_new_model: str = "refuse") -> StateStore:
    """The state database at ``path`` for ``model``: made, opened, or converted from an npz.

    ``path`` may hold an ``.npz`` snapshot file (:func:`runtime.save_snapshots`, the format
    ``lstm-run --state`` wrote before): its streams are checked against the model, written
    into a new database beside it, and that database replaces the file at the same path, in
    one :func:`os.replace` (a crash before it leaves the npz as it was). Temporary files an
    interrupted save left beside ``path`` are removed first. ``on_new_model``: see
    :class:`StateStore`; ``warn(message)`` gets what the user should know (a conversion, a
    missing ``-wal``, a file kept as a backup).
    """
    path = Path(path)
    real_file(path)                  # no read of a device, a URI or ":memory:"
    sweep_temporary(path)
    if path.exists() and not path.is_dir():
        with open(path, "rb") as f:
            head = f.read(16)
        if head.startswith(_NPZ):
            held = lock(real_file(path), path)     # one conversion (and run) at a time
            try:
                return _convert(path, model, warn)
            finally:
                if held is not None:     # the old npz's inode: SQLite's locks are elsewhere
                    os.close(held)
        if head and head != MAGIC:
            raise SnapshotError(f"the state file {path} is neither a state database nor an .npz "
                                f"snapshot file (it starts with {head[:8]!r}); give another "
                                f"--state file, or delete it to start fresh")
    store = StateStore(path, model, on_new_model=on_new_model)
    for note in store.notes:
        if warn is not None:
            warn(note)
    return store


def _convert(path: Path, model, warn) -> StateStore:
    """Read an npz snapshot file and replace it with a state database of the same streams.

    The caller holds the npz's lock: what an interrupted conversion left is removed first.
    """
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            os.unlink(f"{path}.converting{suffix}")
    snaps = load_snapshots(path)
    streams = []
    for key, snap in snaps.items():
        try:
            streams.append((key, model.stream(snap)))
        except SnapshotError as exc:
            raise SnapshotError(f"the state file {path}: sensor {key!r}: {exc}") from None
    tmp = path.with_name(path.name + ".converting")
    try:
        store = StateStore(tmp, model)
        try:
            now = time.time()
            store.save(((k, s, now, 0) for k, s in streams))
        finally:
            store.close()                                # folds the WAL into the file
    except SnapshotError as exc:                         # a full disk: the npz stays
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(f"{tmp}{suffix}")
        raise SnapshotError(f"{exc}; {path} is kept as it was") from None
    os.replace(tmp, path)
    if warn is not None:
        warn(f"converted {path} from an .npz snapshot file to a state database "
             f"({len(streams)} stream(s)); it is read and saved as SQLite from now on")
    return StateStore(path, model)
