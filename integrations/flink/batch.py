"""The batched operator's work, with no Flink in it: a shard's pending lines, answered at once.

Sensors are grouped into shards (:func:`shard_of`), and the job keys its stream by shard: a
shard's sensors' state bytes live in one keyed ``MapState`` and its lines wait in keyed list
state until a flush. A flush (:meth:`BatchJob.answer_many`) answers them as ``lstm-run``
does a batch: a sensor with a long run of lines is fed the run in one call, and the other
sensors are stepped together, one reading each per ``Model.step`` call. The answers are the
per-line operator's (:class:`~.records.LineJob`), byte for byte.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

import numpy as np

from runtime import LstmEdgeError
from runtime import lines as fmt

from .records import LineJob, blank


def shard_of(key: str, shards: int) -> int:
    """The shard of a sensor: CRC-32 of its UTF-8 name, so every process agrees (Python's
    ``hash`` of a string differs between processes)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % shards


class BatchJob(LineJob):
    """A :class:`LineJob` that answers many lines of many sensors in one go."""

    def answer_many(self, lines: list[str], stored: Callable[[str], bytes | None]
                    ) -> tuple[list[str], dict[str, bytes]]:
        """The answers to ``lines`` (in their order) and each changed sensor's new state bytes.

        ``stored(sensor)`` gives a sensor's state bytes (None: a new sensor). A bad line or
        one out of order gets an error record and leaves its sensor's state as it was.
        """
        out: list[str | None] = [None] * len(lines)
        runs: dict[str, list[tuple[int, fmt.Record]]] = {}
        for i, line in enumerate(lines):
            if blank(line):             # answered with a blank line, as lstm-run does
                out[i] = ""
                continue
            rec = self.parse(line)
            if rec.ok:
                runs.setdefault(rec.key, []).append((i, rec))
            else:
                out[i] = self.format.format_error(rec)
        wall = time.time()
        streams, fed, replays = {}, {}, []
        for key, run in runs.items():
            stream = streams[key] = self.open(key, stored(key), wall, runs)
            fed[key], prev = [], None        # prev: the run's last new record, not yet fed
            for i, rec in run:
                kind = self.decide(stream, rec, prev)
                if not rec.ok:
                    out[i] = self.format.format_error(rec)
                elif kind == "replay":        # of a reading fed before, or earlier in the run
                    replays.append((i, rec, prev))
                elif kind == "old":
                    out[i] = self.skipped(rec, prev.at if prev is not None else stream.position)
                else:
                    fed[key].append((i, rec))
                    prev = rec if rec.at is not None else prev
        answers: dict[int, tuple] = {}
        before = {key: self.stored(stream) for key, stream in streams.items()}
        columns = {key: self.last_columns(stream) for key, stream in streams.items()}
        self._step(streams, fed, out, answers)
        stepped = sorted(((i, rec) for run in fed.values() for i, rec in run
                          if id(rec) in answers), key=lambda item: item[0])   # input order
        extra = self.annotate(streams, [rec for _, rec in stepped], answers)
        for i, rec in stepped:
            out[i] = self.format.format(rec, *answers[id(rec)], extra.get(id(rec), self.blank))
        for i, rec, prev in replays:
            answer = answers.get(id(prev)) if prev is not None else before[rec.key]
            again = extra.get(id(prev)) if prev is not None else columns[rec.key]
            out[i] = self.replayed(rec, answer, again) if answer is not None \
                else self.format.format_error(rec)
        changed = {}
        for key, run in fed.items():
            if any(rec.ok for _, rec in run):
                changed[key] = self.save(key, streams[key], wall)
        return out, changed          # type: ignore[return-value]   (every line answered)

    def _step(self, streams: dict, fed: dict[str, list[tuple[int, fmt.Record]]],
              out: list[str | None], answers: dict[int, tuple]) -> None:
        """Step every fed reading: its ``(step, warmup, prediction)`` into ``answers``, or
        (where its stream refused it) its error record into ``out``.

        A sensor with more lines than there are sensors is fed its run in one call; the rest
        are stepped in rounds, the r-th reading of each in one ``Model.step`` call.
        """
        long = {k for k, run in fed.items() if len(run) > len(fed) and len(run) > 1
                and np.isfinite(np.stack([rec.values for _, rec in run])).all()}
        for key in long:
            stream, run = streams[key], fed[key]
            first = stream.steps
            try:
                preds = stream.feed(np.stack([rec.values for _, rec in run]),
                                    at=self._at(run))                   # (n, targets)
            except LstmEdgeError:     # the stream is unchanged: one reading at a time instead
                self._step_alone(stream, run, out, answers)
                continue
            for n, ((_, rec), pred) in enumerate(zip(run, preds), start=first + 1):
                answers[id(rec)] = (n, n < self.model.window, pred)
        rest = {k: run for k, run in fed.items() if k not in long}
        for r in range(max((len(run) for run in rest.values()), default=0)):
            keys = [k for k, run in rest.items() if len(run) > r]
            batch = [streams[k] for k in keys]
            items = [rest[k][r] for k in keys]
            try:
                preds = self.model.step(batch, np.stack([rec.values for _, rec in items]),
                                        at=self._at(items))
            except LstmEdgeError:     # nothing was stepped: one stream at a time instead
                for stream, item in zip(batch, items):
                    self._step_alone(stream, [item], out, answers)
                continue
            for stream, (_, rec), pred in zip(batch, items, preds):   # pred: (targets,)
                answers[id(rec)] = (stream.steps, not stream.ready, pred)

    def _step_alone(self, stream, run, out, answers) -> None:
        for i, rec in run:
            try:
                y = stream.step(rec.values, at=rec.at)
            except LstmEdgeError as exc:        # the stream is unchanged (runtime's promise)
                rec.error = fmt.cli_words(str(exc))
                out[i] = self.format.format_error(rec)
                continue
            answers[id(rec)] = (stream.steps, not stream.ready, self._nan if y is None else y)

    def _at(self, items) -> list | None:
        """The positions of ``(i, record)`` items for the order rule; None without one."""
        return None if self.order is None else [rec.at for _, rec in items]
