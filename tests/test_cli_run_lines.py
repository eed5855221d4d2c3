"""The line formats and the line reader behind ``lstm-run``, without a model or a subprocess."""

import json
import os
import select
import threading

import numpy as np
import pytest

from runtime import lines
from runtime.errors import InputError
from runtime.io import TOO_LONG, LineReader, Unterminated, Waiter

FEATURES = ("temperature", "humidity")
TARGETS = ("temperature",)
PRED = np.array([21.5], dtype=np.float32)


def detect(first: bytes, **kw):
    return lines.detect(first, FEATURES, TARGETS, **kw)


# ---- detection ---------------------------------------------------------------------------

def test_detect_csv_header_jsonl_and_headerless():
    fmt, header = detect(b"time,temperature,humidity")
    assert isinstance(fmt, lines.CsvFormat) and header
    fmt, header = detect(b'{"temperature": 1, "humidity": 2}')
    assert isinstance(fmt, lines.JsonlFormat) and not header
    fmt, header = detect(b"21.3,40")
    assert isinstance(fmt, lines.HeaderlessFormat) and not header
    fmt, header = detect(b"21.3,", )   # a missing value is still a number line
    assert isinstance(fmt, lines.HeaderlessFormat)


def test_detect_header_without_a_feature_names_it():
    with pytest.raises(InputError, match="'humidity'"):
        detect(b"time,temperature")


def test_detect_header_matches_case_and_spaces_loosely():
    fmt, _ = detect(b"Time, Temperature ,HUMIDITY")
    assert fmt.parse(2, b"x,1,2").values.tolist() == [1.0, 2.0]


def test_detect_unknown_stream_column_and_headerless_stream_column():
    with pytest.raises(InputError, match="stream-column 'sensor'"):
        detect(b"time,temperature,humidity", stream_column="sensor")
    with pytest.raises(InputError, match="headerless"):
        detect(b"1,2", stream_column="sensor")


def test_detect_binary_first_line_is_refused():
    with pytest.raises(InputError, match="UTF-8"):
        detect(b"\xff\xfe\x00junk")


@pytest.mark.parametrize("first", [b'\x00"a\rb', b'\x89PNG\r\x1a\x00"x'])
def test_detect_binary_first_line_with_a_quote_is_named_binary_not_broken_csv(first):
    """Binary bytes that hold a quote and a CR are binary data, not CSV whose quoting broke."""
    with pytest.raises(InputError, match=r"^line 1 is not UTF-8 text \(binary data\?\)"):
        detect(first)


def test_unnamed_features_need_headerless_input():
    with pytest.raises(InputError, match="does not name its features"):
        lines.detect(b"a,b", ("", ""), TARGETS)
    fmt, _ = lines.detect(b"1,2", ("", ""), ("",))
    assert fmt.format(fmt.parse(1, b"1,2"), 1, False, PRED) == "1,2,1,false,21.5,,"


# ---- CSV ---------------------------------------------------------------------------------

def test_csv_passes_extra_columns_and_names_added_ones():
    fmt, _ = detect(b"time,sensor,humidity,temperature", stream_column="sensor")
    assert fmt.header() == ("time,sensor,humidity,temperature,step,warmup,pred_temperature,"
                            "error,input")
    rec = fmt.parse(2, b"09:00,a,40,21.3")
    assert rec.ok and rec.key == "a" and rec.values.tolist() == [21.3, 40.0]
    assert fmt.format(rec, 3, False, PRED) == "09:00,a,40,21.3,3,false,21.5,,"
    assert fmt.format(rec, 1, True, np.full(1, np.nan)) == "09:00,a,40,21.3,1,true,,,"


def test_csv_added_names_never_collide():
    fmt, _ = detect(b"step,temperature,humidity,pred_temperature,input")
    assert fmt.header().endswith(",step_,warmup,pred_temperature_,error,input_")


@pytest.mark.parametrize("raw, reason, kept", [
    (b"09:00,21.3", "expected 3 comma-separated fields", "09:00,21.3"),
    (b"09:00,21.3,40,7", "expected 3 comma-separated fields", "09:00,21.3,40,7"),
    (b"09:00,warm,40", "'temperature': 'warm' is not a number", ""),
    (b"\xff\xfe,1,2", "not UTF-8", "\\xff\\xfe,1,2"),
    (b"09:00,1\x00,2", "not UTF-8", "09:00,1\\x00,2"),
])
def test_csv_bad_lines_become_error_records(raw, reason, kept):
    fmt, _ = detect(b"time,temperature,humidity")
    rec = fmt.parse(7, raw)
    assert not rec.ok and reason in rec.error and rec.line == 7
    out = lines.split_csv(fmt.format_error(rec))
    assert len(out) == len(fmt.header().split(","))
    assert reason in out[-2]
    # The whole line is kept where its fields do not fit the columns; else the fields are.
    assert out[-1] == kept
    if not kept:
        assert out[:3] == lines.split_csv(raw.decode())


def test_csv_quotes_round_trip():
    fmt, _ = detect(b'note,temperature,humidity')
    rec = fmt.parse(2, b'"a, quoted ""note""",1,2')
    assert rec.fields[0] == 'a, quoted "note"'
    assert lines.split_csv(fmt.format(rec, 1, False, PRED))[0] == 'a, quoted "note"'


def test_missing_tokens_are_nan_not_errors():
    fmt, _ = detect(b"temperature,humidity")
    for token in (b"", b"nan", b"NA", b"null", b"?"):
        rec = fmt.parse(2, b"1," + token)
        assert rec.ok and np.isnan(rec.values[1])


def test_crlf_line_endings():
    fmt, _ = detect(b"temperature,humidity\r")
    assert fmt.columns == ["temperature", "humidity"]
    assert fmt.parse(2, b"1,2\r").values.tolist() == [1.0, 2.0]


# ---- headerless --------------------------------------------------------------------------

def test_headerless_round_trip_and_errors():
    fmt, _ = detect(b"1,2")
    assert fmt.header() is None
    assert fmt.format(fmt.parse(1, b"1,2"), 1, False, PRED) == "1,2,1,false,21.5,,"
    bad = fmt.parse(2, b"1,2,3")
    assert "expected 2 comma-separated values (temperature, humidity), got 3" in bad.error
    out = lines.split_csv(fmt.format_error(bad))
    assert out[:5] == ["1", "2", "", "", ""] and out[-1] == "1,2,3" and len(out) == 7


# ---- JSON lines --------------------------------------------------------------------------

def test_jsonl_round_trip():
    fmt, _ = detect(b"{}", stream_column="sensor")
    rec = fmt.parse(1, b'{"sensor": "a", "temperature": 21.3, "humidity": "40", "ts": 5}')
    assert rec.ok and rec.key == "a" and rec.values.tolist() == [21.3, 40.0]
    out = json.loads(fmt.format(rec, 2, False, PRED))
    assert out == {"sensor": "a", "temperature": 21.3, "humidity": "40", "ts": 5, "step": 2,
                   "warmup": False, "pred_temperature": 21.5}
    warm = json.loads(fmt.format(rec, 1, True, np.full(1, np.nan)))
    assert warm["pred_temperature"] is None and warm["warmup"] is True


def test_jsonl_numeric_sensor_ids_and_missing_keys():
    fmt, _ = detect(b"{}", stream_column="sensor")
    rec = fmt.parse(1, b'{"sensor": 7, "temperature": 1}')
    assert rec.key == "7" and np.isnan(rec.values[1])


@pytest.mark.parametrize("raw, reason", [
    (b'{"sensor": "a", "temperature": 1', "not valid JSON"),
    (b'[1, 2]', "expected a JSON object"),
    (b'{"temperature": 1, "humidity": 2}', "no 'sensor' key"),
    (b'{"sensor": "a", "temperature": true, "humidity": 2}', "'temperature': true is not a number"),
    (b'{"sensor": "a", "temperature": "hot", "humidity": 2}', "'hot' is not a number"),
    (b'{"sensor": "a", "temperature": 1e999999, "humidity": 2}', None),  # inf: the model's call
    (b"\x89PNG\r\n\x1a", "not UTF-8"),
])
def test_jsonl_bad_lines(raw, reason):
    fmt, _ = detect(b"{}", stream_column="sensor")
    rec = fmt.parse(3, raw)
    if reason is None:
        assert rec.ok and np.isinf(rec.values[0])
        return
    assert not rec.ok and reason in rec.error
    assert json.loads(fmt.format_error(rec))["error"] == rec.error


# ---- the reader --------------------------------------------------------------------------

def read_all(data: bytes, **kw):
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    writer.start()
    try:
        return [b for batch in LineReader(r, **kw).batches() for b in batch]
    finally:
        writer.join()
        os.close(r)


def test_reader_numbers_lines_and_keeps_a_last_line_without_newline():
    got = read_all(b"a\nb\r\n\nc")
    assert got == [(1, b"a"), (2, b"b\r"), (3, b""), (4, b"c")]


def test_reader_reports_over_long_lines_and_goes_on():
    long = b"x" * 5000
    got = read_all(b"a\n" + long + b"\nb\n" + long + b"\n", max_line=1000, block=512)
    assert got == [(1, b"a"), (2, TOO_LONG), (3, b"b"), (4, TOO_LONG)]
    got = read_all(b"a\n" + long, max_line=1000, block=512)   # over-long last line, no newline
    assert got == [(1, b"a"), (2, TOO_LONG)]


@pytest.mark.parametrize("block", [1, 2, 512])
def test_reader_leaves_out_a_utf8_bom_that_starts_the_input_and_keeps_what_the_line_is(block):
    """Excel's "CSV UTF-8" starts with a BOM: not line 1's, even where it comes a byte at a
    time; a last line without a newline is still :class:`Unterminated` without it, and a
    BOM anywhere else is data."""
    bom = b"\xef\xbb\xbf"
    assert read_all(bom + b"a\n" + bom + b"b\n", block=block) == [(1, b"a"), (2, bom + b"b")]
    (number, raw), = read_all(bom + b"2022-03-20T14:00:00Z,100.5", block=block)
    assert (number, raw) == (1, b"2022-03-20T14:00:00Z,100.5") and type(raw) is Unterminated
    assert read_all(bom, block=block) == [] and read_all(bom[:2], block=block) == [(1, bom[:2])]


def test_reader_gathers_blocks_for_files():
    data = b"".join(b"%d\n" % i for i in range(5000))
    got = read_all(data, gather=True, block=1 << 20)
    assert [n for n, _ in got] == list(range(1, 5001))


def test_reader_yields_a_line_before_the_next_arrives():
    r, w = os.pipe()
    os.write(w, b"first\nsec")
    batches = LineReader(r).batches()
    try:
        assert next(batches) == [(1, b"first")]   # would hang if the reader waited for more
        os.write(w, b"ond\n")
        assert next(batches) == [(2, b"second")]
    finally:
        os.close(w)
        assert list(batches) == []
        os.close(r)


@pytest.mark.parametrize("use_poll", [True, False], ids=["poll", "select"])
def test_waiter_sees_what_select_sees(use_poll):
    """Both ways of waiting agree: data, a writer gone (the read then gives b""), room to
    write, a full pipe, and a reader gone (the write then raises BrokenPipeError)."""
    if use_poll and not hasattr(select, "poll"):
        pytest.skip("no select.poll here")

    def waiter(**fds):
        w = Waiter(**fds)
        if not use_poll:
            w.poll = None
        return w

    r, w = os.pipe()
    try:
        assert waiter(read=[r]).wait(0) == set()                 # nothing yet
        os.write(w, b"x")
        assert waiter(read=[r]).wait(0) == {r}
        assert waiter(write=[w]).wait(0) == {w}                  # room
        os.set_blocking(w, False)
        with pytest.raises(BlockingIOError):
            while True:
                os.write(w, b"y" * 65536)                        # fill the pipe
        assert waiter(write=[w]).wait(0) == set()
        assert waiter(write=[w]).wait(0.05) == set()             # waits, then gives up
    finally:
        os.close(w)
    assert waiter(read=[r]).wait(0) == {r}                       # data, then the end
    os.close(r)
    r, w = os.pipe()
    os.close(w)
    assert waiter(read=[r]).wait(None) == {r} and os.read(r, 1) == b""   # hung up: ready
    os.close(r)
    r, w = os.pipe()
    os.close(r)
    assert waiter(write=[w]).wait(None) == {w}                   # reader gone: ready ...
    with pytest.raises(BrokenPipeError):
        os.write(w, b"x")                                        # ... and the write says so
    os.close(w)


def test_format_value_is_shortest_float32():
    assert lines.format_value(np.float32(21.3)) == "21.3"
    assert lines.format_value(np.nan) == ""
    assert lines.json_value(np.float32(0.1)) == 0.1


def test_a_header_is_known_again_by_the_formats_that_read_none():
    """``header_again``: a line naming the columns (any case, spaces) is their header
    wherever it comes; a line naming others is not."""
    named, _ = detect(b"2022-01-01T00:00:00Z,20,40", columns=["t", "temperature", "humidity"])
    want = "t,temperature,humidity,step,warmup,pred_temperature,error,input"
    assert named.header() is None and named.header_again(b" T ,Temperature,humidity\r") == want
    assert named.header_again(b"t,temperature,flow") is None
    assert named.header_again(b"2022-01-01T00:00:00Z,20,40") is None
    bare, _ = detect(b"20,40")
    assert bare.header_again(b"temperature,humidity") == \
        "temperature,humidity,step,warmup,pred_temperature,error,input"
    assert bare.header_again(b"humidity,temperature") is None       # another order
    led, _ = detect(b"2022-01-01T00:00:00Z,20,40")
    assert led.header_again(b"Timestamp,temperature,humidity").startswith("time,temperature")
    assert led.header_again(b"sensor,temperature,humidity") is None
    assert detect(b'{"temperature": 1}')[0].header_again(b"temperature,humidity") is None
