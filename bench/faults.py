"""Injected sensor faults for the alert benchmark: a fixed seed, five kinds.

Each kind changes one column (the target) over a stretch of readings; sizes are in units of
the series' mean absolute change between readings (``step``), so they are as visible on a
flow in l/s as on monthly passengers:

- ``spike``: one reading off by 6 steps (either sign);
- ``level shift``: 12 readings off by 5 steps;
- ``drift``: 12 readings drifting away linearly to 8 steps;
- ``stuck``: 12 readings repeating the value before them;
- ``dropout``: 6 readings of 0.

>>> rng = np.random.default_rng(0)
>>> y = np.arange(100, dtype=float)
>>> faulty, where = inject(y, "stuck", rng, first=50, count=2)
>>> where                      # one fits in 50 rows: 12 clean readings, then 12 stuck
[(74, 86)]
>>> set(faulty[74:86].tolist())
{73.0}
"""

from __future__ import annotations

import numpy as np

SEED = 20261204
LENGTH = {"spike": 1, "level shift": 12, "drift": 12, "stuck": 12, "dropout": 6}
KINDS = tuple(LENGTH)
GAP = 12        # readings between faults (and before the first): the model sees clean data


def inject(y: np.ndarray, kind: str, rng: np.random.Generator, first: int,
           count: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A copy of ``y`` ``(rows,)`` with ``count`` faults of ``kind`` after row ``first``.

    Returns the copy and each fault's ``(start, end)`` rows (end exclusive). Fewer faults
    where the rows do not hold ``count`` of them with ``GAP`` readings between.
    """
    y = np.asarray(y, np.float64).copy()
    step = float(np.abs(np.diff(y[:first])).mean()) or 1.0
    length = LENGTH[kind]
    room = len(y) - first
    count = min(count, max(0, (room - GAP) // (length + GAP)))
    slack = room - GAP - count * (length + GAP)
    cuts = np.sort(rng.integers(0, slack + 1, count)) if count else np.array([], int)
    where = []
    for i, cut in enumerate(cuts):
        start = first + GAP + int(cut) + i * (length + GAP)
        end = start + length
        sign = rng.choice([-1.0, 1.0])
        if kind == "spike":
            y[start] += sign * 6 * step
        elif kind == "level shift":
            y[start:end] += sign * 5 * step
        elif kind == "drift":
            y[start:end] += sign * np.linspace(8 * step / length, 8 * step, length)
        elif kind == "stuck":
            y[start:end] = y[start - 1]
        else:
            y[start:end] = 0.0
        where.append((start, end))
    return y, where
