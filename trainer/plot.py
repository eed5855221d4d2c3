"""A picture of the test tail: what happened, what the model said, what "repeat the last
value" said. matplotlib (the ``train`` extra) on the Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .forecast import parse_time


def band_90(intervals: dict, y: np.ndarray, last: np.ndarray):
    """The 90 % interval's half-width ``(steps, targets)`` at rows ``last``, if calibrated."""
    from .calibrate import spread_of

    if 0.9 not in intervals["levels"]:
        return None
    q = np.asarray(intervals["q"][intervals["levels"].index(0.9)])
    if intervals["scale"] == "none":
        return np.broadcast_to(q, (len(last), len(q)))
    return q * spread_of(intervals, y)[last]


def plot_test(path, sel, pred: np.ndarray, last: np.ndarray, horizon: int,
              title: str = "", band: np.ndarray | None = None, best: list | None = None) -> Path:
    """Draw actual vs predicted (and naive) for each target over the test rows; save a PNG.

    Parameters
    ----------
    sel : the :class:`~trainer.data.Selection` the model was trained on.
    pred : (steps, targets) predictions in raw units, for rows ``last + horizon``.
    last : (steps,) the last row each prediction saw.
    band : (steps, targets) the 90 % interval's half-width, shaded around the forecast.
    best : per target, ``(name, MAE)`` of the report's best baseline where it beats naive
        (seasonal naive, an anchor, ...), or None: the model's legend names it too, so that
        a skill against naive alone does not flatter a model that a baseline beats.
    """
    try:
        import matplotlib
    except ImportError:
        raise DataError("--plot needs matplotlib: pip install 'lstm-edge[train]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = last + horizon
    when = _axis(sel, rows)
    n = len(sel.targets)
    fig, axes = plt.subplots(n, 1, figsize=(11, 3.6 * n), squeeze=False, sharex=True)
    for k, (name, ax) in enumerate(zip(sel.targets, axes[:, 0])):
        actual, naive = sel.y[rows, k], sel.y[last, k]
        model_mae = np.abs(pred[:, k] - actual).mean()
        naive_mae = np.abs(naive - actual).mean()
        ax.plot(when, actual, color="black", lw=1.6, label="actual")
        ax.plot(when, naive, color="tab:gray", lw=1.0, ls="--",
                label=f"naive (repeat the last value), MAE {naive_mae:.4g}")
        if band is not None:
            inside = np.mean(np.abs(actual - pred[:, k]) <= band[:, k])
            ax.fill_between(when, pred[:, k] - band[:, k], pred[:, k] + band[:, k],
                            color="tab:blue", alpha=0.15, lw=0,
                            label=f"90 % interval ({inside:.0%} of actual inside)")
        label = f"model, MAE {model_mae:.4g}"
        if naive_mae > 0:
            label += f" (skill {model_mae / naive_mae:.3f} vs naive"
            other = best[k] if best else None
            if other and other[1] > 0:
                label += f"; {model_mae / other[1]:.3f} x {other[0]}'s MAE {other[1]:.4g}"
            label += ")"
        ax.plot(when, pred[:, k], color="tab:blue", lw=1.3, label=label)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    axes[0, 0].set_title(title or f"test tail, {horizon} step(s) ahead")
    axes[-1, 0].set_xlabel(_time_label(sel))
    fig.autofmt_xdate()
    fig.tight_layout()
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise DataError(f"{path}: the plot cannot be written ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return path


def _time_label(sel) -> str:
    return "time" if sel.time is not None else "row"


def _axis(sel, rows: np.ndarray):
    """The time of each row where the time column parses, else the row numbers."""
    if sel.time is not None:
        parsed = [parse_time(t) for t in sel.time[rows]]
        if all(p is not None for p in parsed):
            return [p.replace(tzinfo=None) for p in parsed]
    return rows
