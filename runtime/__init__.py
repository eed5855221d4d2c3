"""lstm-edge runtime: stateful step-by-step inference on exported ONNX files.

Imports numpy and onnxruntime only; never TensorFlow, Keras or the trainer.
"""

from .contract import ModelInfo, StateSpec
from .errors import (ContractError, DeviceError, InputError, LstmEdgeError, ShapeError,
                     SnapshotError)
from .shapes import check_shape, shape_problem

__all__ = ["ModelInfo", "StateSpec", "ContractError", "DeviceError", "InputError",
           "LstmEdgeError", "ShapeError", "SnapshotError", "check_shape", "shape_problem"]
