"""What the Flink job does with one line, with no Flink in it: route it, answer it.

:class:`LineJob` holds the loaded model and the line format (both made once per task, in
``open()``), and answers a line given the sensor's state bytes: the answer line and the new
state bytes, or an error record and ``None`` (the state is then left as it was). The line
formats, error records and answer columns are ``lstm-run``'s, from :mod:`runtime.lines`.

Each sensor's readings must arrive in order. With a time column the runtime's order rule
applies, as in ``lstm-run`` (:mod:`runtime.order`, ``Stream.step(reading, at=...)``): a reading
after the sensor's position is fed; a replay of its last reading gets the answer it got then
(``order`` = ``replay``); an older one is answered as skipped and not fed; the same time with
other values is an error record. A sensor's state bytes are its stream state in the runtime's
one codec (:mod:`runtime.state`, CRC-checked), with the time of the write in a section of
its own (for ``--state-ttl``).

The job's sources decode each line's bytes as ISO-8859-1 (one character per byte: nothing
replaced, nothing lost), and :func:`raw` turns them back into the very bytes, so that
``lstm-run``'s own parser reads them: invalid UTF-8 gets ``lstm-run``'s error record, not a
U+FFFD that would be fed as if the line were good.

A JSON line may name its sensor with a lone surrogate (``"\\ud800"``), a Python string no
UTF-8 encoder takes, and Flink's strings travel as UTF-8: such a sensor is keyed and stored
under :func:`state_key`, an escaped form of its name. Its answers write the key back
escaped, as ``lstm-run``'s do (``runtime.lines.dump_json``).

With ``LineSpec.alerts`` (``--interval``) every answer carries ``lstm-run --interval``'s
alert columns (:class:`runtime.alerts_run.StreamAlerts`), and each sensor's alert state
travels in its stream state's ``alerts`` section, so Flink's keyed state and its
checkpoints hold it with the stream. The settings it was kept with travel beside it
(:data:`SETTINGS`): a job resumed with other settings starts each sensor's alerts afresh at
its next reading, as a new job with them would, and one fed without ``--interval`` drops them.
"""

from __future__ import annotations

import json
import math
import re
import struct
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np

import runtime
from runtime import LstmEdgeError
from runtime import lines as fmt
from runtime.alerts import AlertConfig, AlertState
from runtime.alerts_run import StreamAlerts
from runtime.lines import BadLine

from runtime.order import OrderColumn, choose
from runtime.state import StreamState, order
from runtime.stream import conflict_message

WRITTEN = "flink.written"     # the state section holding the wall-clock time of the write
SETTINGS = "flink.alert-settings"   # the alert settings the ``alerts`` section was kept with


def settings_bytes(alerts: AlertConfig | None) -> bytes | None:
    """The alert settings as a sensor's state keeps them (None: no ``--interval``)."""
    return None if alerts is None else json.dumps(asdict(alerts), sort_keys=True).encode()


@dataclass(frozen=True)
class LineSpec:
    """How lines are read and answered: made on the client, shipped to every task."""

    format: str                       # "csv", "headerless" or "jsonl"
    columns: tuple[str, ...] = ()     # the CSV header's columns ("csv" only)
    stream_column: str | None = None  # the column or key naming each line's sensor
    time_column: str | None = None    # the column or key ordering each sensor's readings
    header: str | None = None         # the input files' first line (as raw() text), dropped
                                      # wherever it recurs
    alerts: AlertConfig | None = None  # --interval and its rules: the alert columns added


SOURCE_CHARSET = "ISO-8859-1"   # how the job's sources decode bytes: one character per byte


def raw(line: str) -> bytes:
    """The bytes a source read for ``line``: its ISO-8859-1 text encoded back.

    Text that is not from such a source (a character past U+00FF) is taken as UTF-8.
    """
    try:
        return line.encode(SOURCE_CHARSET)
    except UnicodeEncodeError:
        return line.encode("utf-8", "surrogatepass")


_ESCAPED = re.compile(r"[\\\ud800-\udfff]")


def state_key(key: str) -> str:
    r"""The string a sensor is keyed and stored by in Flink: its name, with a backslash
    doubled and a lone surrogate (no UTF-8 holds one) written ``\udXXX``.

    One name, one key: the escape can be undone, so two sensors never share a state.

    >>> state_key("pump-7"), state_key("\ud800"), state_key("\\ud800")
    ('pump-7', '\\ud800', '\\\\ud800')
    """
    return _ESCAPED.sub(lambda m: "\\\\" if m[0] == "\\" else f"\\u{ord(m[0]):04x}", key)


# lstm-run's option words in the runtime's order messages, and the Flink job's for them:
# the job has no --no-order-check; --no-time-column is how it runs without the check.
_FLINK_WORDS = ((re.compile(r"--no-order-check feeds every line as it comes"),
                 "--no-time-column feeds every line as it comes"),)


def flink_words(message: str) -> str:
    """A runtime error message with its advice in the Flink job's option words.

    >>> flink_words("no 't' key: ... (--no-order-check feeds every line as it comes)")
    "no 't' key: ... (--no-time-column feeds every line as it comes)"
    """
    message = fmt.cli_words(message)
    for pattern, words in _FLINK_WORDS:
        message = pattern.sub(words, message)
    return message


def blank(line: str) -> bool:
    """A blank line (spaces, a lone CR): answered with a blank line, as lstm-run does."""
    return not raw(line).strip()


def line_format(spec: LineSpec, features, targets) -> fmt.LineFormat:
    """The :mod:`runtime.lines` format for ``spec``; InputError where it cannot be made."""
    if spec.format == "csv":
        return fmt.CsvFormat(list(spec.columns), features, targets, spec.stream_column)
    if spec.format == "jsonl":
        return fmt.JsonlFormat(features, targets, spec.stream_column)
    return fmt.HeaderlessFormat(features, targets, spec.stream_column)


class LineJob:
    """One task's model, format and state codec; answers lines for any sensor.

    Parameters
    ----------
    model : the ONNX file's bytes (shipped with the job, so no task needs the file).
    spec : how lines are read.
    missing : the runtime's NaN policy, ``"error"``, ``"skip"`` or ``"hold"``.
    """

    keep = 4096      # sensors whose streams a task keeps ready (~20 KiB each)

    def __init__(self, model: bytes, spec: LineSpec, missing: str = "error",
                 ttl: float | None = None):
        self.model = runtime.load(model, device="cpu", missing=missing)
        self.ttl = ttl       # seconds after its last write that a sensor's state is void
        self.spec = spec
        self.format = line_format(spec, self.model.features, self.model.targets)
        self.alerts = StreamAlerts(self.model, spec.alerts) if spec.alerts else None
        self.settings = settings_bytes(spec.alerts)
        if self.alerts is not None:      # before the order column, as lstm-run adds them
            self.alerts.columns(self.format)
        self.blank = [None] * len(self.format.extra)   # no alert values: a replay's columns
        self.order: OrderColumn | None = None     # the time column, through runtime.order
        if spec.time_column is not None:
            self.order = choose(self.format, None, time_column=spec.time_column, seq_column=None)
        if self.order is not None:
            self.format.add_order()
        self.stream = self.model.stream()   # the stream of lines given without a key
        # key -> (state bytes it last wrote, its stream, write time), most recently used last
        self._hot: OrderedDict[str, tuple[bytes, object, float]] = OrderedDict()
        self._nan = np.full(self.model.n_targets, np.nan, np.float32)

    def parse(self, line: str) -> fmt.Record:
        """The record of one line, its position in ``rec.at`` (None without a time column).

        A bad line, a reading the model cannot take or a bad time gives an error record.
        """
        rec = self.format.parse(0, raw(line))
        if rec.ok:
            try:
                self.model.validate(rec.values)
            except LstmEdgeError as exc:
                rec.error = fmt.cli_words(str(exc))
        if rec.ok and self.order is not None:
            try:
                rec.at = self.order.position(rec)
            except BadLine as exc:
                rec.error = flink_words(str(exc))
        return rec

    def key(self, line: str) -> str | None:
        """The sensor a line goes to; None for a header line (dropped); "" for a bad line."""
        if self.spec.header is not None and \
                line.removeprefix("\xef\xbb\xbf").rstrip("\r") == self.spec.header:
            return None
        rec = self.format.parse(0, raw(line))
        return rec.key if rec.ok else ""

    def answer(self, line: str, blob: bytes | None, key: str | None = None
               ) -> tuple[str, bytes | None]:
        """The answer to ``line`` for a sensor whose state is ``blob`` (None: a new sensor).

        Returns the output line and the sensor's new state bytes, or an error record and
        None, in which case the state must be left as it was. ``key`` (the sensor) lets the
        task keep the sensor's stream between its lines: used only while ``blob`` is still the
        very bytes that stream last wrote, so Flink's state stays the one truth (a restore,
        an expired TTL or a rescale gives other bytes, and the stream is rebuilt from them).
        """
        if blank(line):
            return "", None
        rec = self.parse(line)
        if not rec.ok:
            return self.format.format_error(rec), None
        wall = time.time()
        stream = self.open(key, blob, wall)
        kind = self.decide(stream, rec)
        if kind == "replay":
            return self.replayed(rec, self.stored(stream), self.last_columns(stream)), None
        if kind == "old":
            return self.skipped(rec, stream.position), None
        if rec.ok:
            try:
                y = stream.step(rec.values, at=rec.at)
            except LstmEdgeError as exc:        # the stream is unchanged (runtime's promise)
                rec.error = fmt.cli_words(str(exc))
        if not rec.ok:
            return self.format.format_error(rec), None
        answers = {id(rec): (stream.steps, not stream.ready, self._nan if y is None else y)}
        extra = self.annotate({rec.key: stream}, [rec], answers)
        out = self.format.format(rec, *answers[id(rec)], extra.get(id(rec), self.blank))
        return out, self.save(key, stream, wall)

    # ---- the state's bytes and the order rule: each done here, once ----------------------

    def open(self, key: str | None, blob: bytes | None, wall: float, busy=()):
        """The stream of a sensor whose keyed state is ``blob``.

        The task's kept stream where ``blob`` is still the bytes it last wrote; else one
        restored from the bytes (a fresh one for None, or where the state TTL has passed).
        ``busy``: sensors whose stream objects must not be reused for this one.
        """
        snap, stream = None, None
        if blob is not None:
            hot = self._hot.get(key) if key is not None else None
            if hot is not None and (hot[0] is blob or hot[0] == blob):
                stream, written = hot[1], hot[2]
            else:
                snap = StreamState.from_bytes(blob, "the keyed state")
                written = _written(snap.sections)
            if self.ttl is not None and wall - written > self.ttl:   # silent too long
                stream, snap = None, None
        if stream is None:
            stream = self._stream_for(key, busy)
            stream.restore(snap, "the keyed state")
        return stream

    def save(self, key: str | None, stream, wall: float) -> bytes:
        """The sensor's new state bytes, its stream kept for its next line."""
        stream.sections[WRITTEN] = struct.pack("<d", wall)
        if self.alerts is None:     # fed with no alerts: a later job's alerts start afresh
            stream.sections.pop(StreamAlerts.SECTION, None)
            stream.sections.pop(SETTINGS, None)
        blob = stream.to_bytes()
        if key is not None:
            self._hot[key] = (blob, stream, wall)
        return blob

    def decide(self, stream, rec: fmt.Record, prev: fmt.Record | None = None) -> str:
        """The runtime's order rule for ``rec``: ``"new"``, ``"replay"`` or ``"old"``; a
        reading at the position of the last one with other values becomes an error record
        (``"new"`` is returned with ``rec.error`` set). ``prev``: the sensor's last new
        record not yet fed (a flush's earlier line), which the rule then compares with."""
        if rec.at is None:
            return "new"
        if prev is not None:
            kind = order(prev.at, prev.values, rec.values, rec.at)
            seen = prev.values
        else:
            kind = stream.order(rec.values, rec.at)
            seen = None
        if kind == "conflict":
            last = seen if seen is not None else stream.snapshot().last
            rec.error = conflict_message(rec.at, last, rec.values)
            return "new"
        return kind

    def annotate(self, streams: dict, records: list[fmt.Record], answers: dict
                 ) -> dict[int, list]:
        """``lstm-run --interval``'s alert columns of fed records (each sensor's in input
        order), ``{id(record): values}``; ``{}`` without ``--interval``.

        Each sensor's alert state is taken from its stream's ``alerts`` section and put back
        there, to be saved with the stream: the keyed state is its one home.
        """
        if self.alerts is None:
            return {}
        keys = dict.fromkeys(rec.key for rec in records)
        for key in keys:
            sections = streams[key].sections
            if sections.get(SETTINGS, self.settings) != self.settings:
                # kept with other settings (a job restarted with others): its pending
                # forecasts' half-widths, counters and quantile are theirs; afresh, as in a
                # new job with these settings
                sections.pop(StreamAlerts.SECTION, None)
            self.alerts.restore(key, streams[key])
        extra = self.alerts.annotate(records, answers)
        for key in keys:
            self.alerts.keep(key, streams[key])
            streams[key].sections[SETTINGS] = self.settings
            self.alerts.forget(key)
        return extra

    def stored(self, stream) -> tuple:
        """A stream's answer to its last reading: ``(step, warming up, prediction)``."""
        pred = stream.answer
        return stream.steps, not stream.ready, self._nan if pred is None else pred

    def last_columns(self, stream) -> list | None:
        """The alert columns of a stream's last answer, kept in its ``alerts`` section (None
        without ``--interval`` or before any)."""
        data = stream.sections.get(StreamAlerts.SECTION) if self.alerts is not None else None
        return None if data is None else AlertState.from_bytes(data).last

    def replayed(self, rec: fmt.Record, answer: tuple, columns: list | None = None) -> str:
        """The answer to a replay: the answer its reading got (its alert ``columns``
        included), marked ``replay``."""
        self.order.replayed(rec.key)
        step, warmup, pred = answer
        return self.format.format(rec, step, warmup, pred, columns or self.blank,
                                  mark="replay")

    def skipped(self, rec: fmt.Record, position) -> str:
        """The answer to a reading at or before its sensor's position: not fed."""
        return self.format.format_skipped(rec, self.order.skipped(rec.key, position))

    def _stream_for(self, key, busy=()):
        """A stream object for ``key``: its own while kept, else the least recently used one's."""
        hot = self._hot.pop(key, None) if key is not None else None
        if hot is not None:
            return hot[1]
        if key is None:
            return self.stream
        if len(self._hot) < self.keep or next(iter(self._hot)) in busy:
            return self.model.stream()
        return self._hot.popitem(last=False)[1][1]     # reuse its step buffers


def _written(sections: dict) -> float:
    """The wall-clock time a state was written (NaN: not recorded)."""
    data = sections.get(WRITTEN)
    return struct.unpack("<d", data)[0] if data is not None and len(data) == 8 else math.nan
