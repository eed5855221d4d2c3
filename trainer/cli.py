"""``lstm-train`` and ``lstm-export``: thin click commands over the trainer's functions.

Each command validates its arguments, calls one library function, and turns the project's
own errors into one line on stderr and an exit code — never a traceback.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from runtime.errors import LstmEdgeError


def reports_errors(func):
    """Turn an :class:`LstmEdgeError` raised by ``func`` into ``Error: ...`` and its exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LstmEdgeError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def quiet_tensorflow() -> None:
    """Keep TensorFlow's start-up chatter and GPU off the trainer's output.

    A TensorFlow that sees a GPU traces Keras LSTMs as CudnnRNNV3, which cannot be exported,
    and both commands are small enough that the CPU is the right place for them.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@click.command()
def train_main():
    """Not ready yet."""
    raise SystemExit("lstm-train is not ready yet")


@click.command()
def export_main():
    """Not ready yet."""
    raise SystemExit("lstm-export is not ready yet")
