"""What the Flink job does with one line, with no Flink in it: route it, answer it.

:class:`LineJob` holds the loaded model and the line format (both made once per task, in
``open()``), and answers a line given the sensor's state bytes: the answer line and the new
state bytes, or an error record and ``None`` (the state is then left as it was). The line
formats, error records and answer columns are ``lstm-run``'s, from :mod:`runtime.lines`.

Each sensor's readings must arrive in order. With a time column, a reading whose time is not
after the sensor's last one is refused with an error record instead of being fed: feeding it
would silently give the LSTM a state no Keras run would ever reach.

The job's sources decode each line's bytes as ISO-8859-1 (one character per byte: nothing
replaced, nothing lost), and :func:`raw` turns them back into the very bytes, so that
``lstm-run``'s own parser reads them: invalid UTF-8 gets ``lstm-run``'s error record, not a
U+FFFD that would be fed as if the line were good.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

import runtime
from runtime import LstmEdgeError
from runtime import lines as fmt
from runtime.lines import BadLine

from .codec import StateCodec, reading_time


@dataclass(frozen=True)
class LineSpec:
    """How lines are read: made on the client, shipped to every task with the function."""

    format: str                       # "csv", "headerless" or "jsonl"
    columns: tuple[str, ...] = ()     # the CSV header's columns ("csv" only)
    stream_column: str | None = None  # the column or key naming each line's sensor
    time_column: str | None = None    # the column or key ordering each sensor's readings
    header: str | None = None         # the input files' first line (as raw() text), dropped
                                      # wherever it recurs


SOURCE_CHARSET = "ISO-8859-1"   # how the job's sources decode bytes: one character per byte


def raw(line: str) -> bytes:
    """The bytes a source read for ``line``: its ISO-8859-1 text encoded back.

    Text that is not from such a source (a character past U+00FF) is taken as UTF-8.
    """
    try:
        return line.encode(SOURCE_CHARSET)
    except UnicodeEncodeError:
        return line.encode("utf-8", "surrogatepass")


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
        self.codec = StateCodec(self.model)
        self.stream = self.model.stream()   # the stream of lines given without a key
        # key -> (state bytes it last wrote, its stream, last reading's time, write time),
        # most recently used last
        self._hot: OrderedDict[str, tuple[bytes, object, float, float]] = OrderedDict()
        self._nan = np.full(self.model.n_targets, np.nan, np.float32)
        self._time_index = None
        if spec.time_column is not None and spec.format == "csv":
            self._time_index = list(spec.columns).index(spec.time_column)

    def parse(self, line: str) -> tuple[fmt.Record, float]:
        """The record of one line and its time (NaN without a time column).

        A bad line, a sample the model cannot take or a bad time gives an error record.
        """
        rec, when = self.format.parse(0, raw(line)), math.nan
        if rec.ok:
            try:
                self.model.validate(rec.values)
            except LstmEdgeError as exc:
                rec.error = str(exc)
        if rec.ok and self.spec.time_column is not None:
            try:
                when = reading_time(self._time_field(rec), self.spec.time_column)
            except BadLine as exc:
                rec.error = str(exc)
        return rec, when

    def _time_field(self, rec: fmt.Record):
        if self._time_index is not None:
            return rec.fields[self._time_index]
        return rec.fields.get(self.spec.time_column)

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
        rec, now = self.parse(line)
        if not rec.ok:
            return self.format.format_error(rec), None
        wall = time.time()
        stream, last = self.open(key, blob, wall)
        rec.error = self.order_error(now, last)
        if rec.error is None:
            try:
                y = stream.step(rec.values)
            except LstmEdgeError as exc:        # the stream is unchanged (runtime's promise)
                rec.error = str(exc)
        if rec.error is not None:
            return self.format.format_error(rec), None
        out = self.format.format(rec, stream.steps, not stream.ready,
                                 self._nan if y is None else y)
        return out, self.save(key, stream, now, wall)

    # ---- the state's bytes and the order rule: each done here, once ----------------------

    def open(self, key: str | None, blob: bytes | None, wall: float, busy=()):
        """``(stream, last reading's time)`` of a sensor whose keyed state is ``blob``.

        The task's kept stream where ``blob`` is still the bytes it last wrote; else one
        restored from the bytes (a fresh one for None, or where the state TTL has passed).
        ``busy``: sensors whose stream objects must not be reused for this one.
        """
        snap, last, written, stream = None, math.nan, math.nan, None
        if blob is not None:
            hot = self._hot.get(key) if key is not None else None
            if hot is not None and (hot[0] is blob or hot[0] == blob):
                _, stream, last, written = hot
            else:
                snap, last, written = self.codec.decode(blob)
            if self.ttl is not None and wall - written > self.ttl:   # silent too long
                stream, snap, last = None, None, math.nan
        if stream is None:
            stream = self._stream_for(key, busy)
            stream.restore(snap)
        return stream, last

    def save(self, key: str | None, stream, last: float, wall: float) -> bytes:
        """The sensor's new state bytes, its stream kept for its next line."""
        blob = self.codec.encode(stream.snapshot(), last, wall)
        if key is not None:
            self._hot[key] = (blob, stream, last, wall)
        return blob

    def order_error(self, now: float, last: float) -> str | None:
        """Why a reading at ``now`` may not be fed after one at ``last``; None where it may."""
        if not now <= last:   # also where either is NaN (no time column, a fresh sensor)
            return None
        return (f"out of order: time column {self.spec.time_column!r} gives {now:g} s, "
                f"not after this sensor's last reading ({last:g} s); the reading was "
                f"not fed. Each sensor's readings must arrive in time order: key the "
                f"source by sensor (Kafka: one partition per sensor key) and keep "
                f"each sensor's lines in one file, in order")

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
