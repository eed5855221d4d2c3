"""Split-conformal calibration: the quantiles behind ``lstm_edge.intervals``.

On rows the model never trained on — the validation rows in ``lstm-train``, never the test
tail; the rows of a calibration CSV in ``lstm-export --calibrate`` — each forecast's
nonconformity score is ``|y - pred| / spread`` (see :mod:`runtime.alerts` for the spread;
which spread, if any, is chosen on those same rows by :func:`choose_scale`).
For a level L over n scores the quantile is the ``ceil((n + 1) L)``-th smallest: on rows
exchangeable with those, ``|y - pred| <= q * spread`` holds with probability at least L
(Lei et al. 2018, "Distribution-free predictive inference for regression", JASA 113(523);
the normalised score is Papadopoulos et al. 2008's).

Where ``ceil((n + 1) L) > n`` (L = 0.99 on fewer than 99 rows) the ranks run out: the
largest score alone covers a new one with probability n / (n + 1) (95.5 % on 21 rows), not
L. Above it the quantile comes from an exponential tail fitted to the upper scores, the
peaks-over-threshold method with the shape fixed at 0 (Pickands 1975, "Statistical
inference using extreme order statistics", Ann. Statist. 3(1); Coles 2001, "An
introduction to statistical modeling of extreme values", ch. 4). The threshold ``u`` is the
score with ``k = n // 2`` above it, and a new score exceeds it with probability exactly
``(k + 1) / (n + 1)`` on exchangeable rows; beyond ``u`` the excesses are taken as
exponential with their mean ``beta``, so::

    q = u + beta * ln((k + 1) / ((n + 1) (1 - L))),   never below the largest score

The shape is fixed because a few dozen scores cannot estimate it (its standard error is
about 1 / sqrt(k)); the exponential tail is that of Laplace errors, heavier than a normal
one, so for normal errors the interval errs wide, and it errs narrow only for tails heavier
than exponential. The upper half keeps ``beta``'s relative standard error near
``1 / sqrt(n / 2)``. On 21 scores drawn from a half-normal, an exponential, a half-t(3) and
a lognormal, this 99 % quantile covers a new score 99.2, 98.2, 97.7 and 97.2 % of the time,
the largest score 95.5 % (tests/test_alerts.py holds the first two). The file keeps ``n``
and names the levels so extrapolated (``tail``).

Calibration rows are a sensor's history, and a history holds faults: water-flow's
validation rows in the demo hold a dropout (102.9, 91.3, 55.8 l/s in three hours) whose
scores are 14, 26 and 49 local spreads where the next largest is 6.7. Kept, the largest is
the 99 % quantile, an interval as wide as the faults it should report. So before the
quantiles, :func:`faults` leaves out the scores that the exponential tail fitted to the
others (as above, leaving the score out) puts beyond probability :data:`FAULT_P`, largest
first, at most :data:`FAULT_SHARE` of the rows: a leave-one-out outlier test under the same
tail the quantile uses. They still count as rows beyond every interval, so a level whose
rank lies below them keeps its quantile; a level whose rank falls among them (the 99 % level
of the demo's 165 rows, rank 165 of them) takes the normal rows' own quantile
(:func:`quantile_beside_faults`). On clean scores it rarely fires (n = 165, 2,000 draws each: never
for half-normal scores, 0.1 % for exponential, 12 % for half-t(3), the heaviest tail a
forecast's errors plausibly have), and what it leaves out then moves the 99 % coverage of a
new score by at most 0.5 points (99.0 → 98.9 % for half-t(3)). The file records what was
left out (``left_out``).

A forecast block (``lstm_edge.block`` of kind ``forecast``: ``S`` steps of ``K`` targets,
column ``s * K + k`` the forecast of target ``k``, ``s + 1`` readings ahead) is calibrated
column by column as above: column ``c`` scores ``|y[t + s + 1, k] - pred[t, c]| / spread_k(t)``
over the forecasts ``t`` whose reading ``t + s + 1`` is among the rows (so a later step has
fewer), each column with its own quantiles, tail and faults; the scale is chosen once, on
all the columns' scores together (:func:`choose_scale`). ``n`` counts the forecasts of the
first step.

>>> conformal_quantile(np.arange(1.0, 10.0), 0.8)     # ceil(10 * 0.8) = 8th smallest
8.0
>>> round(conformal_quantile(np.arange(1.0, 10.0), 0.99), 2)   # 10 > 9: 5 + 2.5 ln 50
14.78
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from runtime.alerts import local_spread
from runtime.errors import counted

LEVELS = (0.8, 0.9, 0.95, 0.99)
# The scales a calibration chooses among, on its own rows (see choose_scale): raw residuals,
# or the mean |change| over this many differences.
CANDIDATES = (("none", 0), ("mean-abs-change", 6), ("mean-abs-change", 12),
              ("mean-abs-change", 24), ("mean-abs-change", 48))
CHOICE_LEVEL = 0.9        # the level whose cross-fitted coverage choose_scale reports
FLOOR_SHARE = 0.1         # the spread's floor: this share of the mean |change| of the rows
TAIL_FIT = "exponential"  # the tail beyond the largest score (see the module's notes)
FAULT_P = 1e-6            # a score beyond this under the others' tail is a fault (faults)
FAULT_SHARE = 0.05        # at most this share of the calibration rows left out as faults
MIN_FORECASTS = 10        # fewest forecasts a calibration CSV must hold (calibrate_file)


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ``ceil((n + 1) level)``-th smallest of ``scores``; where that is > n, the
    exponential tail's quantile (:func:`tail_quantile`)."""
    s = np.sort(np.asarray(scores, np.float64))
    rank = math.ceil((len(s) + 1) * level - 1e-9)
    return float(s[rank - 1]) if rank <= len(s) else tail_quantile(s, level)


def tail_quantile(scores: np.ndarray, level: float) -> float:
    """The level-``level`` quantile of an exponential tail fitted to the upper half of
    ``scores`` beyond the next one down, never below the largest (the module's notes)."""
    s = np.sort(np.asarray(scores, np.float64))
    n = len(s)
    k = n // 2                                      # scores above the threshold
    if level >= 1:
        return math.inf
    if k < 1:
        return float(s[-1])
    u = s[n - k - 1]
    beta = float(np.mean(s[n - k:] - u))            # the excesses' mean
    return max(float(s[-1]), float(u + beta * math.log((k + 1) / ((n + 1) * (1 - level)))))


def faults(scores: np.ndarray) -> np.ndarray:
    """The scores left out of a calibration as faults, largest first (the module's notes).

    The largest score is a fault where the exponential tail of the others (threshold ``u``
    with ``k = n // 2`` of them above, mean excess ``beta``) gives a new score probability
    ``(k + 1) / (n + 1) · exp(-(score - u) / beta)`` below :data:`FAULT_P` of reaching it;
    then the next largest is tested against those below it, and so on, at most
    :data:`FAULT_SHARE` of the scores (none of fewer than 20).

    >>> faults(np.r_[np.linspace(0.1, 2.0, 40), 60.0])       # a dropout among 40 scores
    array([60.])
    >>> faults(np.linspace(0.1, 2.0, 41)).size
    0
    """
    s = np.sort(np.asarray(scores, np.float64))
    out: list[float] = []
    while len(out) < int(FAULT_SHARE * len(s)):
        top, rest = s[len(s) - len(out) - 1], s[:len(s) - len(out) - 1]
        n = len(rest)
        k = n // 2
        u = rest[n - k - 1]
        beta = float(np.mean(rest[n - k:] - u))
        if not (beta > 0 and (k + 1) / (n + 1) * math.exp(-(top - u) / beta) < FAULT_P):
            break
        out.append(float(top))
    return np.asarray(out)


def quantile_beside_faults(scores: np.ndarray, faulty: int, level: float) -> float:
    """The level-``level`` quantile of ``scores`` whose ``faulty`` largest are faults.

    The faults still count as rows beyond every interval, so a level whose rank
    ``ceil((n + 1) level)`` lies below them keeps its quantile; a level whose rank falls
    among them takes the normal rows' own quantile (their rank, or their tail).

    >>> s = np.r_[np.arange(1.0, 39.0), 500.0, 600.0]     # 40 scores, two of them faults
    >>> quantile_beside_faults(s, 2, 0.9), quantile_beside_faults(s, 2, 0.95)   # rank 37, 39
    (37.0, 38.0)
    """
    s = np.sort(np.asarray(scores, np.float64))
    rank = math.ceil((len(s) + 1) * level - 1e-9)
    if rank <= len(s) - faulty:
        return float(s[rank - 1])
    return conformal_quantile(s[:len(s) - faulty], level)


def extrapolated(n: int, levels) -> list[float]:
    """The levels whose quantile over ``n`` scores comes from the tail (rank > n)."""
    return [level for level in levels if math.ceil((n + 1) * level - 1e-9) > n]


def calibrate(truth: np.ndarray, pred: np.ndarray, spread: np.ndarray | None,
              levels=LEVELS) -> dict:
    """Quantiles per level and output column from ``(rows, outputs)`` truth and forecasts.

    ``truth`` is NaN where a column's reading is not among the rows (a forecast block's later
    steps near the end): that column has fewer scores. ``spread`` ``(rows, outputs)``: the
    local spread each forecast was made with; None for raw residuals. Returns ``{"levels",
    "q", "n"}`` of ``lstm_edge.intervals`` (``n``: the rows), with ``tail`` where a level's
    quantile is extrapolated in some column.
    """
    scores = np.abs(np.asarray(truth, np.float64) - pred)           # (rows, outputs)
    if spread is not None:
        scores = scores / spread
    columns = [column[~np.isnan(column)] for column in scores.T]    # each output's scores
    left = [faults(column) for column in columns]
    q = [[quantile_beside_faults(column, len(f), level) for column, f in zip(columns, left)]
         for level in levels]
    out = {"levels": list(levels), "q": q, "n": int(len(scores))}
    fewest = min((len(column) - len(f) for column, f in zip(columns, left)),
                 default=len(scores))
    tail = extrapolated(fewest, levels)
    if tail and fewest >= 2:
        out["tail"] = {"fit": TAIL_FIT, "upper": fewest // 2, "levels": tail}
    if any(len(f) for f in left):
        out["left_out"] = {"p": FAULT_P, "scores": [[round(float(v), 4) for v in f]
                                                    for f in left]}
    return out


def ahead(y: np.ndarray, last: np.ndarray, horizon: int, steps: int = 1) -> np.ndarray:
    """``(rows, steps * targets)``: the readings of ``y`` ``(rows, targets)`` that the
    forecasts made at rows ``last`` are for, NaN where that reading is past ``y``'s end.

    Column ``s * K + k`` is target ``k``, ``horizon + s`` rows after ``last`` (step-major,
    as a forecast block flattens; ``steps`` 1: ``y[last + horizon]``).

    >>> ahead(np.array([[1.0], [2.0], [3.0]]), np.array([0, 1]), 1, steps=2)
    array([[ 2.,  3.],
           [ 3., nan]])
    """
    y = np.asarray(y, np.float64)
    k = y.shape[1]
    rows = last[:, None] + horizon + np.repeat(np.arange(steps), k)[None, :]  # (rows, outputs)
    return np.where(rows < len(y), y[np.minimum(rows, len(y) - 1), np.tile(np.arange(k), steps)],
                    np.nan)


def spread_rule(y_rows: np.ndarray, readings: int) -> dict:
    """The spread's parameters, its floor taken from ``y_rows`` ``(rows, targets)``."""
    mean_change = np.abs(np.diff(y_rows, axis=0)).mean(axis=0)     # (targets,)
    floor = np.where(mean_change > 0, FLOOR_SHARE * mean_change, 1e-6)
    return {"readings": int(readings), "floor": floor.tolist(), "prior": mean_change.tolist()}


def spread_of(iv: dict, y: np.ndarray) -> np.ndarray:
    """``(rows, targets)``: the local spread of ``iv`` after each row of ``y``."""
    rule = iv["spread"]
    return local_spread(y, rule["readings"], np.asarray(rule["floor"]),
                        np.asarray(rule["prior"]))


def intervals(y: np.ndarray, pred: np.ndarray, last: np.ndarray, horizon: int,
              target_features, source: str, floor_rows: np.ndarray,
              scale: tuple[str, int] | None = None, steps: int = 1) -> dict:
    """``lstm_edge.intervals`` for forecasts ``pred`` ``(rows, targets)`` of rows
    ``last + horizon`` of the target series ``y`` ``(rows, targets)``.

    ``floor_rows``: the rows whose mean change sets the spread's prior and floor (the
    training rows). ``scale``: ``(name, readings)``, one of :data:`CANDIDATES`; None
    chooses it on these same rows (:func:`choose_scale`). The spread is local only where
    every target is a feature (a stream must read it). ``steps`` > 1: ``pred`` is a forecast
    block ``(rows, steps * targets)``, column ``s * K + k`` for row ``last + horizon + s``
    (:func:`ahead`); ``target_features`` names each target once, and the file gets one per
    output column, a step repeating its target's, as the spread's floor and prior.
    """
    if None in target_features:
        scale = ("none", 0)
    elif scale is None:
        scale = choose_scale(y, pred, last, horizon, floor_rows, steps=steps)["chosen"]
    out = _fit(y, pred, last, horizon, floor_rows, scale, steps=steps)
    if steps > 1 and "spread" in out:                 # one per output column (the contract)
        rule = out["spread"]
        out["spread"] = {**rule, "floor": rule["floor"] * steps, "prior": rule["prior"] * steps}
    out.update(target_features=list(target_features) * steps, source=source)
    return out


def _fit(y, pred, last, horizon, floor_rows, scale: tuple[str, int], levels=LEVELS,
         steps: int = 1) -> dict:
    """The quantiles of one candidate scale on the forecasts ``pred`` of rows ``last``."""
    out = {"method": "split-conformal", "scale": scale[0]}
    spread = None
    if scale[0] != "none":
        out["spread"] = spread_rule(floor_rows, scale[1])
        # target k's spread at the reading each forecast is made at, for each of its steps
        spread = np.tile(spread_of(out, y)[last], steps)            # (rows, outputs)
    out.update(calibrate(ahead(y, last, horizon, steps), pred, spread, levels))
    return out


def choose_scale(y, pred, last, horizon, floor_rows, candidates=CANDIDATES,
                 steps: int = 1) -> dict:
    """The candidate scale whose intervals score best on calibration rows they did not see.

    Cross-fitting: the calibration rows are cut into their first and second half in time;
    each candidate is calibrated on one half and scored on the other, both ways round. The
    score is the weighted interval score over the levels (Bracher et al. 2021, "Evaluating
    epidemic forecasts in an interval format", PLoS Comput. Biol. 17(2), after Gneiting and
    Raftery 2007): per level L, ``(1 - L) / 2 * width + how far y lies outside``, summed
    over the levels and averaged over rows, in units of the target's mean change on
    ``floor_rows``. It is lowest for intervals that cover as often as they claim and are no
    wider than that needs, at every level at once. The lowest wins (the first listed on a
    tie). A forecast block (``steps`` > 1) is scored on every column's scores together, a
    reading past the rows counting nothing. Returns ``{"chosen": (scale, readings),
    "figures": [...]}`` with each candidate's score and its held-out coverage and mean
    width at :data:`CHOICE_LEVEL`.
    """
    cut = len(last) // 2
    folds = [(np.arange(cut), np.arange(cut, len(last))),
             (np.arange(cut, len(last)), np.arange(cut))]
    unit = np.abs(np.diff(floor_rows, axis=0)).mean(axis=0)         # (targets,)
    unit = np.tile(np.where(unit > 0, unit, 1.0), steps)            # (outputs,)
    truth = ahead(y, last, horizon, steps)                          # (rows, outputs)
    figures = []
    for cand in candidates:
        loss = inside = width = 0.0
        for fit_on, judged in folds:
            iv = _fit(y, pred[fit_on], last[fit_on], horizon, floor_rows, cand, steps=steps)
            spread = np.tile(spread_of(iv, y)[last[judged]], steps) if cand[0] != "none" \
                else 1.0
            miss = np.abs(truth[judged] - pred[judged])              # (judged, outputs)
            seen = ~np.isnan(miss)                                   # the reading is there
            for level, q in zip(iv["levels"], iv["q"]):
                half = np.asarray(q) * spread                        # (judged, outputs)
                out = np.maximum(miss - half, 0.0)
                loss += np.where(seen, ((1 - level) * half + out) / unit,
                                 0.0).mean(axis=1).sum()
                if abs(level - CHOICE_LEVEL) < 1e-9:
                    inside += (np.where(seen, miss <= half, False).sum(axis=1)
                               / seen.sum(axis=1)).sum()
                    width += (2 * half * np.ones_like(miss)).mean(axis=1).sum()
        figures.append({"scale": cand[0], "readings": cand[1], "score": loss / len(last),
                        "coverage": inside / len(last), "width": width / len(last)})
    best = min(figures, key=lambda f: f["score"])
    return {"chosen": (best["scale"], best["readings"]), "figures": figures}


def coverage(iv: dict, y: np.ndarray, pred: np.ndarray, last: np.ndarray,
             horizon: int) -> list[dict]:
    """Per level: the share of rows ``last + horizon`` inside the interval, and mean width."""
    half_unit = np.ones_like(pred, np.float64)
    if iv["scale"] != "none":
        half_unit = spread_of(iv, y)[last]
    truth = y[last + horizon]
    out = []
    for level, q in zip(iv["levels"], iv["q"]):
        half = np.asarray(q) * half_unit                               # (steps, targets)
        inside = np.abs(truth - pred) <= half
        out.append({"level": level, "coverage": inside.mean(axis=0).tolist(),
                    "width": (2 * half).mean(axis=0).tolist()})
    return out


def target_columns(features, targets) -> list:
    """The input column of each target, None where a target is not a feature."""
    features = list(features)
    return [features.index(t) if t in features else None for t in targets]


@dataclass
class Calibrated:
    """What :func:`calibrate_csv` wrote, and the rows it was calibrated on."""

    intervals: dict                     # lstm_edge.intervals, as written into the file
    times: tuple[str, str] | None       # first and last time of the rows scored (None: no
                                        # time column)
    checked: str = ""                   # the training rows the rows were checked against


def calibrate_file(onnx_path, csv, *, missing: str = "error") -> dict:
    """Stream ``csv`` through the exported model and write ``lstm_edge.intervals`` into it.

    The forecasts come from the runtime itself, the way they will be served; the rows must
    be rows the model was not trained on, and not the rows it will be judged on. Returns
    the intervals written (:func:`calibrate_csv` says more).
    """
    return calibrate_csv(onnx_path, csv, missing=missing).intervals


def calibrate_csv(onnx_path, csv, *, missing: str = "error",
                  trained: dict | None = None) -> Calibrated:
    """:func:`calibrate_file`, with the time span the intervals were calibrated on.

    ``trained``: the ``data`` of the model's training sidecar (``NAME.lstm-edge.json``),
    where there is one: rows it records as training rows are refused
    (:func:`refuse_training_rows`).
    """
    from pathlib import Path

    from runtime.errors import MissingExtra
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise MissingExtra("calibrating a model's intervals (lstm-export --calibrate, "
                           "trainer.calibrate.calibrate_file) writes its ONNX file with the "
                           "onnx package, which is not installed: pip install "
                           "'lstm-edge[cpu,train]', or calibrate where you export and copy "
                           "the file to the device") from None

    from runtime import load
    from .data import check_time, read_csv, select
    from .errors import DataError
    from .export import write_atomically

    model = load(onnx_path, device="cpu")
    block = model.info.block
    if block is not None and block.kind == "reconstruction":
        raise DataError(f"{onnx_path}: the model rebuilds its window of {block.steps} readings "
                        f"(a reconstruction), which forecasts no reading to calibrate an "
                        f"interval around; export it without --calibrate and threshold the "
                        f"score column lstm-run answers each reading with (its reconstruction "
                        f"error: docs/contract.md), e.g. at the largest score on normal rows")
    # A forecast block: each step of each name, 1 to steps readings ahead (step-major).
    names = list(block.names) if block is not None else list(model.targets)
    steps = block.steps if block is not None else 1
    horizon = 1 if block is not None else int(model.info.horizon)
    table = read_csv(csv)
    sel = select(table, names, list(model.features), missing, source=str(csv))
    check_time(sel, table.time_column, str(csv),    # newest first: a reversed series
               why="each forecast is scored against the rows after it")
    preds = model.stream().feed(sel.x.astype(np.float32))           # (rows, outputs)
    last = np.flatnonzero(np.isfinite(preds).all(axis=1))
    last = last[last + horizon < len(sel.y)]
    if len(last) - (steps - 1) < MIN_FORECASTS:
        raise DataError(too_few_rows(str(csv), len(sel.y), len(last), model.window, horizon,
                                     steps))
    scored = np.unique(last[:, None] + horizon + np.arange(steps)[None, :])  # the truth rows
    scored = scored[scored < len(sel.y)]
    checked = refuse_training_rows(sel, scored, trained or {}, str(csv), names)
    found = intervals(sel.y, preds[last].astype(np.float64), last, horizon,
                      target_columns(model.features, names),
                      f"calibration CSV {Path(csv).name}", sel.y, steps=steps)
    proto = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in proto.metadata_props}
    props["lstm_edge.intervals"] = json.dumps(found)
    del proto.metadata_props[:]
    helper.set_model_props(proto, props)
    write_atomically(Path(onnx_path), proto.SerializeToString())
    times = None if sel.time is None else (str(sel.time[scored[0]]).strip(),
                                           str(sel.time[scored[-1]]).strip())
    return Calibrated(found, times, checked)


def refuse_training_rows(sel, scored: np.ndarray, trained: dict, source: str,
                         targets) -> str:
    """Refuse calibration rows the model was trained on, as its sidecar records them.

    On the rows a model was fitted on, its errors are smaller than on readings it has not
    seen, and intervals calibrated there cover less than they claim, by as much as the model
    fits its training rows more closely than new ones. ``lstm-train`` keeps the
    time and targets of up to 256 evenly spaced training rows (``data.parts.train.sample``):
    a scored row ``scored`` of ``sel`` at one of those times with the same target values is
    a training row given back, and the calibration is refused. A row at such a time with
    other values (another sensor's series) is not, nor a training row used only as warm-up
    before the first forecast. Returns the words for the report on what was checked;
    empty where the sidecar records no training times or the CSV has no time column.
    """
    from .errors import DataError
    from .forecast import parse_time

    part = (trained.get("parts") or {}).get("train") or {}
    sample = part.get("sample")
    if not sample or sel.time is None:
        return ""

    def key(text):
        return parse_time(str(text)) or str(text).strip()

    known = {key(t): np.asarray(v, np.float64) for t, v in sample}
    given = [i for i in scored if (v := known.get(key(sel.time[i]))) is not None
             and v.shape == sel.y[i].shape and np.allclose(sel.y[i], v, rtol=1e-9, atol=0)]
    first, last = part["times"]
    lines = part["lines"]
    file = trained.get("file", "the training CSV")
    if given:
        span = (key(first), key(last))           # every scored row within the training span
        inside = [i for i in scored if _within(key(sel.time[i]), *span)] or given
        a, b = inside[0], inside[-1]
        where = (f"line {sel.lines[a]} ({str(sel.time[a]).strip()})" if a == b else
                 f"lines {sel.lines[a]}..{sel.lines[b]} ({str(sel.time[a]).strip()} to "
                 f"{str(sel.time[b]).strip()})")
        raise DataError(
            f"{source}: expected rows the model was not trained on, found training rows: "
            f"{where} hold{'s' if a == b else ''} the times and {', '.join(targets)} of "
            f"{file}'s training rows (lines {lines[0]}..{lines[1]}, {first} to {last}, as its "
            f"training sidecar records them), where its errors are smaller than on new "
            f"readings and the intervals would cover less than they claim; give rows after "
            f"{last}, e.g. the validation rows (lines "
            f"{'..'.join(map(str, trained['parts']['validation']['lines']))} of {file})")
    return (f"checked against the training sidecar: none is among its training rows, "
            f"{file} {first} to {last}")


def _within(when, first, last) -> bool:
    """Whether the time ``when`` lies in ``first``..``last``; False where they do not
    compare (text that is not a time, naive against aware)."""
    try:
        return bool(first <= when <= last)
    except TypeError:
        return False


def too_few_rows(source: str, rows: int, made: int, window: int, horizon: int,
                 steps: int) -> str:
    """The message for a calibration CSV of ``rows`` rows that holds too few forecasts:
    ``made`` forecasts whose first reading ahead is among the rows, of which those whose
    every step is (``made - (steps - 1)``) must be :data:`MIN_FORECASTS`.

    A forecast is made once the window is full (``window - 1`` readings of warm-up) and
    scored on the readings ``horizon`` to ``horizon + steps - 1`` after it, so ``rows`` must
    be at least ``window - 1 + horizon + steps - 1 + MIN_FORECASTS``; more where a reading
    gave no forecast (``rows - made`` beyond the warm-up and the readings ahead).

    >>> too_few_rows("c.csv", 1, 0, 1, 1, 6)    # doctest: +NORMALIZE_WHITESPACE
    'c.csv: 1 row holds 0 forecasts with all 6 steps ahead among the rows; expected at least
    10 to calibrate on (each forecast reads a window of 1 reading and is scored on the 6
    readings after it); give at least 16 rows'
    """
    found = max(made - (steps - 1), 0)
    need = max(window - 1 + horizon + steps - 1 + MIN_FORECASTS,
               rows + MIN_FORECASTS - (made - (steps - 1)))
    ahead_words = (f"the {counted(steps, 'reading')} after it" if steps > 1
                   else "the next reading" if horizon == 1 else f"the reading {horizon} ahead")
    which = f" with all {steps} steps ahead among the rows" if steps > 1 else ""
    return (f"{source}: {counted(rows, 'row')} hold{'s' if rows == 1 else ''} "
            f"{counted(found, 'forecast')}{which}; expected at least {MIN_FORECASTS} to "
            f"calibrate on (each forecast reads a window of {counted(window, 'reading')} and "
            f"is scored on {ahead_words}); give at least {need} rows")


def metadata(sidecar: dict | None, n_outputs: int) -> dict:
    """``{"intervals": JSON}`` for the exporter where the sidecar holds intervals that fit."""
    iv = (sidecar or {}).get("intervals")
    if not iv or len(iv["q"][0]) != n_outputs:
        return {}
    return {"intervals": json.dumps(iv)}


def describe(iv: dict, block=None, rows: Calibrated | None = None) -> str:
    """lstm-export's report on the intervals; ``block``: the file's ``lstm_edge.block``
    (:class:`runtime.contract.Block`), whose 90 % half-widths are summarised per target;
    ``rows``: the calibration CSV's rows (``lstm-export --calibrate``), whose time span and
    a line on what rows they must be are added."""
    q90 = dict(zip(iv["levels"], iv["q"])).get(0.9)
    scaled = iv["scale"] != "none"
    unit = " spreads" if scaled else ""
    over = f" of {iv['spread']['readings']} changes" if scaled else ""
    tail = (iv.get("tail") or {}).get("levels")
    forecast = bool(block is not None and block.kind == "forecast" and q90
                    and len(q90) == block.outputs)
    if forecast:
        widths = f"; 90 % half-width {_per_step(q90, block)}{unit}"
    elif q90:
        widths = (f"; 90 % interval width {', '.join(f'{2 * v:.4g}' for v in q90)}{unit}, "
                  f"half-width {', '.join(f'{v:.4g}' for v in q90)}{unit}")
    else:
        widths = ""
    span = f", {rows.times[0]} to {rows.times[1]}" if rows and rows.times else ""
    line = (f"intervals: split-conformal on {iv['n']} rows ({iv['source']}{span}), scale "
            f"{iv['scale']}{over}" + widths
            + (f"; {', '.join(f'{v * 100:g} %' for v in tail)} from an exponential tail (too few "
               f"rows for its rank)" if tail else "")
            + _left_out(iv, block=bool(forecast))
            + ("; lstm-run --interval checks each reading against the forecast 1 step "
               "ahead made before it" if forecast else ""))
    if rows is None:
        return line
    return line + ("\n           they hold as claimed only where these rows are readings the "
                   "model was not fitted on (on its training rows its errors are smaller "
                   "than on new readings, and the intervals come out too narrow); "
                   + (rows.checked or "no training sidecar with times to check them against"))


def _per_step(q: list, block) -> str:
    """A block's half-widths in a few words: per target, step 1 and the last step
    (``temp 0.8 (1 ahead) to 2.1 (24 ahead)``), not every column."""
    k = len(block.names)
    ends = [f"{q[i]:.4g} (1 ahead)" + (f" to {q[(block.steps - 1) * k + i]:.4g} "
                                       f"({block.steps} ahead)" if block.steps > 1 else "")
            for i in range(k)]
    return ", ".join(ends) if k == 1 else ", ".join(f"{n} {e}" for n, e in zip(block.names, ends))


def _left_out(iv: dict, block: bool = False) -> str:
    """What :func:`faults` left out, for :func:`describe`; empty where nothing was. A
    block's columns are counted, not listed."""
    left = (iv.get("left_out") or {}).get("scores") or []
    found = [v for column in left for v in column]
    if not found:
        return ""
    unit = " spreads" if iv["scale"] != "none" else ""
    what = (f"{len(found)} scores left out as faults across the {len(left)} columns (largest "
            f"{max(found):.3g}{unit}" if block else
            f"{len(found)} of {iv['n']} rows left out as faults (scores "
            f"{', '.join(f'{v:.3g}' for v in found)}{unit}")
    return (f"; {what}; the others' tail gives each a chance below {FAULT_P:g}): the "
            f"intervals are for normal readings, and faults like these raise alerts")
