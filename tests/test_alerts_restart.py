"""A restart with other alert settings, or after a run without ``--interval``: each sensor's
saved alert state records the settings it was kept under and the last reading it saw; where
either no longer holds, its alerts start afresh, said in one line, and from there the
answers are a fresh run's, byte for byte.

The reference is a real second pair of runs: the same readings through ``lstm-run --state``
without ``--interval`` up to the restart (no alert state is saved), then with the new
settings. The Python :class:`Monitor` is held to the same rule against a monitor started
without a state. The bundled water-flow model and its calibrated intervals throughout.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import runtime
from runtime.alerts import AlertConfig, AlertsRestarted, AlertState, Monitor
from runtime.errors import SnapshotError

from helpers import ROOT, run

WATER = ROOT / "exported" / "water-flow.onnx"
LINES = (ROOT / "data" / "water-flow.csv").read_text().splitlines(keepends=True)
HEADER, ROWS = LINES[0], LINES[1:]
OLD = ["--interval", "0.9", "--stuck", "6", "--cusum", "4"]
CUT, END = 150, 260             # the restart, and the last row fed


def runs(tmp_path: Path, *parts: tuple[list[str], list[str]], header: str = HEADER
         ) -> list[tuple[str, str]]:
    """``(options, rows)`` runs one after the other on one new state file; (stdout, stderr)
    of each."""
    state = tmp_path / f"state-{len(list(tmp_path.iterdir()))}.db"
    return [run([WATER, "--stream", "--state", state, *options],
                "".join([header, *rows]).encode()) for options, rows in parts]


def notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if "alert state" in line]


@pytest.mark.parametrize("old, new, says", [
    (OLD, ["--interval", "0.95", "--stuck", "6", "--cusum", "4"], "--interval 0.95"),
    (OLD, OLD + ["--adapt", "0.02"], "--adapt 0.02"),
    (OLD + ["--adapt", "0.02"], OLD, OLD[-1]),
    (OLD, ["--interval", "0.9", "--stuck", "6", "--cusum", "3"], "--cusum 3"),
    (OLD, ["--interval", "0.9", "--stuck", "4", "--cusum", "4"], "--stuck 4"),
    (OLD, OLD[:2] + ["--min-run", "2"] + OLD[2:], "--min-run 2"),
    (OLD, OLD[:2] + ["--hold-off", "0"] + OLD[2:], "--hold-off 0"),
], ids=["level", "adapt-on", "adapt-off", "cusum", "stuck", "min-run", "hold-off"])
def test_other_settings_start_the_alerts_afresh_as_a_fresh_run(tmp_path, old, new, says):
    before, after = ROWS[:CUT], ROWS[CUT:END]
    _, (got, err) = runs(tmp_path, (old, before), (new, after))
    _, (want, ref_err) = runs(tmp_path, ([], before), (new, after))
    assert got == want                  # every column of every line, from the restart on
    assert not notes(ref_err)
    note, = notes(err)
    assert f"kept under {' '.join(old)};" in note and f"this run has {' '.join(new)}:" in note
    assert says in note and "starts afresh" in note and "next 1 reading(s) not checked" in note
    # the same settings again: no note, and the alerts go on as one run's
    (whole, _), = runs(tmp_path, (new, ROWS[:END]))
    _, (rest, err) = runs(tmp_path, (new, before), (new, after))
    assert not notes(err) and rest.splitlines()[1:] == whole.splitlines()[1 + CUT:]


def two_sensors(rows: list[str]) -> list[str]:
    """Each row twice, as sensors a and b (b's reading 10 higher): ``time,sensor,flow``."""
    out = []
    for row in rows:
        time, value = row.strip().split(",")
        out += [f"{time},a,{value}\n", f"{time},b,{float(value) + 10:g}\n"]
    return out


def test_a_run_without_interval_between_restarts_the_sensors_it_fed(tmp_path):
    """Sensor a is fed by a run without ``--interval``; b is not. Then with it again: a's
    alerts start afresh (its saved pending forecast is of a reading gone by), b's go on."""
    rows = two_sensors(ROWS[:END])
    head, gap, tail = rows[:2 * CUT], [r for r in rows[2 * CUT:2 * CUT + 40] if ",a," in r], \
        rows[2 * CUT + 40:]
    sensors = ["--stream-column", "sensor"]
    header = "time,sensor,Water flow [l/s]\n"
    *_, (got, err) = runs(tmp_path, (OLD + sensors, head), (sensors, gap),
                          (OLD + sensors, tail), header=header)
    _, (want_a, _) = runs(tmp_path, (sensors, head + gap), (OLD + sensors, tail), header=header)
    (whole, _), = runs(tmp_path, (OLD + sensors, head + tail), header=header)
    note, = notes(err)
    assert "sensor 'a'" in note and "older than its stream" in note and "'b'" not in note
    assert _lines(got, "a") == _lines(want_a, "a")
    assert _lines(got, "b") == _lines(whole, "b")[-len(_lines(got, "b")):]
    assert _lines(got, "a")[0].split(",")[-4:-3] == [""]          # a's first: not checked


def _lines(out: str, sensor: str) -> list[str]:
    return [line for line in out.splitlines()[1:] if line.split(",")[1] == sensor]


@pytest.fixture
def readings() -> np.ndarray:
    with open(ROOT / "data" / "water-flow.csv", newline="") as fh:
        return np.array([[float(r["Water flow [l/s]"])] for r in csv.DictReader(fh)][:END])


def test_a_monitor_given_a_state_of_other_settings_or_steps_starts_afresh(tmp_path, readings):
    model = runtime.load(WATER, device="cpu")
    old, new = AlertConfig(0.9, stuck=6, cusum=4), AlertConfig(0.95, stuck=6, cusum=4)
    first = Monitor(model.stream(), old)
    for r in readings[:CUT]:
        first.step(r)
    first.stream.snapshot().save(tmp_path / "s.npz")
    saved = first.state.to_bytes()
    with pytest.warns(AlertsRestarted, match=r"kept under AlertConfig\(level=0\.9, stuck=6, "
                      r"cusum=4\): it starts afresh, as a new monitor's with "
                      r"AlertConfig\(level=0\.95, stuck=6, cusum=4\)"):
        got = Monitor(model.stream(tmp_path / "s.npz"), new, saved)
    want = Monitor(model.stream(tmp_path / "s.npz"), new)
    assert [got.step(r).columns() for r in readings[CUT:]] == \
        [want.step(r).columns() for r in readings[CUT:]]
    # the stream fed on without the monitor: the state is behind it
    stream = model.stream(tmp_path / "s.npz")
    for r in readings[CUT:CUT + 20]:
        stream.step(r)
    stream.snapshot().save(tmp_path / "later.npz")
    with pytest.warns(AlertsRestarted, match=f"up to reading {CUT}, and its stream is at "
                                             f"reading {CUT + 20}"):
        got = Monitor(model.stream(tmp_path / "later.npz"), old, saved)
    want = Monitor(model.stream(tmp_path / "later.npz"), old)
    assert [got.step(r).columns() for r in readings[CUT + 20:]] == \
        [want.step(r).columns() for r in readings[CUT + 20:]]
    # the same settings and steps: no warning, and it goes on as one monitor
    whole = Monitor(model.stream(), old)
    expected = [whole.step(r).columns() for r in readings]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = Monitor(model.stream(tmp_path / "s.npz"), old, saved)
    assert [again.step(r).columns() for r in readings[CUT:]] == expected[CUT:]


def _with_settings(saved: bytes, settings) -> bytes:
    body = json.loads(saved[8:])
    body["settings"] = settings
    text = json.dumps(body).encode()
    return b"LEA1" + len(text).to_bytes(4, "little") + text


# what a state kept under OLD records (docs/alerts.md)
GOOD = {"level": 0.9, "min_run": 1, "hold_off": 3, "stuck": 6, "cusum": 4.0, "adapt": 0.0}


@pytest.mark.parametrize("settings, says", [
    ({**GOOD, "level": 1.5}, "level must lie between 0 and 1"),
    ({**GOOD, "hold_off": -1}, "hold_off must be a whole number"),
    ({**GOOD, "min_run": 2.5}, "min_run must be a whole number"),
    ({**GOOD, "cusum": float("nan")}, "cusum must be a finite number"),
    ({**GOOD, "adapt": 0.9}, "adapt must lie between 0 and 0.5"),
    ({**GOOD, "stuck": True}, "stuck must be a number"),
    ({**GOOD, "level": "0.9"}, "level must be a number"),
    ({k: v for k, v in GOOD.items() if k != "cusum"}, "not the alert settings"),
    ({**GOOD, "extra": 1}, "not the alert settings"),
    ([0.9, 1, 3], "not the alert settings"),
])
def test_tampered_recorded_settings_are_refused(settings, says):
    assert AlertState.from_bytes(_with_settings(AlertState().to_bytes(), GOOD)).settings == GOOD
    with pytest.raises(SnapshotError, match="recorded settings") as caught:
        AlertState.from_bytes(_with_settings(AlertState().to_bytes(), settings))
    assert says in str(caught.value)


def test_lstm_run_refuses_tampered_recorded_settings_in_one_line(tmp_path):
    state = tmp_path / "s.db"
    run([WATER, "--stream", "--state", state, *OLD], "".join([HEADER, *ROWS[:20]]).encode())
    (key, snap), = runtime.load_snapshots(state).items()
    snap.sections["alerts"] = _with_settings(snap.sections["alerts"], {**GOOD, "hold_off": -1})
    bad = tmp_path / "bad.npz"
    runtime.save_snapshots(bad, {key: snap})
    out, err = run([WATER, "--stream", "--state", bad, *OLD],
                   "".join([HEADER, *ROWS[20:25]]).encode(), code=2)
    line, = [e for e in err.splitlines() if e.startswith("Error:")]
    assert "saved alert state cannot be used" in line and "recorded settings" in line \
        and "hold_off must be a whole number at least 0, got -1" in line
    assert out == ""
