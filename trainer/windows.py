"""From a series to ``(samples, timesteps, features)`` arrays, split by time, scaled.

A *series* is ``(rows, features)``: one row per reading. A model trained on windows reads
``(samples, timesteps, features)``: ``samples`` windows, each ``timesteps = look_back``
consecutive rows. Window ``i`` covers rows ``i .. i + look_back - 1`` and its target is the
row ``horizon`` steps after the window's last row.

>>> x = np.arange(6.0).reshape(6, 1)          # (rows, features)
>>> w, t, last = windows(x, x, look_back=3, horizon=1)
>>> w.shape, t.ravel().tolist(), last.tolist()
((3, 3, 1), [3.0, 4.0, 5.0], [2, 3, 4])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError


def windows(x: np.ndarray, y: np.ndarray, look_back: int,
            horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sliding windows over a series, one target per window.

    Parameters
    ----------
    x : (rows, features) inputs.
    y : (rows, targets) values to predict.
    look_back : timesteps per window.
    horizon : how many rows after the window's last row the target is.

    Returns
    -------
    inputs : (samples, look_back, features) a read-only view of ``x``: the windows share
        its rows (``look_back`` times fewer bytes than copies; copy it to write to it)
    targets : (samples, targets)
    last : (samples,) the row index of each window's last row
    """
    count = len(x) - look_back - horizon + 1
    if count < 1:
        raise DataError(f"look_back {look_back} + horizon {horizon} needs at least "
                        f"{look_back + horizon} rows, the series has {len(x)}")
    last = np.arange(count) + look_back - 1
    return _slide(x, look_back)[:count], y[last + horizon], last


def _slide(x: np.ndarray, length: int) -> np.ndarray:
    """Every run of ``length`` consecutive rows of ``x`` (rows, F), as a read-only view."""
    view = np.lib.stride_tricks.sliding_window_view(x, length, axis=0)  # (n, F, length)
    return view.transpose(0, 2, 1)                                      # (n, length, F)


def sequences(x: np.ndarray, y: np.ndarray, length: int, horizon: int,
              stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subsequences with a target at every step, for ``return_sequences=True`` training.

    Returns
    -------
    inputs : (samples, length, features) a read-only view of ``x``, as :func:`windows`
    targets : (samples, length, targets); step ``t`` of sample ``i`` is ``y[i*stride + t + horizon]``
        (a read-only view of ``y``)
    first : (samples,) the row index of each subsequence's first row
    """
    count = len(x) - length - horizon + 1
    if count < 1:
        raise DataError(f"sequences of {length} steps + horizon {horizon} need at least "
                        f"{length + horizon} rows, the series has {len(x)}")
    first = np.arange(0, count, stride)
    return (_slide(x, length)[:count:stride], _slide(y[horizon:], length)[:count:stride],
            first)


@dataclass(frozen=True)
class Scaler:
    """Per-column ``(value - center) / scale``, fitted on the training rows only.

    ``robust`` (the default) takes the median and the interquartile range (÷ 1.349, so it
    equals the standard deviation on normal data): a few maintenance drops or spikes in a
    sensor series then do not squash the ordinary readings into a sliver of the range.
    ``standard`` takes the mean and the standard deviation. Either way the exporter bakes
    the same two numbers per column into the graph (the contract's ``mean``/``std``).
    """

    x_mean: np.ndarray   # (features,) the center subtracted
    x_std: np.ndarray    # (features,) the scale divided by
    y_mean: np.ndarray   # (targets,)
    y_std: np.ndarray    # (targets,)
    kind: str = "robust"

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, kind: str = "robust") -> "Scaler":
        """Fit on ``x`` (rows, features) and ``y`` (rows, targets) — pass the training part only."""
        if kind not in ("robust", "standard"):
            raise DataError(f"--scaling must be robust or standard, got {kind!r}")

        def center_scale(a):
            std = a.std(axis=0)
            if kind == "standard":
                center, scale = a.mean(axis=0), std
            else:
                q1, center, q3 = np.percentile(a, [25, 50, 75], axis=0)
                scale = np.where(q3 > q1, (q3 - q1) / 1.349, std)
            return center, np.where(scale > 0, scale, 1.0)   # a constant column passes through
        return cls(*center_scale(x), *center_scale(y), kind)

    def x(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.x_mean) / self.x_std).astype(np.float32)

    def y(self, y: np.ndarray) -> np.ndarray:
        return ((y - self.y_mean) / self.y_std).astype(np.float32)

    def y_inverse(self, y: np.ndarray) -> np.ndarray:
        return y * self.y_std + self.y_mean

    def to_json(self) -> dict:
        """The contract's ``lstm_edge.scaler`` form."""
        return {"x": {"mean": self.x_mean.tolist(), "std": self.x_std.tolist()},
                "y": {"mean": self.y_mean.tolist(), "std": self.y_std.tolist()},
                "kind": self.kind}


def split_point(rows: int, val_fraction: float, min_rows: int) -> int:
    """The first validation row: the last ``val_fraction`` of the series, never shuffled.

    Both parts must hold at least ``min_rows`` rows (a window and its target).
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    split = int(round(rows * (1.0 - val_fraction)))
    if rows - split < 1:
        raise DataError(f"--val-fraction {val_fraction} of {rows} rows leaves no row to "
                        f"validate on; use a larger --val-fraction or more data")
    if split < min_rows:
        raise DataError(
            f"the series has {rows} rows; a training part of {split} rows cannot hold a window "
            f"of {min_rows - 1} steps plus its target — use a shorter --look-back, a smaller "
            f"--val-fraction, or more data")
    return split


def split_points(rows: int, val_fraction: float, test_fraction: float,
                 min_rows: int) -> tuple[int, int]:
    """The first validation row and the first test row, in time order, never shuffled.

    Rows ``[0, split)`` train, ``[split, test)`` validate (early stopping), ``[test, rows)``
    are the untouched test tail the report is about. A prediction belongs to the part its
    target row lies in.

    >>> split_points(100, 0.15, 0.15, 10)
    (70, 85)
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    if not 0.0 < val_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise DataError(f"--val-fraction must be between 0 and 1 - --test-fraction "
                        f"({1.0 - test_fraction:g}), got {val_fraction}")
    test = int(round(rows * (1.0 - test_fraction)))
    split = int(round(rows * (1.0 - test_fraction - val_fraction)))
    if rows - test < 1 or test - split < 1:
        raise DataError(f"--val-fraction {val_fraction} and --test-fraction {test_fraction} of "
                        f"{rows} rows leave a part with no row; use larger fractions or more data")
    if split < min_rows:
        raise DataError(
            f"the series has {rows} rows; a training part of {split} rows cannot hold a window "
            f"of {min_rows - 1} steps plus its target — use a shorter --look-back, smaller "
            f"--val-fraction/--test-fraction, or more data")
    return split, test
