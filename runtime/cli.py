"""``lstm-run``: stream sensor lines through an exported model, one answer per line.

A thin click command: it checks its options, loads the model, and hands the loop to
:func:`runtime.serve.serve`; the project's errors become one line on stderr and an exit code.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from . import stderr
from .errors import DeviceError, LstmEdgeError
from .lines import FORMATS, MAX_LINE, cli_words
from .progress import Progress
from .io import Interrupted, LineReader, Output, OutputStalled, Signals
from . import alerts_run, mqtt

if TYPE_CHECKING:
    from .serve import ServeConfig

EPILOG = f"""
\b
Output (same format as the input, one line per input line):
  CSV     the input columns, then step, warmup (true/false), pred_<target>
          for each target, order (with the order check: empty, replay or
          skipped: ...), error (empty when the line was used) and input
          (the whole line, on an error record whose fields do not fit the
          columns; else empty); headerless CSV the same without a header
  JSONL   the input object plus "step", "warmup", "pred_<target>" (and
          "order" on a replay; a skipped line: the object plus "order");
          a refused line gives the input object plus "error" (a line that
          is not a JSON object: "error" and "input", its text)
  An added name already taken (CSV: by an input column; JSONL: by a
  feature or the --stream-column key) gets "_" appended.
  Predictions are empty (null) while a stream warms up (fewer readings
  than the model's window) and for a reading skipped by --missing skip.
  One line is one reading: one time step's feature values (a Keras
  sample is a whole window; Model.predict in Python takes those).
  --interval L adds lo_<target>, hi_<target>, anomaly, score and alert
  after the predictions (docs/alerts.md): lo/hi bound the reading h
  readings later (h: the horizon --info shows, 1 for the next reading),
  anomaly and score judge this reading against the interval given h
  readings before.

\b
Headerless CSV: the model's features in its order; or an ISO date/time
and then the features (a logger's line, after tail dropped the header);
or any columns named by --columns (e.g. --columns time,sensor,flow).
\b
Reset: with --reset-column NAME, a line whose NAME is true/1/yes resets
its sensor's stream (zero state, empty window) before it is fed, as a
new sequence does in Keras after model.reset_states().
\b
Bad lines (wrong field count, not a number, broken JSON or CSV quoting,
no sensor column, binary data, a number beyond float32, longer than
{MAX_LINE // 1024} KiB) give an error record and a "line N: reason"
message on stderr; that sensor's state is untouched. A blank line is
answered with a blank line (N lines in, N lines out).

\b
Order check (exactly once): with a time column (--time-column, or one
named time/timestamp/datetime/date holding times) or --seq-column, each
sensor remembers the position of its last reading. A line at or before
it is not fed: the last reading again is a replay, answered with the
answer it got then (same step and prediction) and "replay" in the
order column; an older one is answered "skipped: ..." naming the
sensor's position, with no step. The same position with other values
is an error record. So a feed may resend from any point at or before
where it stopped. Replays and skips are counted per sensor on stderr
at the end. --no-order-check feeds every line.
\b
--state FILE is a SQLite database, one row per sensor; a save writes
the sensors changed since the last one. An old .npz snapshot file
given as FILE is converted once. The answers go out first, then the
state that counts them: a sensor's row never counts an answer that
was not delivered; its step count matches the answers' step column.

\b
Exit codes:
  0    done (every line answered, bad lines included)
  1    --strict and a bad line (the lines before it are answered)
  2    usage error, a model/contract/device/state-file problem, a
       model that fails inside ONNX Runtime, or an unwritable output
  3    the input is empty (no lines, only blank lines, or a header
       and no readings)
  75   --endless and the input ended (the feed died): answers flushed,
       --state saved; a supervisor restarts it (systemd Restart=on-failure)
  130  SIGINT, 143 SIGTERM: answers flushed and --state saved first
  141  the reader of the output went away (broken pipe); --state saved
       for the answers delivered, except that a sensor in the batch that
       could not be written keeps its last save (a restart answers its
       lines since then again: repeated, never lost)
  SIGHUP ends nothing: answers flushed, --state saved, then the -o file
  reopened (log rotation by rename; -o files are written in append mode,
  so copytruncate works too)
"""

ENDLESS_EXIT = 75    # sysexits' EX_TEMPFAIL: the feed ended, try again (a supervisor restarts)


def reports_errors(func):
    """Turn an :class:`LstmEdgeError` raised by ``func`` into ``Error: ...`` and its exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        stderr.ensure()        # a closed stderr costs the messages, never the answers
        try:
            return func(*args, **kwargs)
        except LstmEdgeError as exc:
            stderr.warn(f"Error: {exc}")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:       # Ctrl-C before the stream started: nothing to save
            sys.exit(130)

    return wrapper


def _warn(message: str) -> None:
    stderr.warn(message)


def load_model(model: Path, *, device, window, carry_state, missing, threads):
    """``runtime.load`` with a one-line error for a file that is missing or not ONNX."""
    from . import load
    from .model import keras_kind
    keras = keras_kind(model)
    if keras:
        stem = model.name.split(".")[0] or "model"
        raise LstmEdgeError(f"{str(model)!r} is {keras}, not an ONNX file: lstm-run runs the "
                            f"ONNX file lstm-export writes from it. Export it first "
                            f"(needs the trainer's TensorFlow install): lstm-export "
                            f"{_quote(str(model))} -o exported/{stem}.onnx")
    if not model.is_file():
        raise LstmEdgeError(f"model file {str(model)!r} does not exist"
                            if not model.exists() else f"{str(model)!r} is not a file")
    try:
        return load(model, device=device, window=window, carry_state=carry_state,
                    missing=missing, threads=threads)
    except DeviceError as exc:         # the API's advice (device='cpu') in option words
        raise DeviceError(cli_words(str(exc))) from None


def _quote(text: str) -> str:
    import shlex
    return shlex.quote(text)


def _names(names, most: int | None = None) -> str:
    shown = _labels(names)
    if most is not None and len(shown) > most:
        shown = shown[:most - 1] + ["…", shown[-1]]
    return ", ".join(shown) or "(none)"


def _threads(model) -> str:
    """The ``threads`` row of ``--info``: ONNX Runtime's intra-op threads per call."""
    from .device import BATCH_THREADS_FROM, BatchThreads

    options = getattr(model.session, "get_session_options", None)
    own = options().intra_op_num_threads if options is not None else 1
    batch = BatchThreads.of(model.session)
    text = f"{own or 'all cores'} per call"
    if batch is not None:
        text += (f"; calls of {BATCH_THREADS_FROM:,} streams or more use {batch.threads} "
                 f"(automatic)")
    return text


def describe(model, path: Path, timed: bool = False) -> str:
    """The model's contract in words, for ``--info``; ``timed`` adds the measured latency."""
    info = model.info
    rows = [("model", str(path))]
    src = info.source or {}
    if src.get("file"):
        digest = f" (sha256 {src['sha256'][:12]}…)" if src.get("sha256") else ""
        rows.append(("source", f"{src['file']}{digest}"))
    elif src:
        rows.append(("source", f"Keras model {src.get('model', '?')!r}, exported from memory"))
    rows.append(("features", f"{len(model.features)}: {_names(model.features)}"))
    block = model.block
    if block is None:
        ahead = f" ({info.horizon} step{'s' if info.horizon != 1 else ''} ahead)"
        rows.append(("targets", f"{len(model.targets)}: {_names(model.targets)}{ahead}"))
    elif block.kind == "forecast":
        rows.append(("targets", f"{len(block.names)}: {_names(block.names)}, each 1 to "
                                f"{block.steps} steps ahead ({block.outputs} columns: "
                                f"{_names(model.targets, 8)})"))
    else:
        rows.append(("targets", f"reconstruction of the window's {block.steps} readings of "
                                f"{_names(block.names)} ({block.outputs} columns); lstm-run "
                                f"writes its error as score"))
    # a window model starts every window from zeros: its state is never carried
    fresh = "" if model.carry_state else "; zeros at every window, never carried"
    for spec in info.state:
        # a prev state carries readings, changes or flags (docs/contract.md), not units
        size = (f"{spec.units} carried values" if spec.kind == "prev"
                else f"{spec.units} units")
        rows.append(("state", f"{spec.kind.upper()} {spec.layer!r}, {size}: "
                              f"{', '.join(spec.inputs)} -> {', '.join(spec.outputs)}{fresh}"))
    rows.append(("streaming", _mode_row(model)))
    history = whole_history(model)
    if history:
        rows.append(("history", history))
    rows.extend(_streaming_rows(model))
    if model.mask_value is not None:
        rows.append(("mask", _mask_row(model)))
    parity = info.parity or {}
    if isinstance(parity.get("max_abs_diff"), (int, float)):
        units = f" {parity['units']} units" if parity.get("units") else ""
        rows.append(("parity", f"max |onnx - keras| = {parity['max_abs_diff']:.3g}{units} over "
                               f"{_checked(parity)} (tolerance {parity.get('atol', '?')})"))
    else:
        rows.append(("parity", json.dumps(parity) if parity else "not recorded"))
    if info.scaler:
        which = " and ".join(k for k in ("x", "y") if k in info.scaler)
        kind = f" ({info.scaler['kind']})" if "kind" in info.scaler else ""
        ends = {"x": "raw values in, model units out (no y scaling: the answers are in "
                     "the units the model was trained to predict)",
                "y": "model units in, raw values out (no x scaling: feed what the model was "
                     "trained on)"}
        rows.append(("scaler", f"the {which} scaling{kind} is in the graph: "
                               + ends.get(which, "raw values in, raw values out")))
    else:
        rows.append(("scaler", "none: the file reads and answers the units the model was "
                               "trained in (a model trained on scaled data answers in scaled "
                               "units: export it with lstm-export --scaler, "
                               "docs/keras-models.md)"))
    if "intervals" in info.extra:
        rows.append(("intervals", _intervals_row(model)))
    elif block is None or block.kind == "forecast":
        rows.append(("intervals", "none: the file holds no calibrated intervals, so "
                                  "--interval (lo/hi, anomaly, score, alert) cannot be used; "
                                  "export it with lstm-export --calibrate DATA.csv, rows it "
                                  "was not trained on (docs/alerts.md)"))
    rows.append(("device", str(model.device)))
    rows.append(("threads", _threads(model)))
    if timed:
        from .timing import latency
        lat = latency(model)
        low, high = (s * 1e6 for s in lat.spread)
        rows.append(("latency", f"{lat.seconds * 1e6:,.1f} µs per reading, one stream on this "
                                f"machine ({lat.rate:,.0f} readings/s; the least of {lat.rounds} "
                                f"rounds' medians, {lat.steps} steps; rounds {low:,.1f} to "
                                f"{high:,.1f} µs)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _intervals_row(model) -> str:
    """What ``--interval`` can add: the levels, and where the calibration came from."""
    from .alerts import Intervals
    iv = Intervals.from_model(model)
    assert iv is not None
    left = f", {iv.left_out} left out as faults" if iv.left_out else ""
    # a level whose quantile is the one below it (the rows too few for its rank, and the
    # tail fitted to them asking no more than the largest score) is no wider interval
    order = sorted(range(len(iv.levels)), key=lambda i: iv.levels[i])
    same = [(iv.levels[b], iv.levels[a]) for a, b in zip(order, order[1:])
            if bool((iv.q[a] == iv.q[b]).all())]
    alike = "".join(f"; {hi:g} gives the {lo:g} interval, no wider (too few rows for its "
                    f"rank, and a tail fitted to them that asks no more than the largest "
                    f"score)" for hi, lo in same)
    head = (f"calibrated at {', '.join(f'{v:g}' for v in iv.levels)} on {iv.n} rows "
            f"({iv.source}; scale {iv.scale}{left}{alike}): ")
    block = model.block
    if block is None or block.kind != "forecast":
        # lo/hi bound the reading the forecast is of, `horizon` readings on; anomaly judges
        # a reading against the interval given that many readings before it
        h = model.info.horizon
        ahead, before = (("the next reading", "one reading before") if h == 1 else
                         (f"the reading {h} readings on", f"{h} readings before"))
        return (head + f"--interval LEVEL adds lo/hi (the interval of {ahead}), anomaly, "
                f"score (of each reading against the interval given {before})")
    # a forecast block: every step has its interval, a reading is checked against step 1
    k, unit = len(block.names), " spreads" if iv.scale != "none" else ""
    at = [i for i, v in enumerate(iv.levels) if abs(v - 0.9) < 1e-9]
    widths = ""
    if at:
        q = iv.q[at[0]]
        ends = [f"{'' if k == 1 else name + ' '}{q[i]:.4g} (1 ahead)"
                + (f" to {q[(block.steps - 1) * k + i]:.4g} ({block.steps} ahead)"
                   if block.steps > 1 else "") for i, name in enumerate(block.names)]
        widths = f"; 90 % half-width {', '.join(ends)}{unit}"
    return (head + f"--interval LEVEL adds lo/hi for each of the {block.steps} steps, and "
            f"anomaly, score of each reading against the 1-step forecast made before it"
            + widths)


def whole_history(model) -> str | None:
    """What a sequence-mode file of a model that answers once per sequence (a Keras model on
    ``keras.Input((None, F))``, ``lstm_edge.answers`` ``last``) streams, for ``--info`` and
    lstm-run's start-up note; None for any other. Keras cannot say which window such a model
    was trained on, so the file carries the state from a stream's first reading on, where a
    ``create_dataset`` model answered windows of N (docs/keras-models.md, "What lstm-export
    checks"). A file of lstm-train (its scaler's ``kind``) is a sequence model by design."""
    info = model.info
    if (model.mode != "sequence" or not info.answers_last or info.keras_stateful
            or isinstance((info.scaler or {}).get("kind"), str)):
        return None
    return ("the state is carried from the first reading on: each answer is Keras's on the "
            "whole history since the stream started (a whole-series sequence), not on a "
            "window; a model trained on windows of N readings (a create_dataset model) should "
            "be exported with --window N --no-carry-state (or run with lstm-run --window N "
            "--no-carry-state)")


def _mode_row(model) -> str:
    """``--info``'s streaming line: the contract's mode, with the state slots where a stream
    keeps several (docs/contract.md, "Streaming modes" and ``lstm_edge.state_slots``)."""
    w, slots = model.window, model.slots if model.carry_state else 1
    if model.mode == "window":
        return (f"window: each prediction reads the last {w} readings from a zero state "
                f"({w} steps per reading)")
    if model.mode == "sequence":
        start, cost = (("the state the reading before left", "") if slots == 1 else
                       (f"the state reading j-{slots} left", f"{slots} state slots, below; "))
        return f"sequence: each reading is fed once, from {start} ({cost}1 step per reading)"
    start, cost = (("the state the previous window ended in", "") if slots == 1 else
                   (f"the state window j-{slots} ended in", f"{slots} state slots, below; "))
    return f"stateful: each prediction reads the last {w} readings from {start} ({cost}{w} " \
           f"steps per reading)"


def _mask_row(model) -> str:
    """``--info``'s mask line: which reading is masked and what it is answered with
    (docs/contract.md, ``lstm_edge.mask_value``)."""
    value = ", ".join(f"{name} = {v:g}" for name, v in zip(_labels(model.features),
                                                          model.mask_value))
    if model.mask_answer is None:
        nothing = ("an empty answer, since the file predates lstm_edge.mask_answer; re-export "
                   "it for Keras's")
    else:
        nothing = ", ".join(f"{t} {v:.6g}" for t, v in zip(_labels(model.targets),
                                                             model.mask_answer))
        nothing = f"Keras's answer for nothing fed ({nothing})"
    head = f"a reading of {value} (every feature, within 1e-6 relative) is masked, as by " \
           f"Keras Masking: "
    if model.window > 1:
        carried = ", and the carried state stays" if model.carry_state else ""
        return head + (f"each window runs its unmasked readings only; a window of masked "
                       f"readings only is answered with {nothing}{carried}")
    if not model.carry_state:
        return head + f"not fed, and answered with {nothing}"
    if model.info.keras_stateful:       # each reading its own Keras sample
        return head + f"not fed (the state stays), and answered with {nothing}"
    return head + (f"not fed (the state stays), and answered with the previous answer again "
                   f"(before the first reading fed: {nothing})")


def _labels(names) -> list[str]:
    """Names as ``--info`` shows them: an unnamed one by its index."""
    return [n or f"#{i}" for i, n in enumerate(names)]


def _streaming_rows(model) -> list[tuple[str, str]]:
    """``--info``'s warm-up and state-slot lines."""
    from .serve import window_known
    w, slots = model.window, model.slots if model.carry_state else 1
    other = "" if window_known(model) else "; --window N if the model was trained on N"
    rows = [("warm-up", f"{w - 1} reading{'s' if w != 2 else ''}: the first prediction comes "
                        f"with reading {w} of each sensor (a window of {w} timesteps{other})"
             if w > 1 else "none: every reading gets a prediction")]
    if slots > 1:
        what = "window" if w > 1 else "reading"
        rows.append(("state slots", f"{slots} state slots: {what} j continues {what} "
                                    f"j-{slots}, as Keras predict(batch_size={slots})"))
    return rows


def _checked(parity: dict) -> str:
    """What the export check ran, in words, from its record (docs/contract.md, parity)."""
    steps = parity.get("steps", "?")
    readings = f"{steps} reading{'' if steps == 1 else 's'}"
    if parity.get("mode") == "window" and "windows" in parity:
        return f"{parity['windows']} windows of {readings}, each from a zero state"
    if "slots" in parity and "windows" in parity:
        return (f"{parity['windows']} consecutive windows of {readings}, state carried in "
                f"{parity['slots']} slot(s)")
    if "mode" in parity and "streams" in parity:
        return f"{parity['streams']} runs of {readings} from a zero state"
    return f"{steps} steps"     # a file from before the check said how it ran


@click.command(cls=stderr.Command, epilog=EPILOG,
               context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--info", is_flag=True,
              help="Describe the model's contract, time it on this machine, and exit.")
@click.option("--stream", is_flag=True,
              help="Answer each line as soon as it arrives, flushing every line (for a pipe "
                   "from a live sensor). Without it, input is read in large blocks.")
@click.option("-i", "--input", "input_", default="-", show_default=True,
              type=click.Path(exists=True, dir_okay=False, readable=True, allow_dash=True),
              help="Read this file instead of stdin.")
@click.option("-o", "--output", default="-", show_default=True,
              type=click.Path(dir_okay=False, writable=True, allow_dash=True),
              help="Write to this file instead of stdout (emptied first, unless --append). "
                   "SIGHUP reopens it, for log rotation.")
@click.option("--append", is_flag=True,
              help="Add to the -o file instead of emptying it: a restarted service keeps the "
                   "answers of its earlier runs.")
@click.option("--endless", is_flag=True,
              help=f"The input is a feed that should never end: its end is a failure, exit "
                   f"code {ENDLESS_EXIT} (answers flushed, --state saved), so that a "
                   f"supervisor restarts lstm-run.")
@click.option("--format", "format_", type=click.Choice(FORMATS), default="auto",
              show_default=True,
              help="Input format; auto: a first line '{' is JSONL, all numbers (or an ISO "
                   "date/time, then the features) is headerless CSV, anything else is a CSV "
                   "header.")
@click.option("--stream-column", metavar="NAME",
              help="Column (CSV header) or key (JSONL) naming each line's sensor; every "
                   "sensor gets its own stream state.")
@click.option("--columns", metavar="NAME,NAME,...",
              help="Name the fields of headerless CSV lines (features found by name, the rest "
                   "passed through), e.g. time,sensor,flow; a line of these names is their "
                   "header, wherever it comes.")
@click.option("--reset-column", metavar="NAME",
              help="Column (CSV) or key (JSONL) that resets its sensor's stream when true "
                   "(true/1/yes/y/t/start; false/0/no/n/f/empty carry on; any case, "
                   "1.0/0.0 too), before that line is fed.")
@click.option("--time-column", metavar="NAME",
              help="Column (CSV) or key (JSONL) with each reading's time: seconds (epoch) or "
                   "ISO 8601. Each sensor's readings are then checked for order (see below); "
                   "without it a column named time/timestamp/datetime/date is used.")
@click.option("--seq-column", metavar="NAME",
              help="Column (CSV) or key (JSONL) with each reading's sequence number, a whole "
                   "number counting the sensor's readings: the order check uses it.")
@click.option("--no-order-check", is_flag=True,
              help="Feed every line as it comes, even one at or before its sensor's last "
                   "position (for feeds whose times are not monotonic by design).")
@click.option("--progress/--no-progress", default=None,
              help="A live status line on stderr: lines/s, sensors, errors, last save "
                   "[default: on with --stream when stderr is a terminal].")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Drop a sensor's state after this long without a line.")
@click.option("--max-streams", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Most sensors kept at once; a new one drops the least recently seen.")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
              help="Where to run the model.")
@click.option("--window", type=click.IntRange(min=1),
              help="Override the readings per prediction (the timesteps of a window) written "
                   "in the model.")
@click.option("--carry-state/--no-carry-state", default=None,
              help="Override whether a window starts from the previous window's state.")
@click.option("--missing", type=click.Choice(["error", "skip", "hold"]), default="error",
              show_default=True,
              help="A missing value (empty or blank, nan, NA, N/A, null, none, ? or -, in "
                   "any case: what lstm-train reads as missing): refuse the line, skip the "
                   "reading (no prediction, state kept), or hold the sensor's last value.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path),
              help="State database (SQLite): every sensor's state is loaded from it at start "
                   "(if it exists) and the changed sensors are saved to it at exit, in one "
                   "commit, so a restart resumes exactly. An old .npz snapshot file is "
                   "converted.")
@click.option("--save-every", type=click.IntRange(min=0), default=0, metavar="N",
              help="Also save --state every N lines (at the end of the batch that reaches N); "
                   "1 commits after every batch, so that a kill -9 loses at most the batch "
                   "being answered.")
@click.option("--save-interval", type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar="SECONDS",
              help="Also save --state when this long has passed since the last save and a "
                   "sensor changed (0: only --save-every and exit). Bounds both what a "
                   "kill -9 loses and what SIGTERM still has to write.")
@alerts_run.options
@click.option("--on-new-model", type=click.Choice(["refuse", "fresh"]), default="refuse",
              show_default=True,
              help="A --state file of another model (a new version): refuse, naming both; "
                   "or keep it beside as FILE.old-N and start every sensor fresh.")
@click.option("--strict", is_flag=True, help="Stop at the first bad line, with exit code 1.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for the model.")
@mqtt.options
@reports_errors
def main(model, info, stream, input_, output, append, endless, format_, stream_column, columns,
         reset_column, time_column, seq_column, no_order_check, progress, idle_timeout,
         max_streams, device, window, carry_state, missing, state, save_every, save_interval,
         interval, min_run, hold_off, stuck, cusum, adapt, on_new_model, strict, threads,
         **mqtt_options):
    """Run MODEL.onnx (exported by lstm-export) over sensor lines, one answer per line.

    \b
      lstm-run model.onnx -i sensors.csv -o predictions.csv
      sensor-reader | lstm-run model.onnx --stream --stream-column sensor
      lstm-run model.onnx --info
    """
    if hasattr(signal, "SIGHUP"):
        # A reload (SIGHUP) while the model loads must not end the service: systemd counts
        # death by SIGHUP as a clean stop and would not restart it. Serving handles it.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if append and output == "-":
        raise click.UsageError("--append needs -o FILE")
    if save_every and state is None:
        raise click.UsageError("--save-every needs --state FILE")
    if time_column and seq_column:
        raise click.UsageError("give --time-column or --seq-column, not both: one position "
                               "orders each sensor's readings")
    if no_order_check and (time_column or seq_column):
        raise click.UsageError("--no-order-check turns the check off; leave out "
                               "--time-column/--seq-column with it")
    if "-" not in (input_, output) and Path(output).exists() \
            and Path(input_).resolve() == Path(output).resolve():
        raise click.UsageError("-o would overwrite the -i file it reads")
    alerts = alerts_run.config(interval, min_run, hold_off, stuck, cusum, adapt)
    from .serve import ServeConfig     # imports ONNX Runtime: after --help, and one line if absent

    loaded = load_model(model, device=device, window=window, carry_state=carry_state,
                        missing=missing, threads=threads)
    if window is not None and window > 1 and carry_state is None \
            and loaded.info.streaming_mode == "sequence":
        _warn(f"--window {window} on a sequence-mode file keeps carrying the state: each "
              f"window starts from the state the one before ended in, so every reading is "
              f"fed {window} times, which no Keras predict of a stateless model does; a model "
              f"trained on windows of {window} from a zero state (a create_dataset model) "
              f"needs --window {window} --no-carry-state")
    if info:
        click.echo(describe(loaded, model, timed=True))
        return
    history = whole_history(loaded)
    if history:
        _warn(f"note: {model.name}: {history}")
    config = ServeConfig(format=format_, stream_column=stream_column, strict=strict,
                         idle_timeout=idle_timeout, max_streams=max_streams, state=state,
                         save_every=save_every, save_interval=save_interval,
                         columns=_column_names(columns), reset_column=reset_column,
                         alerts=alerts,
                         on_new_model=on_new_model, time_column=time_column,
                         seq_column=seq_column, order_check=not no_order_check)
    if mqtt_options["mqtt_url"]:
        plain = {"-i": input_ != "-", "-o": output != "-", "--strict": strict,
                 "--stream": stream, "--format": format_ != "auto", "--progress": progress,
                 "--append": append, "--endless": endless}
        sys.exit(mqtt.run_from_options(loaded, model, config, mqtt_options, plain=plain,
                                       warn=_warn))
    if progress is None:
        progress = stream and sys.stderr.isatty()
    run(loaded, config, input_, output, stream,
        progress=Progress(state=state is not None) if progress else None,
        append=append, endless=endless)


def _column_names(text: str | None) -> tuple[str, ...] | None:
    """``--columns a,b,c`` as names; a usage error for an empty or repeated name."""
    if text is None:
        return None
    from .lines import split_csv
    names = tuple(n.strip() for n in split_csv(text))
    if not all(names) or len(set(names)) != len(names):
        raise click.BadParameter(f"expected distinct, non-empty names separated by commas, "
                                 f"got {text!r}", param_hint="--columns")
    return names


def run(model, config: "ServeConfig", input_: str, output: str, stream: bool,
        progress: Progress | None = None, append: bool = False, endless: bool = False) -> None:
    """Open the input and output, serve, and map the ways a run ends to exit codes.

    Whatever ends the run, the answers written are out before the state is saved, and the
    saved state counts no answer that was not delivered (see :func:`runtime.serve.serve`).
    ``append`` keeps what the output file holds; ``endless`` makes the end of the input a
    failure (:data:`ENDLESS_EXIT`).
    """
    from .serve import EmptyInput, StrictStop, serve

    code, failure = 0, cast("LstmEdgeError | None", None)
    warn = progress.warn if progress else _warn
    with Signals() as signals:
        out = Output(output, signals, append=append)
        if out.note:
            warn(out.note)
        fd = 0 if input_ == "-" else os.open(input_, os.O_RDONLY)
        reader = LineReader(fd, block=1 << 16, gather=not stream, signals=signals)

        def reopened() -> None:
            where = f"{out.path} reopened" if out.reopen() else "stdout kept"
            warn(f"SIGHUP: answers flushed, {'state saved, ' if config.state else ''}{where}")

        try:
            server = serve(model, config, reader, out.write, warn=warn, progress=progress,
                           hangup=reopened)
            if server.errors:
                warn(f"{server.errors} of {server.lines} lines were refused (see above)")
            if endless:
                code = ENDLESS_EXIT
        except Interrupted as exc:
            code = 128 + exc.signum
        except OutputStalled:
            _warn(f"the reader did not take the last answers within {out.GRACE:g} s of the "
                  f"signal; the saved state counts only the answers delivered before them")
            code = 128 + (signals.signum or signal.SIGTERM)
        except BrokenPipeError:
            out.lost()       # the answers cannot go anywhere; the delivered state was saved
            code = 141
        except EmptyInput as exc:
            code, failure = (ENDLESS_EXIT, None) if endless else (exc.exit_code, exc)
        except StrictStop as exc:
            code, failure = exc.exit_code, exc
        except LstmEdgeError as exc:
            code, failure = exc.exit_code, exc
        finally:
            if progress:
                progress.finish()
            out.close()
    if failure is not None:
        stderr.warn(f"Error: {failure}")
    elif code == ENDLESS_EXIT:
        _warn(f"the input ended, and --endless says it never should: exit {ENDLESS_EXIT} "
              f"(answers flushed{', state saved' if config.state else ''}) for a restart")
    sys.exit(code)


if __name__ == "__main__":
    main()
