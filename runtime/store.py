"""Every sensor's stream state in one SQLite database: what ``lstm-run --state FILE`` keeps.

One row per sensor holds what its stream needs to go on exactly (the recurrent state, the
window buffer, the step count) and what ties the row to the answers already written (the
step count again, which every answer line carries, and the input line of its last answer).
A save writes only the sensors that changed since the last one, in one transaction, so its
cost follows the traffic, not the number of sensors; the database is in WAL mode, so a
``kill -9`` at any moment leaves the last committed save, readable, and no temporary files.
A checkpoint (:meth:`StateStore.checkpoint`, at creation and when the feed is quiet) makes
the main file complete without its ``-wal``. One process at a time: the file is locked
(``flock``) while open. Every check that may refuse a file (including SQLite's
``quick_check``) runs read-only before anything is written.

Schema (format 1)::

    meta(name TEXT PRIMARY KEY, value TEXT)       format, fingerprint, window, carry_state,
                                                  state names and units, features, targets,
                                                  buffer dtype, commits, lines, run, saved_at,
                                                  model (in words), id (random, per file),
                                                  closed (0 while a run has it open)
    streams(key TEXT PRIMARY KEY, fingerprint TEXT, steps INTEGER, buffer BLOB, state BLOB,
            prediction BLOB, seen REAL, run INTEGER, line INTEGER)

``key`` is TEXT, or a BLOB for a key UTF-8 cannot hold (:func:`db_key`). ``state`` is every
state tensor's ``(units,)`` float32 values, one after the other in the
order ``meta.state`` names them; ``buffer`` the ``(m, features)`` last samples fed, C order, in
``meta.buffer_dtype``; ``prediction`` ``(targets,)`` float32 or NULL; ``seen`` the wall-clock
time of the sensor's last line; ``run``/``line`` the run (``meta.run`` counts them) and the
input line of that run whose answer the row includes last.

An old ``.npz`` snapshot file (:func:`runtime.save_snapshots`) given as ``--state`` is read
once and replaced by a database holding the same streams (see :func:`open_store`).

The streams' private fields (``_state``, ``_buf``, ``_steps``, ``_pred``) are read and set
here directly: 100,000 sensors must save and load in a second or two, which a
:class:`~runtime.Snapshot` per sensor (copies, checks, a dict each) does not allow.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .device import to_host
from .errors import SnapshotError
from .statefile import backup_name, db_key, lock, model_words, py_key, real_file
from .snapshot import Snapshot, load_snapshots
from .stream import Stream

FORMAT = 1
MAGIC = b"SQLite format 3\x00"       # the first 16 bytes of every SQLite database
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
    line INTEGER NOT NULL
) WITHOUT ROWID;
"""


def is_database(path) -> bool:
    """Whether ``path`` is a SQLite database (by its first bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(16) == MAGIC
    except OSError:
        return False


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
        self.width = sum(self.units) * self.slots          # float32 values per state row
        self.dtype = np.dtype(model.dtype if model.tokens else np.float32)
        self.notes: list[str] = []     # what the caller should tell the user (a lost -wal, ...)
        self.file = real_file(self.path)
        existed = self.file.exists()
        self._lock = lock(self.file, self.path)
        try:
            self.meta = self._open(existed, on_new_model)
        except BaseException:
            self.close()
            if not existed:               # leave no empty file behind
                for suffix in ("", "-wal", "-shm"):
                    with contextlib.suppress(OSError):
                        os.unlink(f"{self.file}{suffix}")
            raise
        self.run = int(self.meta.get("run", "0")) + 1
        self.commits = int(self.meta.get("commits", "0"))

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
            raise self._sqlite_error(exc, "cannot open it as a state database",
                                     "restore a good copy, or delete it to start the "
                                     "streams fresh") from None
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
            tables = {name for (name,) in ro.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not {"meta", "streams"} <= tables:
                raise self._error(f"it is a SQLite database of another program (tables "
                                  f"{', '.join(sorted(tables))})", "give lstm-run a --state "
                                  "file of its own")
            # SQLite's own check of every page (0.08-0.15 s for 100,000 sensors, 43 MB): a damaged
            # file is refused at start, not met at the first save hours later.
            damage = ro.execute("PRAGMA quick_check(3)").fetchall()
            if damage != [("ok",)]:
                said = [line for d in damage for line in str(d[0]).splitlines()
                        if line.strip() and not line.startswith("***")]
                raise self._error(f"its pages are damaged (SQLite quick_check: "
                                  f"{'; '.join(said[:3])})", "restore a good copy, or "
                                  "delete it to start the streams fresh")
            meta = dict(ro.execute("SELECT name, value FROM meta").fetchall()) if tables else {}
            if meta:
                self._check_meta(meta)
            if had_wal and meta.get("id") and self._main_id() not in (None, meta["id"]):
                raise self._error(f"its -wal file {wal.name} belongs to another database",
                                  f"move {wal.name} away to resume from the file's last "
                                  f"checkpoint, or restore the two files together")
        finally:
            ro.close()
        if meta.get("closed") == "0" and not had_wal:
            self.notes.append(f"the state file {self.path} was not closed cleanly and its "
                              f"-wal file is missing: resuming from its last checkpoint "
                              f"(commit {meta.get('commits', '0')}); commits after it, if "
                              f"any, are lost (sensors resume from earlier steps)")
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
        if meta.get("format", "").isdigit() and int(meta["format"]) > FORMAT:
            raise self._error(f"it has state format {meta['format']}, this runtime reads up "
                              f"to {FORMAT}", "upgrade lstm-edge")
        if meta.get("fingerprint") != want["fingerprint"]:
            old = meta.get("model") or f"sha256 {str(meta.get('fingerprint', 'none'))[:12]}…"
            raise ModelChanged(
                f"the state file {self.path}: it holds the streams of another model ({old}); "
                f"this one is {want['model']}; give another --state file, or run with "
                f"--on-new-model fresh to keep it as a backup and start every sensor fresh")
        for name in ("window", "carry_state", "state", "units", "features", "targets",
                     "buffer_dtype", "slots"):
            if meta.get(name) != want.get(name):
                raise self._error(f"it was saved with {name}={meta.get(name)}, this model "
                                  f"streams with {name}={want[name]}",
                                  "load the model with the same --window/--carry-state, or "
                                  "give another --state file")

    def _write_meta(self, values: dict) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
                            list(values.items()))

    # -- saving --

    def save(self, slots: Iterable[tuple[str, object, float, int]], dropped: Iterable[str] = (),
             *, lines: int | None = None) -> int:
        """Write the given sensors' rows and delete the dropped ones, in one transaction.

        Parameters
        ----------
        slots : ``(key, stream, seen, line)`` per changed sensor; ``seen`` in wall-clock
            seconds, ``line`` the input line of its last answer in this run.
        dropped : keys whose rows go.
        lines : input lines of this run answered, all of them included in the state (None:
            not known, left as it was).

        Returns the number of rows written. Raises SnapshotError where the disk refuses
        (full, read-only); the database then holds the last commit, as it was.
        """
        rows = self._rows(slots)
        for row in rows:
            row[0] = db_key(row[0])
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
                    "prediction, seen, run, line) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
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

    def _rows(self, slots) -> list[list]:
        """The database rows of ``(key, stream, seen, line)``.

        Streams last stepped together (a ``batch.Group``) are read from the group's stacked
        arrays, many rows per numpy call, without taking each stream out of its group.
        """
        fingerprint, run, zero = self.model.fingerprint, self.run, self._zero()
        rows: list[list] = []
        groups: dict[int, tuple[Any, list[int], list[int]]] = {}   # batch.Group, rows, index
        for key, stream, seen, line in slots:
            group = stream._group
            if group is not None and not group.dirty:
                _, at, index = groups.setdefault(id(group), (group, [], []))
                at.append(len(rows))
                index.append(stream._gi)
                pred = None if group.pred is not None else stream._pred
                rows.append([key, fingerprint, stream._steps + group.calls, None, None,
                             _blob(pred), seen, run, line])
                continue
            if group is not None:
                stream._sync()
            state = self._state_bytes(stream) if self.model.carry_state else zero
            rows.append([key, fingerprint, stream._steps, stream._buf.tobytes(), state,
                         _blob(stream._pred), seen, run, line])
        for group, at, index in groups.values():
            idx = np.asarray(index)
            buf = np.ascontiguousarray(group.buf[idx], self.dtype)     # (k, m, features)
            bufs = _cut(buf.tobytes(), len(idx))
            if self.model.carry_state:
                big = np.concatenate([np.asarray(to_host(s), np.float32)[idx]
                                      for s in group.states], axis=1)  # (k, width)
                states = _cut(np.ascontiguousarray(big).tobytes(), len(idx))
            else:
                states = [zero] * len(idx)
            preds = (_cut(np.ascontiguousarray(group.pred[idx], np.float32).tobytes(), len(idx))
                     if group.pred is not None else None)
            for j, r in enumerate(at):
                row = rows[r]
                row[3], row[4] = bufs[j], states[j]
                if preds is not None:
                    row[5] = preds[j]
        return rows

    def _state_bytes(self, stream) -> bytes:
        """One stream's state row: each tensor's slots, the next slot first (see __init__)."""
        ring = (stream._state, *getattr(stream, "_rest", ()))        # B (1, units) per tensor
        return b"".join(np.ascontiguousarray(to_host(r[t]), np.float32).tobytes()
                        for t in range(len(self.units)) for r in ring)

    def _zero(self) -> bytes:
        """The state of a stream that carries none (window mode): always the zero state."""
        return bytes(self.width * 4)

    # -- loading --

    def load(self) -> list[tuple[str, Any, float]]:
        """Every sensor's stream, least recently seen first: ``(key, stream, seen)``.

        Every row is checked before any stream is made: its model, its step count, the
        sizes of its arrays and that they hold finite numbers.
        """
        try:
            rows = self.db.execute("SELECT key, fingerprint, steps, buffer, state, prediction, "
                                   "seen FROM streams ORDER BY seen, key").fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._error(f"its rows cannot be read ({exc})",
                              "restore a good copy, or delete it to start fresh") from None
        if not rows:
            return []
        keys, fps, steps, bufs, states, preds, seen = zip(*rows)
        keys = tuple(map(py_key, keys))
        model = self.model
        bad = next((i for i, f in enumerate(fps) if f != model.fingerprint), None)
        if bad is not None:
            raise self._row_error(keys[bad], f"its row is for another model (sha256 "
                                             f"{str(fps[bad])[:12]}…)")
        bad = next((i for i, s in enumerate(steps)
                    if not isinstance(s, int) or isinstance(s, bool) or s < 0), None)
        if bad is not None:
            raise self._row_error(keys[bad], f"its step count is {steps[bad]!r}, expected a "
                                             f"whole number 0 or more")
        size = self.width * 4
        bad = next((i for i, b in enumerate(states)
                    if not isinstance(b, bytes) or len(b) != size), None)
        if bad is not None:
            raise self._row_error(keys[bad], f"its state holds {_length(states[bad])} bytes, "
                                             f"expected {size} ({self.width} float32 values)")
        state = np.frombuffer(b"".join(states), np.float32).reshape(len(rows), self.width)
        finite = np.isfinite(state).all(axis=1)
        if not finite.all():
            raise self._row_error(keys[int(np.argmin(finite))], "its state holds NaN or inf")
        bufs_np = self._buffers(keys, steps, bufs)
        preds_np = self._predictions(keys, preds)
        n, b = len(rows), self.slots
        cuts = np.cumsum((0,) + tuple(u * b for u in self.units))
        # One (n, B, 1, units) array per state tensor: row i, slot k is a (1, units) view.
        parts = [state[:, lo:hi].copy().reshape(n, b, 1, (hi - lo) // b)
                 for lo, hi in zip(cuts[:-1], cuts[1:])]
        streams = []
        missing = model.missing
        for i, (buf, count, pred) in enumerate(zip(bufs_np, steps, preds_np)):
            ring = [tuple(p[i, k] for p in parts) for k in range(b)]   # slot k: its tensors
            if b == 1:
                stream = Stream(model, missing)              # what model.stream() makes
            else:
                stream = model.stream(missing=missing)       # a SlotStream
                stream._rest, stream._slot = tuple(ring[1:]), 0
            stream._state, stream._buf, stream._steps, stream._pred = ring[0], buf, count, pred
            streams.append(stream)
        return list(zip(keys, streams, seen))

    def _buffers(self, keys, steps, blobs) -> list[np.ndarray]:
        row = self.model.n_features * self.dtype.itemsize
        window = self.model.window
        out = []
        for key, n, blob in zip(keys, steps, blobs):
            m = len(blob) // row if isinstance(blob, bytes) else -1
            if m < 0 or m * row != len(blob) or m > window or m > n:
                raise self._row_error(key, f"its window buffer holds {_length(blob)} bytes; "
                                           f"expected whole samples of {row} bytes, at most "
                                           f"{min(window, n)} of them")
            out.append(np.frombuffer(blob, self.dtype).reshape(m, self.model.n_features))
        if self.dtype.kind == "f" and out:
            whole = np.frombuffer(b"".join(blobs), self.dtype)
            if not np.isfinite(whole).all():
                i = next(i for i, b in enumerate(out) if not np.isfinite(b).all())
                raise self._row_error(keys[i], "its window buffer holds NaN or inf")
        return out

    def _predictions(self, keys, blobs) -> list:
        size = self.model.n_targets * 4
        out: list[np.ndarray | None] = []
        for key, blob in zip(keys, blobs):
            if blob is None:
                out.append(None)
                continue
            if not isinstance(blob, bytes) or len(blob) != size:
                raise self._row_error(key, f"its last prediction holds {_length(blob)} bytes, "
                                           f"expected {size}")
            out.append(np.frombuffer(blob, np.float32).copy())
        return out

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
        """``what`` failed with ``exc``; a full disk is said as such, the file kept."""
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return self._error(f"{what}: the disk is full ({exc})", "free space on it and "
                               "start again; the file is kept as it was")
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_READONLY:
            return self._error(f"{what}: it is read-only ({exc})", "make it and its folder "
                               "writable, or give another --state file")
        return self._error(f"{what} ({exc})", todo)

    def _row_error(self, key, what: str) -> SnapshotError:
        return self._error(f"sensor {key!r}: {what}",
                           "restore a good copy, or delete the file to start the streams "
                           "fresh")


def _blob(pred) -> bytes | None:
    return None if pred is None else np.asarray(pred, np.float32).tobytes()


def _cut(data: bytes, n: int) -> list[bytes]:
    """``data`` cut into ``n`` equal pieces."""
    size = len(data) // n if n else 0
    return [data[i * size:(i + 1) * size] for i in range(n)]


def _length(blob) -> str:
    return str(len(blob)) if isinstance(blob, (bytes, bytearray)) else f"no ({type(blob).__name__})"


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
    store = StateStore(tmp, model)
    now = time.time()
    store.save(((k, s, now, 0) for k, s in streams))
    store.close()                                        # folds the WAL into the file
    os.replace(tmp, path)
    if warn is not None:
        warn(f"converted {path} from an .npz snapshot file to a state database "
             f"({len(streams)} stream(s)); it is read and saved as SQLite from now on")
    return StateStore(path, model)


def read_snapshots(path) -> dict[str, Snapshot]:
    """Every sensor's :class:`~runtime.Snapshot` from a state database, without a model.

    What :func:`runtime.load_snapshots` returns for a database; rows are checked for size
    and finite numbers when they are restored into a model (``model.stream(snapshot)``).
    """
    try:
        db = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
            rows = db.execute("SELECT key, fingerprint, steps, buffer, state, prediction "
                              "FROM streams ORDER BY seen, key").fetchall()
        finally:
            db.close()
        names, units = json.loads(meta["state"]), json.loads(meta["units"])
        dtype, features = np.dtype(meta["buffer_dtype"]), int(meta["features"])
        window, carry = int(meta["window"]), json.loads(meta["carry_state"])
    except (sqlite3.Error, KeyError, ValueError, TypeError) as exc:
        raise SnapshotError(f"the state file {path} cannot be read as a state database "
                            f"({exc}); restore a good copy, or delete it to start fresh") from None
    slots = int(meta.get("slots", "1"))
    cuts = np.cumsum([0] + [u * slots for u in units])
    out = {}
    for key, fp, steps, buf, state, pred, in rows:
        values = np.frombuffer(state, np.float32)
        if len(values) != cuts[-1] or len(buf) % (features * dtype.itemsize):
            raise SnapshotError(f"the state file {path}: sensor {key!r}: its arrays have the "
                                f"wrong size; restore a good copy, or delete it to start fresh")
        # B > 1 slots: (B, units) per tensor, the next slot first (so next_slot is 0).
        out[py_key(key)] = Snapshot(
            state={n: values[a:b].reshape(slots, -1).copy() if slots > 1 else values[a:b].copy()
                   for n, a, b in zip(names, cuts[:-1], cuts[1:])},
            next_slot=0 if slots > 1 else None,
            buffer=np.frombuffer(buf, dtype).reshape(-1, features).copy(), steps=steps,
            fingerprint=fp, window=window, carry_state=carry,
            prediction=None if pred is None else np.frombuffer(pred, np.float32).copy())
    return out
