"""``lstm-export --calibrate`` and ``lstm-train`` on the calibration CSVs users give them,
through real subprocesses: a CSV without its header row, the very rows the model was
trained on, and the words both commands print for an interval's width."""

import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FLOW = "Water flow [l/s]"
WATER = (ROOT / "data" / "water-flow.csv").read_text().splitlines()   # header + 1268 rows


def tool(name, *args, cwd):
    """Run ``lstm-train`` or ``lstm-export`` as a user would."""
    return subprocess.run([str(BIN / name), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def error_line(result, code: int) -> str:
    """The one ``Error:`` line of a refusal with exit code ``code``, never a traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def shell_line(error: str) -> str:
    """The shell command a message offers after ``e.g.``."""
    return error.split("e.g. ", 1)[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small sequence model lstm-train fitted on water-flow.csv, with its sidecar (training
    rows: lines 2..889, validation rows: lines 890..1079)."""
    folder = tmp_path_factory.mktemp("trained")
    result = tool("lstm-train", ROOT / "data" / "water-flow.csv", "--target", FLOW, "--mode",
                  "sequence", "--look-back", 6, "--units", 4, "--epochs", 1, "--quiet",
                  "--anchor-budget", 0, "-o", "m.keras", cwd=folder)
    assert result.returncode == 0, result.stderr
    (folder / "train.out").write_text(result.stdout)
    return folder


def rows(first: int, last: int, shift: float = 0.0) -> str:
    """water-flow.csv's header and file lines ``first``..``last``, the flow moved by
    ``shift``."""
    body = [f"{t},{float(v) + shift:.2f}" if shift else f"{t},{v}"
            for t, v in (line.split(",") for line in WATER[first - 1:last])]
    return "\n".join([WATER[0], *body]) + "\n"


# ---- a CSV without its header row ------------------------------------------------------

def test_a_calibration_csv_without_a_header_says_so_and_how_to_add_one(tmp_path):
    """Line 1 a reading: the message names the missing header (not '95.74' as a column), and
    the shell line it offers writes a CSV that calibrates."""
    model = keras.Sequential([keras.Input((1, 1)), L.LSTM(2), L.Dense(1)])
    model.save(tmp_path / "m.keras")
    (tmp_path / "nohdr.csv").write_text("\n".join(WATER[1:61]) + "\n")
    result = tool("lstm-export", "m.keras", "-o", "m.onnx", "--features", FLOW, "--targets",
                  FLOW, "--no-check", "--calibrate", "nohdr.csv", cwd=tmp_path)
    error = error_line(result, 2)
    assert "nohdr.csv: line 1 holds readings (2022-03-20T11:00:00+01:00,100.59), not a header " \
           "row naming the columns" in error, error
    assert f"a column named {FLOW!r}" in error and "'100.59'" not in error, error
    assert not (tmp_path / "m.onnx").exists()
    subprocess.run(["sh", "-c", shell_line(error)], cwd=tmp_path, check=True, timeout=60)
    fixed = (tmp_path / "nohdr-header.csv").read_text().splitlines()
    assert fixed == [f"time,{FLOW}", *WATER[1:61]]
    again = tool("lstm-export", "m.keras", "-o", "m.onnx", "--features", FLOW, "--targets",
                 FLOW, "--no-check", "--calibrate", "nohdr-header.csv", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "lstm_edge.intervals" in {p.key for p in onnx.load(tmp_path / "m.onnx").metadata_props}


def test_lstm_train_on_a_csv_without_a_header_says_so(tmp_path):
    """lstm-train reads the CSV with the same code: the same message, before TensorFlow."""
    (tmp_path / "data.csv").write_text("\n".join(WATER[1:200]) + "\n")
    result = tool("lstm-train", "data.csv", "--target", FLOW, "-o", "m.keras", cwd=tmp_path)
    error = error_line(result, 2)
    assert "data.csv: line 1 holds readings" in error and "not a header row" in error, error
    subprocess.run(["sh", "-c", shell_line(error)], cwd=tmp_path, check=True, timeout=60)
    assert (tmp_path / "data-header.csv").read_text().splitlines()[:2] == [f"time,{FLOW}",
                                                                          WATER[1]]


# ---- the rows the model was trained on ---------------------------------------------------

def test_calibration_rows_the_model_was_trained_on_are_refused(trained):
    """Its training rows given back as calibration rows: one line, exit 2, nothing written."""
    (trained / "train-rows.csv").write_text(rows(2, 889))
    result = tool("lstm-export", "m.keras", "-o", "t.onnx", "--no-check", "--calibrate",
                  "train-rows.csv", cwd=trained)
    error = error_line(result, 2)
    assert "train-rows.csv: expected rows the model was not trained on, found training rows: " \
           "lines 3..889 (2022-03-20T12:00:00+01:00 to 2022-04-28T06:00:00+02:00)" in error
    assert "e.g. the validation rows (lines 890..1079 of water-flow.csv)" in error, error
    assert not (trained / "t.onnx").exists()


def test_calibration_rows_after_the_training_rows_say_their_time_span(trained):
    """The validation rows: accepted, and the summary gives the span the intervals were
    calibrated on (the readings scored: the first is the second row's) and what was checked."""
    (trained / "val-rows.csv").write_text(rows(890, 1079))
    result = tool("lstm-export", "m.keras", "-o", "v.onnx", "--no-check", "--calibrate",
                  "val-rows.csv", cwd=trained)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(calibration CSV val-rows.csv, 2022-04-28T08:00:00+02:00 to " \
           "2022-05-06T04:00:00+02:00)" in out, out
    assert "readings the model was not fitted on" in out
    assert "none is among its training rows, water-flow.csv 2022-03-20T11:00:00+01:00 to " \
           "2022-04-28T06:00:00+02:00" in out, out


def test_another_series_at_the_training_times_is_not_refused(trained):
    """The same times with other readings (another sensor's) are not the training rows."""
    (trained / "other.csv").write_text(rows(2, 300, shift=5.0))
    result = tool("lstm-export", "m.keras", "-o", "o.onnx", "--no-check", "--calibrate",
                  "other.csv", cwd=trained)
    assert result.returncode == 0, result.stderr
    assert (trained / "o.onnx").exists()


# ---- one wording for an interval's width ----------------------------------------------

def test_train_and_export_give_the_width_and_the_half_width_in_the_same_words(trained):
    """lstm-train's test coverage and lstm-export's intervals line both say ``width W,
    half-width H`` (H = W / 2), where they once said a width and a half-width apart."""
    train = (trained / "train.out").read_text()
    cells = re.findall(r"(\d+)% [\d.]+% \(width ([\d.e+-]+), half-width ([\d.e+-]+)\)", train)
    assert [c[0] for c in cells] == ["80", "90", "95", "99"], train
    exported = tool("lstm-export", "m.keras", "-o", "w.onnx", "--no-check", cwd=trained)
    assert exported.returncode == 0, exported.stderr
    found = re.search(r"90 % interval width ([\d.e+-]+)( spreads)?, half-width ([\d.e+-]+)",
                      exported.stdout)
    assert found, exported.stdout
    for width, half in [(c[1], c[2]) for c in cells] + [(found[1], found[3])]:
        assert float(half) == pytest.approx(float(width) / 2, rel=1e-3)
