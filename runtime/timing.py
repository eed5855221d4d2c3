"""A quick self-timing of one exported model on this machine, for ``lstm-run --info``.

A user deciding whether a small board can keep up needs the cost of one reading on *their*
machine, measured, not a figure from another box. On a shared machine one median swings
with whatever else runs (28.7 to 80.1 µs between two runs of the same model were seen), so
the figure is the least of several rounds' medians, what the model itself costs when the
machine lets it run, and the rounds' spread is given beside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Seconds per reading of one stream, as :func:`latency` measured them."""

    seconds: float                  # the least of the rounds' medians
    spread: tuple[float, float]     # the least and the greatest round median
    rounds: int                     # rounds timed
    steps: int                      # steps timed, all rounds together

    @property
    def rate(self) -> float:
        """Readings per second at :attr:`seconds` each."""
        return 1.0 / self.seconds


def latency(model, rounds: int = 9, steps: int = 100, warmup: int = 50,
            budget: float = 0.5) -> Latency:
    """Time one stream of ``model`` on this machine: ``rounds`` rounds of ``steps`` steps.

    ``warmup`` steps first (the window fills, ONNX Runtime settles). Each round times its
    steps one by one and keeps their median; a slow model takes fewer steps per round (at
    least 10) and fewer rounds (at least 3) to stay near ``budget`` seconds in all. Each step
    is what ``lstm-run --stream`` does per line, less parsing: a window model runs its whole
    window for every reading.
    """
    stream = model.stream()
    sample = np.ones(len(model.features), dtype=np.float32)   # (features,)
    for _ in range(warmup):
        stream.step(sample)
    clock = time.perf_counter
    end = clock() + budget
    medians: list[float] = []
    timed = 0
    while len(medians) < rounds and (len(medians) < 3 or clock() < end):
        round_end = clock() + budget / rounds
        times: list[float] = []
        while len(times) < steps and (len(times) < 10 or clock() < round_end):
            start = clock()
            stream.step(sample)
            times.append(clock() - start)
        medians.append(float(np.median(times)))
        timed += len(times)
    return Latency(min(medians), (min(medians), max(medians)), len(medians), timed)
