"""The statistical anchors of the test-tail report (trainer.anchors), against statsforecast.

The reference is statsforecast's own forward API: fit once on the rows up to the first
test prediction's last reading, then apply that fit to the series as it grows, reading by
reading, never refitting. The anchors' naive forecast must equal the trainer's bit for bit:
the two are then scored on the same rows.
"""

import sys

import numpy as np
import pytest

from trainer import anchors
from trainer.forecast import errors, score

statsforecast = pytest.importorskip("statsforecast")


def airline_like(rows=84):
    """Monthly, trended, multiplicative season of 12: the shape of the airline series."""
    t = np.arange(rows)
    rng = np.random.default_rng(5)
    return (100 + 2 * t) * (1 + 0.2 * np.sin(2 * np.pi * t / 12)) + rng.normal(0, 3, rows)


@pytest.mark.parametrize("horizon", [1, 3])
def test_anchor_mae_equals_statsforecast_fitted_once_then_forwarded(horizon):
    from statsforecast.models import AutoETS, AutoTheta

    y = airline_like()
    last = np.arange(70 - horizon, len(y) - horizon)                 # 14 test predictions
    got = anchors.measure(y[:, None], last, horizon, 12, budget=120)
    assert set(got["anchors"]) == set(anchors.NAMES), got["anchors_note"]
    for label, model in (("AutoETS", AutoETS(season_length=12)),
                         ("AutoTheta", AutoTheta(season_length=12))):
        fitted = model.fit(y[:last[0] + 1])
        ref = np.array([fitted.forward(y[:row + 1], h=horizon)["mean"][horizon - 1]
                        for row in last])                             # (steps,)
        want = errors(ref[:, None], y[last + horizon][:, None])
        np.testing.assert_allclose(got["anchors"][label]["mae"], want["mae"], rtol=1e-12)


def test_anchor_naive_equals_the_trainers_naive_bit_for_bit():
    from statsforecast.models import Naive

    y = airline_like()
    horizon = 2
    last = np.arange(70 - horizon, len(y) - horizon)
    pred = anchors.forecasts(y, last, horizon, Naive())
    trainer = score(y[:, None], y[last][:, None], last, horizon, y[:50, None], 12)
    assert errors(pred[:, None], y[last + horizon][:, None])["mae"] == trainer["naive"]["mae"]


def test_fits_past_the_budget_are_killed_and_named():
    y = airline_like()[:, None]
    got = anchors.measure(y, np.arange(60, 83), 1, 12, budget=0.01)   # the child only starts
    assert got["anchors"] == {}
    assert got["anchors_note"] == ("AutoETS, AutoTheta, AutoARIMA skipped: not done within "
                                   "the 0.01 s --anchor-budget")


def test_a_seasonal_arima_not_done_leaves_the_non_seasonal_one_and_says_so():
    done = {0: ("AutoETS", None), 1: ("AutoTheta", None), 2: ("AutoARIMA", None)}
    assert anchors._note(done, 90, 60) == ("AutoARIMA is non-seasonal: the seasonal fit "
                                            "(m=90) did not finish within the 60 s "
                                            "--anchor-budget")
    assert anchors._note({**done, 3: ("AutoARIMA", None)}, 90, 60) == ""


def test_without_statsforecast_the_report_says_how_to_get_the_anchors(monkeypatch):
    monkeypatch.setitem(sys.modules, "statsforecast", None)        # import now fails
    y = airline_like()[:, None]
    got = anchors.measure(y, np.arange(60, 83), 1, 12, budget=60)
    assert got == {"anchors": {}, "anchors_note": anchors.MISSING}
    assert anchors.lines(got, 1.0) == ["  " + anchors.MISSING]
    assert "pip install 'lstm-edge[stats]'" in anchors.MISSING
    assert anchors.measure(y, np.arange(60, 83), 1, 12, budget=0) == {}


def test_best_by_mae_names_an_anchor_that_beats_the_model():
    from trainer.forecast import best_by_mae

    fig = {"model": {"mae": [2.0]}, "naive": {"mae": [3.0]}, "mean": {"mae": [9.0]},
           "anchors": {"AutoETS": {"mae": [2.5]}, "AutoARIMA": {"mae": [1.5]}}}
    assert best_by_mae(fig) == "AutoARIMA"


def test_a_fit_that_fails_is_named_with_its_reason_not_a_traceback():
    y = airline_like()[:, None]
    y[5] = np.nan                                                   # statsforecast refuses it
    got = anchors.measure(y, np.arange(60, 83), 1, 12, budget=60)
    assert got["anchors"] == {}
    assert got["anchors_note"].startswith("AutoETS, AutoTheta, AutoARIMA left out: the fit "
                                          "failed (ValueError: ")
