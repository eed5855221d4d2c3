"""``lstm-run``'s order check: which column gives each reading's position, and the tally.

Feeds deliver at least once (a restarted ``tail -f``, a broker's redelivery, a client that
resends "from about there"), so each sensor's stream remembers the position of the last
reading it was fed (:mod:`runtime.state`) and the runtime's order rule decides what a line
does (``Stream.step(reading, at=...)``). This module only finds the position of each line:

- ``--seq-column NAME``: a whole number that counts the sensor's readings;
- ``--time-column NAME``: seconds (a number, e.g. epoch seconds) or an ISO 8601 date/time
  (UTC where it names no zone);
- otherwise a CSV column named ``time``, ``timestamp``, ``datetime``, ``date`` or
  ``date_time`` (any case; a header-less line's leading date/time is ``time``), or a JSON
  key of those names whose first value is such a time. The first good line decides: where its
  value there is a time, the column holds each line's position from then on, as a named one
  does, and a later line whose value is not a time gets an error record (fed unchecked, a
  redelivery of it would be fed twice); where it is not, the column is not a time column
  (one note on stderr) and there is no check. Where no such column is found there is no
  check. JSON lines (and MQTT payloads) look for the key in every record until one has it,
  since their sensors need not all send times; after that a record without the key is fed
  unchecked where its sensor has never had a position (a sensor that sends no times; one
  note on stderr), and gets an error record where it has (a redelivery of it would be fed
  twice).

``--no-order-check`` turns it off: for feeds whose times are not monotonic by design (a
sensor that sends its buffered past after a reconnect, clocks that step back), where every
line must be fed as it comes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .errors import InputError
from .lines import TIME_NAMES, BadLine, CsvFormat, JsonlFormat, LineFormat, Record

MOST = 10       # sensors named in the end-of-run summary
_EPOCH = datetime(1970, 1, 1)       # a time without a zone is UTC
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])$")


def reading_time(text, column: str) -> float:
    """A time field as seconds: a number as it is, or an ISO-8601 time (UTC where no zone).

    Raises :class:`runtime.lines.BadLine`, so that the line gets an error record.

    >>> reading_time("17", "t"), reading_time("1970-01-01T00:01:00Z", "t")
    (17.0, 60.0)
    """
    value = math.nan
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    elif isinstance(text, str):
        if text[4:5] == "-" and text[:4].isdigit():   # YYYY-: no number; a failed float()
            value = _iso(text)                         # would cost as much as the date
        elif text.isascii() and "_" not in text:     # float() reads 1_000 and ١٧ too
            try:
                value = float(text)
            except ValueError:
                value = _iso(text)
    if abs(value) >= EXACT and math.isfinite(value):
        shown = str(text) if len(str(text)) <= 40 else str(text)[:37] + "..."
        raise BadLine(f"time column {column!r}: {shown!r} is 2**53 or more, where times a "
                      f"few units apart round to the same position (epoch nanoseconds?); "
                      f"give seconds or milliseconds (decimals are kept), or ISO-8601 times")
    if not math.isfinite(value):
        shown = str(text) if len(str(text)) <= 40 else str(text)[:37] + "..."
        raise BadLine(f"time column {column!r}: {shown!r} is not a number or an ISO-8601 time "
                      f"(e.g. 2022-03-20T11:00:00+01:00); the time orders each sensor's "
                      f"readings, so every line needs one (--no-order-check feeds every line "
                      f"as it comes)")
    return value


def _no_offset(value, column: str) -> str | None:
    """A note where ``value`` is a time of day without a UTC offset, else None: read as UTC,
    a local clock's times repeat for an hour when it goes back (daylight saving time).

    >>> _no_offset("2022-10-30T02:30:00+01:00", "t") is None, _no_offset(17, "t") is None
    (True, True)
    >>> _no_offset("2022-10-30T02:30:00", "t")[:40]
    "note: time column 't' holds times withou"
    """
    if not isinstance(value, str) or ":" not in value:
        return None                             # seconds, or a date without a time of day
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is not None:
        return None
    return (f"note: time column {column!r} holds times without a UTC offset "
            f"({value.strip()[:40]!r}), read as UTC; where the logger writes a local clock's "
            f"time, the hour it repeats when the clock goes back (daylight saving time) reads "
            f"as older than the sensor's last reading and is not fed: log UTC times or their "
            f"offset (2022-10-30T02:30:00+01:00)")


def _iso(text: str) -> float:
    """An ISO-8601 time as seconds (UTC where it names no zone); NaN where it is not one."""
    text = text.strip()
    if len(text) == 7 and _MONTH.match(text):     # YYYY-MM, a month (ISO 8601): its first day
        text += "-01"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return math.nan
    if when.tzinfo is None:           # as timestamp() of it in UTC, in a third of the time
        return (when - _EPOCH).total_seconds()
    return when.timestamp()


SEQ_LOW, SEQ_HIGH = -(1 << 63), (1 << 63) - 1     # what the state file keeps (int64)
EXACT = float(1 << 53)       # from here a float64 time cannot tell neighbouring units apart


def sequence_number(text, column: str) -> int:
    """A sequence field as an int; BadLine for anything but a whole number.

    >>> sequence_number("17", "seq"), sequence_number(18, "seq")
    (17, 18)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        number = text
    else:
        try:
            digits = str(text).strip()
            if not digits.isascii() or "_" in digits:     # int() reads 1_000 and ١٧
                raise ValueError(digits)
            number = int(digits)
        except ValueError:
            shown = str(text)[:40]
            raise BadLine(f"--seq-column {column!r}: {shown!r} is not a whole number; the "
                          f"sequence number orders each sensor's readings, so every line "
                          f"needs one") from None
    if not SEQ_LOW <= number <= SEQ_HIGH:
        raise BadLine(f"--seq-column {column!r}: {str(number)[:40]} is out of range; the state "
                      f"keeps a sequence number as a signed 64-bit integer, -2**63 to 2**63 - 1 "
                      f"(a counter that wraps at 2**64 needs a time column instead)")
    return number


class NoPosition(BadLine):
    """A JSON line without the position key at all (not one with a bad value there)."""


@dataclass
class OrderColumn:
    """Where a line's position is, and how to read it."""

    name: str
    sequence: bool                    # True: --seq-column; False: a time column
    index: int | None = None          # CSV: the column's index; JSON: None (a key)
    named: bool = True                # named, or found and confirmed: a line without a position is bad
    found: bool = False               # found by its name (not --time-column/--seq-column)
    off: bool = False                 # found by its name, but its first value was no time: unchecked
    note: str | None = None           # a note for stderr, once (the caller says it): why it
    # is off, or that its times name no UTC offset
    zoned: bool = False               # the first time was looked at for its UTC offset
    replays: dict[str, int] = field(default_factory=dict)    # sensor -> replays answered
    skips: dict[str, int] = field(default_factory=dict)      # sensor -> readings skipped
    # sensor -> a broker's redeliveries of readings answered before (lstm-run --mqtt)
    redelivered: dict[str, int] = field(default_factory=dict)

    def position(self, rec: Record) -> float | int | None:
        """``rec``'s position; BadLine where it has none, or None (not checked).

        A column found by its name is confirmed or turned off by the first good line that
        reaches it (see the module's docstring); ``note`` then says why it is off.
        """
        if self.off:
            return None
        fields = rec.fields
        value = fields[self.index] if isinstance(fields, list) and self.index is not None \
            else fields.get(self.name) if isinstance(fields, dict) else None
        try:
            if value is None:
                raise NoPosition(f"no {self.name!r} key: the order check reads each line's "
                                 f"position there (--no-order-check feeds every line as it "
                                 f"comes)")
            at = sequence_number(value, self.name) if self.sequence \
                else reading_time(value, self.name)
        except NoPosition:
            raise
        except BadLine:
            if self.named:
                raise
            self.off = True
            shown = str(value) if len(str(value)) <= 40 else str(value)[:37] + "..."
            self.note = (f"no order check: column {self.name!r} holds {shown!r}, not an ISO-8601 "
                         f"time or seconds, so a line sent twice is fed twice; name a column "
                         f"of times with --time-column or a reading counter with --seq-column "
                         f"(--no-order-check says there is none)")
            return None
        self.named = True
        if not self.zoned and not self.sequence:
            self.zoned = True
            self.note = self.note or _no_offset(value, self.name)
        return at

    def describe(self, position) -> str:
        """A sensor's position in the words of its column: a date where one holds it, else
        the seconds (a time column of numbers may hold any finite number).

        >>> column = OrderColumn("time", sequence=False)
        >>> column.describe(60.0), column.describe(1e30)
        ('time 1970-01-01T00:01:00Z', 'time 1e+30 s')
        """
        if self.sequence:
            return f"{self.name} {position}"
        try:
            when = datetime.fromtimestamp(position, timezone.utc).isoformat()
        except (OverflowError, OSError, ValueError):     # beyond the years 1-9999
            return f"{self.name} {position:g} s"
        return f"{self.name} {when.replace('+00:00', 'Z')}"

    def skipped(self, key: str, position) -> str:
        """The ``order`` field of a skipped line; counts it."""
        self.skips[key] = self.skips.get(key, 0) + 1
        return f"skipped: not after this sensor's last reading ({self.describe(position)})"

    def answered_before(self, key: str) -> None:
        """A skipped line was a redelivery of a reading answered before: count it as that."""
        self.skips[key] -= 1
        if not self.skips[key]:
            del self.skips[key]
        self.redelivered[key] = self.redelivered.get(key, 0) + 1

    def replayed(self, key: str) -> str:
        self.replays[key] = self.replays.get(key, 0) + 1
        return "replay"

    def summary(self, named: bool) -> list[str]:
        """End-of-run lines: replays and skips per sensor (``named``: by --stream-column)."""
        keys = sorted(set(self.replays) | set(self.skips) | set(self.redelivered))
        lines = [f"{f'sensor {k!r}' if named else 'the stream'}: {self.replays.get(k, 0)} "
                 f"replayed reading(s) answered as before, {self.skips.get(k, 0)} older "
                 f"reading(s) skipped (not fed; --no-order-check feeds them)"
                 + (f", {self.redelivered[k]} older reading(s) delivered again by the broker "
                    f"(answered before; acknowledged, not answered twice)"
                    if k in self.redelivered else "") for k in keys]
        if len(lines) > MOST:
            lines = lines[:MOST] + [f"... and {len(lines) - MOST} more sensors with replays "
                                    f"or skips"]
        return lines


def choose(fmt: LineFormat, first: Record | None, *, time_column: str | None,
           seq_column: str | None) -> OrderColumn | None:
    """The position column of an input; None: none. CSV: from its column names; JSON: from
    its first good record ``first`` (None: not seen yet, so none yet).

    Raises InputError where a named column is not there.
    """
    named = seq_column or time_column
    option = "--seq-column" if seq_column else "--time-column"
    if isinstance(fmt, CsvFormat):
        names = [c.strip().lower() for c in fmt.columns]
        if named is not None:
            if named.strip().lower() not in names:
                raise InputError(f"the input has no {option} {named!r}; it has "
                                 f"{', '.join(map(repr, fmt.columns))}")
            at = names.index(named.strip().lower())
            return OrderColumn(fmt.columns[at], seq_column is not None, at)
        found = next((i for i, n in enumerate(names) if n in TIME_NAMES), None)
        return None if found is None else OrderColumn(fmt.columns[found], False, found, False,
                                                      found=True)
    if isinstance(fmt, JsonlFormat):
        if named is not None:
            return OrderColumn(named, seq_column is not None)
        if first is None or not isinstance(first.fields, dict):
            return None
        for key, value in first.fields.items():
            if str(key).strip().lower() in TIME_NAMES and _is_time(value):
                return OrderColumn(key, False, None, False, found=True)
        return None
    if named is not None:
        raise InputError(f"{option} needs a CSV header, --columns or JSON lines to name the "
                         f"column; these header-less lines hold the model's features only")
    return None


def _is_time(value) -> bool:
    try:
        reading_time(value, "")
    except BadLine:
        return False
    return True
