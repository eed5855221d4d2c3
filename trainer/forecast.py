"""What the network learns and how a forecast is judged: residual targets, differenced
inputs, and the figures of the honest test tail.

Residual target (the default). The network predicts the change ``y[t+h] - y[t]`` divided
by the robust scale of the training changes, and the target's current reading is added
back. The head starts at zero, so an untrained model *is* the naive forecast ("repeat the
last value") and training can only move it from there; and the model never has to rebuild
a level it did not see in training. Where a target is not among the features there is no
current reading to add back, and the target stays a level (``Framing.note`` says so).

Seasonal target (``--target-kind seasonal``; ``auto``, the default, takes it where it beats
the residual one on the validation rows). The change is counted from ``y[t] + y[t+h-m] -
y[t-m]``: the last reading plus the change the same ``h`` steps made one season ago, the
seasonal random walk, which on a trended seasonal series (airline passengers) is a close
second to ARIMA where the last reading is far behind. The exported graph carries the last
season's readings as state (docs/contract.md, changelog).

Linear path (``linear``; auto: where it wins on the validation rows). The start also adds
least-squares weights times the last 1-3 changes of every reading (:meth:`Framing.
with_linear`): an untrained model is an ARIMA(p,1,0)-like forecast that the network refines.
More than one step ahead the weights are fitted directly on the ``h``-step change, or as a
one-step autoregression of every reading's change iterated ``h`` steps (as ARIMA forecasts);
both are a linear map of the same changes, and the validation rows choose.

Differenced inputs (``difference=True``, the default: it beat the naive forecast in 6 of 6
bundled settings where readings in, residual out did in 4 of 6; docs/forecasting.md). The
network reads ``x[t] - x[t-1]`` scaled by
the robust scale of the training differences instead of the readings themselves. The first
reading of a series (and of every window) has no reading before it: its difference is 0,
"no change", in training and in the exported graph alike.

>>> y = np.array([[1.0], [2.0], [4.0], [7.0]])            # (rows, targets)
>>> f = Framing("residual", (0,), np.array([2.0]), False)
>>> f.target_series(y, horizon=1).ravel().tolist()       # row r holds (y[r] - y[r-1]) / 2
[0.0, 0.5, 1.0, 1.5]
>>> differences(y).ravel().tolist()
[0.0, 1.0, 2.0, 3.0]
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

import numpy as np

from .errors import DataError

TARGET_KINDS = ("auto", "residual", "seasonal", "level")
MAX_LAGS = 3      # most past changes the linear path reads (Framing.with_linear)
SHORT_TAIL = 48   # fewer test predictions than this get a line of caution


def robust_scale(a: np.ndarray) -> np.ndarray:
    """Per column IQR / 1.349 (the std on normal data), else the std, else 1."""
    q1, q3 = np.percentile(a, [25, 75], axis=0)
    scale = np.where(q3 > q1, (q3 - q1) / 1.349, a.std(axis=0))
    return np.where(scale > 0, scale, 1.0)


def differences(x: np.ndarray) -> np.ndarray:
    """``(rows, columns)`` -> ``x[t] - x[t-1]``, 0 for the first row ("no change")."""
    return np.concatenate((np.zeros_like(x[:1]), np.diff(x, axis=0)))


def lagged_changes(x: np.ndarray, lags: int) -> np.ndarray:
    """Row ``t``: ``[d[t], d[t-1], ..., d[t-lags+1]]`` of ``d = differences(x)``, 0 before
    the series' start (a fresh stream's rule too): ``(rows, lags * features)``.

    >>> lagged_changes(np.array([[1.0], [3.0], [4.0]]), 2).tolist()
    [[0.0, 0.0], [2.0, 0.0], [1.0, 2.0]]
    """
    d = differences(x)                                               # (rows, features)
    shifted = [np.concatenate([np.zeros_like(d[:k]), d[:len(d) - k]]) for k in range(lags)]
    return np.concatenate(shifted, axis=1)


def seasonal_change(y: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Row ``t``: the change the same ``horizon`` steps made one season before,
    ``y[t + h - m] - y[t - m]``; 0 ("no change") while ``t < m``: a stream from the series'
    first row has not seen a season yet (the exported graph's rule too).

    >>> seasonal_change(np.array([[1.0], [5.0], [2.0], [7.0], [3.0]]), 1, 2).ravel().tolist()
    [0.0, 0.0, 4.0, -3.0, 5.0]
    """
    out = np.zeros_like(y, dtype=np.float64)                         # (rows, targets)
    if len(y) > season:
        out[season:] = y[horizon:len(y) - season + horizon] - y[:len(y) - season]
    return out


def iterated_weights(x: np.ndarray, end: int, horizon: int, lags: int) -> np.ndarray:
    """A VAR(``lags``) on the one-step changes of every reading, least squares on the changes
    of rows < ``end``, iterated ``horizon`` steps: ``(lags * features + 1, features)`` weights
    (the last row the intercept) taking ``[d[t], ..., d[t-lags+1], 1]`` to the summed changes
    ``x[t+horizon] - x[t]`` the autoregression forecasts; a linear map of the same lagged
    changes as a direct fit, so the graph's linear path holds either.

    >>> x = np.cumsum(0.5 ** np.arange(8))[:, None]          # changes halve every step
    >>> w = iterated_weights(x, 8, 2, 1)                      # d + d/2 from d (and 0)
    >>> np.round(w.ravel(), 6).tolist()
    [0.75, 0.0]
    """
    features = x.shape[1]
    rows = np.arange(lags, end - 1)                                  # predicting d[row + 1]
    design = np.concatenate([lagged_changes(x, lags)[rows], np.ones((len(rows), 1))], 1)
    step, *_ = np.linalg.lstsq(design, differences(x)[rows + 1], rcond=None)  # (n, features)
    # The companion matrix moves [d[t], ..., d[t-lags+1], 1] one step on: the new change
    # first, every older one a block down, the intercept's 1 kept.
    n = lags * features + 1
    move = np.zeros((n, n))
    move[:, :features] = step
    for j in range(1, lags):
        move[(j - 1) * features:j * features, j * features:(j + 1) * features] = np.eye(features)
    move[-1, -1] = 1.0
    power, total = np.eye(n), np.zeros((n, features))
    for _ in range(horizon):
        power = power @ move
        total += power[:, :features]                                 # d[t + s] for s = 1..h
    return total


@dataclass(frozen=True)
class Framing:
    """How the network's target and inputs relate to the CSV's columns.

    The network predicts ``(y[t+h] - start[t]) / delta_scale``, the forecast it starts from
    (an untrained model) being ``start``: the last reading (``residual``), or the last
    reading plus the change the same ``h`` steps made one season before (``seasonal``: the
    seasonal random walk, a close second to ARIMA on a trended seasonal series).
    """

    kind: str                      # residual | seasonal | level
    target_features: tuple         # feature index of each target (residual, seasonal), else ()
    delta_scale: np.ndarray | None  # (targets,) robust scale of the training changes
    difference: bool               # the network reads differenced inputs
    note: str = ""                 # why this target: a fallback, or the validation's choice
    season: int | None = None      # m of a seasonal target
    linear: tuple | None = None    # (weights (lags, features, targets), bias (targets,)) on
    #                                the raw changes x[t-j] - x[t-j-1]: Framing.with_linear
    linear_fit: str = "direct"     # the path's weights: direct on the h-step change, or
    #                                iterated from a one-step autoregression

    @classmethod
    def choose(cls, kind: str, features, targets, y: np.ndarray, split: int, test: int,
               horizon: int, difference: bool, season: int | None = None,
               mode: str = "sequence", x: np.ndarray | None = None,
               linear: bool | None = None) -> "Framing":
        """The target framing; scales from the training rows ``y[:split]`` only.

        ``auto`` takes the seasonal target where a season is known, the model streams one
        reading at a time (``sequence`` mode: the graph carries the last season's readings)
        and the seasonal start beats the last reading on the validation rows
        ``[split, test)``; otherwise the residual one. The test tail is never looked at.

        ``linear`` adds the linear path (:meth:`with_linear`) to the start: True always,
        None (auto) where it lowers the start's validation MAE; it needs the readings ``x``,
        differenced inputs and ``sequence`` mode.
        """
        if kind not in TARGET_KINDS:
            raise ValueError(f"target kind must be one of {TARGET_KINDS}, got {kind!r}")
        missing = [t for t in targets if t not in features]
        if kind in ("auto", "residual", "seasonal") and missing:
            # Differences alone cannot tell a level either: the model reads the readings.
            note = (f"target {', '.join(map(repr, missing))} is not among the features, so "
                    f"there is no current reading to add a change to: the model predicts the "
                    f"level{' from the readings, not their differences' if difference else ''}"
                    f" (add it to --features for a residual model)")
            return cls("level", (), None, False, note)
        if kind == "level":
            return cls("level", (), None, difference)
        index = tuple(list(features).index(t) for t in targets)
        residual = cls("residual", index, None, difference)
        seasonal = cls("seasonal", index, None, difference, season=season)
        why = seasonal._unfit(mode, horizon, split)
        if kind == "seasonal" and why:
            raise DataError(f"--target-kind seasonal {why}; or use --target-kind residual")
        if kind == "auto" and not why:
            rows = np.arange(split, test) - horizon                  # validation predictions
            truth = y[rows + horizon]
            naive = np.abs(residual.start(y, rows, horizon) - truth).mean()
            ours = np.abs(seasonal.start(y, rows, horizon) - truth).mean()
            kind = "seasonal" if ours < naive else "residual"
            note = (f"target {kind}: on the validation rows the seasonal start (last reading "
                    f"+ the change {horizon} step(s) made one season of {season} before) has "
                    f"{ours / naive:.3f} x the naive MAE")
        else:
            kind, note = ("residual" if kind == "auto" else kind), ""
        chosen = seasonal if kind == "seasonal" else residual
        chosen = cls(kind, index, None, difference, note, chosen.season)
        if linear is not False:
            chosen = chosen.with_linear(x, y, split, test, horizon, mode, required=bool(linear))
        rows = np.arange(0, split - horizon)                         # training predictions
        changes = y[rows + horizon] - chosen.start(y, rows, horizon, x)  # (rows - h, targets)
        return replace(chosen, delta_scale=robust_scale(changes))

    def with_linear(self, x, y: np.ndarray, split: int, test: int, horizon: int, mode: str,
                    required: bool = False) -> "Framing":
        """This framing plus the linear path: ``start += [d[t], ..., d[t-p+1]] @ W + b``,
        ``d[t] = x[t] - x[t-1]`` the raw changes of every feature: the autoregressive
        "highway" of LSTNet (Lai et al. 2018, arXiv:1703.07015), here an ARIMA(p,1,0)-like
        forecast that the network refines.

        ``p`` (1 to :data:`MAX_LAGS`), more than one step ahead (residual start) whether
        ``W, b`` are fitted directly or iterated (:func:`iterated_weights`), and whether to
        keep the path at all (unless ``required``), are chosen by the start's MAE on the
        validation rows, with ``W, b`` fitted by least squares on the training rows; the
        choice is then refitted on every row before the test tail, as a statistical model is
        fitted before the tail. (On occupancy 4 steps ahead, where AutoARIMA picks
        ARIMA(1,1,2), the iterated fit of 2 lags has 0.736 x the plain start's validation
        MAE against the direct fit's best 0.754.)
        """
        why = ("needs differenced inputs and --mode sequence" if not self.difference
               or mode != "sequence" or x is None else "")
        if why:
            if required:
                raise DataError(f"the linear path {why}")
            return self
        rows = np.arange(split, test) - horizon                      # validation predictions
        truth = y[rows + horizon]
        plain = np.abs(self.start(y, rows, horizon) - truth).mean()
        # Iterating a one-step fit forecasts the target's change from every reading's, which
        # only the residual start (the last reading) adds up to; at one step both are one fit.
        ways = ("direct", "iterated") if horizon > 1 and self.kind == "residual" else ("direct",)
        fits = {(way, lags): self._fit_linear(x, y, split - horizon, horizon, lags, way)
                for way in ways for lags in range(1, MAX_LAGS + 1)}
        maes = {key: np.abs(f.start(y, rows, horizon, x) - truth).mean()
                for key, f in fits.items()}
        way, lags = min(maes, key=maes.get)
        fitted = f", {way} over {horizon} steps" if len(ways) > 1 else ""
        verdict = (f"linear path: on the validation rows the start with {lags} lag(s) of "
                   f"changes{fitted} has {maes[way, lags] / plain:.3f} x the MAE of the start "
                   f"without it")
        note = "; ".join(filter(None, (self.note, verdict)))
        if not required and maes[way, lags] >= plain:
            return replace(self, note=note)
        return replace(self._fit_linear(x, y, test - horizon, horizon, lags, way), note=note)

    def _fit_linear(self, x, y: np.ndarray, end: int, horizon: int, lags: int,
                    way: str = "direct") -> "Framing":
        """The linear path of ``lags`` lags, least squares on targets before row
        ``end + horizon`` (predictions from rows < ``end``): ``direct`` on the ``horizon``-step
        change, or ``iterated`` (:func:`iterated_weights`)."""
        if way == "iterated":
            fit = iterated_weights(x, end + horizon, horizon, lags)[:, self.target_features]
        else:
            rows = np.arange(lags, end)                              # the last row each saw
            design = np.concatenate([lagged_changes(x, lags)[rows], np.ones((len(rows), 1))], 1)
            fit, *_ = np.linalg.lstsq(design, y[rows + horizon] - self.start(y, rows, horizon),
                                      rcond=None)                    # (lags * features + 1, k)
        weights = fit[:-1].reshape(lags, x.shape[1], -1)             # (lags, features, k)
        return replace(self, linear=(weights, fit[-1]), linear_fit=way)

    def _unfit(self, mode: str, horizon: int, split: int) -> str:
        """Why a seasonal target cannot be had here ("" where it can)."""
        m = self.season
        if not m or m < 2:
            return "needs a season (--season N, or a time column it can be guessed from)"
        if mode != "sequence":
            return ("needs --mode sequence (the exported graph carries the last season's "
                    "readings as state, one reading per step)")
        if horizon > m:
            return f"needs --horizon at most the season ({m}), got {horizon}"
        if split < 2 * m + horizon:
            return f"needs at least two seasons of training rows ({2 * m + horizon}), got {split}"
        return ""

    @property
    def residual(self) -> bool:
        """Whether the network predicts a change that the graph adds to a start."""
        return self.kind in ("residual", "seasonal")

    def start(self, y: np.ndarray, last: np.ndarray, horizon: int,
              x: np.ndarray | None = None) -> np.ndarray:
        """The forecast an untrained model gives for ``y[last + horizon]``: (steps, targets).

        ``x``, the readings ``(rows, features)``, is needed with a linear path only.
        """
        start = y[last]
        if self.kind == "seasonal":
            start = start + seasonal_change(y, horizon, self.season)[last]
        if self.linear is not None:
            weights, bias = self.linear
            lags, _, k = weights.shape
            start = start + lagged_changes(x, lags)[last] @ weights.reshape(-1, k) + bias
        return start

    def target_series(self, y: np.ndarray, horizon: int,
                      x: np.ndarray | None = None) -> np.ndarray:
        """Row ``r`` holds the change from the start at ``r - horizon`` to ``r``, scaled
        (0 before).

        The windowing code takes a window's target from row ``last + horizon``, so this
        series gives it ``(y[last + h] - start[last]) / scale`` without knowing about
        residuals.
        """
        out = np.zeros_like(y, dtype=np.float32)
        last = np.arange(len(y) - horizon)
        out[horizon:] = (y[horizon:] - self.start(y, last, horizon, x)) / self.delta_scale
        return out

    def to_json(self) -> dict:
        """The sidecar's fields (docs/contract.md, changelog)."""
        side = {"target_kind": self.kind, "difference": self.difference}
        if self.residual:
            side["target_features"] = list(self.target_features)
            side["delta_scale"] = self.delta_scale.tolist()
        if self.kind == "seasonal":
            side["season"] = self.season
        if self.linear is not None:
            side["linear"] = {"weights": np.asarray(self.linear[0]).tolist(),
                              "bias": np.asarray(self.linear[1]).tolist()}
            side["linear_fit"] = self.linear_fit
        if self.note:
            side["target_note"] = self.note
        return side


# --------------------------------------------------------------------------- seasons

_SPACINGS = ((dt.timedelta(days=28), dt.timedelta(days=31), 12, "monthly"),
             (dt.timedelta(days=6.5), dt.timedelta(days=7.5), 52, "weekly"),
             (dt.timedelta(hours=23), dt.timedelta(hours=25), 7, "daily"))


def parse_time(text: str) -> dt.datetime | None:
    """ISO date/time, ``YYYY-MM``, ``YYYYMMDD`` or epoch seconds; None if none of those
    (``2022/03/20`` too: lstm-run cannot order it, so the trainer refuses it, trainer.data)."""
    text = str(text).strip()
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        pass
    for fmt in ("%Y-%m", "%Y%m%d"):           # as lstm-run orders them (runtime.order)
        try:
            return dt.datetime.strptime(text, fmt)
        except ValueError:
            pass
    try:
        value = float(text)
    except ValueError:
        return None
    if 1e8 <= value <= 4.2e9:
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    return None


def guess_season(times) -> tuple[int | None, str]:
    """The season length from the time column's median spacing, and how it was found.

    Hourly 24, daily 7, weekly 52, monthly 12; a spacing that divides a day gives the
    readings per day (e.g. 96 for 15 minutes) up to 288. None where nothing fits.

    >>> guess_season(["1949-01", "1949-02", "1949-03"])
    (12, 'monthly')
    >>> guess_season(["2022-03-20T11:00:00+01:00", "2022-03-20T12:00:00+01:00"])
    (24, 'hourly')
    """
    if times is None or len(times) < 2:
        return None, "no time column"
    parsed = [parse_time(t) for t in times[:500]]
    if any(p is None for p in parsed):
        return None, "time column not understood"
    try:
        steps = sorted(b - a for a, b in zip(parsed, parsed[1:]))
    except TypeError:                       # mixed naive and aware times
        return None, "time column not understood"
    spacing = steps[len(steps) // 2]
    for low, high, season, name in _SPACINGS:
        if low <= spacing <= high:
            return season, name
    seconds = spacing.total_seconds()
    if seconds > 0:
        per_day = 86400.0 / seconds
        if abs(per_day - round(per_day)) < 0.05 * per_day and 2 <= round(per_day) <= 288:
            name = "hourly" if round(per_day) == 24 else f"every {seconds / 60:g} minutes"
            return int(round(per_day)), name
    return None, f"spacing {spacing} has no usual season"


# --------------------------------------------------------------------------- figures

def errors(pred: np.ndarray, truth: np.ndarray) -> dict:
    """MAE and RMSE per target of ``(steps, targets)`` arrays, in the target's units."""
    diff = pred - truth
    return {"mae": np.abs(diff).mean(axis=0).tolist(),
            "rmse": np.sqrt((diff ** 2).mean(axis=0)).tolist()}


def seasonal_naive(y: np.ndarray, last: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """The value one season before each target: ``y[t + h - m * ceil(h / m)]``."""
    back = season * -(-horizon // season)
    return y[last + horizon - back]


def mase_scale(y_train: np.ndarray, season: int | None) -> np.ndarray:
    """In-sample mean |y[t] - y[t - m]| over the training rows (m = 1 without a season)."""
    m = season or 1
    if len(y_train) <= m:                   # no pair a season apart: no scale
        return np.full(y_train.shape[1:], np.nan)
    scale = np.abs(y_train[m:] - y_train[:-m]).mean(axis=0)
    return np.where(scale > 0, scale, np.nan)


def score(y: np.ndarray, pred: np.ndarray, last: np.ndarray, horizon: int,
          y_train: np.ndarray, season: int | None) -> dict:
    """The figures of one set of predictions: model and baselines, skill and MASE.

    Parameters
    ----------
    y : (rows, targets) the target series, raw units.
    pred : (steps, targets) the model's predictions, raw units, for rows ``last + horizon``.
    last : (steps,) the last row each prediction saw.
    y_train : the training rows of ``y`` (the mean forecast and MASE's scale).
    """
    truth = y[last + horizon]                                        # (steps, targets)
    out = {"steps": int(len(last)),
           "model": errors(pred, truth),
           "naive": errors(y[last], truth),
           "mean": errors(np.broadcast_to(y_train.mean(axis=0), truth.shape), truth)}
    naive_mae = np.asarray(out["naive"]["mae"])
    out["skill"] = _ratio(out["model"]["mae"], naive_mae)
    usable = season and (last + horizon - season * -(-horizon // season) >= 0).all()
    if usable:
        out["seasonal_naive"] = errors(seasonal_naive(y, last, horizon, season), truth)
        out["seasonal_skill"] = _ratio(out["model"]["mae"], out["seasonal_naive"]["mae"])
    out["mase"] = _ratio(out["model"]["mae"], mase_scale(y_train, season if usable else None))
    return out


def _ratio(a, b) -> list:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / b, np.nan).tolist()


def candidates(figures: dict) -> dict:
    """Model, naive, seasonal naive, mean and the statistical anchors (where measured,
    :mod:`trainer.anchors`): name -> ``{"mae", "rmse"}``, in the report's order."""
    out = {n: figures[n] for n in ("model", "naive", "seasonal_naive", "mean") if n in figures}
    out.update(figures.get("anchors", {}))
    return out


def best_by_mae(figures: dict, target: int | None = None) -> str:
    """Which of :func:`candidates` has the lowest MAE: on ``target`` (an index), or the
    mean over the targets where None."""
    rows = candidates(figures)
    pick = (lambda v: float(np.mean(v))) if target is None else (lambda v: float(v[target]))
    return min(rows, key=lambda n: pick(rows[n]["mae"]))


def beaten_by(figures: dict, target: int) -> dict:
    """The forecasts other than naive (the skill's own line) whose MAE on ``target`` is
    below the model's: name -> model MAE / theirs."""
    rows = candidates(figures)
    model = rows["model"]["mae"][target]
    return {n: model / f["mae"][target] for n, f in rows.items()
            if n not in ("model", "naive") and f["mae"][target] < model}


def caution(figures: dict, season: int | None) -> str | None:
    """One line when the test tail is too short for its figures to carry much weight."""
    steps = figures["steps"]
    if steps < SHORT_TAIL or (season and steps < 2 * season):
        need = max(SHORT_TAIL, 2 * (season or 0))
        return (f"caution: the test tail holds {steps} predictions (fewer than {need}); "
                f"its figures can swing with a few readings — give more data or a larger "
                f"--test-fraction before trusting the ranking")
    return None
