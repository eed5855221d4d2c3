"""The trainer's error types, children of the runtime's :class:`LstmEdgeError`."""

from runtime.errors import LstmEdgeError


class DataError(LstmEdgeError, ValueError):
    """A CSV or array cannot be trained on: unknown column, junk value, missing values."""


class ExportError(LstmEdgeError, ValueError):
    """A Keras model cannot be exported to a streaming graph (the message names the layer)."""


class ParityError(LstmEdgeError, RuntimeError):
    """The exported graph does not reproduce Keras within tolerance; nothing was written."""

    exit_code = 1
