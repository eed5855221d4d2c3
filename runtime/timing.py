"""A quick self-timing of one exported model on this machine, for ``lstm-run --info``.

A user deciding whether a small board can keep up needs the cost of one reading on *their*
machine, measured, not a figure from another box.
"""

from __future__ import annotations

import time

import numpy as np


def latency(model, steps: int = 200, warmup: int = 20,
            budget: float = 0.3) -> tuple[float, float, int]:
    """Median seconds per reading of one stream on this machine, readings/s, steps timed.

    A quick self-timing for ``--info``: ``warmup`` steps first (the window fills, ONNX Runtime
    settles), then up to ``steps`` timed one by one, fewer (at least 10) where a slow model
    would take longer than ``budget`` seconds. Each step is what ``lstm-run --stream`` does
    per line, less parsing: a window model runs its whole window for every reading.
    """
    stream = model.stream()
    sample = np.ones(len(model.features), dtype=np.float32)   # (features,)
    for _ in range(warmup):
        stream.step(sample)
    times: list[float] = []
    end = time.perf_counter() + budget
    while len(times) < steps and (len(times) < 10 or time.perf_counter() < end):
        start = time.perf_counter()
        stream.step(sample)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    return median, 1.0 / median, len(times)
