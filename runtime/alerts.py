"""Calibrated prediction intervals and anomaly flags on a stream (numpy only).

A model whose file holds ``lstm_edge.intervals`` (docs/contract.md) knows, for each output
column and a few levels L (0.8, 0.9, 0.95, 0.99), a split-conformal quantile ``q``: on
calibration rows the model never trained on, a share L of the nonconformity scores
``|y - pred| / spread`` lay at or below ``q`` (Lei et al. 2018, "Distribution-free
predictive inference for regression", JASA 113(523)). Each forecast then carries

    lo = pred - q * spread,     hi = pred + q * spread

``spread`` is 1 with ``scale: "none"``. With ``scale: "mean-abs-change"`` it is the mean
absolute change of the target over its last ``readings`` differences, never below
``floor``: the normalised nonconformity score of locally-weighted conformal prediction
(Papadopoulos et al. 2008, "Normalized nonconformity measures for regression conformal
prediction"), so that intervals widen on volatile stretches. A stream has fewer
differences at its start: the missing ones count as ``prior``, the calibration rows' mean
absolute change, so a fresh stream starts from the typical width. :func:`local_spread` is
the one definition, used by the trainer's calibration and by every stream.

When the reading a forecast was for arrives (``horizon`` readings later; the stream keeps
the last ``horizon`` forecasts), the answer says whether it fell outside (``anomaly``) and
its ``score`` = ``|y - pred| / half-width``: how many half-widths from the forecast it
lies, so ``score > 1`` is outside and 2 is twice as far out as the interval reaches. With
several targets the largest score counts. Conformal coverage is an average over
exchangeable rows (Barber et al. 2023, "Conformal prediction beyond exchangeability",
discuss what drift costs a time series); the benchmark (bench/alerts.py) measures it.

A forecast block (``lstm_edge.block``: ``S`` steps of ``K`` targets, column ``s * K + k``
for target ``k``, ``s + 1`` readings ahead) has an interval on every column, each with its
own quantile and its target's spread. The reading that arrives is checked against the
step-1 columns of the answer made one reading before, the narrowest and most recent
forecast of it: checking it against every step that forecast it (S forecasts of each
reading) would raise up to S times the false alerts the level promises, from errors that
are not independent. So a block's alert state keeps one pending forecast, of its ``K``
step-1 columns, and everything below (hygiene, CUSUM, ``adapt``) works on those columns;
with ``adapt`` the other steps keep the file's quantile, for the stream never sees their
misses.

Alert hygiene, per stream (:class:`AlertConfig`): an ``outside`` alert is raised once
``min_run`` readings in a row fell outside, and then stands until ``hold_off`` readings in a
row fell inside: one bad stretch is one alert (``hold_off`` 0: none stands, every reading
outside from the ``min_run``-th of a run on raises one). A standing alert is escalated: a
reading whose score is at least ``ESCALATE`` times the largest score of its stretch so far
raises a new ``outside`` alert (a dropout that begins while a mild miss stands), and its
score becomes the stretch's largest. A ``stuck`` alert is raised when a target read the
same value ``stuck`` times in a row (a flat line fools a forecaster, whose next forecast is
that value again); ``stuck`` is 0 (off) or at least 2, as each reading is one in a row with
itself. A reading not checked (the first ones, a gap) moves no counter but the stuck one.

A run below ``min_run`` is counted against the forecast it began from, its anchor (the
centre and half-width, per checked column, of the forecast its first reading missed), not
only against each reading's own: the forecaster reads the last reading, so after a dropout
its forecast follows to 0 and the zeros that follow lie inside their own intervals, while the
normal reading after a spike misses the forecast that followed the spike. Each reading after
the first counts where it lies outside the anchor's interval and either outside its own or
at least ``FOLLOWED`` anchor half-widths from the anchor's centre (the largest over targets);
else the run ends, and that reading opens none. A spike's return so ends its run; a dropout
or level shift that stays raises on its ``min_run``-th reading; a mild miss followed by the
series' own motion ends its run as before. Once raised, the readings count on their own
intervals. With ``min_run`` 1 no run stays below it, and there is no anchor.

A slow drift or a small level shift can stay inside every interval: a forecaster that reads
differences follows it. With ``cusum`` > 0 a ``shift`` alert comes from Page's two-sided
cumulative sum (Page 1954, "Continuous inspection schemes", Biometrika 41(1/2)) of the
standardized residuals ``u = (y - pred) / unit``, ``unit`` the half-width of the narrowest
calibrated interval (the 80 % one in files lstm-train writes), each ``u`` clipped to
``±CUSUM_CLIP`` so that one spike alone is the interval's to report::

    S+ = max(0, S+ + u - k),   S- = max(0, S- - u - k),   k = CUSUM_SLACK

An alert is raised where either sum exceeds ``cusum``; both then restart at 0, and they
stay at 0 while an ``outside`` alert stands or a ``stuck`` stretch goes on (that stretch is
reported already).

Split-conformal coverage holds for rows like the calibration rows; a service whose errors
drift over months gets more or fewer misses than it was promised. With ``adapt`` > 0 each
stream tracks its own quantile from the misses it has seen, the quantile tracker of
Angelopoulos, Candès and Tibshirani (2023, "Conformal PID control for time series
prediction", NeurIPS; the score-scale form of Gibbs and Candès 2021's adaptive conformal
inference), per output::

    q[t+1] = q[t] + adapt * q_L * (miss[t] - (1 - L)),   interval: max(q, 0) * spread

from ``q_L``, the file's quantile at the level L. A miss widens the next intervals by
``adapt * L`` of the calibrated width, an inside reading narrows them by
``adapt * (1 - L)``: over any T checked readings whose scores stay below B the share of misses
is within ``(B + adapt * q_L) / (adapt * q_L * T)`` of 1 - L, whatever the errors do
(their Proposition 1). ``adapt`` is at most :func:`max_adapt` of the level, so that one
reading inside takes no more than ``MAX_NARROWING`` of ``q_L`` away. The working quantile is
alert state, saved and restored with the rest. It also widens the intervals over a fault
that lasts (as the default's forecaster, which reads differences, follows a level shift in
a few readings: in neither is a fault that stays reported again). Page's CUSUM standardizes
by the working interval then, scaled as it is. Off by default: docs/alerts.md gives the
benchmark's figures and why.

>>> import numpy as np
>>> local_spread(np.array([[1.0], [3.0], [2.0], [2.0]]), readings=2, floor=np.array([0.1]),
...              prior=np.array([1.0]))[:, 0]
array([1. , 1.5, 1.5, 0.5])
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .errors import ContractError, InputError, SnapshotError

KEY = "intervals"                    # lstm_edge.intervals in the file's metadata
SCALES = ("none", "mean-abs-change")
_MAGIC = b"LEA1"                     # alert state bytes, version 1
CUSUM_SLACK = 0.5                    # k: residuals within half a unit drift nowhere
CUSUM_CLIP = 3.0                     # one residual moves a sum by at most 3 - k units
# A standing alert is escalated by a reading this many times further out than its stretch's
# largest score so far: a fault that begins while a mild miss stands (a dropout to 0 scored
# 213 after the 1.78 that opened the alert, and was swallowed). The cost, on the bundled
# water-flow model over its whole series (1,268 readings, 62 alerts at 0.9 without it): 2
# more at 0.9 (3 at 0.8, 1 at 0.95, 0 at 0.99), each a drop of the series itself to 24 l/s
# or its recovery (steps 94, 109, 212), none on a normal reading; 2 would add 4 at 0.9.
ESCALATE = 4.0
# A run below --min-run goes on through a reading inside its own interval where the reading
# lies at least this many half-widths from the centre of the interval the run began from
# (its anchor): the forecaster has followed a fault that stays (a dropout to 0: 190). Nearer,
# it is the series' own motion: on the bundled model over its whole series at 0.9 (64 alerts
# at --min-run 1), a mild miss (score 1.2) and the readings after it, rising with the day,
# leave the anchor's narrow interval (2.4 half-widths two readings on). Counting every
# reading outside the anchor, --min-run 2 and 3 raise 53 and 47 alerts; requiring 2, 3, 4 or
# 6 half-widths of those inside their own, 31/28, 16/15, 11/8 and 11/7; on each reading's own
# interval alone, 14/6 (the 2 more at 4 are the series' own recoveries from 24 l/s).
FOLLOWED = 4.0
# ``adapt``: an inside reading takes adapt * (1 - L) * q_L from the working quantile. At
# most this share of q_L, so 20 readings in a row inside, not 1 or 2, bring it to 0 from
# q_L (at 0.9 with adapt 5, two readings did: zero-width intervals and scores of 1e15).
MAX_NARROWING = 0.05
# why ``stuck`` 1 is refused (AlertConfig, and lstm-run's --stuck)
STUCK_ONE = "1 would raise a stuck alert on every reading: each is one in a row with itself"


def max_adapt(level: float) -> float:
    """The largest ``adapt`` at ``level``: one inside reading narrows the working quantile
    by at most ``MAX_NARROWING`` of the file's, and one miss widens it by less than the
    file's (``adapt`` at most 1).

    >>> max_adapt(0.9), max_adapt(0.99)
    (0.5, 1.0)
    """
    return min(1.0, round(MAX_NARROWING / (1.0 - level), 12))


def local_spread(values: np.ndarray, readings: int, floor: np.ndarray,
                 prior: np.ndarray) -> np.ndarray:
    """``(rows, targets)`` values -> ``(rows, targets)``: the spread after each row.

    The mean of ``|v[t] - v[t-1]|`` over the last ``readings`` differences up to row ``t``,
    those before the first row counting as ``prior``; at least ``floor``.
    """
    values = np.asarray(values, np.float64)
    diffs = np.abs(np.diff(values, axis=0))                        # (rows - 1, targets)
    total = np.concatenate((np.zeros((1, values.shape[1])), np.cumsum(diffs, axis=0)))
    rows = np.arange(len(values))
    start = np.maximum(rows - readings, 0)
    missing = (readings - (rows - start))[:, None]                 # differences not yet seen
    mean = (total[rows] - total[start] + missing * prior) / readings
    return np.maximum(mean, floor)


@dataclass(frozen=True)
class Intervals:
    """``lstm_edge.intervals``, checked: one quantile per level and output column."""

    levels: tuple[float, ...]
    q: np.ndarray                    # (levels, outputs)
    scale: str = "none"
    readings: int = 0                # spread: differences averaged (scale mean-abs-change)
    floor: np.ndarray | None = None  # (targets,) the spread's lower bound
    prior: np.ndarray | None = None  # (targets,) a fresh stream's spread
    target_features: tuple = ()      # input column of each target, None where it is none
    n: int = 0
    source: str = ""
    left_out: int = 0                # calibration rows left out as faults (for the record)

    @classmethod
    def from_model(cls, model) -> "Intervals | None":
        """The model's intervals, None where its file has none."""
        text = model.info.extra.get(KEY)
        return None if text is None else cls.parse(text, model.n_targets)

    @classmethod
    def parse(cls, text: str, n_outputs: int) -> "Intervals":
        try:
            d = json.loads(text)
            levels = tuple(float(v) for v in d["levels"])
            q = np.asarray(d["q"], np.float64)
            scale = str(d.get("scale", "none"))
            spread = d.get("spread") or {}
            floor = np.asarray(spread.get("floor", []), np.float64) if scale != "none" else None
            prior = np.asarray(spread.get("prior", []), np.float64) if scale != "none" else None
            left = (d.get("left_out") or {}).get("scores") or []
            found = cls(levels, q, scale, int(spread.get("readings", 0)), floor, prior,
                        tuple(d.get("target_features") or [None] * n_outputs),
                        int(d.get("n", 0)), str(d.get("source", "")),
                        sum(len(column) for column in left))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ContractError(f"metadata lstm_edge.{KEY} cannot be read ({exc}); re-export "
                                f"the model with lstm-export") from None
        problems = found._problems(n_outputs)
        if problems:
            raise ContractError(f"metadata lstm_edge.{KEY}: {'; '.join(problems)}; re-export "
                                f"the model with lstm-export")
        return found

    def _problems(self, n_outputs: int) -> list[str]:
        problems = []
        if not all(0 < v < 1 for v in self.levels):
            problems.append(f"levels must lie between 0 and 1, got {list(self.levels)}")
        if self.q.shape != (len(self.levels), n_outputs):
            problems.append(f"q must be (levels, outputs) = ({len(self.levels)}, {n_outputs}), "
                            f"got {self.q.shape}")
        elif not (np.isfinite(self.q).all() and (self.q >= 0).all()):
            problems.append("q must be finite and not negative")
        if self.scale not in SCALES:
            problems.append(f"scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if len(self.target_features) != n_outputs:
            problems.append(f"target_features must name one input column per output, got "
                            f"{len(self.target_features)} for {n_outputs}")
        if self.scale != "none":
            if self.readings < 1 or self.floor is None or self.prior is None \
                    or self.floor.shape != (n_outputs,) or self.prior.shape != (n_outputs,) \
                    or not ((self.floor > 0).all() and np.isfinite(self.prior).all()):
                problems.append("spread needs readings >= 1 and one floor > 0 and one finite "
                                "prior per output")
            if None in self.target_features:
                problems.append("a scaled interval needs every target among the features")
        return problems

    def level_index(self, level: float) -> int:
        for i, v in enumerate(self.levels):
            if abs(v - level) < 1e-9:
                return i
        raise InputError(f"no interval at level {level:g}: the model is calibrated at "
                         f"{', '.join(f'{v:g}' for v in self.levels)}; pick one of those")


@dataclass
class AlertConfig:
    """What a stream's answers carry and when it raises an alert (see the module's notes)."""

    level: float = 0.9     # interval level: one of those the model was calibrated at
    min_run: int = 1       # readings in a row outside before an ``outside`` alert is raised
    hold_off: int = 3      # readings in a row inside before another one may be raised
    stuck: int = 0         # the same target value this many readings in a row: ``stuck`` (0: off)
    cusum: float = 0.0     # Page's CUSUM threshold, in units: ``shift`` alerts (0: off)
    adapt: float = 0.0     # quantile tracking step, a share of the level's quantile (0: off)

    def __post_init__(self):
        numbers = ("level", "min_run", "hold_off", "stuck", "cusum", "adapt")
        wrong = [f"{name} must be a number, got {getattr(self, name)!r}" for name in numbers
                 if isinstance(getattr(self, name), bool)
                 or not isinstance(getattr(self, name), (int, float, np.integer, np.floating))]
        if wrong:
            raise InputError("; ".join(wrong))
        # NaN compares False with everything, so each test asks for what is allowed.
        problems = []
        for name, low in (("min_run", 1), ("hold_off", 0), ("stuck", 0)):
            value = getattr(self, name)
            whole = isinstance(value, (int, np.integer)) \
                or (math.isfinite(value) and float(value).is_integer())
            if not (whole and value >= low):
                problems.append(f"{name} must be a whole number at least {low}"
                                f"{' (0: off)' if name == 'stuck' else ''}, got {value}")
            elif name == "stuck" and value == 1:
                # every reading is one in a row with itself: a stuck alert on each
                problems.append(f"stuck must be 0 (off) or at least 2 ({STUCK_ONE}), got 1")
            else:
                setattr(self, name, int(value))           # 3.0 counts as 3
        for name in ("cusum", "adapt"):
            value = getattr(self, name)
            finite = isinstance(value, (int, np.integer)) or math.isfinite(value)
            if not (finite and value >= 0):
                problems.append(f"{name} must be a finite number at least 0 (0: off), got "
                                f"{value}")
        if not 0 < self.level < 1:
            problems.append(f"level must lie between 0 and 1, got {self.level}")
        elif not problems and self.adapt > max_adapt(self.level):
            top = max_adapt(self.level)
            problems.append(f"adapt must lie between 0 and {top:g} at level {self.level:g} "
                            f"(a reading inside then narrows the interval by at most "
                            f"{MAX_NARROWING * 100:g} % of the calibrated one, a miss widens "
                            f"it by less than all of it; docs/alerts.md uses 0.01 to 0.05), "
                            f"got {self.adapt:g}")
        if problems:
            raise InputError("; ".join(problems))

    def settings(self) -> dict:
        """The settings as an alert state records them (:attr:`AlertState.settings`)."""
        return {"level": float(self.level), "min_run": self.min_run, "hold_off": self.hold_off,
                "stuck": self.stuck, "cusum": float(self.cusum), "adapt": float(self.adapt)}

    def words(self, python: bool = False) -> str:
        """The settings as ``lstm-run`` options (``--interval`` and those not at their
        defaults), or with ``python`` as the fields of an AlertConfig.

        >>> AlertConfig(0.9, stuck=6, cusum=4).words()
        '--interval 0.9 --stuck 6 --cusum 4'
        >>> AlertConfig(0.9, stuck=6, cusum=4).words(python=True)
        'AlertConfig(level=0.9, stuck=6, cusum=4)'
        """
        return _words(self.settings(), python)


def _words(settings: dict, python: bool = False) -> str:
    """:meth:`AlertConfig.words` of recorded ``settings`` (those of an older release too)."""
    default = AlertConfig().settings()
    changed = [(name, value) for name, value in settings.items()
               if name != "level" and value != default[name]]
    if python:
        return "AlertConfig(" + ", ".join([f"level={settings['level']:g}"] + [
            f"{name}={value:g}" for name, value in changed]) + ")"
    return " ".join([f"--interval {settings['level']:g}"] + [
        f"--{name.replace('_', '-')} {value:g}" for name, value in changed])


class AlertsRestarted(UserWarning):
    """A saved alert state that :class:`Monitor` did not take: it was kept under other
    settings, or its stream was fed readings it did not see (see :meth:`Alerts.changed`)."""


@dataclass
class Answer:
    """What one fed reading gives: the forecast with its interval, and the check of the
    reading against the forecast made ``horizon`` readings before (a forecast block: its
    step-1 columns made one reading before; score NaN and anomaly None where no reading was
    checked: the first ones, a gap)."""

    pred: np.ndarray            # (outputs,) NaN while warming up
    lo: np.ndarray              # (outputs,)
    hi: np.ndarray              # (outputs,)
    score: float = math.nan     # |y - pred| / half-width, largest over targets
    anomaly: bool | None = None  # this reading fell outside its interval (None: not checked)
    alert: str = ""             # "outside" | "stuck" | "shift" where one is raised here

    def columns(self) -> list:
        """``[lo..., hi..., anomaly, score, alert]``, as ``AlertState.last`` keeps them
        (anomaly and score None where no reading was checked)."""
        checked = not math.isnan(self.score)
        return [*self.lo.tolist(), *self.hi.tolist(),
                bool(self.anomaly) if checked else None,
                float(self.score) if checked else None, self.alert]

    @classmethod
    def from_columns(cls, pred, columns: list) -> "Answer":
        """The answer :meth:`columns` kept, with its forecast ``pred`` ``(outputs,)``."""
        n = len(pred)
        *_, anomaly, score, alert = columns
        return cls(np.asarray(pred, np.float64), np.array(columns[:n], np.float64),
                   np.array(columns[n:2 * n], np.float64),
                   math.nan if score is None else score,
                   None if anomaly is None else bool(anomaly), alert)


@dataclass
class AlertState:
    """One stream's alert state: its pending forecasts, recent target values and counters.

    The pending forecasts, CUSUM sums, working quantile and a run's anchor are of the checked
    columns: every output of a one-step model, a forecast block's step-1 columns
    (:class:`Alerts`).
    """

    pending: deque = field(default_factory=deque)   # (pred, half) of the last forecasts
    recent: list = field(default_factory=list)      # last readings + 1 target values
    run: int = 0          # readings in a row outside
    calm: int = 0         # readings in a row inside, while an alert stands
    alerting: bool = False
    same: int = 0         # readings in a row with the same target values
    steps: int = 0        # the stream's step count at the last reading observed (lstm-run)
    cusum: list = field(default_factory=list)       # [S+, S-] (outputs,) each; [] before any
    adapted: tuple | None = None  # with ``adapt``: (level, working quantile (outputs,))
    last: list | None = None      # lstm-run: the alert columns of the last answer (a replay's)
    peak: float = 0.0     # the largest score of the stretch outside (inf: unknown, older)
    settings: dict | None = None  # AlertConfig.settings() it was kept under (None: older)
    anchor: tuple | None = None   # (pred, half) a run below min_run began from (None: none)
    model: str | None = None      # Monitor: sha256 of its model's file (None: lstm-run, older)

    def to_bytes(self) -> bytes:
        """A versioned byte string (the stream state's ``alerts`` section)."""
        body = json.dumps({
            "pending": [None if p is None else [p[0].tolist(), p[1].tolist()]
                        for p in self.pending],
            "recent": [r.tolist() for r in self.recent],
            "counters": [self.run, self.calm, int(self.alerting), self.same, self.steps],
            "cusum": [s.tolist() for s in self.cusum],
            "adapted": None if self.adapted is None else
            {"level": self.adapted[0], "q": self.adapted[1].tolist()},
            "last": self.last,
            "peak": self.peak if math.isfinite(self.peak) else None,
            "settings": self.settings,
            # only while a run is open at --min-run 2 or more: other states' bytes as before
            **({} if self.anchor is None else
               {"anchor": [self.anchor[0].tolist(), self.anchor[1].tolist()]}),
            # a Monitor's (lstm-run's section lies in a stream state that names its model)
            **({} if self.model is None else {"model": self.model})})
        return _MAGIC + struct.pack("<I", len(body)) + body.encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "AlertState":
        """Raises SnapshotError for bytes that are not an alert state of this version."""
        try:
            if data[:4] != _MAGIC or struct.unpack("<I", data[4:8])[0] != len(data) - 8:
                raise ValueError("not an alert state of version 1")
            d = json.loads(data[8:].decode())
            pending = deque(None if p is None else (np.asarray(p[0], np.float64),
                                                    np.asarray(p[1], np.float64))
                            for p in d["pending"])
            run, calm, alerting, same, steps = (int(v) for v in d["counters"])
            recent = [np.asarray(r, np.float64) for r in d["recent"]]
            cusum = [np.asarray(c, np.float64) for c in d.get("cusum", [])]   # absent: older
            if len(cusum) not in (0, 2):
                raise ValueError(f"cusum holds {len(cusum)} sums, not 2")
            adapted = d.get("adapted")                                  # absent: older
            if adapted is not None:
                adapted = (float(adapted["level"]), np.asarray(adapted["q"], np.float64))
                if adapted[1].ndim != 1 or not np.isfinite(adapted[1]).all():
                    raise ValueError("the working quantile must be finite numbers")
            last = _last_columns(d.get("last"))                        # absent: older
            peak = d.get("peak")          # absent or None: unknown, no escalation of a stretch
            if peak is None:              # saved standing (saved before escalation was)
                peak = math.inf if alerting else 0.0
            elif isinstance(peak, bool) or not isinstance(peak, (int, float)) \
                    or not peak >= 0:
                raise ValueError(f"the stretch's largest score must be a number at least 0, "
                                 f"not {peak!r}")
            settings = _settings(d.get("settings"))                    # absent: older
            anchor = _anchor(d.get("anchor"))                          # absent: none open
            model = d.get("model")                                     # absent: not named
            if model is not None and not isinstance(model, str):
                raise ValueError(f"its model is not named by a sha256, not {model!r}")
        except (ValueError, TypeError, KeyError, struct.error, UnicodeDecodeError) as exc:
            raise SnapshotError(f"the stream's alert state cannot be read ({exc}); start "
                                f"the stream afresh") from None
        return cls(pending, recent, run, calm, bool(alerting), same, steps, cusum, adapted,
                   last, float(peak), settings, anchor, model)

    def check(self, outputs: int, watched: int, checked: int | None = None) -> None:
        """Raise SnapshotError where the arrays do not fit a model of ``outputs`` columns,
        ``watched`` target columns read and ``checked`` columns checked (default: all)."""
        checked = outputs if checked is None else checked
        fits = (self.last is None or len(self.last) == 2 * outputs + 3) \
            and all(p is None or (p[0].shape == (checked,) and p[1].shape == (checked,))
                    for p in self.pending) and all(r.shape == (watched,) for r in self.recent) \
            and all(c.shape == (checked,) for c in self.cusum) \
            and (self.adapted is None or self.adapted[1].shape == (checked,)) \
            and (self.anchor is None or all(a.shape == (checked,) for a in self.anchor))
        if not fits:
            block = (f", {checked} of them checked (a forecast block's step 1; an alert "
                     f"state saved before blocks were checked holds every column)"
                     if checked != outputs else "")
            raise SnapshotError(f"the stream's alert state was saved for another model (not "
                                f"{outputs} output(s){block} and {watched} watched "
                                f"column(s)); start the stream's alerts afresh")


def _settings(found) -> dict | None:
    """A saved state's recorded settings, checked (untrusted): those of a valid
    :class:`AlertConfig`, else ValueError naming what is wrong."""
    if found is None:
        return None
    names = set(AlertConfig().settings())
    if not isinstance(found, dict) or set(found) != names:
        raise ValueError(f"its recorded settings are not the alert settings lstm-edge writes "
                         f"(expected {', '.join(sorted(names))})")
    try:
        # stuck 1, refused since, was a setting an older release kept: such a state is read,
        # and then starts afresh as kept under other settings
        older = found.get("stuck") == 1 and not isinstance(found.get("stuck"), bool)
        settings = AlertConfig(**{**found, "stuck": 0} if older else found).settings()
        return {**settings, "stuck": 1} if older else settings
    except InputError as exc:
        raise ValueError(f"its recorded settings are not valid ({exc})") from None


def _anchor(found) -> tuple | None:
    """A saved run's anchor, checked (untrusted): ``[pred, half]``, finite numbers, the
    half-widths not negative; ValueError where it is not."""
    if found is None:
        return None
    if not isinstance(found, list) or len(found) != 2 \
            or not all(isinstance(part, list) for part in found):
        raise ValueError("the open run's anchor is not a forecast and its half-widths")
    pred, half = (np.asarray(part, np.float64) for part in found)
    if pred.ndim != 1 or pred.shape != half.shape or not np.isfinite(pred).all() \
            or not (np.isfinite(half).all() and (half >= 0).all()):
        raise ValueError("the open run's anchor must be finite numbers, as many half-widths "
                         "(not negative) as forecasts")
    return pred, half


def _last_columns(found) -> list | None:
    """A saved answer's alert columns, checked (untrusted): ``[lo..., hi..., anomaly, score,
    alert]``; ValueError where they are not."""
    if found is None:
        return None
    if not isinstance(found, list) or len(found) < 3:
        raise ValueError("the last answer's alert columns are not a list")
    *bounds, anomaly, score, alert = found
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounds) \
            or anomaly not in (None, True, False) \
            or not (score is None or isinstance(score, (int, float))) \
            or alert not in ("", "outside", "stuck", "shift"):
        raise ValueError("the last answer's alert columns hold other values")
    return [*(float(v) for v in bounds), anomaly, None if score is None else float(score),
            alert]


class Alerts:
    """A model's intervals and an alert configuration: what every stream of it applies.

    ``observe`` turns one fed reading and its prediction into an :class:`Answer`, moving a
    stream's :class:`AlertState` on; :class:`Monitor` does it for one stream object.
    """

    def __init__(self, model, config: AlertConfig | None = None):
        block = getattr(model.info, "block", None)
        if block is not None and block.kind == "reconstruction":
            raise InputError("the model rebuilds its window (a reconstruction block) and "
                             "forecasts no reading to check: leave out --interval and threshold "
                             "the score column it answers each reading with")
        iv = Intervals.from_model(model)
        if iv is None:
            raise InputError("the model has no calibrated intervals (lstm_edge.intervals): "
                             "train it with lstm-train, or export it with lstm-export "
                             "--calibrate DATA.csv")
        self.config = config or AlertConfig()
        self.intervals = iv
        self.q = iv.q[iv.level_index(self.config.level)]          # (outputs,)
        outputs = len(self.q)
        # The output columns a reading is checked against, and the column of each output's
        # target among them: every column of a one-step model; a forecast block's step-1
        # columns, which its later steps repeat the targets of (the module's notes).
        names = len(block.names) if block is not None else outputs
        self.checked = np.arange(names)                             # (checked,)
        self.per_output = np.arange(outputs) % names                # (outputs,)
        self.horizon = 1 if block is not None else int(model.info.horizon)
        tf = list(iv.target_features)
        if any(tf[c] != tf[c % names] for c in range(outputs)):
            raise ContractError(f"metadata lstm_edge.{KEY}: target_features must repeat each "
                                f"step's targets in a forecast block, got {tf}; re-export the "
                                f"model with lstm-export --calibrate")
        # CUSUM's unit is the narrowest interval's half-width: a pending half-width times
        # q_unit / q. (checked,)
        unit = iv.q[int(np.argmin(iv.levels))][self.checked]
        with np.errstate(divide="ignore", invalid="ignore"):
            self.to_unit = np.where(unit > 0, self.q[self.checked] / unit, 1.0)
        self.targets = tuple(model.targets)
        watched = [i for i in tf[:names] if i is not None]
        self.watch = np.asarray(watched, np.intp)                  # input column per target
        self.checks = len(watched) == names                        # every target is read
        # the same, as Python values for :meth:`observe`'s per-reading arithmetic
        self._checked = self.checked.tolist()
        self._output_target = self.per_output.tolist()
        self._floor = [] if iv.floor is None else iv.floor.tolist()
        self._prior = [] if iv.prior is None else iv.prior.tolist()
        self._to_unit = self.to_unit.tolist()
        self.settings = self.config.settings()           # what each state records

    def changed(self, state: AlertState, steps: int | None = None,
                python: bool = False) -> str | None:
        """Why a saved ``state`` cannot go on under this configuration (None: it goes on).

        A state records the settings it was kept under and the step count of the last
        reading it saw. Kept under other settings, its pending intervals, counters, sums and
        working quantile are of those; behind its stream (``steps``, its step count now: a
        run without alerts fed it), its pending forecasts are of readings gone by. Either
        way the caller starts it afresh. A state saved before settings were recorded is
        taken as kept under these. ``python``: settings named as AlertConfig fields, not as
        ``lstm-run`` options.
        """
        if state.settings is not None and state.settings != self.settings:
            return f"was kept under {_words(state.settings, python)}"
        if steps is not None and state.steps != steps:
            return (f"saw the stream up to reading {state.steps}, and its stream is at "
                    f"reading {steps}")
        return None

    def spread(self, state: AlertState) -> np.ndarray:
        """``(outputs,)`` the spread after the stream's last reading (1 unscaled): each
        output's target's, with the output's floor and prior."""
        return np.array(self._spread(state))

    def _spread(self, state: AlertState) -> list[float]:
        """:meth:`spread` as Python floats: all but the sum is elementwise, and on a reading's
        few columns numpy's per-call cost is most of the work."""
        iv = self.intervals
        if iv.scale == "none":
            return [1.0] * len(self.q)
        assert iv.floor is not None and iv.prior is not None    # checked by parse
        # local_spread's last row, on the readings + 1 values the state keeps (so its
        # differences all count): the sum of their |changes|, the rest counted as prior.
        # (The sum stays numpy's: its order of additions is the answers'.)
        recent = state.recent[-(iv.readings + 1):]
        seen = len(recent) - 1
        if seen > 0:
            r = np.concatenate(recent).reshape(seen + 1, -1)        # (seen + 1, watched)
            sums = np.abs(r[1:] - r[:-1]).sum(axis=0).tolist()      # (watched,)
            total = [sums[t] for t in self._output_target]
        else:
            total = [0.0] * len(self.q)
        missing, n = iv.readings - seen, iv.readings
        return [max((t + missing * p) / n, f)
                for t, p, f in zip(total, self._prior, self._floor)]

    def fits(self, state: AlertState) -> None:
        """Raise SnapshotError where ``state`` was saved for another model's columns."""
        state.check(len(self.q), len(self.watch), len(self.checked))

    def observe(self, state: AlertState, reading: np.ndarray, pred) -> Answer:
        """One reading the stream fed, and its prediction (None or NaN while warming up)."""
        p, lo, hi, score, alert = self._observe(state, reading, pred)
        checked = not math.isnan(score)
        return Answer(np.array(p), np.array(lo), np.array(hi), score,
                      score > 1.0 if checked else None, alert)

    def columns(self, state: AlertState, reading: np.ndarray, pred) -> list:
        """:meth:`observe`'s answer as :meth:`Answer.columns` gives it (``lstm-run``'s
        columns), without the arrays of an :class:`Answer`."""
        _, lo, hi, score, alert = self._observe(state, reading, pred)
        checked = not math.isnan(score)
        return [*lo, *hi, score > 1.0 if checked else None, score if checked else None, alert]

    def _observe(self, state: AlertState, reading, pred) -> tuple:
        """``(pred, lo, hi, score, alert)`` of one reading, the first three lists of floats
        (outputs,), score NaN where nothing was checked; moves ``state`` on."""
        cfg = self.config
        state.settings = self.settings
        value = np.asarray(reading, np.float64)[self.watch] if self.checks else None
        if value is not None and not all(map(math.isfinite, value.tolist())):
            value = None                 # a gap (--missing hold/skip): nothing to check
        score, due = math.nan, None
        if value is not None:
            state.recent = (state.recent + [value])[-max(self.intervals.readings + 1, 2):]
            if state.pending and len(state.pending) == self.horizon:
                due = state.pending[0]
                if due is not None:
                    score = _score(value, *due)
        q = self._quantile(state, value, due).tolist()            # (outputs,)
        # The forecast, its interval and what the check of a later reading needs, in Python
        # floats: the same IEEE operations as numpy's elementwise ones, without their
        # per-call cost on a reading's few columns.
        p = [math.nan] * len(q) if pred is None else np.asarray(pred, np.float64).tolist()
        half = [a * b for a, b in zip(q, self._spread(state))]
        ready = all(map(math.isfinite, p))
        checked = self._checked
        state.pending.append((np.array([p[c] for c in checked]),
                              np.array([half[c] for c in checked])) if ready else None)
        while len(state.pending) > self.horizon:
            state.pending.popleft()
        alert = ""
        if value is not None:
            alert = self._hygiene(state, score, value, due, cfg)
            if cfg.cusum and due is not None:
                shift = self._page(state, value, *due)     # its sums move on every reading
                alert = alert or shift
        return (p, [a - b for a, b in zip(p, half)], [a + b for a, b in zip(p, half)], score,
                alert)

    def _quantile(self, state: AlertState, value, due) -> np.ndarray:
        """``(outputs,)`` the quantile of this reading's forecast: the file's, or with
        ``adapt`` the stream's working quantile of the checked columns after the check of
        ``due`` (the module's notes). A working quantile of another level starts afresh."""
        cfg = self.config
        if not cfg.adapt:
            state.adapted = None
            return self.q
        own = self.q[self.checked]                                  # (checked,)
        if state.adapted is None or abs(state.adapted[0] - cfg.level) > 1e-9:
            state.adapted = (cfg.level, own.copy())
        q = state.adapted[1]
        if due is not None:                   # a checked reading: value is not None
            miss = (np.abs(value - due[0]) > due[1]).astype(np.float64)    # (checked,)
            q = q + cfg.adapt * own * (miss - (1 - cfg.level))
            state.adapted = (cfg.level, q)
        out = self.q.copy()
        out[self.checked] = np.maximum(q, 0.0)
        return out

    def _page(self, state: AlertState, value, pred, half) -> str:
        """Page's CUSUM on this reading's standardized residual: ``shift`` where it
        alarms, else ""."""
        # a standing alert or stuck stretch has reported what the sums would find again
        standing = state.alerting or bool(self.config.stuck and state.same >= self.config.stuck)
        if not state.cusum or standing:
            state.cusum = [np.zeros(len(self.checked)), np.zeros(len(self.checked))]
            if standing:
                return ""
        # per checked column in Python floats (a few columns: numpy's calls cost more)
        up, down = [], []
        for v, p, h, unit, s_up, s_down in zip(value.tolist(), pred.tolist(), half.tolist(),
                                               self._to_unit, state.cusum[0].tolist(),
                                               state.cusum[1].tolist()):
            u = min(max((v - p) * unit / h, -CUSUM_CLIP), CUSUM_CLIP) if h > 0 else 0.0
            up.append(max(0.0, s_up + u - CUSUM_SLACK))
            down.append(max(0.0, s_down - u - CUSUM_SLACK))
        state.cusum = [np.array(up), np.array(down)]
        if max(max(up), max(down)) <= self.config.cusum:
            return ""
        state.cusum = [np.zeros(len(self.checked)), np.zeros(len(self.checked))]
        return "shift"

    @staticmethod
    def _hygiene(state: AlertState, score: float, value, due, cfg: AlertConfig) -> str:
        """The alert this reading raises (``stuck``, ``outside`` or ""), moving the counters;
        ``score`` NaN: not checked (only the stuck count moves); ``due``: the forecast it was
        checked against, the anchor of a run it opens."""
        last = state.recent[-2] if len(state.recent) > 1 else None
        same = last is not None and last.tolist() == value.tolist()
        state.same = state.same + 1 if same else 1
        alert = "stuck" if cfg.stuck and state.same == cfg.stuck else ""
        if math.isnan(score):
            return alert
        # A run of misses below min_run goes on while its readings stay outside the interval
        # of the forecast it began from (its anchor), and each is outside its own interval or
        # FOLLOWED half-widths beyond the anchor's: a forecaster follows a dropout into its
        # own intervals, and a spike's return misses the forecast that followed the spike
        # (the module's notes). An older state's open run has no anchor: its own interval.
        miss = score > 1.0
        if state.anchor is not None:              # (set only while such a run is open)
            from_anchor = _score(value, *state.anchor)
            miss = from_anchor > 1.0 and (miss or from_anchor >= FOLLOWED)
        if miss:
            state.run, state.calm = state.run + 1, 0
            if state.alerting:
                # escalation: a fault far beyond the stretch's misses so far (ESCALATE)
                escalated = state.peak < math.inf and score >= ESCALATE * state.peak
                alert = alert or ("outside" if escalated else "")
                state.peak = score if escalated else max(state.peak, score)
            else:
                state.peak = score if state.run == 1 else max(state.peak, score)
                if state.run >= cfg.min_run:
                    # hold-off 0: no alert stands, the next reading outside raises another
                    state.alerting, alert = cfg.hold_off > 0, alert or "outside"
                    state.anchor = None           # raised: on from each reading's own
                elif state.run == 1:
                    state.anchor = due
        else:
            state.run, state.calm, state.anchor = 0, state.calm + 1, None
            if state.alerting and state.calm >= cfg.hold_off:
                state.alerting = False
            if not state.alerting:
                state.peak = 0.0
        return alert


def _score(value, pred, half) -> float:
    """The largest ``|y - pred| / half`` over targets (inf where a zero half-width misses)."""
    # in Python floats: a reading has a few targets, and numpy's calls cost more
    worst = -math.inf
    for v, p, h in zip(value.tolist(), pred.tolist(), half.tolist()):
        miss = abs(v - p)
        worst = max(worst, miss / h if h > 0 else (math.inf if miss > 0 else 0.0))
    return worst


class Monitor:
    """One stream with intervals and alerts: ``step(reading) -> Answer``.

    >>> monitor = Monitor(model.stream(), AlertConfig(level=0.9))   # doctest: +SKIP
    >>> answer = monitor.step([101.2])                               # doctest: +SKIP
    >>> answer.lo, answer.hi, answer.anomaly, answer.alert           # doctest: +SKIP
    """

    def __init__(self, stream, config: AlertConfig | None = None,
                 state: AlertState | bytes | None = None):
        from .stream import Stream
        if not isinstance(stream, Stream):
            raise InputError(f"Monitor wraps one stream (model.stream()), got "
                             f"{type(stream).__name__}")
        if not isinstance(state, (AlertState, bytes, bytearray, memoryview, type(None))):
            raise InputError(f"state must be an AlertState or the bytes of "
                             f"AlertState.to_bytes(), got {type(state).__name__}")
        self.stream = stream
        self.alerts = Alerts(stream.model, config)
        self.state = AlertState.from_bytes(bytes(state)) \
            if isinstance(state, (bytes, bytearray, memoryview)) else state or AlertState()
        fingerprint = stream.model.fingerprint
        if self.state.model not in (None, fingerprint):
            raise SnapshotError(f"the alert state is another model's: it was kept by a Monitor "
                                f"of the model file with sha256 {self.state.model[:12]}…, this "
                                f"stream's model is {fingerprint[:12]}…; give it the stream of "
                                f"that model, or leave the state out to start afresh")
        self.alerts.fits(self.state)
        # (a state saved before settings were recorded has no step count from a Monitor)
        why = self.alerts.changed(self.state, None if self.state.settings is None
                                  else stream.steps, python=True)
        if why is not None:
            warnings.warn(AlertsRestarted(
                f"the saved alert state {why}: it starts afresh, as a new monitor's with "
                f"{self.alerts.config.words(python=True)} (the next {self.alerts.horizon} "
                f"reading(s) are not checked)"), stacklevel=2)
            self.state = AlertState()
        self.state.model = fingerprint

    def step(self, reading, at=None) -> Answer | None:
        """Feed one reading; None where the stream did not feed it (skipped), else the answer.

        While the stream warms up the answer's ``pred``, ``lo`` and ``hi`` are NaN arrays
        (where :meth:`Stream.step` gives None): an :class:`Answer` has one shape on every
        reading, so its arrays and :meth:`Answer.columns` need no None test.

        ``at``: the reading's position, the order rule applied as :meth:`Stream.step` does:
        the last reading again (same position, same values) gets the answer it got then and
        leaves the alert state as it was; an older one is skipped (None); one at the last
        position with other values raises InputError.
        """
        # checked as the stream checks it, before anything is fed: a reading refused after
        # the stream took it would be fed twice by a retry
        self.stream.model.validate(reading, self.stream.missing)
        if at is not None and self.stream.order(reading, at) == "replay":
            return self._replayed()
        before = self.stream.steps
        pred = self.stream.step(reading, at=at)
        if self.stream.steps == before:
            return None
        # (features,) as given: a scalar is a one-feature model's reading, as for Stream.step
        raw = np.asarray(reading, np.float64).reshape(-1)
        answer = self.alerts.observe(self.state, raw, pred)
        self.state.steps = self.stream.steps              # what changed() compares
        if at is not None:
            self.state.last = answer.columns()            # what a replay of it gets
        return answer

    def _replayed(self) -> Answer:
        """The answer the stream's last reading got, again."""
        pred = self.stream.answer
        if pred is None:
            pred = np.full(len(self.alerts.q), np.nan)
        if self.state.last is None:                       # fed before this monitor kept it
            unknown = np.full(len(pred), np.nan)
            return Answer(np.asarray(pred, np.float64), unknown, unknown.copy())
        return Answer.from_columns(pred, self.state.last)

    def reset(self) -> None:
        """A fresh stream and a fresh alert state."""
        self.stream.reset()
        self.state = AlertState(model=self.stream.model.fingerprint)
