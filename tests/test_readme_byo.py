"""README's "Bring your own Keras model": its shell commands, run verbatim, say what it says.

The test trains the stateful airline tutorial model the way the section's Python shows,
saves ``airline.keras`` and the test months as ``test.csv`` in a temporary folder, runs
every fenced ``sh`` block of the section there in a real shell, and checks the claims:
the scaler JSON is the tutorial's MinMaxScaler, and the first line past warm-up of
``predictions.csv`` is ``testPredict[0]`` (then every line k is ``testPredict[k - 3]``).
"""

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from test_runtime_keras_stateful import LOOK_BACK, SPAN, passengers, reset_states, tutorial  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Bring your own Keras model"


def section_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end >= 0 else None]
    return re.findall(r"```sh\n(.*?)```", body, flags=re.S)


def test_the_section_has_few_commands():
    blocks = section_commands()
    assert blocks and sum(len(b.strip().splitlines()) for b in blocks) <= 6


def test_readme_commands_run_verbatim_and_line_3_is_testpredict0(tmp_path):
    model, scaler, raw_test, testX = tutorial(1)
    model.save(tmp_path / "airline.keras")
    reset_states(model)                                     # as the tutorial does before testX
    testPredict = model.predict(testX, batch_size=1, verbose=0) * SPAN + scaler["y"]["mean"][0]
    with open(tmp_path / "test.csv", "w") as f:
        f.write("month,passengers\n")
        f.writelines(f"{i},{v:g}\n" for i, v in enumerate(raw_test[:, 0]))

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3")
    outputs = []
    for block in section_commands():
        proc = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{block}\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)

    # The scaler the README writes is the tutorial's MinMaxScaler on this data.
    data = passengers()
    import json
    written = json.loads((tmp_path / "scaler.json").read_text())
    assert written["x"] == written["y"] == {"mean": [float(data.min())], "std": [SPAN]}
    assert "stateful" in "".join(outputs)                   # --info printed the mode

    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(raw_test)
    assert [r["warmup"] for r in rows[:LOOK_BACK]] == ["true"] * (LOOK_BACK - 1) + ["false"]
    got = np.array([float(r["pred_passengers"]) for r in rows[LOOK_BACK - 1:]])  # line 3 on
    diff = np.abs(got[:len(testPredict)] - testPredict[:, 0]) / SPAN
    print(f"README airline: line 3 - testPredict[0] = {got[0] - testPredict[0, 0]:.2e} "
          f"passengers; max over testPredict {diff.max():.2e} scaled")
    assert diff.max() <= 1e-5
    assert len(got) == len(testPredict) + 2                 # two lines past create_dataset's end
