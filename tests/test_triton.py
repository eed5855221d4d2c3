"""Triton model repositories: the config is Triton's own ModelConfig, matches the graph, and
the graph fed the way Triton's implicit state feeds it gives the runtime's predictions.

No Triton server runs here (no ONNX Runtime backend is installable). The config is parsed
with protobuf's text_format into ``ModelConfig`` from ``tritonclient``; the cross-check
applies the ONNX Runtime backend's and the sequence batcher's load-time rules; and
:class:`ImplicitState` plays the sequence batcher (oldest strategy): a zero state at START,
each output state fed back as the sequence's next input state, several sequences batched per
call, never two requests of one sequence in one call, sequences joining and leaving.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format

import runtime
from integrations.triton import TritonError, TritonOptions
from integrations.triton.repository import write_repository

keras = pytest.importorskip("keras")     # with it come grpcio, which tritonclient.grpc imports
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
L = keras.layers

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "exported" / "water-flow.onnx"
F, W = 2, 5
TOL = 1e-6
# Triton data types and what the graph holds for each
ONNX_OF = {"TYPE_FP32": onnx.TensorProto.FLOAT, "TYPE_INT64": onnx.TensorProto.INT64,
           "TYPE_BOOL": onnx.TensorProto.BOOL}
NP_OF = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64, "TYPE_BOOL": np.bool_}

RECURRENT = {
    "lstm": lambda seq: [L.LSTM(6, return_sequences=seq)],
    "gru": lambda seq: [L.GRU(5, return_sequences=seq)],
    "stacked": lambda seq: [L.LSTM(6, return_sequences=True), L.GRU(4, return_sequences=seq)],
}
MODES = ("sequence", "window", "stateful")


def build(kind, mode):
    """A tiny Keras model trained the way ``mode`` streams it (untrained weights suffice)."""
    keras.utils.set_random_seed(0)
    sequence = mode == "sequence"
    return keras.Sequential([keras.Input((None if sequence else W, F)),
                             *RECURRENT[kind](sequence), L.Dense(1)])


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """(kind, mode) -> (exported .onnx, TritonReport), each exported once with trainer.export."""
    from trainer.export import export

    out, made = tmp_path_factory.mktemp("triton"), {}

    def get(kind, mode):
        if (kind, mode) not in made:
            path = out / f"{kind}_{mode}.onnx"
            export(build(kind, mode), path, steps=50,
                   carry_state=True if mode == "stateful" else None)
            made[kind, mode] = (path, write_repository(path, out / "models"))
        return made[kind, mode]

    return get


def parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def read_repository(folder: Path):
    """The parsed config and an ORT session of the repository's model."""
    config = parse((folder / "config.pbtxt").read_text())
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    return config, session


def name_of(value):
    return model_config_pb2.DataType.Name(value)


def dims_of(shape):
    """An ORT shape without its batch axis, -1 for a dynamic axis."""
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


# --------------------------------------------------------------------------- the config

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_config_is_tritons_model_config_and_matches_the_graph(kind, mode, repository):
    _, report = repository(kind, mode)
    config, session = read_repository(report.folder)
    graph_in = {i.name: i for i in session.get_inputs()}
    graph_out = {o.name: o for o in session.get_outputs()}
    onnx_types = {v.name: v.type.tensor_type.elem_type for v in
                  [*onnx.load(report.folder / "1" / "model.onnx").graph.input,
                   *onnx.load(report.folder / "1" / "model.onnx").graph.output]}

    assert config.name == report.folder.name and config.backend == "onnxruntime"
    assert config.max_batch_size > 0
    assert config.WhichOneof("scheduling_choice") == "sequence_batching"
    batching = config.sequence_batching
    assert batching.WhichOneof("strategy_choice") == "oldest"
    assert batching.oldest.max_candidate_sequences > 0
    assert batching.max_sequence_idle_microseconds > 0

    # Every tensor is batch first with a dynamic batch axis (max_batch_size > 0).
    for value in [*graph_in.values(), *graph_out.values()]:
        assert not isinstance(value.shape[0], int), value.name
    # Config inputs/outputs: names, dtypes and dims (without batch) as in the graph.
    for tensor, graph in [*((t, graph_in) for t in config.input),
                          *((t, graph_out) for t in config.output)]:
        assert tensor.name in graph, tensor.name
        assert list(tensor.dims) == dims_of(graph[tensor.name].shape), tensor.name
        assert ONNX_OF[name_of(tensor.data_type)] == onnx_types[tensor.name]
    # Each state: an input/output pair of the graph, same dims without batch, same dtype,
    # one named zero initial state of those dims (the sequence batcher's load-time rules).
    assert len(batching.state) > 0
    for state in batching.state:
        assert state.input_name in graph_in and state.output_name in graph_out
        want = dims_of(graph_in[state.input_name].shape)
        assert list(state.dims) == want == dims_of(graph_out[state.output_name].shape)
        assert -1 not in want
        kind_ = name_of(state.data_type)
        assert ONNX_OF[kind_] == onnx_types[state.input_name] == onnx_types[state.output_name]
        assert len(state.initial_state) == 1
        initial = state.initial_state[0]
        assert initial.WhichOneof("state_data") == "zero_data" and initial.name
        assert initial.data_type == state.data_type and list(initial.dims) == want
    # Every graph input is fed by an input, a state or a control, and nothing else is
    # declared (the backend counts them: inputs + controls + states == graph inputs).
    controls = [c.name for c in batching.control_input]
    fed = [t.name for t in config.input] + [s.input_name for s in batching.state] + controls
    assert sorted(fed) == sorted(graph_in)
    assert controls == []   # the contract's graphs take no control tensors
    assert [t.name for t in config.output][0] == "y"


@pytest.mark.parametrize("good, typo", [
    ("max_batch_size:", "max_batch_sise:"),
    ("data_type: TYPE_FP32", "data_type: TYPE_FP23"),
    ("zero_data: true", "zero_dta: true"),
    ("max_candidate_sequences:", "max_candidate_sequence:"),
    ("input_name:", "input_nme:"),
    ('backend: "onnxruntime"', "backend: onnxruntime"),
    ("  state [", "  state [["),
])
def test_a_typo_fails_to_parse(good, typo, repository):
    _, report = repository("lstm", "sequence")
    text = report.config
    assert good in text
    parse(text)
    with pytest.raises(text_format.ParseError):
        parse(text.replace(good, typo, 1))


def test_options_reach_the_config(tmp_path):
    options = TritonOptions(name="flow", max_batch_size=64, max_candidate_sequences=5000,
                            max_queue_delay_us=250, idle_seconds=90, instance_kind="gpu",
                            instances=2)
    report = write_repository(DEMO, tmp_path, options)
    config = parse((tmp_path / "flow" / "config.pbtxt").read_text())
    assert report.folder == tmp_path / "flow"
    assert config.max_batch_size == 64
    assert config.sequence_batching.oldest.max_candidate_sequences == 5000
    assert config.sequence_batching.oldest.max_queue_delay_microseconds == 250
    assert config.sequence_batching.max_sequence_idle_microseconds == 90_000_000
    group, = config.instance_group
    assert name_of_kind(group.kind) == "KIND_GPU" and group.count == 2
    assert not parse(write_repository(DEMO, tmp_path).config).instance_group   # auto: Triton's


def name_of_kind(value):
    return model_config_pb2.ModelInstanceGroup.Kind.Name(value)


# --------------------------------------------------------------------------- the simulation

class ImplicitState:
    """Triton's sequence batcher with implicit state, oldest strategy, over ONNX Runtime."""

    def __init__(self, folder: Path):
        self.config, self.session = read_repository(folder)
        self.states = {}                                   # sequence id -> {input: (1, ...)}
        self.names = [o.name for o in self.session.get_outputs()]

    def call(self, requests):
        """``requests``: (sequence id, x (1, time, F), start, end); returns {id: outputs}."""
        ids = [r[0] for r in requests]
        assert len(set(ids)) == len(ids) <= self.config.max_batch_size
        for seq, _, start, _ in requests:
            if start:                                      # initial_state { zero_data }
                self.states[seq] = {s.input_name: np.zeros([1, *s.dims],
                                                           NP_OF[name_of(s.data_type)])
                                    for s in self.config.sequence_batching.state}
            assert seq in self.states, "a request of an unknown sequence: Triton refuses it"
        feed = {"x": np.concatenate([r[1] for r in requests])}
        for state in self.config.sequence_batching.state:
            feed[state.input_name] = np.concatenate([self.states[s][state.input_name]
                                                     for s in ids])
        out = dict(zip(self.names, self.session.run(None, feed)))
        answers = {}
        for row, (seq, _, _, end) in enumerate(requests):
            answers[seq] = {o.name: out[o.name][row:row + 1] for o in self.config.output}
            self.states[seq] = {s.input_name: out[s.output_name][row:row + 1]
                                for s in self.config.sequence_batching.state}
            if end:
                del self.states[seq]
        return answers


def schedule(n_sensors=6, n_calls=40, seed=0):
    """Which sensors send a reading at each call: staggered joins, leaves, one comeback."""
    rng = np.random.default_rng(seed)
    joins = rng.integers(0, n_calls // 3, n_sensors)
    leaves = joins + rng.integers(n_calls // 3, n_calls, n_sensors)
    calls = []
    for t in range(n_calls):
        live = [s for s in range(n_sensors) if joins[s] <= t <= leaves[s] and rng.random() < .8]
        calls.append(live)
    return calls, joins, leaves


def simulate(folder: Path, exported: Path, *, chunks=(1,), seed=0):
    """Serve several sensors through :class:`ImplicitState` and compare with the runtime.

    Returns the largest |Triton - runtime| over every prediction, and how many there were.
    """
    triton = ImplicitState(folder)
    model = runtime.load(exported, device="cpu")
    variant = "warmup" in [o.name for o in triton.config.output]
    calls, joins, leaves = schedule(seed=seed)
    rng = np.random.default_rng(seed + 1)
    x_scaler = (model.info.scaler or {}).get("x", {})       # readings of a realistic size
    scale = np.asarray(x_scaler.get("std", [1.0] * model.n_features))
    centre = np.asarray(x_scaler.get("mean", [0.0] * model.n_features))
    streams, started, worst, compared, restarted = {}, set(), 0.0, 0, False
    widest = max(len(live) for live in calls)
    assert widest >= 3 and len(set(joins)) > 1          # batched calls; staggered joins
    for t, live in enumerate(calls):
        time = int(rng.choice(chunks))                     # one shape per call: no ragged batch
        requests = []
        for s in live:
            start = s not in started
            if not start and not restarted and t > leaves[s] - 3:
                start, restarted = True, True              # a sensor starts over (reset)
            if start:
                streams[s], _ = model.stream(), started.add(s)
            end = t == leaves[s]
            x = (rng.normal(size=(1, time, model.n_features)) * scale + centre).astype(np.float32)
            requests.append((s, x, start, end))
        if not requests:
            continue
        answers = triton.call(requests)
        for s, x, _, end in requests:
            got = answers[s]
            want = streams[s].feed(x[0])                   # (time, targets), NaN while warming
            if variant:
                assert got["warmup"].shape == (1, 1)
                assert bool(got["warmup"][0, 0]) == bool(np.isnan(want).all())
            np.testing.assert_array_equal(np.isnan(got["y"][0]), np.isnan(want))
            ready = ~np.isnan(want)
            if ready.any():
                worst = max(worst, float(np.abs(got["y"][0][ready] - want[ready]).max()))
                compared += int(ready.sum())
            if end:
                started.discard(s)
    assert restarted
    return worst, compared


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(RECURRENT))
def test_triton_implicit_state_matches_the_runtime_per_sensor(kind, mode, repository):
    exported, report = repository(kind, mode)
    chunks = (1, 3) if mode == "sequence" else (1,)
    worst, compared = simulate(report.folder, exported, chunks=chunks)
    print(f"{kind} {mode}: {compared} predictions, max |triton - runtime| {worst:.2e}")
    assert compared > 50
    assert worst <= TOL


def test_demo_model_served_as_triton_would(tmp_path):
    report = write_repository(DEMO, tmp_path)
    worst, compared = simulate(report.folder, DEMO, chunks=(1, 4))
    print(f"demo water-flow: {compared} predictions, max |triton - runtime| {worst:.2e}")
    assert report.served.mode == "sequence" and compared > 50 and worst <= TOL
    # Sequence mode serves the exported graph unchanged inside the guard (test_triton_missing):
    # the same inputs and outputs, every node and weight of the file as it is.
    served, exported = onnx.load(report.folder / "1" / "model.onnx"), onnx.load(DEMO)
    assert [v.SerializeToString() for v in served.graph.input] == \
        [v.SerializeToString() for v in exported.graph.input]
    assert [v.SerializeToString() for v in served.graph.output] == \
        [v.SerializeToString() for v in exported.graph.output]
    bodies = {n.SerializeToString() for n in served.graph.node}
    renamed = {"y", *(o.name for o in exported.graph.output)}    # their producers feed the guard
    assert all(n.SerializeToString() in bodies for n in exported.graph.node
               if not set(n.output) & renamed)
    weights = {i.name: i.SerializeToString() for i in served.graph.initializer}
    assert all(weights[i.name] == i.SerializeToString() for i in exported.graph.initializer)


def test_window_variant_is_refused_by_the_runtime(repository):
    """The variant is for Triton only: the project's runtime says so rather than misrun it."""
    _, report = repository("lstm", "window")
    with pytest.raises(runtime.ContractError, match="in_window"):
        runtime.load(report.folder / "1" / "model.onnx", device="cpu")


def test_a_variant_file_is_served_as_it_is(repository, tmp_path):
    _, report = repository("stacked", "stateful")
    again = write_repository(report.folder / "1" / "model.onnx", tmp_path,
                             TritonOptions(name=report.name))
    assert again.config.replace("from model.onnx", "") == \
        report.config.replace(f"from {report.name}.onnx", "")


# --------------------------------------------------------------------------- refusals

def _with_meta(path: Path, tmp_path: Path, **meta) -> Path:
    proto = onnx.load(path)
    for key, value in meta.items():
        onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                            f"lstm_edge.{key}": value})
    out = tmp_path / "changed.onnx"
    onnx.save(proto, out)
    return out


@pytest.mark.parametrize("meta, words", [
    ({"mask_value": "[0.0]"}, "Masking layer"),
])
def test_refusals_say_why_and_what_to_do(meta, words, tmp_path):
    with pytest.raises(TritonError, match=words) as err:
        write_repository(_with_meta(DEMO, tmp_path, **meta), tmp_path / "models")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "models").exists()


def test_unknown_state_kind_in_window_mode_is_refused(repository, tmp_path):
    exported, _ = repository("lstm", "window")
    proto = onnx.load(exported)
    props = {p.key: p.value for p in proto.metadata_props}
    changed = _with_meta(exported, tmp_path,
                         state=props["lstm_edge.state"].replace('"lstm"', '"prev"'))
    with pytest.raises(TritonError, match="prev state.*sequence mode"):
        write_repository(changed, tmp_path / "models")


# --------------------------------------------------------------------------- the commands

def run(*args, env=None):
    return subprocess.run([sys.executable, "-c", "from integrations.triton.cli import triton_main; "
                           "triton_main()", *args], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("unbuffered", ["1", None])
def test_lstm_triton_writes_the_repository_without_tensorflow(tmp_path, unbuffered):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    done = run(str(DEMO), "-o", str(tmp_path), "--name", "flow", env=env)
    assert done.returncode == 0, done.stderr
    assert "tritonserver --model-repository" in done.stdout
    parse((tmp_path / "flow" / "config.pbtxt").read_text())
    probe = subprocess.run([sys.executable, "-c", "import sys, integrations.triton.cli, "
                            "integrations.triton.repository; print(sorted({m.split('.')[0] "
                            "for m in sys.modules} & {'tensorflow', 'keras', 'trainer'}))"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "[]", probe.stderr


@pytest.mark.parametrize("args, words", [
    (["{bad}"], "cannot be read as an ONNX file"),
    (["{demo}", "--name", "a/b"], "not a plain folder name"),
    (["{demo}", "--max-batch-size", "0"], "0 is not in the range"),
    (["{plain}"], "the graph has no input 'x' (it has a): give a file written by lstm-export"),
])
def test_lstm_triton_bad_input_is_one_line_and_exit_2(tmp_path, args, words):
    bad, plain = tmp_path / "bad.onnx", tmp_path / "plain.onnx"
    bad.write_bytes(b"not onnx")
    h, f32 = onnx.helper, onnx.TensorProto.FLOAT
    onnx.save(h.make_model(h.make_graph([h.make_node("Identity", ["a"], ["b"])], "g",
                                        [h.make_tensor_value_info("a", f32, ["n", 3])],
                                        [h.make_tensor_value_info("b", f32, ["n", 3])]),
                           opset_imports=[h.make_opsetid("", 17)], ir_version=8), plain)
    args = [a.format(bad=bad, demo=DEMO, plain=plain) for a in args]
    done = run(*args, "-o", str(tmp_path / "models"))
    assert done.returncode == 2 and words in done.stderr
    assert "Traceback" not in done.stderr


def test_lstm_triton_refuses_what_lstm_run_refuses(tmp_path):
    """A custom-op domain ONNX Runtime cannot load: both commands say so, nothing is written."""
    proto = onnx.load(DEMO)
    proto.graph.node.append(onnx.helper.make_node("Mystery", ["x"], ["unused"],
                                                  domain="com.example"))
    proto.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    custom = tmp_path / "custom.onnx"
    onnx.save(proto, custom)
    lstm_run = subprocess.run([sys.executable, "-m", "runtime.cli", str(custom)], input="1\n",
                              capture_output=True, text=True, timeout=120, cwd=ROOT)
    done = run(str(custom), "-o", str(tmp_path / "models"))
    assert lstm_run.returncode == 2 and "Mystery" in lstm_run.stderr, lstm_run.stderr
    assert done.returncode == 2 and "lstm-run refuses this file" in done.stderr, done.stderr
    assert "Mystery" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "models").exists()


def test_lstm_export_triton_option(tmp_path):
    from click.testing import CliRunner
    from trainer.cli import export_main

    path = tmp_path / "m.keras"
    build("gru", "window").save(path)
    result = CliRunner().invoke(export_main, [str(path), "-o", str(tmp_path / "m.onnx"),
                                              "--steps", "20", "--triton", str(tmp_path / "tr")])
    assert result.exit_code == 0, result.output
    assert "warm-up: the first 4 readings" in result.output
    config = parse((tmp_path / "tr" / "m" / "config.pbtxt").read_text())
    assert [s.input_name for s in config.sequence_batching.state] == ["in_window", "in_count"]


@pytest.mark.parametrize("carry_state", [False, True])
def test_token_id_window_models_are_served_too(carry_state, tmp_path):
    """x of token ids ``(batch, time)`` int64: the window buffer holds ids."""
    from trainer.export import export

    keras.utils.set_random_seed(0)
    path = tmp_path / "tokens.onnx"
    export(keras.Sequential([keras.Input((W,), dtype="int32"), L.Embedding(10, 3), L.LSTM(5),
                             L.Dense(1)]), path, steps=30, carry_state=carry_state)
    report = write_repository(path, tmp_path / "models")
    triton, model = ImplicitState(report.folder), runtime.load(path, device="cpu")
    assert [name_of(s.data_type) for s in triton.config.sequence_batching.state][0] == "TYPE_INT64"
    rng, streams, worst, compared = np.random.default_rng(0), {}, 0.0, 0
    for t in range(3 * W):
        live = [1, 2] if t < W else [1, 2, 3]              # sensor 3 joins late
        ids = {s: rng.integers(0, 10, (1, 1)) for s in live}
        starts = {s: s not in streams for s in live}
        for s in live:
            streams.setdefault(s, model.stream())
        answers = triton.call([(s, ids[s], starts[s], False) for s in live])
        for s in live:
            want, got = streams[s].step(ids[s][0]), answers[s]
            assert bool(got["warmup"][0, 0]) == (want is None)
            if want is not None:
                worst = max(worst, float(np.abs(got["y"][0, -1] - want).max()))
                compared += 1
    assert compared == 2 * (2 * W + 1) + (W + 1) and worst <= TOL
