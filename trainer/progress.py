"""What ``lstm-train`` says on stderr while it works, so that a long run is never silent.

A line as each long phase starts (reading the CSV, the windows, each member's fit, the
predictions, the baselines, the anchors, the calibration, saving), one line per epoch, and
inside a long epoch or prediction a line every :data:`EVERY` seconds with how far it got
and how long the rest will take at the pace so far. stdout keeps the report alone.
``--quiet`` (``TrainConfig.verbose`` 0) says nothing.

>>> import io
>>> out = io.StringIO()
>>> Progress(stream=out).say("reading data.csv")
>>> out.getvalue()
'lstm-train: reading data.csv\\n'
>>> Progress(enabled=False, stream=out).say("not shown"); out.getvalue().count("\\n")
1
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO

import numpy as np

EVERY = 20.0           # seconds between the lines inside one long epoch or prediction
PREDICT_CHUNK = 65536  # windows per model.predict call: a multiple of its batch of 32, so
#                        the batches, and so the predictions, are those of one call


def _duration(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; ``8.2`` -> ``8 s``."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def size(nbytes: float) -> str:
    """Bytes as the user reads them: ``1.4 GB``, ``572 MB``, ``31 kB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.{1 if unit == 'GB' else 0}f} {unit}"
    return f"{nbytes:.0f} bytes"


@dataclass
class Progress:
    """Progress lines on ``stream`` (stderr), each with the command's name in front."""

    enabled: bool = True                              # False: --quiet, nothing is said
    stream: TextIO | None = None                      # None: sys.stderr at the time of writing
    clock: Callable[[], float] = time.monotonic       # injected by tests
    every: float = EVERY                              # seconds between lines inside a phase
    started: float = field(default=0.0, init=False)

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"lstm-train: {text}", file=self.stream or sys.stderr, flush=True)

    def ticker(self, what: str, total: int, unit: str) -> "Ticker":
        """Counts ``total`` ``unit`` of one phase, saying how far it got every ``every`` s."""
        return Ticker(self, what, total, unit, self.clock())

    def predict(self, model, inputs: np.ndarray, what: str) -> np.ndarray:
        """``model.predict(inputs)`` in chunks of :data:`PREDICT_CHUNK` windows, with lines.

        Each chunk is a slice of ``inputs``, so Keras copies one chunk into TensorFlow at a
        time rather than all the windows at once.
        """
        if len(inputs) <= PREDICT_CHUNK:
            return model.predict(inputs, verbose=0)
        tick = self.ticker(what, len(inputs), "windows")
        out = []
        for start in range(0, len(inputs), PREDICT_CHUNK):
            out.append(model.predict(inputs[start:start + PREDICT_CHUNK], verbose=0))
            tick.reached(start + len(out[-1]))
        return np.concatenate(out)                                    # (windows, targets)

    def keras(self, epochs: int, batches: int, checks: int):
        """A Keras callback: a line per epoch, and inside a long one (its ``batches`` of
        training, then its ``checks`` batches of validation) every ``every`` s."""
        import keras

        progress = self

        class Lines(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.label = f"epoch {epoch + 1}/{epochs}"
                self.tick = progress.ticker(self.label, batches, "batches")

            def on_train_batch_end(self, batch, logs=None):
                self.tick.reached(batch + 1)

            def on_test_begin(self, logs=None):
                if progress.clock() - self.tick.began >= progress.every:   # a long epoch
                    progress.say(f"{self.label}: validating, {checks:,} batches")
                self.check = progress.ticker(f"{self.label} validation", checks, "batches")

            def on_test_batch_end(self, batch, logs=None):
                self.check.reached(batch + 1)

            def on_epoch_end(self, epoch, logs=None):
                progress.epoch(epoch, epochs, logs or {}, progress.clock() - self.tick.began)

        return Lines()

    def epoch(self, epoch: int, epochs: int, logs: dict, seconds: float) -> None:
        """One epoch's line: its losses and how long it took."""
        losses = ", ".join(f"{name} {float(logs[name]):.4f}" for name in ("loss", "val_loss")
                           if name in logs)
        self.say(f"epoch {epoch + 1}/{epochs}: {losses} ({_duration(seconds)})")


@dataclass
class Ticker:
    """How far one phase got; a line when ``every`` seconds have passed since the last."""

    progress: Progress
    what: str
    total: int
    unit: str
    began: float
    told: float = field(default=0.0, init=False)

    def __post_init__(self):
        self.told = self.began

    def reached(self, done: int) -> None:
        now = self.progress.clock()
        if now - self.told < self.progress.every or done >= self.total:
            return
        self.told = now
        spent = now - self.began
        left = spent * (self.total - done) / max(done, 1)
        self.progress.say(f"{self.what}: {done:,} of {self.total:,} {self.unit} in "
                          f"{_duration(spent)}, about {_duration(left)} to go")
