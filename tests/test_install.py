"""The install: one ONNX Runtime per device, and every command on an install without extras.

Each command runs in a real subprocess whose imports cannot find the packages an extra
brings (an import finder that hides them, as a runtime-only or bare install lacks them):
``--help`` exits 0 and use gives one line naming the extra, exit 2, never a traceback.
The fresh-venv installs themselves are measured in docs/device.md.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "exported" / "water-flow.onnx"
TIMEOUT = 60
COMMANDS = {"lstm-run": "runtime.cli:main", "lstm-train": "trainer.cli:train_main",
            "lstm-export": "trainer.cli:export_main",
            "lstm-triton": "integrations.triton.cli:triton_main"}
TRAINING = ["tensorflow", "keras", "tf2onnx", "onnx", "matplotlib"]
ORT = ["onnxruntime"]

# Runs one console script with the named top-level packages hidden from every import.
HIDDEN = """
import sys
from importlib.machinery import PathFinder
hidden = set(sys.argv[1].split(","))

class Hide(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in hidden else super().find_spec(name, path, target)

sys.meta_path = [Hide if f is PathFinder else f for f in sys.meta_path]
module, func = sys.argv[2].split(":")
sys.argv = [sys.argv[3], *sys.argv[4:]]
getattr(__import__(module, fromlist=[func]), func)()
"""


def command(name: str, hidden: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDDEN, ",".join(hidden), COMMANDS[name],
                           name, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=TIMEOUT)


def test_the_console_scripts_are_the_ones_tested_here():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_help_works_with_no_extra_installed(name):
    done = command(name, TRAINING + ORT, "--help")
    assert done.returncode == 0 and "Usage:" in done.stdout, done.stderr
    assert done.stderr == ""


@pytest.mark.parametrize("name, hidden, args, extra", [
    ("lstm-run", ORT, ["{model}"], "'lstm-edge[cpu]'"),
    ("lstm-run", TRAINING, ["{model}", "--info"], None),          # works: the runtime alone
    ("lstm-train", TRAINING, ["data/water-flow.csv", "--target", "Water flow [l/s]"],
     "'lstm-edge[cpu,train]'"),
    ("lstm-export", TRAINING, ["{model}"], "'lstm-edge[cpu,train]'"),
    ("lstm-export", ["onnxruntime"], ["{model}"], "'lstm-edge[cpu]'"),
    ("lstm-triton", ["onnx"], ["{model}", "-o", "{tmp}"], "'lstm-edge[triton]'"),
    ("lstm-triton", ORT, ["{model}", "-o", "{tmp}"], "'lstm-edge[cpu]'"),
], ids=["run-no-ort", "run-runtime-only", "train", "export", "export-no-ort", "triton-no-onnx",
        "triton-no-ort"])
def test_each_command_works_or_names_its_extra(name, hidden, args, extra, tmp_path):
    done = command(name, hidden, *[a.format(model=MODEL, tmp=tmp_path / "models")
                                   for a in args])
    if extra is None:
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and extra in done.stderr, done.stderr
    assert not (tmp_path / "models").exists()


PLATFORMS = {   # marker environments of the devices docs/device.md's install table names
    "x86_64 Linux": {"sys_platform": "linux", "platform_machine": "x86_64"},
    "aarch64 Linux (Jetson, Raspberry Pi OS 64-bit)": {"sys_platform": "linux",
                                                       "platform_machine": "aarch64"},
    "32-bit ARM Linux": {"sys_platform": "linux", "platform_machine": "armv7l"},
    "Windows x64": {"sys_platform": "win32", "platform_machine": "AMD64"},
    "macOS arm64": {"sys_platform": "darwin", "platform_machine": "arm64"},
}


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("extras", [["cpu"], ["gpu"], ["gpu", "train", "dev"]])
def test_one_onnx_runtime_package_per_environment(platform, extras):
    """Base, [cpu] and [gpu] (with make's [train,dev]) give exactly one ONNX Runtime package;
    onnxruntime-gpu only where it has wheels (x86_64 Linux and Windows)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = PLATFORMS[platform]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in extras
               for r in project["optional-dependencies"][extra]]
    names = {r.name for r in wanted if r.marker is None or r.marker.evaluate(env)}
    runtimes = names & {"onnxruntime", "onnxruntime-gpu"}
    gpu_wheels = env["platform_machine"] in ("x86_64", "AMD64")
    assert runtimes == ({"onnxruntime-gpu"} if "gpu" in extras and gpu_wheels
                        else {"onnxruntime"}), runtimes
    base = {Requirement(r).name for r in project["dependencies"]}
    assert base == {"numpy", "click"}
