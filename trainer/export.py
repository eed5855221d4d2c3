"""Export a Keras recurrent model to the streaming ONNX contract (docs/contract.md).

:func:`export` loads the model, emits the streaming graph from its weights
(:mod:`trainer.graph`), bakes in the trainer's normalisation, writes the contract's
metadata, checks the graph against Keras (:mod:`trainer.parity`) and writes the file
atomically; :func:`to_onnx` does the same without the check and without writing. A window
model the streaming emitter refuses (an autoencoder, an encoder-decoder, a Bidirectional
layer...) is converted whole over its window (:mod:`trainer.window_graph`).

The trainer saves ``NAME.lstm-edge.json`` next to ``NAME.keras``::

    {"format": "lstm-edge.training/1", "features": [...], "targets": [...],
     "scaler": {"x": {"mean": [...], "std": [...]}, "y": {...}},
     "mode": "window" | "stateful" | "sequence", "look_back": 24, "horizon": 1}

It is read when present; arguments override it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from runtime.contract import ModelInfo, streaming_mode
from runtime.io import replace_file
from . import calibrate, forecast_graph
from .errors import ExportError, ParityError
from .fold import fold
from .loading import KERAS_SUFFIXES, chain, load_model, one_output  # noqa: F401 - re-exported
from . import window_graph
from .notes import sequence_notes, shape_notes, state_slots as _state_slots, window_notes
from .train import sidecar_path
from .graph import (check_fused, check_layers, emit, emit_embedding, is_recurrent, lookup,
                    op_counts)

OPSETS = range(13, 19)          # what ONNX Runtime 1.31 runs and the exporter emits
MULTI_STEP = ("docs/keras-models.md#window-models-converted-whole-autoencoders-and-multi-step-"
              "forecasts")                      # where the next steps of a refusal are explained
LAGS = "docs/keras-models.md#lags-as-features"


class _Misfit(ExportError):
    """The arguments (names, scaler) do not fit the model, however it is converted: said
    alone, not behind a layer the streaming emitter refused."""


@dataclasses.dataclass
class ExportReport:
    """What :func:`export` wrote and measured."""

    path: Path | None            # the .onnx file (None when nothing was written)
    info: ModelInfo              # the contract metadata written into it
    parity: dict | None          # the check's figures (None when check=False)
    op_counts: dict              # ONNX operator type -> node count
    size_bytes: int              # size of the serialized model
    inputs: list                 # (name, dtype, shape) of each graph input
    outputs: list                # (name, dtype, shape) of each graph output
    seconds: float = 0.0         # wall time of the export, check included
    notes: list = dataclasses.field(default_factory=list)    # export notes (see trainer.notes)
    layers: list = dataclasses.field(default_factory=list)   # (name, class, shape, params)
    calibrated: calibrate.Calibrated | None = None   # the --calibrate CSV's rows, if given

    def summary(self) -> str:
        """The CLI's report: Keras layers, tensors, state, streaming mode, parity, size."""
        info = self.info
        mode = info.streaming_mode
        lines = [f"wrote {self.path}" if self.path else "nothing written"]
        if self.layers:
            lines.append("keras:   " + _layer_table(self.layers).replace("\n", "\n         "))
        lines.append("inputs:  " + ", ".join(_fmt_tensor(t) for t in self.inputs))
        lines.append("outputs: " + ", ".join(_fmt_tensor(t) for t in self.outputs))
        slots = int(info.extra.get("state_slots", 1))
        carried = {"sequence": "carried from reading to reading",
                   "window": "zeros at the start of every window (not carried)",
                   "stateful": "carried from window to window"
                               + (f" in {slots} slots" if slots > 1 else "")}[mode]
        for spec in info.state:
            lines.append(f"state:   {spec.layer} ({spec.kind}, {spec.units} units): "
                         f"{', '.join(spec.inputs)} -> {', '.join(spec.outputs)}, {carried}")
        lines.append(f"mode:    {mode} (window={info.window}, "
                     f"carry_state={str(info.carry_state).lower()}"
                     f"{f', state_slots={slots}' if mode == 'stateful' else ''})")
        lines.append(f"columns: features {list(info.features)} -> targets {list(info.targets)}"
                     f"{_units(info.scaler)}")
        lines.append(f"predicts: {_predicts(info, self.layers)}")
        if not info.scaler:
            lines.append(f"scaler:  none: the file reads and answers the units the model was "
                         f"trained in, as they are; if it was trained on scaled data "
                         f"(MinMaxScaler, StandardScaler, dividing by 100), export again with "
                         f"--scaler scaler.json, or the answers come in scaled units ({SCALERS}, "
                         f"\"Hand over the scaler\")")
        if "intervals" in info.extra:
            lines.append(calibrate.describe(json.loads(info.extra["intervals"]), info.block,
                                            self.calibrated))
        if "mask_value" in info.extra:
            lines.append(f"masking: readings equal to {info.extra['mask_value']} are skipped"
                         + (f"; with nothing but masked readings Keras answers "
                            f"{info.extra['mask_answer']}" if "mask_answer" in info.extra
                            else ""))
        if self.parity:
            from .parity import describe

            worst = max(self.parity["per_output"].items(), key=lambda kv: kv[1])
            units = " in normalised units" if info.scaler and info.scaler.get("y") else ""
            lines.append(f"parity:  max abs diff {self.parity['max_abs_diff']:.2g}{units} "
                         f"(worst {worst[0]}), atol {self.parity['atol']:g}; checked "
                         f"{describe(self.parity)}")
        else:
            lines.append("parity:  not checked")
        lines.append("ops:     " + ", ".join(f"{op} {n}" for op, n in self.op_counts.items()))
        lines.append(f"size:    {self.size_bytes / 1024:.1f} KiB, exported in {self.seconds:.1f} s")
        return "\n".join(lines)


def _layer_table(layers) -> str:
    """Keras's own layer summary, short: name (class), output shape, parameters."""
    width = max(len(f"{name} ({cls})") for name, cls, _, _ in layers)
    rows = [f"{f'{name} ({cls})':<{width}}  {shape:<18} {params:>8,} params"
            for name, cls, shape, params in layers]
    total = sum(p for *_, p in layers)
    return "\n".join(rows + [f"{'total':<{width}}  {'':<18} {total:>8,} params"])


def keras_layers(model) -> list:
    """(name, class, output shape, parameters) of each layer, as ``model.summary()`` lists."""
    rows = []
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        try:
            shape = str(tuple(layer.output.shape)).replace("None", "n")
        except (AttributeError, ValueError):
            shape = "?"
        rows.append((layer.name, type(layer).__name__, shape, int(layer.count_params())))
    return rows


def _predicts(info, layers) -> str:
    """What y is, in words: a forecast only where the trainer's sidecar says so."""
    names = ", ".join(info.targets)
    last = layers[-1][1] if layers else ""
    block = info.block
    if block is not None and block.kind == "reconstruction":
        return (f"the window's {block.steps} readings of {names} rebuilt (a reconstruction, "
                f"{block.outputs} columns); lstm-run answers each reading with its score")
    if block is not None:
        return (f"{names}, each 1 to {block.steps} readings ahead of the last reading "
                f"({block.outputs} columns, step by step)")
    if (info.scaler and info.scaler.get("y")) or info.horizon != 1:
        return f"{names}, {info.horizon} step(s) ahead of the last reading"
    return f"{names}, what the model's last layer{f' ({last})' if last else ''} outputs " \
           f"for the readings so far (no training sidecar says what it forecasts)"


def _fmt_tensor(t) -> str:
    name, dtype, shape = t
    return f"{name} {dtype}[{', '.join(map(str, shape))}]"


@dataclasses.dataclass
class _Prepared:
    """Everything the emitter and the check need, gathered once."""

    proto: onnx.ModelProto
    info: ModelInfo
    model: object                 # keras.Model
    layers: list
    tokens: bool
    features: int
    vocab: int
    path: Path | None
    forecast: dict | None         # residual / differencing built in (trainer.forecast_graph)
    notes: list                   # export notes: suspicious shapes, which window was written
    slots: int = 1                # state slots of a stateful stream
    mask: float | None = None     # the Masking value in normalised units
    whole: bool = False           # converted whole over its window (trainer.window_graph)


# --------------------------------------------------------------------------- artefacts

def read_sidecar(path: Path | None) -> dict | None:
    """The trainer's ``NAME.lstm-edge.json`` next to ``NAME.keras``, if there is one."""
    if path is None:
        return None
    sidecar = sidecar_path(path)
    return _read_json(sidecar) if sidecar.exists() else None


SCALERS = "docs/keras-models.md#bring-your-own-keras-model"   # the MinMaxScaler/StandardScaler table


def _units(scaler: dict | None) -> str:
    """What the report's columns line says of the units in and out."""
    if not scaler:
        return " (no scaler: see the scaler line)"
    if "y" not in scaler:
        return (" (x scaling only: raw values in, the model's scaled units out; add \"y\" to "
                "the scaler for raw answers)")
    return ""


def _read_json(path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _scaler_from(value) -> dict | None:
    """A scaler from a dict or file holding either a whole sidecar or just {"x":, "y":}."""
    if value is None:
        return None
    data = value if isinstance(value, dict) else _read_json(value)
    if "scaler" in data or "format" in data:             # a training sidecar
        return data.get("scaler", data)
    # A scaler named on the command line must be one: a file of another shape, exported as
    # "no scaler", would stream raw readings into a model trained on scaled ones.
    unknown = sorted(set(data) - {"x", "y", "kind"})
    if unknown or not ({"x", "y"} & set(data)):
        where = "" if isinstance(value, dict) else f"{value}: "
        raise _Misfit(f"{where}expected a scaler {{\"x\": {{\"mean\": [...], \"std\": [...]}}, "
                      f"\"y\": {{...}}}} (one mean and std per feature, and per target), "
                      f"found the keys {', '.join(map(repr, sorted(data))) or 'none'}; write "
                      f"the scaling under \"x\" and \"y\" (lower case), or give lstm-train's "
                      f"sidecar (.lstm-edge.json)")
    return data


def _check_scaler(scaler: dict | None, features: int, outputs: int, tokens: bool,
                  names: dict | None = None) -> dict | None:
    """The scaler as ``{"x": {mean, std}, "y": ...}`` lists, or a :class:`_Misfit` naming
    every problem; ``names`` (``{"x": features, "y": targets}``) names the columns."""
    if not scaler:
        return None
    problems, clean = [], {}
    for key, width in (("x", features), ("y", outputs)):
        part = scaler.get(key)
        if part is None:
            continue
        if key == "x" and tokens:
            problems.append("x: the model reads token ids, which are not scaled")
            continue
        try:
            mean = np.asarray(part["mean"], np.float64).reshape(-1)
            std = np.asarray(part["std"], np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError):
            problems.append(f"{key}: expected {{\"mean\": [...], \"std\": [...]}}")
            continue
        if key == "y" and mean.size == std.size == 1 and width > 1:
            # One target's scaling for each of its outputs (a Dense(H) forecast of it).
            mean, std = np.repeat(mean, width), np.repeat(std, width)
        if mean.size != width or std.size != width:
            # x is never repeated: one entry for four features scales three of them wrongly.
            what = "feature" if key == "x" else "output"
            found = mean.size if mean.size == std.size else f"{mean.size} and {std.size}"
            problems.append(f"{key}: expected {width} means and stds, one per {what} in "
                            f"order, found {found}; list one per {what}, repeating the value "
                            f"where {what}s share a scaling")
        elif np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std >= 0) \
                and not np.all(std > 0):
            problems.append(_zero_std(key, std, (names or {}).get(key)))
        elif not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            problems.append(f"{key}: every std must be positive and every value finite")
        else:
            clean[key] = {"mean": mean.tolist(), "std": std.tolist()}
    if problems:
        raise _Misfit("the scaler does not fit the model: " + "; ".join(problems))
    if clean and isinstance(scaler.get("kind"), str):
        clean["kind"] = scaler["kind"]  # how the trainer fitted it (robust/standard), for the record
    return clean or None


def _zero_std(key: str, std, names) -> str:
    """The refusal of a std of 0: a constant column, whose range MinMaxScaler makes 1."""
    zero = np.flatnonzero(std == 0)
    named = [f"{names[k]!r} (#{k})" if names and k < len(names) else f"#{k}" for k in zero]
    what = "feature" if key == "x" else "output"
    several = len(zero) > 1
    return (f"{key}: std is 0 for {what}{'s' if several else ''} {', '.join(named)}, "
            f"{'columns' if several else 'a column'} constant in training (MinMaxScaler's "
            f"data_max_ - data_min_ = 0); scikit-learn scales a zero range by 1, so write 1 "
            f"as {'their' if several else 'its'} std (mean unchanged), as the model was "
            f"trained")


def _answers(model, mode: str) -> dict:
    """``lstm_edge.answers``: what Keras's ``predict`` gives per sample, for Model.predict.
    In ``sequence`` mode ``last`` where it answers ``(samples, targets)``, the last
    timestep's; in ``window`` mode ``every`` where it answers ``(samples, window, targets)``,
    every timestep's (a model returning sequences on a fixed window)."""
    rank = len(model.outputs[0].shape)
    if mode == "sequence" and rank == 2:
        return {"answers": "last"}
    if mode == "window" and rank == 3:
        return {"answers": "every"}
    return {}


def _infer_mode(layers, time_axis, sidecar: dict | None) -> tuple[int, bool]:
    """(window, carry_state) as docs/contract.md's streaming-modes table says."""
    look_back = (sidecar or {}).get("look_back") or time_axis
    mode = (sidecar or {}).get("mode")
    if mode == "sequence":
        return 1, True
    if mode in ("window", "stateful"):
        if not look_back:
            raise ExportError(f"the sidecar says mode {mode!r} but gives no look_back and the "
                              f"model's time axis is not fixed; pass --window N")
        return int(look_back), mode == "stateful"
    recurrent = [layer for layer in layers if is_recurrent(layer)]
    if any(layer.stateful for layer in recurrent):
        return int(look_back or 1), True
    if time_axis is None:
        return 1, True
    # A fixed time axis is the window Keras's predict runs, from a zero state, whether the
    # model answers the window's last timestep or every one (return_sequences=True): a
    # stream answers each reading with the last timestep of the window ending there. Carried
    # without bound, it would answer what no predict of the model gives (issue: the wide-
    # window model, 1.19 l/s off Keras).
    return int(time_axis), False


def _source(path: Path | None, model) -> dict:
    if path is None:
        return {"file": None, "model": model.name}
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"file": path.name, "sha256": digest}


# --------------------------------------------------------------------------- conversion

def _prepare(model, *, scaler, features, targets, window, carry_state, opset,
             state_slots=None, horizon=None) -> _Prepared:
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is out of range: the exporter writes opset "
                          f"{OPSETS.start} to {OPSETS.stop - 1} (default 17)")
    if horizon is not None and horizon < 1:
        raise ExportError(f"horizon must be at least 1, got {horizon}")
    path = None
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        model = load_model(path)
    sidecar = read_sidecar(path)
    trained = (sidecar or {}).get("horizon")
    if horizon is not None and trained is not None and int(trained) != horizon:
        # Alerts would check each reading against the forecast made `horizon` readings
        # before it: against the wrong one, with intervals calibrated for another horizon.
        raise _Misfit(f"--horizon {horizon}: the training sidecar {sidecar_path(path)} says "
                      f"the model forecasts {trained} reading{'s' if trained != 1 else ''} "
                      f"ahead (its skill and intervals are for that); drop --horizon, or "
                      f"train a model for {horizon} with lstm-train --horizon {horizon}")
    # Several outputs are refused before either conversion: converted whole, the heads
    # would come out stacked on the batch axis, a y twice as long as x.
    one_output(model)
    args = dict(scaler=scaler, features=features, targets=targets, window=window,
                carry_state=carry_state, opset=opset, horizon=horizon)
    try:
        return _prepare_streaming(model, path, sidecar, state_slots=state_slots, **args)
    except _Misfit:
        raise               # the same widths either way: converting it whole cannot help
    except ExportError as exc:
        # A window model is a function of its window: what cannot step one reading at a
        # time still exports whole (trainer.window_graph), unless that is what failed.
        why = window_graph.refusal(model, window=window, carry_state=carry_state,
                                   sidecar=sidecar)
        if why is not None or state_slots is not None:
            raise ExportError(f"{exc}{f'; {why}' if why else ''}") from None
        try:
            return _prepare_whole(model, path, sidecar, **args)
        except _Misfit:
            raise           # the names or the scaler: the real cause, whichever way converted
        except ExportError as whole:
            if str(whole) == str(exc):       # not the layers: the same error either way
                raise
            raise ExportError(f"{exc}; converting it whole over its window failed too "
                              f"({whole})") from None


def _prepare_streaming(model, path, sidecar, *, scaler, features, targets, window,
                       carry_state, opset, horizon, state_slots) -> _Prepared:
    """The streaming graph: one fused operator per recurrent layer, state in and out."""
    layers = chain(model)
    check_layers(layers)
    tokens = lookup(layers[0]) is emit_embedding
    if not tokens and any(lookup(layer) is emit_embedding for layer in layers):
        raise ExportError("an Embedding layer must be the model's first layer to stream")
    shape = tuple(model.inputs[0].shape)             # (batch, time, features) or (batch, time)
    if len(shape) != (2 if tokens else 3):
        raise ExportError(f"model {model.name!r} reads {shape}; a streaming model reads "
                          f"(samples, timesteps, features){_subsequences(shape)}")
    n_features = 1 if tokens else int(shape[-1])
    n_outputs = int(model.outputs[0].shape[-1])
    scaler, features, targets = _fit_columns(
        _scaler_from(scaler) if scaler is not None else (sidecar or {}).get("scaler"),
        features or (sidecar or {}).get("features"), targets or (sidecar or {}).get("targets"),
        shape, n_features, n_outputs, tokens=tokens, flat=len(model.outputs[0].shape) == 2)
    graph, state, extra = emit(layers, features=n_features, tokens=tokens, scaler=scaler,
                               opset=opset)
    inferred = _infer_mode(layers, shape[1], sidecar)
    window_given = window                            # the notes say whether it was given
    window = int(window if window is not None else inferred[0])
    carry_state = bool(carry_state if carry_state is not None else inferred[1])
    framing = forecast_graph.plan(sidecar, window, carry_state)
    graph, state, framed = forecast_graph.apply(graph, state, extra, framing, features=n_features,
                                                outputs=n_outputs, tokens=tokens)
    info = ModelInfo(
        state=tuple(state),
        window=window, carry_state=carry_state,
        features=features, targets=targets,
        horizon=int(horizon or (sidecar or {}).get("horizon", 1)),
        scaler=scaler, source=_source(path, model),
        extra={**_mask_metadata(extra, scaler, n_features),
               **_mask_answer(model, extra, scaler, n_features, framed), **framed,
               **calibrate.metadata(sidecar, n_outputs),
               **_answers(model, streaming_mode(window, carry_state))})
    if info.window < 1:
        raise ExportError(f"window must be at least 1, got {info.window}")
    slots = _state_slots(model, layers, sidecar, info, state_slots)
    if slots is not None:
        info = dataclasses.replace(info, extra={**info.extra, "state_slots": str(slots)})
    notes = shape_notes(shape, sidecar, info, tokens, window_given)
    notes += sequence_notes(shape, sidecar, info, window_given, layers)
    notes += window_notes(shape, sidecar, info, window_given, layers)
    proto = _model_proto(graph, opset, info)
    check_fused(proto, sum(1 for spec in state if spec.kind != "prev"))
    vocab = int(layers[0].input_dim) if tokens else 0
    mask = next((float(layer.mask_value) for layer in layers
                 if type(layer).__name__ == "Masking"), None)
    return _Prepared(proto, info, model, layers, tokens, n_features, vocab, path, framing,
                     notes, slots or 1, mask)


def _prepare_whole(model, path, sidecar, *, scaler, features, targets, window, carry_state,
                   opset, horizon) -> _Prepared:
    """A window model converted whole over its window (see :mod:`trainer.window_graph`)."""
    shape = tuple(model.inputs[0].shape)             # (batch, window, features)
    length, n_features = int(shape[1]), int(shape[2])
    width, block = window_graph.block_of(model, length, n_features, horizon=horizon,
                                         sidecar=sidecar)
    scaler = _scaler_from(scaler) if scaler is not None else (sidecar or {}).get("scaler")
    reconstruction = (block or {}).get("kind") == "reconstruction"
    if reconstruction and scaler and "x" in scaler and "y" not in scaler:
        scaler = {**scaler, "y": scaler["x"]}        # it reconstructs the scaled readings
    features = features or (sidecar or {}).get("features")
    scaler, features, targets = _fit_columns(
        scaler, features,
        targets or (sidecar or {}).get("targets") or (features if reconstruction else None),
        shape, n_features, width, tokens=False, flat=block is None)
    steps = block["steps"] if block else 1
    if block and not reconstruction and horizon is not None and horizon != steps:
        raise _Misfit(f"the model forecasts a block of {steps} steps, 1 to {steps} "
                      f"readings ahead; --horizon must be {steps} (or left out)")
    extra = {}
    if block:
        extra["block"] = json.dumps({**block, "names": list(targets)})
    info = ModelInfo(
        state=(), window=length, carry_state=False, features=features, targets=targets,
        horizon=steps if block and not reconstruction
        else int(horizon or (sidecar or {}).get("horizon") or 1),
        scaler=scaler, source=_source(path, model), extra=extra)
    converted = window_graph.convert(model, window=length, features=n_features, scaler=scaler,
                                     block=block, names=width, opset=opset)
    proto = _model_proto(converted.graph, opset, info)
    notes = [f"window mode, converted whole: the model does not step one reading at a time "
             f"(it is not one chain of layers the streaming emitter knows), so each "
             f"prediction runs its last {length} readings through the whole model, as "
             f"model.predict(window) does"]
    return _Prepared(proto, info, model, [], False, n_features, 0, path, None, notes,
                     whole=True)


def _subsequences(shape) -> str:
    """The fix for a 4-D input (a CNN-LSTM reading sub-sequences)."""
    if len(shape) != 4:
        return ""
    _, seqs, steps, feats = shape
    return (f"; a model of sub-sequences (a CNN-LSTM's TimeDistributed(Conv1D)) can read "
            f"the flat window instead: put keras.Input(({seqs * steps if seqs and steps else 'T'}, "
            f"{feats})) and keras.layers.Reshape(({seqs}, {steps}, {feats})) in front of it, "
            f"then export that as a window model")


def _model_proto(graph, opset: int, info: ModelInfo) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="lstm-edge",
                              ir_version=helper.find_min_ir_version_for(opsets))
    _set_metadata(proto, info)
    fold(proto)                                      # fewer nodes, same numbers: trainer.fold
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise ExportError(f"the emitted graph fails onnx.checker ({exc}); this is a bug "
                          f"in lstm-export, please report it with the model") from None
    return proto


def _fit_columns(scaler, features, targets, shape, n_features: int, n_outputs: int, *,
                 tokens: bool, flat: bool) -> tuple:
    """(scaler, feature names, target names) checked against the model, every misfit said
    at once: a lag model given one scaler entry and one name hears of both."""
    named = {"x": _split(features) if features else None,
             "y": _split(targets) if targets else None}
    checks = (lambda: _check_scaler(scaler, n_features, n_outputs, tokens, named),
              lambda: _names(features, n_features, "x", "features",
                             hint=_lags_hint(shape, n_features)),
              lambda: _names(targets, n_outputs, "y", "targets",
                             hint=_steps_hint(targets, n_outputs) if flat else ""))
    found, problems = [], []
    names = _split(targets) if targets else ()
    y = (scaler or {}).get("y") if isinstance(scaler, dict) else None
    if isinstance(y, dict) and n_outputs > 1 and len(set(names)) > 1 \
            and np.asarray(y.get("mean", []), dtype=object).size == 1:
        # one target's scaling fits each step of its forecast, not several targets
        problems.append(f"the scaler's y has 1 mean and std for {len(names)} different "
                        f"targets ({', '.join(names)}); list one per target, in order")
    for check in checks:
        try:
            found.append(check())
        except _Misfit as exc:
            problems.append(str(exc))
    if problems:
        raise _Misfit("; ".join(problems))
    return tuple(found)


def _names(given, width: int, prefix: str, what: str, hint: str = "") -> tuple[str, ...]:
    if not given:
        return tuple(f"{prefix}{k}" for k in range(width))
    given = _split(given)
    if len(given) != width:
        each = "input feature" if what == "features" else "output"
        raise _Misfit(f"{len(given)} {what} named ({', '.join(given)}) but the model has "
                      f"{width}; name one per {each}, in the model's order (--{what} "
                      f"{_example(width)}), or leave --{what} out for {prefix}0..{prefix}"
                      f"{width - 1}{hint}")
    return given


def _split(given) -> tuple[str, ...]:
    return tuple(given.split(",")) if isinstance(given, str) else tuple(map(str, given))


def _example(width: int) -> str:
    """``a,b,c`` with as many names as the model has columns (elided past eight)."""
    names = [f"n{k + 1}" if width > 26 else chr(ord("a") + k) for k in range(width)]
    return ",".join(names if width <= 8 else names[:2] + ["...", names[-1]])


def _lags_hint(shape, n_features: int) -> str:
    """For (samples, 1, features): the window-method tutorial's lags read as features."""
    if shape[1] != 1 or n_features < 2:
        return ""
    return (f"; if they are the last {n_features} readings of one series (the tutorials' "
            f"reshape(n, 1, look_back)), the model reads them as {n_features} features of "
            f"one timestep, so each reading must carry all {n_features}: see {LAGS}")


def _steps_hint(given, width: int) -> str:
    """For too few target names: a flat Dense(H * targets) forecast made a block of steps."""
    names = _split(given) if given else ()
    if not names or len(names) >= width or width % len(names):
        return ""
    steps, listed = width // len(names), ", ".join(names)
    return (f"; if the {width} outputs are a {steps}-step forecast of {listed}, make them a "
            f"block of (steps, targets): keras.Sequential([model, keras.layers.Reshape(("
            f"{steps}, {len(names)}))]).save('NAME.keras'), and export that with --targets "
            f"{','.join(names)} --horizon {steps} ({MULTI_STEP})")


def _mask_answer(model, extra: dict, scaler: dict | None, n_features: int,
                 framed: dict) -> dict:
    """``lstm_edge.mask_answer``: Keras's prediction where every reading was masked.

    With every step masked a recurrent layer outputs zeros (its previous output starts at
    zeros, whatever state it carries), and the head of that is Keras's answer, e.g. the
    Dense bias: computed here once, with ``predict`` on an all-masked window, in raw units.
    Left out where the graph adds a forecast framing to the network's change (the reading
    it adds is the masked one, which Keras never sees): the runtime then answers nothing.
    """
    if "mask_value" not in extra or framed:
        return {}
    batch = model.inputs[0].shape[0] or 1                # a stateful layer's B
    steps = model.inputs[0].shape[1] or 1
    x = np.full((batch, steps, n_features), extra["mask_value"], np.float32)
    y = np.asarray(model.predict(x, batch_size=batch, verbose=0), np.float64)[0]
    y = (y[-1] if y.ndim == 2 else y).reshape(-1)        # (targets,): the last step's
    if scaler and scaler.get("y"):
        y = y * np.asarray(scaler["y"]["std"]) + np.asarray(scaler["y"]["mean"])
    return {"mask_answer": json.dumps([float(np.float32(v)) for v in y])}


def _mask_metadata(extra: dict, scaler: dict | None, n_features: int) -> dict:
    """``lstm_edge.mask_value``: the Masking value in raw units, one per feature."""
    if "mask_value" not in extra:
        return {}
    value = np.full(n_features, extra["mask_value"], np.float64)       # normalised units
    if scaler and "x" in scaler:
        value = value * np.asarray(scaler["x"]["std"]) + np.asarray(scaler["x"]["mean"])
    return {"mask_value": json.dumps(value.tolist())}


def _set_metadata(proto: onnx.ModelProto, info: ModelInfo) -> None:
    del proto.metadata_props[:]
    helper.set_model_props(proto, info.to_metadata())


def to_onnx(model, *, scaler=None, features=None, targets=None, window=None,
            carry_state=None, opset: int = 17, state_slots: int | None = None,
            horizon: int | None = None):
    """The streaming graph and its :class:`ModelInfo`, without the check or a file.

    Parameters are those of :func:`export`. Returns ``(onnx.ModelProto, ModelInfo)``.
    """
    prepared = _prepare(model, scaler=scaler, features=features, targets=targets,
                        window=window, carry_state=carry_state, opset=opset,
                        state_slots=state_slots, horizon=horizon)
    return prepared.proto, prepared.info


def export(model, output=None, *, scaler=None, features=None, targets=None, window=None,
           carry_state=None, atol: float = 1e-4, opset: int = 17, check: bool = True,
           steps: int = 1000, state_slots: int | None = None,
           horizon: int | None = None, calibration=None) -> ExportReport:
    """Export ``model`` to a streaming ONNX file, check it against Keras, and write it.

    Parameters
    ----------
    model : path of a ``.keras``/``.h5`` file, or a ``keras.Model``.
    output : the ``.onnx`` path; default ``exported/<stem>.onnx``. Parents are created and
        the file is written atomically (temporary file, then rename).
    scaler : dict or JSON file: a trainer sidecar or ``{"x": {mean, std}, "y": {...}}``;
        default the sidecar next to the model, if any.
    features, targets : column names (list or comma-separated); default the sidecar's, else
        ``x0..``/``y0..``.
    window, carry_state : override the streaming mode inferred from the model and sidecar.
    atol : largest difference from Keras allowed, in normalised units.
    opset : ONNX opset, 13 to 18.
    check : run the parity check (the graph run the way the file will stream, against
        Keras: see :mod:`trainer.parity`).
    steps : length of the runs the check feeds a sequence-mode model (window modes run
        windows of ``window`` readings).
    state_slots : state slots of a stateful stream (``lstm_edge.state_slots``); default the
        batch size the model's stateful layer was built with (see :mod:`trainer.notes`).
    horizon : how many readings ahead y predicts (``lstm_edge.horizon``); default the
        sidecar's, else the steps of a forecast block, else 1.
    calibration : a CSV to calibrate the prediction intervals on
        (:func:`trainer.calibrate.calibrate_file`); the file is written with them or not at
        all, and an ``output`` that existed is left as it was when they fail.

    Raises
    ------
    ExportError : the model cannot be read or cannot stream (the message names the layer).
    ParityError : the graph does not reproduce Keras within ``atol``; nothing is written.
    """
    started = time.perf_counter()
    prepared = _prepare(model, scaler=scaler, features=features, targets=targets,
                        window=window, carry_state=carry_state, opset=opset,
                        state_slots=state_slots, horizon=horizon)
    info, parity = prepared.info, None
    if check:
        parity = _check(prepared, steps=steps, atol=atol)
        info = dataclasses.replace(info, parity=parity)
        _set_metadata(prepared.proto, info)
    data = prepared.proto.SerializeToString()
    stem = prepared.path.stem if prepared.path else prepared.model.name
    path = Path(output) if output is not None else Path("exported") / f"{stem}.onnx"
    calibrated = None
    if calibration is None:
        write_atomically(path, data)
    else:
        trained = (read_sidecar(prepared.path) or {}).get("data")    # its training rows
        calibrated = _write_calibrated(path, data, calibration, trained)
        info = dataclasses.replace(info, extra={**info.extra,
                                                "intervals": json.dumps(calibrated.intervals)})
    graph = prepared.proto.graph
    return ExportReport(
        path=path, info=info, parity=parity, op_counts=op_counts(prepared.proto),
        size_bytes=path.stat().st_size, inputs=[_describe(v) for v in graph.input],
        outputs=[_describe(v) for v in graph.output], seconds=time.perf_counter() - started,
        notes=list(prepared.notes), layers=keras_layers(prepared.model),
        calibrated=calibrated)


def _check(prepared: _Prepared, *, steps: int, atol: float) -> dict:
    """The parity check (:mod:`trainer.parity`) the way the file will stream."""
    from .parity import Subject, check as check_parity

    info = prepared.info
    subject = Subject(
        onnx_bytes=prepared.proto.SerializeToString(), layers=prepared.layers,
        original=prepared.model, state=info.state, tokens=prepared.tokens,
        features=prepared.features, vocab=prepared.vocab, scaler=info.scaler,
        window=info.window, carry_state=info.carry_state, slots=prepared.slots,
        forecast=prepared.forecast, mask=prepared.mask, whole=prepared.whole,
        mask_answer=json.loads(info.extra.get("mask_answer", "null")))
    try:
        return check_parity(subject, steps=steps, atol=atol)
    except ParityError as exc:
        if _policy(prepared.model) != "mixed_float16":
            raise
        raise ParityError(f"{exc}. The model computes in float16 (mixed_float16): Keras's "
                          f"own float16 rounding differs from the float32 graph by about "
                          f"1e-3; export with --atol 1e-3") from None


def _policy(model) -> str:
    """``mixed_float16`` where any layer computes in it, else the model's dtype policy."""
    layers = list(getattr(model, "layers", []))
    if any(getattr(getattr(layer, "dtype_policy", None), "name", "") == "mixed_float16"
           for layer in layers):
        return "mixed_float16"
    return getattr(getattr(model, "dtype_policy", None), "name", None) or "float32"


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (:func:`runtime.io.replace_file`)."""
    try:
        replace_file(path, data)
    except OSError as exc:
        raise ExportError(f"{path}: cannot be written ({exc.strerror or exc})") from None


def _write_calibrated(path: Path, data: bytes, csv, trained: dict | None
                      ) -> calibrate.Calibrated:
    """Write ``data`` to ``path`` with intervals calibrated on ``csv``, or leave ``path`` as it
    was. The calibration streams a file, so it runs on a temporary one beside ``path``, renamed
    into place once it has its intervals; the folders made for it go again on a failure."""
    made = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.calibrating.onnx")
    try:
        write_atomically(temporary, data)
        found = calibrate.calibrate_csv(temporary, csv, trained=trained)
        try:
            os.replace(temporary, path)
        except OSError as exc:
            raise ExportError(f"{path}: cannot be written ({exc.strerror or exc})") from None
    except BaseException as exc:
        if str(temporary) in str(exc):               # the user knows the file as path
            exc.args = (str(exc).replace(str(temporary), str(path)),)
        temporary.unlink(missing_ok=True)
        for folder in made:                          # innermost first; only empty ones go
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return found


def _describe(value: onnx.ValueInfoProto):
    tensor = value.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    return value.name, dtype, shape
