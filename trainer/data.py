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
import shlex
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
STRICT_TIME_NAMES = re.compile(r"^(time|date|datetime|timestamp|ts|zeit|datum)$", re.I)
DATE_LIKE = re.compile(r"^\s*\d{1,4}[./-]\d{1,2}[./-]\d{1,4}\b")   # 20.10.2022, 03/20/2022
DECIMAL_COMMA = re.compile(r"[-+]?\d+,\d+")        # 100,59: a number with a decimal comma
DATE_FORMATS = ("%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y", "%m/%d/%Y %I:%M %p",
                "%m/%d/%Y %I:%M:%S %p", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y",
                "%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y", "%d-%m-%Y %H:%M",
                "%d-%m-%Y", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d",
                "%Y.%m.%d %H:%M", "%Y.%m.%d")        # the recipe's guesses, first fit wins
MANY_REPEATS = 5   # more repeated times than this never train silently


@dataclass
class Table:
    """The numeric columns of a CSV, as floats with NaN where a value is missing."""

    columns: dict[str, np.ndarray]   # name -> (rows,) float64, NaN where missing
    lines: np.ndarray                # (rows,) the CSV line number of each row (header is 1)
    time: np.ndarray | None          # (rows,) the time column's text, when there is one
    time_column: str | None
    ignored: tuple[str, ...]         # non-numeric columns left out of the features
    header: tuple[str, ...] = ()     # line 1's cells, in the file's order

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


def _check_separator(path: Path, header: list[str], first: list[str]) -> None:
    """Refuse a header that is one column holding ';' or tabs: another separator than ','.

    ``first`` is the first data row: decimal commas there (``100,59``) get the ``tr`` recipe
    that turns both at once (docs/lstm-run.md), as ``tr ';' ','`` alone splits each number.
    """
    if len(header) != 1:
        return
    for sep, name, tr in ((";", "';'", ";"), ("\t", "tab", "\\t")):
        if sep in header[0]:
            row = ",".join(first)
            out = path.with_name(path.stem + "-comma.csv")
            fix = (f"convert it with tr ',{tr}' '.,' < {path} > {out} (decimal commas to "
                   f"points, then {name} to ',')" if DECIMAL_COMMA.search(row) else
                   f"convert it with tr '{tr}' ',' < {path} > {out}")
            raise DataError(f"{path}: expected comma-separated values, found a header of one "
                            f"column {header[0]!r} that looks {name}-separated; {fix}, or save "
                            f"the CSV with ',' between values and '.' as the decimal point")


def _time_recipe(path: Path, name: str, texts: list[str]) -> str:
    """A one-line pandas command that rewrites column ``name`` as ISO 8601, with the
    strptime format the values fit where one of the common ones does."""
    sample = [t.strip() for t in texts if not _is_missing(t)][:200]
    fmt = next((f for f in DATE_FORMATS if all(_strptime(t, f) for t in sample)), None)
    how = f", format={fmt!r}" if fmt else ""          # none fits: pandas guesses
    out = path.with_name(path.stem + "-iso.csv")
    return (f"python -c \"import pandas as p; d=p.read_csv('{path}'); d['{name}']="
            f"p.to_datetime(d['{name}']{how}).dt.strftime('%Y-%m-%dT%H:%M:%S'); "
            f"d.to_csv('{out}', index=False)\" ({'' if fmt else 'pandas guesses the format: check a few rows; '}"
            f"add the UTC offset, e.g. +01:00, if these are a local clock's times)")


def _strptime(text: str, fmt: str) -> bool:
    try:
        dt.datetime.strptime(text, fmt)
    except ValueError:
        return False
    return True


def _check_time_text(path: Path, name: str, texts: list[str], lines: np.ndarray) -> None:
    """Refuse a time column whose values are not times lstm-run and the trainer can read.

    A column not understood as time would turn off every time check (order, repeats,
    holes, the season): a newest-first file would train on the future. lstm-run reads ISO
    8601 or epoch seconds (runtime/order.py reading_time), so that is what is asked for.
    A column named like a time (or holding date-like text) counts; ``day``/``month``
    columns of words (``Mon``, ``Jan``) stay text.
    """
    strict = STRICT_TIME_NAMES.match(name)
    for i, text in enumerate(texts):
        if _is_missing(text) or parse_time(text) is not None:
            continue
        if not (strict or DATE_LIKE.search(text)):
            return
        raise DataError(f"{path}, line {lines[i]}: time column {name!r}: {text.strip()!r} is "
                        f"not an ISO 8601 time; lstm-run reads ISO 8601 (e.g. "
                        f"2022-03-20T11:00:00+01:00) or epoch seconds, so convert it: "
                        f"{_time_recipe(path, name, texts)}")


def _check_decimal_comma(path: Path, name: str, texts: list[str], lines: np.ndarray) -> None:
    """Refuse a column of quoted numbers with decimal commas (``"100,59"``), naming them."""
    given = [(i, t.strip()) for i, t in enumerate(texts) if not _is_missing(t)]
    commas = [(i, t) for i, t in given if DECIMAL_COMMA.fullmatch(t)]
    if not given or len(commas) <= len(given) // 2:
        return
    i, text = commas[0]
    out = path.with_name(path.stem + "-dot.csv")
    raise DataError(f"{path}, line {lines[i]}, column {name!r}: expected a number with a "
                    f"decimal point, found {text!r} with a decimal comma ({len(commas)} such "
                    f"values); convert the file, e.g. python -c \"import pandas as p; "
                    f"p.read_csv('{path}', decimal=',').to_csv('{out}', index=False)\"")


def _check_long_format(path: Path, header: list[str], texts: dict[str, list[str]],
                       time: np.ndarray | None, time_column: str | None,
                       numeric: list[str]) -> None:
    """Refuse a long-format file: rows of several series told apart by a text column.

    ``time,sensor,value`` with the sensors interleaved, each at every time, read as one
    series makes each reading's neighbour another sensor's: the model, its baseline and its
    figures would all be wrong. Found as a text column whose value changes on most rows
    where the time repeats the previous row's.
    """
    if time is None:
        return
    t = np.array([x.strip() for x in time])
    same = t[1:] == t[:-1]                         # (rows - 1,) the time repeats
    if same.sum() <= MANY_REPEATS:
        return
    for name, column in texts.items():
        c = np.array([x.strip() for x in column])
        kinds = list(dict.fromkeys(c.tolist()))
        if not 1 < len(kinds) <= len(c) // 2:
            continue
        if np.mean(c[1:][same] != c[:-1][same]) < 0.9:
            continue
        j = header.index(name) + 1
        first = kinds[0]
        shown = ", ".join(map(repr, kinds[:SHOW])) + (f" and {len(kinds) - SHOW} more"
                                                     if len(kinds) > SHOW else "")
        out = path.with_name(path.stem + "-wide.csv")
        values = f", values='{numeric[0]}'" if len(numeric) == 1 else ""
        raise DataError(
            f"{path}: expected one series, found {len(kinds)} interleaved: the text column "
            f"{name!r} ({shown}) changes where the time {time_column!r} repeats "
            f"({int(same.sum())} repeated times), so the rows are several sensors' readings "
            f"in one file (long format); train one model per sensor, e.g. awk -F, "
            f"'NR==1 || ${j}==\"{first}\"' {path} > {first}.csv (lstm-run --stream-column "
            f"{name} then streams every sensor through it), or make one column per sensor "
            f"with python -c \"import pandas as p; p.read_csv('{path}').pivot(index="
            f"'{time_column}', columns='{name}'{values}).to_csv('{out}')\" and choose --target and "
            f"--features among them")


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
    _check_separator(path, header, rows[1])
    if len(set(header)) != len(header):
        raise DataError(f"{path}: the header names a column twice: {header}")
    body = rows[1:]
    lines = np.arange(2, len(body) + 2)
    for line, row in zip(lines, body):
        if len(row) != len(header):
            raise DataError(f"{path}, line {line}: expected {len(header)} values "
                            f"({', '.join(header)}), found {len(row)}")

    columns, ignored, texts_of = {}, [], {}
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
                _check_time_text(path, name, texts, lines)
                time, time_column = np.asarray(texts), name
                continue
        leading = all(n == "" for n in columns)    # bar a nameless row index (pandas)
        if time_column is None and not junk and _numeric_time(name, numbers, leading):
            time, time_column = np.asarray(texts), name
            continue
        if junk:
            _check_decimal_comma(path, name, [texts[i] for i in junk], lines[junk])
        # A column where most values are numbers is numeric: the rest is junk to report.
        if len(junk) > len(texts) // 2:
            if time_column is None and DATE_LIKE.search(texts[junk[0]]):
                _check_time_text(path, name, texts, lines)
            ignored.append(name)
            texts_of[name] = texts
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
    _check_long_format(path, header, texts_of, time, time_column, list(columns))
    return Table(columns, lines, time, time_column, tuple(ignored), tuple(header))


def _shares(gaps: np.ndarray, names) -> list[tuple[str, float]]:
    """(column name, share of rows missing) for each column with a gap."""
    return [(repr(names[j]) if names is not None else f"#{j}", float(gaps[:, j].mean()))
            for j in range(gaps.shape[1]) if gaps[:, j].any()]


def fill_missing(values: np.ndarray, policy: str, what: str,
                 lines: np.ndarray, names=None, notes: list[str] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Apply a missing-value policy to ``values`` (rows, columns).

    ``names`` (one per column) name a column that has no value at all; without them it is
    named by its index. ``notes``, where given, gets a line on what ``drop``/``ffill``/
    ``interpolate`` did (rows dropped, the share filled per column). Returns the filled
    values and the boolean mask of the rows kept.
    """
    if policy not in MISSING_POLICIES:
        raise DataError(f"--missing must be one of {', '.join(MISSING_POLICIES)}, got {policy!r}")
    gaps = np.isnan(values)
    keep = np.ones(len(values), dtype=bool)
    if not gaps.any():
        return values, keep
    rows = gaps.any(axis=1)
    shares = _shares(gaps, names)
    per_column = ", ".join(f"{n} {share:.0%}" for n, share in shares)
    sparse = [names[j] for j in range(gaps.shape[1])
              if names is not None and gaps[:, j].mean() > 0.5]
    leave = ""
    if sparse:
        rest = ",".join(n for n in names if n not in sparse) or "COLUMNS"
        leave = (f"; {', '.join(map(repr, sparse))} is mostly empty: leave it out with "
                 f"--features {shlex.quote(rest)} (and another --target if it is the target)")
    empty = [j for j in range(values.shape[1]) if gaps[:, j].all()]
    if empty and policy != "error":
        shown = ", ".join(repr(names[j]) if names is not None else f"#{j}" for j in empty)
        raise DataError(f"{what}: column(s) {shown} have no values at all (every row is "
                        f"missing), so --missing {policy} has nothing to "
                        f"{'keep' if policy == 'drop' else 'fill from'}; leave them out with "
                        f"--features/--target, or fill them in the CSV")
    if policy == "error" or (policy == "drop" and rows.mean() > 0.5):
        if policy == "drop":
            raise DataError(f"{what}: --missing drop would leave out {int(rows.sum())} of "
                            f"{len(rows)} rows ({rows.mean():.0%}; missing: {per_column}), "
                            f"joining readings far apart{leave}; or use --missing ffill")
        raise DataError(
            f"{what}: missing values on line(s) {_lines(lines[rows])}; missing by column: "
            f"{per_column}{leave}; or choose what to do with --missing drop|ffill|interpolate, or fill "
            f"them in the CSV")
    notes = [] if notes is None else notes
    if policy == "drop":
        keep = ~rows
        notes.append(f"note: {what}: --missing drop left out {int(rows.sum())} of {len(rows)} "
                     f"rows ({rows.mean():.0%}; missing: {per_column}); the rows either side "
                     f"of a dropped one are read as consecutive readings")
        return values[keep], keep
    live = (" lstm-run cannot interpolate live (a later reading has not come yet): it holds "
            "the last value (--missing hold), so its answers differ from training's on "
            "those rows; --missing ffill trains as it streams" if policy == "interpolate"
            else " lstm-run --missing hold repeats the last value live as well")
    notes.append(f"note: {what}: --missing {policy} made up {int(gaps.sum())} value(s) "
                 f"(filled: {per_column});{live}")
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
    notes: tuple[str, ...] = ()   # stderr notes: replays dropped, missing values handled


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
        if name not in table.columns and _headless(table):
            named = list(dict.fromkeys((_split_names(features) or []) + targets))
            raise DataError(_missing_header(table, named, source))
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
    notes: list[str] = []
    fresh = _replays(table, values, source, notes)                  # (rows,) kept
    lines = table.lines[fresh]
    time = None if table.time is None else table.time[fresh]
    values, keep = fill_missing(values[fresh], missing, source, lines, names, notes)
    index = {n: i for i, n in enumerate(names)}
    return Selection(
        x=values[:, [index[n] for n in chosen]],
        y=values[:, [index[n] for n in targets]],
        features=tuple(chosen), targets=tuple(targets),
        lines=lines[keep],
        time=None if time is None else time[keep],
        notes=tuple(notes),
    )


def _headless(table: Table) -> bool:
    """Whether line 1 holds readings (numbers, times) where the header's names should be."""
    def reading(cell: str) -> bool:
        if parse_time(cell) is not None:
            return True
        try:
            float(cell)
        except ValueError:
            return False
        return cell.isascii() and "_" not in cell
    return bool(table.header) and all(reading(cell) for cell in table.header)


def _missing_header(table: Table, named: list[str], source: str) -> str:
    """The message for a CSV whose line 1 is a reading: the header row to add, and how.

    The suggested header names the time column ``time`` and the others, in the file's
    order, by the columns the caller asked for (``column2``... once they run out).
    """
    left = iter(named)
    header = ["time" if cell == table.time_column else next(left, f"column{j + 1}")
              for j, cell in enumerate(table.header)]
    text = io.StringIO()
    csv.writer(text, lineterminator="").writerow(header)
    out = Path(source).with_name(Path(source).stem + "-header.csv")
    shown = ",".join(table.header[:SHOW]) + (",..." if len(table.header) > SHOW else "")
    asked = ", ".join(map(repr, named))
    return (f"{source}: line 1 holds readings ({shown}), not a header row naming the "
            f"columns; expected a header with a column named {asked}; add one, naming the "
            f"columns in the file's order, e.g. (printf '%s\\n' "
            f"{shlex.quote(text.getvalue())}; cat {shlex.quote(source)}) > "
            f"{shlex.quote(str(out))}")


def _replays(table: Table, values: np.ndarray, source: str, notes: list[str]) -> np.ndarray:
    """The rows to keep where a row repeats the previous row's time, as lstm-run reads them.

    lstm-run (docs/lstm-run.md, "Resuming exactly") does not feed a line at the time of the
    last reading with the same values (a replay) and refuses one with other values (an
    error record). So a replay is left out here too (with a note), and a repeated time with
    other values is refused: training on both rows would train on a series the stream never
    sees. ``values`` are the chosen columns (rows, columns); NaN equals NaN.
    """
    keep = np.ones(len(values), dtype=bool)
    if table.time is None or len(values) < 2:
        return keep
    when = [parse_time(t) for t in table.time]
    if any(w is None for w in when):
        return keep
    try:
        same = np.array([a == b for a, b in zip(when, when[1:])])   # (rows - 1,)
    except TypeError:                                  # mixed naive and aware times
        return keep
    if not same.any():
        return keep
    a, b = values[:-1], values[1:]
    equal = ((a == b) | (np.isnan(a) & np.isnan(b))).all(axis=1)     # (rows - 1,)
    clash = np.flatnonzero(same & ~equal) + 1
    if clash.size:
        i = clash[0]
        name = table.time_column
        raise DataError(
            f"{source}, line {table.lines[i]}: the time {str(table.time[i]).strip()!r} repeats "
            f"line {table.lines[i - 1]}'s with other values ({clash.size} such line(s): "
            f"{_lines(table.lines[clash])}); expected one reading per time, as lstm-run "
            f"refuses a second reading at a time already fed — keep the right one of each, "
            f"e.g. the last: python -c \"import pandas as p; d=p.read_csv('{source}'); "
            f"d.drop_duplicates('{name}', keep='last').to_csv('{source}.once.csv', "
            f"index=False)\"")
    replay = np.flatnonzero(same) + 1
    keep[replay] = False
    i = replay[0]
    notes.append(f"note: {source}, line {table.lines[i]}: the time "
                 f"{str(table.time[i]).strip()!r} repeats line {table.lines[i - 1]}'s with the "
                 f"same values ({replay.size} repeated row(s) in all, on line(s) "
                 f"{_lines(table.lines[replay])}): left out, as lstm-run answers such a replay "
                 f"without feeding it")
    return keep


def check_time(sel: Selection, column: str | None, source: str,
               why: str = "the last rows are the test tail") -> tuple[list[str], str]:
    """Refuse a time column that goes back; notes on repeated times and on holes.

    The split is by row order: the test tail is the last rows, so rows newest first would
    train on the future and test on the past. Returns stderr notes (a time repeated) and
    a line for the report on holes many times the usual spacing (windows across a hole
    read its two sides as consecutive readings). Nothing is checked where the time column
    is missing or not understood.
    """
    given = list(sel.notes)
    if column is None or sel.time is None or len(sel.time) < 2:
        return given, ""
    parsed = [parse_time(t) for t in sel.time]
    if any(p is None for p in parsed):
        return given, ""
    try:
        steps = np.array([(b - a).total_seconds() for a, b in zip(parsed, parsed[1:])])
    except TypeError:                           # mixed naive and aware times
        return given, ""
    back = np.flatnonzero(steps < 0)
    if back.size:
        i = back[0]
        order = ("the rows run newest first: reverse them, the header staying first"
                 if back.size == len(steps) else "sort the rows by time, oldest first")
        raise DataError(f"{source}, line {sel.lines[i + 1]}: the time column {column!r} goes "
                        f"back ({str(sel.time[i + 1])!r} after {str(sel.time[i])!r} on line "
                        f"{sel.lines[i]}); expected the rows oldest first, as {why} — {order}")
    notes = given
    same = np.flatnonzero(steps == 0)       # select leaves none; a Selection made otherwise
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
