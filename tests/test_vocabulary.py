"""One vocabulary: a *reading* is one time step's values, a *sample* one window (Keras's word).

Every installed command's ``--help`` is read as a user reads it: "sample" may appear only
where it means a window: beside "window" or "timesteps", or in the shape name
``(samples, timesteps, features)``.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
COMMANDS = ["lstm-run", "lstm-export", "lstm-train", "lstm-triton"]
WINDOW_WORDS = re.compile(r"window|timestep|\(samples,", re.I)


def sample_misuses(text: str) -> list[str]:
    """Lines (with the line after, where a sentence wraps) that say "sample" of no window.

    >>> sample_misuses("one step per new sample")
    ['one step per new sample']
    >>> sample_misuses("a sample is a whole window")
    []
    """
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if re.search(r"\bsamples?\b", line, re.I):
            near = " ".join(lines[max(i - 1, 0):i + 2])
            if not WINDOW_WORDS.search(near):
                found.append(line.strip())
    return found


@pytest.mark.parametrize("command", COMMANDS)
def test_help_says_sample_only_of_windows(command):
    exe = BIN / command
    if not exe.exists():
        pytest.skip(f"{command} is not installed in this environment")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sample_misuses(proc.stdout) == []
