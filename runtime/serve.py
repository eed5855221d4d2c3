"""The loop behind ``lstm-run``: lines in, one stream per sensor, one answer per line out.

:class:`Server` turns each batch of lines (from :class:`runtime.io.LineReader`) into records
(:mod:`runtime.lines`), routes them to their sensors' streams, steps the lines that arrived
together in as few model calls as it can, and gives back one output line per input line,
in input order. A bad line becomes an error record and leaves every stream as it was.
"""

from __future__ import annotations

import functools
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from . import lines as fmt
from .alerts import AlertConfig
from .alerts_run import StreamAlerts
from .contract import X
from .errors import InputError, LstmEdgeError, SnapshotError
from .io import TOO_LONG, LineReader, Unterminated
from .ledger import SaveLedger
from .order import MOST, NoPosition, OrderColumn, choose
from .state import order
from .sensors import Sensor, SensorTable
from .stream import Stream, conflict_message, skips_gap

if TYPE_CHECKING:
    from .store import StateStore

class StrictStop(LstmEdgeError):
    """``--strict``: the first bad line ends the run; ``lines``: the answers before it."""

    exit_code = 1

    def __init__(self, message: str, lines: Sequence[str] = ()):
        super().__init__(message)
        self.lines = list(lines)


class EmptyInput(LstmEdgeError):
    """The input has no readings: no lines at all, or a header alone."""

    exit_code = 3


# ---- stepping --------------------------------------------------------------------------

@dataclass
class ServeConfig:
    """How ``lstm-run`` routes and keeps streams; all but ``chunked`` are its options."""

    format: str = "auto"                 # auto | csv | headerless | jsonl
    stream_column: str | None = None     # the column naming each line's sensor
    strict: bool = False                 # stop at the first bad line
    idle_timeout: float | None = None    # seconds a sensor may stay silent before it is dropped
    max_streams: int = 100_000           # sensors kept at once; the least recent is dropped
    state: Path | None = None            # state database (runtime.store): loaded, then saved
    save_every: int = 0                  # also save after this many lines (0: only at exit)
    save_interval: float = 0.0           # also save when this many seconds passed since the
                                         # last save and a sensor changed (0: never by time)
    chunked: bool = True                 # let one sensor's run of lines go in one feed() call
    columns: tuple[str, ...] | None = None   # names of header-less CSV fields (--columns)
    reset_column: str | None = None      # the column/key whose true value resets a sensor
    alerts: AlertConfig | None = None    # --interval: lo/hi, anomaly, score, alert columns
    on_new_model: str = "refuse"         # a state file of another model: refuse | fresh
    time_column: str | None = None       # the column/key giving each reading's time
    seq_column: str | None = None        # the column/key giving each reading's sequence number
    order_check: bool = True             # apply the order rule where a position is known


class Server:
    """Routes records to per-sensor streams of one model and formats the answers."""

    def __init__(self, model, config: ServeConfig, *, warn=None):
        self.model = model
        self.config = config
        self.format: fmt.LineFormat | None = None
        # One stream per sensor, bounded; a dropped sensor's row and alert state go too.
        self.table = SensorTable(model.stream, config.max_streams, config.idle_timeout,
                                 on_drop=self._dropped, warn=warn or (lambda message: None),
                                 clock=time.monotonic)
        self.lines = 0              # input lines handled, header included
        self.samples = 0            # lines that reached a stream
        self.errors = 0             # error records written
        self.blank = 0              # blank lines, answered with blank lines
        self.unfed = 0              # replays and skipped lines (the order check), not fed
        self.store: StateStore | None = None    # the --state database
        self.ledger = SaveLedger()  # what a save may count: answers first, then the state
        self._checkpointed = True   # the state file alone holds every commit (see quiet())
        self._checkpoint_at = time.monotonic()
        self._retry_at = 0.0        # after a failed checkpoint: not before this
        self._warn = warn or (lambda message: None)
        self.window = int(model.window)   # readings up to the first prediction (overrides too)
        # A masking model's file without lstm_edge.mask_answer: its empty answers said once
        self._empty_masked = model._mask is not None and model.mask_answer is None
        self.alerts = StreamAlerts(model, config.alerts) if config.alerts else None
        self.order: OrderColumn | None = None    # where each line's position is (runtime.order)
        self._order_open = config.order_check    # JSON lines: decided at the first good record
        self._header: bytes | None = None        # the CSV header line, to know it again
        self._positioned: set[str] = set()       # sensors given a position in this run
        self._unchecked: set[str] = set()        # JSON sensors fed without one (said once)

    # -- state --

    def load_state(self) -> None:
        """Open the ``config.state`` database and take every sensor's stream from it.

        A missing file is created; an old ``.npz`` snapshot file is converted (see
        :func:`runtime.store.open_store`).
        """
        path = self.config.state
        if path is None:
            return
        folder = Path(path).absolute().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            # Found out now, not when the first save comes after hours of input.
            raise SnapshotError(f"the state file {path} cannot be written: {folder} is not a "
                                f"writable directory")
        if Path(path).is_dir():
            raise SnapshotError(f"the state file {path} is a directory; give a file path")
        from .store import open_store
        self.store = open_store(path, self.model, warn=self._warn,
                                on_new_model=self.config.on_new_model)
        try:
            loaded = self.store.load()
        except BaseException:
            self.store.close(refused=True)
            raise
        self.table.remember(self.store.position)    # a dropped sensor's position stays
        for key, stream, _ in loaded:
            # Seen now: the time the tool was down is not the sensor's silence.
            self.table.add(key, stream)
        if self.alerts is not None:     # each stream's alert state is one of its sections
            for key, sensor in self.sensors.items():
                self.alerts.restore(key, sensor.stream, sensor.stream.steps)
        if self.sensors:
            meta = self.store.summary()
            self._warn(f"resumed {len(self.sensors)} stream(s) from {path} (saved after input "
                       f"line {meta.get('lines', '?')} of run {meta.get('run', '?')}; each "
                       f"stream's step count is in its answers' step column)")
        for line in self.alerts.notes(self.config.stream_column is not None) \
                if self.alerts is not None else ():
            self._warn(line)

    def save_state(self) -> None:
        """Save the sensors changed since the last save whose answers are out, in one commit.

        A sensor of a batch whose answers could not be written (``inflight``) keeps its last
        saved row: the saved state never counts an answer that was not delivered.
        """
        if self.store is None:
            return
        keys, dropped, lines = self.ledger.pending()
        if not keys and not dropped:
            return
        clock = time.time() - time.monotonic()              # monotonic -> wall clock
        sensors = self.sensors
        if self.alerts is not None:
            for k in keys:
                if k in sensors:
                    self.alerts.keep(k, sensors[k].stream)
        rows = ((k, sensor.stream, sensor.seen + clock, sensor.line)
                for k in keys if (sensor := sensors.get(k)) is not None)
        self.store.save(rows, dropped, lines=lines, positions=self.table.retired)
        self.ledger.saved()
        self.table.retired.clear()
        self._checkpointed = False
        if self.ledger.last - self._checkpoint_at >= self.CHECKPOINT_EVERY:
            self.checkpoint()

    @property
    def saved_at(self) -> float | None:
        """``time.time()`` of the last ``--state`` save, None before one (``--progress``)."""
        return self.ledger.saved_at

    # Seconds between checkpoints on a busy feed; a quiet one checkpoints after each save.
    CHECKPOINT_EVERY = 30.0

    def checkpoint(self) -> None:
        """Copy the saves from the state file's WAL into the file itself (see quiet()).

        A failure (a full disk) is said and the run goes on: the saves are safe in the WAL.
        """
        now = time.monotonic()
        if self.store is not None and not self._checkpointed and now >= self._retry_at:
            self._checkpoint_at = now
            try:
                self._checkpointed = self.store.checkpoint()   # False: a reader held it
            except SnapshotError as exc:
                self._retry_at = now + self.CHECKPOINT_EVERY
                self._warn(f"{exc}; trying again in {self.CHECKPOINT_EVERY:g} s")

    def quiet(self) -> None:
        """The feed has been quiet a while: save what is due, then checkpoint.

        So a ``kill -9`` after a pause loses nothing saved, and the file alone (without its
        ``-wal``) holds every save up to the pause.
        """
        if self.due():
            self.save_state()
        self.checkpoint()

    def delivered(self) -> None:
        """The last batch's answers are out: its sensors may be saved now."""
        self.ledger.delivered(self.lines)

    def close(self) -> None:
        """Save what was delivered and close the state database."""
        if self.store is not None:
            try:
                self.save_state()
            finally:
                self.store.close()

    # -- routing --

    @property
    def sensors(self) -> OrderedDict[str, Sensor]:
        """Each sensor's entry (its stream), least recently seen first."""
        return self.table.sensors

    def drop_idle(self) -> None:
        """Forget sensors that have been silent for longer than ``config.idle_timeout``."""
        self.table.drop_idle()

    def report_drops(self) -> None:
        """One line with the number of streams dropped, where more than were named."""
        self.table.report_drops()

    def _dropped(self, key: str) -> None:
        """A sensor left the table: its row goes at the next save, its alert state now."""
        if self.store is not None:
            self.ledger.drop(key)      # without a state file there is no row to delete
        if self.alerts is not None:
            self.alerts.forget(key)

    # -- one batch --

    def _records(self, batch) -> tuple[list[str | fmt.Record], int | None]:
        """Parse a batch; the header gives a string. Second item: index of a --strict stop."""
        out: list[str | fmt.Record] = []
        for number, raw in batch:
            if number == 1 and raw is not TOO_LONG and raw.startswith(b"\xef\xbb\xbf"):
                # a UTF-8 byte-order mark the reader left (it drops the input's first: this
                # is a second, or a caller's line 1), cut as the line's own kind of bytes: an
                # Unterminated last line is still not saved as fed, a LongLine still refused
                raw = type(raw)(raw[3:])
            if raw is not TOO_LONG and not raw.strip():
                out.append("")          # a blank line is answered with a blank line
                self.blank += 1
                continue
            if self.format is None:
                if raw is TOO_LONG:
                    raise InputError(f"line {number} is longer than {fmt.MAX_LINE} bytes; "
                                     f"cannot tell the input format from it (expected a CSV "
                                     f"header, a first reading or a JSON object)")
                self.format, is_header = fmt.detect(
                    raw, self.model.features, self.model.answers, fmt=self.config.format,
                    stream_column=self.config.stream_column, columns=self.config.columns,
                    reset_column=self.config.reset_column)
                if self.format.note:
                    self._warn(self.format.note)
                if self.alerts is not None:
                    self.alerts.columns(self.format)
                if self.config.order_check:
                    self._choose_order(None)
                header = self.format.header() if is_header else None
                if header is not None:
                    self._header = _bare(raw)
                    out.append(header)
                    continue
            elif self._header is not None and raw is not TOO_LONG \
                    and _bare(raw) == self._header:
                # a logger that restarted writes its header again: answered as the first was
                out.append(cast(str, self.format.header()))
                continue
            if raw is TOO_LONG:
                rec = fmt.Record(number, error=f"line longer than {fmt.MAX_LINE} bytes; split "
                                               f"the readings one per line")
            else:
                rec = self.format.parse(number, raw)
                if not rec.ok and (header := self.format.header_again(raw)) is not None:
                    out.append(header)          # a header after the first line: a header
                    continue
                if rec.ok and type(raw) is Unterminated and self.store is not None:
                    rec.error = ("the input ended in the middle of this line (no newline after "
                                 "it), so it may be cut short: not fed, and not saved as fed; "
                                 "a feed that sends it again whole gets it fed (end the input "
                                 "with a newline if it is complete)")
            if rec.ok:
                try:
                    self.model.validate(rec.values)
                except LstmEdgeError as exc:
                    rec.error = fmt.cli_words(str(exc))
            if rec.ok and self._order_open:
                self._choose_order(rec)
            if rec.ok and self.order is not None:
                try:
                    rec.at = self.order.position(rec)
                except NoPosition as exc:
                    if not self._never_positioned(rec.key):
                        rec.error = str(exc)
                except fmt.BadLine as exc:
                    rec.error = str(exc)
                if rec.at is not None:
                    self._positioned.add(rec.key)
                if self.order.note is not None:     # no times in a found column, no offset
                    self._warn(self.order.note)
                    self.order.note = None
            out.append(rec)
            if not rec.ok and self.config.strict:
                return out, len(out) - 1
        return out, None

    def _choose_order(self, first: fmt.Record | None) -> None:
        """Find the position column (see :mod:`runtime.order`), once: CSV at its first line,
        JSON lines at their first good record."""
        config, form = self.config, cast(fmt.LineFormat, self.format)
        self.order = choose(form, first, time_column=config.time_column,
                            seq_column=config.seq_column)
        if self.order is not None:
            form.add_order()
        self._order_open = self.order is None and isinstance(form, fmt.JsonlFormat)
        if self.order is None and not self._order_open and self.store is not None:
            self._warn("no order check: the input has no time column (time, timestamp, "
                       "datetime, date, date_time), so a line sent again after a restart (tail "
                       "-n +1, a file uploaded again) is fed again; name its column with "
                       "--time-column or --seq-column, or say there is none with "
                       "--no-order-check")

    def _never_positioned(self, key: str) -> bool:
        """Whether a JSON record of sensor ``key`` without the found time key is fed
        unchecked: its sensor never had a position (see :mod:`runtime.order`); says so once
        per sensor (ten at most)."""
        column = cast(OrderColumn, self.order)
        sensor = self.sensors.get(key)
        if not column.found or key in self._positioned or \
                (sensor is not None and sensor.stream.position is not None):
            return False
        if key not in self._unchecked:
            self._unchecked.add(key)
            who = f"sensor {key!r}" if self.config.stream_column else "the stream"
            if len(self._unchecked) <= MOST:
                self._warn(f"{who}: its lines have no {column.name!r} key, so they are fed "
                           f"unchecked and a line delivered twice is fed twice; give each "
                           f"reading its time")
        return True

    def handle(self, batch: Sequence[tuple[int, bytes | None]]) -> list[str]:
        """The output lines for one batch of input lines, one each, in input order.

        Raises :class:`StrictStop` (after the lines before it have been stepped) at a bad line
        with ``config.strict``; the caller writes ``stop.lines`` before reporting it.
        """
        items, stop = self._records(batch)
        answered = items[:stop]                            # all of them where stop is None
        good = [r for r in answered if not isinstance(r, str) and r.ok]
        if self.order is None:
            marks: dict[int, tuple] = {}
            fed = good
        else:   # the order rule marks replays and skips, and makes conflicts error records
            marks = self._order_marks(good)
            fed = [r for r in good if r.ok and id(r) not in marks]
        answers = self._step(fed)
        for rec in good if marks else ():
            if id(rec) in marks and (sensor := self.table.get(rec.key)) is not None:
                sensor.whole = False        # a line not fed: no warm-up advice from its count
        form = cast(fmt.LineFormat, self.format)    # set by the line before any record
        # a replay of a reading answered in an earlier batch: its alert columns as they were
        # then, taken before this batch's readings move the alert state on
        again = {} if self.alerts is None else {
            i: self.alerts.last(rec.key) for rec in good
            if (i := id(rec)) in marks and marks[i][0] == "replay"
            and not isinstance(marks[i][1], fmt.Record)}
        extra = self.alerts.annotate(fed, answers) if self.alerts is not None else {}
        blank = [None] * len(getattr(form, "extra", ()))   # a replay or skip: no alert columns
        out = []
        for item in answered:
            if isinstance(item, str):
                out.append(item)
            elif not item.ok:
                self.errors += 1
                self._warn(f"line {item.line}: {item.error}")
                out.append(form.format_error(item))
            elif id(item) in answers:
                step, warmup, pred = answers[id(item)]
                out.append(form.format(item, step, warmup, pred, extra.get(id(item), blank)))
            else:
                mark, answer = marks[id(item)]
                if mark == "replay":      # the answer it got then, alert columns included
                    if isinstance(answer, fmt.Record):
                        (step, warmup, pred), columns = answers[id(answer)], \
                            extra.get(id(answer), blank)
                    else:
                        (step, warmup, pred), columns = answer, again.get(id(item)) or blank
                    out.append(form.format(item, step, warmup, pred, columns, mark=mark))
                else:
                    out.append(form.format_skipped(item, mark))
        self.lines += len(out)
        self.ledger.answered(len(out))
        self.samples += len(fed)
        self.unfed += len(marks)
        self.drop_idle()
        if stop is not None:
            bad = items[stop]
            assert isinstance(bad, fmt.Record)
            raise StrictStop(f"line {bad.line}: {bad.error} (--strict)", out)
        return out

    def _order_marks(self, records: list[fmt.Record]) -> dict[int, tuple]:
        """The order rule over a batch, line by line per sensor, before anything is fed.

        Returns ``{id(record): (mark, answer)}`` for the lines not fed: ``("replay", the
        record it repeats, or (step, warmup, prediction) the stream gave it)`` and
        ``("skipped: ...", None)``; a line at its sensor's position with other values
        becomes an error record. The runtime applies the same rule again to what is fed.
        """
        column = cast(OrderColumn, self.order)
        marks: dict[int, tuple] = {}
        latest: dict[str, fmt.Record] = {}        # per sensor: the batch's last new record
        holding: dict[str, bool] = {}             # per sensor: a reading a gap may hold
        for rec in records:
            if rec.at is None:
                continue                          # no position: fed unchecked
            prev, values = latest.get(rec.key), cast(np.ndarray, rec.values)
            sensor = self.table.recall(rec.key)     # a dropped sensor: its position
            stream = None if rec.reset or sensor is None else sensor.stream
            if prev is not None and not rec.reset:
                kind = order(prev.at, prev.values, values, rec.at)
            else:
                kind = "new" if stream is None else stream.order(values, rec.at)
            if kind == "new":
                held = holding.get(rec.key, isinstance(stream, Stream) and stream.holding)
                if not self._feeds_nothing(rec, held):   # a skipped gap takes no position
                    latest[rec.key], holding[rec.key] = rec, True
            elif kind == "replay":
                column.replayed(rec.key)
                marks[id(rec)] = ("replay", prev if prev is not None else self._stored(stream))
            elif kind == "old":
                position = prev.at if prev is not None else cast(Stream, stream).position
                marks[id(rec)] = (column.skipped(rec.key, position), None)
            else:
                seen = prev.values if prev is not None else cast(Stream, stream).snapshot().last
                rec.error = conflict_message(rec.at, seen, values)
        return marks

    def _stored(self, stream) -> tuple:
        """A stream's answer to its last reading, as an answer line gives it."""
        pred = stream.answer
        if pred is None:
            pred = np.full(self.model.n_targets, np.nan, np.float32)
        return stream.steps, not stream.ready, pred

    def report_order(self) -> None:
        """One line per sensor that had replays or skipped readings (the order check)."""
        if self.order is not None:
            for line in self.order.summary(self.config.stream_column is not None):
                self._warn(line)

    def report_warmup(self, most: int = 10) -> None:
        """One warning per stream still warming up at the end: it never made a prediction.

        A model declared with a longer time axis than it was trained on (``input_shape=(10,
        3)``, fit on 9 timesteps) waits for windows that never fill; this names the window and
        the ``--window`` override. Where the window is certain (:func:`window_known`) another
        window gives numbers no Keras run gives: it says how many readings a sensor needs.
        At most ``most`` lines, then how many more.
        """
        # Only a sensor whose every line reached its stream (Sensor.whole): after replays,
        # skips or a drop, its step count says nothing of the model's window.
        idle = [(key, sensor.stream) for key, sensor in self.sensors.items()
                if not sensor.stream.ready and sensor.whole]
        known = window_known(self.model)
        for key, stream in idle[:most]:
            who = f"sensor {key!r}" if self.config.stream_column else "the stream"
            n = stream.steps
            # n readings per sensor is the usual sign of windows cut one per sensor (a
            # "sample" column): then a window of n is the likely training length.
            hint = (f"; if the model was trained on windows of {n} timesteps, run with "
                    f"--window {n}" if n > 1 else "; if the model was trained on shorter "
                    "windows, run with --window N")
            if known:
                hint = f"; give at least {self.window} readings per sensor"
            self._warn(f"{who}: {n} reading{'s' if n != 1 else ''}, never a full window of "
                       f"{self.window}: no prediction was made{hint}")
        if len(idle) > most:
            self._warn(f"... and {len(idle) - most} more streams that never had a full window "
                       f"of {self.window}")

    def due(self) -> bool:
        """Whether ``config.save_every`` lines or ``config.save_interval`` seconds have
        passed since the last save (the seconds only where a sensor changed)."""
        if self.store is None:
            return False
        return self.ledger.due(self.config.save_every, self.config.save_interval)

    def _step(self, records: list[fmt.Record]) -> dict[int, tuple[int, bool, np.ndarray]]:
        """Step every record's stream; ``{id(record): (step, warmup, prediction)}``."""
        answers = self._step_all(records)
        if self._empty_masked and any(
                id(r) in answers and np.isnan(answers[id(r)][2]).all() and r.values is not None
                and (self.window == 1 or not answers[id(r)][1])          # not a warm-up
                and bool(self.model._masked(np.asarray(r.values, np.float32))) for r in records):
            self._empty_masked = False      # said once
            self._warn("this file predates lstm_edge.mask_answer: where nothing but masked "
                       "readings was fed (a window of masked readings only; a sequence before "
                       "its first reading fed) its answer is empty where Keras gives a number; "
                       "re-export the model with lstm-export")
        return answers

    def _step_all(self, records: list[fmt.Record]) -> dict[int, tuple[int, bool, np.ndarray]]:
        if len(records) == 1 and not self.model.reconstructs:
            # One line (a live feed's usual batch): no grouping, no many-stream call.
            rec = records[0]
            sensor = self.table.take(rec.key, {rec.key})
            self.ledger.stepped((rec.key,))
            sensor.line = rec.line
            return {id(rec): self._step_one(rec, sensor.stream)}
        by_key: dict[str, list[fmt.Record]] = {}
        for rec in records:
            by_key.setdefault(rec.key, []).append(rec)
        values = {id(r): cast(np.ndarray, r.values) for r in records}   # ok records: all set
        busy = set(by_key)
        sensors = {key: self.table.take(key, busy) for key in by_key}
        self.ledger.stepped(busy)      # stepped from here on; saved once the answers are out
        for key, recs in by_key.items():
            sensors[key].line = recs[-1].line
        answers: dict[int, tuple[int, bool, np.ndarray]] = {}
        if not self.model.reconstructs:
            self._step_rounds(by_key, sensors, values, records, answers)
            return answers
        # A reconstruction model answers with the score of the window each reading ends.
        if np.isfinite(np.stack(list(values.values()))).all() if values else True:
            before = {key: sensors[key].stream.snapshot().buffer for key in by_key}
            self._step_rounds(by_key, sensors, values, records, answers)
            return _scored(self.model, by_key, before, values, answers)
        for rec in records:   # a missing value is filled or skipped: score what was fed
            self._step_rounds({rec.key: [rec]}, sensors, values, [rec], answers)
            step, warmup, pred = answers[id(rec)]
            fed = sensors[rec.key].stream.snapshot().buffer                 # (<= window, features)
            answers[id(rec)] = (step, warmup, self.model.score(fed, pred[None]))
        return answers

    def _step_rounds(self, by_key, sensors, values, records, answers) -> None:
        """Step the records' streams, chunked or in rounds; fills ``answers``."""
        if len(records) == 1:
            rec = records[0]
            answers[id(rec)] = self._step_one(rec, sensors[rec.key].stream)
            return
        rounds = max((len(v) for v in by_key.values()), default=0)
        # A skipped or held reading (NaN) is stepped on its own, so its step count is exact.
        complete = bool(records) and np.isfinite(np.stack(list(values.values()))).all()
        if self.config.chunked and complete and rounds > 1 and len(by_key) < rounds:
            # Few sensors, many lines each: one feed() per sensor beats a call per line.
            for key, recs in by_key.items():
                stream = sensors[key].stream
                for run in _runs(recs):                    # a reset starts a new run
                    if run[0].reset:
                        stream.reset()
                    xs = np.stack([values[id(r)] for r in run])       # (n, features)
                    at = self._positions(run)
                    before = stream.steps
                    preds = stream.feed(xs) if at is None else stream.feed(xs, at=at)
                    steps = self._counts(before, xs, stream.steps - before)     # (n,)
                    for rec, pred, step in zip(run, preds, steps):
                        answers[id(rec)] = (int(step), self._warming(step), pred)
            return
        # Many sensors: round r steps the r-th line of every sensor in one batched call.
        for r in range(rounds):
            keys = [k for k, v in by_key.items() if len(v) > r]
            for k in keys:
                if by_key[k][r].reset:                     # --reset-column: a new sequence
                    sensors[k].stream.reset()
            streams = [sensors[k].stream for k in keys]
            samples = np.stack([values[id(by_key[k][r])] for k in keys])      # (streams, features)
            at = self._positions([by_key[k][r] for k in keys])
            preds = self.model.step(streams, samples) if at is None else \
                self.model.step(streams, samples, at=at)                # (streams, targets)
            for k, stream, pred in zip(keys, streams, preds):
                answers[id(by_key[k][r])] = (stream.steps, not stream.ready, pred)

    def _counts(self, before: int, xs, fed: int) -> np.ndarray:
        """``(n,)`` each reading's step after a chunk of ``n`` was fed, ``fed`` of them counted.

        A masked reading of a ``sequence`` model is not fed, so not counted: its step is
        the count so far, as a step of one reading gives it, however the lines were batched.
        """
        model, n = self.model, len(xs)
        if fed == n or model._mask is None or model.window != 1:
            return before + np.arange(1, n + 1)
        return before + np.cumsum(~model._masked(xs))

    def _warming(self, step) -> bool:
        """Whether a reading at ``step`` is still in the warm-up, as ``not stream.ready``."""
        return bool(step < self.window) and not (self.window == 1
                                                 and self.model.mask_answer is not None)

    def _step_one(self, rec: fmt.Record, stream: Stream) -> tuple[int, bool, np.ndarray]:
        """One record through its stream's own step: the pre-bound buffers, and none of the
        stacking and checks a many-stream call makes; ``(step, warmup, prediction)``."""
        if rec.reset:                                   # --reset-column: a new sequence
            stream.reset()
        pred = stream.step(rec.values, at=None if self.order is None else rec.at)
        if pred is None:                                # warming up, or a skipped reading
            pred = np.full(self.model.n_targets, np.nan, np.float32)
        return stream.steps, not stream.ready, pred

    def _positions(self, records: list[fmt.Record]) -> list | None:
        """The records' positions for the runtime's order rule; None without the check."""
        return None if self.order is None else [r.at for r in records]

    def _feeds_nothing(self, rec: fmt.Record, held: bool) -> bool:
        """Whether ``rec`` is a reading ``--missing`` skips (a missing value under ``skip``,
        or under ``hold`` with nothing ``held``): it feeds nothing, so it takes no position,
        and the same reading sent again whole is fed (see :func:`runtime.stream.skips_gap`)."""
        return bool(np.isnan(cast(np.ndarray, rec.values)).any()) and \
            skips_gap(self.model.missing, held)


def window_known(model) -> bool:
    """Whether ``model.window`` is the one the model was trained on, for certain, so that no
    other ``--window`` may be suggested: a graph that reads exactly its window (a window
    model converted whole, which refuses any other), or the file's own window (no override)
    written from lstm-train's sidecar, whose look-back it is (the sidecar's scaler records
    how it was fitted, ``lstm_edge.scaler.kind``). A user's Keras model may declare another
    time axis than it was fitted on."""
    info = model.info
    return fixed_window(model) is not None or (
        model.window == info.window and isinstance((info.scaler or {}).get("kind"), str))


def fixed_window(model) -> int | None:
    """The window of a graph whose ``x`` has a fixed time axis (a window model converted
    whole, docs/contract.md): ``lstm-run`` refuses any other ``--window`` for it. None where
    the time axis is dynamic."""
    x = next((i for i in model.session.get_inputs() if i.name == X), None)
    steps = x.shape[1] if x is not None and len(x.shape) > 1 else None
    return steps if isinstance(steps, int) else None


def _bare(raw: bytes) -> bytes:
    """A line without a UTF-8 byte-order mark and line-end whitespace, for comparing."""
    return raw.removeprefix(b"\xef\xbb\xbf").rstrip()


def _scored(model, by_key, before, values, answers):
    """A reconstruction model's answers as its score (``Model.score``), one per reading.

    Each sensor's window history is its buffer before the batch, then its readings in
    order; a reset starts it afresh.
    """
    for key, recs in by_key.items():
        for run_index, run in enumerate(_runs(recs)):
            start = before[key] if run_index == 0 and not run[0].reset \
                else before[key][:0]                              # (m, features)
            history = np.concatenate([start, np.stack([values[id(r)] for r in run])])
            ys = np.stack([answers[id(r)][2] for r in run])       # (n, outputs)
            for rec, score in zip(run, model.score(history, ys)):
                step, warmup, _ = answers[id(rec)]
                answers[id(rec)] = (step, warmup, np.array([score], np.float32))
    return answers


def _runs(records: list[fmt.Record]) -> list[list[fmt.Record]]:
    """One sensor's records cut before each reset: the lines each feed() may take at once."""
    runs: list[list[fmt.Record]] = []
    for rec in records:
        if rec.reset or not runs:
            runs.append([])
        runs[-1].append(rec)
    return runs


def _hangup(server: Server, then) -> None:
    """SIGHUP: the answers so far are out (this runs between batches); save the state that
    counts them, then let the caller reopen its output."""
    server.save_state()
    if then is not None:
        then()


def serve(model, config: ServeConfig, reader: LineReader, write, *, warn=None,
          progress=None, hangup=None) -> Server:
    """Run ``reader``'s lines through ``model`` and ``write`` one answer per line.

    ``write(lines)`` gets each batch's output lines (without newlines) and must have handed
    every byte to the OS when it returns; the state is saved after the answers are out, and a
    batch whose ``write`` raised is left out of it, so a crash or a reader that goes away can
    repeat a line's answer on restart but never lose one. ``warn(message)`` gets the per-line complaints.
    ``progress(server)``, where given, is called after every batch (see :mod:`runtime.progress`).
    At SIGHUP (with ``reader.signals``), between batches, the state is saved and then
    ``hangup()`` is called (``lstm-run`` reopens ``-o`` there, for log rotation).

    Raises
    ------
    EmptyInput : the input had no readings at all.
    StrictStop : ``config.strict`` and a bad line; the lines before it were answered.
    Interrupted : SIGINT/SIGTERM (with ``reader.signals``); answers written, state saved.
    LstmEdgeError : the first line cannot start this input, or the state file is unusable.
    """
    server = Server(model, config, warn=warn)
    server.load_state()
    if reader.signals is not None:
        reader.signals.on_hangup = functools.partial(_hangup, server, hangup)
    if server.store is not None and config.save_interval and os.name == "posix" \
            and getattr(reader, "tick", 0) is None:     # (select() takes pipes on POSIX only)
        reader.tick = max(config.save_interval / 2, 0.05)   # quiet feeds save too
    try:
        for batch in reader.batches():
            if not batch:                # the feed is quiet: save what is due
                server.quiet()
                if reader.signals is not None:
                    reader.signals.check()
                continue
            try:
                out = server.handle(batch)
            except StrictStop as stop:
                write(stop.lines)
                server.delivered()
                raise
            write(out)          # answers out first ...
            server.delivered()
            if server.due():
                server.save_state()     # ... then the state that counts them
            if progress is not None:
                progress(server)
            if reader.signals is not None:
                reader.signals.check()
    finally:
        server.close()
        server.report_order()       # at every end: a signal, a bad line, the input's end
    server.report_warmup()
    server.report_drops()
    if server.samples == 0 and server.errors == 0 and server.unfed == 0:
        raise EmptyInput("the input is empty: no lines to run the model on" if not server.lines
                         else "the input is empty: only blank lines, no readings to run the "
                              "model on" if server.format is None
                         else "the input is empty: a header and no readings to run the model on")
    return server
