"""docs/keras-models.md, "Bring your own Keras model": its commands, run verbatim, do as it says.

The test trains the stateful airline tutorial model the way the section's Python shows,
saves ``airline.keras`` and the test months as ``test.csv`` in a temporary folder, runs
every fenced ``sh`` block of the section there in a real shell, and checks the claims:
the scaler JSON is the tutorial's MinMaxScaler, and the first line past warm-up of
``predictions.csv`` is ``testPredict[0]`` (then every line k is ``testPredict[k - 3]``).
The section's autoencoder and multi-step forecaster are built from its own Python block,
trained briefly on a three-sensor series, and their ``scores.csv`` and ``forecasts.csv``
are checked against Keras's reconstruction error and ``predict``.
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

from helpers import LOOK_BACK, SPAN, passengers, reset_states, tutorial  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Bring your own Keras model"


def section_blocks(language: str) -> list[str]:
    text = (ROOT / "docs" / "keras-models.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start:end if end >= 0 else None]
    return re.findall(rf"```{language}\n(.*?)```", body, flags=re.S)


def section_commands() -> list[str]:
    return section_blocks("sh")


def test_the_section_has_few_commands():
    blocks = section_commands()
    assert blocks and sum(len(b.strip().splitlines()) for b in blocks) <= 10


MEAN, STD = np.array([20.0, 50.0, 600.0]), np.array([3.0, 8.0, 40.0])   # sensors.json


def sensor_models(folder: Path):
    """The section's autoencoder and forecaster, run from its own Python, fit briefly."""
    import keras

    code = next(b for b in section_blocks("python") if "autoencoder" in b)
    keras.utils.set_random_seed(0)
    scope = {"keras": keras}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(code, scope)                   # builds both and saves them as .keras files
    finally:
        os.chdir(cwd)
    T, F, H = scope["T"], scope["F"], scope["H"]
    t = np.arange(600)[:, None]
    raw = (MEAN + STD * np.sin(t / np.array([7.0, 11.0, 5.0]))).astype(np.float32)
    z = ((raw - MEAN) / STD).astype(np.float32)
    X = np.lib.stride_tricks.sliding_window_view(z[:-H], T, axis=0).transpose(0, 2, 1)
    Y = np.lib.stride_tricks.sliding_window_view(z[T:], H, axis=0).transpose(0, 2, 1)
    for model, target in ((scope["autoencoder"], X), (scope["forecaster"], Y[:len(X)])):
        model.compile("adam", "mse")
        model.fit(X, target, epochs=1, verbose=0)
        model.save(folder / f"{'autoencoder' if target is X else 'forecaster'}.keras")
    test = raw[-80:]
    with open(folder / "sensors.csv", "w") as f:
        f.write("temp,rh,co2\n")
        f.writelines(",".join(f"{v:.9g}" for v in row) + "\n" for row in test)
    return scope["autoencoder"], scope["forecaster"], test, (T, F, H)


def check_sensor_outputs(folder: Path, autoencoder, forecaster, test, shape) -> None:
    T, F, H = shape
    windows = np.lib.stride_tricks.sliding_window_view(test, T, axis=0).transpose(0, 2, 1)
    z = ((windows - MEAN) / STD).astype(np.float32)
    rebuilt = autoencoder.predict(z, verbose=0)                       # scaled (n, T, F)
    want_score = np.mean(np.abs(rebuilt - z), axis=(1, 2))
    with open(folder / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    got_score = np.array([float(r["score"]) for r in rows[T - 1:]])
    assert np.abs(got_score - want_score).max() <= 1e-5
    forecast = forecaster.predict(z, verbose=0) * STD + MEAN         # raw (n, H, F)
    with open(folder / "forecasts.csv") as f:
        rows = list(csv.DictReader(f))
    names = [f"pred_{n}+{s}" for s in range(1, H + 1) for n in ("temp", "rh", "co2")]
    got = np.array([[float(r[n]) for n in names] for r in rows[T - 1:]])
    diff = np.abs(got - forecast.reshape(len(forecast), -1))
    print(f"README sensors: score max diff {np.abs(got_score - want_score).max():.2e}, "
          f"forecast max diff {diff.max():.2e} (raw units)")
    assert (diff <= 1e-5 + 1e-6 * np.abs(forecast.reshape(len(forecast), -1))).all()


@pytest.mark.slow
def test_readme_commands_run_verbatim_and_line_3_is_testpredict0(tmp_path):
    model, scaler, raw_test, testX = tutorial(1)
    model.save(tmp_path / "airline.keras")
    autoencoder, forecaster, sensors, shape = sensor_models(tmp_path)
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
    check_sensor_outputs(tmp_path, autoencoder, forecaster, sensors, shape)
