"""What the tests share: paths, running ``lstm-run``, hand-built contract graphs, the
stateful Keras tutorial and the Flink environment.

Nothing here imports TensorFlow at import time: :func:`tutorial` imports Keras when called.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper as nh

from runtime import lines
from runtime.contract import ModelInfo, StateSpec

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
WATER_MODEL = ROOT / "exported" / "water-flow.onnx"     # the bundled exported model
FEATURES = ("temperature", "humidity")
TARGETS = ("temperature",)
TIMEOUT = 60      # seconds any one subprocess may take before the test fails
RTOL, ATOL = 1e-5, 1e-5   # batched and chunked calls round differently from single steps


def lstm_run_command() -> list[str]:
    exe = Path(sys.executable).parent / "lstm-run"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("lstm-run")
    return [found] if found else [sys.executable, "-m", "runtime.cli"]


LSTM_RUN = lstm_run_command()


# ---- running lstm-run ----------------------------------------------------------------

def run(args, data: bytes = b"", code: int = 0, timeout: float = TIMEOUT):
    """Run lstm-run to completion; assert its exit code, showing stderr when it is wrong."""
    proc = subprocess.run(LSTM_RUN + [str(a) for a in args], input=data, capture_output=True,
                          timeout=timeout, cwd=ROOT)
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == code, f"exit {proc.returncode}, expected {code}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    return proc.stdout.decode(), stderr


def split_lines(text: str) -> list[str]:
    """Output lines: cut at newlines only (str.splitlines also cuts at \\r, \\x1c, ...)."""
    return text[:-1].split("\n") if text.endswith("\n") else text.split("\n") if text else []


def csv_rows(text: str) -> list[dict]:
    out = split_lines(text)
    names = lines.split_csv(out[0])
    return [dict(zip(names, lines.split_csv(line))) for line in out[1:]]


def preds(rows: list[dict], key: str = "pred_temperature") -> np.ndarray:
    return np.array([float(r[key]) if r[key] not in ("", None) else np.nan for r in rows])


class Live:
    """lstm-run with open pipes: send lines, read answers with a timeout."""

    def __init__(self, args):
        self.proc = subprocess.Popen(LSTM_RUN + [str(a) for a in args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_line(self, timeout: float = 20) -> str:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                self.kill()
                pytest.fail(f"no output line within {timeout} s; stderr:\n{self.stderr()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"output closed early (exit {self.proc.wait()}); "
                            f"stderr:\n{self.stderr()}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def finish(self, code: int = 0) -> tuple[str, str]:
        self.proc.stdin.close()
        rest = self.proc.stdout.read()
        self.proc.wait(TIMEOUT)
        stderr = self.stderr()
        assert self.proc.returncode == code, f"exit {self.proc.returncode}; stderr:\n{stderr}"
        return (self.buffer + rest).decode(), stderr

    def stderr(self) -> str:
        return self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None \
            else "(still running)"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def stop(*procs: subprocess.Popen) -> None:
    """Kill whatever of ``procs`` still runs (a failed test must leave no process behind)."""
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


# ---- hand-built contract graphs -------------------------------------------------------

def make_params(layers, features=2, targets=1, vocab=None, seed=0):
    """Random weights for a stack of ("lstm"|"gru", units) layers and a dense head."""
    rng = np.random.default_rng(seed)
    p = {"layers": [], "vocab": vocab, "features": features, "targets": targets,
         "mean": rng.normal(size=features).astype(np.float32),
         "std": rng.uniform(0.5, 2, size=features).astype(np.float32)}
    width = features
    if vocab:
        p["emb"] = rng.normal(0, 0.5, (vocab, 3)).astype(np.float32)
        width = 3
    for kind, units in layers:
        g = 4 if kind == "lstm" else 3
        p["layers"].append({
            "kind": kind, "units": units,
            "W": rng.normal(0, 0.4, (1, g * units, width)).astype(np.float32),
            "R": rng.normal(0, 0.4, (1, g * units, units)).astype(np.float32),
            "B": rng.normal(0, 0.2, (1, 2 * g * units)).astype(np.float32)})
        width = units
    p["Wd"] = rng.normal(0, 0.5, (width, targets)).astype(np.float32)
    p["bd"] = rng.normal(0, 0.1, targets).astype(np.float32)
    return p


def contract_model(p) -> onnx.ModelProto:
    """The contract graph for ``p`` (see :func:`make_params`), checked, without metadata:
    batch-first x/y/state around fused ONNX LSTM/GRU operators."""
    inits = [nh.from_array(np.array([0], np.int64), "ax0"),
             nh.from_array(np.array([1], np.int64), "ax1"),
             nh.from_array(p["Wd"], "Wd"), nh.from_array(p["bd"], "bd")]
    nodes, ins, outs = [], [], []
    if p["vocab"]:
        ins.append(oh.make_tensor_value_info("x", TP.INT64, ["batch", "time"]))
        inits.append(nh.from_array(p["emb"], "emb"))
        nodes.append(oh.make_node("Gather", ["emb", "x"], ["xs"]))
    else:
        ins.append(oh.make_tensor_value_info("x", TP.FLOAT, ["batch", "time", p["features"]]))
        inits += [nh.from_array(p["mean"], "mean"), nh.from_array(p["std"], "std")]
        nodes += [oh.make_node("Sub", ["x", "mean"], ["xc"]),
                  oh.make_node("Div", ["xc", "std"], ["xs"])]
    nodes.append(oh.make_node("Transpose", ["xs"], ["seq0"], perm=[1, 0, 2]))
    state = []
    for i, layer in enumerate(p["layers"]):
        u, lstm = layer["units"], layer["kind"] == "lstm"
        parts = ("h", "c") if lstm else ("h",)
        for part in parts:
            ins.append(oh.make_tensor_value_info(f"in_{part}{i}", TP.FLOAT, ["batch", u]))
            outs.append(oh.make_tensor_value_info(f"out_{part}{i}", TP.FLOAT, ["batch", u]))
            nodes.append(oh.make_node("Unsqueeze", [f"in_{part}{i}", "ax0"], [f"{part}0_{i}"]))
        for name in "WRB":
            inits.append(nh.from_array(layer[name], f"{name}{i}"))
        op_in = [f"seq{i}", f"W{i}", f"R{i}", f"B{i}", "", f"h0_{i}"]
        op_in += [f"c0_{i}"] if lstm else []
        op_out = [f"Y{i}", f"Yh{i}"] + ([f"Yc{i}"] if lstm else [])
        extra = {} if lstm else {"linear_before_reset": 1}
        nodes.append(oh.make_node("LSTM" if lstm else "GRU", op_in, op_out, hidden_size=u, **extra))
        nodes.append(oh.make_node("Squeeze", [f"Y{i}", "ax1"], [f"seq{i + 1}"]))
        for part, name in zip(parts, op_out[1:]):
            nodes.append(oh.make_node("Squeeze", [name, "ax0"], [f"out_{part}{i}"]))
        state.append({"layer": f"{layer['kind']}_{i}", "kind": layer["kind"], "units": u,
                      "inputs": [f"in_{q}{i}" for q in parts],
                      "outputs": [f"out_{q}{i}" for q in parts]})
    n = len(p["layers"])
    nodes += [oh.make_node("Transpose", [f"seq{n}"], ["hs"], perm=[1, 0, 2]),
              oh.make_node("MatMul", ["hs", "Wd"], ["hd"]),
              oh.make_node("Add", ["hd", "bd"], ["y"])]
    outs.insert(0, oh.make_tensor_value_info("y", TP.FLOAT, ["batch", "time", p["targets"]]))
    graph = oh.make_graph(nodes, "g", ins, outs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    model.metadata_props.add(key=STATE_KEY, value=json.dumps(state))
    return model


STATE_KEY = "lstm_edge.state"


def make_graph(p, meta=None, with_meta=True) -> bytes:
    """Contract graph bytes with the bare metadata (contract version and state), ``meta``
    added; ``with_meta=False``: a plain file with no metadata at all."""
    model = contract_model(p)
    state = next(q.value for q in model.metadata_props if q.key == STATE_KEY)
    props = {"lstm_edge.contract": "1", STATE_KEY: state, **(meta or {})} if with_meta else {}
    del model.metadata_props[:]
    oh.set_model_props(model, props)
    return model.SerializeToString()


def tiny_onnx(path: Path, *, window: int = 1, carry_state: bool = True, units: int = 4,
              seed: int = 0) -> Path:
    """A one-LSTM-layer contract file: x -> scaler -> LSTM -> Dense -> y, with the metadata
    the exporter writes (features, targets, window, parity, source), saved at ``path``.

    The LSTM is the fused ONNX operator with the contract's batch-first inputs and state, so
    the runtime cannot tell it from an exported Keras model.
    """
    rng = np.random.default_rng(seed)
    f, t, u = len(FEATURES), len(TARGETS), units
    drawn = [rng.normal(0, 0.5, (1, 4 * u, f)), rng.normal(0, 0.5, (1, 4 * u, u)),
             rng.normal(0, 0.1, (1, 8 * u)), rng.normal(0, 0.5, (u, t)), rng.normal(0, 0.1, (t,))]
    W, R, B, Wd, bd = (np.asarray(a, np.float32) for a in drawn)
    p = {"layers": [{"kind": "lstm", "units": u, "W": W, "R": R, "B": B}], "vocab": None,
         "features": f, "targets": t, "Wd": Wd, "bd": bd,
         "mean": np.full(f, 20.0, np.float32), "std": np.full(f, 5.0, np.float32)}
    model = contract_model(p)
    info = ModelInfo(state=(StateSpec.for_layer(0, "lstm", "lstm", u),), window=window,
                     carry_state=carry_state, features=FEATURES, targets=TARGETS,
                     parity={"max_abs_diff": 2.4e-7, "steps": 1000, "atol": 1e-5},
                     source={"file": "tiny.keras", "sha256": "ab" * 32})
    del model.metadata_props[:]
    oh.set_model_props(model, info.to_metadata())
    onnx.save(model, str(path))
    return path


def with_props(path: Path, **props: str) -> Path:
    """Set metadata entries of the file at ``path`` in place (``lstm_edge.`` is added)."""
    proto = onnx.load(str(path))
    merged = {p.key: p.value for p in proto.metadata_props}
    merged.update({f"lstm_edge.{k}": v for k, v in props.items()})
    del proto.metadata_props[:]
    oh.set_model_props(proto, merged)
    onnx.save(proto, str(path))
    return path


SLOTS = 3     # the state slots of :func:`slotted` files


def slotted(tmp_path: Path, window: int, mask: bool = False) -> Path:
    """A :func:`tiny_onnx` file with ``lstm_edge.state_slots`` = SLOTS (and a mask value)."""
    path = tiny_onnx(tmp_path / f"w{window}.onnx", window=window, carry_state=True)
    return with_props(path, state_slots=str(SLOTS),
                      **({"mask_value": "[0.0, 0.0]"} if mask else {}))


# ---- the stateful Keras tutorial (airline passengers) ------------------------------------

LOOK_BACK = 3


def create_dataset(dataset, look_back=1):
    """The tutorials' own helper (including its off-by-one: the last window is left out)."""
    x, y = [], []
    for i in range(len(dataset) - look_back - 1):
        x.append(dataset[i:i + look_back, 0])
        y.append(dataset[i + look_back, 0])
    return np.array(x), np.array(y)


def passengers():
    with open(DATA / "airline-passengers.csv") as f:
        return np.array([[float(r["passengers"])] for r in csv.DictReader(f)], np.float32)


# Raw passengers (~100-600) have a float32 ulp of 6e-5: diffs are compared divided by max - min.
SPAN = float(passengers().max() - passengers().min())


def reset_states(model):
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()


@functools.cache
def tutorial(batch_size: int):
    """Train the stateful tutorial model; returns (model, scaler, raw test series, testX).

    Trained once per batch size and shared (seeded, so the same as a fresh one): callers
    ``reset_states`` before they predict, and never train it further.
    """
    import keras

    dataset = passengers()                                   # (144, 1)
    low, high = dataset.min(), dataset.max()                 # MinMaxScaler(feature_range=(0, 1))
    scaled = (dataset - low) / (high - low)
    train_size = int(len(dataset) * 0.67)
    train, test = scaled[:train_size], scaled[train_size:]
    trainX, trainY = create_dataset(train, LOOK_BACK)
    testX, _ = create_dataset(test, LOOK_BACK)
    trainX = trainX.reshape(trainX.shape[0], trainX.shape[1], 1)   # (samples, timesteps, features)
    testX = testX.reshape(testX.shape[0], testX.shape[1], 1)
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input(batch_shape=(batch_size, LOOK_BACK, 1)),
                              keras.layers.LSTM(4, stateful=True), keras.layers.Dense(1)])
    model.compile(loss="mean_squared_error", optimizer="adam")
    for _ in range(3):
        model.fit(trainX, trainY, epochs=1, batch_size=batch_size, verbose=0, shuffle=False)
        reset_states(model)
    scaler = {"x": {"mean": [float(low)], "std": [float(high - low)]},
              "y": {"mean": [float(low)], "std": [float(high - low)]}}
    raw_test = dataset[train_size:]                          # (48, 1) passengers
    return model, scaler, raw_test, testX


# ---- the Flink integration's environment ------------------------------------------------

FLINK_VENV = ROOT / ".venv-flink"
FLINK_PY = FLINK_VENV / "bin" / "python"


def flink_unavailable() -> str | None:
    if shutil.which("java") is None:
        return ("Java is not installed; install it with: "
                "apt-get install -y openjdk-17-jre-headless")
    if not (FLINK_VENV / ".installed").exists():
        why = FLINK_VENV / ".unavailable"
        return (why.read_text().strip() if why.exists()
                else "the Flink environment .venv-flink is missing; make it with: make flink-env")
    return None


# ---- alerts: a model with intervals, and lines that raise them ----------------------------

SPREAD = {"readings": 6, "floor": [0.02], "prior": [0.3]}
Q = [[1.2], [1.6], [2.0], [3.0]]          # per level (0.8 .. 0.99), one output


def with_intervals(path: Path, scale: str = "mean-abs-change") -> Path:
    """The water-flow model with hand-written intervals."""
    proto = onnx.load(str(WATER_MODEL))
    props = {p.key: p.value for p in proto.metadata_props}
    iv = {"method": "split-conformal", "scale": scale, "levels": [0.8, 0.9, 0.95, 0.99],
          "q": Q, "n": 99, "source": "test", "target_features": [0]}
    if scale != "none":
        iv["spread"] = SPREAD
    props["lstm_edge.intervals"] = json.dumps(iv)
    del proto.metadata_props[:]
    oh.set_model_props(proto, props)
    onnx.save(proto, str(path))
    return path


def without_intervals(path: Path) -> Path:
    """The water-flow model with its calibrated intervals taken out, as a model trained
    elsewhere and exported without ``--calibrate`` is."""
    proto = onnx.load(str(WATER_MODEL))
    props = {p.key: p.value for p in proto.metadata_props if p.key != "lstm_edge.intervals"}
    del proto.metadata_props[:]
    oh.set_model_props(proto, props)
    onnx.save(proto, str(path))
    return path


FLOW = "Water flow [l/s]"
TRICKY = ["a", "\ud800", "\\ud800"]   # a lone surrogate (JSON "\ud800") and its escape as text


def alert_lines(rows: int = 40) -> list[str]:
    """Three sensors of water-flow readings as JSON lines: a spike, a stuck stretch, a
    replayed and a late line; one sensor named by a lone surrogate, one by its escaped text."""
    with open(ROOT / "data" / "water-flow.csv", newline="") as f:
        data = [float(r[1]) for r in list(csv.reader(f))[1:]]
    lines = []
    for i in range(rows):
        for k, s in enumerate(TRICKY):
            v = data[k * 40 + i] + (15.0 if s == "a" and 12 <= i < 16 else 0.0)
            v = 100.0 if s == "\\ud800" and 20 <= i < 26 else v
            lines.append(json.dumps({"sensor": s, "t": i, FLOW: v}))
    lines.insert(31, lines[30])                # delivered twice: a replay
    lines.insert(50, lines[40])                # older than its sensor's last: skipped
    return lines
