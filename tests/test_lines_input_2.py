"""Input that is almost CSV: other separators and line endings, numbers ``float()`` reads
but CSV does not, the missing-value tokens, and the advice for ``--device cuda`` on a CPU
install. Each through ``lstm-run`` (exit code, the one stderr line, the error record) and,
where it is the parser's alone, through :mod:`runtime.lines`."""

import bz2
import gzip
import io
import json
import lzma
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from helpers import ROOT, TIMEOUT, WATER_MODEL, csv_rows, run, split_lines
from runtime import lines
from runtime.errors import InputError

FLOW = "Water flow [l/s]"
HEADER = f"Time,{FLOW}"
TIMES = [f"2022-03-22T{h:02d}:00:00+01:00" for h in range(24)]


@pytest.fixture(params=["unbuffered", "buffered"])
def unbuffered(request, monkeypatch):
    """Each subprocess test with PYTHONUNBUFFERED set and unset: the answers are the same."""
    if request.param == "unbuffered":
        monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    else:
        monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    return request.param


def one_error(stderr: str) -> str:
    """The one line on stderr, which must be an ``Error:`` line."""
    said = [line for line in stderr.splitlines() if line.strip()]
    assert len(said) == 1 and said[0].startswith("Error: "), stderr
    return said[0]


# ---- separators and line endings: the first line --------------------------------------

@pytest.mark.parametrize("first, conversion", [
    (f"Time;{FLOW}\n{TIMES[0]};100.32\n", "tr ';' ','"),                   # Excel, European
    (f"Time\t{FLOW}\n{TIMES[0]}\t100.32\n", "tr '\\t' ','"),               # tab-separated
    ("100;32\n", "tr ';' ','"),                                           # header-less
    (f"{TIMES[0]};100,32\n{TIMES[1]};100,5\n", "tr ',;' '.,'"),            # decimal commas
], ids=["semicolon-header", "tab-header", "semicolon-headerless", "decimal-commas"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "file"])
def test_other_separator_on_line_1_names_it_and_the_conversion(first, conversion, stream,
                                                                unbuffered):
    out, err = run([WATER_MODEL, *(["--stream"] if stream else [])], first.encode(), code=2)
    said = one_error(err)
    assert out == ""
    sep = "tab" if "\t" in first else "';'"
    assert said.startswith(f"Error: line 1 looks {sep}-separated"), said
    assert conversion in said
    # the old advice, which cannot work: a header named after the whole line
    assert "lstm-export" not in said and "--features" not in said


def test_semicolon_header_advice_covers_decimal_commas():
    """From a header alone the decimal mark is unknown: both conversions are given, the
    one that swaps commas and semicolons at once for numbers like 1,5."""
    _, err = run([WATER_MODEL], f"Time;{FLOW}\n".encode(), code=2)
    said = one_error(err)
    assert "tr ';' ','" in said and "tr ',;' '.,'" in said and "1,5;2,3" in said


def test_cr_only_line_endings_are_named(tmp_path, unbuffered):
    path = tmp_path / "old-mac.csv"
    path.write_bytes(("\r".join([HEADER, *(f"{t},{100 + i / 10}" for i, t in
                                           enumerate(TIMES[:5]))]) + "\r").encode())
    out, err = run([WATER_MODEL, "-i", path], code=2)
    said = one_error(err)
    assert "carriage returns" in said and "CR alone" in said, said
    assert "tr '\\r' '\\n'" in said
    assert "lstm-export" not in said and out == ""


def test_a_semicolon_line_that_is_no_reading_is_left_to_the_header_check():
    """Text that splits on ';' into neither the features nor numbers gets the usual words."""
    with pytest.raises(InputError, match="no column for the model's feature") as found:
        lines.detect(b"note;remark", [FLOW], [FLOW])
    assert "separated" not in str(found.value)


# ---- separators: a later line -----------------------------------------------------------

def test_a_later_semicolon_line_is_an_error_record_not_a_misread_reading(unbuffered):
    """``2022-..;100,5`` after a comma header splits at its decimal comma into two fields
    that both read (a time and 5): refused, not fed as 5; N lines in, N out."""
    feed = (f"{HEADER}\n{TIMES[0]},100.5\n{TIMES[1]};100,5\n{TIMES[2]};100.7\n"
            f"{TIMES[3]},100.9\n")
    out, err = run([WATER_MODEL, "--stream", "--no-order-check"], feed.encode())
    rows = csv_rows(out)
    assert len(rows) == 4
    assert [r["step"] for r in rows] == ["1", "", "", "2"]
    assert "tr ',;' '.,'" in rows[1]["error"] and "decimal commas" in rows[1]["error"]
    assert rows[2]["error"].startswith("expected 2 comma-separated fields")
    assert "looks ';'-separated" in rows[2]["error"]
    assert rows[2]["input"] == f"{TIMES[2]};100.7"
    assert "line 3: the line looks ';'-separated" in err and "Traceback" not in err
    # the good readings are answered as if the bad ones were never there
    clean, _ = run([WATER_MODEL, "--stream"],
                   f"{HEADER}\n{TIMES[0]},100.5\n{TIMES[3]},100.9\n".encode())
    assert [r[f"pred_{FLOW}"] for r in csv_rows(clean)] == \
        [rows[0][f"pred_{FLOW}"], rows[3][f"pred_{FLOW}"]]


def test_a_tab_before_a_comma_is_still_a_comma_line():
    fmt, _ = lines.detect(HEADER.encode(), [FLOW], [FLOW])
    rec = fmt.parse(2, f"{TIMES[0]}\t,100.7".encode())
    assert rec.ok and rec.values.tolist() == [100.7]


# ---- files that are no UTF-8 text lines -------------------------------------------------

GOOD = f"{HEADER}\n{TIMES[0]},100.32\n{TIMES[1]},100.5\n"
TABBED = "\ufeff" + GOOD.replace(",", "\t").replace("\n", "\r\n")  # Excel's "Unicode Text"
TR_TABS = " | tr '\\t' ','"
NOT_LINES = {       # name: (the file's bytes, what line 1 is said to be, the way to lines)
    "utf-16-excel": (TABBED.encode("utf-16-le"), "UTF-16 text",
                     "iconv -f UTF-16 -t UTF-8 < FILE" + TR_TABS),
    "utf-16be": (TABBED.encode("utf-16-be"), "UTF-16 text",
                 "iconv -f UTF-16 -t UTF-8 < FILE" + TR_TABS),
    "utf-16le-no-bom": (GOOD.encode("utf-16-le"), "UTF-16 text",
                        "iconv -f UTF-16LE -t UTF-8 < FILE"),
    "gzip": (gzip.compress(GOOD.encode()), "gzip-compressed data", "gunzip -c FILE"),
    "bzip2": (bz2.compress(GOOD.encode()), "bzip2-compressed data", "bunzip2 -c FILE"),
    "xz": (lzma.compress(GOOD.encode()), "xz-compressed data", "xz -dc FILE"),
}


def _xlsx() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        z.writestr("xl/workbook.xml", "<workbook/>")
    return buf.getvalue()


@pytest.mark.parametrize("name", list(NOT_LINES))
@pytest.mark.parametrize("args", [[], ["--stream", "--columns", f"time,{FLOW}"]],
                         ids=["auto", "columns"])
def test_a_file_of_no_text_lines_is_named_with_the_way_to_read_it(tmp_path, name, args):
    """UTF-16 (Excel's "Unicode Text"), compressed data: named on line 1, even where
    ``--columns`` makes a bad first line an error record, and the way it names (run in a
    shell, where the tools are there) gives the answers of the UTF-8 file."""
    data, what, way = NOT_LINES[name]
    path = tmp_path / "sensors.dat"
    path.write_bytes(data)
    out, err = run([WATER_MODEL, *args, "-i", path], code=2)
    said = one_error(err)
    assert said.startswith(f"Error: line 1 is {what}"), said
    assert way in said and out == ""
    tool = way.split()[0]
    if shutil.which(tool) is None or shutil.which("tr") is None:
        pytest.skip(f"no {tool} here to check the conversion")
    converted = subprocess.run(way.replace("FILE", str(path)), shell=True, capture_output=True,
                               timeout=TIMEOUT, check=True).stdout
    assert converted.replace(b"\r\n", b"\n") == GOOD.encode()
    assert run([WATER_MODEL], converted)[0] == run([WATER_MODEL], GOOD.encode())[0]


def test_an_excel_workbook_is_named_with_the_way_to_save_it_as_csv(tmp_path):
    path = tmp_path / "sensors.xlsx"
    path.write_bytes(_xlsx())
    said = one_error(run([WATER_MODEL, "-i", path], code=2)[1])
    assert said.startswith("Error: line 1 is a ZIP archive, as an Excel .xlsx workbook is")
    assert "CSV UTF-8" in said and "broken CSV quoting" not in said


@pytest.mark.parametrize("first", [b"2022-03-20T14:00:00+01:00,100.5\x00\x00",
                                   b"\x00\x00\x00\x00", b"2022-03-20T14:00:00Z,10\x000.5"],
                         ids=["nul-padding", "nul-only", "nul-inside"])
def test_nul_bytes_in_a_utf_8_line_are_no_utf_16(first):
    """A power cut's NUL padding is a bad reading, never UTF-16 (which refuses the file)."""
    assert lines.not_lines(first) is None


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "file"])
def test_json_lines_that_end_in_cr_alone_are_named(tmp_path, stream):
    """JSON lines that end in CR alone: line 1 is refused naming them, as CSV's is; such a
    later line (pasted in) is an error record with the same words, the others answered."""
    objs = [json.dumps({FLOW: 100 + i / 10}) for i in range(4)]
    path = tmp_path / "old-mac.jsonl"
    path.write_bytes(("\r".join(objs) + "\r").encode())
    mode = ["--stream"] if stream else []
    out, err = run([WATER_MODEL, *mode, "-i", path], code=2)
    said = one_error(err)
    assert said.startswith(f"Error: line 1 holds carriage returns (CR) inside: {objs[0]!r}")
    assert "CR alone" in said and "tr '\\r' '\\n'" in said and out == ""
    path.write_bytes((objs[0] + "\n" + "\r".join(objs[1:3]) + "\n" + objs[3] + "\n").encode())
    out, err = run([WATER_MODEL, *mode, "-i", path])
    answers = [json.loads(line) for line in split_lines(out)]
    assert [a.get("step") for a in answers] == [1, None, 2]
    assert "CR alone" in answers[1]["error"] and "tr '\\r' '\\n'" in answers[1]["error"]


# ---- numbers ----------------------------------------------------------------------------

NOT_CSV_NUMBERS = {
    "1_000": "digit separators",
    "١٠٠": "ARABIC-INDIC DIGIT ONE",
    "１００": "FULLWIDTH DIGIT ONE",
    "100\u00a0": "NO-BREAK SPACE",
    "1e1_0": "digit separators",
}
CSV_NUMBERS = {"100": 100.0, " -1.5e3 ": -1500.0, "+.5": 0.5, "5.": 5.0, "1E2": 100.0,
               "\t7\t": 7.0, "inf": np.inf, "-Infinity": -np.inf}


@pytest.mark.parametrize("text", sorted(NOT_CSV_NUMBERS))
def test_float_only_numbers_are_refused_in_csv_headerless_and_json(text):
    why = NOT_CSV_NUMBERS[text]
    csv_fmt, _ = lines.detect(HEADER.encode(), [FLOW], [FLOW])
    bare, _ = lines.detect(b"1", [FLOW], [FLOW])
    jsonl, _ = lines.detect(b"{}", [FLOW], [FLOW])
    for fmt, raw in ((csv_fmt, f"{TIMES[0]},{text}"), (bare, text),
                     (jsonl, json.dumps({FLOW: text}, ensure_ascii=False))):
        rec = fmt.parse(2, raw.encode())
        assert not rec.ok and rec.values is None, (fmt.name, rec)
        assert "is not a number" in rec.error and why in rec.error, rec.error


@pytest.mark.parametrize("text", sorted(CSV_NUMBERS))
def test_csv_numbers_still_read(text):
    assert lines.number(text, "x") == CSV_NUMBERS[text]
    jsonl, _ = lines.detect(b"{}", [FLOW], [FLOW])
    assert jsonl.parse(2, json.dumps({FLOW: text}).encode()).values[0] == CSV_NUMBERS[text]


def test_json_numbers_are_numbers():
    jsonl, _ = lines.detect(b"{}", [FLOW], [FLOW])
    assert jsonl.parse(2, json.dumps({FLOW: 1000}).encode()).values.tolist() == [1000.0]


def test_float_only_numbers_get_error_records_and_leave_the_state_alone(unbuffered):
    bad = ["1_000", "١٠٠", "１００"]
    feed = [HEADER, f"{TIMES[0]},100.5"] + [f"{TIMES[1 + i]},{b}" for i, b in enumerate(bad)] \
        + [f"{TIMES[4]},100.9"]
    out, err = run([WATER_MODEL, "--stream"], ("\n".join(feed) + "\n").encode())
    rows = csv_rows(out)
    assert len(rows) == len(feed) - 1
    assert [r["step"] for r in rows] == ["1", "", "", "", "2"]
    for row, text in zip(rows[1:4], bad):
        assert row[FLOW] == text and "is not a number" in row["error"], row
    assert len([x for x in err.splitlines() if re.match(r"line \d+: ", x)]) == 3, err
    clean, _ = run([WATER_MODEL, "--stream"],
                   f"{HEADER}\n{TIMES[0]},100.5\n{TIMES[4]},100.9\n".encode())
    assert csv_rows(clean)[1][f"pred_{FLOW}"] == rows[4][f"pred_{FLOW}"]


@pytest.mark.parametrize("fmt", ["headerless", "jsonl"])
def test_float_only_numbers_headerless_and_jsonl_through_lstm_run(fmt, unbuffered):
    if fmt == "jsonl":
        feed = "".join(json.dumps({FLOW: v}, ensure_ascii=False) + "\n"
                       for v in ("1_000", 100.5, "１００", "100.7"))
    else:       # a first line 1_000 is a reading (its error record), not a header
        feed = "1_000\n100.5\n１００\n100.7\n"
    out, err = run([WATER_MODEL, "--stream"], feed.encode())
    answers = split_lines(out)
    assert len(answers) == 4
    if fmt == "jsonl":
        got = [json.loads(a) for a in answers]
        assert ["error" in g for g in got] == [True, False, True, False]
        assert [g.get("step") for g in got] == [None, 1, None, 2]
    else:
        assert [a.split(",")[1] for a in answers] == ["", "1", "", "2"]
        assert "digit separators" in answers[0] and "FULLWIDTH" in answers[2]
    assert "Traceback" not in err


# ---- missing values: what the docs say is what the code reads ---------------------------

def test_every_missing_token_is_missing_in_any_case():
    for token in lines.MISSING_TOKENS | {" ", "  ", "N/A", "None", "NULL", " ? "}:
        assert np.isnan(lines.number(token, "x")), token


def test_the_docs_list_the_missing_tokens_the_code_reads():
    """docs/lstm-run.md and --help name every missing token, and no other."""
    text = (ROOT / "docs" / "lstm-run.md").read_text()
    said = re.search(r"A \*\*missing value\*\* is an empty or blank field, or (.*?) in any "
                     r"case", text, re.S)
    assert said, "docs/lstm-run.md no longer says what a missing value is"
    named = {t.lower() for t in re.findall(r"`([^`]+)`", said.group(1))}
    assert named | {""} == lines.MISSING_TOKENS
    import trainer.data
    assert trainer.data.MISSING_TOKENS == lines.MISSING_TOKENS     # what it trained on


@pytest.mark.parametrize("token", ["?", "-", " ", "N/A", "none"])
def test_missing_tokens_skip_with_missing_skip(token):
    feed = f"{HEADER}\n{TIMES[0]},100.5\n{TIMES[1]},{token}\n{TIMES[2]},100.9\n"
    out, _ = run([WATER_MODEL, "--stream", "--missing", "skip"], feed.encode())
    rows = csv_rows(out)
    assert [r["error"] for r in rows] == ["", "", ""]
    assert [r["step"] for r in rows] == ["1", "1", "2"]


# ---- --device cuda on a CPU-only ONNX Runtime -------------------------------------------

CPU_ONLY = ("import sys; import runtime.device as d; "
            "d.available_providers = lambda: ['AzureExecutionProvider', 'CPUExecutionProvider']; "
            "from runtime.cli import main; sys.argv[0] = 'lstm-run'; main()")


@pytest.mark.parametrize("extra", [["--info"], ["--stream"]], ids=["info", "stream"])
def test_device_cuda_on_a_cpu_install_gives_the_documented_switch(extra, unbuffered):
    proc = subprocess.run([sys.executable, "-c", CPU_ONLY, str(WATER_MODEL), "--device", "cuda",
                           *extra], input=b"100\n", capture_output=True, timeout=TIMEOUT,
                          cwd=ROOT)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    said = one_error(err)
    assert "no CUDAExecutionProvider" in said
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in said
    assert "pip install 'lstm-edge[gpu]'" in said
    assert "install onnxruntime-gpu;" not in said       # both packages in one environment
    assert said.endswith("use --device cpu or --device auto"), said
    assert "device='cpu'" not in said and proc.stdout == b""


def test_device_cuda_on_a_cpu_install_in_the_api(monkeypatch):
    """The Python API keeps its own words: ``device='cpu'``, which is what a caller passes."""
    import runtime
    import runtime.device as rdevice
    monkeypatch.setattr(rdevice, "available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(runtime.DeviceError) as found:
        runtime.load(WATER_MODEL, device="cuda")
    said = str(found.value)
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in said
    assert said.endswith("use device='cpu' or 'auto'")


def test_cli_words_turn_the_device_advice_into_options():
    assert lines.cli_words("x; use device='cpu' or 'auto'") == "x; use --device cpu or --device auto"


def test_the_cuda_libraries_advice_is_in_shell_words_for_lstm_run():
    """The API's 'call onnxruntime.preload_dlls()' is no step for a shell user."""
    from runtime.lines import cli_words
    api = ("device 'cuda' cannot run: the CUDA libraries did not load (libcublasLt.so.13: "
           "cannot open shared object file); install CUDA and cuDNN as onnxruntime-gpu's "
           "requirements page says, or call onnxruntime.preload_dlls(); use device='cpu' or "
           "'auto'")
    said = cli_words(api)
    assert "preload_dlls" not in said and "LD_LIBRARY_PATH" in said
    assert said.endswith("use --device cpu or --device auto")
