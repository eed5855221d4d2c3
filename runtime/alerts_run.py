"""``lstm-run --interval L``: the alert columns of every answer, one alert state per sensor.

Added after the predictions (names made fresh as ``runtime.lines`` does):

- ``lo_<target>``, ``hi_<target>``: the interval of this line's forecast (empty while the
  stream warms up);
- ``anomaly``: whether this reading fell outside the interval of the forecast made
  ``horizon`` readings before it (empty where there was none);
- ``score``: how many half-widths from that forecast the reading lies (> 1 is outside);
- ``alert``: ``outside`` or ``stuck`` on the line where an alert is raised, else empty
  (``--min-run``, ``--hold-off``, ``--stuck``: see :mod:`runtime.alerts`).

With ``--state FILE`` the alert states are kept in ``FILE.alerts`` (JSON: sensor -> the
base64 of :meth:`AlertState.to_bytes`), written after the state database at each save, so
that a restarted run checks the readings against the forecasts made before it stopped.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np

from .alerts import AlertConfig, Alerts, AlertState
from .errors import SnapshotError


class StreamAlerts:
    """The alerts of every sensor of one ``lstm-run``."""

    def __init__(self, model, config: AlertConfig):
        self.alerts = Alerts(model, config)
        self.states: dict[str, AlertState] = {}
        self.saved: dict[str, str] = {}     # sensor -> the state last written (base64)
        self.targets = tuple(model.targets)

    def columns(self, form) -> None:
        """Add the alert columns to a line format (before its header is written)."""
        names = [f"{side}_{t}" for side in ("lo", "hi") for t in self.targets]
        form.add_columns(names + ["anomaly", "score", "alert"])

    def annotate(self, records, answers) -> dict[int, list]:
        """``{id(record): alert column values}`` for records stepped in input order."""
        out: dict[int, list] = {}
        n = len(self.targets)
        for rec in records:
            step, _, pred = answers[id(rec)]
            state = self.states.get(rec.key)
            if state is None or rec.reset or step <= state.steps - 1 or step == 1:
                state = self.states[rec.key] = AlertState()
            if step == state.steps:                      # not fed (--missing skip)
                out[id(rec)] = [None] * (2 * n + 3)
                continue
            state.steps = step
            answer = self.alerts.observe(state, rec.values, pred)
            checked = not np.isnan(answer.score)
            out[id(rec)] = [*answer.lo, *answer.hi, answer.anomaly if checked else None,
                            answer.score if checked else None, answer.alert]
        return out

    # -- with --state: FILE.alerts, until the stream state carries sections of its own --

    @staticmethod
    def path(state: Path) -> Path:
        return Path(f"{state}.alerts")

    def load(self, state: Path) -> None:
        path = self.path(state)
        if not path.exists():
            return
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
            self.states = {str(k): AlertState.from_bytes(base64.b64decode(v))
                           for k, v in found.items()}
            self.saved = {str(k): str(v) for k, v in found.items()}
            for one in self.states.values():
                one.check(len(self.alerts.q), len(self.alerts.watch))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise SnapshotError(f"{path}: the alert states cannot be read ({exc}); delete it "
                                f"to start the alerts afresh") from None

    def save(self, state: Path, keys, inflight) -> None:
        """Write the states of the sensors in ``keys`` (the others were dropped); a sensor
        whose answers are not out (``inflight``) keeps the state written before."""
        self.states = {k: self.states[k] for k in keys if k in self.states}
        keep = {k: self.saved[k] if k in inflight else
                base64.b64encode(s.to_bytes()).decode()
                for k, s in self.states.items() if k not in inflight or k in self.saved}
        self.saved = keep
        path = self.path(state)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(keep), encoding="utf-8")
            os.replace(temporary, path)
        except OSError as exc:
            raise SnapshotError(f"{path}: cannot be written ({exc.strerror or exc})") from None
