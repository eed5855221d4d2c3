"""A Triton Inference Server model repository for an exported file; see docs/triton.md.

This module holds what the command line needs before anything heavy is imported: the error
type and the options. :mod:`integrations.triton.repository` writes the repository; it needs
the ONNX package (the ``[triton]`` extra, or ``[train]``) to edit the graph and ONNX Runtime
to load it, and nothing of the trainer. ``lstm-triton`` is :mod:`integrations.triton.cli`.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import LstmEdgeError

INSTANCE_KINDS = {"auto": None, "gpu": "KIND_GPU", "cpu": "KIND_CPU"}


class TritonError(LstmEdgeError, ValueError):
    """An exported file cannot be served by Triton as it is; the message says what to do."""


@dataclass
class TritonOptions:
    """How Triton batches and keeps the sequences; every default is a sensible start."""

    name: str | None = None              # model folder name; default the ONNX file's stem
    max_batch_size: int = 256            # most requests (sensors' readings) run in one call
    max_candidate_sequences: int = 4096  # sensors one instance serves at once; more wait
    max_queue_delay_us: int = 500        # how long a reading may wait for others to batch with
    idle_seconds: float = 7200.0         # a sensor silent this long loses its state
    instance_kind: str = "auto"          # "auto" (Triton decides), "gpu" or "cpu"
    instances: int = 1                   # model instances (per GPU for "gpu")
