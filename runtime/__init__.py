"""lstm-edge runtime: stateful step-by-step inference on exported ONNX files.

Imports numpy and onnxruntime only; never TensorFlow, Keras or the trainer.

>>> from runtime import load                        # doctest: +SKIP
>>> model = load("exported/water.onnx", device="auto")  # doctest: +SKIP
>>> s = model.stream()                              # doctest: +SKIP
>>> y = s.step([101.2])              # one reading in  # doctest: +SKIP
>>> ys = model.predict(testX)        # Keras-shaped windows in, Keras's answers out  # doctest: +SKIP
"""

from .contract import ModelInfo, StateSpec
from .errors import (ContractError, DeviceError, InputError, LstmEdgeError, RunError,
                     ShapeError, SnapshotError)
from .model import Model, load
from .shapes import check_shape, shape_problem
from .snapshot import Snapshot, load_snapshots, save_snapshots
from .stream import Stream

__all__ = ["ModelInfo", "StateSpec", "ContractError", "DeviceError", "InputError",
           "LstmEdgeError", "RunError", "ShapeError", "SnapshotError", "check_shape", "shape_problem",
           "load", "Model", "Stream", "Snapshot", "save_snapshots", "load_snapshots"]
