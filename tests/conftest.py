"""Shared fixtures: paths to the bundled data, and a quiet, CPU-only TensorFlow.

Shared code (the lstm-run harness, hand-built graphs, ...) lives in tests/helpers.py.
"""

import collections
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


def pytest_collection_modifyitems(config, items):
    """The files with the most ``slow`` tests first; within a file, the tests' own order.

    ``make test`` hands whole files to its workers (pytest-xdist ``--dist loadfile
    --no-loadscope-reorder``), so that a file's module fixtures train once and its tests keep
    their order. Starting the longest files first leaves the many short ones to even out the
    workers' ends; the sort is stable, so a file's tests stay together and in order.
    """
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])
