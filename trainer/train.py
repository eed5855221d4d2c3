"""Fit a model on a sensor CSV and report it, honestly, against the forecasts it must beat.

The series is split by time into three parts: the first rows train, the next
``val_fraction`` drive early stopping, and the last ``test_fraction`` — the *test tail* —
are touched by nothing but the final report. The scalers see the training rows only. Every
figure is measured the way the model will stream, in the target's own units:

- ``window``: every window, from a zero state;
- ``stateful``: every window in order from the series' start, state carried;
- ``sequence``: the whole series run once from a zero state.

The headline is the *skill*: the model's MAE over the naive forecast's ("repeat the last
value") on the same test rows; below 1 the model earns its place. Beside it stand the
seasonal naive forecast (a season ago, when the season is known or guessed from the time
column), the training mean, MASE, and the statistical anchors (:mod:`trainer.anchors`). By
default the network predicts the change from the last reading, or from the seasonal random
walk where that wins on the validation rows (see :mod:`trainer.forecast`), so an untrained
model starts as one of those forecasts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from runtime.errors import counted

from . import anchors
from .calibrate import coverage, intervals, target_columns
from .data import check_time, check_training_target, growing_features, read_csv, select
from .errors import DataError
from .ensemble import merge
from .model import ModelConfig, build_model, reset_states
from .progress import EVERY, Progress, size
from .quiet import is_terminal
from .forecast import (TARGET_KINDS, Framing, beaten_by, best_by_mae, candidates, caution,
                       differences, guess_season, score)
from .windows import Scaler, sequences, split_points, windows

SIDECAR_FORMAT = "lstm-edge.training/1"
MAX_MEMBERS = 3   # most networks a deep ensemble averages (TrainConfig.members None)
MIN_VALIDATION = 2  # validation predictions: the intervals' scale is chosen on two halves
TRAIN_SAMPLE = 256  # training rows the sidecar keeps the time and targets of (_parts)
MODEL_SUFFIXES = (".keras", ".h5")   # what Keras's model.save writes


@dataclass
class TrainConfig:
    """How to fit; the defaults suit an hourly sensor series of a few thousand rows."""

    look_back: int = 24          # timesteps per window (sequence mode: per training subsequence)
    horizon: int = 1             # predict the value this many rows ahead
    epochs: int = 50             # at most; early stopping usually ends sooner
    batch_size: int = 32         # stateful mode: parallel blocks of the series
    patience: int = 5            # epochs without a better validation loss before stopping
    learning_rate: float = 3e-3  # Adam
    val_fraction: float = 0.15   # the rows before the test tail that drive early stopping
    test_fraction: float = 0.15  # the last rows: never trained on, never early-stopped on
    missing: str = "error"       # error | drop | ffill | interpolate
    scaling: str = "robust"      # robust (median/IQR) | standard (mean/std)
    loss: str = "huber"          # huber | mse; huber keeps sensor glitches from ruling the fit
    target_kind: str = "auto"    # residual | seasonal (the change from a start the graph adds
    #                              back) | level; auto: seasonal where it wins on validation
    difference: bool = True      # feed x[t] - x[t-1], not x[t]: beats naive 6/6 vs 4/6 (docs/forecasting.md)
    season: int | None = None    # readings per season for the seasonal naive; None: guess
    linear: bool | None = None   # linear path on the changes beside the network (sequence
    #                              mode): None where it wins on validation (docs/forecasting.md)
    members: int | None = 1      # deep ensemble: networks of different seeds averaged, merged
    #                              into one (trainer/ensemble.py); None: 1 to MAX_MEMBERS, the
    #                              validation rows choose
    seed: int | None = 0         # repeatable runs; None for a fresh draw (member k: seed + 1000 k)
    anchor_budget: float = 0.0   # seconds for ETS/Theta/ARIMA on the test tail (0: none; lstm-train: 60)
    verbose: int = 2             # progress on stderr: 0 none, 1 phases and Keras's bars,
    #                              2 phases and a line per epoch (trainer/progress.py)
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class TrainResult:
    model_path: Path
    sidecar_path: Path
    sidecar: dict
    warnings: list = field(default_factory=list)   # lines for stderr: columns, fallbacks
    plot_path: Path | None = None
    plot_error: str | None = None   # --plot failed after training (the model is saved)

    def report(self) -> str:
        """The test tail's figures, in the target's units, skill first; with several
        targets one table per target, each in its own units with its own verdict."""
        side, m = self.sidecar, self.sidecar["metrics"]
        test, season = m["test"], m.get("season")
        targets = side["targets"]
        kind = side["forecast"]["target_kind"] + (" target, differenced inputs"
                                                  if side["forecast"]["difference"] else " target")
        lines = [f"test tail: {test['steps']} predictions of {', '.join(targets)}, "
                 f"{side['horizon']} step(s) ahead ({side['mode']} mode, {kind}); "
                 f"{_where(side['data'], 'test')}, never trained or early-stopped on"]
        chosen = side["forecast"].get("target_note")
        if chosen and side["forecast"]["target_kind"] != "level":   # auto's choice, and why
            lines.append(f"  {chosen}")
        members = side["members"]
        if members["count"] > 1 or members["note"]:
            lines.append("  " + (members["note"] or f"deep ensemble: the mean of "
                                                   f"{members['count']} networks"))
        several = len(targets) > 1
        for k, name in enumerate(targets):
            lines += _table(test, season, k, name if several else "")
        if several and test.get("anchors_note"):
            lines.append("  " + test["anchors_note"])
        val = m["validation"]
        figures = [f"model MAE {val['model']['mae'][k]:.4g}, naive {val['naive']['mae'][k]:.4g}, "
                   f"skill {val['skill'][k]:.3f}" for k in range(len(targets))]
        if several:
            figures = [f"{name} {text}" for name, text in zip(targets, figures)]
        where = _where(side["data"], "validation")
        lines.append(f"validation: {val['steps']} predictions"
                     + (f" ({where})" if where else "") + ", used for early stopping: "
                     + "; ".join(figures))
        lines.extend(interval_lines(test.get("intervals"), targets if several else None))
        if side["data"].get("time_note"):
            lines.append("note: " + side["data"]["time_note"])
        note = caution(test, season)
        if note:
            lines.append(note)
        saved = f"saved {self.model_path} and {self.sidecar_path}"
        lines.append(saved + (f"; plot {self.plot_path}" if self.plot_path else "")
                     + ("; the plot was not written (see the error below)"
                        if self.plot_error else ""))
        return "\n".join(lines)


def _where(data: dict, part: str) -> str:
    """A part's target rows in the user's words: the CSV's line numbers (as the notes
    give them), and its first and last time where there is a time column."""
    parts = data.get("parts")
    if not parts:   # a sidecar written before the parts were recorded: 0-based data rows
        return f"rows {data['test']}..{data['rows'] - 1}" if part == "test" else ""
    where = parts[part]
    text = f"file lines {where['lines'][0]}..{where['lines'][1]}"
    if where.get("times"):
        text += f" ({where['times'][0]} to {where['times'][1]})"
    return text


def _parts(sel, split: int, test: int) -> dict:
    """Each part's first and last file line (and time), for the report; the training part
    also keeps ``sample``: the time and targets of up to :data:`TRAIN_SAMPLE` of its rows,
    evenly spaced, by which ``lstm-export --calibrate`` knows a training row given back to
    it (:func:`trainer.calibrate.refuse_training_rows`)."""
    out = {}
    for part, (first, last) in {"train": (0, split - 1), "validation": (split, test - 1),
                                "test": (test, len(sel.x) - 1)}.items():
        out[part] = {"lines": [int(sel.lines[first]), int(sel.lines[last])]}
        if sel.time is not None:
            out[part]["times"] = [str(sel.time[first]), str(sel.time[last])]
    if sel.time is not None:
        rows = np.unique(np.linspace(0, split - 1, min(split, TRAIN_SAMPLE)).astype(int))
        out["train"]["sample"] = [[str(sel.time[i]).strip(), sel.y[i].tolist()] for i in rows]
    return out


def _table(test: dict, season: int | None, k: int, name: str = "") -> list[str]:
    """Target ``k``'s rows of the report: the forecasts' MAE and RMSE in its units, the
    skill, and a line in words for every forecast in the table that beats the model.

    ``name`` heads the table where the report has several targets.
    """
    lines = [f"  {name:<21}{'MAE':>11}{'RMSE':>11}{'÷ naive MAE':>13}"]
    naive = test["naive"]["mae"][k]
    for row in ("model", "naive", "seasonal_naive", "mean"):
        if row not in test:
            continue
        mae, rmse = test[row]["mae"][k], test[row]["rmse"][k]
        ratio = f"{mae / naive:>13.3f}" if naive > 0 else f"{'-':>13}"
        lines.append(f"  {_label(row, season):<21}{mae:>11.4g}{rmse:>11.4g}{ratio}")
    lines += anchors.lines(test, naive, k, note=not name)
    skill = test["skill"][k]
    lines.append(f"  skill {skill:.3f} = model MAE / naive MAE: the model {verdict(skill)} "
                 f"repeating the last value")
    extra = []
    if "seasonal_skill" in test:
        extra.append(f"vs seasonal naive {test['seasonal_skill'][k]:.3f}")
    extra.append(f"MASE {test['mase'][k]:.3f} (scale: in-sample "
                 f"{'seasonal ' if 'seasonal_naive' in test else ''}naive)")
    lines.append("  " + "; ".join(extra))
    lines.append(f"  best by MAE: {best_by_mae(test, k).replace('_', ' ')}")
    beaten = beaten_by(test, k)
    if beaten:
        names = " or ".join(_label(n, season) for n in beaten)
        ratios = " and ".join(f"{r:.3f} x" for r in beaten.values())
        whose, use, it = (("that forecast's", "that forecast", "it") if len(beaten) == 1
                          else ("theirs", "the best of them", "them"))
        lines.append(f"  the model does not beat {names}: its MAE is {ratios} {whose} on this "
                     f"test tail — use {use}, or improve the model until it beats {it}")
    return lines


def verdict(skill: float) -> str:
    """The skill in words, at the precision it is printed: a skill that rounds to 1.000
    is a tie, not a win or a loss (docs/forecasting.md, "Reading the verdict")."""
    if f"{skill:.3f}" == "1.000":
        return "ties (equal MAE at 3 decimals) with"
    return "beats" if skill < 1 else "does not beat"


def _label(row: str, season: int | None) -> str:
    """A forecast's name in the report: ``seasonal_naive`` -> ``seasonal naive (24)``."""
    return row.replace("_", " ") + (f" ({season})" if row == "seasonal_naive" else "")


def interval_lines(figures: list | None, targets: list | None = None) -> list[str]:
    """The test tail's coverage and mean width of each calibrated interval level; with
    ``targets`` one line per target (widths in its own units)."""
    if not figures:
        return []
    if targets is None:
        cells = [_interval_cell(f['level'], np.mean(f['coverage']), np.mean(f['width']))
                 for f in figures]
        return ["  intervals (calibrated on validation), test coverage: " + ", ".join(cells)]
    return [f"  intervals of {name} (calibrated on validation), test coverage: "
            + ", ".join(_interval_cell(f['level'], f['coverage'][k], f['width'][k])
                        for f in figures)
            for k, name in enumerate(targets)]


def _interval_cell(level: float, covered: float, width: float) -> str:
    """``90% 88.0% (width 2.1, half-width 1.05)``: a level, the share of the test tail
    inside, and the interval's mean width and half-width there, in the words lstm-export
    uses for the same figures (trainer.calibrate.describe)."""
    return f"{level:.0%} {covered:.1%} (width {width:.4g}, half-width {width / 2:.4g})"


def sidecar_path(model_path: str | Path) -> Path:
    """Where the trainer keeps what the exporter needs: ``NAME.lstm-edge.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".lstm-edge.json")


def _seed(seed: int | None) -> None:
    if seed is None:
        return
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _fit(model, train, val, cfg: TrainConfig, progress: Progress, what: str) -> None:
    import keras

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                         restore_best_weights=True)
    batches = -(-len(train[0]) // cfg.batch_size)
    progress.say(f"fitting on {len(train[0]):,} {what}, {batches:,} batches of "
                 f"{cfg.batch_size} per epoch, up to {counted(cfg.epochs, 'epoch')} (early "
                 f"stopping after {cfg.patience} without a better validation loss)")
    checks = -(-len(val[0]) // cfg.batch_size)
    lines = ([progress.keras(cfg.epochs, batches, checks)] if cfg.verbose == 2
             and progress.enabled else [])
    model.fit(*train, validation_data=val, epochs=cfg.epochs, batch_size=cfg.batch_size,
              shuffle=True, callbacks=[stop, *lines], verbose=1 if cfg.verbose == 1 else 0)


@dataclass
class _Series:
    """The network's view of the data: inputs, targets and where the parts begin."""

    xs: np.ndarray            # (rows, features) scaled (and maybe differenced) inputs
    ys: np.ndarray            # (rows, targets) scaled targets, row = the target's row
    split: int                # first validation row
    test: int                 # first test row
    first: np.ndarray | None  # (features,) what a window's first step reads (differenced)


def _split_windows(s: _Series, cfg: TrainConfig):
    """Windows of the whole series and which part each belongs to: the target row decides.

    The parts are slices (the windows are in time order), so a part is a view of the
    windows, never a copy. The windows themselves are a view of the series, except with
    differenced inputs: a window's first step has no reading before it inside the window
    and reads "no change", as the exported graph does, so they are written out once, as
    float32.
    """
    inputs, targets, last = windows(s.xs, s.ys, cfg.look_back, cfg.horizon)
    if s.first is not None:
        inputs = inputs.copy()                          # (windows, look_back, features)
        inputs[:, 0, :] = s.first
    target = last + cfg.horizon
    train, test = np.searchsorted(target, [s.split, s.test])
    return inputs, targets, last, slice(0, train), slice(train, test)


def _fit_window(s: _Series, cfg: TrainConfig, n_targets, progress: Progress):
    inputs, targets, last, is_train, is_val = _split_windows(s, cfg)
    model = build_model(cfg.model, cfg.look_back, s.xs.shape[1], n_targets)
    _compile(model, cfg)
    _fit(model, (inputs[is_train], targets[is_train]), (inputs[is_val], targets[is_val]), cfg,
         progress, "windows")
    progress.say(f"predicting all {len(inputs):,} windows")
    pred = progress.predict(model, inputs, "predicting")             # (windows, targets)
    return model, pred, last


def _fit_sequence(s: _Series, cfg: TrainConfig, n_targets, progress: Progress):
    # Stride 1, every start row: the most subsequences a series of this size can give.
    inputs, targets, _ = sequences(s.xs[:s.split], s.ys[:s.split], cfg.look_back,
                                   cfg.horizon, 1)
    # Validation runs the whole series from a zero state, as a stream would, and scores
    # only the steps whose target lies in the validation rows (not the test tail).
    steps = len(s.xs) - cfg.horizon
    whole = s.xs[None, :steps]                                       # (1, steps, features)
    truth = s.ys[None, cfg.horizon:]                                 # (1, steps, targets)
    target = np.arange(steps) + cfg.horizon
    weight = ((target >= s.split) & (target < s.test)).astype(np.float32)[None]  # (1, steps)
    model = build_model(cfg.model, cfg.look_back, s.xs.shape[1], n_targets)
    _compile(model, cfg)
    _fit(model, (inputs, targets), (whole, truth, weight), cfg, progress, "subsequences")
    progress.say(f"predicting the whole series, {steps:,} steps")
    pred = model.predict(whole, verbose=0)[0]                        # (steps, targets)
    return model, pred, np.arange(steps)


def _fit_stateful(s: _Series, cfg: TrainConfig, n_targets, progress: Progress):
    """Keras ``stateful=True`` on sliding windows, done right.

    Row ``b`` of every batch continues block ``b`` of the training windows, so the state
    one window leaves is the state the next window of the same block starts from; batches
    are never shuffled, and the state is reset at each epoch. Validation runs a batch-1
    copy over every window from the start, state carried, as the runtime will.
    """
    inputs, targets, last, is_train, is_val = _split_windows(s, cfg)
    tr_in, tr_out = inputs[is_train], targets[is_train]
    n_features = s.xs.shape[1]
    blocks = max(1, min(cfg.batch_size, len(tr_in)))
    # Every block gets the same length; the last len % blocks training windows are left out.
    per_block = len(tr_in) // blocks
    order = (np.arange(blocks)[None, :] * per_block + np.arange(per_block)[:, None]).ravel()
    tr_in, tr_out = tr_in[order], tr_out[order]       # batch k = window k of every block

    model = build_model(cfg.model, cfg.look_back, n_features, n_targets, batch_size=blocks)
    _compile(model, cfg)
    probe = build_model(cfg.model, cfg.look_back, n_features, n_targets, batch_size=1)

    def validate():
        probe.set_weights(model.get_weights())
        reset_states(probe)
        return probe.predict(inputs, batch_size=1, verbose=0)       # (windows, targets)

    progress.say(f"fitting on {len(tr_in):,} windows in {blocks} blocks carrying state, "
                 f"up to {counted(cfg.epochs, 'epoch')} (early stopping after {cfg.patience} "
                 f"without a better validation loss)")
    best, best_loss, waited = model.get_weights(), np.inf, 0
    for epoch in range(cfg.epochs):
        reset_states(model)
        began = progress.clock()
        history = model.fit(tr_in, tr_out, batch_size=blocks, epochs=1, shuffle=False,
                            verbose=0)
        val_loss = float(np.mean((validate()[is_val] - targets[is_val]) ** 2))
        progress.epoch(epoch, cfg.epochs, {"loss": history.history["loss"][-1],
                                           "val_loss": val_loss}, progress.clock() - began)
        if val_loss < best_loss:
            best, best_loss, waited = model.get_weights(), val_loss, 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    model.set_weights(best)
    reset_states(model)
    return model, validate(), last


def _compile(model, cfg: TrainConfig) -> None:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=cfg.loss)


FIT = {"window": _fit_window, "sequence": _fit_sequence, "stateful": _fit_stateful}


def check_config(cfg: TrainConfig, rows: int) -> None:
    """Refuse settings that cannot work, before TensorFlow is even imported."""
    problems = []
    if cfg.look_back < 1:
        problems.append(f"--look-back must be at least 1, got {cfg.look_back}")
    if cfg.horizon < 1:
        problems.append(f"--horizon must be at least 1 (1 predicts the next row), got {cfg.horizon}")
    if cfg.look_back + cfg.horizon > rows:
        problems.append(f"--look-back {cfg.look_back} + --horizon {cfg.horizon} is longer than "
                        f"the data ({rows} rows)" + _next_step(rows, cfg))
    for name in ("units", "layers"):
        if getattr(cfg.model, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(cfg.model, name)}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        problems.append(f"--dropout must be in [0, 1), got {cfg.model.dropout}")
    if cfg.target_kind not in TARGET_KINDS:
        problems.append(f"--target-kind must be one of {', '.join(TARGET_KINDS)}, "
                        f"got {cfg.target_kind!r}")
    if not 0.0 < cfg.test_fraction < 1.0:
        problems.append(f"--test-fraction must be between 0 and 1, got {cfg.test_fraction}")
    elif not 0.0 < cfg.val_fraction < 1.0 - cfg.test_fraction:
        problems.append(f"--val-fraction must be between 0 and 1 - --test-fraction "
                        f"({1.0 - cfg.test_fraction:g}), got {cfg.val_fraction}")
    if cfg.members is not None and cfg.members < 1:
        problems.append(f"--members must be at least 1 (or auto), got {cfg.members}")
    if cfg.season is not None and cfg.season < 1:
        problems.append(f"--season must be at least 1 (readings per season), got {cfg.season}")
    if problems:
        raise DataError("; ".join(problems))


def check_output(output: str | Path) -> None:
    """Refuse an ``-o`` Keras cannot save to, before anything is trained."""
    output = Path(output)
    if output.suffix.lower() in MODEL_SUFFIXES:
        return
    keras_file = output.with_suffix(".keras") if output.suffix else Path(f"{output}.keras")
    onnx = output if output.suffix.lower() == ".onnx" else keras_file.with_suffix(".onnx")
    found = f"ends in {output.suffix!r}" if output.suffix else "has no extension"
    raise DataError(f"-o {output}: lstm-train saves a Keras model, named .keras or .h5, and this "
                    f"{found}; save it as -o {keras_file}, then export it for the runtime with "
                    f"lstm-export {keras_file} -o {onnx}")


PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")   # what --plot draws (matplotlib)


def check_plot(plot: str | Path | None) -> None:
    """Refuse a ``--plot`` that cannot be drawn or written, before anything is trained:
    an unknown picture format, or a folder (the nearest one that exists) that takes no file.

    A probe file is created and removed there: permission bits alone do not tell (root may
    write anywhere but /proc, a read-only mount, a full disk).
    """
    if plot is None:
        return
    plot = Path(plot)
    if plot.suffix.lower() not in PLOT_SUFFIXES:
        raise DataError(f"--plot {plot}: expected a picture named {', '.join(PLOT_SUFFIXES)}, "
                        f"and this {'ends in ' + repr(plot.suffix) if plot.suffix else 'has no extension'}"
                        f"; name it like {plot.with_suffix('.png')}")
    folder = plot.parent.resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        import tempfile

        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lstm-train-probe-"):
            pass
    except OSError as exc:
        raise DataError(f"--plot {plot}: the plot could not be written in {folder} "
                        f"({exc.strerror or exc}); give a path in a folder you can write "
                        f"to") from None


def _window(cfg: TrainConfig, look_back: int) -> int:
    """Readings per window: a differenced window reads one more than its ``look_back``."""
    return look_back + (1 if cfg.difference and cfg.model.mode != "sequence" else 0)


def _fits(rows: int, cfg: TrainConfig, look_back: int) -> bool:
    """Whether ``rows`` rows hold a training window of ``look_back`` and its target, and
    enough validation predictions, at ``cfg``'s fractions."""
    try:
        split, test = split_points(rows, cfg.val_fraction, cfg.test_fraction, 0)
    except DataError:
        return False
    return split >= _window(cfg, look_back) + cfg.horizon and test - split >= MIN_VALIDATION


def _next_step(rows: int, cfg: TrainConfig) -> str:
    """What to do about a series of ``rows`` too short for ``cfg``: a shorter look-back
    that fits, and the rows that the asked one needs ("" where neither can be told)."""
    if cfg.look_back < 1 or cfg.horizon < 1:
        return ""
    shorter = next((lb for lb in range(cfg.look_back - 1, 0, -1) if _fits(rows, cfg, lb)), None)
    most = 100 * (cfg.look_back + cfg.horizon) + 1000
    need = next((r for r in range(rows + 1, most) if _fits(r, cfg, cfg.look_back)), None)
    steps = []
    if shorter is not None:
        steps.append(f"use --look-back {shorter} or less")
    if need is not None:
        steps.append(f"give at least {need} rows")
    return "; " + " or ".join(steps) if steps else ""


def check_rows(rows: int, cfg: TrainConfig) -> None:
    """Refuse a series too short for a training window or for the validation predictions
    (early stopping, and the intervals, which cut them into two halves), naming the way out."""
    if _fits(rows, cfg, cfg.look_back):
        return
    split, test = split_points(rows, cfg.val_fraction, cfg.test_fraction, 0)  # a part with no row
    window = _window(cfg, cfg.look_back)
    if split < window + cfg.horizon:
        found = (f"the series has {rows} rows; a training part of {split} rows cannot hold a "
                 f"window of {window} readings plus its target {cfg.horizon} row(s) later")
    else:
        found = (f"the validation rows ({split}..{test - 1} of {rows}) hold "
                 f"{counted(test - split, 'prediction')}; early stopping and the prediction intervals need at least "
                 f"{MIN_VALIDATION}")
    step = _next_step(rows, cfg) or "; give more rows"
    raise DataError(found + step + (" (or a larger --val-fraction)" if test - split
                                    < MIN_VALIDATION else ""))


BIG_FILE = 10e6            # bytes of CSV from which a run of minutes is told (_progress)
TENSORFLOW_BYTES = 0.8e9   # what TensorFlow, Keras and the model hold before any data
ROW_BYTES = 200            # per CSV row: its time text, numbers and series (float64 and 32)
KERAS_COPIES = 2           # what Keras holds of the arrays fit reads (a tensor, the dataset)


def expect(rows: int, split: int, features: int, window: int, cfg: TrainConfig,
           copied: bool) -> str:
    """The up-front line: how many samples, the memory they will take, and when the time
    per epoch will be known (it depends on the machine, so it is measured, not guessed).

    The windows are a view of the series unless ``copied`` (differenced inputs); fit reads
    slices of them, which Keras copies, and the predictions run in chunks. Sequence mode's
    subsequences are views too; stateful mode reorders the training windows into its
    blocks (one more copy). Measured with 3 features and a look-back of 24: a peak of 1.29
    GB at 500,000 rows (1.30 foreseen), 2.82 GB at 2,000,000 (2.82 foreseen).
    """
    mode = cfg.model.mode
    if mode == "sequence":
        count, what = split - window - cfg.horizon + 1, "training subsequences"
        held = KERAS_COPIES
    else:
        count, what = rows - window - cfg.horizon + 1, "windows"
        fitted = 1 - cfg.test_fraction                 # the training and validation parts
        held = copied + fitted * (KERAS_COPIES + (mode == "stateful"))
    data = count * window * features * 4                             # float32
    peak = TENSORFLOW_BYTES + held * data + rows * ROW_BYTES
    return (f"{count:,} {what} of {window} readings x {counted(features, 'feature')} "
            f"({size(data)} as float32): expect a peak of about {size(peak)} of memory, "
            f"TensorFlow included; the time an epoch takes is told "
            + (f"within its first {EVERY:g} s" if mode != "stateful" else "as it ends"))


def check_targets(sel, source: str) -> None:
    """Refuse a target that never changes: there is nothing to forecast."""
    for k, name in enumerate(sel.targets):
        if np.ptp(sel.y[:, k]) == 0:
            raise DataError(f"{source}: the target {name!r} is {sel.y[0, k]:g} on every row: "
                            f"there is nothing to forecast; expected a column that changes — "
                            f"name another with --target")


def _progress(csv: str | Path, cfg: TrainConfig) -> Progress:
    """Progress lines on stderr where someone waits: a terminal, or a file of at least
    :data:`BIG_FILE` bytes (a run of minutes, whose log would otherwise stay empty); never
    with ``verbose`` 0 (``--quiet``). A small file's clean run leaves stderr empty, and its
    refusal is the one line there."""
    big = Path(csv).stat().st_size >= BIG_FILE
    return Progress(cfg.verbose > 0 and (big or is_terminal()))


def check_data(csv: str | Path, target, features, cfg: TrainConfig):
    """Read ``csv`` and make every refusal its rows call for, before TensorFlow is needed.

    Returns (table, selection, notes, time note); ``lstm-train`` calls it before it loads
    TensorFlow, so that a bad CSV is told in a fraction of a second, and hands the result
    to :func:`train`.
    """
    progress = _progress(csv, cfg)
    progress.say(f"reading {csv} ({size(Path(csv).stat().st_size)})")
    table = read_csv(csv)
    progress.say(f"checking {len(table):,} rows")
    sel = select(table, target, features, cfg.missing, source=str(csv), exported=False)
    check_targets(sel, str(csv))
    notes, time_note = check_time(sel, table.time_column, str(csv))
    check_config(cfg, len(sel.x))
    check_rows(len(sel.x), cfg)
    split, _ = split_points(len(sel.x), cfg.val_fraction, cfg.test_fraction, 0)
    check_training_target(sel, split, str(csv))      # the rows the network learns from
    return table, sel, notes, time_note


def train(csv: str | Path, target: str | list[str], features: str | list[str] | None = None,
          output: str | Path = "model.keras", cfg: TrainConfig | None = None,
          plot: str | Path | None = None, checked: tuple | None = None) -> TrainResult:
    """Fit a model on ``csv`` and save ``output`` with its sidecar for the exporter.

    ``plot``: a PNG of actual vs predicted (and naive) over the test tail. ``checked``:
    what :func:`check_data` returned for these arguments, where the caller has it (the
    CSV is then not read a second time).
    """
    cfg = cfg or TrainConfig()
    progress = _progress(csv, cfg)
    check_output(output)
    check_plot(plot)
    table, sel, notes, time_note = checked or check_data(csv, target, features, cfg)
    # A differenced window reads one reading more: look_back differences need look_back + 1.
    window = _window(cfg, cfg.look_back)
    split, test = split_points(len(sel.x), cfg.val_fraction, cfg.test_fraction,
                               window + cfg.horizon)
    warnings = notes + growing_features(sel, split)
    season, found = ((cfg.season, "given") if cfg.season else guess_season(sel.time))
    framing = Framing.choose(cfg.target_kind, sel.features, sel.targets, sel.y, split, test,
                             cfg.horizon, cfg.difference, season, cfg.model.mode, sel.x,
                             cfg.linear)
    if framing.note and framing.kind == "level":   # a fallback: the user asked otherwise
        warnings.append("note: " + framing.note)
    series, scaler = _network_series(sel, framing, split, test, cfg)
    # A residual model's head starts at zero: untrained, it is the naive forecast.
    run = replace(cfg, look_back=window, model=replace(cfg.model, zero_head=framing.residual))
    progress.say(expect(len(sel.x), split, series.xs.shape[1], window, cfg,
                        series.first is not None))
    models, preds = [], []
    for k in range(cfg.members or MAX_MEMBERS):
        if (cfg.members or MAX_MEMBERS) > 1:
            progress.say(f"member {k + 1} of {cfg.members or f'up to {MAX_MEMBERS}'} "
                         f"(seed {'fresh' if cfg.seed is None else cfg.seed + 1000 * k})")
        else:
            progress.say("loading TensorFlow and building the model")
        _seed(None if cfg.seed is None else cfg.seed + 1000 * k)
        model, pred, last = FIT[cfg.model.mode](series, run, len(sel.targets), progress)
        if framing.residual:
            pred = pred * framing.delta_scale + framing.start(sel.y, last, cfg.horizon, sel.x)
        else:
            pred = scaler.y_inverse(pred)
        models.append(model)
        preds.append(pred)                                           # (steps, targets)
    target_row = last + cfg.horizon
    parts = {"validation": (target_row >= split) & (target_row < test),
             "test": target_row >= test}
    members, note = _members(preds, sel.y[target_row], parts["validation"], cfg.members)
    pred = np.mean(preds[:members], axis=0)
    model = merge(models[:members], run.model, run.look_back, series.xs.shape[1],
                  len(sel.targets), models[0].inputs[0].shape[0]
                  if cfg.model.mode == "stateful" else None)
    progress.say("scoring the model against the naive, seasonal naive and mean forecasts")
    metrics = {name: score(sel.y, pred[rows], last[rows], cfg.horizon, sel.y[:split], season)
               for name, rows in parts.items()}
    if cfg.anchor_budget > 0:
        progress.say(f"statistical anchors (AutoETS, AutoTheta, AutoARIMA) on "
                     f"{int(parts['test'].sum()):,} test predictions: up to "
                     f"{cfg.anchor_budget:g} s (--anchor-budget)")
    metrics["test"].update(anchors.measure(
        sel.y, last[parts["test"]], cfg.horizon, season, cfg.anchor_budget,
        tell=lambda spent: progress.say(f"statistical anchors: {spent:.0f} s of the "
                                        f"{cfg.anchor_budget:g} s budget")))
    metrics.update(season=season, season_source=found)
    if season and "seasonal_naive" not in metrics["test"]:
        named = f"--season {season}" if found == "given" else f"the season ({found} {season})"
        warnings.append(f"note: {named} reaches back before the first row from some of the "
                        f"test tail's predictions, so the seasonal-naive row (the value one "
                        f"season before) is left out of the report; give a --season of at "
                        f"most {int(last[parts['test']][0]) + cfg.horizon}, or more rows")
    # Calibrated on the validation rows; the test tail only measures the coverage.
    val, tail = parts["validation"], parts["test"]
    pred = pred.astype(np.float64)
    progress.say(f"calibrating the intervals on {int(val.sum()):,} validation predictions")
    calibration = intervals(sel.y, pred[val], last[val], cfg.horizon,
                            target_columns(sel.features, sel.targets), "validation",
                            sel.y[:split])
    metrics["test"]["intervals"] = coverage(calibration, sel.y, pred[tail], last[tail],
                                            cfg.horizon)

    output = Path(output)
    progress.say(f"saving {output}")
    output.parent.mkdir(parents=True, exist_ok=True)
    model.save(output)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "features": list(sel.features),
        "targets": list(sel.targets),
        "scaler": scaler.to_json(),
        "mode": cfg.model.mode,
        "look_back": window,
        "horizon": cfg.horizon,
        "forecast": framing.to_json(),
        "members": {"count": members, "trained": len(models), "note": note},
        "intervals": calibration,
        "metrics": metrics,
        "data": {"file": Path(csv).name, "rows": int(len(sel.x)), "split": int(split),
                 "test": int(test), "time_column": table.time_column,
                 "parts": _parts(sel, split, test),
                 **({"time_note": time_note} if time_note else {})},
        "config": asdict(cfg),
    }
    side = sidecar_path(output)
    side.write_text(json.dumps(sidecar, indent=2) + "\n")
    plot_path, plot_error = None, None
    if plot is not None:
        from .plot import band_90, plot_test

        rows = parts["test"]
        try:
            plot_path = plot_test(plot, sel, pred[rows], last[rows], cfg.horizon,
                                  band=band_90(calibration, sel.y, last[rows]),
                                  title=f"{Path(csv).name}: test tail, {cfg.horizon} "
                                        f"step(s) ahead", best=_best_baseline(metrics["test"], season))
        except DataError as exc:   # the model is saved: its report still stands
            plot_error = str(exc)
    return TrainResult(output, side, sidecar, warnings, plot_path, plot_error)


def _best_baseline(test: dict, season: int | None) -> list:
    """Per target, the best forecast other than the model and naive, where its MAE on the
    test tail is below naive's: ``(name, MAE)`` for the plot's legend, else None."""
    rows = {n: f for n, f in candidates(test).items() if n not in ("model", "naive")}
    out = []
    for k in range(len(test["naive"]["mae"])):
        name = min(rows, key=lambda n: rows[n]["mae"][k], default=None)
        good = name is not None and rows[name]["mae"][k] < test["naive"]["mae"][k]
        out.append((_label(name, season), rows[name]["mae"][k]) if good else None)
    return out


def _members(preds: list, truth: np.ndarray, val: np.ndarray, asked: int | None):
    """How many members to average (the first k), and why: ``asked``, or where None the k
    whose mean has the lowest MAE on the validation rows (never the test tail)."""
    if asked:
        return asked, ""
    maes = [np.abs(np.mean(preds[:k], axis=0)[val] - truth[val]).mean()
            for k in range(1, len(preds) + 1)]
    k = int(np.argmin(maes)) + 1
    return k, (f"deep ensemble: on the validation rows the mean of {k} of {len(preds)} "
               f"networks has {maes[k - 1] / maes[0]:.3f} x the MAE of one")


def _network_series(sel, framing: Framing, split: int, test: int, cfg: TrainConfig):
    """Scaled inputs and targets as the network sees them, and the scaler the graph bakes in.

    The scaler is fitted on the training rows only: on the readings, or on their
    differences; its ``y`` part is the change scale (centre 0) for a residual target.
    """
    x = differences(sel.x) if framing.difference else sel.x        # (rows, features)
    scaler = Scaler.fit(x[1 if framing.difference else 0:split], sel.y[:split], cfg.scaling)
    if framing.residual:
        scaler = replace(scaler, y_mean=np.zeros_like(framing.delta_scale),
                         y_std=framing.delta_scale)
        ys = framing.target_series(sel.y, cfg.horizon, sel.x)
    else:
        ys = scaler.y(sel.y)
    first = scaler.x(np.zeros(sel.x.shape[1])) if framing.difference else None
    return _Series(scaler.x(x), ys, split, test, first), scaler
