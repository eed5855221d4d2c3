"""Reading a Keras model for export: the file, and its layers as one chain.

:func:`load_model` turns every way a file can fail to load into an :class:`ExportError`
that says what was found and what to do (a directory, a custom class this process cannot
import, a truncated archive); :func:`chain` gives the layers in order, looking inside
models used as layers, and refuses anything that is not one input feeding one chain.
"""

from __future__ import annotations

import json
import re
import sys
import zipfile
from pathlib import Path

from .errors import ExportError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def load_model(path) -> object:
    """Load a ``.keras`` or legacy ``.h5`` file, or raise :class:`ExportError` saying why not."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such file; give the path of a .keras or .h5 model")
    if path.is_dir():
        hint = " (a TensorFlow SavedModel)" if (path / "saved_model.pb").exists() else ""
        raise ExportError(f"{path}: is a directory{hint}, not a Keras file; expected a model "
                          f"saved with model.save('NAME.keras') (or a legacy .h5): load it "
                          f"in Keras and save it that way")
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ExportError(f"{path}: not a Keras file; expected a model saved with "
                          f"model.save('NAME.keras') (or a legacy .h5)")
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise ExportError(f"{path}: corrupt or truncated .keras file (not a zip archive); "
                          f"save the model again")
    if path.suffix.lower() != ".keras":
        with open(path, "rb") as fh:
            if fh.read(8) != HDF5_SIGNATURE:
                raise ExportError(f"{path}: corrupt or truncated .h5 file (no HDF5 "
                                  f"signature); save the model again")
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises anything from a bad file
        code = _code_names(path)
        if code:
            # Not a layer someone forgot to import: a model file is untrusted input, and one
            # that names Python's own modules (subprocess.Popen) gets no advice to load it.
            raise ExportError(f"{path}: its config names {', '.join(code)}, from Python's "
                              f"standard library, not a Keras layer; refused: a model file "
                              f"is not allowed to name such code. Save the model again "
                              f"from its source") from None
        custom = _custom_classes(path) or re.findall(r"Unknown \w+: '([^']+)'", str(exc))
        if custom:
            names = ", ".join(repr(c) for c in custom)
            raise ExportError(
                f"{path}: uses custom class(es) {names}, which this process cannot import; "
                f"export it from Python where the class is defined: model = "
                f"keras.models.load_model(path, custom_objects={{...}}), then "
                f"trainer.export.export(model, 'model.onnx')") from None
        unsafe = _unsafe_layer(exc)
        if unsafe:
            # Saving again writes the same Python function: only loading it unsafely helps.
            raise ExportError(
                f"{path}: has a {unsafe} layer, whose Python function Keras loads only with "
                f"safe_mode=False (the file runs that code); if you trust where the file came "
                f"from, export it from Python: model = keras.models.load_model(path, "
                f"safe_mode=False), then trainer.export.export(model, 'model.onnx')") from None
        raise ExportError(f"{path}: cannot be read as a Keras model ({_first_words(exc)}); "
                          f"save the model again with model.save('NAME.keras')") from None


def _unsafe_layer(exc: Exception) -> str:
    """The layer class Keras's safe mode refused to deserialize (``Lambda``), or "" if none."""
    text = str(exc)
    if "safe_mode" not in text:
        return ""
    found = re.search(r"deserialization of a `(\w+)` layer", text)
    return found.group(1) if found else "Lambda"


def _first_words(exc: Exception, limit: int = 200) -> str:
    """The first line of an error, cut at a word boundary (Keras's messages run long)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def _code_names(path: Path) -> list[str]:
    """``module.name`` of each object in a saved model's config that comes from Python's
    standard library (``subprocess.Popen``, ``os.system``): code, not a layer."""
    found: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            module = str(node.get("module") or "")
            if module.split(".")[0] in sys.stdlib_module_names and module != "builtins":
                name = f"{module}.{node.get('class_name', node.get('registered_name', '?'))}"
                if name not in found:
                    found.append(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(_config(path))
    return found


def _config(path: Path):
    """A saved model's config (``config.json`` of a .keras, ``model_config`` of an .h5), or
    None where it cannot be read."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        else:
            import h5py

            with h5py.File(path, "r") as fh:
                raw = fh.attrs.get("model_config")
                config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except Exception:  # noqa: BLE001 - best effort: the caller has a message either way
        return None
    return config


def _custom_classes(path: Path) -> list[str]:
    """Class names in a saved model's config that are not Keras's own (custom layers)."""
    config = _config(path)
    found = []

    def walk(node):
        if isinstance(node, dict):
            module = node.get("module")
            if "class_name" in node and (node.get("registered_name")
                                         or ">" in str(node["class_name"])   # legacy .h5
                                         or (module and not str(module).startswith("keras"))):
                name = node.get("registered_name") or node["class_name"]
                if name not in found and "config" in node:
                    found.append(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def chain(model) -> list:
    """The model's layers in order, refusing anything that is not one input, one chain."""
    inputs = getattr(model, "inputs", None)
    if not inputs and getattr(model, "built", False):
        raise ExportError(
            f"model {model.name!r} is a subclassed keras.Model ({type(model).__name__}) "
            f"without a keras.Input of its own, so there is no graph to export from; wrap it "
            f"in a functional model over its window, inp = keras.Input((T, features)); "
            f"wrapped = keras.Model(inp, model(inp)), and export that (as a window model)")
    if not inputs:
        raise ExportError(f"model {model.name!r} has not been built: call it on data or "
                          f"give it a keras.Input first")
    if len(inputs) > 1:
        raise ExportError(
            f"model {model.name!r} has {len(inputs)} inputs "
            f"({', '.join(t.name for t in inputs)}); a stream feeds one input. If the others "
            f"are static per sensor (site features), either repeat them as extra feature "
            f"columns of every reading and retrain on one input, or export one file per "
            f"sensor with them fixed (it exports as a window model): w = "
            f"keras.Input(window_shape); keras.Model(w, model([w, w[:, 0, :1] * 0.0 + "
            f"static_values]))")
    one_output(model)
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if type(model).__name__ != "Sequential":
        # A loaded Sequential's layer.input is stale, but a Sequential is a chain by construction.
        previous = inputs[0]
        for layer in layers:
            if _reads(layer) is not previous:
                raise ExportError(f"model {model.name!r} is not a single chain of layers: layer "
                                  f"{layer.name!r} does not read the previous layer's output "
                                  f"only, so it cannot step one reading at a time")
            previous = _writes(layer)
    flat = []
    for layer in layers:   # a model used as a layer: its own chain, in its place
        flat += chain(layer) if hasattr(layer, "layers") and hasattr(layer, "inputs") \
            else [layer]
    return flat


def one_output(model) -> None:
    """Refuse a model of several outputs (a list or a dict of heads): the contract has one y.

    Checked before any conversion: a model converted whole over its window would otherwise
    return the heads stacked on the batch axis, one y twice as long as x.
    """
    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) < 2:
        return
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(outputs):
        names = [f"#{k}" for k in range(len(outputs))]
    shapes = [str(tuple(t.shape)).replace("None", "n") for t in outputs]
    listed = ", ".join(f"{name} {shape}" for name, shape in zip(names, shapes))
    columns = []                        # one target name per column of the joined output
    for name, tensor in zip(names, outputs):
        width = tensor.shape[-1] if len(tensor.shape) > 1 else 1
        columns += [name] if width == 1 else [f"{name}_{k}" for k in range(width or 0)]
    raise ExportError(
        f"model {model.name!r} has {len(outputs)} outputs ({listed}); the contract has one y. "
        f"To keep them all, join them into one output, their columns side by side (the same "
        f"numbers): with m the loaded model, keras.Model(m.input, keras.layers.Concatenate()"
        f"(m.outputs)).save('NAME.keras'), and export that with --targets "
        f"{','.join(columns)}; to keep one, export keras.Model(m.input, m.outputs[0]) "
        f"({names[0]} alone)")


def _node(layer):
    nodes = getattr(layer, "_inbound_nodes", None) or []
    return nodes[-1] if len(nodes) == 1 or hasattr(layer, "layers") else None


def _reads(layer):
    """The tensor a layer of a functional model reads (a nested model: from its call)."""
    if hasattr(layer, "layers"):
        node = _node(layer)
        tensors = list(getattr(node, "input_tensors", ()) or ())
        return tensors[0] if len(tensors) == 1 else None
    try:
        return layer.input
    except (AttributeError, ValueError):
        return None


def _writes(layer):
    if hasattr(layer, "layers"):
        node = _node(layer)
        tensors = list(getattr(node, "output_tensors", ()) or ())
        return tensors[0] if len(tensors) == 1 else None
    output = layer.output
    if isinstance(output, (list, tuple)) and getattr(layer, "return_state", False):
        # (sequence, *states): a chain reads the sequence; a model that used the states
        # elsewhere would have another output or a layer off the chain, refused above.
        return output[0]
    return output
