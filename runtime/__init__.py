"""lstm-edge runtime: stateful step-by-step inference on exported ONNX files.

Imports numpy and onnxruntime only; never TensorFlow, Keras or the trainer.

>>> from runtime import load                        # doctest: +SKIP
>>> model = load("exported/water.onnx", device="auto")  # doctest: +SKIP
>>> s = model.stream()                              # doctest: +SKIP
>>> y = s.step([101.2])              # one reading in  # doctest: +SKIP
>>> ys = model.predict(testX)        # Keras-shaped windows in, Keras's answers out  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .contract import ModelInfo, StateSpec
from .errors import (ContractError, DeviceError, InputError, LstmEdgeError, MissingExtra,
                     RunError, ShapeError, SnapshotError)
from .shapes import check_shape, shape_problem
from .snapshot import Snapshot, load_snapshots, save_snapshots

if TYPE_CHECKING:
    from .model import Model, load
    from .stream import Stream

# Names whose modules import ONNX Runtime, imported when first used: `lstm-run --help` and a
# training-only install work without it, and a missing one is a MissingExtra naming the extra.
_NEEDS_ORT = {"Model": "model", "load": "model", "Stream": "stream"}


def __getattr__(name: str):
    if name not in _NEEDS_ORT:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_NEEDS_ORT[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["ModelInfo", "StateSpec", "ContractError", "DeviceError", "InputError",
           "LstmEdgeError", "MissingExtra", "RunError", "ShapeError", "SnapshotError",
           "check_shape", "shape_problem", "load", "Model", "Stream", "Snapshot",
           "save_snapshots", "load_snapshots"]
