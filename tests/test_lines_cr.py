"""Lines that end in CR alone (old Mac OS; some loggers and Excel exports), however long the
file: to a reader that cuts at LF such a file is one line, over ``MAX_LINE`` bytes once it
holds more than 1 MiB, and it is still named with its conversion (``tr '\\r' '\\n'``), not
refused as a line too long. Lines that end in CR LF read as before whatever the file's
size, and a line over ``MAX_LINE`` bytes that holds no CR lines is still refused as too long.

Each through ``lstm-run`` on a real file (``-i``, with and without ``--stream``, and on a
pipe), and the reader alone where the cut is its own."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from helpers import WATER_MODEL, csv_rows, run, split_lines
from runtime import lines
from runtime.io import TOO_LONG, LineReader

FLOW = "Water flow [l/s]"
HEADER = f"Time,{FLOW}"
T0 = datetime(2022, 3, 1, tzinfo=timezone.utc)
BIG = 40_000       # readings: ~1.3 MiB of lines, over MAX_LINE (1 MiB) as one line


def readings(n: int, start: int = 0) -> list[str]:
    """``n`` readings an hour apart, from hour ``start`` after 2022-03-01T00:00Z."""
    return [f"{_time(start + i)},{100 + i % 17 / 10:.1f}" for i in range(n)]


def _time(hour: int) -> str:
    return (T0 + timedelta(hours=hour)).isoformat().replace("+00:00", "Z")


def cr_file(tmp_path, rows: list[str], name: str = "old-mac.csv"):
    path = tmp_path / name
    path.write_bytes(("\r".join(rows) + "\r").encode())
    assert path.stat().st_size > lines.MAX_LINE
    return path


def one_error(stderr: str) -> str:
    said = [line for line in stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("Error: "), stderr
    return said[0]


def names_cr(said: str) -> None:
    """The words that name CR endings, with the conversion, and not the length refusal."""
    assert "CR alone" in said and "tr '\\r' '\\n'" in said, said
    assert "longer than" not in said, said


# ---- a whole file whose lines end in CR alone ------------------------------------------

@pytest.mark.parametrize("header", [True, False], ids=["header", "headerless"])
@pytest.mark.parametrize("how", ["file", "file-stream", "pipe-stream"])
def test_a_cr_only_file_over_max_line_is_named_with_its_conversion(tmp_path, header, how):
    rows = ([HEADER] if header else []) + readings(BIG)
    path = cr_file(tmp_path, rows)
    if how == "pipe-stream":
        out, err = run([WATER_MODEL, "--stream"], path.read_bytes(), code=2)
    else:
        out, err = run([WATER_MODEL, "-i", path, *(["--stream"] if how == "file-stream"
                                                     else [])], code=2)
    said = one_error(err)
    assert said.startswith("Error: line 1 holds carriage returns (CR) inside: "
                           f"{rows[0]!r}, then "), said
    names_cr(said)
    assert "(and more after)" in said, said     # the file is longer than what was looked at
    assert out == ""


def test_a_bom_before_a_cr_only_file_over_max_line_changes_nothing(tmp_path):
    """Excel's UTF-8 byte-order mark first: the same words, its first MiB still said to be
    only the start of the file."""
    rows = [HEADER, *readings(BIG)]
    path = cr_file(tmp_path, rows)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    said = one_error(run([WATER_MODEL, "--stream", "-i", path], code=2)[1])
    names_cr(said)
    assert f"inside: {HEADER!r}, then " in said and "(and more after)" in said, said


def test_the_conversion_it_names_reads_the_file(tmp_path):
    """``tr '\\r' '\\n'``, as the line says, gives the answers of the same readings written
    with LF endings."""
    rows = [HEADER, *readings(BIG)]
    path = cr_file(tmp_path, rows)
    converted, _ = run([WATER_MODEL], path.read_bytes().replace(b"\r", b"\n"))
    (tmp_path / "lf.csv").write_text("\n".join(rows) + "\n")
    reference, _ = run([WATER_MODEL, "-i", tmp_path / "lf.csv"])
    assert converted == reference and len(split_lines(reference)) == len(rows)


def test_a_later_cr_only_block_is_one_error_record_naming_it(tmp_path):
    """A CR-only block after LF lines (a file appended to by another program): one error
    record that names the CR endings, and the readings around it answered as without it."""
    before, block, after = readings(1), readings(BIG, start=1), readings(1, start=BIG + 1)
    path = tmp_path / "mixed.csv"
    path.write_bytes(f"{HEADER}\n{before[0]}\n".encode() + "\r".join(block).encode()
                     + f"\n{after[0]}\n".encode())
    out, err = run([WATER_MODEL, "--stream", "-i", path])
    rows = csv_rows(out)
    assert len(rows) == 3, out[:2000]
    assert rows[1]["step"] == "" and rows[1]["input"] == "", rows[1]
    names_cr(rows[1]["error"].replace("line longer than", "line over"))
    assert rows[1]["error"].startswith(f"line longer than {lines.MAX_LINE} bytes; it holds "
                                       f"carriage returns (CR) inside")
    assert "line 3: " in err
    (tmp_path / "without.csv").write_text(f"{HEADER}\n{before[0]}\n{after[0]}\n")
    reference = csv_rows(run([WATER_MODEL, "--stream", "-i", tmp_path / "without.csv"])[0])
    for got, want in zip([rows[0], rows[2]], reference):
        assert got == want


# ---- what must not change: CR LF files, and lines that are only too long ---------------

@pytest.mark.parametrize("stream", [False, True], ids=["file", "stream"])
def test_a_crlf_file_over_max_line_reads_as_with_lf(tmp_path, stream):
    """Excel's CR LF endings, over 1 MiB in all: every line read, as the LF file's."""
    rows = [HEADER, *readings(BIG)]
    (tmp_path / "crlf.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    (tmp_path / "lf.csv").write_bytes(("\n".join(rows) + "\n").encode())
    mode = ["--stream"] if stream else []
    got, err = run([WATER_MODEL, *mode, "-i", tmp_path / "crlf.csv"])
    want, _ = run([WATER_MODEL, *mode, "-i", tmp_path / "lf.csv"])
    assert got == want and len(split_lines(got)) == len(rows)
    assert "refused" not in err, err


@pytest.mark.parametrize("where", ["line 1", "later"])
@pytest.mark.parametrize("stray_cr", [False, True], ids=["no-cr", "stray-cr"])
def test_a_line_that_is_only_too_long_is_still_refused_as_such(tmp_path, where, stray_cr):
    """A line over 1 MiB that holds no CR lines (none at all, or one CR that ends nothing a
    reading or header would) is refused as too long, in CR LF files too."""
    long = ("x\r" if stray_cr else "") + "1" * (lines.MAX_LINE + 10)
    path = tmp_path / "long.csv"
    if where == "line 1":
        path.write_bytes(f"{long}\r\n".encode())
        out, err = run([WATER_MODEL, "--stream", "-i", path], code=2)
        said = one_error(err)
        assert said.startswith(f"Error: line 1 is longer than {lines.MAX_LINE} bytes"), said
        assert "CR" not in said and out == ""
        return
    first, last = readings(2)
    path.write_bytes(f"{HEADER}\r\n{first}\r\n{_time(1)},{long}\r\n{last}\r\n".encode())
    rows = csv_rows(run([WATER_MODEL, "--stream", "-i", path])[0])
    assert [r["step"] for r in rows] == ["1", "", "2"]
    assert rows[1]["error"] == (f"line longer than {lines.MAX_LINE} bytes; split the "
                                f"readings one per line")


# ---- the reader's cut ------------------------------------------------------------------

@pytest.mark.parametrize("gather", [False, True], ids=["stream", "gather"])
def test_the_reader_gives_the_start_of_an_over_long_cr_line_up_to_its_last_cr(gather):
    """A bounded start (at most ``max_line`` bytes, cut before a CR, so whole lines only),
    not the line; ``TOO_LONG`` where those bytes hold no CR; the next line read as ever."""
    data = b"a,1\rb,2\rc,3\rd,4\re,5\n" + b"9" * 40 + b"\r\nshort\n"
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    got = [item for batch in LineReader(r, block=7, gather=gather, max_line=12).batches()
           for item in batch]
    os.close(r)
    assert got == [(1, b"a,1\rb,2\rc,3"), (2, TOO_LONG), (3, b"short")]
    assert type(got[0][1]) is lines.LongLine
