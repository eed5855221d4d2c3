"""``lstm-run``'s sensor table: one stream per sensor key, bounded, least recently seen first.

A sensor's entry is its stream, when it last had a line and the input line of its last
answer. The table keeps at most ``max_streams`` sensors (a new one drops the least recently
seen that the batch in hand does not use) and forgets a sensor silent for ``idle_timeout``
seconds. Whoever keeps more per sensor (the state file's rows, alert states) hears of each
drop through ``on_drop``; stderr is told in brief: the first drops by name, then counts.

With a state file (:meth:`SensorTable.remember`) a dropped sensor leaves its
:class:`Position` behind: what the order check needs to tell a resend of its old readings
from new ones (its position, last reading and that reading's answer), not its model state.
:meth:`SensorTable.recall` finds it, so a resent reading is answered as a replay or skipped,
and a new reading starts the sensor afresh, as a sensor never seen does.

>>> table = SensorTable(lambda: None, max_streams=2, clock=lambda: 0.0)
>>> for key in "abc":
...     _ = table.take(key)
>>> list(table.sensors), table.drops
(['b', 'c'], 1)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .state import check_position, order


@dataclass
class Sensor:
    """One sensor: its stream and when it last had a line."""

    stream: Any
    seen: float            # the table's clock at its last line
    line: int = 0          # the input line of its last answer
    # Every line of the sensor in this run reached this stream: none was refused by the
    # order check (a replay, a skip), and no stream was dropped before it was made (after a
    # drop a "new" sensor may be a dropped one back, which the table, keeping nothing of it
    # without a state file, cannot tell). Its step count is then what the sensor sent.
    whole: bool = True


@dataclass(frozen=True)
class Position:
    """What the order check keeps of a dropped sensor; it answers as its stream did.

    A stream's order-check surface (:meth:`order`, ``position``, ``answer``, ``steps``,
    ``ready``), so the order rule treats a dropped sensor as the stream it was: a replay of
    its last reading gets the answer it got (step and warm-up included), an older reading is
    skipped, a newer one is new (and fed to a fresh stream).
    """

    position: float | int          # the position of its last reading
    last: np.ndarray               # (features,) float64 that reading, as given
    answer: np.ndarray | None      # (targets,) float32 its answer (NaN while warming up)
    steps: int                     # the step that answered it
    ready: bool                    # False: that answer was a warm-up step
    seen: float                    # wall-clock seconds of its last line

    @classmethod
    def of(cls, stream, seen: float) -> Position | None:
        """A stream's position, or None where it never had one (nothing to check)."""
        if stream.position is None:
            return None
        last = stream.snapshot().last
        return cls(stream.position, np.asarray(last, np.float64), stream.answer,
                   int(stream.steps), bool(stream.ready), seen)

    def order(self, reading, at) -> str:
        """:func:`runtime.state.order` of ``reading`` at ``at`` after this position."""
        return order(self.position, self.last, reading, check_position(at))

    def snapshot(self) -> Position:
        """Itself: its ``last`` is a stream snapshot's (the order check's conflict message)."""
        return self


class SensorTable:
    """The sensors of one run, least recently seen first.

    Parameters
    ----------
    new_stream : makes a fresh stream for a sensor seen for the first time.
    max_streams : most sensors kept at once.
    idle_timeout : seconds of silence after which a sensor is forgotten (None: never).
    on_drop : called with each dropped sensor's key.
    warn : one line for stderr.
    clock : seconds, monotonic (``time.monotonic``; tests give their own).
    """

    NAMED_DROPS = 10     # drops named one by one on stderr; then counts at 100, 1,000, ...

    def __init__(self, new_stream: Callable[[], Any], max_streams: int,
                 idle_timeout: float | None = None, *,
                 on_drop: Callable[[str], None] = lambda key: None,
                 warn: Callable[[str], None] = lambda message: None,
                 clock: Callable[[], float] = time.monotonic):
        self.new_stream, self.max_streams, self.idle_timeout = new_stream, max_streams, idle_timeout
        self.on_drop, self.warn, self.clock = on_drop, warn, clock
        self.sensors: OrderedDict[str, Sensor] = OrderedDict()
        self.drops = 0              # sensors dropped in all
        # With a state file (remember()): positions of the sensors dropped since the last
        # save, and where the older ones are (the store's lookup). Without: none kept.
        self.retired: dict[str, Position] = {}
        self._lookup: Callable[[str], Position | None] | None = None

    def remember(self, lookup: Callable[[str], Position | None]) -> None:
        """Keep each dropped sensor's :class:`Position` in :attr:`retired` (the caller saves
        them, then empties it); ``lookup`` finds the ones saved before."""
        self._lookup = lookup

    def __len__(self) -> int:
        return len(self.sensors)

    def get(self, key: str) -> Sensor | None:
        return self.sensors.get(key)

    def recall(self, key: str) -> Sensor | None:
        """``key``'s entry, or where it was dropped, one holding its :class:`Position` (not
        entered in the table); None for a sensor never seen (or forgotten for good)."""
        sensor = self.sensors.get(key)
        if sensor is not None or self._lookup is None:
            return sensor
        kept = self.retired.get(key) or self._lookup(key)
        return None if kept is None else Sensor(kept, self.clock())

    def add(self, key: str, stream) -> None:
        """A sensor restored from the state file: seen now (the time the tool was down is not
        the sensor's silence)."""
        self.sensors[key] = Sensor(stream, self.clock())

    def take(self, key: str, busy: Iterable[str] = ()) -> Sensor:
        """``key``'s entry, made where it is new (dropping the least recently seen sensor not in
        ``busy`` when the table is full), and marked seen now."""
        sensor = self.sensors.get(key)
        if sensor is None:
            busy = set(busy)
            while len(self.sensors) >= self.max_streams:
                old = next((k for k in self.sensors if k not in busy), None)
                if old is None:
                    break
                self._drop(old, f"the least recently seen, to stay within --max-streams "
                                f"{self.max_streams}")
            self.retired.pop(key, None)      # back: its row replaces the position at the save
            sensor = self.sensors[key] = Sensor(self.new_stream(), self.clock(),
                                                whole=self.drops == 0)
        else:
            sensor.seen = self.clock()
        self.sensors.move_to_end(key)
        return sensor

    def drop_idle(self) -> None:
        """Forget sensors that have been silent for longer than ``idle_timeout``."""
        if self.idle_timeout is None:
            return
        limit = self.clock() - self.idle_timeout
        while self.sensors:
            key, sensor = next(iter(self.sensors.items()))
            if sensor.seen >= limit:
                break
            self._drop(key, f"no line for {self.idle_timeout:g} s (--idle-timeout)")

    def _drop(self, key: str, why: str) -> None:
        sensor = self.sensors.pop(key)
        if self._lookup is not None:
            wall = time.time() - (self.clock() - sensor.seen)
            kept = Position.of(sensor.stream, wall)
            if kept is not None:
                self.retired[key] = kept
        self.on_drop(key)
        self.drops += 1
        n = self.drops
        if n <= self.NAMED_DROPS:
            self.warn(f"dropped stream {key!r}: {why}")
        elif len(str(n)) > 2 and str(n).strip("0") == "1":            # 100, 1000, ...
            self.warn(f"dropped {n:,} streams so far (the first {self.NAMED_DROPS} named "
                      f"above; latest: {why})")

    def report_drops(self) -> None:
        """One line with the number of streams dropped, where more than were named."""
        if self.drops > self.NAMED_DROPS:
            self.warn(f"dropped {self.drops:,} streams in all (--max-streams "
                      f"{self.max_streams}, --idle-timeout {self.idle_timeout or 'none'})")
