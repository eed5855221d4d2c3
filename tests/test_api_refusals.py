"""What load() and snapshots say where the cause is not a bad file: a Keras model given to
load, a model loaded with another window, bytes given as a path, a bad thread count."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

import runtime
from runtime import ContractError, InputError, Snapshot, SnapshotError

from helpers import WATER_MODEL, tiny_onnx


def keras_zip(path=None) -> bytes:
    """What Keras 3 writes to ``model.keras``: a zip of config.json, metadata, weights."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3.6.0"}')
        z.writestr("config.json", '{"class_name": "Sequential"}')
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(64))
    if path is not None:
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.mark.parametrize("name, data, kind", [
    ("win.keras", keras_zip(), "a Keras model file (.keras)"),
    ("renamed.bin", keras_zip(), "a Keras model file (.keras)"),     # by its config.json
    ("old.h5", b"\x89HDF\r\n\x1a\n" + bytes(200), "a Keras HDF5 model file (.h5)"),
])
def test_a_keras_file_is_named_and_the_export_command_given(tmp_path, name, data, kind):
    path = tmp_path / name
    path.write_bytes(data)
    for source, what in ((path, str(path)), (data, "the model bytes")):
        with pytest.raises(ContractError) as info:
            runtime.load(source)
        text = str(info.value)
        assert text.startswith(f"{what} is {kind}, not an ONNX file"), text
        assert "lstm-export" in text and "corrupt" not in text and "\n" not in text
    stem = name.split(".")[0]
    assert f"lstm-export {path} -o {stem}.onnx" in str(
        pytest.raises(ContractError, runtime.load, path).value)


def test_a_saved_model_folder_is_named(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ContractError, match="is a TensorFlow SavedModel folder, not an ONNX "
                                            "file.*lstm-export"):
        runtime.load(tmp_path)


def test_a_zip_that_is_not_keras_is_still_called_not_onnx(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    (tmp_path / "x.zip").write_bytes(buf.getvalue())
    with pytest.raises(ContractError, match="not an ONNX model ONNX Runtime can load"):
        runtime.load(tmp_path / "x.zip")


def test_a_snapshot_of_another_window_says_to_load_with_its_window(tmp_path):
    path = tiny_onnx(tmp_path / "w.onnx", window=4, carry_state=False)
    s = runtime.load(path).stream()
    s.feed(np.full((6, 2), 20.0))
    with pytest.raises(SnapshotError) as info:
        runtime.load(path, window=2).stream(s.snapshot())
    text = str(info.value)
    assert "load the model with window=4 (the snapshot's) to continue it" in text, text
    assert "good copy" not in text
    again = runtime.load(path, window=4).stream(s.snapshot())      # the advice works
    np.testing.assert_array_equal(again.step([21.0, 22.0]), s.step([21.0, 22.0]))


def test_a_snapshot_of_another_model_names_the_model(tmp_path):
    snap = runtime.load(tiny_onnx(tmp_path / "a.onnx", seed=1)).stream().snapshot()
    with pytest.raises(SnapshotError, match=r"continue it with the model file it was taken "
                                            r"with \(sha256 [0-9a-f]{12}…\), or start"):
        runtime.load(tiny_onnx(tmp_path / "b.onnx", seed=2)).stream(snap)


@pytest.mark.parametrize("call", [Snapshot.load, runtime.load_snapshots])
def test_bytes_given_as_a_snapshot_path_point_to_from_bytes(call):
    data = runtime.load(WATER_MODEL).stream().to_bytes()
    with pytest.raises(SnapshotError, match=r"a snapshot file's path was expected, got "
                                            r"\d+ bytes .*Snapshot\.from_bytes\(data\)"):
        call(data)
    assert Snapshot.from_bytes(data).steps == 0


@pytest.mark.parametrize("threads", [-1, 0, 1.5, True, "2"])
def test_threads_must_be_1_or_more(threads):
    with pytest.raises(InputError, match=r"threads must be a whole number 1 or more"):
        runtime.load(WATER_MODEL, threads=threads)


def test_threads_of_numpy_ints_and_none_load():
    assert runtime.load(WATER_MODEL, threads=np.int64(2)).stream().step([1.0]) is not None
    assert runtime.load(WATER_MODEL, threads=None) is not None
