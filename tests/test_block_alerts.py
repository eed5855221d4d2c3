"""Calibrated intervals and alerts for forecast blocks (issue 22, "per target and horizon").

Two tutorial window models, trained for a few epochs on real series: ``LSTM(8) -> Dense(3)``
on water flow (one target, three steps; made a block with ``Reshape((3, 1))`` as
docs/keras-models.md says) and ``LSTM(8) -> Dense(6) -> Reshape((3, 2))`` on the office's
temperature and CO2 (two targets). Each is exported with ``--calibrate`` on rows it was
not trained on, and checked against a reference written here from Keras's ``model.predict``
and the contract's words alone (numpy, plain loops): the quantiles of every column, then
``lstm-run --interval 0.9``'s bounds of every column and its check of each reading against
the step-1 column of the answer before; a run killed and restarted with ``--state``, the
Python ``Monitor`` and the Flink job's operators against that run; and a reconstruction
refused in one line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

import runtime  # noqa: E402
from runtime.alerts import AlertConfig, AlertState, Monitor  # noqa: E402
from runtime.errors import SnapshotError  # noqa: E402
from trainer.export import export  # noqa: E402

from helpers import ROOT, TIMEOUT, Live, run, split_lines, stop  # noqa: E402

sys.path.insert(0, str(ROOT))          # integrations/ is not installed into the main venv
from integrations.flink.batch import BatchJob  # noqa: E402
from integrations.flink.records import LineJob, LineSpec  # noqa: E402

T, S = 12, 3                  # window, forecast steps
LEVELS = (0.8, 0.9, 0.95, 0.99)
ENV = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
           PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


@dataclass
class Case:
    """One block model: its file, Keras model, columns and the rows of each use."""

    onnx: Path
    keras: object
    csv: Path                 # the real series it comes from
    names: tuple[str, ...]    # features = targets
    mean: np.ndarray          # (K,) the scaler's
    std: np.ndarray
    calibration: Path         # rows it was not trained on
    readings: Path            # rows lstm-run is given

    @property
    def k(self) -> int:
        return len(self.names)


def table(path: Path, names) -> np.ndarray:
    """``(rows, len(names))`` the named columns of a CSV."""
    with open(path, newline="") as fh:
        return np.array([[float(r[n]) for n in names] for r in csv.DictReader(fh)])


def rows_of(source: Path, rows: slice, to: Path) -> Path:
    """The header and ``rows`` (0-based data rows) of ``source``, written to ``to``."""
    lines = source.read_text().splitlines(keepends=True)
    to.write_text(lines[0] + "".join(lines[1:][rows]))
    return to


def windows(values: np.ndarray) -> np.ndarray:
    """``(n - T + 1, T, K)`` every full window of ``values`` ``(n, K)``, oldest first."""
    return np.lib.stride_tricks.sliding_window_view(values, T, axis=0).transpose(0, 2, 1)


def train(folder: Path, name: str, source: Path, names, train_rows: int, cal: slice,
          readings: slice) -> Case:
    """The tutorial model on ``names`` of ``source``: ``Dense(S * K)`` of the next S readings
    of every column, fit on the first ``train_rows`` rows, exported whole and calibrated."""
    raw = table(source, names)                                      # (rows, K)
    k = len(names)
    mean, std = raw[:train_rows].mean(axis=0), raw[:train_rows].std(axis=0)
    z = ((raw[:train_rows] - mean) / std).astype(np.float32)
    X = windows(z[:-S])                                             # (n, T, K)
    Y = np.stack([z[i + T:i + T + S] for i in range(len(X))])      # (n, S, K) the next S
    keras.utils.set_random_seed(0)
    head = [L.Dense(S)] if k == 1 else [L.Dense(S * k), L.Reshape((S, k))]
    model = keras.Sequential([keras.Input((T, k)), L.LSTM(8), *head])
    model.compile("adam", "mse")
    model.fit(X, Y.reshape(len(X), -1) if k == 1 else Y, epochs=4, batch_size=32, verbose=0)
    if k == 1:     # Dense(S): one target's steps, made a block as docs/keras-models.md says
        model = keras.Sequential([model, L.Reshape((S, 1))])
    model.save(folder / f"{name}.keras")
    scaler = {"x": {"mean": mean.tolist(), "std": std.tolist()},
              "y": {"mean": mean.tolist(), "std": std.tolist()}}
    calibration = rows_of(source, cal, folder / f"{name}-calibration.csv")
    out = folder / f"{name}.onnx"
    export(folder / f"{name}.keras", out, scaler=scaler, features=list(names),
           targets=list(names), horizon=S, calibration=calibration)
    return Case(out, model, source, tuple(names), mean, std, calibration,
                rows_of(source, readings, folder / f"{name}-readings.csv"))


@pytest.fixture(scope="module")
def blocks(tmp_path_factory) -> dict[str, Case]:
    folder = tmp_path_factory.mktemp("blocks")
    # water flow's calibration rows hold a dropout: its later steps' columns leave faults out
    return {"flow": train(folder, "flow", ROOT / "data" / "water-flow.csv",
                          ["Water flow [l/s]"], 600, slice(640, 900), slice(850, 1000)),
            "office": train(folder, "office", ROOT / "data" / "occupancy.csv", ["V1", "V4"],
                            300, slice(300, 450), slice(430, 509))}


CASES = ["flow", "office"]


# ---- the reference: Keras, and the contract's rules written out ----------------------------

def keras_block(case: Case, raw: np.ndarray) -> np.ndarray:
    """``(rows, S * K)`` Keras's forecast at each reading, de-scaled and flattened step-major
    (NaN while the window fills)."""
    scaled = ((raw - case.mean) / case.std).astype(np.float32)
    out = case.keras.predict(windows(scaled), verbose=0).astype(np.float64)
    out = out.reshape(len(out), S, case.k) * case.std + case.mean  # (windows, S, K)
    return np.vstack([np.full((T - 1, S * case.k), np.nan), out.reshape(len(out), -1)])


def spread(values: np.ndarray, readings: int, floor, prior) -> np.ndarray:
    """``(rows, K)`` the mean |change| over the last ``readings`` changes up to each row, a
    change before the first row counting as ``prior``; at least ``floor``."""
    out = np.empty(values.shape)
    for t in range(len(values)):
        seen = [np.abs(values[i] - values[i - 1]) for i in range(max(1, t - readings + 1), t + 1)]
        total = np.sum(seen, axis=0) if seen else 0.0
        out[t] = np.maximum((total + (readings - len(seen)) * np.asarray(prior)) / readings,
                            floor)
    return out


def tail_fit(s: list[float]) -> tuple[float, float, int]:
    """``(u, beta, k)``: the threshold with ``k = n // 2`` scores above it, their mean excess."""
    n = len(s)
    k = n // 2
    u = s[n - k - 1]
    return u, float(np.mean(s[n - k:])) - u, k


def quantile(scores, level: float) -> float:
    """The contract's quantile: the ⌈(n + 1)·L⌉-th smallest, beside the faults the
    exponential tail of the others puts below 1e-6, or that tail's quantile."""
    s = sorted(scores)
    n, faults = len(s), 0
    while faults < int(0.05 * n):
        u, beta, k = tail_fit(s[:n - faults - 1])
        m = n - faults - 1
        if not (beta > 0 and (k + 1) / (m + 1) * math.exp(-(s[m] - u) / beta) < 1e-6):
            break
        faults += 1
    rank = math.ceil((n + 1) * level - 1e-9)
    if rank <= n - faults:
        return s[rank - 1]
    kept = s[:n - faults]
    m = len(kept)
    rank = math.ceil((m + 1) * level - 1e-9)
    if rank <= m:
        return kept[rank - 1]
    u, beta, k = tail_fit(kept)
    return max(kept[-1], u + beta * math.log((k + 1) / ((m + 1) * (1 - level))))


def intervals_of(case: Case) -> dict:
    return json.loads(runtime.load(case.onnx).info.extra["intervals"])


def unit(iv: dict, case: Case, values: np.ndarray) -> np.ndarray:
    """``(rows, S * K)`` the spread each column's interval is scaled by, at each reading."""
    if iv["scale"] == "none":
        return np.ones((len(values), S * case.k))
    rule = iv["spread"]
    k = case.k
    return np.tile(spread(values, rule["readings"], rule["floor"][:k], rule["prior"][:k]), S)


# ---- calibration ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
def test_each_column_has_its_conformal_quantile(blocks, name):
    """Column s*K + k scores |y[t + s + 1, k] - pred[t, c]| / spread_k(t) over the forecasts
    whose reading is in the CSV; the file's q is their quantile at every level."""
    case = blocks[name]
    iv = intervals_of(case)
    y = table(case.calibration, case.names)                          # (rows, K)
    pred = keras_block(case, y)
    k, last = case.k, np.arange(T - 1, len(y) - 1)                   # forecasts with a step 1
    assert iv["n"] == len(last) and iv["source"] == f"calibration CSV {case.calibration.name}"
    assert iv["target_features"] == list(range(k)) * S
    if iv["scale"] != "none":
        mean_change = np.abs(np.diff(y, axis=0)).mean(axis=0)
        np.testing.assert_allclose(iv["spread"]["prior"], np.tile(mean_change, S), rtol=1e-12)
        np.testing.assert_allclose(iv["spread"]["floor"], np.tile(0.1 * mean_change, S),
                                   rtol=1e-12)
    half = unit(iv, case, y)                                         # (rows, S * K)
    q = np.asarray(iv["q"])                                          # (levels, S * K)
    assert q.shape == (len(LEVELS), S * k)
    for c in range(S * k):
        s, j = divmod(c, k)
        t = last[last + s + 1 < len(y)]                              # the reading is there
        scores = np.abs(y[t + s + 1, j] - pred[t, c]) / half[t, c]
        want = [quantile(scores, level) for level in LEVELS]
        np.testing.assert_allclose(q[:, c], want, rtol=5e-5, err_msg=f"column {c}")
    assert len({round(v, 9) for v in q[1]}) == S * k                # each column its own


# ---- lstm-run -------------------------------------------------------------------------------

def lstm_run_table(case: Case, *options, data: bytes | None = None) -> list[dict]:
    out, _ = run([case.onnx, "--interval", "0.9", *options],
                 case.readings.read_bytes() if data is None else data)
    return list(csv.DictReader(io.StringIO(out)))


def column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r[key] != "" else np.nan for r in rows])


def bounds(case: Case, rows: list[dict], side: str) -> np.ndarray:
    return np.stack([column(rows, f"{side}_{n}+{s}") for s in range(1, S + 1)
                     for n in case.names], axis=1)                   # (rows, S * K)


def hygiene(outside, hold_off: int = 3) -> list[str]:
    """``outside`` alerts at min-run 1: raised where a reading falls outside and none stands;
    one stands until ``hold_off`` readings in a row fell inside."""
    out, on, calm = [], False, 0
    for o in outside:
        alert = ""
        if o:
            calm = 0
            if not on:
                on, alert = True, "outside"
        elif o is not None:
            calm += 1
            on = on and calm < hold_off
        out.append(alert)
    return out


@pytest.mark.parametrize("name", CASES)
def test_lstm_run_bounds_every_column_and_checks_step_1(blocks, name):
    case = blocks[name]
    rows = lstm_run_table(case)
    k, iv = case.k, intervals_of(case)
    names = [f"{side}_{n}+{s}" for side in ("lo", "hi") for s in range(1, S + 1)
             for n in case.names]
    assert list(rows[0])[list(rows[0]).index(names[0]):][:len(names) + 3] == \
        names + ["anomaly", "score", "alert"]
    y = table(case.readings, case.names)
    pred = keras_block(case, y)                                      # (rows, S * K)
    half = np.asarray(iv["q"][LEVELS.index(0.9)]) * unit(iv, case, y)
    scale = np.abs(y).max() * 2e-6                                   # float32's rounding
    np.testing.assert_allclose(bounds(case, rows, "lo"), pred - half, rtol=1e-5, atol=scale)
    np.testing.assert_allclose(bounds(case, rows, "hi"), pred + half, rtol=1e-5, atol=scale)
    # the reading against the step-1 columns of the answer one reading before
    score = np.full(len(y), np.nan)
    score[T:] = (np.abs(y[T:] - pred[T - 1:-1, :k]) / half[T - 1:-1, :k]).max(axis=1)
    got = column(rows, "score")
    np.testing.assert_allclose(got, score, rtol=1e-4, atol=1e-5)
    firm = np.isnan(score) | (np.abs(score - 1) > 1e-3)              # not on the edge
    want = ["" if math.isnan(v) else str(v > 1).lower() for v in score]
    assert [r["anomaly"] for r, f in zip(rows, firm) if f] == [w for w, f in zip(want, firm) if f]
    assert any(want[i] == "true" for i in range(len(want))), "no reading outside: a weak test"
    if firm.all():
        assert [r["alert"] for r in rows] == hygiene(
            [None if math.isnan(v) else v > 1 for v in score])


def test_monitor_answers_as_lstm_run_and_resumes_exactly(blocks):
    """The Python API: the same columns; a snapshot and the alert state's bytes midway
    carry on exactly, adapting and summing CUSUM on the step-1 columns."""
    case = blocks["office"]
    options = ("--adapt", "0.2", "--cusum", "1.5", "--stuck", "3")
    rows = lstm_run_table(case, *options)
    config = AlertConfig(0.9, stuck=3, cusum=1.5, adapt=0.2)
    model = runtime.load(case.onnx)
    y = table(case.readings, case.names)
    monitor = Monitor(model.stream(), config)
    answers = [monitor.step(v) for v in y]
    k = case.k
    np.testing.assert_allclose(bounds(case, rows, "lo"), [a.lo for a in answers], rtol=1e-6)
    np.testing.assert_allclose(bounds(case, rows, "hi"), [a.hi for a in answers], rtol=1e-6)
    np.testing.assert_allclose(column(rows, "score"), [a.score for a in answers], rtol=1e-6)
    assert [r["alert"] for r in rows] == [a.alert for a in answers]
    # the later steps keep the file's quantile: their half-width over their spread is q
    iv = intervals_of(case)
    half = (answers[-1].hi - answers[-1].lo) / 2 / unit(iv, case, y)[-1]
    np.testing.assert_allclose(half[k:], iv["q"][LEVELS.index(0.9)][k:], rtol=1e-9)
    assert not np.allclose(half[:k], iv["q"][LEVELS.index(0.9)][:k])    # step 1 adapted
    # a block's state holds the step-1 columns; one holding every column (saved before
    # blocks were checked at step 1) is refused
    old = AlertState(pending=deque([(np.zeros(S * k), np.ones(S * k))]))
    with pytest.raises(SnapshotError, match="checked .* step 1"):
        Monitor(model.stream(), config, old.to_bytes())
    cut = len(y) // 2
    first = Monitor(model.stream(), config)
    for v in y[:cut]:
        first.step(v)
    again = Monitor(model.stream(first.stream.snapshot()), config, first.state.to_bytes())
    for v, a in zip(y[cut:], answers[cut:]):
        b = again.step(v)
        np.testing.assert_array_equal(b.lo, a.lo)
        assert (b.score, b.anomaly, b.alert) == (a.score, a.anomaly, a.alert) \
            or math.isnan(a.score) and math.isnan(b.score)


def saved_steps(path: Path) -> int | None:
    """The one stream's step count in the state file, None before its first save."""
    saved = runtime.load_snapshots(path) if path.exists() else {}
    return next(iter(saved.values())).steps if saved else None


def test_a_run_killed_midway_resumes_with_state_as_one_run(blocks, tmp_path):
    """``kill -9`` after half the answers (``--save-every 1``), everything sent again: each
    reading's answer, taken from the run that fed it, is the uninterrupted run's."""
    case = blocks["flow"]
    options = ["--adapt", "0.1", "--cusum", "2"]
    whole = lstm_run_table(case, *options)
    lines = case.readings.read_text().splitlines(keepends=True)
    state = tmp_path / "s.db"
    live = Live([case.onnx, "--interval", "0.9", *options, "--state", state, "--stream",
                 "--save-every", "1"])
    cut = len(lines) // 2
    try:
        writer = threading.Thread(target=live.send, args=("".join(lines[:cut]).encode(),))
        writer.start()
        header = live.read_line()
        before = [live.read_line() for _ in range(cut - 1)]
        deadline = time.monotonic() + TIMEOUT
        while saved_steps(state) != cut - 1:     # the commit after the batch it answered
            assert time.monotonic() < deadline, "the state was not saved"
            time.sleep(0.05)
        live.proc.kill()                                             # kill -9 midway
        live.proc.wait(TIMEOUT)
        writer.join(TIMEOUT)
    finally:
        stop(live.proc)
    (_, snap), = runtime.load_snapshots(state).items()
    assert "alerts" in snap.sections
    again = lstm_run_table(case, *options, "--state", state)
    first = list(csv.DictReader(io.StringIO("".join(x + "\n" for x in [header, *before]))))
    merged = [a if not a["order"].startswith("skipped") else first[i]
              for i, a in enumerate(again)]
    keys = [k for k in whole[0] if k not in ("order",)]
    assert [[r[k] for k in keys] for r in merged] == [[r[k] for k in keys] for r in whole]
    assert any(r["order"].startswith("skipped") for r in again)


def test_the_flink_operators_answer_as_lstm_run(blocks):
    """Both operators of the Flink job (its records path; no Java) give lstm-run's lines with
    the same options, two sensors interleaved, each one's alert state in its state bytes."""
    case = blocks["office"]
    y = table(case.readings, case.names)
    lines = [json.dumps({"sensor": s, "t": i, **dict(zip(case.names, map(float, v + off)))})
             for i, v in enumerate(y) for s, off in (("a", 0.0), ("b", 0.5))]
    want = split_lines(run([case.onnx, "--stream-column", "sensor", "--time-column", "t",
                            "--interval", "0.9", "--adapt", "0.1", "--cusum", "2"],
                           "".join(x + "\n" for x in lines).encode())[0])
    assert f'"lo_{case.names[1]}+{S}"' in want[-1] and '"alert"' in want[-1]
    spec = LineSpec("jsonl", (), "sensor", "t", alerts=AlertConfig(0.9, cusum=2.0, adapt=0.1))
    data = case.onnx.read_bytes()
    job, state, got = LineJob(data, spec), {}, []
    for text in lines:
        key = job.key(text)
        answer, blob = job.answer(text, state.get(key), key)
        state[key] = blob if blob is not None else state.get(key)
        got.append(answer)
    assert got == want
    batch, state, got = BatchJob(data, spec), {}, []
    for at in range(0, len(lines), 7):
        answers, changed = batch.answer_many(lines[at:at + 7], state.get)
        state.update(changed)
        got += answers
    assert got == want


# ---- --info, the export report, and what is refused ---------------------------------------

def test_info_and_the_export_report_summarise_the_steps(blocks):
    case = blocks["office"]
    info, _ = run([case.onnx, "--info"])
    row = next(line for line in info.splitlines() if line.startswith("intervals"))
    assert f"lo/hi for each of the {S} steps" in row and "1-step forecast" in row
    assert re.search(rf"90 % half-width V1 [\d.]+ \(1 ahead\) to [\d.]+ \({S} ahead\), V4 ", row)
    from trainer.calibrate import describe
    line = describe(intervals_of(case), runtime.load(case.onnx).block)
    assert re.search(rf"V4 [\d.]+ \(1 ahead\) to [\d.]+ \({S} ahead\)", line)
    assert "checks each reading against the forecast 1 step ahead" in line


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("autoencoder")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((T, 1)), L.LSTM(4), L.RepeatVector(T),
                              L.LSTM(4, return_sequences=True),
                              L.TimeDistributed(L.Dense(1))])
    model.save(folder / "ae.keras")
    rows_of(ROOT / "data" / "water-flow.csv", slice(600, 700), folder / "cal.csv")
    (folder / "scaler.json").write_text('{"x": {"mean": [100], "std": [5]}}')
    return folder


@pytest.mark.slow
def test_a_reconstruction_is_refused_in_one_line(autoencoder):
    """lstm-export --calibrate: exit 2, one Error line pointing to the score column, no file;
    lstm-run --interval on the file exported without it: the same advice."""
    code = "from trainer.cli import export_main; export_main(prog_name='lstm-export')"
    done = subprocess.run([sys.executable, "-c", code, "ae.keras", "--scaler", "scaler.json",
                           "--features", "flow", "--calibrate", "cal.csv", "-o", "ae.onnx"],
                          cwd=autoencoder, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    errors = [x for x in done.stderr.splitlines() if x.startswith("Error:")]
    assert len(errors) == 1 and "reconstruction" in errors[0] and "score column" in errors[0]
    assert not (autoencoder / "ae.onnx").exists()
    export(autoencoder / "ae.keras", autoencoder / "plain.onnx",
           scaler={"x": {"mean": [100.0], "std": [5.0]}}, features=["flow"])
    _, err = run([autoencoder / "plain.onnx", "--interval", "0.9"], b"flow\n1\n", code=2)
    assert err.strip().splitlines()[-1].startswith("Error: the model rebuilds its window")
    assert "score column" in err


# ---- docs/alerts.md's example, as written ------------------------------------------------

SECTION = "## Forecast blocks"


def section_code(language: str) -> list[str]:
    text = (ROOT / "docs" / "alerts.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return re.findall(rf"```{language}\n(.*?)```", text[start:end if end >= 0 else None],
                      flags=re.S)


@pytest.mark.slow
def test_the_docs_example_runs_as_written(tmp_path):
    """Its Python trains and saves the model; its commands export, calibrate and stream it."""
    shutil.copytree(ROOT / "data", tmp_path / "data")
    (python,) = section_code("python")
    done = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for block in section_code("sh"):
        for command in (c for c in block.splitlines() if c.strip()):
            done = subprocess.run(command, shell=True, cwd=tmp_path, env=ENV,
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0 and "Error" not in done.stderr, (command, done.stderr)
    with open(tmp_path / "flow6-alerts.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {f"lo_Water flow [l/s]+{s}" for s in range(1, 7)} <= set(rows[0])
    assert any(r["alert"] == "outside" for r in rows)
    info, _ = run([tmp_path / "flow6.onnx", "--info"])
    first, last = map(float, re.search(r"half-width ([\d.]+) \(1 ahead\) to ([\d.]+) \(6 ahead\)",
                                       info).groups())
    assert last > first                  # what the page says: the sixth step's is wider
