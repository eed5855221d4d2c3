"""Text lines in, records out, and back: the three line formats ``lstm-run`` reads and writes.

One input line is one reading (one time step's feature values). The first line tells the format (or ``--format`` does):

- **CSV with a header**: columns are matched to the model's feature names; every other
  column (a timestamp, a sensor id) is passed through untouched;
- **headerless CSV**: exactly the model's features, in the model's order; or, where the
  first field is an ISO date/time and the rest are the features (a logger's line after
  ``tail`` dropped the header), a leading time column passed through; or any columns named by
  ``--columns`` (features found by name, the rest passed through, as with a header);
- **JSON lines**: one object per line, ``{"sensor": "a", "temperature": 21.3, ...}``.

With ``--reset-column NAME`` a line whose NAME field is true (``true``, ``1``, ``yes``) resets
its sensor's stream before it is fed, like a new sequence in Keras after ``reset_states()``.

Each output line answers one input line, in the same format, with the input passed through
and these added (``_`` is appended to a name until it collides with no CSV column, or with
no feature or stream key of a JSON object):

- ``step``: how many readings this line's stream has taken, this one included (a reading
  skipped by ``--missing skip`` is not counted);
- ``warmup``: ``true`` while the stream has seen fewer readings than the model's window
  (the predictions are then empty / ``null``);
- ``pred_<target>`` for each target of the model (``pred_0``, ... where it names none);
  for a forecast block (``lstm_edge.block``) ``pred_<target>+<s>``, *s* readings ahead;
  for a reconstruction model one ``score`` column instead (``Model.score``);
- with ``--interval``, the alert columns (:mod:`runtime.alerts_run`) after the predictions;
- ``error``: why the line could not be used (CSV: always present, empty when fine;
  JSON: present only on an error record, which carries no step or predictions);
- ``input`` (CSV, always the last column): empty, except on an error record whose fields do
  not fit the columns (too many, too few, an unclosed quote, binary data): then it holds the
  whole input line, so nothing of it is lost. The fields that do fit stay in their columns.
  A JSON error record keeps the object, or, where the line is not a JSON object, its text
  under ``"input"``. (A line over ``MAX_LINE`` bytes is never held whole, so not kept.)

Fields are separated by commas and numbers written as CSV writes them: ASCII digits with an
optional sign, decimal point and exponent (``-1.5e3``; ``inf``/``nan`` in any case), spaces
around allowed. A missing value (any of :data:`MISSING_TOKENS` in any case: empty or blank,
``nan``, ``NA``, ``N/A``, ``null``, ``none``, ``?``, ``-``; or a JSON key left out or null)
becomes NaN and is dealt with by the model's ``missing`` policy; text that is not a number
(``1_000``, ``1,5``, fullwidth ``１００``) is an error of that line alone. A line that is
``;``- or tab-separated, or a file whose lines end in CR alone, is named as such, with the
conversion that reads it; the CR endings however long the file (it is one line, over
``MAX_LINE`` bytes: its start, a :class:`LongLine`, is enough to tell).

>>> fmt = CsvFormat(["time", "temperature"], features=("temperature",), targets=("temperature",))
>>> fmt.header()
'time,temperature,step,warmup,pred_temperature,error,input'
>>> rec = fmt.parse(2, b"09:00,21.5")
>>> rec.values, rec.key
(array([21.5]), '')
>>> fmt.format(rec, 1, False, np.array([21.75], dtype=np.float32))
'09:00,21.5,1,false,21.75,,'
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from .errors import InputError, counted

MAX_LINE = 1 << 20          # bytes: a longer line is reported, not parsed (1 MiB)
FORMATS = ("auto", "csv", "headerless", "jsonl")
# What a missing value may be written as (any case, spaces around): the trainer's list
# (trainer/data.py), so that a gap lstm-train read as missing streams as one.
MISSING_TOKENS = {"", "na", "nan", "n/a", "null", "none", "?", "-"}
RESET_TRUE = {"true", "1", "yes", "y", "t", "start"}      # --reset-column: reset, then feed
# (any case; also 1.0 / 0.0, in CSV as in JSON)
RESET_FALSE = {"false", "0", "no", "n", "f", ""}          # --reset-column: carry on
TIME_COLUMN = "time"     # the name given to a recognised leading time column
TIME_NAMES = ("time", "timestamp", "datetime", "date", "date_time")   # time columns' names
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass
class Record:
    """One input line, parsed: where it goes, what it holds, or why it cannot be used."""

    line: int                        # 1-based line number in the input
    key: str = ""                    # the stream it belongs to ("" without --stream-column)
    values: np.ndarray | None = None  # (features,) float64, NaN where missing; None on error
    fields: object = None            # what is passed through: list[str] (CSV) or dict (JSON)
    error: str | None = None         # set when the line is refused
    reset: bool = False              # --reset-column: reset the stream before this reading
    raw: str | None = None           # the whole line, kept on an error record that needs it
    at: float | int | None = None    # its position (time or sequence number): the order check

    @property
    def ok(self) -> bool:
        return self.error is None


class LongLine(bytes):
    """The start of a line over ``MAX_LINE`` bytes that holds a carriage return, cut before
    its last CR: what the reader (:class:`runtime.io.LineReader`) gives in place of such a
    line, so that a file whose lines end in CR alone, one line to a reader that cuts at LF,
    is named with its conversion however long it is. Never parsed as a reading: it is only
    ever a refusal, with the words of :func:`too_long`."""


def too_long(raw: LongLine, features: Sequence[str], line: int | None = None) -> str:
    """Why a line over ``MAX_LINE`` bytes is refused: lines that end in CR alone where its
    start shows them (with the conversion), else its length; ``line`` 1 (the first line,
    which tells the format) words it as :func:`detect`'s refusal.

    >>> too_long(LongLine(b"flow\\r100.5\\r100.7"), ["flow"], 1)[:59]
    "line 1 holds carriage returns (CR) inside: 'flow', then 2 m"
    >>> too_long(LongLine(b"note\\r100.5"), ["flow"])
    'line longer than 1048576 bytes; split the readings one per line'
    """
    try:
        layout = foreign_layout(decode(raw), features, cut=True)
    except UnicodeDecodeError:
        layout = None
    if line is not None:
        return f"line {line} {layout}" if layout else \
            (f"line {line} is longer than {MAX_LINE} bytes; cannot tell the input format from "
             f"it (expected a CSV header, a first reading or a JSON object)")
    return f"line longer than {MAX_LINE} bytes; " + \
        (f"it {layout}" if layout else "split the readings one per line")


class BadLine(InputError):
    """Why one line cannot be used, with what of it can still be passed through."""

    def __init__(self, reason: str, fields=None):
        super().__init__(reason)
        self.fields = fields     # list[str] (CSV) or dict (JSON), or None


# ---- small helpers ---------------------------------------------------------------------

def decode(raw: bytes) -> str:
    """The text of one line without its line ending; UnicodeDecodeError for binary junk."""
    if b"\x00" in raw:
        raise UnicodeDecodeError("utf-8", raw, raw.index(b"\x00"), raw.index(b"\x00") + 1,
                                 "NUL byte")
    text = raw.decode("utf-8")
    return text[:-1] if text.endswith("\r") else text


# Files that hold no text lines, by their first bytes: what each is, and the way to lines.
_NOT_LINES = (
    (re.compile(rb"\x1f\x8b"), "gzip-compressed data",
     "decompress it first, e.g. gunzip -c FILE | lstm-run ..."),
    (re.compile(rb"BZh[1-9]1AY&SY"), "bzip2-compressed data",
     "decompress it first, e.g. bunzip2 -c FILE | lstm-run ..."),
    (re.compile(rb"\xfd7zXZ\x00"), "xz-compressed data",
     "decompress it first, e.g. xz -dc FILE | lstm-run ..."),
    (re.compile(rb"\x28\xb5\x2f\xfd"), "zstd-compressed data",
     "decompress it first, e.g. zstd -dc FILE | lstm-run ..."),
    (re.compile(rb"PK\x03\x04"), "a ZIP archive, as an Excel .xlsx workbook is",
     "save the sheet as CSV first (Excel: Save As, CSV UTF-8), or, for a zipped CSV file, "
     "unzip -p FILE | lstm-run ..."),
    (re.compile(rb"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"), "an Excel 97-2003 workbook (.xls)",
     "save the sheet as CSV first (Excel: Save As, CSV UTF-8)"),
)


_TR_TABS = " | tr '\\t' ','"      # tabs to commas, as a shell pipe stage


def not_lines(first: bytes) -> str | None:
    """What an input whose first line is ``first`` is where it is no UTF-8 text lines at all
    (compressed, a workbook, UTF-16 text), with the way to lines; None where it may be.

    >>> print(not_lines("time\\tflow\\r\\n".encode("utf-16"))[-60:])
    iconv -f UTF-16 -t UTF-8 < FILE | tr '\\t' ',' | lstm-run ...
    >>> not_lines(b"flow") is None
    True
    """
    for magic, what, way in _NOT_LINES:
        if magic.match(first):
            return f"is {what} (it starts with the bytes {first[:4].hex(' ')}), not text " \
                   f"lines: {way}"
    # UTF-16: a byte-order mark, or ASCII with every other byte NUL (the newline, 0a 00 or
    # 00 0a, leaves a NUL on one side of the cut: a little-endian line 1 has even length)
    if first.startswith((b"\xff\xfe", b"\xfe\xff")):
        codec = "UTF-16"
    elif len(first) >= 4 and not first[1::2].strip(b"\x00") and b"\x00" not in first[::2]:
        codec = "UTF-16LE"
    elif len(first) >= 4 and not first[::2].strip(b"\x00") and b"\x00" not in first[1::2]:
        codec = "UTF-16BE"
    else:
        return None
    try:
        text = first[:len(first) & ~1].decode(codec)
    except UnicodeDecodeError:
        text = ""
    tabs = "\t" in text and "," not in text       # Excel's "Unicode Text" is tab-separated
    said = "as Excel's \"Unicode Text\" saves" if codec == "UTF-16" else "every other byte NUL"
    return (f"is UTF-16 text ({said}{', tab-separated' if tabs else ''}), and lstm-run reads "
            f"UTF-8 CSV: convert it "
            f"first, e.g. iconv -f {codec} -t UTF-8 < FILE{_TR_TABS if tabs else ''} | lstm-run ...")


def describe_decode_error(exc: UnicodeDecodeError) -> str:
    """Why bytes are not text, with the way out where they look like Latin-1 (``°``, ``µ``:
    what many loggers and spreadsheets write)."""
    byte = exc.object[exc.start]
    if 0xa0 <= byte and bytes([byte]).decode("latin-1").isprintable():
        return (f"not UTF-8 text: byte {exc.start + 1} is 0x{byte:02x}, "
                f"{bytes([byte]).decode('latin-1')!r} in Latin-1; write UTF-8 (e.g. pipe "
                f"the feed through iconv -f latin1 -t utf-8)")
    return f"not UTF-8 text (binary data?): byte {exc.start + 1} is 0x{byte:02x}"


def number(text: str, column: str) -> float:
    """A field as a float: NaN for a missing token, BadLine for anything that is not a CSV
    number.

    ``float()`` also reads ``1_000`` (Python's digit separators) and any Unicode digits
    (Arabic-Indic ``١٠٠``, fullwidth ``１００``), which no CSV reader takes for numbers
    (pandas reads them as text): two cheap checks after it keep to ASCII without ``_``.

    >>> number("-1.5e3", "x"), number(" NA ", "x")
    (-1500.0, nan)
    >>> number("1_000", "x")
    Traceback (most recent call last):
    ...
    runtime.lines.BadLine: column 'x': '1_000' is not a number: digit separators ('_') are not read; write 1000
    """
    try:
        value = float(text)
    except ValueError:
        if text.strip().lower() in MISSING_TOKENS:
            return math.nan
        raise BadLine(f"column {column!r}: {_shown(text)!r} is not a number") from None
    if not text.isascii() or "_" in text:
        raise BadLine(_not_plain(text, column))
    return in_range(value, column)


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:37] + "..."


def _not_plain(text: str, column: str) -> str:
    """Why a field ``float()`` reads is still no CSV number."""
    import unicodedata
    odd = next((c for c in text if not c.isascii()), None)
    if odd is None:
        return (f"column {column!r}: {_shown(text)!r} is not a number: digit separators ('_') "
                f"are not read; write {_shown(text.strip().replace('_', ''))}")
    name = unicodedata.name(odd, "a character")
    return (f"column {column!r}: {_shown(text)!r} is not a number: {odd!r} is {name} "
            f"(U+{ord(odd):04X}); write numbers in ASCII digits 0-9 with a decimal point "
            f"(e.g. 100.5)")


def in_range(value: float, column: str) -> float:
    """``value`` where float32 holds it; BadLine for a finite number float32 cannot.

    Found here, in words, rather than as numpy's "overflow encountered in cast" warning
    when the sample becomes float32 (inf itself is refused by the model's finite check).
    """
    if abs(value) > FLOAT32_MAX and math.isfinite(value):
        raise BadLine(f"column {column!r}: {value:g} is beyond float32's range "
                      f"(±{FLOAT32_MAX:.4g}); the model reads float32 values")
    return value


def format_value(value) -> str:
    """The shortest text that reads back as the same float32; empty for NaN.

    >>> format_value(np.float32(0.1)), format_value(np.float32("nan"))
    ('0.1', '')
    """
    value = np.float32(value)
    return "" if math.isnan(value) else str(value)     # (math: a tenth of np.isnan's time)


def cell(value) -> str:
    """An added column's CSV text: ``true``/``false``, text as it is, a float32, or empty.

    >>> [cell(v) for v in (101.19210052490234, math.nan, True, None, "outside", np.int64(3))]
    ['101.1921', '', 'true', '', 'outside', '3.0']
    """
    # By exact class first: the alert columns are Python floats (the bounds, the score), a
    # bool or None and a str, and a class test is a fraction of isinstance's and of
    # format_value's np.float32 -> math.isnan round (NaN is the one float not equal to
    # itself, before and after float32). The same text as format_value, byte for byte.
    kind = value.__class__
    if kind is float:
        return "" if value != value else str(_float32(value))
    if kind is str:
        return value
    if kind is bool:
        return "true" if value else "false"
    if value is None or isinstance(value, str):
        return value or ""
    return format_value(value)


def json_value(value):
    """A float32 prediction as a JSON number with its shortest digits, ``None`` for NaN."""
    if value.__class__ is float:              # as in cell: an alert column's bound or score
        return None if value != value else float(str(_float32(value)))
    text = format_value(value)
    return float(text) if text else None


_float32 = np.float32


class Score(str):
    """An answer column written under its own name, not as ``pred_<name>``: a
    reconstruction model's ``score`` (docs/contract.md)."""


def added_names(taken: Sequence[str], targets: Sequence[str]) -> tuple[str, str, list[str], str]:
    """Names of the added columns (step, warmup, predictions, error), none of them in ``taken``."""
    used = set(taken)

    def fresh(name: str) -> str:
        while name in used:
            name += "_"
        used.add(name)
        return name

    step, warmup = fresh("step"), fresh("warmup")
    preds = [fresh(str(t) if isinstance(t, Score) else f"pred_{t}" if t else f"pred_{i}")
             for i, t in enumerate(targets)]
    return step, warmup, preds, fresh("error")


def fresh_name(name: str, taken: Sequence[str]) -> str:
    """``name`` with ``_`` appended until no name in ``taken`` is the same."""
    while name in taken:
        name += "_"
    return name


def input_name(taken: Sequence[str]) -> str:
    """The name of the CSV column that keeps a refused line whole: ``input``, made unique."""
    name = "input"
    while name in taken:
        name += "_"
    return name


def reset_flag(value, column: str) -> bool:
    """A --reset-column value as True (reset) or False; BadLine for anything else.

    >>> reset_flag("1", "reset"), reset_flag("", "reset"), reset_flag(True, "reset")
    (True, False, True)
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in RESET_TRUE or text in RESET_FALSE:
        return text in RESET_TRUE
    if text in ("1.0", "0.0"):            # as JSON's 1.0 and 0.0: CSV and JSON lines agree
        return text == "1.0"
    shown = json.dumps(value) if not isinstance(value, str) else repr(value[:40])
    raise BadLine(f"--reset-column {column!r}: {shown} is not a reset flag (expected true/1 "
                  f"to reset the sensor's stream before this reading, false/0/empty to carry on)")


def is_timestamp(text: str) -> bool:
    """Whether a field is an ISO 8601 date or date/time (and not a plain number).

    >>> is_timestamp("2022-03-22T02:00:00+01:00"), is_timestamp("1960-08"), is_timestamp("20")
    (True, True, False)
    """
    text = text.strip()
    if re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text):      # a month: 1960-08
        return True
    if not re.match(r"\d{4}-\d\d-\d\d", text):
        return False
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return False
    return True


# The runtime's errors speak the Python API (``load(..., missing='skip')``); on the command
# line the same advice is an option. Each pair: the API's words, the CLI's.
_CLI_WORDS = [
    (re.compile(r"load with missing='skip' or 'hold'"), "run with --missing skip or "
                                                         "--missing hold"),
    (re.compile(r"missing='(\w+)'"), r"--missing \1"),
    (re.compile(r"\bwindow=(\d+)"), r"--window \1"),
    (re.compile(r"\bdevice='([\w:]+)' or '([\w:]+)'"), r"--device \1 or --device \2"),
    # a Python call a shell user cannot make: where lstm-run's loader finds the libraries
    (re.compile(r", or call onnxruntime\.preload_dlls\(\)"),
     ", their libraries where the loader finds them (ldconfig, or LD_LIBRARY_PATH in the "
     "service's environment)"),
]


def cli_words(message: str) -> str:
    """A runtime error message with its Python-API advice in ``lstm-run``'s option words.

    >>> cli_words("NaN (missing) in a (load with missing='skip' or 'hold' to stream through gaps)")
    'NaN (missing) in a (run with --missing skip or --missing hold to stream through gaps)'
    """
    for pattern, words in _CLI_WORDS:
        message = pattern.sub(words, message)
    return message


def split_csv(text: str) -> list[str]:
    """One CSV line's fields; quotes are honoured (the fast path splits plain lines).

    Raises BadLine for a quote that is opened and never closed (``1,"102.5``), which the
    csv module would otherwise read as if it were closed at the end of the line.
    """
    if '"' not in text:
        return text.split(",")
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as exc:
        raise BadLine(f"broken CSV quoting ({exc}): a field that opens a quote must close "
                      f"it, and a quote inside a quoted field is written twice (\"\")") from None


def join_csv(fields: Sequence[str]) -> str:
    """One CSV line from its fields, quoting only the fields that need it.

    A field holding a comma, a quote, a newline or a carriage return is quoted, so that the
    output is one valid CSV line whatever the input line passed through.
    """
    line = ",".join(fields)
    # Plain fields (the usual case) have exactly len - 1 commas between them and no quotes.
    if line.count(",") == len(fields) - 1 and '"' not in line and "\n" not in line \
            and "\r" not in line:
        return line
    buf = io.StringIO()
    # The writer quotes a field holding a character of its line terminator: "\r\n" makes it
    # quote bare CRs too (with "" it would not), and the terminator is cut off again.
    csv.writer(buf, lineterminator="\r\n").writerow(fields)
    return buf.getvalue()[:-2]


def _match_columns(names: Sequence[str], wanted: Sequence[str]) -> list[int] | None:
    """The column index of each wanted name: exact first, then ignoring case and spaces."""
    exact = {n: i for i, n in enumerate(names)}
    loose = {n.strip().lower(): i for i, n in enumerate(names)}
    found = []
    for w in wanted:
        i = exact.get(w, loose.get(w.strip().lower()))
        if i is None:
            return None
        found.append(i)
    return found


def _refuse_ambiguous(names: Sequence[str], wanted: Sequence[str]) -> None:
    """InputError where a wanted column is named twice in the header (exactly or loosely)."""
    problems = []
    for w in wanted:
        same = [i for i, n in enumerate(names) if n == w]      # an exact match wins
        if not same:
            same = [i for i, n in enumerate(names) if n.strip().lower() == w.strip().lower()]
        if len(same) > 1:
            problems.append(f"{w!r} is columns {', '.join(str(i + 1) for i in same)}")
    if problems:
        raise InputError(f"the CSV header names a column twice: {'; '.join(problems)}; "
                         f"expected each feature (and the --stream-column) once: rename or "
                         f"remove the extra column")


def _need_names(features: Sequence[str], what: str) -> None:
    if not features or not all(features):
        raise InputError(f"the model does not name its features, so {what} cannot be matched "
                         f"to them; give headerless CSV with the {len(features)} features in the "
                         f"model's order, or re-export the model with feature names")


# ---- the three formats -----------------------------------------------------------------

class LineFormat:
    """What every format does: parse one line, format one answer or one error."""

    name = ""
    note = ""        # what detect() guessed about the input, for one line on stderr
    extra: list[str] = []     # columns added after the predictions (lstm-run --interval)

    def __init__(self, features: Sequence[str], targets: Sequence[str],
                 stream_column: str | None = None):
        self.features = tuple(features)
        self.targets = tuple(targets)
        self.stream_column = stream_column

    def header(self) -> str | None:
        """The output's header line, where the format has one."""
        return None

    def header_again(self, raw: bytes) -> str | None:
        """The output's header where ``raw`` is a header line naming this format's columns,
        wherever it comes (a logger that restarted writes its header again; lines that began
        without one, read by ``--columns`` or as header-less, get one later); else None."""
        return None

    def add_columns(self, names: Sequence[str]) -> None:
        """Columns after the predictions, each named fresh as the others are."""
        used = {*getattr(self, "columns", ()), *self.features, self.stream_column}
        self.extra = []
        for name in names:
            while name in used:
                name += "_"
            used.add(name)
            self.extra.append(name)
        blank: list[str] | None = getattr(self, "_blank_tail", None)   # CSV error records
        if blank is not None:
            self._blank_tail = blank + [""] * len(names)

    def parse(self, line: int, raw: bytes) -> Record:
        """A record for one line (without its newline); a bad line gives an error record."""
        if type(raw) is LongLine:       # the start of an over-long line, not to be read
            return Record(line, error=too_long(raw, self.features))
        try:
            text = decode(raw)
        except UnicodeDecodeError as exc:
            return Record(line, error=describe_decode_error(exc),
                          raw=raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00"))
        try:
            return self._parse(line, text)
        except BadLine as exc:
            error, layout = str(exc), self._layout(text)
            if layout and layout not in error:
                error = f"{error}; the line {layout}"
            return Record(line, fields=exc.fields, error=error, raw=text)

    def _parse(self, line: int, text: str) -> Record:
        raise NotImplementedError

    def _layout(self, text: str) -> str | None:
        """Why a refused line may be CSV of another layout (see :func:`foreign_layout`)."""
        return foreign_layout(text, self.features)

    def format(self, rec: Record, step: int, warmup: bool, pred: np.ndarray,
               extra: Sequence = (), mark: str = "") -> str:
        """The answer to ``rec``: its fields, step, warm-up flag, ``pred`` (n_targets,), the
        values of the ``extra`` columns (numbers, bools, text; None or NaN for empty) and
        ``mark`` (``replay``) in the order column, where the format has one."""
        raise NotImplementedError

    def format_error(self, rec: Record) -> str:
        raise NotImplementedError

    def add_order(self) -> None:
        """Add the ``order`` column/key: ``replay`` or ``skipped: ...`` (see runtime.order)."""
        raise NotImplementedError

    def format_skipped(self, rec: Record, why: str) -> str:
        """The answer to a reading not fed because of its position: ``why`` in ``order``."""
        raise NotImplementedError


class CsvFormat(LineFormat):
    """CSV with named columns: features found by name, every other column passed through.

    The names come from the header line, or, for header-less lines (``has_header=False``),
    from ``--columns`` or a recognised leading time column.
    """

    name = "csv"

    def __init__(self, columns: Sequence[str], features: Sequence[str], targets: Sequence[str],
                 stream_column: str | None = None, *, has_header: bool = True,
                 reset_column: str | None = None):
        super().__init__(features, targets, stream_column)
        self.has_header = has_header
        where = "the CSV header" if has_header else "--columns"
        _need_names(self.features, where)
        self.columns = list(columns)
        _refuse_ambiguous(self.columns, [*self.features, *([stream_column] if stream_column
                                                            else [])])
        index = _match_columns(self.columns, self.features)
        if index is None:
            missing = [f for f in self.features if _match_columns(self.columns, [f]) is None]
            raise InputError(f"{where} has no column for the model's feature(s) "
                             f"{', '.join(map(repr, missing))}; it has "
                             f"{', '.join(map(repr, self.columns))}; "
                             + _name_the_features(self.columns, self.features, has_header))
        self.index = index
        self.key_index = self._column(stream_column, "--stream-column", where)
        self.reset_column = reset_column
        self.reset_index = self._column(reset_column, "--reset-column", where)
        self.step, self.warmup, self.preds, self.error = added_names(self.columns, self.targets)
        self.input = input_name([*self.columns, self.step, self.warmup, *self.preds, self.error])
        self._blank_tail = [""] * (2 + len(self.preds))
        self.order: str | None = None          # the order column, once the check is on
        self.time_led = False                  # read as a time, then the features (detect)

    def add_order(self) -> None:
        self.order = fresh_name("order", [*self.columns, self.step, self.warmup, *self.preds,
                                          self.error, self.input])
        self._blank_tail.append("")

    def format_skipped(self, rec, why):
        blank = [""] * (2 + len(self.preds) + len(self.extra))     # step .. the alert columns
        return join_csv(rec.fields + blank + [why, "", ""])

    def _column(self, name: str | None, option: str, where: str) -> int | None:
        if name is None:
            return None
        found = _match_columns(self.columns, [name])
        if found is None:
            hint = "" if self.has_header else " (name it in --columns)"
            raise InputError(f"{where} has no {option} {name!r}; it has "
                             f"{', '.join(map(repr, self.columns))}{hint}")
        return found[0]

    def header(self) -> str | None:
        return self._header() if self.has_header else None

    def _header(self) -> str:
        order = [] if self.order is None else [self.order]
        return join_csv(self.columns + [self.step, self.warmup, *self.preds, *self.extra,
                                        *order, self.error, self.input])

    def header_again(self, raw: bytes) -> str | None:
        names = _header_names(raw)
        if names and self.time_led and names[0].lower() in TIME_NAMES:
            names[0] = self.columns[0]        # a logger's time column, by whatever time name
        return self._header() if _names_all(names, self.columns) else None

    def _parse(self, line: int, text: str) -> Record:
        fields = split_csv(text)
        if len(fields) != len(self.columns):
            where = "as in the header" if self.has_header else \
                f"({', '.join(self.columns)})"
            raise BadLine(f"expected {len(self.columns)} comma-separated fields {where}, "
                          f"got {len(fields)}", fields)
        try:
            values = np.array([number(fields[i], self.columns[i]) for i in self.index])
            reset = self.reset_index is not None and \
                reset_flag(fields[self.reset_index], self.reset_column or "")
        except BadLine as exc:
            raise BadLine(str(exc), fields) from None
        if (";" in text or "\t" in text) and (layout := foreign_layout(text, self.features)):
            # 2022-03-22T02:00;100,5 splits at its decimal comma into two fields, each of
            # which reads: a time "2022-03-22T02:00;100" and a reading of 5
            raise BadLine(f"the line {layout}", fields)
        key = "" if self.key_index is None else fields[self.key_index]
        if self.key_index is not None and not key.strip():
            raise BadLine(f"the --stream-column {self.stream_column!r} is empty", fields)
        return Record(line, key, values, fields, reset=reset)

    def _passed(self, rec: Record) -> list[str]:
        fields = rec.fields if isinstance(rec.fields, list) else []
        # A line with the wrong number of fields keeps what fits (a timestamp, say).
        return (fields + [""] * len(self.columns))[:len(self.columns)]

    def format(self, rec, step, warmup, pred, extra=(), mark=""):
        order = [] if self.order is None else [mark]
        return join_csv(rec.fields + [str(step), "true" if warmup else "false",
                                      *map(format_value, pred), *map(cell, extra), *order,
                                      "", ""])

    def format_error(self, rec):
        return join_csv(self._passed(rec) + self._blank_tail
                        + [rec.error, _unfit(rec, self.columns)])


def _header_names(raw: bytes) -> list[str]:
    """A line's fields, stripped, as a header's names ([] for bytes that are not UTF-8)."""
    try:
        return [f.strip() for f in split_csv(decode(raw))]
    except (UnicodeDecodeError, InputError):
        return []


def _names_all(names: Sequence[str], columns: Sequence[str]) -> bool:
    """Whether ``names`` are ``columns``, in order (as a header names them: any case)."""
    return len(names) == len(columns) and all(columns) and \
        _match_columns(names, columns) == list(range(len(columns)))


def _unfit(rec: Record, columns: Sequence) -> str:
    """The whole line where its fields do not fit ``columns`` (else empty: they are kept)."""
    fits = isinstance(rec.fields, list) and len(rec.fields) == len(columns)
    return "" if fits else (rec.raw or "")


class HeaderlessFormat(LineFormat):
    """CSV without a header: the model's features, in its order, and nothing else."""

    name = "headerless"

    def __init__(self, features, targets, stream_column=None, *, reset_column=None):
        for option, name in (("--stream-column", stream_column), ("--reset-column",
                                                                   reset_column)):
            if name is not None:
                example = _shell_word(",".join([TIME_COLUMN, name, *features]))
                raise InputError(f"{option} needs a CSV header, --columns or JSON lines to "
                                 f"name the column; these headerless lines hold the model's "
                                 f"features only (name every column with --columns, e.g. "
                                 f"--columns {example})")
        super().__init__(features, targets)
        self.names = [f or f"feature {i}" for i, f in enumerate(self.features)]
        self._blank_tail = [""] * (2 + len(self.targets))

    def _parse(self, line, text):
        fields = split_csv(text)
        if len(fields) != len(self.features):
            raise BadLine(f"expected {len(self.features)} comma-separated values "
                          f"({', '.join(self.names)}), got {len(fields)}; other columns need "
                          f"--columns", fields)
        try:
            values = np.array([number(f, n) for f, n in zip(fields, self.names)])
        except BadLine as exc:
            raise BadLine(str(exc), fields) from None
        return Record(line, "", values, fields)

    def format(self, rec, step, warmup, pred, extra=(), mark=""):
        return join_csv(rec.fields + [str(step), "true" if warmup else "false",
                                      *map(format_value, pred), *map(cell, extra), "", ""])

    def header_again(self, raw: bytes) -> str | None:
        if not _names_all(_header_names(raw), self.features):
            return None
        # the names a CSV header of the features gets: the same columns as every answer here
        step, warmup, preds, error = added_names(self.features, self.targets)
        taken = [*self.features, step, warmup, *preds, error]
        return join_csv([*self.features, step, warmup, *preds, *self.extra, error,
                         input_name(taken)])

    def format_error(self, rec):
        fields = rec.fields if isinstance(rec.fields, list) else []
        fields = (fields + [""] * len(self.features))[:len(self.features)]
        return join_csv(fields + self._blank_tail + [rec.error, _unfit(rec, self.features)])


class JsonlFormat(LineFormat):
    """JSON lines: one object per line, features by key, every other key passed through."""

    name = "jsonl"

    def __init__(self, features, targets, stream_column=None, *, reset_column=None):
        super().__init__(features, targets, stream_column)
        _need_names(self.features, "JSON keys")
        self.reset_column = reset_column
        taken = list(self.features) + ([stream_column] if stream_column else [])
        self.step, self.warmup, self.preds, self.error = added_names(taken, self.targets)
        self.input = input_name([*taken, self.step, self.warmup, *self.preds, self.error])
        self.order = "order"

    def add_order(self) -> None:
        self.order = fresh_name("order", [*self.features, *([self.stream_column] if
                                self.stream_column else []), self.step, self.warmup,
                                *self.preds, self.error, self.input])

    def format_skipped(self, rec, why):
        out = dict(rec.fields)
        out[self.order] = why
        return dump_json(out)

    def _layout(self, text):
        return foreign_layout(text, self.features) if "\r" in text else None  # CR endings

    def _parse(self, line, text):
        try:
            obj = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise BadLine(f"not valid JSON: {getattr(exc, 'msg', exc)}") from None
        if not isinstance(obj, dict):
            raise BadLine(f"expected a JSON object {{...}}, got {type(obj).__name__}")
        try:
            values = np.array([self._number(obj, f) for f in self.features])
            reset = self.reset_column is not None and \
                reset_flag(obj.get(self.reset_column), self.reset_column)
        except BadLine as exc:
            raise BadLine(str(exc), obj) from None
        key = ""
        if self.stream_column is not None:
            if self.stream_column not in obj:
                raise BadLine(f"no {self.stream_column!r} key (--stream-column)", obj)
            key = obj[self.stream_column]
            key = key if isinstance(key, str) else json.dumps(key)
        return Record(line, key, values, obj, reset=reset)

    @staticmethod
    def _number(obj: dict, name: str) -> float:
        """A feature's value: NaN where the key is missing or null; numeric text is read."""
        value = obj.get(name)
        if value is None:
            return math.nan
        if isinstance(value, str):
            return number(value, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadLine(f"key {name!r}: {json.dumps(value)[:40]} is not a number")
        try:
            return in_range(float(value), name)
        except OverflowError:           # an integer beyond float range
            return math.inf

    def format(self, rec, step, warmup, pred, extra=(), mark=""):
        out = dict(rec.fields)
        out[self.step] = step
        out[self.warmup] = bool(warmup)
        for name, value in zip(self.preds, pred):
            out[name] = json_value(value)
        for name, value in zip(self.extra, extra):
            out[name] = value if isinstance(value, (bool, str)) or value is None \
                else json_value(value)
        if mark:
            out[self.order] = mark
        return dump_json(out)

    def format_error(self, rec):
        if isinstance(rec.fields, dict):
            out = dict(rec.fields)
            out[self.error] = rec.error
        else:                        # not a JSON object: its text, whole
            out = {self.error: rec.error, self.input: rec.raw or ""}
        return dump_json(out)


def dump_json(obj) -> str:
    """One JSON line whose text is valid UTF-8 whatever the input held.

    JSON may escape a lone surrogate (``"\\ud800"``), which Python reads into a string no
    UTF-8 encoder takes; such a line is written with every non-ASCII character escaped,
    which keeps the surrogate as the input had it. A number JSON cannot hold (``1e999``
    read as infinity, passed through from the input) is written as null, so that every line
    parses as JSON (``Infinity`` is Python's, not JSON's).

    >>> dump_json({"a": float("inf"), "b": [1.5, float("nan")]})
    '{"a": null, "b": [1.5, null]}'
    """
    try:
        text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(obj := _finite(obj), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True)
    return text


def _finite(obj):
    """``obj`` with every float JSON cannot hold (inf, NaN) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def detect(first: bytes, features: Sequence[str], targets: Sequence[str], *,
           fmt: str = "auto", stream_column: str | None = None,
           columns: Sequence[str] | None = None,
           reset_column: str | None = None) -> tuple[LineFormat, bool]:
    """The format of an input whose first line is ``first``, and whether that line is a header.

    ``columns`` (``--columns``) names the fields of header-less CSV lines; a first line that
    repeats those names is taken as their header, and any other (a bad reading, a line cut
    short, bytes that are not UTF-8) is a reading, which gets its error record. Without it, a
    first line whose first field is an ISO date/time and which has one field per feature after
    it starts header-less lines with a leading time column (the format's ``note`` says so):
    a header never starts with a date, so a bad value there (``ERR``, NUL padding) makes that
    line an error record, not the input unreadable. ``fmt="headerless"`` reads such a line
    the same way, and otherwise the features alone.

    Raises InputError where the first line cannot start this input (a header that does not
    name the model's features, a binary first line with ``fmt="auto"``).
    """
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(first, LongLine):
        raise InputError(too_long(first, features, line=1))
    if columns is not None and fmt == "jsonl":
        raise InputError("--columns names the fields of CSV lines; JSON lines name their keys")
    named: dict[str, str | None] = dict(stream_column=stream_column, reset_column=reset_column)
    if (what := not_lines(first)) is not None:
        raise InputError(f"line 1 {what}")
    if fmt == "jsonl":
        return JsonlFormat(features, targets, **named), False
    try:
        text = decode(first)
    except UnicodeDecodeError as exc:
        text = first.decode("utf-8", "replace")
        # A reading with bad bytes (NUL padding after a power cut): its error record, where
        # the line's shape or the options tell the format without it.
        if fmt != "headerless" and columns is None and \
                not (fmt == "auto" and _time_led(_split_lenient(text), features)):
            raise InputError(f"line 1 is {describe_decode_error(exc)}; cannot tell the input "
                             f"format from it (pin the format with --columns, e.g. --columns "
                             f"{_example_columns(len(features) + 1, features)}, so that a bad "
                             f"first line is one error record)") from None
    if fmt == "auto" and text.lstrip().startswith("{"):
        if "\r" in text and (layout := foreign_layout(text, features)) is not None:
            raise InputError(f"line 1 {layout}")          # JSON lines that end in CR alone
        if columns is not None:
            raise InputError("--columns names the fields of CSV lines, but line 1 starts with "
                             "'{': JSON lines name their keys; leave --columns out")
        return JsonlFormat(features, targets, **named), False
    fields = split_csv(text)
    if columns is not None:
        names = [c.strip() for c in columns]
        is_header = fmt != "headerless" and len(fields) == len(names) and \
            _match_columns([f.strip() for f in fields], names) == list(range(len(names)))
        return CsvFormat(names, features, targets, has_header=is_header,
                         stream_column=stream_column, reset_column=reset_column), is_header
    if fmt == "headerless" and not _time_led(fields, features):
        return HeaderlessFormat(features, targets, **named), False
    if fmt == "auto" and _numbers_to_float(fields):
        # a reading, even where a field is no CSV number (1_000, １００): its error record
        return HeaderlessFormat(features, targets, **named), False
    if fmt != "csv" and _time_led(fields, features):
        found = CsvFormat([TIME_COLUMN, *features], features, targets, has_header=False,
                          stream_column=stream_column, reset_column=reset_column)
        found.time_led = True
        found.note = (f"line 1 has no header: reading a leading time column, then "
                      f"{', '.join(map(repr, features))} (name the columns with --columns "
                      f"to read them otherwise)")
        return found, False
    try:
        return CsvFormat([f.strip() for f in fields], features, targets,
                         stream_column=stream_column, reset_column=reset_column), True
    except InputError as exc:
        if (layout := foreign_layout(text, features)) is not None:
            raise InputError(f"line 1 {layout}") from None
        if fmt == "auto" and fields and re.match(r"\s*\d{4}-\d", fields[0]):
            raise InputError(
                f"line 1 ({len(fields)} field{'s' if len(fields) != 1 else ''}) is not a "
                f"header: it starts with a date/time, so it is a reading, but not a time and "
                f"the model's {len(features)} feature(s) {', '.join(map(repr, features))} "
                f"alone (or a line cut short); name every column with --columns, e.g. "
                f"--columns {_example_columns(max(len(fields), len(features) + 1), features)}"
                f", and a bad first line is one error record") from None
        if fmt == "auto" and any(_all_numbers([f]) for f in fields):
            raise InputError(f"{exc} (line 1 was read as a header because it holds text; if "
                             f"it is a reading, every field must be a number, or name the "
                             f"columns with --columns)") from None
        raise


def _name_the_features(columns: Sequence[str], features: Sequence[str], header: bool) -> str:
    """What to do where the columns do not name the model's features."""
    if not header:
        return (f"name them in --columns, e.g. --columns "
                f"{_shell_word(','.join([TIME_COLUMN, *features]))}")
    data = [c for c in columns if c.strip().lower() not in ("time", "timestamp", "datetime",
                                                            "date", "date_time", "sensor")]
    guess = data[:len(features)] if len(data) >= len(features) else list(features)
    return (f"rename the file's column(s) to the model's names, or re-export the model with "
            f"the file's names (lstm-export MODEL.keras --features "
            f"{_shell_word(','.join(guess))} ...), or, where line 1 is no header, name every "
            f"column with --columns")


def _time_led(fields: Sequence[str], features: Sequence[str]) -> bool:
    """Whether a line is a time followed by one field per feature (numbers or not: a header
    never starts with a date, so this is a reading, good or bad)."""
    return (bool(features) and all(features) and len(fields) == len(features) + 1
            and is_timestamp(fields[0]))


def _example_columns(n: int, features: Sequence[str]) -> str:
    names = [TIME_COLUMN] + [f"col{i}" for i in range(1, max(n - len(features), 1))]
    return _shell_word(",".join([*names, *features]))


def _shell_word(text: str) -> str:
    """``text`` quoted for a shell where it needs it (feature names hold spaces, brackets)."""
    return f'"{text}"' if re.search(r"[^\w,.:/@%+=-]", text) else text


def _all_numbers(fields: Sequence[str]) -> bool:
    try:
        for f in fields:
            number(f, "")
    except InputError:
        return False
    return True


def _numbers_to_float(fields: Sequence[str]) -> bool:
    """Whether every field is a number to ``float()`` or a missing token: a reading, not a
    header, even where :func:`number` refuses a field (``1_000``)."""
    for f in fields:
        try:
            float(f)
        except ValueError:
            if f.strip().lower() not in MISSING_TOKENS:
                return False
    return True


# Other layouts of "CSV" that spreadsheets and old systems write: the separator, its name,
# and how tr writes it. Excel writes ';' where the decimal mark is a comma (most of Europe).
_SEPARATORS = ((";", "';'", "semicolons", ";"), ("\t", "tab", "tabs", "\\t"))
_DECIMAL_COMMA = re.compile(r"\s*[+-]?\d+,\d+\s*")


def foreign_layout(text: str, features: Sequence[str], cut: bool = False) -> str | None:
    """What a line that is no comma-separated CSV of these features looks like instead,
    with the conversion that reads it; None where it looks like nothing known.

    A line looks ``;``- or tab-separated where it splits on that character into the model's
    feature names (a header) or into numbers (a reading, a leading time allowed); it holds
    old-Mac line endings where a carriage return inside it follows such a header or reading.
    Called for a refused line, and for a line that read but holds ';' or a tab (a decimal
    comma can split a ';' line into comma fields that each read). ``cut``: ``text`` is the
    start of a line over ``MAX_LINE`` bytes (:class:`LongLine`), so its lines are counted
    as a lower bound.

    >>> foreign_layout("100;32", ["flow"])[:71]
    "looks ';'-separated: it splits on ';' into 2 numbers ('100', '32'), but"
    >>> foreign_layout("2022-03-22T02:00:00;100,5", ["flow"])[-39:]
    "e.g. tr ',;' '.,' < FILE | lstm-run ..."
    """
    if "\r" in text:
        first, rest = text.split("\r", 1)
        if _fits(_split_lenient(first), features) or _json_object(first):
            more = counted(rest.count("\r") + 1, "more line")
            if cut:
                more += f" in its first {MAX_LINE >> 10} KiB (and more after)"
            return (f"holds carriage returns (CR) inside: {_shown(first)!r}, then "
                    f"{more}, each after a CR: the "
                    f"lines end in CR alone (old Mac OS), and lstm-run reads lines that end in "
                    f"LF or CR LF: convert them first, e.g. tr '\\r' '\\n' < FILE | lstm-run ...")
    for sep, name, plural, tr in _SEPARATORS:
        if sep not in text:
            continue
        fields = [f.strip() for f in text.split(sep)]
        if len(fields) < 2:
            continue
        shown = ", ".join(repr(_shown(f)) for f in fields[:6]) + (", ..." if fields[6:] else "")
        if all(features) and _match_columns(fields, features) is not None:
            found = f"{shown}, a header naming the model's features"
        elif _fits(fields, features, commas=True):
            timed = is_timestamp(fields[0])
            found = (f"{'a time and ' if timed else ''}"
                     f"{counted(len(fields) - timed, 'number')} ({shown})")
        else:
            continue
        said = f"looks {name}-separated: it splits on {name} into {found}"
        if any(_DECIMAL_COMMA.fullmatch(f) for f in fields):
            return (f"{said}, with decimal commas, but lstm-run reads comma-separated CSV with "
                    f"decimal points: convert it first, swapping both at once (commas to "
                    f"points, {plural} to commas), e.g. tr ',{tr}' '.,' < FILE | lstm-run ...")
        example = "1,5" + tr + "2,3"
        return (f"{said}, but lstm-run reads comma-separated CSV: convert it first, e.g. "
                f"tr '{tr}' ',' < FILE | lstm-run ... (where the numbers have decimal commas, "
                f"{example}, swap both at once: tr ',{tr}' '.,')")
    return None


def _json_object(text: str) -> bool:
    """Whether ``text`` is one JSON object (a JSON line)."""
    try:
        return text.lstrip().startswith("{") and isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def _split_lenient(text: str) -> list[str]:
    """:func:`split_csv`, or ``[]`` for a line whose quoting is broken."""
    try:
        return [f.strip() for f in split_csv(text)]
    except BadLine:
        return []


def _fits(fields: Sequence[str], features: Sequence[str], commas: bool = False) -> bool:
    """Whether ``fields`` are a header naming the features, or a reading: numbers, one at
    least not missing, after a leading time where there is one (with ``commas``, decimal
    commas count as numbers)."""
    if not fields:
        return False
    if all(features) and _match_columns(fields, features) is not None:
        return True
    values = fields[1:] if is_timestamp(fields[0]) else fields
    if commas:
        values = [v.replace(",", ".") if _DECIMAL_COMMA.fullmatch(v) else v for v in values]
    return bool(values) and _all_numbers(values) and \
        any(v.strip().lower() not in MISSING_TOKENS for v in values)
