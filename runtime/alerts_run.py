"""``lstm-run --interval L``: the alert columns of every answer, one alert state per sensor.

Added after the predictions (names made fresh as ``runtime.lines`` does):

- ``lo_<target>``, ``hi_<target>``: the interval of this line's forecast, of the reading
  ``horizon`` readings later (the next at horizon 1; empty while the stream warms up); for a
  forecast block one pair per column, ``lo_<target>+<s>``, of the reading ``s`` later;
- ``anomaly``: whether this line's reading fell outside the interval of the forecast made
  ``horizon`` readings before it, given on that earlier line (a block: of the step-1
  forecast made one reading before it); empty where none was checked (the first readings,
  a missing value);
- ``score``: how many half-widths from that forecast the reading lies (> 1 is outside);
- ``alert``: ``outside``, ``stuck`` or ``shift`` on the line where an alert is raised, else
  empty (``--min-run``, ``--hold-off``, ``--stuck``, ``--cusum``, and ``--adapt`` for the
  interval itself: see :mod:`runtime.alerts`; each needs ``--interval``, :func:`config`).

With ``--state FILE`` each sensor's alert state (:meth:`AlertState.to_bytes`: the pending
forecasts, the run and hold-off counters, the CUSUM sums, the working quantile) is saved as a section of its stream state
(:mod:`runtime.state`), in the same commit, so that a restarted run checks the readings
against the forecasts made before it stopped. The state records the settings it was kept
under and the last reading it saw: a restart with other settings, or after a run without
``--interval`` fed the stream, starts that sensor's alerts afresh and says so in one line
(:meth:`StreamAlerts.notes`; docs/alerts.md, "A restart with other settings").
"""

from __future__ import annotations


import click
from click.core import ParameterSource

from .alerts import (ESCALATE, FOLLOWED, MAX_NARROWING, STUCK_ONE, AlertConfig, Alerts,
                     AlertState)
from .errors import SnapshotError


def options(command):
    """``--interval``, ``--min-run``, ``--hold-off``, ``--stuck``, ``--cusum``, ``--adapt``:
    the alert options of ``lstm-run`` and of the Flink job, which answer alike."""
    for option in reversed([
        click.option("--interval", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     metavar="LEVEL", help="Add lo_/hi_<target> (the calibrated interval at "
                     "LEVEL, e.g. 0.9, of the reading h readings later, h the model's horizon: "
                     "--info), anomaly and score (this reading against the interval given h "
                     "readings before) and alert columns (docs/alerts.md)."),
        click.option("--min-run", type=click.IntRange(min=1), default=1, show_default=True,
                     metavar="N", help="--interval: N readings in a row outside raise an "
                     "alert. The first is outside its own interval, and each after it outside "
                     "the interval the first was judged against and also outside its own or "
                     f"at least {FOLLOWED:g} of those half-widths from its centre: a spike's "
                     "return ends the run, a dropout the forecaster follows goes on "
                     "(docs/alerts.md)."),
        click.option("--hold-off", type=click.IntRange(min=0), default=3, show_default=True,
                     metavar="N", help="--interval: an alert stands until N readings in a row "
                     "fell inside, and raises no other meanwhile (one bad stretch, one alert) "
                     f"unless a reading scores {ESCALATE:g} times the stretch's worst; 0: none "
                     "stands, and every reading outside raises one once --min-run readings "
                     "in a row were."),
        click.option("--stuck", type=click.IntRange(min=0), default=0, show_default=True,
                     metavar="N", callback=_stuck, help="--interval: the same target value N "
                     "times in a row raises a 'stuck' alert (0: off; else at least 2)."),
        click.option("--cusum", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     metavar="H", help="--interval: Page's CUSUM of the standardized "
                     "residuals above H raises a 'shift' alert: a drift or a small level "
                     "shift (0: off; 4 in docs/alerts.md)."),
        click.option("--adapt", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     metavar="RATE", help="--interval: each sensor tracks its own quantile "
                     "from its misses, by RATE of the calibrated one per reading, so a drifting "
                     "sensor keeps its coverage (0: off; at most "
                     f"{MAX_NARROWING:g}/(1 - LEVEL) and 1; docs/alerts.md)."),
    ]):
        command = option(command)
    return command


def _stuck(ctx, param, value):
    """``--stuck``: 0 (off) or at least 2, as :class:`AlertConfig` takes it."""
    if value == 1:
        raise click.BadParameter(f"give 0 (off) or at least 2 (6 in docs/alerts.md): "
                                 f"{STUCK_ONE}")
    return value


# the options that only act on the alerts --interval adds, by parameter name
NEEDS_INTERVAL = ("min_run", "hold_off", "stuck", "cusum", "adapt")


def config(interval, min_run, hold_off, stuck, cusum, adapt) -> AlertConfig | None:
    """The alert options as an :class:`AlertConfig`, None without ``--interval``.

    An alert option the user gave without ``--interval`` would be ignored (no alert
    column): a usage error naming it. Options left at their defaults (``--min-run 1``,
    ``--hold-off 3``) do not count.
    """
    if interval is not None:
        return AlertConfig(interval, min_run, hold_off, stuck, cusum, adapt)
    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in NEEDS_INTERVAL
             if ctx.get_parameter_source(name) not in
             (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)]
    if given:
        raise click.UsageError(
            f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --interval LEVEL: "
            f"{'it acts' if len(given) == 1 else 'they act'} on the alerts of the calibrated "
            f"interval, and without it no reading is checked; add --interval 0.9 (a level "
            f"lstm-run MODEL --info lists) or leave {'it' if len(given) == 1 else 'them'} out")
    return None


class StreamAlerts:
    """The alerts of every sensor of one ``lstm-run``."""

    def __init__(self, model, config: AlertConfig):
        self.alerts = Alerts(model, config)
        self.states: dict[str, AlertState] = {}
        self.saved: dict[str, str] = {}     # sensor -> the state last written (base64)
        self.targets = tuple(model.targets)
        # restore(): how many sensors' saved alert state did not go on, by why, and the
        # first five of them
        self.restarted: dict[str, tuple[int, list[str]]] = {}

    def columns(self, form) -> None:
        """Add the alert columns to a line format (before its header is written)."""
        # the model's output names: a forecast block's are <target>+<s>, one per column
        names = [f"{side}_{t}" for side in ("lo", "hi") for t in self.targets]
        form.add_columns(names + ["anomaly", "score", "alert"])

    def annotate(self, records, answers) -> dict[int, list]:
        """``{id(record): alert column values}`` for records stepped in input order."""
        out: dict[int, list] = {}
        n = len(self.targets)
        for rec in records:
            step, _, pred = answers[id(rec)]
            state = self.states.get(rec.key)
            # afresh: a new sequence, or a stream fed readings this state did not see (a
            # run without --interval: its pending forecasts are of readings gone by)
            if state is None or rec.reset or not state.steps - 1 < step <= state.steps + 1 \
                    or step == 1:
                state = self.states[rec.key] = AlertState()
            if step == state.steps:                      # not fed (--missing skip)
                out[id(rec)] = [None] * (2 * n + 3)
                continue
            state.steps = step
            out[id(rec)] = state.last = self.alerts.columns(state, rec.values, pred)
        return out

    def last(self, key: str) -> list | None:
        """The alert columns of ``key``'s last answer, which a replay of it gets again."""
        state = self.states.get(key)
        return None if state is None else state.last

    # -- with --state: each sensor's alert state is a section of its stream state --

    SECTION = "alerts"

    def restore(self, key: str, stream, steps: int | None = None) -> None:
        """Take ``key``'s alert state from its stream's saved sections, where there is one
        and it can go on (:meth:`Alerts.changed`; ``steps``: the stream's step count, where
        nothing was fed since it was restored); else the sensor's alerts start afresh, and
        :meth:`notes` says so. (A stream fed readings its alert state did not see is found
        by :meth:`annotate` too, at its next reading.)"""
        data = stream.sections.get(self.SECTION)
        if data is None:
            return
        try:
            state = AlertState.from_bytes(data)
            self.alerts.fits(state)
        except SnapshotError as exc:
            raise SnapshotError(f"sensor {key!r}: its saved alert state cannot be used "
                                f"({exc})") from None
        why = self.alerts.changed(state, steps)
        if why is None:
            self.states[key] = state
        else:
            # kept under other settings: by the settings; behind its stream: one group
            group = why if state.settings != self.alerts.settings else "behind"
            count, keys = self.restarted.get(group, (0, []))
            self.restarted[group] = (count + 1, keys if len(keys) == 5 else keys + [key])

    def notes(self, named: bool) -> list[str]:
        """One line per way the saved alert states of :meth:`restore` did not go on: whose,
        why, and what happens instead. ``named``: sensors have keys (``--stream-column``)."""
        lines = []
        for why, (count, keys) in self.restarted.items():
            if named:
                shown = ", ".join(repr(k) for k in keys)
                who = (f"sensor {shown}" if count == 1 else
                       f"{count} sensors ({shown}{', ...' if count > len(keys) else ''})")
            else:
                who = "the stream"
            if why == "behind":
                why = ("is older than its stream (a run without --interval fed it readings "
                       "since)")
            lines.append(
                f"the saved alert state of {who} {why}; this run has "
                f"{self.alerts.config.words()}: it starts afresh, as a fresh run's would "
                f"({'its' if count == 1 else 'their'} next {self.alerts.horizon} "
                f"reading(s) not checked, the intervals' spread starting from the "
                f"calibration's)")
        return lines

    def keep(self, key: str, stream) -> None:
        """Put ``key``'s alert state into its stream's sections, for the save being made."""
        state = self.states.get(key)
        if state is not None:
            stream.sections[self.SECTION] = state.to_bytes()

    def forget(self, key: str) -> None:
        """A dropped sensor: its alert state goes with its stream."""
        self.states.pop(key, None)
