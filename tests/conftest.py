"""Shared fixtures: paths to the bundled data, and a quiet, CPU-only TensorFlow.

Shared code (the lstm-run harness, hand-built graphs, ...) lives in tests/helpers.py.
"""

import os
from pathlib import Path

import pytest

# Set before any test imports TensorFlow: no GPU (CudnnRNNV3 cannot be exported), no chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from helpers import DATA  # noqa: E402  (after the environment: helpers imports onnx)


@pytest.fixture
def water_csv() -> Path:
    return DATA / "water-flow.csv"


@pytest.fixture
def occupancy_csv() -> Path:
    return DATA / "occupancy.csv"
