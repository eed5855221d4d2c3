"""The alert rules at their edges: a Monitor's reading checked before it is fed, the adapt
rate's bound, alert options without ``--interval``, ``--hold-off 0``, CUSUM held over a
stuck stretch, the escalation of a standing alert (and the alert state saved before it),
``anomaly`` None where nothing was checked, and ``--info`` on levels that share a quantile.

The faults are the bundled series' own readings with one fault each (as a new user's
reproductions built them): 200 readings from 2022-03-26T17:00, the fault at step 61."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import runtime
from runtime.alerts import ESCALATE, AlertConfig, Alerts, AlertState, Monitor, max_adapt
from runtime.errors import InputError, ShapeError, SnapshotError

from helpers import run, with_props

ROOT = Path(__file__).resolve().parent.parent
WATER = ROOT / "exported" / "water-flow.onnx"
TARGET = "Water flow [l/s]"


def faulty(fault) -> bytes:
    """200 lines of data/water-flow.csv from 2022-03-26T17:00, ``fault(values)`` applied
    (index i is step i + 1)."""
    lines = (ROOT / "data" / "water-flow.csv").read_text().splitlines()
    times = [line.split(",")[0] for line in lines[151:351]]
    values = [float(line.split(",")[1]) for line in lines[151:351]]
    fault(values)
    return (lines[0] + "\n" + "".join(f"{t},{v}\n" for t, v in zip(times, values))).encode()


def zeros(v):
    v[60:75] = [0.0] * 15                      # the pump stops: 0 l/s from step 61


def stuck(v):
    v[60:80] = [v[59]] * 20                    # the sensor repeats step 60's reading


def table(data: bytes, *args) -> list[dict]:
    out, _ = run([WATER, *args], data)
    return list(csv.DictReader(io.StringIO(out)))


def toy(**options) -> tuple[Alerts, AlertState]:
    """Forecasts of 0 with half-width 1 (``observe`` gets pred 0): the score is |reading|."""
    iv = json.dumps({"levels": [0.9], "q": [[1.0]], "scale": "none", "target_features": [0]})
    model = SimpleNamespace(info=SimpleNamespace(extra={"intervals": iv}, horizon=1),
                            n_targets=1, targets=("y",))
    return Alerts(model, AlertConfig(level=0.9, **options)), AlertState()


def alerts_of(values, **options) -> list[tuple[int, str]]:
    alerts, state = toy(**options)
    got = [alerts.observe(state, np.array([v]), np.array([0.0])).alert for v in values]
    return [(i, a) for i, a in enumerate(got) if a]


# ---- 1. Monitor.step: the reading checked before the stream is fed ----------------------

@pytest.mark.parametrize("reading", [101.0, np.float32(101.0), np.array(101.0),
                                     np.float64(101.0), 101])
def test_monitor_takes_what_stream_step_takes(reading):
    """A scalar is a one-feature model's reading for Stream.step; Monitor.step fed it and
    then raised IndexError, so a retry fed it twice."""
    model = runtime.load(WATER, device="cpu")
    want = Monitor(model.stream(), AlertConfig(0.9))
    got = Monitor(model.stream(), AlertConfig(0.9))
    for r in (100.5, reading, 101.3):
        a, b = want.step([float(r)]), got.step(r)
        np.testing.assert_array_equal(b.pred, a.pred)
        np.testing.assert_array_equal(b.lo, a.lo)
        assert (b.anomaly, b.alert) == (a.anomaly, a.alert)
        assert b.score == pytest.approx(a.score, nan_ok=True)
    assert got.stream.steps == 3 and got.state.to_bytes() == want.state.to_bytes()


@pytest.mark.parametrize("reading", [[[101.0]], [101.0, 2.0], "101", [math.nan]])
def test_monitor_refuses_a_bad_reading_with_nothing_fed(reading):
    model = runtime.load(WATER, device="cpu")
    monitor = Monitor(model.stream(), AlertConfig(0.9))
    monitor.step([100.5])
    before = monitor.state.to_bytes()
    with pytest.raises((InputError, ShapeError)):
        monitor.step(reading)
    assert monitor.stream.steps == 1 and monitor.state.to_bytes() == before


# ---- 2. the adapt rate's bound ---------------------------------------------------------

@pytest.mark.parametrize("level, top", [(0.8, 0.25), (0.9, 0.5), (0.95, 1.0), (0.99, 1.0)])
def test_adapt_is_bounded_so_a_reading_inside_narrows_by_at_most_5_percent(level, top):
    """q moves by adapt * q_L * (miss - (1 - L)): at the bound an inside reading takes at
    most 5 % of q_L, and a miss adds less than q_L; above it the interval collapsed to zero
    width in a few readings (adapt 5 at 0.9: two) and an ordinary reading scored 1e15."""
    assert max_adapt(level) == pytest.approx(min(1.0, 0.05 / (1 - level)))
    assert max_adapt(level) == pytest.approx(top)
    AlertConfig(level=level, adapt=top)
    with pytest.raises(InputError) as caught:
        AlertConfig(level=level, adapt=top * 1.01)
    assert str(caught.value).startswith(f"adapt must lie between 0 and {top:g} at level "
                                        f"{level:g} (")
    alerts, state = toy(adapt=top) if level == 0.9 else (None, None)
    if alerts is not None:                   # by hand: 19 readings inside leave 5 % of q_L
        for _ in range(20):
            a = alerts.observe(state, np.array([0.0]), np.array([0.0]))
        assert a.hi[0] == pytest.approx(1.0 - 19 * top * 0.1)


def test_lstm_run_refuses_an_adapt_rate_above_the_bound(tmp_path):
    out, err = run([WATER, "--stream", "--interval", "0.9", "--adapt", "5"],
                   faulty(lambda v: None), code=2)
    assert out == ""
    assert err.strip().splitlines() == [
        "Error: adapt must lie between 0 and 0.5 at level 0.9 (a reading inside then narrows "
        "the interval by at most 5 % of the calibrated one, a miss widens it by less than all "
        "of it; docs/alerts.md uses 0.01 to 0.05), got 5"]


# ---- 3. alert options without --interval -----------------------------------------------

@pytest.mark.parametrize("args, named", [
    (["--stuck", "6"], "--stuck needs"),
    (["--cusum", "4"], "--cusum needs"),
    (["--adapt", "0.05"], "--adapt needs"),
    (["--min-run", "1"], "--min-run needs"),          # the default, but given
    (["--hold-off", "3"], "--hold-off needs"),
    (["--stuck", "6", "--cusum", "4"], "--stuck, --cusum need"),
])
def test_an_alert_option_without_interval_is_a_usage_error(args, named):
    out, err = run([WATER, "--stream", *args], b"Water flow [l/s]\n101.2\n101.4\n", code=2)
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"Error: {named} --interval LEVEL: ") and "--interval 0.9" in last
    assert sum(line.startswith("Error:") for line in err.splitlines()) == 1


def test_no_alert_option_runs_without_alert_columns():
    out, err = run([WATER, "--stream"], b"Water flow [l/s]\n101.2\n101.4\n")
    assert "anomaly" not in out.splitlines()[0] and err == ""


# ---- 4. --hold-off 0 ---------------------------------------------------------------------

def test_hold_off_0_lets_every_reading_outside_raise_an_alert():
    values = [0, 5, 5, 0, 5, 0.5, 5, 5, 5]
    assert alerts_of(values, hold_off=0) == [(1, "outside"), (2, "outside"), (4, "outside"),
                                             (6, "outside"), (7, "outside"), (8, "outside")]
    assert alerts_of(values, hold_off=1) == [(1, "outside"), (4, "outside"), (6, "outside")]
    assert alerts_of(values, hold_off=0, min_run=2) == [(2, "outside"), (7, "outside"),
                                                        (8, "outside")]


def test_lstm_run_hold_off_0_differs_from_1():
    """zeros: 0.4 l/s off at step 60 (an alert), then 0 l/s from 61 (outside at 61, 62)."""
    data = faulty(zeros)
    h0 = table(data, "--interval", "0.9", "--hold-off", "0")
    h1 = table(data, "--interval", "0.9", "--hold-off", "1")
    outside0 = [r["step"] for r in h0 if r["anomaly"] == "true"]
    assert [r["step"] for r in h0 if r["alert"]] == outside0          # each one, alerted
    assert [r["step"] for r in h1 if r["alert"]] != outside0
    assert {"60", "61", "62"} <= set(outside0)


# ---- 5. CUSUM held while a stuck stretch stands -------------------------------------------

def test_one_stuck_stretch_is_one_alert():
    """20 readings of step 60's value: `stuck` at 65; CUSUM raised `shift` at 70 and 76 of
    the same flat line before it was held while the stretch stands."""
    rows = table(faulty(stuck), "--interval", "0.9", "--min-run", "2", "--stuck", "6",
                 "--cusum", "4")
    assert [(r["step"], r["alert"]) for r in rows if 60 <= int(r["step"]) <= 80
            and r["alert"]] == [("65", "stuck")]


# ---- 6. a standing alert escalated -------------------------------------------------------

def test_a_fault_beginning_while_an_alert_stands_raises_an_alert():
    """Step 60 reads 0.4 l/s off (score 1.78, an alert); step 61 reads 0 (score 213): at
    least ESCALATE times the stretch's largest score, so a new `outside` alert."""
    assert ESCALATE == 4.0
    rows = table(faulty(zeros), "--interval", "0.9")
    at = {r["step"]: r for r in rows}
    assert float(at["60"]["score"]) < 2 and at["60"]["alert"] == "outside"
    assert float(at["61"]["score"]) > 100 and at["61"]["alert"] == "outside"
    shift = table(faulty(lambda v: v.__setitem__(slice(60, 200),
                                                 [x + 8 for x in v[60:200]])), "--interval", "0.9")
    assert [r["alert"] for r in shift[59:61]] == ["outside", "outside"]       # 1.78, then 18.2


def test_escalation_by_hand():
    """Scores (the first reading is not checked): 2 raises; 7.9 (< 4 x 2) is the largest
    now; 31.6 (= 4 x 7.9) raises; 100 (< 4 x 31.6) and 126.4 (< 4 x 100) do not; three
    inside end the stretch; 2 raises, 9 (> 4 x 2) raises."""
    values = [0, 2, 7.9, 31.6, 100, 126.4, 0, 0, 0, 2, 9]
    assert alerts_of(values) == [(1, "outside"), (3, "outside"), (9, "outside"),
                                 (10, "outside")]
    # at min-run 2 the stretch is the whole run: 9 then 3 raise at 3, and 30 is not 4 x 9
    assert alerts_of([0, 9, 3, 30], min_run=2) == [(2, "outside")]
    assert alerts_of([0, 1.5, 3, 30], min_run=2) == [(2, "outside"), (3, "outside")]


def test_the_stretch_peak_is_saved_and_an_older_state_loads():
    alerts, state = toy()
    for v in (0, 2, 3):
        alerts.observe(state, np.array([v]), np.array([0.0]))
    assert state.alerting and state.peak == 3
    again = AlertState.from_bytes(state.to_bytes())
    assert again.peak == 3 and again.to_bytes() == state.to_bytes()
    body = json.loads(state.to_bytes()[8:])
    del body["peak"]                      # saved before escalation: its stretch's peak unknown
    text = json.dumps(body).encode()
    older = AlertState.from_bytes(b"LEA1" + len(text).to_bytes(4, "little") + text)
    assert older.alerting and older.peak == math.inf
    assert [alerts.observe(older, np.array([v]), np.array([0.0])).alert
            for v in (50, 0, 0, 0, 2, 9)] == ["", "", "", "", "outside", "outside"]
    body["counters"][2] = 0
    text = json.dumps(body).encode()
    assert AlertState.from_bytes(b"LEA1" + len(text).to_bytes(4, "little") + text).peak == 0
    for bad in (-1.0, "3", True):
        body["peak"] = bad
        text = json.dumps(body).encode()
        with pytest.raises(SnapshotError, match="largest score"):
            AlertState.from_bytes(b"LEA1" + len(text).to_bytes(4, "little") + text)


# ---- 7. anomaly None where nothing was checked --------------------------------------------

def test_anomaly_is_none_where_no_reading_was_checked():
    model = runtime.load(WATER, device="cpu")
    monitor = Monitor(model.stream(missing="hold"), AlertConfig(0.9))
    first = monitor.step([101.2])
    assert first.anomaly is None and math.isnan(first.score)
    assert monitor.step([101.4]).anomaly is False
    held = monitor.step([math.nan])                     # a gap, held: not checked
    assert held.anomaly is None and math.isnan(held.score)
    replayed = Monitor(model.stream(), AlertConfig(0.9))
    replayed.step([101.2], at=1)
    assert replayed.step([101.2], at=1).anomaly is None  # a replay of an unchecked answer


# ---- 13. --info on levels that share a quantile ------------------------------------------

def test_info_says_when_a_level_gives_the_interval_below_it(tmp_path):
    import shutil
    path = tmp_path / "m.onnx"
    shutil.copy(WATER, path)
    iv = {"method": "split-conformal", "scale": "none", "levels": [0.8, 0.9, 0.95, 0.99],
          "q": [[1.0], [1.5], [4.947], [4.947]], "n": 77, "source": "test",
          "target_features": [0], "tail": {"fit": "exponential", "upper": 38,
                                           "levels": [0.99]}}
    with_props(path, intervals=json.dumps(iv))
    info, _ = run([path, "--info"])
    line = next(line for line in info.splitlines() if line.startswith("intervals"))
    assert "0.99 gives the 0.95 interval, no wider" in line
    assert "0.9 gives" not in line and "0.95 gives" not in line
    plain, _ = run([WATER, "--info"])
    assert "gives the" not in plain
