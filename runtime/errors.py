"""The project's own error types.

Every message says what was expected, what was found, and what to do. The command-line
tools turn any :class:`LstmEdgeError` into one line on stderr and its ``exit_code``;
nothing the user did wrong should ever end in a traceback.
"""


def counted(n: int, noun: str) -> str:
    """``counted(1, "feature")`` -> ``"1 feature"``, ``counted(3, "feature")`` -> ``"3 features"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


class LstmEdgeError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code = 2


class ShapeError(LstmEdgeError, ValueError):
    """An array does not have the (samples, timesteps, features) shape a model needs."""


class InputError(LstmEdgeError, ValueError):
    """A reading the runtime was given cannot be fed: wrong dtype, NaN or inf, wrong size."""


class ContractError(LstmEdgeError, ValueError):
    """An ONNX file does not hold to the streaming contract (see docs/contract.md)."""


class SnapshotError(LstmEdgeError, ValueError):
    """A saved stream state cannot be restored into this model."""


class DeviceError(LstmEdgeError, RuntimeError):
    """The requested execution device cannot run the model."""


class RunError(LstmEdgeError, RuntimeError):
    """ONNX Runtime failed while running a model that loaded and holds to the contract."""


class MissingExtra(LstmEdgeError, ImportError):
    """A command needs packages of an extra that is not installed; the message names it."""


ORT_EXTRAS = ("ONNX Runtime is not installed: pip install 'lstm-edge[cpu]' (or "
              "'lstm-edge[gpu]' on x86_64 with an NVIDIA GPU; exactly one of the two)")
