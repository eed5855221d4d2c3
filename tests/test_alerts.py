"""Calibrated intervals and alerts: the quantile rule by hand, a stream against
``Model.predict`` offline, the alert state across a restart, and lstm-run's columns through
a real subprocess. The model is the bundled water-flow export with intervals written in."""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import runtime
from runtime.alerts import (AlertConfig, Alerts, AlertsRestarted, AlertState, Intervals,
                            Monitor, local_spread)
from runtime.errors import ContractError, InputError, SnapshotError
from trainer.calibrate import (calibrate, calibrate_file, choose_scale, conformal_quantile,
                               faults, intervals)

from helpers import Q, run, with_intervals, with_props, without_intervals

ROOT = Path(__file__).resolve().parent.parent
WATER = ROOT / "exported" / "water-flow.onnx"
TARGET = "Water flow [l/s]"
@pytest.fixture
def readings() -> np.ndarray:
    with open(ROOT / "data" / "water-flow.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[float(r[TARGET])] for r in rows[:240]])      # (240, 1)


def hygiene(outside, values, min_run, hold_off, stuck, u=None, cusum=0.0, scores=None,
            due=None):
    """The alert rules written out plainly, one reading at a time (the reference); ``u``:
    the standardized residuals Page's CUSUM sums (None where a reading has none); ``scores``:
    each reading's score, for the escalation of a standing alert (4 times its stretch's
    largest score so far; None: no escalation); ``due``: each reading's forecast and
    half-width (one target), for a run below ``min_run``: each reading after its first counts
    where it lies outside the first's interval and outside its own or 4 of those
    half-widths from its centre (None: on each reading's own interval)."""
    alerts, run_, calm, on, same, up, down, worst = [], 0, 0, False, 0, 0.0, 0.0, 0.0
    anchor = None
    for i, (o, v) in enumerate(zip(outside, values)):
        same = same + 1 if i and values[i - 1] == v else 1
        alert = "stuck" if stuck and same == stuck else ""
        if o is None:
            alerts.append(alert)
            continue
        score = scores[i] if scores is not None else 0.0
        if anchor is not None:                 # a run below min_run is open, not standing
            far = abs(v - anchor[0]) / anchor[1]
            o = far > 1 and (o or far >= 4)
        if not o:
            anchor = None
        elif run_ == 0 and not on and min_run > 1 and due is not None:
            anchor = due[i]
        if o:
            run_, calm = run_ + 1, 0
            if on and scores is not None and score >= 4.0 * worst:
                alert, worst = alert or "outside", score           # escalated
            elif on:
                worst = max(worst, score)
            else:
                worst = score if run_ == 1 else max(worst, score)
                if run_ >= min_run:
                    on, alert = hold_off > 0, alert or "outside"   # hold-off 0: none stands
                    anchor = None
        else:
            run_, calm = 0, calm + 1
            if on and calm >= hold_off:
                on = False
        if cusum and (on or (stuck and same >= stuck)):
            up = down = 0.0            # a standing alert or stuck stretch is reported already
        elif cusum:
            step = min(max(u[i], -3.0), 3.0)
            up, down = max(0.0, up + step - 0.5), max(0.0, down - step - 0.5)
            if max(up, down) > cusum:
                up = down = 0.0
                alert = alert or "shift"
        alerts.append(alert)
    return alerts


# ---- the rules by hand ------------------------------------------------------------------

def test_conformal_quantile_by_hand():
    scores = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6])   # n = 9
    assert conformal_quantile(scores, 0.5) == 0.5     # ceil(10 * 0.5) = 5th smallest
    assert conformal_quantile(scores, 0.8) == 0.8     # ceil(8.0) = 8th
    assert conformal_quantile(scores, 0.85) == 0.9    # ceil(8.5) = 9th
    # ceil(9.5) = 10 > 9: the tail. k = 4 scores above u = 0.5, excesses 0.1-0.4, mean 0.25;
    # a new score exceeds u with probability 5 / 10, and 0.95 needs 0.05 beyond it
    assert conformal_quantile(scores, 0.95) == pytest.approx(0.5 + 0.25 * math.log(5 / 0.5))
    # one outlier: the exponential fit says 1 + 2.25 ln(10) = 6.2, the largest is 10
    assert conformal_quantile(np.array([1.0] * 8 + [10.0]), 0.95) == 10.0
    assert conformal_quantile(np.array([2.0]), 0.99) == 2.0       # nothing to fit: the score
    found = calibrate(np.array([[1.0], [2.0], [4.0]]), np.array([[0.0], [0.0], [0.0]]),
                      np.array([[1.0], [4.0], [1.0]]), levels=(0.5,))
    assert found == {"levels": [0.5], "q": [[1.0]], "n": 3}   # scores 1, 0.5, 4: 2nd


@pytest.mark.parametrize("draw, least", [(lambda rng, m: np.abs(rng.normal(size=m)), 0.985),
                                         (lambda rng, m: rng.exponential(size=m), 0.975)])
def test_the_tail_covers_what_the_largest_score_cannot(draw, least):
    """On 21 scores the 99 % rank runs out; a Monte Carlo reference: over many samples, the
    share of fresh scores from the same law at or below the quantile. The largest score
    alone covers 21 / 22 of them; the tail nearly the level (module notes: 99.2 / 98.2 %)."""
    rng = np.random.default_rng(7)
    tail, largest = [], []
    for _ in range(2000):
        scores, fresh = draw(rng, 21), draw(rng, 100)
        tail.append(np.mean(fresh <= conformal_quantile(scores, 0.99)))
        largest.append(np.mean(fresh <= scores.max()))
    assert np.mean(largest) == pytest.approx(21 / 22, abs=0.005)
    assert least <= np.mean(tail) < 0.995
    found = calibrate(np.zeros((21, 1)), draw(rng, 21)[:, None], None)
    assert found["n"] == 21 and found["tail"] == {"fit": "exponential", "upper": 10,
                                                  "levels": [0.99]}
    assert "tail" not in calibrate(np.zeros((99, 1)), draw(rng, 99)[:, None], None)


def _chance(top: float, rest: np.ndarray) -> float:
    """What the exponential tail of ``rest`` gives a new score of reaching ``top``, written
    out: threshold with k = n // 2 scores above it, their mean excess."""
    rest = np.sort(rest)
    n, k = len(rest), len(rest) // 2
    u = rest[n - k - 1]
    return (k + 1) / (n + 1) * math.exp(-(top - u) / np.mean(rest[n - k:] - u))


def test_faults_in_the_calibration_rows_are_left_out_by_hand():
    """Scores like the demo's validation rows: normal ones and a dropout's three. The
    dropout's are left out (each beyond 1e-6 under the tail of those below it), the largest
    normal one is not; the levels whose rank lies below the faults keep their quantile,
    the 99 % level (rank 165 of 165) takes the normal rows' own (rank 162 of 162)."""
    rng = np.random.default_rng(5)
    clean = np.abs(rng.normal(size=162))
    dropout = [49.3, 26.4, 14.5]
    found = calibrate(np.zeros((165, 1)), np.r_[clean, dropout][:, None], None)
    assert found["left_out"] == {"p": 1e-6, "scores": [dropout]} and found["n"] == 165
    assert _chance(14.5, clean) < 1e-6 <= _chance(clean.max(), np.sort(clean)[:-1])
    everything = np.sort(np.r_[clean, dropout])
    assert found["q"] == [[everything[math.ceil(166 * level) - 1]] for level in (0.8, 0.9, 0.95)] \
        + [[clean.max()]]
    assert "left_out" not in calibrate(np.zeros((162, 1)), clean[:, None], None)
    # at most 5 % of the rows: of three faults among 40 rows, two are left out, and the
    # third is then the largest normal score the 95 % level (rank 39 of 40) takes
    many = calibrate(np.zeros((40, 1)), np.r_[clean[:37], 100.0, 200.0, 300.0][:, None], None)
    assert many["left_out"]["scores"] == [[300.0, 200.0]] and many["q"][2] == [100.0]
    assert len(faults(np.r_[np.abs(rng.normal(size=18)), 50.0])) == 0   # fewer than 20


@pytest.mark.parametrize("draw, most", [(lambda rng, m: np.abs(rng.normal(size=m)), 0.0),
                                        (lambda rng, m: rng.exponential(size=m), 0.01),
                                        (lambda rng, m: np.abs(rng.standard_t(3, size=m)), 0.2)])
def test_the_fault_rule_spares_clean_scores(draw, most):
    """Monte Carlo over clean scores (no faults): how often anything is left out (module
    notes: never, 0.1 % and 12 % of 165 scores), and the 99 % quantile still covers a fresh
    score nearly as often as without the rule."""
    rng = np.random.default_rng(11)
    fired, covered, plain = 0, [], []
    for _ in range(400):
        scores, fresh = draw(rng, 165), draw(rng, 200)
        found = calibrate(np.zeros((165, 1)), scores[:, None], None, levels=(0.99,))
        fired += "left_out" in found
        covered.append(np.mean(fresh <= found["q"][0][0]))
        plain.append(np.mean(fresh <= conformal_quantile(scores, 0.99)))
    assert fired <= most * 400
    assert np.mean(covered) >= np.mean(plain) - 0.005 and np.mean(covered) >= 0.985


def test_local_spread_by_hand():
    v = np.array([[10.0], [12.0], [11.0], [11.0], [11.0]])
    got = local_spread(v, readings=2, floor=np.array([0.25]), prior=np.array([1.0]))[:, 0]
    # (2 priors)/2, (1 prior + 2)/2, (2 + 1)/2, (1 + 0)/2, (0 + 0)/2 -> floor
    np.testing.assert_allclose(got, [1.0, 1.5, 1.5, 0.5, 0.25])


def test_bad_intervals_are_refused():
    with pytest.raises(ContractError, match="q must be"):
        Intervals.parse(json.dumps({"levels": [0.9], "q": [[1.0, 2.0]]}), 1)
    with pytest.raises(ContractError, match="scale must be"):
        Intervals.parse(json.dumps({"levels": [0.9], "q": [[1.0]], "scale": "x"}), 1)
    with pytest.raises(ContractError, match="cannot be read"):
        Intervals.parse("{", 1)


# ---- a stream against Model.predict -----------------------------------------------------

@pytest.mark.parametrize("scale", ["mean-abs-change", "none"])
def test_stream_equals_offline_predict(tmp_path, readings, scale):
    model = runtime.load(with_intervals(tmp_path / "m.onnx", scale), device="cpu")
    cfg = AlertConfig(level=0.9, min_run=2, hold_off=3, stuck=3, cusum=2.0)
    readings = readings.copy()
    readings[100:104] = readings[99]                     # stuck for five readings
    readings[150:153] += 3.0                             # a level shift of three readings
    readings[180:200, 0] += np.linspace(0.05, 1.0, 20)   # a slow drift
    monitor = Monitor(model.stream(), cfg)
    answers = [monitor.step(r) for r in readings]

    pred = model.predict(readings[None])[0].astype(np.float64)       # (rows, 1)
    spread = (local_spread(readings, 6, np.array([0.02]), np.array([0.3]))
              if scale != "none" else np.ones_like(readings))
    half = Q[1][0] * spread
    np.testing.assert_allclose([a.lo for a in answers], pred - half, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose([a.hi for a in answers], pred + half, rtol=1e-5, atol=1e-4)
    score = np.abs(readings[1:] - pred[:-1]) / half[:-1]              # horizon 1
    assert math.isnan(answers[0].score)
    np.testing.assert_allclose([a.score for a in answers[1:]], score[:, 0], rtol=1e-4)
    outside = [None] + [bool(s > 1) for s in score[:, 0]]
    assert [a.anomaly for a in answers[1:]] == outside[1:]
    # CUSUM's unit: the 80 % interval's half-width of the forecast the reading is checked on
    u = [None] + list((readings[1:] - pred[:-1])[:, 0] / (Q[0][0] * spread[:-1, 0]))
    due = [None] + list(zip(pred[:-1, 0], half[:-1, 0]))
    want = hygiene(outside, readings[:, 0].tolist(), 2, 3, 3, u, cusum=2.0,
                   scores=[None] + list(score[:, 0]), due=due)
    assert [a.alert for a in answers] == want
    assert {"stuck", "outside", "shift"} <= set(want)


def tracked(readings, pred, spread, q, level, rate, horizon=1):
    """The quantile tracker written out plainly (the reference): the quantile each forecast's
    interval takes, moved by each checked reading's miss."""
    working, used = q, []
    for i in range(len(readings)):
        if i >= horizon:
            miss = abs(readings[i] - pred[i - horizon]) > used[i - horizon] * spread[i - horizon]
            working += rate * q * (float(miss) - (1 - level))
        used.append(max(working, 0.0))
    return np.array(used)


def test_adapting_stream_equals_the_tracker_by_hand(tmp_path, readings):
    """--adapt: each interval from the working quantile, moved by every miss and hit."""
    model = runtime.load(with_intervals(tmp_path / "m.onnx"), device="cpu")
    readings = readings.copy()
    readings[120:, 0] = readings[120] + 3.0 * (readings[120:, 0] - readings[120, 0])  # wilder
    cfg = AlertConfig(level=0.9, min_run=2, hold_off=3, cusum=2.0, adapt=0.05)
    monitor = Monitor(model.stream(), cfg)
    answers = [monitor.step(r) for r in readings]

    pred = model.predict(readings[None])[0].astype(np.float64)[:, 0]     # (rows,)
    spread = local_spread(readings, 6, np.array([0.02]), np.array([0.3]))[:, 0]
    q = tracked(readings[:, 0], pred, spread, Q[1][0], 0.9, 0.05)
    np.testing.assert_allclose([a.hi[0] - a.pred[0] for a in answers], q * spread, rtol=1e-5)
    score = np.abs(readings[1:, 0] - pred[:-1]) / (q * spread)[:-1]
    np.testing.assert_allclose([a.score for a in answers[1:]], score, rtol=1e-4)
    outside = [None] + [bool(s > 1) for s in score]
    assert [a.anomaly for a in answers[1:]] == outside[1:]
    # CUSUM's unit: the 80 % half-width, scaled as the working interval is
    u = [None] + list((readings[1:, 0] - pred[:-1]) / (Q[0][0] * spread[:-1] * q[:-1] / Q[1][0]))
    due = [None] + list(zip(pred[:-1], (q * spread)[:-1]))
    assert [a.alert for a in answers] == hygiene(outside, readings[:, 0].tolist(), 2, 3, 0, u,
                                                 cusum=2.0, scores=[None] + list(score),
                                                 due=due)
    # the wilder stretch widened the intervals, on average by more than half the file's width
    assert q[150:].mean() > max(1.5 * Q[1][0], 1.3 * q[:120].mean())
    misses = np.mean([a.anomaly for a in answers[200:]])
    fixed = Monitor(model.stream(), AlertConfig(level=0.9))
    fixed_misses = np.mean([a.anomaly for a in [fixed.step(r) for r in readings][200:]])
    assert abs(misses - 0.1) < abs(fixed_misses - 0.1)


def test_the_tracker_keeps_its_coverage_promise_under_drift():
    """Angelopoulos et al. 2023, Proposition 1: over T checked readings with scores at most
    B, the share of misses lies within (B + eta) / (eta T) of 1 - L, eta = rate * q_L,
    whatever the errors do; the file's fixed quantile misses a third of them here."""
    iv = json.dumps({"levels": [0.9], "q": [[1.645]], "scale": "none", "target_features": [0]})
    model = SimpleNamespace(info=SimpleNamespace(extra={"intervals": iv}, horizon=1),
                            n_targets=1, targets=("y",))
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 500), rng.normal(0, 1, 2500) * np.linspace(1, 4, 2500)])
    for rate, near in ((0.05, True), (0.0, False)):
        alerts, state = Alerts(model, AlertConfig(level=0.9, adapt=rate)), AlertState()
        got = [alerts.observe(state, np.array([v]), np.array([0.0])) for v in values]
        misses = np.mean([a.anomaly for a in got[1:]])
        bound = (np.abs(values).max() + rate * 1.645) / (rate * 1.645 * (len(values) - 1)) \
            if rate else 0.0
        assert (abs(misses - 0.1) <= bound) == near and (near or misses > 0.3)


@pytest.mark.parametrize("cfg", [AlertConfig(level=0.99, hold_off=2, cusum=2.0),
                                 AlertConfig(level=0.8, hold_off=2, adapt=0.1)],
                         ids=["cusum", "adapt"])
def test_alert_state_survives_a_restart(tmp_path, readings, cfg):
    model = runtime.load(with_intervals(tmp_path / "m.onnx"), device="cpu")
    whole = Monitor(model.stream(), cfg)
    expected = [whole.step(r) for r in readings]
    cut = 70                                     # the restart: shifts and misses after it
    assert "shift" in [a.alert for a in expected[cut:]] or not cfg.cusum
    first = Monitor(model.stream(), cfg)
    for r in readings[:cut]:
        first.step(r)
    first.stream.snapshot().save(tmp_path / "s.npz")
    saved = first.state.to_bytes()
    if cfg.cusum:
        assert max(c.max() for c in first.state.cusum) > 0      # CUSUM sums carried over
    else:                                                       # the working quantile
        assert first.state.adapted[1][0] != pytest.approx(Q[0][0])
    again = Monitor(model.stream(tmp_path / "s.npz"), cfg, saved)
    got = [again.step(r) for r in readings[cut:]]
    for a, b in zip(got, expected[cut:]):
        np.testing.assert_allclose(a.lo, b.lo, rtol=1e-6)
        assert (a.score, a.anomaly, a.alert) == pytest.approx((b.score, b.anomaly, b.alert))
    for bad in (b"", saved[:-3], b"LEA1" + saved[4:8] + b"x" * (len(saved) - 8)):
        with pytest.raises(SnapshotError):
            AlertState.from_bytes(bad)
    with pytest.raises(SnapshotError, match="another model"):
        Monitor(model.stream(), cfg, AlertState(cusum=[np.zeros(2)] * 2).to_bytes())
    body = json.loads(AlertState(run=2).to_bytes()[8:])
    del body["cusum"]                               # a state saved before CUSUM: sums at 0
    body = json.dumps(body).encode()
    older = AlertState.from_bytes(b"LEA1" + len(body).to_bytes(4, "little") + body)
    assert older.run == 2 and older.cusum == [] and older.adapted is None
    body = json.loads(saved[8:])
    for bad in ({"level": 0.99, "q": [float("nan")]}, {"q": [1.0]}, {"level": 0.99, "q": 1.0}):
        body["adapted"] = bad
        text = json.dumps(body).encode()
        with pytest.raises(SnapshotError, match="alert state cannot be read"):
            AlertState.from_bytes(b"LEA1" + len(text).to_bytes(4, "little") + text)
    with pytest.raises(SnapshotError, match="another model"):
        Monitor(model.stream(), cfg, AlertState(adapted=(0.99, np.ones(2))).to_bytes())
    # kept under other settings, the state starts afresh, said (tests/test_alerts_restart.py)
    with pytest.warns(AlertsRestarted, match=r"kept under AlertConfig\(level="):
        other = Monitor(model.stream(tmp_path / "s.npz"), AlertConfig(level=0.9, adapt=0.05),
                        saved)
    assert other.state.to_bytes() == AlertState(model=model.fingerprint).to_bytes()
    # saved before settings were recorded: taken as it is, and a working quantile of another
    # level starts afresh from the file's
    body = json.loads(saved[8:])
    del body["settings"]
    text = json.dumps(body).encode()
    older = b"LEA1" + len(text).to_bytes(4, "little") + text
    other = Monitor(model.stream(tmp_path / "s.npz"), AlertConfig(level=0.9, adapt=0.05), older)
    a = other.step(readings[cut])                 # checked: one step from the file's 0.9
    q = Q[1][0] * (1 + 0.05 * (float(a.anomaly) - 0.1))
    assert other.state.adapted[0] == 0.9 and other.state.adapted[1][0] == pytest.approx(q)
    assert a.hi[0] - a.pred[0] == pytest.approx(q * other.alerts.spread(other.state)[0])
    with pytest.raises(SnapshotError, match="another model"):
        Monitor(model.stream(), cfg, AlertState(recent=[np.zeros(3)]).to_bytes())


def test_hygiene_min_run_and_hold_off():
    """Forecasts of 0 with half-width 1: a reading beyond ±1 is outside."""
    iv = json.dumps({"levels": [0.9], "q": [[1.0]], "scale": "none", "target_features": [0]})
    model = SimpleNamespace(info=SimpleNamespace(extra={"intervals": iv}, horizon=1),
                            n_targets=1, targets=("y",))
    alerts = Alerts(model, AlertConfig(level=0.9, min_run=2, hold_off=2))
    state = AlertState()
    values = [0, 5, 0, 5, 5, 5, 0, 5, 5, 0, 0, 5, 5, 0.5, 0.25, 0.125]
    got = [alerts.observe(state, np.array([v]), np.array([0.0])).alert for v in values]
    # one alert once two in a row fell outside; the inside reading at 6 is not hold-off 2
    assert [i for i, a in enumerate(got) if a] == [4, 12]
    with pytest.raises(InputError, match="min_run"):
        AlertConfig(min_run=0)
    with pytest.raises(InputError, match="level 0.5"):
        Alerts(model, AlertConfig(level=0.5))


# ---- the scale chosen on the calibration rows alone --------------------------------------

def _regimes(seed: int = 0, rows: int = 240):
    """A random walk whose volatility switches every 20 readings (0.1 / 2), and the
    persistence forecast of it: its errors are the next change, as volatile as the walk."""
    rng = np.random.default_rng(seed)
    scale = np.where((np.arange(rows) // 20) % 2 == 0, 0.1, 2.0)
    y = np.cumsum(rng.normal(0, 1, rows) * scale)[:, None]          # (rows, 1)
    last = np.arange(120, rows - 1)
    return y, y[last], last


def test_choose_scale_crossfits_the_raw_quantile_by_hand():
    y, pred, last = _regimes()
    found = choose_scale(y, pred, last, 1, y[:120], candidates=(("none", 0),))
    r = np.abs(y[last + 1] - pred)[:, 0]
    halves = (r[:len(r) // 2], r[len(r) // 2:])
    inside = width = loss = 0.0
    for fit_on, judged in (halves, halves[::-1]):
        q90 = conformal_quantile(fit_on, 0.9)
        inside, width = inside + (judged <= q90).sum(), width + 2 * q90 * len(judged)
        for level in (0.8, 0.9, 0.95, 0.99):      # the weighted interval score, by hand
            q = conformal_quantile(fit_on, level)
            loss += ((1 - level) * q * len(judged) + np.maximum(judged - q, 0).sum())
    mean_change = np.abs(np.diff(y[:120, 0])).mean()
    got = found["figures"][0]
    assert got["coverage"] == pytest.approx(inside / len(r))
    assert got["width"] == pytest.approx(width / len(r))
    assert got["score"] == pytest.approx(loss / len(r) / mean_change)


def test_choose_scale_prefers_the_local_spread_where_errors_follow_it():
    y, pred, last = _regimes()
    found = choose_scale(y, pred, last, 1, y[:120])
    assert found["chosen"][0] == "mean-abs-change"
    by = {(f["scale"], f["readings"]): f for f in found["figures"]}
    assert by[found["chosen"]]["width"] < by[("none", 0)]["width"]
    iv = intervals(y, pred, last, 1, [0], "validation", y[:120])     # chooses the same
    assert (iv["scale"], iv["spread"]["readings"]) == found["chosen"]
    assert intervals(y, pred, last, 1, [None], "v", y[:120])["scale"] == "none"


# ---- calibration from a CSV ---------------------------------------------------------------

def test_calibrate_file_applies_the_rule_to_the_runtime_residuals(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(WATER.read_bytes())
    rows = (ROOT / "data" / "water-flow.csv").read_text().splitlines()[:301]
    (tmp_path / "cal.csv").write_text("\n".join(rows) + "\n")
    found = calibrate_file(path, tmp_path / "cal.csv")
    y = np.array([[float(r.split(",")[1])] for r in rows[1:]])          # (300, 1)
    model = runtime.load(path, device="cpu")
    pred = model.predict(y[None])[0].astype(np.float64)[:-1]
    spread = np.ones_like(y[:-1])
    if found["scale"] != "none":
        spread = local_spread(y, found["spread"]["readings"],
                              np.array(found["spread"]["floor"]),
                              np.array(found["spread"]["prior"]))[:-1]
    scores = np.sort(np.abs(y[1:] - pred)[:, 0] / spread[:, 0])
    assert found["n"] == 299 and found["source"] == "calibration CSV cal.csv"
    left = found["left_out"]["scores"][0]                # these rows hold faults
    np.testing.assert_allclose(left, scores[::-1][:len(left)], rtol=1e-4)
    kept = scores[:len(scores) - len(left)]
    assert _chance(left[-1], kept) < 1e-6 <= _chance(kept[-1], kept[:-1])
    for level, q in zip(found["levels"], found["q"]):
        rank = math.ceil(300 * level)                  # among all 299, faults counted
        if rank > len(kept):                           # among the faults: the kept rows' rank
            rank = min(math.ceil((len(kept) + 1) * level), len(kept))
        assert q[0] == pytest.approx(scores[rank - 1], rel=1e-4)
    assert Intervals.from_model(model) is not None


def test_wrong_arguments_to_the_python_api_are_input_errors(tmp_path):
    """Not a stream, not a config number, not alert-state bytes: InputError, not
    AttributeError or TypeError from inside; the bytes of a saved state in any buffer."""
    model = runtime.load(WATER, device="cpu")
    for call, says in [(lambda: model.step([1, 2], np.full((2, 1), 101.0)), "model.stream()"),
                       (lambda: Monitor(model, AlertConfig()), "got Model"),
                       (lambda: Monitor(model.stream(), AlertConfig(), "x"), "got str"),
                       (lambda: AlertConfig(level="0.9"), "level must be a number"),
                       (lambda: AlertConfig(level=None), "level must be a number")]:
        with pytest.raises(InputError, match=says):
            call()
    first = Monitor(model.stream(), AlertConfig())
    first.step([101.0])
    first.stream.snapshot().save(tmp_path / "s.npz")
    again = Monitor(model.stream(tmp_path / "s.npz"), AlertConfig(),
                    bytearray(first.state.to_bytes()))
    assert again.state.to_bytes() == first.state.to_bytes()


def test_calibrate_file_names_the_extra_on_a_runtime_only_install(tmp_path, monkeypatch):
    """Without the onnx package (the runtime alone): MissingExtra naming the train extra."""
    from runtime.errors import MissingExtra
    monkeypatch.setitem(sys.modules, "onnx", None)          # import onnx raises ImportError
    with pytest.raises(MissingExtra, match=r"lstm-edge\[cpu,train\]"):
        calibrate_file(WATER, tmp_path / "cal.csv")


def test_calibrate_file_takes_a_forecast_block_and_refuses_a_reconstruction(tmp_path):
    """A forecast block is calibrated per column (tests/test_block_alerts.py): one of one
    step is the one-step model and gets its intervals. A reconstruction forecasts nothing:
    a DataError in one line pointing to its score column, and the file left as it was."""
    from trainer.errors import DataError
    rows = (ROOT / "data" / "water-flow.csv").read_text().splitlines()[:60]
    (tmp_path / "cal.csv").write_text("\n".join(rows) + "\n")
    found = {}
    for kind in ("forecast", "none"):
        (tmp_path / f"{kind}.onnx").write_bytes(without_intervals(tmp_path / "m.onnx")
                                                .read_bytes())
        path = tmp_path / f"{kind}.onnx"
        if kind == "forecast":
            with_props(path, block=json.dumps({"kind": kind, "steps": 1, "names": [TARGET]}))
        found[kind] = calibrate_file(path, tmp_path / "cal.csv")
    assert found["forecast"] == found["none"]
    path = with_props(tmp_path / "none.onnx", block=json.dumps(
        {"kind": "reconstruction", "steps": 1, "names": [TARGET]}))
    before = path.read_bytes()
    with pytest.raises(DataError, match="rebuilds its window .* score column") as caught:
        calibrate_file(path, tmp_path / "cal.csv")
    assert "\n" not in str(caught.value)
    assert path.read_bytes() == before


# ---- lstm-run ---------------------------------------------------------------------------

def _table(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_lstm_run_alert_columns_match_the_python_api(tmp_path, readings):
    path = with_intervals(tmp_path / "m.onnx")
    data = (f"{TARGET}\n" + "".join(f"{v}\n" for v in readings[:80, 0])).encode()
    out, _ = run([path, "--interval", "0.95", "--stuck", "3", "--cusum", "1.5", "--adapt",
                  "0.1"], data)
    rows = _table(out)
    assert list(rows[0]) == [TARGET, "step", "warmup", f"pred_{TARGET}", f"lo_{TARGET}",
                             f"hi_{TARGET}", "anomaly", "score", "alert", "error", "input"]
    monitor = Monitor(runtime.load(path, device="cpu").stream(),
                      AlertConfig(0.95, 1, 3, 3, cusum=1.5, adapt=0.1))
    for row, r in zip(rows, readings[:80]):
        a = monitor.step(r)
        assert float(row[f"lo_{TARGET}"]) == pytest.approx(a.lo[0], rel=1e-6)
        assert float(row[f"hi_{TARGET}"]) == pytest.approx(a.hi[0], rel=1e-6)
        assert row["anomaly"] == ("" if math.isnan(a.score) else str(a.anomaly).lower())
        assert row["alert"] == a.alert
    jsonl = "".join(json.dumps({TARGET: float(v), "sensor": "a"}) + "\n" for v in readings[:5, 0])
    out, _ = run([path, "--interval", "0.9", "--format", "jsonl"], jsonl.encode())
    first, second = (json.loads(line) for line in out.splitlines()[:2])
    assert first["anomaly"] is None and isinstance(second["anomaly"], bool)
    assert second[f"hi_{TARGET}"] > second[f"lo_{TARGET}"]


def test_a_replay_gets_the_alert_columns_it_got_then(tmp_path):
    """A reading delivered again (a restarted feed, a broker's redelivery) is answered as
    before, its interval, score and alert included: in the same run and after a restart."""
    rows = (ROOT / "data" / "water-flow.csv").read_text().splitlines(keepends=True)[:41]
    rows[30] = rows[30].split(",")[0] + ",140.0\n"                 # a spike: an alert
    args = [with_intervals(tmp_path / "m.onnx"), "--interval", "0.9"]
    whole = _table(run(args, "".join(rows).encode())[0])
    assert whole[29]["alert"] == "outside"
    again = _table(run(args, "".join(rows[:31] + rows[30:31]).encode())[0])
    keys = [k for k in whole[0] if k not in ("order", "error", "input")]
    assert again[30]["order"] == "replay"
    assert [again[30][k] for k in keys] == [whole[29][k] for k in keys]
    state = tmp_path / "s.db"
    run(args + ["--state", state], "".join(rows[:31]).encode())
    resent = _table(run(args + ["--state", state], "".join(rows[:1] + rows[30:]).encode())[0])
    assert resent[0]["order"] == "replay"
    assert [[r[k] for k in keys] for r in resent] == [[r[k] for k in keys] for r in whole[29:]]


def test_lstm_run_alerts_resume_with_state(tmp_path, readings):
    path = with_intervals(tmp_path / "m.onnx")
    lines = [f"{TARGET}\n"] + [f"{v}\n" for v in readings[:60, 0]]
    args = [path, "--interval", "0.8", "--hold-off", "1", "--adapt", "0.1"]
    whole = _table(run(args, "".join(lines).encode())[0])
    state = tmp_path / "s.db"
    run(args + ["--state", state], "".join(lines[:31]).encode())
    (key, snap), = runtime.load_snapshots(state).items()
    assert "alerts" in snap.sections         # saved with the stream state, in one commit
    rest = _table(run(args + ["--state", state], "".join(lines[:1] + lines[31:]).encode())[0])
    keys = (f"lo_{TARGET}", "anomaly", "score", "alert")
    assert [[r[k] for k in keys] for r in rest] == [[r[k] for k in keys] for r in whole[30:]]
    plain = _table(run(args[:-2], "".join(lines).encode())[0])      # the quantile did move
    assert [r[f"lo_{TARGET}"] for r in plain[30:]] != [r[f"lo_{TARGET}"] for r in whole[30:]]
    snap.sections["alerts"] = b"not an alert state"
    bad = tmp_path / "bad.npz"
    runtime.save_snapshots(bad, {key: snap})
    _, err = run(args + ["--state", bad], "".join(lines[:2]).encode(), code=2)
    assert "saved alert state cannot be used" in err and "Traceback" not in err


def test_lstm_run_refuses_a_model_without_intervals(tmp_path):
    _, err = run([without_intervals(tmp_path / "plain.onnx"), "--interval", "0.9"],
                 f"{TARGET}\n1.0\n".encode(), code=2)
    assert err.strip().splitlines()[-1].startswith("Error: the model has no calibrated")
    info, _ = run([with_intervals(tmp_path / "m.onnx"), "--info"])
    assert "calibrated at 0.8, 0.9, 0.95, 0.99 on 99 rows (test" in info


# ---- lstm-train and lstm-export ---------------------------------------------------------

@pytest.mark.slow
def test_train_reports_coverage_and_export_writes_the_intervals(tmp_path):
    import subprocess
    import sys

    import onnx

    bin_ = Path(sys.executable).parent

    def tool(*args):
        proc = subprocess.run([str(bin_ / args[0]), *map(str, args[1:])], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        return proc.stdout

    out = tool("lstm-train", ROOT / "data" / "water-flow.csv", "--target", TARGET, "--mode",
               "sequence", "--look-back", 6, "--units", 4, "--epochs", 1, "--quiet",
               "--plot", "tail.png", "-o", "m.keras")
    side = json.loads((tmp_path / "m.lstm-edge.json").read_text())
    iv, metrics = side["intervals"], side["metrics"]
    assert iv["source"] == "validation" and iv["n"] == metrics["validation"]["steps"]
    line = next(r for r in out.splitlines() if "test coverage" in r)
    for figure in metrics["test"]["intervals"]:
        assert f"{figure['level']:.0%} {figure['coverage'][0]:.1%}" in line
    assert (tmp_path / "tail.png").stat().st_size > 0

    tool("lstm-export", "m.keras", "-o", "m.onnx", "--no-check")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["lstm_edge.intervals"]) == iv
    rows = (ROOT / "data" / "water-flow.csv").read_text().splitlines()
    (tmp_path / "cal.csv").write_text("\n".join(rows[:1] + rows[889:1080]) + "\n")
    assert "calibration CSV cal.csv" in tool("lstm-export", "m.keras", "-o", "c.onnx",
                                             "--no-check", "--calibrate", "cal.csv")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "c.onnx")).metadata_props}
    assert json.loads(props["lstm_edge.intervals"])["n"] == 191 - 1   # readings - horizon


def test_lstm_run_keeps_one_alert_state_per_sensor(tmp_path, readings):
    """Two sensors interleaved (stepped together in one call) answer as each one alone, the
    adapting quantile included."""
    path = with_intervals(tmp_path / "m.onnx")
    a, b = readings[:40, 0], readings[100:140, 0] + 5.0
    mixed = "".join(json.dumps({"sensor": s, TARGET: float(v)}) + "\n"
                    for pair in zip(a, b) for s, v in zip("ab", pair))
    args = [path, "--interval", "0.8", "--stream-column", "sensor", "--stuck", "2", "--adapt",
            "0.2"]                             # each sensor's working quantile its own
    out = [json.loads(line) for line in run(args, mixed.encode())[0].splitlines()]
    for name, values in (("a", a), ("b", b)):
        alone = "".join(json.dumps({"sensor": name, TARGET: float(v)}) + "\n" for v in values)
        want = [json.loads(line) for line in run(args, alone.encode())[0].splitlines()]
        got = [r for r in out if r["sensor"] == name]
        assert [(r["anomaly"], r["alert"]) for r in got] == \
            [(r["anomaly"], r["alert"]) for r in want]
        for k in (f"lo_{TARGET}", "score"):                 # the first score is null
            assert [r[k] for r in got[1:]] == pytest.approx([r[k] for r in want[1:]], rel=1e-5)
            assert got[0]["score"] is want[0]["score"] is None


# ---- settings that are not numbers the rules can use, and positions --------------------

@pytest.mark.parametrize("field, value, says", [
    ("cusum", math.nan, "cusum must be a finite number at least 0 (0: off), got nan"),
    ("cusum", math.inf, "cusum must be a finite number at least 0 (0: off), got inf"),
    ("adapt", math.nan, "adapt must be a finite number at least 0 (0: off), got nan"),
    ("adapt", -math.inf, "adapt must be a finite number at least 0 (0: off), got -inf"),
    ("min_run", 2.5, "min_run must be a whole number at least 1, got 2.5"),
    ("min_run", math.nan, "min_run must be a whole number at least 1, got nan"),
    ("hold_off", math.inf, "hold_off must be a whole number at least 0, got inf"),
    ("stuck", math.nan, "stuck must be a whole number at least 0 (0: off), got nan"),
    ("stuck", 1.5, "stuck must be a whole number at least 0 (0: off), got 1.5"),
    ("level", math.nan, "level must lie between 0 and 1, got nan"),
])
def test_alert_settings_refuse_nan_inf_and_part_counts(field, value, says):
    """NaN compares False with every bound, so a NaN CUSUM threshold raised an alert at
    every reading's check and a NaN adapt rate poisoned the working quantile (a numpy
    warning); a count of 2.5 readings is no count. Each is one InputError line."""
    with pytest.raises(InputError) as caught:
        AlertConfig(**{field: value})
    assert str(caught.value) == says


def test_alert_settings_take_whole_floats_as_counts():
    cfg = AlertConfig(min_run=2.0, hold_off=np.float32(3), stuck=np.int64(4))
    assert (cfg.min_run, cfg.hold_off, cfg.stuck) == (2, 3, 4)
    assert all(type(v) is int for v in (cfg.min_run, cfg.hold_off, cfg.stuck))


@pytest.mark.parametrize("option", ["--cusum", "--adapt"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_lstm_run_refuses_a_nan_or_inf_alert_setting_in_one_line(tmp_path, readings, option,
                                                                  value):
    data = (f"{TARGET}\n" + "".join(f"{v}\n" for v in readings[:20, 0])).encode()
    out, err = run([WATER, "--stream", "--interval", "0.9", option, value], data, code=2)
    assert out == ""
    assert err.strip().splitlines() == [
        f"Error: {option[2:]} must be a finite number at least 0 (0: off), got {value}"]


def test_monitor_step_takes_positions_and_a_replay_leaves_the_alert_state(readings):
    """``Monitor.step(reading, at=...)`` applies the stream's order rule: each reading sent
    twice gives the same answers and alert state as once, and its replay the answer it got
    (an alert raised once, not twice); an older position is skipped, another reading at the
    last position refused."""
    model = runtime.load(WATER, device="cpu")
    cfg = AlertConfig(level=0.99, hold_off=2, cusum=2.0)
    once, twice = Monitor(model.stream(), cfg), Monitor(model.stream(), cfg)
    alerts = []
    for t, r in enumerate(readings):
        a = once.step(r)
        b = twice.step(r, at=t)
        again = twice.step(r, at=t)                          # a resend: replayed
        for got in (b, again):
            np.testing.assert_allclose(got.pred, a.pred, rtol=1e-6)
            np.testing.assert_allclose(got.lo, a.lo, rtol=1e-6)
            np.testing.assert_allclose(got.hi, a.hi, rtol=1e-6)
            assert (got.anomaly, got.alert) == (a.anomaly, a.alert)
            assert got.score == pytest.approx(a.score, nan_ok=True)
        alerts.append(a.alert)
    assert "shift" in alerts and "outside" in alerts       # replays raised none twice
    assert (once.state.cusum[0] == twice.state.cusum[0]).all()
    assert (once.state.run, once.state.calm, once.state.alerting) == \
        (twice.state.run, twice.state.calm, twice.state.alerting)
    assert twice.stream.steps == len(readings)
    assert twice.step(readings[3], at=3) is None              # old: skipped
    with pytest.raises(InputError, match="already fed with other values"):
        twice.step(readings[-1] + 1, at=len(readings) - 1)
    # the replay's answer survives a restart with the alert state
    later = Monitor(model.stream(twice.stream.snapshot()), cfg, twice.state.to_bytes())
    replay = later.step(readings[-1], at=len(readings) - 1)
    np.testing.assert_allclose(replay.lo, a.lo, rtol=1e-6)
    assert later.state.to_bytes() == twice.state.to_bytes()
