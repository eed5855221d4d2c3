"""Shared fixtures: paths to the bundled data, and a quiet, CPU-only TensorFlow."""

import os
from pathlib import Path

import pytest

# Set before any test imports TensorFlow: no GPU (CudnnRNNV3 cannot be exported), no chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


@pytest.fixture
def water_csv() -> Path:
    return DATA / "water-flow.csv"


@pytest.fixture
def occupancy_csv() -> Path:
    return DATA / "occupancy.csv"
