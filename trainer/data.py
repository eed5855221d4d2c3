"""Reading a sensor CSV into numeric columns, with a stated policy for missing values.

A CSV has a header row. A time column (named like ``time``/``date``/``timestamp``, or
holding ISO dates, YYYYMMDD numbers or epoch seconds at a constant step) is recognised and
kept aside, never used as a feature. Every other
column whose values are numbers is a candidate feature; junk in such a column is an error
that names the line and the column, and a missing value is handled by ``missing``:

- ``error`` (default): refuse, naming the lines;
- ``drop``: leave those rows out (the series gets shorter, the gaps close up);
- ``ffill``: repeat the last value seen (leading gaps take the first value seen);
- ``interpolate``: draw a straight line across the gap (ends take the nearest value).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .forecast import parse_time

MISSING_POLICIES = ("error", "drop", "ffill", "interpolate")
MISSING_TOKENS = {"", "na", "nan", "n/a", "null", "none", "?", "-"}
TIME_NAMES = re.compile(r"^(time|date|datetime|timestamp|ts|month|day|hour|minute)$", re.I)
NUMERIC_TIME_NAMES = re.compile(r"^(time|date|datetime|timestamp|ts|epoch|unix_?time)$", re.I)
SHOW = 5  # how many offending lines a message lists before saying "and N more"
GAP = 5   # a time step over this many times the median spacing is a hole (check_time)
EPOCH = (1e8, 4.2e9)   # numbers read as epoch seconds, as forecast.parse_time does: 1973..2103


@dataclass
class Table:
    """The numeric columns of a CSV, as floats with NaN where a value is missing."""

    columns: dict[str, np.ndarray]   # name -> (rows,) float64, NaN where missing
    lines: np.ndarray                # (rows,) the CSV line number of each row (header is 1)
    time: np.ndarray | None          # (rows,) the time column's text, when there is one
    time_column: str | None
    ignored: tuple[str, ...]         # non-numeric columns left out of the features

    def __len__(self) -> int:
        return len(self.lines)


def _is_missing(text: str) -> bool:
    return text.strip().lower() in MISSING_TOKENS


def _looks_like_time(values: list[str]) -> bool:
    sample = [v for v in values[:20] if not _is_missing(v)]
    if not sample:
        return False
    for v in sample:
        try:
            dt.datetime.fromisoformat(v.strip())
        except ValueError:
            return False
    return True


def _dates(values: np.ndarray) -> bool:
    """Whether every value is a YYYYMMDD date with a real month and day."""
    if not ((values >= 1e7) & (values < 3e7) & (values == np.round(values))).all():
        return False
    days = values.astype(np.int64)
    month, day = days // 100 % 100, days % 100
    return bool(((month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)).all())


def _epoch(values: np.ndarray) -> bool:
    """Whether every value lies where epoch seconds are read as dates (1973..2103)."""
    return bool(((values >= EPOCH[0]) & (values < EPOCH[1])).all())


def _numeric_time(name: str, numbers: np.ndarray, leading: bool = True) -> bool:
    """Whether a column of plain numbers is a time column, by its name or its values.

    - Named ``time``/``date``/``timestamp``/...: strictly increasing, or epoch seconds or
      YYYYMMDD dates in any order (:func:`check_time` then refuses rows that go back and
      notes a repeated time, as for a column of date strings).
    - Otherwise YYYYMMDD dates, or whole epoch seconds at one step (at most one step in ten
      a repeat or another spacing), that never go back; or newest first, where the column
      is ``leading`` (no numeric column before it bar a nameless one, the row index pandas
      writes): elsewhere a column that only shrinks may be a countdown, a feature.

    A ``month``/``day``/``hour`` column of small repeating numbers stays a feature.
    """
    values = numbers[np.isfinite(numbers)]
    if len(values) < 2:
        return False
    steps = np.diff(values)
    if NUMERIC_TIME_NAMES.match(name):
        return bool((steps > 0).all() or _dates(values) or _epoch(values))
    if not ((steps >= 0).all() or (leading and (steps <= 0).all())):
        return False
    if _dates(values):
        return True
    if not _epoch(values) or not (values == np.round(values)).all() or not steps.any():
        return False
    spacing = np.median(np.abs(steps[steps != 0]))
    return bool(np.mean(np.abs(steps) == spacing) >= 0.9)      # epoch seconds, one step


def check_training_target(sel: "Selection", split: int, source: str) -> None:
    """Refuse a target that is flat on the training rows (before ``split``) and changes later.

    The network learns from those rows alone, and the scales its figures are read in (MASE,
    the intervals' spread) come from them: a target that never changes there leaves nothing
    to learn and no scale. A target flat on every row is train.check_targets's to refuse.
    """
    for k, name in enumerate(sel.targets):
        column = sel.y[:, k]                                           # (rows,)
        if np.ptp(column[:split]) > 0 or np.ptp(column) == 0:
            continue
        moves = int(np.flatnonzero(column != column[0])[0])           # its first change
        raise DataError(f"{source}: the target {name!r} is {column[0]:g} on every training row "
                        f"(lines {sel.lines[0]}..{sel.lines[split - 1]}, the first "
                        f"{split / len(column):.0%} of the rows) and first changes on line "
                        f"{sel.lines[moves]}: the model would learn from no change; expected a "
                        f"target that changes in the training rows — give more rows, a smaller "
                        f"--val-fraction/--test-fraction, or another --target")


def growing_features(sel: "Selection", split: int) -> list[str]:
    """Warnings for features that only ever grow and leave their training range later.

    A counter (a total distance, a meter reading) is new territory after the training rows:
    a model has never seen such values and cannot use them. Warned about, not refused —
    the user decides, with ``--features``.
    """
    lines = []
    for j, name in enumerate(sel.features):
        column = sel.x[:, j]
        if len(column) <= split or not (np.diff(column) >= 0).all() or column[0] == column[-1]:
            continue
        later = column[split:]
        outside = float(np.mean(later > column[:split].max()))
        if outside > 0.5:
            others = [f for f in sel.features if f != name] or ["COLUMNS"]
            lines.append(f"warning: feature {name!r} only ever grows: {outside:.0%} of its values "
                         f"after the training rows lie above anything seen in training, so the "
                         f"model cannot use them; leave it out with --features "
                         f"{','.join(others)}")
    return lines


def _lines(n: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in n[:SHOW])
    return shown + (f" and {len(n) - SHOW} more" if len(n) > SHOW else "")


def _text(path: Path, data: bytes) -> str:
    """The file's UTF-8 text; one line naming the line and byte where it is not UTF-8.

    Decoded whole, so that the byte offset is the file's (a streamed decoder counts from its
    chunk). Excel and many loggers write Latin-1 ("°C" as byte 0xb0): say so, and how to
    convert it, rather than call the file binary.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        at = exc.start
        line = data.count(b"\n", 0, at) + 1
        byte = data[at]
        if b"\x00" in data[:4096]:
            raise DataError(f"{path}: not a text CSV (line {line}, byte {at} is 0x{byte:02x}; "
                            f"NUL bytes: binary data?); give the CSV the logger exported"
                            ) from None
        raise DataError(f"{path}, line {line}: not UTF-8 text (byte {at} is 0x{byte:02x}, "
                        f"{bytes([byte]).decode('latin-1')!r} in Latin-1, as Excel and many "
                        f"loggers write); save it as UTF-8, e.g. iconv -f latin1 -t utf-8 "
                        f"{path} > {path.with_name(path.stem + '-utf8.csv')}") from None


def _check_separator(path: Path, header: list[str]) -> None:
    """Refuse a header that is one column holding ';' or tabs: another separator than ','."""
    if len(header) != 1:
        return
    for sep, name in ((";", "';'"), ("\t", "tab")):
        if sep in header[0]:
            raise DataError(f"{path}: expected comma-separated values, found a header of one "
                            f"column {header[0]!r} that looks {name}-separated; save the CSV "
                            f"with ',' between values (and '.' as the decimal point)")


def read_csv(path: str | Path) -> Table:
    """Read ``path`` into a :class:`Table`; missing values stay NaN for :func:`select`."""
    path = Path(path)
    try:
        rows = list(csv.reader(io.StringIO(_text(path, path.read_bytes()), newline="")))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and at least one row of data, "
                        f"found {len(rows)} line(s)")
    header = [h.strip() for h in rows[0]]
    _check_separator(path, header)
    if len(set(header)) != len(header):
        raise DataError(f"{path}: the header names a column twice: {header}")
    body = rows[1:]
    lines = np.arange(2, len(body) + 2)
    for line, row in zip(lines, body):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: expected {len(header)} values "
                            f"({', '.join(header)}), found {len(row)}")

    columns, ignored = {}, []
    time, time_column = None, None
    for j, name in enumerate(header):
        texts = [row[j] for row in body]
        numbers = np.full(len(texts), np.nan)
        junk = []
        for i, text in enumerate(texts):
            if _is_missing(text):
                continue
            if not text.isascii() or "_" in text:     # float() reads 1_000 and ١٠٠ too;
                junk.append(i)                        # lstm-run refuses them (lines.number)
                continue
            try:
                numbers[i] = float(text)
            except ValueError:
                junk.append(i)
        if time_column is None and (TIME_NAMES.match(name) or _looks_like_time(texts)):
            if junk or not np.isfinite(numbers).any():
                time, time_column = np.asarray(texts), name
                continue
        leading = all(n == "" for n in columns)    # bar a nameless row index (pandas)
        if time_column is None and not junk and _numeric_time(name, numbers, leading):
            time, time_column = np.asarray(texts), name
            continue
        # A column where most values are numbers is numeric: the rest is junk to report.
        if len(junk) > len(texts) // 2:
            ignored.append(name)
            continue
        if junk:
            first = junk[0]
            raise DataError(
                f"{path}, line {lines[first]}, column {name!r}: expected a number, found "
                f"{texts[first]!r} (non-numeric values on line(s) {_lines(lines[junk])}); "
                f"fix or blank them (blanks are missing values, see --missing)")
        if not np.isfinite(numbers[~np.isnan(numbers)]).all():
            bad = lines[np.isinf(numbers)]
            raise DataError(f"{path}, column {name!r}: infinite values on line(s) {_lines(bad)}")
        columns[name] = numbers
    return Table(columns, lines, time, time_column, tuple(ignored))


def fill_missing(values: np.ndarray, policy: str, what: str,
                 lines: np.ndarray, names=None) -> tuple[np.ndarray, np.ndarray]:
    """Apply a missing-value policy to ``values`` (rows, columns).

    ``names`` (one per column) name a column that has no value at all; without them it is
    named by its index. Returns the filled values and the boolean mask of the rows kept.
    """
    if policy not in MISSING_POLICIES:
        raise DataError(f"--missing must be one of {', '.join(MISSING_POLICIES)}, got {policy!r}")
    gaps = np.isnan(values)
    keep = np.ones(len(values), dtype=bool)
    if not gaps.any():
        return values, keep
    rows = gaps.any(axis=1)
    if policy == "error":
        raise DataError(
            f"{what}: missing values on line(s) {_lines(lines[rows])}; choose what to do with "
            f"--missing drop|ffill|interpolate, or fill them in the CSV")
    empty = [j for j in range(values.shape[1]) if gaps[:, j].all()]
    if empty:
        shown = ", ".join(repr(names[j]) if names is not None else f"#{j}" for j in empty)
        raise DataError(f"{what}: column(s) {shown} have no values at all (every row is "
                        f"missing), so --missing {policy} has nothing to "
                        f"{'keep' if policy == 'drop' else 'fill from'}; leave them out with "
                        f"--features/--target, or fill them in the CSV")
    if policy == "drop":
        keep = ~rows
        return values[keep], keep
    filled = values.copy()
    index = np.arange(len(values))
    for j in range(values.shape[1]):
        good = ~gaps[:, j]                 # never all False: empty columns refused above
        if policy == "interpolate":
            filled[:, j] = np.interp(index, index[good], values[good, j])
        else:  # ffill: the index of the last good row at or before each row
            last = np.maximum.accumulate(np.where(good, index, -1))
            last[last < 0] = index[good][0]   # leading gap: the first value seen
            filled[:, j] = values[last, j]
    return filled, keep


@dataclass
class Selection:
    """Features and targets picked from a table, filled, as float arrays over the same rows."""

    x: np.ndarray            # (rows, features)
    y: np.ndarray            # (rows, targets)
    features: tuple[str, ...]
    targets: tuple[str, ...]
    lines: np.ndarray        # (rows,) CSV line number of each row kept
    time: np.ndarray | None  # (rows,) time text of each row kept


def _split_names(names: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    return [n for n in names if n]


def select(table: Table, target: str | list[str], features: str | list[str] | None = None,
           missing: str = "error", source: str = "data", exported: bool = True) -> Selection:
    """Pick target and feature columns by name; all numeric columns are features by default.

    ``exported``: the names are an exported model's (lstm-export --calibrate), and a missing
    column's message says where those names come from; lstm-train passes False.
    """
    targets = _split_names(target) or []
    chosen = _split_names(features) or list(table.columns)
    if not targets:
        raise DataError("name the column to predict with --target (e.g. --target "
                        f"{next(iter(table.columns), 'COLUMN')!r})")
    for option, names in (("--target", targets), ("--features", chosen)):
        twice = [n for n in dict.fromkeys(names) if names.count(n) > 1]
        if twice:
            raise DataError(f"{option} names {', '.join(map(repr, twice))} twice; expected "
                            f"each column once: give {option} {','.join(dict.fromkeys(names))}")
    known = list(table.columns)
    for name in targets + chosen:
        if name not in table.columns:
            hint = ""
            if name in table.ignored:
                hint = " (it holds text, not numbers)"
            elif name == table.time_column:
                hint = " (it is the time column, which is never a feature)"
            found = (f"the numeric columns are {', '.join(map(repr, known))}; name one of "
                     f"those, or give" if known else "the CSV has no numeric column; give")
            why = (" (a CSV read for an exported model, as by lstm-export --calibrate, needs "
                   "a column named as each of the model's features and targets, the names "
                   "given to --features/--targets)" if exported else "")
            raise DataError(f"{source}: no numeric column {name!r}{hint}; {found} a CSV with "
                            f"a numeric column named {name!r}{why}")
    names = list(dict.fromkeys(chosen + targets))  # each column once, features first
    values = np.stack([table.columns[n] for n in names], axis=1)   # (rows, columns)
    values, keep = fill_missing(values, missing, source, table.lines, names)
    index = {n: i for i, n in enumerate(names)}
    return Selection(
        x=values[:, [index[n] for n in chosen]],
        y=values[:, [index[n] for n in targets]],
        features=tuple(chosen), targets=tuple(targets),
        lines=table.lines[keep],
        time=None if table.time is None else table.time[keep],
    )


def check_time(sel: Selection, column: str | None, source: str,
               why: str = "the last rows are the test tail") -> tuple[list[str], str]:
    """Refuse a time column that goes back; notes on repeated times and on holes.

    The split is by row order: the test tail is the last rows, so rows newest first would
    train on the future and test on the past. Returns stderr notes (a time repeated) and
    a line for the report on holes many times the usual spacing (windows across a hole
    read its two sides as consecutive readings). Nothing is checked where the time column
    is missing or not understood.
    """
    if column is None or sel.time is None or len(sel.time) < 2:
        return [], ""
    parsed = [parse_time(t) for t in sel.time]
    if any(p is None for p in parsed):
        return [], ""
    try:
        steps = np.array([(b - a).total_seconds() for a, b in zip(parsed, parsed[1:])])
    except TypeError:                           # mixed naive and aware times
        return [], ""
    back = np.flatnonzero(steps < 0)
    if back.size:
        i = back[0]
        order = ("the rows run newest first: reverse them, the header staying first"
                 if back.size == len(steps) else "sort the rows by time, oldest first")
        raise DataError(f"{source}, line {sel.lines[i + 1]}: the time column {column!r} goes "
                        f"back ({str(sel.time[i + 1])!r} after {str(sel.time[i])!r} on line "
                        f"{sel.lines[i]}); expected the rows oldest first, as {why} — {order}")
    notes = []
    same = np.flatnonzero(steps == 0)
    if same.size:
        i = same[0]
        notes.append(f"note: {source}, line {sel.lines[i + 1]}: the time {str(sel.time[i + 1])!r} "
                     f"repeats line {sel.lines[i]}'s ({same.size} repeated time(s) in all); "
                     f"each row is trained as the next reading, so drop the repeats if a "
                     f"reading was logged twice")
    usual = np.median(steps[steps > 0]) if (steps > 0).any() else 0.0
    holes = np.flatnonzero(steps > GAP * usual) if usual > 0 else np.array([], int)
    if not holes.size:
        return notes, ""
    i = holes[np.argmax(steps[holes])]
    spell = dt.timedelta(seconds=float(steps[i]))
    return notes, (f"the time column {column!r} has {holes.size} hole(s) over {GAP} x "
                   f"its usual spacing of {dt.timedelta(seconds=float(usual))}, the longest "
                   f"{spell} between lines {sel.lines[i]} and {sel.lines[i + 1]}; a window "
                   f"across a hole reads its two sides as consecutive readings")
