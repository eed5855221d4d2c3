"""The exporter: every supported model kind exports, holds to the contract and matches Keras.

Parity's independent reference is Keras itself (trainer.parity drives onnxruntime directly);
here each kind is also checked for onnx.checker, the fused-operator rule and its metadata.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

keras = pytest.importorskip("keras")
L = keras.layers

from runtime.contract import ModelInfo  # noqa: E402
from trainer.errors import ExportError, ParityError  # noqa: E402
from trainer.export import ExportReport, export, to_onnx  # noqa: E402
from trainer.graph import check_fused, op_counts  # noqa: E402

STEPS = 200  # the 1,000-step default runs once, in test_default_check_runs_1000_steps
SCALER = {"x": {"mean": [700.0, 20.0, -5.0], "std": [100.0, 2.0, 0.5]},
          "y": {"mean": [650.0], "std": [80.0]}}
META_KEYS = {"contract", "state", "window", "carry_state", "features", "targets", "horizon",
             "parity", "source"}


def seq(*layers, shape=(None, 3), **kw):
    return keras.Sequential([keras.Input(shape, **kw), *layers])


def functional():
    x = keras.Input((None, 3))
    h = L.GRU(5, return_sequences=True)(x)
    return keras.Model(x, L.Dense(1)(L.Dropout(0.1)(h)))


# kind -> (builder, number of recurrent layers, expected (window, carry_state))
KINDS = {
    "lstm": (lambda: seq(L.LSTM(6, return_sequences=True), L.Dense(1)), 1, (1, True)),
    "lstm_hard_sigmoid": (lambda: seq(L.LSTM(6, recurrent_activation="hard_sigmoid"),
                                      L.Dense(1), shape=(12, 3)), 1, (12, False)),
    "lstm_relu": (lambda: seq(L.LSTM(5, activation="relu", return_sequences=True),
                              L.Dense(1)), 1, (1, True)),
    "lstm_no_bias": (lambda: seq(L.LSTM(5, use_bias=False, return_sequences=True),
                                 L.Dense(1)), 1, (1, True)),
    "gru_reset_after": (lambda: seq(L.GRU(6, return_sequences=True), L.Dense(1)), 1, (1, True)),
    "gru_reset_before": (lambda: seq(L.GRU(6, reset_after=False, return_sequences=True),
                                     L.Dense(1)), 1, (1, True)),
    "simple_rnn": (lambda: seq(L.SimpleRNN(6, return_sequences=True), L.Dense(1)), 1, (1, True)),
    "stacked_last_step": (lambda: seq(L.LSTM(6, return_sequences=True), L.Dropout(0.2),
                                      L.GRU(4), L.Dense(1), shape=(8, 3)), 2, (8, False)),
    "stateful": (lambda: seq(L.LSTM(5, stateful=True), L.Dense(1), shape=(6, 3),
                             batch_size=2), 1, (6, True)),
    "embedding": (lambda: seq(L.Embedding(20, 4), L.LSTM(5, return_sequences=True),
                              L.Dense(1), shape=(None,)), 1, (1, True)),
    "time_distributed": (lambda: seq(L.LSTM(6, return_sequences=True),
                                     L.TimeDistributed(L.Dense(4)), L.Activation("relu"),
                                     L.Dense(1)), 1, (1, True)),
    "head_with_activation": (lambda: seq(L.SimpleRNN(4, return_sequences=True),
                                         L.Dense(1, activation="sigmoid")), 1, (1, True)),
    "functional": (functional, 1, (1, True)),
    "masking": (lambda: seq(L.Masking(-1.0), L.LSTM(5, return_sequences=True), L.Dense(1)),
                1, (1, True)),
    "norm_layers": (lambda: seq(L.LSTM(6, return_sequences=True), L.LayerNormalization(),
                                L.BatchNormalization(), L.Dense(1)), 1, (1, True)),
    # Not in the table: converted by tf2onnx (trainer.traced).
    "traced_layer": (lambda: seq(L.GRU(6, return_sequences=True), L.UnitNormalization(),
                                 L.Dense(1)), 1, (1, True)),
    "traced_activation": (lambda: seq(L.LSTM(5, return_sequences=True),
                                      L.Dense(3, activation=lambda x: x * keras.ops.sigmoid(
                                          1.5 * x)), L.Dense(1)), 1, (1, True)),
}


def build(kind, seed=0):
    keras.utils.set_random_seed(seed)
    return KINDS[kind][0]()


def scaler_for(model):
    """The CO2-like scaler for float models (one target), none for token-id models."""
    return None if isinstance(model.layers[0], L.Embedding) else SCALER


def fused_nodes(proto):
    return [n.op_type for n in proto.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """kind -> ExportReport, each kind exported once with the parity check."""
    out, reports = tmp_path_factory.mktemp("exported"), {}

    def get(kind):
        if kind not in reports:
            model = build(kind)
            reports[kind] = export(model, out / f"{kind}.onnx", scaler=scaler_for(model),
                                   steps=STEPS)
        return reports[kind]

    return get


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kind_exports_to_the_contract_and_matches_keras(kind, exported):
    report = exported(kind)
    _, recurrent, (window, carry) = KINDS[kind]
    proto = onnx.load(report.path)
    onnx.checker.check_model(proto, full_check=True)
    assert len(fused_nodes(proto)) == recurrent
    assert not {"Loop", "Scan", "If"} & set(report.op_counts)
    assert proto.ir_version <= 13 and proto.opset_import[0].version == 17

    props = {p.key: p.value for p in proto.metadata_props}
    assert {"lstm_edge." + k for k in META_KEYS} <= set(props)
    info = ModelInfo.from_metadata(props)
    assert (info.window, info.carry_state) == (window, carry)
    assert len(info.state) == recurrent
    names = [i.name for i in proto.graph.input]
    assert names == ["x"] + [n for s in info.state for n in s.inputs]
    assert [o.name for o in proto.graph.output] == ["y"] + [n for s in info.state
                                                           for n in s.outputs]
    assert info.parity["units"] == ("normalised" if info.scaler else "raw")
    # The check ran the way the file will stream (trainer.parity).
    assert info.parity["mode"] == info.streaming_mode
    if info.streaming_mode == "sequence":
        assert info.parity["steps"] == STEPS
    else:
        assert info.parity["steps"] == window and info.parity["windows"] >= 16
    for name in ["y", "chunk_vs_steps"] + [n for s in info.state for n in s.outputs]:
        assert report.parity["per_output"][name] <= 1e-4, name
    assert report.parity["max_abs_diff"] <= 1e-4
    if (window, carry) == (window, False) and window > 1:
        assert report.parity["per_output"]["window_vs_predict"] <= 1e-4
    if kind == "stateful":
        assert report.parity["per_output"]["stateful_vs_predict"] <= 1e-4


def test_default_check_runs_1000_steps(tmp_path):
    report = export(build("lstm"), tmp_path / "m.onnx", scaler=SCALER)
    assert report.parity["steps"] == 1000 and report.parity["streams"] >= 3
    assert report.parity["mode"] == "sequence" and report.parity["max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_saved_file_with_sidecar(tmp_path, suffix):
    """A saved model exports from its path; the trainer's sidecar gives scaler, names, mode."""
    model = build("stacked_last_step")
    path = tmp_path / f"co2{suffix}"
    model.save(path)
    sidecar = {"format": "lstm-edge.training/1", "features": ["co2", "temp", "rh"],
               "targets": ["co2"], "scaler": SCALER, "mode": "stateful", "look_back": 8,
               "horizon": 3, "metrics": {}}
    (tmp_path / "co2.lstm-edge.json").write_text(json.dumps(sidecar))
    report = export(path, tmp_path / "out" / "co2.onnx", steps=STEPS)
    info = report.info
    assert report.path.exists() and report.size_bytes == report.path.stat().st_size
    assert info.features == ("co2", "temp", "rh") and info.targets == ("co2",)
    assert (info.window, info.carry_state, info.horizon) == (8, True, 3)
    assert info.scaler == SCALER
    assert info.source["file"] == path.name and len(info.source["sha256"]) == 64

    # Raw units in, raw units out: the scaler is in the graph.
    rng = np.random.default_rng(1)
    raw = (rng.normal(size=(2, 30, 3)) * SCALER["x"]["std"] + SCALER["x"]["mean"]).astype("f4")
    norm = ((raw - SCALER["x"]["mean"]) / SCALER["x"]["std"]).astype("f4")
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    zeros = {i.name: np.zeros((2, i.shape[1]), "f4")
             for i in session.get_inputs()[1:]}
    y = session.run(["y"], {"x": raw, **zeros})[0]
    expected = model.predict(norm, verbose=0) * 80.0 + 650.0            # (batch, 1)
    np.testing.assert_allclose(y[:, -1], expected, atol=80 * 1e-4)


def test_overrides_beat_inference(tmp_path):
    model = build("lstm")
    _, info = to_onnx(model, window=24, carry_state=False, features="a,b,c", targets=["t"])
    assert (info.window, info.carry_state, info.streaming_mode) == (24, False, "window")
    assert info.features == ("a", "b", "c") and info.targets == ("t",)


def test_scaler_file_may_be_just_x_and_y(tmp_path):
    path = tmp_path / "scaler.json"
    path.write_text(json.dumps(SCALER))
    _, info = to_onnx(build("lstm"), scaler=path)
    assert info.scaler == SCALER


def test_large_mean_over_std_is_not_folded():
    """|mean/std| above the fold limit is applied by Sub/Div, exactly."""
    scaler = {"x": {"mean": [101325.0, 0.0, 0.0], "std": [10.0, 1.0, 1.0]}}
    proto, _ = to_onnx(build("lstm"), scaler=scaler)
    assert {"Sub", "Div"} <= set(op_counts(proto))
    proto, _ = to_onnx(build("lstm"), scaler=SCALER)
    assert not {"Sub", "Div", "Mul"} & set(op_counts(proto))  # folded into the weights


def test_float32_resolution_of_raw_y_is_allowed_for(tmp_path):
    """101325 Pa with std 10: one float32 ulp of raw y is 8e-4 normalised, above atol."""
    scaler = {"x": {"mean": [101325.0, 0.0, 0.0], "std": [10.0, 1.0, 1.0]},
              "y": {"mean": [101325.0], "std": [10.0]}}
    report = export(build("lstm"), tmp_path / "p.onnx", scaler=scaler, steps=STEPS)
    assert report.parity["resolution"] == pytest.approx(np.spacing(np.float32(101325)) / 10,
                                                        rel=0.5)
    assert report.parity["max_abs_diff"] <= 1e-4 + report.parity["resolution"]
    assert report.parity["per_output"]["out_c0"] <= 1e-4


def test_two_layer_64_unit_lstm_graph_is_lean():
    model = seq(L.LSTM(64, return_sequences=True), L.LSTM(64), L.Dense(1), shape=(24, 3))
    proto, _ = to_onnx(model, scaler=SCALER)
    assert op_counts(proto) == {"Squeeze": 6, "Unsqueeze": 4, "Transpose": 2, "LSTM": 2,
                                "MatMul": 1, "Add": 1}


@pytest.mark.parametrize("opset", [13, 18])
def test_opsets_load_in_onnxruntime(opset):
    proto, _ = to_onnx(build("gru_reset_after"), opset=opset)
    assert proto.opset_import[0].version == opset
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": np.zeros((1, 5, 3), "f4"), "in_h0": np.zeros((1, 6), "f4")})
    assert y[0].shape == (1, 5, 1)


def test_masking_becomes_metadata_in_raw_units():
    model = seq(L.Masking(0.0), L.LSTM(4, return_sequences=True), L.Dense(1))
    _, info = to_onnx(model, scaler=SCALER)
    assert json.loads(info.extra["mask_value"]) == [700.0, 20.0, -5.0]


# --------------------------------------------------------------------------- refusals

def two_inputs():
    a, b = keras.Input((None, 2)), keras.Input((None, 2))
    return keras.Model([a, b], L.LSTM(3)(L.Concatenate()([a, b])))


REFUSALS = {
    "bidirectional": (lambda: seq(L.Bidirectional(L.LSTM(4)), L.Dense(1)), "bidirectional"),
    "go_backwards": (lambda: seq(L.LSTM(4, go_backwards=True), L.Dense(1)), "go_backwards"),
    "two_inputs": (two_inputs, "2 inputs"),
    "no_recurrent": (lambda: seq(L.Dense(4), L.Dense(1)), "no recurrent layer"),
    "conv1d": (lambda: seq(L.Conv1D(4, 3), L.LSTM(4), L.Dense(1)), "conv1d"),
    "causal_conv1d": (lambda: seq(L.Conv1D(4, 3, padding="causal"), L.LSTM(4)), "buffer"),
    # A window model (fixed time axis) with these layers exports whole (test_export_windows).
    "flatten": (lambda: seq(L.LSTM(4, return_sequences=True), L.GlobalMaxPooling1D(),
                            L.Dense(1)), "maximum over the whole time axis.*fixed window"),
    "repeat_vector": (lambda: seq(L.LSTM(4), L.RepeatVector(3), L.LSTM(2)), "repeat_vector"),
    "masking_late": (lambda: seq(L.LSTM(4, return_sequences=True), L.Masking(),
                                 L.LSTM(2)), "masking"),
    "time_mixing_lambda": (lambda: seq(L.LSTM(4, return_sequences=True),
                                       L.Lambda(lambda x: keras.ops.cumsum(x, axis=1))),
                           "mixes time steps"),
}


@pytest.mark.parametrize("kind", sorted(REFUSALS))
def test_refusals_name_the_layer(kind, tmp_path):
    builder, words = REFUSALS[kind]
    keras.utils.set_random_seed(0)
    with pytest.raises(ExportError, match="(?i)" + words) as err:
        export(builder(), tmp_path / "m.onnx", steps=10)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "m.onnx").exists()


def test_parity_failure_writes_nothing(tmp_path):
    with pytest.raises(ParityError, match="max abs diff") as err:
        export(build("lstm"), tmp_path / "m.onnx", steps=20, atol=1e-12)
    assert "y:" in str(err.value) and err.value.exit_code == 1
    assert not list(tmp_path.iterdir())


def test_fused_rule_refuses_a_loop():
    proto, _ = to_onnx(build("lstm"))
    check_fused(proto, 1)
    proto.graph.node.append(onnx.helper.make_node("Loop", ["a", "b"], ["c"], name="loop"))
    with pytest.raises(ExportError, match="Loop"):
        check_fused(proto, 1)
    with pytest.raises(ExportError, match="fused"):
        check_fused(to_onnx(build("lstm"))[0], 2)


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    (b"not a model", "corrupt or truncated"),
    ("truncate", "corrupt or truncated|cannot be read"),
])
def test_bad_files(tmp_path, content, words):
    path = tmp_path / "m.keras"
    if content == "truncate":
        build("lstm").save(path)
        path.write_bytes(path.read_bytes()[:-200])
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ExportError, match=words):
        to_onnx(path)


def test_not_a_keras_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ExportError, match="not a Keras file"):
        to_onnx(path)


@pytest.mark.parametrize("opset", [12, 19])
def test_opset_out_of_range(opset):
    with pytest.raises(ExportError, match=f"opset {opset} is out of range"):
        to_onnx(build("lstm"), opset=opset)


def test_report_summary_says_everything(exported):
    report = exported("stateful")
    assert isinstance(report, ExportReport)
    text = report.summary()
    for words in ("in_h0", "out_c0", "stateful (window=6, carry_state=true, state_slots=2)",
                  "carried from window to window in 2 slots", "parity:", "lstm",
                  "LSTM 1", "KiB", "x float32[batch, time, 3]"):
        assert words in text


def test_state_difference_is_relative_where_the_state_is_large():
    from trainer.parity import _state_diff

    ref = np.array([[0.5, 70.0]])                 # h-like, and an LSTM cell state grown large
    assert _state_diff(ref + [[1e-5, 7e-5]], ref) == pytest.approx(1e-5)
    assert _state_diff(ref + [[0.0, 0.7]], ref) == pytest.approx(0.01)
