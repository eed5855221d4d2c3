"""The statistical anchors: what a practitioner tries before an LSTM, on the same test rows.

AutoETS, AutoTheta and AutoARIMA from statsforecast (the optional ``[stats]`` extra) are
fitted once on the rows before the test tail and then updated reading by reading, never
refitted, as the LSTM carries its state: statsforecast's
``cross_validation(step_size=1, refit=False)`` with one window per test prediction. Window
``k`` ends at the row the ``k``-th prediction last saw, and its step ``horizon`` is the
forecast scored, so every anchor is judged on exactly the rows and truths the model is.

A seasonal AutoARIMA with a long season can take minutes (occupancy's 90: about four), so
the fits run in a child process under a time budget (``--anchor-budget``): a non-seasonal
AutoARIMA first (a second or less), then the seasonal one if the season is above 1; where
the seasonal fit does not finish in time the non-seasonal one stands, and the note says so.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from .forecast import errors

NAMES = ("AutoETS", "AutoTheta", "AutoARIMA")
TELL_EVERY = 20.0   # seconds between the progress lines while the fits run (measure's tell)
MISSING = ("statistical anchors (AutoETS, AutoTheta, AutoARIMA): not installed; "
           "pip install 'lstm-edge[stats]' to compare against them")


def available() -> bool:
    """Whether statsforecast can be imported (the ``[stats]`` extra)."""
    try:
        import statsforecast  # noqa: F401
    except ImportError:
        return False
    return True


def forecasts(y: np.ndarray, last: np.ndarray, horizon: int, model) -> np.ndarray:
    """``(steps,)`` forecasts of ``y[last + horizon]`` by one statsforecast model.

    ``y`` is one target's ``(rows,)`` series; ``last`` the consecutive rows the predictions
    last saw, the final one ``rows - 1 - horizon``.
    """
    import pandas as pd
    from statsforecast import StatsForecast

    rows = len(y)
    if last[-1] != rows - 1 - horizon or (np.diff(last) != 1).any():
        raise ValueError("the anchors need consecutive predictions up to the last row")
    frame = pd.DataFrame({"unique_id": 0, "ds": np.arange(rows), "y": y.astype(np.float64)})
    cv = StatsForecast(models=[model], freq=1, n_jobs=1).cross_validation(
        df=frame, h=horizon, step_size=1, n_windows=len(last), refit=False)
    cv = cv[cv["ds"] - cv["cutoff"] == horizon]
    if not (cv["cutoff"].to_numpy() == last).all():
        raise RuntimeError("statsforecast's windows do not end at the predictions' rows")
    return cv[str(model)].to_numpy(np.float64)                       # (steps,)


def _models(season: int) -> list:
    """``(label, model)`` in the order they are fitted, cheapest first."""
    from statsforecast.models import AutoARIMA, AutoETS, AutoTheta

    out = [("AutoETS", AutoETS(season_length=season)),
           ("AutoTheta", AutoTheta(season_length=season)),
           ("AutoARIMA", AutoARIMA(season_length=1))]
    if season > 1:
        out.append(("AutoARIMA", AutoARIMA(season_length=season)))
    return out


def _serve() -> None:
    """The child process: read the series from stdin, write one JSON line per fit as it ends."""
    import warnings

    warnings.simplefilter("ignore")
    job = json.load(sys.stdin)
    y, last = np.asarray(job["y"], np.float64), np.asarray(job["last"], np.int64)
    for index, (label, _) in enumerate(_models(job["season"])):
        # A fresh model per column: a fitted statsforecast model keeps its fit.
        columns = [forecasts(y[:, k], last, job["horizon"], _models(job["season"])[index][1])
                   for k in range(y.shape[1])]
        pred = np.stack(columns, axis=1)                             # (steps, targets)
        print(json.dumps({"index": index, "label": label, "pred": pred.tolist()}), flush=True)


def measure(y: np.ndarray, last: np.ndarray, horizon: int, season: int | None,
            budget: float, tell: Callable[[float], None] | None = None) -> dict:
    """The anchors' figures on the predictions ``last`` of the series ``y`` (rows, targets).

    Returns ``{"anchors": {label: {"mae", "rmse"}}, "anchors_note": str}``; the note says
    what was skipped and why, or how to install the anchors; ``{}`` for ``budget`` 0.
    The fits run in a fresh Python process (``python -m trainer.anchors``), killed when the
    budget is spent: a fit cannot be stopped from inside. ``tell``, where given, hears the
    seconds spent every :data:`TELL_EVERY` seconds while the fits run.
    """
    if budget <= 0:
        return {}
    if not available():
        return {"anchors": {}, "anchors_note": MISSING}
    m = season or 1
    job = json.dumps({"y": np.asarray(y, np.float64).tolist(), "last": last.tolist(),
                      "horizon": horizon, "season": m})
    child = subprocess.Popen([sys.executable, "-m", "trainer.anchors"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    began, send = time.monotonic(), job
    out = err = None
    while out is None:
        spent = time.monotonic() - began
        try:   # a retry loses no output, and sends no input again (the first call sent it)
            out, err = child.communicate(send, timeout=min(TELL_EVERY, max(budget - spent, 0)))
        except subprocess.TimeoutExpired:
            send = None
            if time.monotonic() - began >= budget:
                child.kill()
                out, err = child.communicate()        # the lines written before the kill
            elif tell is not None:
                tell(time.monotonic() - began)
    got = {}
    for line in out.splitlines():
        try:
            done = json.loads(line)
        except json.JSONDecodeError:          # a line the kill cut short: that fit is not done
            continue
        got[done["index"]] = (done["label"], np.asarray(done["pred"], np.float64))
    truth = y[last + horizon]                                        # (steps, targets)
    figures = {label: errors(pred, truth) for _, (label, pred) in sorted(got.items())}
    if child.returncode in (0, -signal.SIGKILL):
        return {"anchors": figures, "anchors_note": _note(got, m, budget)}
    reason = (err.strip().splitlines() or [f"exit code {child.returncode}"])[-1]
    missing = [label for label in NAMES if label not in figures]
    what = (f"{', '.join(missing)} left out" if missing
            else "AutoARIMA is non-seasonal: the seasonal one")
    return {"anchors": figures, "anchors_note": f"{what}: the fit failed ({reason})"}


def _note(got: dict, season: int, budget: float) -> str:
    """What the figures lack and why: a skipped model, a non-seasonal stand-in, no season."""
    done = {label for label, _ in got.values()}
    skipped = [label for label in NAMES if label not in done]
    parts = []
    if season == 1:
        parts.append("no season known, so the anchors are non-seasonal (--season N)")
    elif 2 in got and 3 not in got:
        parts.append(f"AutoARIMA is non-seasonal: the seasonal fit (m={season}) did not "
                     f"finish within the {budget:g} s --anchor-budget")
    if skipped:
        parts.append(f"{', '.join(skipped)} skipped: not done within the {budget:g} s "
                     f"--anchor-budget")
    return "; ".join(parts)


def lines(test: dict, naive_mae: float, target: int | None = None, note: bool = True) -> list:
    """The report's rows for the anchors, in the format of its table, and their note.

    ``target``: one target's figures (an index); None: the mean over the targets.
    ``note``: add the note (a report of several targets gives it once, after them all).
    """
    if "anchors_note" not in test:
        return []
    out = []
    for label, fig in test["anchors"].items():
        mae, rmse = ((np.mean(fig["mae"]), np.mean(fig["rmse"])) if target is None
                     else (fig["mae"][target], fig["rmse"][target]))
        ratio = f"{mae / naive_mae:>13.3f}" if naive_mae > 0 else f"{'-':>13}"
        out.append(f"  {label:<21}{mae:>11.4g}{rmse:>11.4g}{ratio}")
    if note and test["anchors_note"]:
        out.append("  " + test["anchors_note"])
    return out


if __name__ == "__main__":
    _serve()
