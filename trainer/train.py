"""Fit a model on a sensor CSV and report it against two baselines.

The series is split by time: the first rows train, the last ``val_fraction`` validate, and
the scaler sees the training rows only. Validation is measured the way the model will
stream, in the target's own units:

- ``window``: every window whose target lies in the validation rows, from a zero state;
- ``stateful``: every window in order from the series' start, state carried, scored on the
  validation windows;
- ``sequence``: the whole series run once from a zero state, scored on the validation steps.

Next to the model stand the *mean* forecast (the training mean) and the *naive* forecast
(the last value seen), so a user sees whether the LSTM earned its place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .data import read_csv, select
from .errors import DataError
from .model import ModelConfig, build_model, reset_states
from .windows import Scaler, sequences, split_point, windows

SIDECAR_FORMAT = "lstm-edge.training/1"


@dataclass
class TrainConfig:
    """How to fit; the defaults suit an hourly sensor series of a few thousand rows."""

    look_back: int = 24          # timesteps per window (sequence mode: per training subsequence)
    horizon: int = 1             # predict the value this many rows ahead
    epochs: int = 50             # at most; early stopping usually ends sooner
    batch_size: int = 32         # stateful mode: parallel blocks of the series
    patience: int = 5            # epochs without a better validation loss before stopping
    learning_rate: float = 3e-3  # Adam
    val_fraction: float = 0.2    # the last fifth of the rows validates
    missing: str = "error"       # error | drop | ffill | interpolate
    scaling: str = "robust"      # robust (median/IQR) | standard (mean/std)
    loss: str = "huber"          # huber | mse; huber keeps sensor glitches from ruling the fit
    seed: int | None = 0         # repeatable runs; None for a fresh draw
    verbose: int = 2             # Keras progress: 0 silent, 1 bars, 2 one line per epoch
    model: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class TrainResult:
    model_path: Path
    sidecar_path: Path
    sidecar: dict

    def report(self) -> str:
        """Validation errors of the model and both baselines, in the target's units."""
        m = self.sidecar["metrics"]
        lines = [f"validation: {m['validation_steps']} predictions of "
                 f"{', '.join(self.sidecar['targets'])}, {self.sidecar['horizon']} step(s) "
                 f"ahead ({self.sidecar['mode']} mode)",
                 f"  {'':<8}{'MAE':>12}{'RMSE':>12}"]
        for name in ("model", "naive", "mean"):
            mae, rmse = np.mean(m[name]["mae"]), np.mean(m[name]["rmse"])
            lines.append(f"  {name:<8}{mae:>12.4g}{rmse:>12.4g}")
        best = min(("model", "naive", "mean"), key=lambda k: np.mean(m[k]["mae"]))
        lines.append(f"  best by MAE: {best}")
        lines.append(f"saved {self.model_path} and {self.sidecar_path}")
        return "\n".join(lines)


def sidecar_path(model_path: str | Path) -> Path:
    """Where the trainer keeps what the exporter needs: ``NAME.lstm-edge.json``."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".lstm-edge.json")


def _errors(pred: np.ndarray, truth: np.ndarray) -> dict:
    diff = pred - truth                                # (steps, targets)
    return {"mae": np.abs(diff).mean(axis=0).tolist(),
            "rmse": np.sqrt((diff ** 2).mean(axis=0)).tolist()}


def _seed(seed: int | None) -> None:
    if seed is None:
        return
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def _fit(model, train, val, cfg: TrainConfig) -> None:
    import keras

    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience,
                                         restore_best_weights=True)
    model.fit(*train, validation_data=val, epochs=cfg.epochs, batch_size=cfg.batch_size,
              shuffle=True, callbacks=[stop], verbose=cfg.verbose)


def _split_windows(xs, ys, split, cfg: TrainConfig):
    """Windows of the whole series, and which ones validate: the target row decides."""
    inputs, targets, last = windows(xs, ys, cfg.look_back, cfg.horizon)
    return inputs, targets, last, last + cfg.horizon >= split


def _fit_window(xs, ys, split, cfg: TrainConfig, n_targets):
    inputs, targets, last, is_val = _split_windows(xs, ys, split, cfg)
    model = build_model(cfg.model, cfg.look_back, xs.shape[1], n_targets)
    _compile(model, cfg)
    _fit(model, (inputs[~is_val], targets[~is_val]), (inputs[is_val], targets[is_val]), cfg)
    pred = model.predict(inputs[is_val], verbose=0)                  # (val windows, targets)
    return model, pred, last[is_val]


def _fit_sequence(xs, ys, split, cfg: TrainConfig, n_targets):
    # Stride 1, every start row: the most subsequences a series of this size can give.
    inputs, targets, _ = sequences(xs[:split], ys[:split], cfg.look_back, cfg.horizon, 1)
    # Validation runs the whole series from a zero state, as a stream would, and scores
    # only the steps whose target lies in the validation rows.
    steps = len(xs) - cfg.horizon
    whole = xs[None, :steps]                                         # (1, steps, features)
    truth = ys[None, cfg.horizon:]                                   # (1, steps, targets)
    weight = (np.arange(steps) + cfg.horizon >= split).astype(np.float32)[None]  # (1, steps)
    model = build_model(cfg.model, cfg.look_back, xs.shape[1], n_targets)
    _compile(model, cfg)
    _fit(model, (inputs, targets), (whole, truth, weight), cfg)
    pred = model.predict(whole, verbose=0)[0]                        # (steps, targets)
    val_steps = np.flatnonzero(weight[0])
    return model, pred[val_steps], val_steps


def _fit_stateful(xs, ys, split, cfg: TrainConfig, n_targets):
    """Keras ``stateful=True`` on sliding windows, done right.

    Row ``b`` of every batch continues block ``b`` of the training windows, so the state
    one window leaves is the state the next window of the same block starts from; batches
    are never shuffled, and the state is reset at each epoch. Validation runs a batch-1
    copy over every window from the start, state carried, as the runtime will.
    """
    inputs, targets, last, is_val = _split_windows(xs, ys, split, cfg)
    tr_in, tr_out = inputs[~is_val], targets[~is_val]
    blocks = max(1, min(cfg.batch_size, len(tr_in)))
    # Every block gets the same length; the last len % blocks training windows are left out.
    per_block = len(tr_in) // blocks
    order = (np.arange(blocks)[None, :] * per_block + np.arange(per_block)[:, None]).ravel()
    tr_in, tr_out = tr_in[order], tr_out[order]       # batch k = window k of every block

    model = build_model(cfg.model, cfg.look_back, xs.shape[1], n_targets, batch_size=blocks)
    _compile(model, cfg)
    probe = build_model(cfg.model, cfg.look_back, xs.shape[1], n_targets, batch_size=1)

    def validate():
        probe.set_weights(model.get_weights())
        reset_states(probe)
        return probe.predict(inputs, batch_size=1, verbose=0)       # (windows, targets)

    best, best_loss, waited = model.get_weights(), np.inf, 0
    for epoch in range(cfg.epochs):
        reset_states(model)
        history = model.fit(tr_in, tr_out, batch_size=blocks, epochs=1, shuffle=False,
                            verbose=0)
        val_loss = float(np.mean((validate()[is_val] - targets[is_val]) ** 2))
        if cfg.verbose:
            print(f"Epoch {epoch + 1}/{cfg.epochs} - loss: {history.history['loss'][-1]:.4f}"
                  f" - val_loss: {val_loss:.4f}", flush=True)
        if val_loss < best_loss:
            best, best_loss, waited = model.get_weights(), val_loss, 0
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    model.set_weights(best)
    reset_states(model)
    return model, validate()[is_val], last[is_val]


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
                        f"the data ({rows} rows)")
    for name in ("units", "layers"):
        if getattr(cfg.model, name) < 1:
            problems.append(f"--{name} must be at least 1, got {getattr(cfg.model, name)}")
    if not 0.0 <= cfg.model.dropout < 1.0:
        problems.append(f"--dropout must be in [0, 1), got {cfg.model.dropout}")
    if problems:
        raise DataError("; ".join(problems))


def train(csv: str | Path, target: str | list[str], features: str | list[str] | None = None,
          output: str | Path = "model.keras", cfg: TrainConfig | None = None) -> TrainResult:
    """Fit a model on ``csv`` and save ``output`` with its sidecar for the exporter."""
    cfg = cfg or TrainConfig()
    sel = select(read_csv(csv), target, features, cfg.missing, source=str(csv))
    check_config(cfg, len(sel.x))
    split = split_point(len(sel.x), cfg.val_fraction, cfg.look_back + cfg.horizon)
    scaler = Scaler.fit(sel.x[:split], sel.y[:split], cfg.scaling)  # training rows only
    _seed(cfg.seed)
    model, pred, last = FIT[cfg.model.mode](scaler.x(sel.x), scaler.y(sel.y), split, cfg,
                                            len(sel.targets))
    truth = sel.y[last + cfg.horizon]                     # (val steps, targets), raw units
    metrics = {
        "validation_steps": int(len(last)),
        "model": _errors(scaler.y_inverse(pred), truth),
        "naive": _errors(sel.y[last], truth),             # the last value seen
        "mean": _errors(np.broadcast_to(sel.y[:split].mean(axis=0), truth.shape), truth),
    }

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model.save(output)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "features": list(sel.features),
        "targets": list(sel.targets),
        "scaler": scaler.to_json(),
        "mode": cfg.model.mode,
        "look_back": cfg.look_back,
        "horizon": cfg.horizon,
        "metrics": metrics,
        "data": {"file": Path(csv).name, "rows": int(len(sel.x)), "split": int(split)},
        "config": asdict(cfg),
    }
    side = sidecar_path(output)
    side.write_text(json.dumps(sidecar, indent=2) + "\n")
    return TrainResult(output, side, sidecar)
