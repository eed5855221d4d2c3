"""The alerts' per-reading arithmetic, in Python floats for speed (bench/live.py measures it),
gives the numbers of the interval's definition computed with numpy arrays, to the bit.

The reference is written here from runtime.alerts's notes: the spread is the mean absolute
change over the last ``readings`` differences (those not yet seen counted as ``prior``), at
least ``floor``; the half-width is the level's quantile times the spread; the interval is the
forecast plus or minus it; the score is ``|y - pred| / half-width`` of the forecast made one
reading before. The readings are the whole bundled series, with gaps (NaN, not checked).
"""

from __future__ import annotations

import csv
import math

import numpy as np

import runtime
from runtime.alerts import AlertConfig, Alerts, AlertState, Intervals, Monitor

from helpers import ROOT

WATER = ROOT / "exported" / "water-flow.onnx"


def series() -> np.ndarray:
    with open(ROOT / "data" / "water-flow.csv", newline="") as fh:
        values = np.array([float(r["Water flow [l/s]"]) for r in csv.DictReader(fh)])
    values[[40, 41, 300]] = np.nan                                   # gaps
    return values


def test_the_interval_and_score_are_the_definitions_to_the_bit():
    model = runtime.load(WATER, device="cpu")
    iv = Intervals.from_model(model)
    q = iv.q[iv.level_index(0.9)]                                    # (1,)
    monitor = Monitor(model.stream(missing="hold"), AlertConfig(0.9, stuck=6, cusum=4))
    seen: list[float] = []                                           # finite readings
    before = None                                                    # (pred, half) made last
    for y in series():
        a = monitor.step([y])
        if math.isfinite(y):
            seen = (seen + [y])[-(iv.readings + 1):]
        r = np.array(seen)[:, None]                                  # (seen, 1)
        changes = np.abs(r[1:] - r[:-1]).sum(axis=0)                 # (1,)
        spread = np.maximum((changes + (iv.readings - (len(r) - 1)) * iv.prior) / iv.readings,
                            iv.floor)
        half = q * spread
        pred = a.pred
        assert a.lo.tolist() == (pred - half).tolist() and a.hi.tolist() == (pred + half).tolist()
        if math.isfinite(y) and before is not None:
            assert a.score == abs(y - before[0][0]) / before[1][0]
            assert a.anomaly == (a.score > 1)
        else:
            assert math.isnan(a.score) and a.anomaly is None
        before = (pred, half) if np.isfinite(pred).all() else None


def test_lstm_runs_columns_are_the_answers_columns():
    """``Alerts.columns`` (lstm-run's path, no Answer arrays) against ``observe``'s answer."""
    model = runtime.load(WATER, device="cpu")
    for config in (AlertConfig(0.9, stuck=6, cusum=4), AlertConfig(0.95, hold_off=0, adapt=0.02,
                                                                    cusum=2)):
        alerts, stream = Alerts(model, config), model.stream(missing="hold")
        fast, plain = AlertState(), AlertState()
        for y in series():
            pred = stream.step(np.array([y], np.float32))
            reading = np.array([y])
            assert alerts.columns(fast, reading, pred) == \
                alerts.observe(plain, reading, pred).columns()
        assert fast.to_bytes() == plain.to_bytes()
