"""Keras models for the three training modes, each matching one streaming mode of the contract.

| mode       | input shape                     | recurrent layers            | streams as            |
|------------|---------------------------------|-----------------------------|-----------------------|
| `window`   | `(look_back, features)`         | last one returns one step   | window, zero state    |
| `stateful` | `batch_shape=(batch, look_back, features)`, `stateful=True` | same | window, state carried |
| `sequence` | `(None, features)`              | all return sequences        | one step per sample   |
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("window", "stateful", "sequence")
CELLS = ("lstm", "gru")


@dataclass
class ModelConfig:
    """The shape of the network; the defaults make a small model that trains in seconds."""

    mode: str = "window"     # window | stateful | sequence (see the table above)
    cell: str = "lstm"       # lstm | gru
    units: int = 32          # width of each recurrent layer (and of its state)
    layers: int = 1          # stacked recurrent layers
    dropout: float = 0.0     # Dropout after each recurrent layer while training
    dense: int = 0           # hidden relu units in the head before the output (0: none)
    zero_head: bool = False  # the output layer starts at zero (a residual model starts naive)


def build_model(cfg: ModelConfig, look_back: int, n_features: int, n_targets: int,
                batch_size: int | None = None):
    """A compiled-ready Keras model for ``cfg``; ``batch_size`` is needed for ``stateful`` only."""
    import keras

    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    cell = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[cfg.cell]
    if cfg.mode == "stateful":
        inputs = keras.Input(batch_shape=(batch_size, look_back, n_features), name="x")
    elif cfg.mode == "window":
        inputs = keras.Input(shape=(look_back, n_features), name="x")
    else:
        inputs = keras.Input(shape=(None, n_features), name="x")

    h = inputs
    for i in range(cfg.layers):
        last = i == cfg.layers - 1
        h = cell(cfg.units, return_sequences=cfg.mode == "sequence" or not last,
                 stateful=cfg.mode == "stateful", name=f"{cfg.cell}_{i}")(h)
        if cfg.dropout > 0:
            h = keras.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(h)
    if cfg.dense > 0:
        h = keras.layers.Dense(cfg.dense, activation="relu", name="hidden")(h)
    # Dense on a 3-D input applies to every timestep: the per-step head of a sequence model.
    init = "zeros" if cfg.zero_head else "glorot_uniform"
    outputs = keras.layers.Dense(n_targets, kernel_initializer=init, name="head")(h)
    return keras.Model(inputs, outputs, name=f"{cfg.mode}_{cfg.cell}")


def reset_states(model) -> None:
    """Zero the state of every stateful recurrent layer (Keras 3 has no Model.reset_states)."""
    for layer in model.layers:
        if getattr(layer, "stateful", False) and hasattr(layer, "reset_states"):
            layer.reset_states()
