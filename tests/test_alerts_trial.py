"""What a new user's trial of ``lstm-run --interval`` found: runs of misses counted against
the forecast they began from (a dropout that stays, a spike, across a ``--state`` restart),
``--stuck 1`` refused, ``--info`` on the interval's horizon and on a file without intervals,
the Python API's messages in its own words, and a second BOM on line 1.

The faults are the bundled series' own readings (200 from 2022-03-26T17:00, as
tests/test_alert_rules.py takes them) with one fault each, placed on calm stretches (every
reading within its interval for at least ten readings before)."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import runtime
from runtime.alerts import AlertConfig, Alerts, AlertsRestarted, AlertState, Monitor
from runtime.errors import InputError, SnapshotError

from helpers import run, with_props, without_intervals
from test_alert_rules import faulty

ROOT = Path(__file__).resolve().parent.parent
WATER = ROOT / "exported" / "water-flow.onnx"
TARGET = "Water flow [l/s]"


def table(data: bytes, *args) -> list[dict]:
    out, _ = run([WATER, *args], data)
    return list(csv.DictReader(io.StringIO(out)))


def alerts(rows: list[dict]) -> list[tuple[int, str]]:
    return [(int(r["step"]), r["alert"]) for r in rows if r["alert"]]


def dropout(v):
    v[154:] = [0.0] * (200 - 154)          # the pump stops at step 155 and stays off


def spike(v):
    v[89] = 140.0                          # one reading of 140 l/s at step 90


def short_dropout(v):
    v[144:147] = [0.0] * 3                 # 0 l/s at steps 145-147, then normal again


# ---- 1. a run counted against the forecast it began from ---------------------------------

@pytest.mark.parametrize("min_run", [3, 5])
def test_a_dropout_that_stays_raises_one_alert_on_its_nth_reading(min_run):
    """From its third zero on the forecast has followed the dropout to 0, so each zero lies
    inside its own interval (score below 1): counted on those, the run stopped at 1 or 2 and
    nothing was raised at --min-run 3."""
    rows = table(faulty(dropout), "--interval", "0.9", "--min-run", str(min_run))
    assert all(float(r["score"]) < 0.1 for r in rows[156:167])    # steps 157-167: inside
    # (from step 168 the model's forecasts, fed zeros, wander off 0: misses of their own)
    assert [a for a in alerts(rows) if 150 <= a[0] < 168] == [(154 + min_run, "outside")]


def test_a_spike_at_min_run_2_raises_nothing():
    """The reading after a spike misses the forecast that followed the spike (anomaly true),
    but lies inside the interval the run began from: the run ends at one."""
    rows = table(faulty(spike), "--interval", "0.9", "--min-run", "2")
    assert [r["anomaly"] for r in rows[89:91]] == ["true", "true"]
    assert [a for a in alerts(rows) if 85 <= a[0] <= 105] == []
    assert (90, "outside") in alerts(table(faulty(spike), "--interval", "0.9"))


def test_a_short_dropout_is_raised_on_its_nth_reading_and_not_after_it():
    rows = table(faulty(short_dropout), "--interval", "0.9", "--min-run", "3")
    assert [a for a in alerts(rows) if a[0] >= 140] == [(147, "outside")]


def test_min_run_1_answers_as_each_reading_on_its_own_interval():
    """At --min-run 1 every miss raises on its own: the rule below, written out plainly on
    lstm-run's own anomaly and score columns, gives its alert column line for line."""
    data = (ROOT / "data" / "water-flow.csv").read_bytes()
    for hold_off in (0, 3):
        rows = table(data, "--interval", "0.9", "--hold-off", str(hold_off))
        want, on, calm, worst = [], False, 0, 0.0
        for r in rows:
            alert = ""
            if r["anomaly"] == "true":
                score, calm = float(r["score"]), 0
                if not on:
                    alert, on, worst = "outside", hold_off > 0, score
                elif score >= 4 * worst:
                    alert, worst = "outside", score
                else:
                    worst = max(worst, score)
            elif r["anomaly"] == "false":
                calm += 1
                on = on and calm < hold_off
            want.append(alert)
        assert [r["alert"] for r in rows] == want


def test_an_open_run_survives_a_state_restart(tmp_path):
    """Stopped after the dropout's first zero (a run of 1, its anchor saved), the restarted
    run raises on the same reading as one run would; a section saved without an anchor (an
    older one) goes on counting on each reading's own interval."""
    data = faulty(dropout).decode().splitlines(keepends=True)
    whole = table("".join(data).encode(), "--interval", "0.9", "--min-run", "3")
    state = tmp_path / "s.npz"
    first = table("".join(data[:156]).encode(), "--interval", "0.9", "--min-run", "3",
                  "--state", state)
    second = table("".join(data[:1] + data[156:]).encode(), "--interval", "0.9", "--min-run",
                   "3", "--state", state)
    assert first + second == whole
    assert [a for a in alerts(second) if a[0] < 168] == [(157, "outside")]


def follower(min_run: int) -> tuple[Alerts, AlertState]:
    """A forecaster that forecasts the last reading, half-width 1 (``observe`` is given the
    forecast): a dropout falls inside its own interval from its second reading on."""
    iv = json.dumps({"levels": [0.9], "q": [[1.0]], "scale": "none", "target_features": [0]})
    model = SimpleNamespace(info=SimpleNamespace(extra={"intervals": iv}, horizon=1),
                            n_targets=1, targets=("y",))
    return Alerts(model, AlertConfig(level=0.9, min_run=min_run)), AlertState()


def follow(alerts: Alerts, state: AlertState, values) -> list[str]:
    return [alerts.observe(state, np.array([v]), np.array([v])).alert for v in values]


def test_the_anchor_by_hand_and_in_the_state_bytes():
    alerts, state = follower(3)
    # 10 is a miss (score 10); the 10s after it are inside their own forecast (10 ± 1) and
    # 10 half-widths from the anchor's 0 ± 1: the run goes on and raises at its third
    assert follow(alerts, state, [0, 0, 10, 10, 10, 10]) == ["", "", "", "", "outside", ""]
    # a spike's return misses its own forecast (10) but lies inside the anchor: run over
    alerts, state = follower(2)
    assert follow(alerts, state, [0, 0, 10, 0, 0, 0]) == [""] * 6
    # a mild miss followed by the series' own motion, within 4 of the anchor's half-widths
    assert follow(alerts, state, [0, 1.5, 2.0, 2.5, 3.0]) == [""] * 5
    # saved with a run open: the anchor is in the bytes and comes back
    alerts, state = follower(3)
    follow(alerts, state, [0, 0, 10])
    assert json.loads(state.to_bytes()[8:])["anchor"] == [[0.0], [1.0]]
    again = AlertState.from_bytes(state.to_bytes())
    assert follow(alerts, again, [10, 10]) == ["", "outside"]
    # an older section: an open run without an anchor counts on its own intervals
    body = json.loads(state.to_bytes()[8:])
    del body["anchor"]
    text = json.dumps(body).encode()
    older = AlertState.from_bytes(b"LEA1" + len(text).to_bytes(4, "little") + text)
    assert older.anchor is None and older.run == 1
    assert follow(alerts, older, [10, 10, 10]) == ["", "", ""]
    # untrusted bytes: an anchor that is not finite numbers is refused
    for bad in ([[0.0], [-1.0]], [[float("nan")], [1.0]], [[0.0]], "x"):
        body["anchor"] = bad
        text = json.dumps(body).encode()
        with pytest.raises(SnapshotError, match="alert state cannot be read"):
            AlertState.from_bytes(b"LEA1" + len(text).to_bytes(4, "little") + text)


# ---- 2. --stuck 1 ---------------------------------------------------------------------------

def test_stuck_1_is_refused():
    out, err = run([WATER, "--stream", "--interval", "0.9", "--stuck", "1"],
                   faulty(lambda v: None), code=2)
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("Error: Invalid value for '--stuck': give 0 (off) or at least 2")
    assert sum(line.startswith("Error:") for line in err.splitlines()) == 1
    with pytest.raises(InputError, match=r"^stuck must be 0 \(off\) or at least 2 .*got 1$"):
        AlertConfig(stuck=1)
    assert AlertConfig(stuck=2).stuck == 2 and AlertConfig(stuck=0).stuck == 0


def test_a_state_kept_under_stuck_1_starts_afresh(tmp_path):
    """An older release took --stuck 1 and recorded it: such a state is read (not refused as
    tampered) and starts afresh, as kept under other settings."""
    model = runtime.load(WATER, device="cpu")
    monitor = Monitor(model.stream(), AlertConfig(level=0.9, stuck=2))
    for v in (101.2, 101.4, 101.3):
        monitor.step([v])
    body = json.loads(monitor.state.to_bytes()[8:])
    body["settings"]["stuck"] = 1
    text = json.dumps(body).encode()
    saved = b"LEA1" + len(text).to_bytes(4, "little") + text
    monitor.stream.snapshot().save(tmp_path / "s.npz")
    with pytest.warns(AlertsRestarted, match=r"kept under AlertConfig\(level=0\.9, stuck=1\)"):
        Monitor(model.stream(tmp_path / "s.npz"), AlertConfig(level=0.9, stuck=2), saved)


# ---- 3, 4. --info -------------------------------------------------------------------------

def _intervals_row(path: Path) -> str:
    out, _ = run([path, "--info"])
    return next(line for line in out.splitlines() if line.startswith("intervals"))


def test_info_names_the_interval_of_a_horizon_h_model(tmp_path):
    one = _intervals_row(WATER)
    assert "lo/hi (the interval of the next reading)" in one
    assert "against the interval given one reading before" in one
    three = tmp_path / "h3.onnx"
    three.write_bytes(WATER.read_bytes())
    row = _intervals_row(with_props(three, horizon="3"))
    assert "lo/hi (the interval of the reading 3 readings on)" in row
    assert "against the interval given 3 readings before" in row


def test_info_says_a_file_without_intervals_has_none(tmp_path):
    row = _intervals_row(without_intervals(tmp_path / "plain.onnx"))
    assert row.split(None, 1)[1].startswith("none: ")
    assert "lstm-export --calibrate" in row and "--interval" in row


# ---- 5. the Python API in its own words ---------------------------------------------------

def test_monitor_names_alert_config_fields_and_another_models_state(tmp_path):
    model = runtime.load(WATER, device="cpu")
    first = Monitor(model.stream(), AlertConfig(level=0.9, stuck=6, cusum=4))
    for v in (101.2, 101.4, 101.3):
        first.step([v])
    first.stream.snapshot().save(tmp_path / "s.npz")
    saved = first.state.to_bytes()
    with pytest.warns(AlertsRestarted) as got:
        Monitor(model.stream(tmp_path / "s.npz"), AlertConfig(level=0.95), saved)
    message = str(got[0].message)
    assert "AlertConfig(level=0.9, stuck=6, cusum=4)" in message
    assert "AlertConfig(level=0.95)" in message and "--" not in message
    # the same columns, another model's file: its state is refused, and said to be that
    other = tmp_path / "other.onnx"
    other.write_bytes(WATER.read_bytes())
    other_model = runtime.load(with_props(other, note="retrained"), device="cpu")
    with pytest.raises(SnapshotError, match="another model's") as refused:
        Monitor(other_model.stream(), AlertConfig(level=0.9, stuck=6, cusum=4), saved)
    assert "reading 0" not in str(refused.value)
    # its own model, its own stream: goes on without a word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Monitor(model.stream(tmp_path / "s.npz"), AlertConfig(level=0.9, stuck=6, cusum=4),
                saved)


# ---- 9. a second BOM on line 1 ---------------------------------------------------------------

def test_a_second_bom_leaves_an_unterminated_line_unfed(tmp_path):
    """The reader drops the input's BOM; a second one is cut where line 1 is read, and the
    line is still the unterminated last line it was: not fed, and not saved as fed."""
    state = tmp_path / "s.npz"
    bom = b"\xef\xbb\xbf"
    out, err = run([WATER, "--stream", "--no-order-check", "--state", state],
                   bom + bom + b"101.2")
    assert out.splitlines()[0].startswith("101.2,,,,") and "ended in the middle" in err
    out, _ = run([WATER, "--stream", "--no-order-check", "--state", state], b"101.2\n")
    assert out.splitlines() == ["101.2,1,false,101.1921,,"]        # its first reading
