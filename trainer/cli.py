"""``lstm-train`` and ``lstm-export``: thin click commands over the trainer's functions.

Each command validates its arguments, calls one library function, and turns the project's
own errors into one line on stderr and an exit code — never a traceback.
"""

from __future__ import annotations

import importlib.util
import os

import click

from runtime import stderr
from runtime.cli import reports_errors
from runtime.errors import MissingExtra

from .errors import DataError

TRAINING = ("tensorflow", "keras")        # what lstm-train imports beyond the runtime
EXPORTING = TRAINING + ("tf2onnx", "onnx")   # and lstm-export: the converter, the graph editor
SEED_MAX = 2**31 - 1   # NumPy's seeds stop at 2**32 - 1; member k adds 1000 k to it


def require_training(command: str, modules: tuple[str, ...]) -> None:
    """One line naming the [train] extra where its packages are missing (a runtime install).

    Checked before anything heavy is imported, so that a device that installed the runtime
    alone hears what to install instead of meeting a traceback.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(f"{command} needs the training packages, and {', '.join(missing)} "
                           f"{'is' if len(missing) == 1 else 'are'} not installed: pip install "
                           f"'lstm-edge[cpu,train]' (or [gpu,train]) on a machine to train on")


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up chatter and GPU off the trainer's output.

    A TensorFlow that sees a GPU traces Keras LSTMs as CudnnRNNV3, which cannot be exported,
    and both commands are small enough that the CPU is the right place for them.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    from .quiet import filter_stderr
    filter_stderr()     # what TF_CPP_MIN_LOG_LEVEL cannot stop (issue 11, item 3)


def members_option(value: str) -> int | None:
    """``--members``: a count of at least 1, or ``auto`` (None)."""
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise click.BadParameter(f"expected a count of at least 1 or 'auto', got {value!r}")
    return count


TRAIN_EXAMPLES = """
\b
Examples:
  lstm-train data/water-flow.csv --target "Water flow [l/s]" -o build/water.keras
  lstm-train data/occupancy.csv --target V4 --features V1,V2,V4 --look-back 12 \\
      --mode sequence --units 16 --epochs 20 -o build/co2.keras
  lstm-export build/water.keras      # then export it for the runtime

\b
Shapes: a window model reads (samples, timesteps, features) = (n, LOOK_BACK, FEATURES):
n windows, each LOOK_BACK consecutive rows of the feature columns, and predicts the
target HORIZON rows after each window's last row.
\b
Modes (how the model will stream, see docs/keras-models.md):
  window    windows of --look-back from a zero state (the usual create_dataset model)
  stateful  Keras stateful=True on sliding windows, state carried from window to window
  sequence  a prediction at every step, state carried: one step per new reading

\b
Exit codes: 0 the model, its sidecar (and --plot) were written and the report printed;
2 a refusal (one Error: line saying what to do), usage errors included: nothing was
trained, except a --plot that failed after training (the model is saved and the report
printed first); 130 interrupted (Ctrl-C).
"""


@click.command(cls=stderr.Command, epilog=TRAIN_EXAMPLES,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", type=click.Path(exists=True, dir_okay=False))
@click.option("--target", required=True, help="Column(s) to predict, comma-separated.")
@click.option("--features", help="Input columns, comma-separated [default: every numeric "
              "column; the time column never]")
@click.option("--look-back", type=click.IntRange(min=1), default=24, show_default=True,
              help="Timesteps per window (sequence mode: per training subsequence).")
@click.option("--horizon", type=int, default=1, show_default=True,   # < 1: check_config says why
              help="Predict the value this many rows ahead.")
@click.option("--mode", type=click.Choice(["window", "stateful", "sequence"]),
              default="window", show_default=True)
@click.option("--cell", type=click.Choice(["lstm", "gru"]), default="lstm", show_default=True)
@click.option("--units", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              show_default=True)
@click.option("--dense", type=click.IntRange(min=0), default=0, show_default=True,
              help="Hidden relu units in the head (0: a linear head only).")
@click.option("--epochs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Windows per training batch (stateful mode: parallel blocks of the series).")
@click.option("--patience", type=click.IntRange(min=0), default=5, show_default=True,
              help="Early stopping: epochs without a better validation loss (0: stop at the "
              "first epoch that does not improve).")
@click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.15, show_default=True,
              help="The rows before the test tail that drive early stopping (split by time).")
@click.option("--missing", type=click.Choice(["error", "drop", "ffill", "interpolate"]),
              default="error", show_default=True, help="What to do with empty/NA values.")
@click.option("--scaling", type=click.Choice(["robust", "standard"]), default="robust",
              show_default=True, help="Per-column scaling: median/IQR or mean/std.")
@click.option("--loss", type=click.Choice(["huber", "mse"]), default="huber", show_default=True)
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="Member k of an ensemble uses seed + 1000 k.")
@click.option("--quiet", is_flag=True, help="No progress on stderr (a line as each phase "
              "starts and per epoch, given on a terminal or for a CSV of 10 MB or more); "
              "notes, warnings and errors still.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="model.keras",
              show_default=True, help="Where to save the model; NAME.lstm-edge.json goes beside.")
@click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.15, show_default=True,
              help="The last rows, never trained or early-stopped on: the report's test tail.")
@click.option("--target-kind", type=click.Choice(["auto", "residual", "seasonal", "level"]),
              default="auto", show_default=True, help="residual: predict the change from the "
              "last reading (an untrained model is the naive forecast); seasonal: from the last "
              "reading plus the change one season before (sequence mode); level: the value "
              "itself; auto: seasonal where it beats residual on the validation rows.")
@click.option("--difference/--no-difference", default=True, show_default=True,
              help="Feed the changes between readings instead of the readings.")
@click.option("--linear", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="A linear path on the last 1-3 changes of every reading "
              "beside the network (differenced sequence models); auto: where it lowers the "
              "start's MAE on the validation rows.")
@click.option("--members", default="1", show_default=True, metavar="N|auto",
              callback=lambda _ctx, _param, value: members_option(value),
              help="A deep ensemble: N networks of different seeds (seed, seed + 1000, ...) "
              "averaged in one exported model, N times the training; auto: 1 to 3, the "
              "validation rows choose.")
@click.option("--season", type=click.IntRange(min=1), help="Readings per season for the seasonal-naive "
              "baseline [default: guessed from the time column: hourly 24, daily 7, "
              "weekly 52, monthly 12].")
@click.option("--anchor-budget", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds for the statistical anchors (AutoETS, AutoTheta, AutoARIMA; the "
              "[stats] extra) on the test tail; 0 leaves them out.")
@click.option("--plot", type=click.Path(dir_okay=False),
              help="Draw actual vs predicted (and naive) over the test tail into this PNG.")
@reports_errors
def train_main(data, target, features, look_back, horizon, mode, cell, units, layers, dropout,
               dense, epochs, batch_size, patience, val_fraction, missing, scaling, loss, seed,
               quiet, output, test_fraction, target_kind, difference, linear, members,
               season, anchor_budget, plot):
    """Fit an LSTM (or GRU) on DATA, a CSV with a header row, and report it against baselines."""
    require_training("lstm-train", TRAINING)
    from .model import ModelConfig
    from .train import TrainConfig, check_config, check_data, check_output, check_plot

    cfg = TrainConfig(look_back=look_back, horizon=horizon, epochs=epochs,
                      batch_size=batch_size, patience=patience, val_fraction=val_fraction,
                      missing=missing, scaling=scaling, loss=loss, seed=seed,
                      verbose=0 if quiet else 2, test_fraction=test_fraction,
                      target_kind=target_kind, difference=difference, season=season,
                      linear={"auto": None, "on": True, "off": False}[linear],
                      members=members, anchor_budget=anchor_budget,
                      model=ModelConfig(mode=mode, cell=cell, units=units, layers=layers,
                                        dropout=dropout, dense=dense))
    check_config(cfg, rows=cfg.look_back + cfg.horizon)   # flag errors before TF loads
    check_output(output)
    check_plot(plot)
    checked = check_data(data, target, features, cfg)   # the CSV's refusals, before TF loads
    quiet_tensorflow()
    from .train import train

    result = train(data, target, features, output, cfg, plot=plot, checked=checked)
    for line in result.warnings:
        click.echo(line, err=True)
    click.echo(result.report())
    if result.plot_error:   # after the report: the model is saved, only the picture is lost
        raise DataError(result.plot_error)


EXPORT_EXAMPLES = """
\b
Examples:
  lstm-export build/water.keras                  # -> exported/water.onnx
  lstm-export model.h5 -o exported/co2.onnx --scaler scaler.json
  lstm-export model.keras --window 24 --no-carry-state --atol 1e-5
  lstm-export model.keras --features temp,humidity --targets temp --opset 13
  lstm-export weather.keras --scaler s.json --horizon 72     # predicts 72 readings ahead

\b
The scaler, column names and streaming mode come from NAME.lstm-edge.json next to
NAME.keras when the trainer wrote one; the options override it. The export is checked
against Keras the way the file will stream (window mode: many windows from a zero state;
stateful: consecutive windows carrying the state; sequence: --steps readings one at a
time) and nothing is written if it differs by more than --atol (in normalised units
where there is a scaler). Notes on suspicious shapes go to stderr.

Exit codes: 0 the file was written; 1 the check against Keras failed (nothing
written); 2 any other refusal (one Error: line saying what to do), usage errors included.
"""


@click.command(cls=stderr.Command, epilog=EXPORT_EXAMPLES,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(exists=True))  # a directory gets the exporter's message
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write the ONNX file [default: exported/NAME.onnx].")
@click.option("--scaler", type=click.Path(exists=True, dir_okay=False),
              help="JSON with the normalisation: a trainer sidecar or {\"x\": ..., \"y\": ...}.")
@click.option("--features", help="Input column names, comma-separated [default: x0, x1, ...].")
@click.option("--targets", help="Output names, comma-separated [default: y0, y1, ...].")
@click.option("--window", type=click.IntRange(min=1),
              help="Readings (timesteps) one prediction is made from [default: inferred from "
              "the model].")
@click.option("--carry-state/--no-carry-state", default=None,
              help="Whether one call starts from the last call's state [default: inferred].")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Largest difference from Keras allowed, in normalised units.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset, 13 to 18.")
@click.option("--state-slots", type=click.IntRange(min=1),
              help="Stateful mode: state slots per stream, window j continuing window j-N "
              "[default: the batch size the stateful layer was built with].")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Length of the runs the check feeds a sequence model (window modes "
              "run windows).")
@click.option("--horizon", type=click.IntRange(min=1),
              help="How many readings ahead the model predicts, for the record and the "
              "runtime's label [default: the sidecar's, else a forecast block's steps, else 1].")
@click.option("--no-check", is_flag=True, help="Skip the check against Keras.")
@click.option("--calibrate", "calibration", type=click.Path(exists=True, dir_okay=False),
              help="Calibrate the prediction intervals on this CSV: rows the model was not "
              "trained on, and not the rows you will judge it on [default: the training "
              "sidecar's validation rows, if any].")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False),
              help="Also write a Triton model repository there (see lstm-triton for options).")
@reports_errors
def export_main(model, output, scaler, features, targets, window, carry_state, atol, opset,
                state_slots, steps, horizon, no_check, calibration, triton_dir):
    """Export MODEL (.keras or .h5) to a streaming ONNX file the runtime can step through."""
    require_training("lstm-export", EXPORTING)
    import runtime.device  # noqa: F401 - the check runs the graph: says which ONNX Runtime extra
    quiet_tensorflow()
    from .export import export

    report = export(model, output, scaler=scaler, features=features, targets=targets,
                    window=window, carry_state=carry_state, atol=atol, opset=opset,
                    check=not no_check, steps=steps, state_slots=state_slots,
                    horizon=horizon, calibration=calibration)   # all of it written, or nothing
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(report.summary())
    if triton_dir is not None:
        from integrations.triton.repository import write_repository

        click.echo(write_repository(report.path, triton_dir).summary())
