"""Model files are untrusted input: what a file names is read from its own folder or refused.

An ONNX initializer may keep its bytes in an external file (``location`` relative to the
model). The runtime reads the model's bytes itself, so ONNX Runtime would look for that file
in the *current directory*: a model could read any file there into its weights. These tests
run the real loader (and the real ``lstm-run``) from a folder holding a "secret", with the
model elsewhere; an absurd size in the metadata, and a Keras config naming Python's own code,
are refused in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import runtime
from runtime.contract import ModelInfo, StateSpec
from runtime.errors import ContractError
from helpers import FEATURES, LSTM_RUN, TARGETS, TIMEOUT, tiny_onnx

onnx = pytest.importorskip("onnx")


def with_external(model: Path, out: Path, location: str) -> Path:
    """``model`` with its initializer ``bd`` (the dense bias, 4 bytes) read from ``location``."""
    proto = onnx.load(str(model))
    init = next(i for i in proto.graph.initializer if i.name == "bd")
    init.ClearField("raw_data")
    init.ClearField("float_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = init.external_data.add()
        entry.key, entry.value = key, value
    init.data_location = onnx.TensorProto.EXTERNAL
    out.write_bytes(proto.SerializeToString())
    return out


@pytest.fixture
def attacker(tmp_path, monkeypatch) -> Path:
    """The current directory holds secret/token; the models live in models/."""
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "token").write_bytes(b"S3CR" * 8)
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def no_optimisation() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


@pytest.mark.parametrize("location", ["secret/token", "../secret/token", "/etc/hostname"])
def test_external_data_outside_the_models_folder_is_refused(attacker, location):
    tiny = tiny_onnx(attacker / "models" / "tiny.onnx")
    path = with_external(tiny, attacker / "models" / "m.onnx", location)
    with pytest.raises(ContractError) as info:
        runtime.load(path, device="cpu", session_options=no_optimisation())
    said = str(info.value)
    assert "external data" in said and "bd" in said and "model's folder" in said


def test_external_data_of_model_bytes_is_refused(attacker):
    tiny = tiny_onnx(attacker / "models" / "tiny.onnx")
    data = with_external(tiny, attacker / "models" / "m.onnx", "secret/token").read_bytes()
    with pytest.raises(ContractError, match="external data"):
        runtime.load(data, device="cpu", session_options=no_optimisation())


def test_lstm_run_refuses_it_in_one_line(attacker):
    tiny = tiny_onnx(attacker / "models" / "tiny.onnx")
    path = with_external(tiny, attacker / "models" / "m.onnx", "../secret/token")
    proc = subprocess.run(LSTM_RUN + [str(path)], input=b"temperature,humidity\n1,2\n",
                          capture_output=True, timeout=TIMEOUT, cwd=attacker)
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("Error:"), err
    assert "external data" in err[0] and "bd" in err[0] and proc.stdout == b""


def test_weights_file_beside_the_model_loads(attacker, tmp_path):
    """A legitimate weights.bin beside the model: the same answers as the model in one file,
    loaded from another directory."""
    tiny = tiny_onnx(tmp_path / "tiny.onnx")
    proto = onnx.load(str(tiny))
    split = attacker / "models" / "split.onnx"
    # The weight matrices go to the file; the 8-byte axes stay inline, as ONNX Runtime's
    # shape inference needs them (it reads no external data for them, from a path either).
    onnx.save_model(proto, str(split), save_as_external_data=True, location="weights.bin",
                    size_threshold=64)
    assert (attacker / "models" / "weights.bin").exists()
    x = np.random.default_rng(0).normal(21, 3, (20, len(FEATURES))).astype(np.float32)
    want = runtime.load(tiny, device="cpu").stream().feed(x)
    got = runtime.load(split, device="cpu").stream().feed(x)
    np.testing.assert_array_equal(got, want)


def test_absurd_state_size_is_one_error_line(tmp_path):
    tiny = tiny_onnx(tmp_path / "tiny.onnx")
    proto = onnx.load(str(tiny))
    for value in proto.graph.input[1:]:                       # in_h0, in_c0: units dynamic
        value.type.tensor_type.shape.dim[1].dim_param = "units"
    info = ModelInfo(state=(StateSpec.for_layer(0, "lstm", "lstm", 1 << 40),), window=1,
                     carry_state=True, features=FEATURES, targets=TARGETS)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, info.to_metadata())
    path = tmp_path / "huge.onnx"
    onnx.save(proto, str(path))
    proc = subprocess.run(LSTM_RUN + [str(path)], input=b"temperature,humidity\n1,2\n",
                          capture_output=True, timeout=TIMEOUT)
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("Error:"), err
    assert "state units 1,099,511,627,776" in err[0]


def test_keras_config_naming_python_code_gets_no_custom_objects_advice(tmp_path):
    pytest.importorskip("keras")
    from trainer.errors import ExportError
    from trainer.loading import load_model
    config = {"module": "keras", "class_name": "Sequential", "config": {"layers": [
        {"module": "subprocess", "class_name": "Popen", "config": {"args": ["true"]},
         "registered_name": None}]}}
    path = tmp_path / "evil.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
    with pytest.raises(ExportError) as info:
        load_model(path)
    said = str(info.value)
    assert "subprocess.Popen" in said and "custom_objects" not in said
    assert os.path.exists(path)
