"""The runtime against hand-built contract graphs and an independent numpy reference.

No Keras here (see test_runtime_keras.py): each graph is built with ``onnx.helper`` per
docs/contract.md and checked against LSTM/GRU equations written out in numpy.
"""

import json
import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import runtime
from runtime import ContractError, DeviceError, InputError, ShapeError, SnapshotError
from runtime import device as rdevice

from helpers import make_graph, make_params

ATOL = 1e-5


# --- graphs and their numpy reference -------------------------------------------------------

def _sig(z):
    return 1 / (1 + np.exp(-z))


def ref_run(p, xs, state=None):
    """Numpy reference: feed ``xs`` (n, features) (or (n,) ids) one step at a time.

    Returns ys (n, targets) and the final state (list of (units,) arrays, contract order).
    """
    if state is None:
        state = []
        for layer in p["layers"]:
            state += [np.zeros(layer["units"])] * (2 if layer["kind"] == "lstm" else 1)
    state = [np.array(s, np.float64) for s in state]
    ys = []
    for x in xs:
        v = p["emb"][int(x)] if p["vocab"] else (np.asarray(x) - p["mean"]) / p["std"]
        k = 0
        for layer in p["layers"]:
            u, W, R, B = layer["units"], layer["W"][0], layer["R"][0], layer["B"][0]
            g = 4 if layer["kind"] == "lstm" else 3
            Wb, Rb = B[:g * u], B[g * u:]
            if layer["kind"] == "lstm":
                h, c = state[k], state[k + 1]
                z = W @ v + R @ h + Wb + Rb
                i, o, f, cc = z[:u], z[u:2 * u], z[2 * u:3 * u], z[3 * u:]
                c = _sig(f) * c + _sig(i) * np.tanh(cc)
                h = _sig(o) * np.tanh(c)
                state[k], state[k + 1] = h, c
                k += 2
            else:
                h = state[k]
                xw, hr = W @ v + Wb, R @ h + Rb
                zt = _sig(xw[:u] + hr[:u])
                rt = _sig(xw[u:2 * u] + hr[u:2 * u])
                ht = np.tanh(xw[2 * u:] + rt * hr[2 * u:])
                h = (1 - zt) * ht + zt * h
                state[k] = h
                k += 1
            v = h
        ys.append(v @ p["Wd"] + p["bd"])
    return np.array(ys), state


KINDS = {
    "lstm": dict(layers=[("lstm", 6)]),
    "gru": dict(layers=[("gru", 5)]),
    "stacked": dict(layers=[("lstm", 6), ("gru", 4)], targets=2),
    "embedding": dict(layers=[("lstm", 5)], vocab=11, features=1),
}


def data(p, n, seed=1):
    rng = np.random.default_rng(seed)
    if p["vocab"]:
        return rng.integers(0, p["vocab"], n)
    return (p["mean"] + rng.normal(size=(n, p["features"])) * p["std"]).astype(np.float32)


@pytest.fixture(scope="module", params=list(KINDS))
def kind(request):
    p = make_params(**KINDS[request.param])
    return request.param, p


def load_mode(p, mode, **kw):
    window, carry = {"sequence": (1, True), "window": (4, False), "stateful": (3, True)}[mode]
    return runtime.load(make_graph(p), device="cpu", window=window, carry_state=carry, **kw)


def expected(p, mode, xs, window):
    """What Keras would give, per the contract's modes, from the numpy reference."""
    if mode == "sequence":
        return ref_run(p, xs)[0]
    out, state = np.full((len(xs), p["targets"]), np.nan), None
    for t in range(window - 1, len(xs)):
        ys, new = ref_run(p, xs[t - window + 1:t + 1], state if mode == "stateful" else None)
        out[t] = ys[-1]
        if mode == "stateful":
            state = new
    return out


# --- parity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["sequence", "window", "stateful"])
def test_step_matches_reference(kind, mode):
    name, p = kind
    model = load_mode(p, mode)
    xs = data(p, 20)
    s = model.stream()
    got = np.array([np.full(p["targets"], np.nan) if (y := s.step(x)) is None else y
                    for x in xs])
    np.testing.assert_allclose(got, expected(p, mode, xs, model.window), atol=ATOL)
    assert s.steps == 20 and s.ready


@pytest.mark.parametrize("mode", ["sequence", "window", "stateful"])
def test_feed_matches_step(kind, mode):
    _, p = kind
    model = load_mode(p, mode)
    xs = data(p, 17)
    a, b = model.stream(), model.stream()
    stepped = np.array([np.full(p["targets"], np.nan) if (y := a.step(x)) is None else y
                        for x in xs])
    fed = np.concatenate([b.feed(xs[:2]), b.feed(xs[2:9]), b.feed(xs[9:])])
    np.testing.assert_allclose(fed, stepped, atol=ATOL)
    for k, v in a.state.items():
        np.testing.assert_allclose(b.state[k], v, atol=ATOL)
    np.testing.assert_array_equal(a.snapshot().buffer, b.snapshot().buffer)
    assert a.steps == b.steps


@pytest.mark.parametrize("mode", ["sequence", "window", "stateful"])
def test_many_streams_match_alone(kind, mode):
    _, p = kind
    model = load_mode(p, mode)
    together = [model.stream() for _ in range(6)]
    alone = [model.stream() for _ in range(6)]
    worst = 0.0
    for t in range(14):
        if t == 5:   # one leaves, one joins, one is reset
            together.pop(1); alone.pop(1)
            together.append(model.stream()); alone.append(model.stream())
            together[0].reset(); alone[0].reset()
        if t == 9:   # stepped alone between calls (leaves the group)
            x = data(p, 1, seed=t)[0]
            got, want = together[2].step(x), alone[2].step(x)
            assert (got is None) == (want is None)
            if want is not None:
                np.testing.assert_allclose(got, want, atol=ATOL)
        xs = data(p, len(together), seed=100 + t)
        got = model.step(together, xs)
        want = np.array([np.full(p["targets"], np.nan) if (y := s.step(x)) is None else y
                         for s, x in zip(alone, xs)])
        assert got.shape == (len(together), p["targets"]) and got.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        worst = max(worst, float(np.nanmax(np.abs(got - want), initial=0)))
    assert worst <= 1e-6
    for s, a in zip(together, alone):
        assert s.steps == a.steps
        for k, v in a.state.items():
            np.testing.assert_allclose(s.state[k], v, atol=1e-6)


@pytest.mark.parametrize("mode", ["sequence", "window", "stateful"])
def test_snapshot_restore_continues_bit_identically(kind, mode, tmp_path):
    _, p = kind
    model = load_mode(p, mode)
    xs = data(p, 16)
    a = model.stream()
    a.feed(xs[:7])
    snap = a.snapshot()
    snap.save(tmp_path / "s.npz")
    rest = a.feed(xs[7:])
    b = model.stream(runtime.Snapshot.load(tmp_path / "s.npz"))
    np.testing.assert_array_equal(b.feed(xs[7:]), rest)
    c = model.stream(tmp_path / "s.npz")            # a path works too
    np.testing.assert_array_equal(c.feed(xs[7:]), rest)


def test_snapshots_of_many_streams(tmp_path):
    p = make_params(**KINDS["lstm"])
    model = load_mode(p, "stateful")
    streams = {f"sensor-{i}": model.stream() for i in range(3)}
    for i, s in enumerate(streams.values()):
        s.feed(data(p, 3 + i, seed=i))
    path = runtime.save_snapshots(tmp_path / "all.npz", {k: s.snapshot() for k, s in streams.items()})
    assert not [f for f in tmp_path.iterdir() if f.name != "all.npz"]   # no temp file left
    loaded = runtime.load_snapshots(path)
    assert list(loaded) == list(streams)
    x = data(p, 1, seed=9)
    for key, s in streams.items():
        np.testing.assert_array_equal(model.stream(loaded[key]).feed(x), s.feed(x))
    with pytest.raises(SnapshotError, match="3 streams"):
        runtime.Snapshot.load(path)


def _snapshot():
    return load_mode(make_params(**KINDS["lstm"]), "sequence").stream().snapshot()


def test_snapshot_write_failures_are_snapshot_errors(tmp_path):
    snap = _snapshot()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SnapshotError, match=r"file/s\.npz: .*file is a file, not a folder"):
        runtime.save_snapshots(tmp_path / "file" / "s.npz", {"a": snap})
    with pytest.raises(SnapshotError, match="cannot write the snapshot file .*another path"):
        runtime.save_snapshots(tmp_path, {"a": snap})               # a folder is in the way
    good = snap.save(tmp_path / "good.npz")
    before = good.read_bytes()
    with pytest.raises(SnapshotError):
        runtime.save_snapshots(good / "x.npz", {"a": snap})
    assert good.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["file", "good.npz"]   # no temp left


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_saved_snapshot_mode_follows_the_umask(tmp_path):
    snap = _snapshot()
    old = os.umask(0o027)
    try:
        path = snap.save(tmp_path / "s.npz")
        assert path.stat().st_mode & 0o777 == 0o640                # 0666 less the umask
        os.umask(0o022)
        assert snap.save(tmp_path / "t.npz").stat().st_mode & 0o777 == 0o644
        path.chmod(0o600)
        assert snap.save(path).stat().st_mode & 0o777 == 0o600      # a replaced file keeps it
    finally:
        os.umask(old)


def test_unreadable_snapshot_files_are_snapshot_errors(tmp_path):
    good = _snapshot().save(tmp_path / "good.npz").read_bytes()
    bad = {"truncated.npz": good[:len(good) // 2], "random.npz": np.random.default_rng(0)
           .bytes(400), "empty.npz": b""}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    np.save(tmp_path / "array.npy", np.arange(3))
    np.savez(tmp_path / "other.npz", a=np.arange(3))
    for name in [*bad, "array.npy", "other.npz"]:
        with pytest.raises(SnapshotError, match=f"{name} is not a snapshot file .*delete it"):
            runtime.load_snapshots(tmp_path / name)
    with pytest.raises(SnapshotError, match="cannot read the snapshot file"):
        runtime.load_snapshots(tmp_path)
    with pytest.raises(SnapshotError, match="no snapshot file at"):
        runtime.load_snapshots(tmp_path / "missing.npz")


def test_snapshot_for_another_model_is_refused():
    p = make_params(**KINDS["lstm"])
    snap = load_mode(p, "sequence").stream().snapshot()
    other = runtime.load(make_graph(make_params(**KINDS["lstm"], seed=3)), device="cpu")
    with pytest.raises(SnapshotError, match="another model"):
        other.stream(snap)
    with pytest.raises(SnapshotError, match="window="):
        load_mode(p, "window").stream(snap)


def test_io_binding_runner_matches_host():
    """The CUDA path's binding and buffer swapping, exercised with CPU OrtValues."""
    p = make_params(**KINDS["stacked"])
    host, bound = load_mode(p, "stateful"), load_mode(p, "stateful", io_binding=True)
    assert bound._runner.bound
    xs = data(p, 12)
    a, b = host.stream(), bound.stream()
    np.testing.assert_allclose(b.feed(xs[:6]), a.feed(xs[:6]), atol=1e-6)
    for x in xs[6:]:
        np.testing.assert_allclose(b.step(x), a.step(x), atol=1e-6)
    np.testing.assert_allclose(bound.step([b], xs[:1]), host.step([a], xs[:1]), atol=1e-6)
    np.testing.assert_allclose(b.step(xs[0]), a.step(xs[0]), atol=1e-6)
    np.testing.assert_allclose(b.snapshot().state["in_h1"], a.snapshot().state["in_h1"], atol=1e-6)


# --- the step binding: a single stream's hot path -------------------------------------------

def host_calls(model, xs, state):
    """The reference for the step binding: one call through the HostRunner (numpy in, out).

    ``xs`` ``(n, features)`` checked samples from ``state``; returns (y ``(n, targets)``,
    new state).
    """
    x = xs[None]                                            # (1, n, features)
    if model.tokens:
        x = x[..., 0].astype(model.dtype)                   # (1, n) ids
    y, new = model._host.run(x, state)
    return y[0], tuple(new)


def host_steps(model, xs):
    """What ``step`` gives, each window a HostRunner call; returns (ys, the state carried)."""
    state, ys, w = model.zeros(1), [], model.window
    for t in range(len(xs)):
        if t + 1 < w:
            ys.append(None)
            continue
        y, new = host_calls(model, xs[t + 1 - w:t + 1], state)
        state = new if model.carry_state else state
        ys.append(y[-1])
    return ys, state


def assert_state(stream, state):
    for name, value in zip(stream.model.state_inputs, state):
        np.testing.assert_array_equal(stream.state[name], value[0])


@pytest.mark.parametrize("io_binding", [False, True], ids=["host", "bound"])
@pytest.mark.parametrize("mode", ["sequence", "window", "stateful"])
def test_step_binding_equals_the_host_runner_bit_for_bit(kind, mode, io_binding):
    """Samples written in place into x are what ORT reads; y and the state land in the
    bound buffers; the result is the HostRunner's to the bit."""
    _, p = kind
    model = load_mode(p, mode, io_binding=io_binding)
    xs = model._check_chunk(data(p, 15))
    s = model.stream()
    got = [s.step(x) for x in xs]
    want, state = host_steps(model, xs)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g, w)
    bind = s._bind
    if model.carry_state:
        assert s._state is bind.sets[0] or s._state is bind.sets[1]   # the fast path ran
    np.testing.assert_array_equal(bind.last, want[-1])
    assert not np.shares_memory(got[-1], bind.last)         # a step returns a copy
    assert_state(s, state)
    twin = model.stream(s.snapshot())
    window = np.concatenate((xs[len(xs) + 1 - model.window:], xs[:1]))   # after one more step
    y, _ = host_calls(model, window, state)
    np.testing.assert_array_equal(twin.step(xs[0]), y[-1])
    np.testing.assert_array_equal(s.step(xs[0]), y[-1])


@pytest.mark.parametrize("io_binding", [False, True], ids=["host", "bound"])
def test_step_binding_syncs_with_every_other_path(kind, io_binding):
    """Steps between feed, many-stream calls, snapshots and reset: the HostRunner's bits."""
    _, p = kind
    model = load_mode(p, "sequence", io_binding=io_binding)
    xs = model._check_chunk(data(p, 20))
    s, state = model.stream(), model.zeros(1)

    def step(i):
        nonlocal state
        y, state = host_calls(model, xs[i:i + 1], state)
        np.testing.assert_array_equal(s.step(xs[i]), y[0])

    for i in range(3):
        step(i)
    y, state = host_calls(model, xs[3:7], state)
    np.testing.assert_array_equal(s.feed(xs[3:7]), y)
    step(7)
    for i in (8, 9):                                        # a group of one, then its fast path
        y, state = host_calls(model, xs[i:i + 1], state)
        np.testing.assert_array_equal(model.step([s], xs[i:i + 1])[0], y[0])
    step(10)                                                # leaves the group
    assert_state(s, state)
    twin = model.stream(s.snapshot())
    step(11)
    np.testing.assert_array_equal(twin.step(xs[11]), s._bind.last)
    s.reset()
    state = model.zeros(1)
    step(12)
    assert s.steps == 1


class _FailLate:
    """An ORT call that writes its outputs and then raises, the worst moment to fail."""

    def __init__(self, call):
        self.call = call

    def __call__(self):
        self.call()
        raise RuntimeError("ORT failed after writing")


@pytest.mark.parametrize("io_binding", [False, True], ids=["host", "bound"])
@pytest.mark.parametrize("before", ["steps", "feed", "reset", "window mode"])
def test_a_failed_bound_step_leaves_the_stream_as_it_was(io_binding, before):
    p = make_params(**KINDS["stacked"])
    mode = "window" if before == "window mode" else "sequence"
    model = load_mode(p, mode, io_binding=io_binding)
    xs = data(p, 8)
    s, twin = model.stream(), model.stream()
    for x in xs[:5]:
        s.step(x), twin.step(x)
    if before == "feed":                                   # the state is not in a set
        s.feed(xs[5:6]), twin.feed(xs[5:6])
    elif before == "reset":
        s.reset(), twin.reset()
    frozen, calls = _frozen(s), s._bind.calls
    s._bind.calls = tuple(_FailLate(c) for c in calls)
    with pytest.raises(RuntimeError, match="after writing"):
        s.step(xs[6])
    _assert_same(frozen, _frozen(s))
    s._bind.calls = calls
    for x in xs[6:]:
        np.testing.assert_array_equal(s.step(x), twin.step(x))


@pytest.mark.parametrize("as_given", [np.float32, np.float64, list], ids=["f32", "f64", "list"])
def test_steps_of_every_reading_type_match_the_reference_and_each_other(as_given):
    """float arrays take the step's short path (``Stream._step_hot``), lists the full one;
    a NaN, a value beyond float32 and a state restored from elsewhere fall back mid-stream."""
    p = make_params(**KINDS["stacked"])
    model = load_mode(p, "sequence", missing="hold")
    xs = data(p, 12).astype(np.float64)
    xs[4, 1] = np.nan                                     # held: the last value is fed
    s = model.stream()
    ys = [s.step(as_given(x) if as_given is list else x.astype(as_given)) for x in xs[:8]]
    s.restore(s.snapshot())                        # its state copied: no longer in a set
    ys += [s.step(as_given(x) if as_given is list else x.astype(as_given)) for x in xs[8:]]
    held = xs.copy()
    held[4, 1] = held[3, 1]
    np.testing.assert_allclose(np.array(ys), ref_run(p, held.astype(np.float32))[0], atol=ATOL)
    with pytest.raises(InputError, match="inf"):
        s.step(np.full(p["features"], 1e300))
    assert s.steps == 12


def test_token_ids_past_the_vocabulary_leave_a_stateful_chunk_undone():
    """The chunk's steps write the binding's two sets in turn; the rollback must not care."""
    p = make_params(**KINDS["embedding"])
    model = load_mode(p, "stateful")
    s, twin = model.stream(), model.stream()
    s.feed(data(p, 5)), twin.feed(data(p, 5))
    frozen = _frozen(s)
    with pytest.raises(InputError, match="vocabulary"):
        s.feed([1, 2, 3, 4, 99, 5])
    _assert_same(frozen, _frozen(s))
    np.testing.assert_array_equal(s.feed([1, 2, 3]), twin.feed([1, 2, 3]))


def test_many_stream_calls_make_no_step_bindings():
    """4,096 streams stepped together cost no IO bindings; a stream makes one on its own step."""
    p = make_params(**KINDS["lstm"])
    model = load_mode(p, "sequence")
    streams = [model.stream() for _ in range(4096)]
    for t in range(3):
        model.step(streams, data(p, 4096, seed=t))
    streams[0].snapshot(), streams[1].state, streams[2].reset(), streams[3].feed(data(p, 3))
    assert all(s._bind is None for s in streams)
    streams[5].step(data(p, 1)[0])
    assert [i for i, s in enumerate(streams) if s._bind is not None] == [5]


class _PublicOnly:
    """A session through its public API only, as on an ORT build without ``_sess``."""

    def __init__(self, session):
        self._session = session

    def __getattr__(self, name):
        if name == "_sess":
            raise AttributeError(name)
        return getattr(self._session, name)


@pytest.mark.parametrize("io_binding", [False, True], ids=["host", "bound"])
def test_public_ort_calls_are_the_fallback(io_binding):
    p = make_params(**KINDS["stacked"])
    fast = load_mode(p, "sequence", io_binding=io_binding)
    session = rdevice.new_session(make_graph(p), ["CPUExecutionProvider"],
                                  rdevice.SessionConfig().options())
    slow = runtime.Model(_PublicOnly(session), "cpu", fast.fingerprint, window=1,
                         carry_state=True, io_binding=io_binding)
    xs = data(p, 8)
    a, b = fast.stream(), slow.stream()
    for x in xs[:5]:
        np.testing.assert_array_equal(b.step(x), a.step(x))
    np.testing.assert_array_equal(b.feed(xs[5:]), a.feed(xs[5:]))


# --- the contract ---------------------------------------------------------------------------

def test_metadata_is_read_and_modes_follow_it():
    p = make_params(**KINDS["lstm"])
    meta = {"lstm_edge.window": "5", "lstm_edge.carry_state": "false",
            "lstm_edge.features": '["temp", "flow"]', "lstm_edge.targets": '["flow"]'}
    model = runtime.load(make_graph(p, meta), device="cpu")
    assert (model.window, model.carry_state, model.mode) == (5, False, "window")
    assert model.features == ("temp", "flow") and model.targets == ("flow",)
    assert model.info.state[0].inputs == ("in_h0", "in_c0")
    assert runtime.load(make_graph(p, meta), device="cpu", window=1, carry_state=True).mode == "sequence"


def test_plain_file_without_metadata_runs_with_defaults():
    p = make_params(**KINDS["stacked"])
    model = runtime.load(make_graph(p, with_meta=False), device="cpu")
    assert model.mode == "sequence" and model.features == ("x0", "x1")
    assert [(s.kind, s.units) for s in model.info.state] == [("lstm", 6), ("rnn", 4)]
    xs = data(p, 5)
    np.testing.assert_allclose(model.stream().feed(xs), ref_run(p, xs)[0], atol=ATOL)


def test_state_mismatch_is_refused_by_name():
    p = make_params(**KINDS["gru"])
    wrong = [{"layer": "l", "kind": "lstm", "units": 5, "inputs": ["in_h0", "in_c0"],
              "outputs": ["out_h0", "out_c0"]}]
    with pytest.raises(ContractError, match="in_c0"):
        runtime.load(make_graph(p, {"lstm_edge.state": json.dumps(wrong)}), device="cpu")
    units = [{"layer": "l", "kind": "gru", "units": 7, "inputs": ["in_h0"], "outputs": ["out_h0"]}]
    with pytest.raises(ContractError, match="5 units in the graph, 7"):
        runtime.load(make_graph(p, {"lstm_edge.state": json.dumps(units)}), device="cpu")


@pytest.mark.parametrize("what", ["truncated", "random", "empty"])
def test_corrupt_model_file_is_a_contract_error(tmp_path, what):
    good = make_graph(make_params(**KINDS["lstm"]))
    data = {"truncated": good[:len(good) // 2], "random": np.random.default_rng(1).bytes(700),
            "empty": b""}[what]
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    with pytest.raises(ContractError, match=f"{path} is not an ONNX model .*re-export .*lstm-export"):
        runtime.load(path, device="cpu")
    with pytest.raises(ContractError, match="truncated or corrupt"):
        runtime.load(data, device="auto")


def test_corrupt_model_is_not_blamed_on_cuda(monkeypatch, tmp_path):
    """A CUDA session that fails on a bad file is the file's fault: a CPU session fails too."""
    real = rdevice.new_session

    def new_session(model, providers, options):
        if any(isinstance(q, tuple) for q in providers):
            return real(model, [rdevice.CPU], options)   # stands in for a CUDA attempt
        return real(model, providers, options)

    monkeypatch.setattr(rdevice, "cuda_library_problem", lambda: None)
    monkeypatch.setattr(rdevice, "new_session", new_session)
    (tmp_path / "m.onnx").write_bytes(make_graph(make_params(**KINDS["lstm"]))[:300])
    with pytest.raises(ContractError, match="m.onnx is not an ONNX model"):
        runtime.load(tmp_path / "m.onnx", device="cuda")
    with pytest.raises(DeviceError, match="fell back"):               # a good file: the device
        runtime.load(make_graph(make_params(**KINDS["lstm"])), device="cuda")


# --- bad input leaves the stream as it was --------------------------------------------------

def _frozen(stream):
    snap = stream.snapshot()
    return snap.steps, snap.buffer.copy(), {k: v.copy() for k, v in snap.state.items()}


def _assert_same(a, b):
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    for k in a[2]:
        np.testing.assert_array_equal(a[2][k], b[2][k])


BAD = {
    "too few features": ([1.0], ShapeError, r"expected \(features,\) = \(2,\), got \(1,\)"),
    "a row, not a reading": ([[1.0, 2.0]], ShapeError, r"\(features,\)"),
    "strings": (["1.0", "2.0"], InputError, "must hold numbers"),
    "None": ([1.0, None], InputError, "must hold numbers"),
    "NaN": ([1.0, np.nan], InputError, "NaN"),
    "inf": ([np.inf, 1.0], InputError, "inf"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("mode", ["sequence", "stateful"])
def test_bad_sample_is_refused_and_state_unchanged(case, mode):
    p = make_params(**KINDS["lstm"])
    model = load_mode(p, mode)
    s = model.stream()
    s.feed(data(p, 4))
    before = _frozen(s)
    sample, error, match = BAD[case]
    with pytest.raises(error, match=match):
        s.step(sample)
    _assert_same(before, _frozen(s))
    with pytest.raises((InputError, ShapeError)):
        s.feed([data(p, 1)[0], sample] if case not in ("a row, not a reading",) else [[[1, 2]]])
    _assert_same(before, _frozen(s))
    others = [model.stream() for _ in range(2)]
    with pytest.raises((InputError, ShapeError)):
        model.step([s, *others], [data(p, 1)[0], sample, data(p, 1)[0]]
                   if case not in ("a row, not a reading",) else [[[1, 2]]] * 3)
    _assert_same(before, _frozen(s))
    assert all(o.steps == 0 for o in others)
    with pytest.raises(error):
        model.validate(sample)


@pytest.mark.parametrize("mode", ["sequence", "window"])
def test_inf_and_nan_raise_no_numpy_warning(mode):
    """The finite check must not make numpy warn (inf * 0), whatever the warning filters."""
    p = make_params(**KINDS["lstm"])
    model = load_mode(p, mode, missing="skip")
    s = model.stream()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for bad in ([np.inf, 1.0], [-np.inf, np.inf], [np.nan, np.inf]):
            with pytest.raises(InputError, match="inf"):
                s.step(bad)
            with pytest.raises(InputError, match="inf"):
                s.feed([bad])
            with pytest.raises(InputError, match="inf"):
                model.step([s], [bad])
            with pytest.raises(InputError, match="inf"):
                model.validate(bad)
            with pytest.raises(InputError, match="inf"):
                model.validate(np.array(bad))          # a parsed line's float64 reading
        with pytest.raises(InputError, match="inf"):
            model.validate(np.array([1e39, 1.0]))      # beyond float32: inf there, refused
        assert s.step([np.nan, 1.0]) is None
        s.step([3e38, -3e38])                                   # huge but finite: fed
        checked = model.validate(np.array([3e38, -0.1]))
        assert checked.dtype == np.float32 and checked.tolist() == np.float32([3e38, -0.1]).tolist()


def test_wrong_feature_count_in_a_chunk_is_explained():
    model = load_mode(make_params(**KINDS["lstm"]), "sequence")
    with pytest.raises(ShapeError, match=r"\(readings, features\) = \(n, 2\), got \(5, 3\)"):
        model.stream().feed(np.zeros((5, 3)))


def test_token_ids_are_checked():
    p = make_params(**KINDS["embedding"])
    s = load_mode(p, "sequence").stream()
    s.step(3)
    before = _frozen(s)
    for bad, match in ((-1, "0 or more"), (2.5, "whole numbers"), (99, "vocabulary")):
        with pytest.raises(InputError, match=match):
            s.step(bad)
        _assert_same(before, _frozen(s))
    assert s.step(np.float64(4.0)) is not None


def test_missing_values_skip_and_hold():
    p = make_params(**KINDS["lstm"])
    model = load_mode(p, "sequence", missing="skip")
    xs = data(p, 6)
    holes = xs.copy()
    holes[2] = np.nan
    holes[4, 1] = np.nan
    skip = model.stream()
    out = skip.feed(holes)
    assert np.isnan(out[[2, 4]]).all() and skip.steps == 4
    np.testing.assert_allclose(out[[0, 1, 3, 5]], ref_run(p, xs[[0, 1, 3, 5]])[0], atol=ATOL)
    assert model.stream().step([np.nan, np.nan]) is None

    hold = model.stream(missing="hold")
    filled = xs.copy()
    filled[2] = filled[1]
    filled[4, 1] = filled[3, 1]
    stepped = np.array([hold.step(x) for x in holes])
    np.testing.assert_allclose(stepped, ref_run(p, filled)[0], atol=ATOL)
    np.testing.assert_allclose(model.stream(missing="hold").feed(holes), stepped, atol=ATOL)
    assert model.stream(missing="hold").step([np.nan, 1.0]) is None   # nothing to hold yet

    both = [model.stream(missing="skip"), model.stream(missing="hold")]
    both[1].step(xs[0])
    ys = model.step(both, [[np.nan, 1.0], [np.nan, 1.0]])
    assert np.isnan(ys[0]).all() and not np.isnan(ys[1]).any()
    with pytest.raises(InputError, match="NaN"):
        model.step([model.stream(missing="error")], [[np.nan, 1.0]])


def test_many_streams_refuse_duplicates_and_strangers():
    p = make_params(**KINDS["lstm"])
    model, other = load_mode(p, "sequence"), load_mode(p, "sequence")
    s = model.stream()
    with pytest.raises(InputError, match="twice"):
        model.step([s, s], data(p, 2))
    with pytest.raises(InputError, match="another model"):
        model.step([s, other.stream()], data(p, 2))
    with pytest.raises(ShapeError):
        model.step([s], data(p, 2))


# --- devices --------------------------------------------------------------------------------

def test_auto_falls_back_to_cpu_and_says_so(caplog):
    p = make_params(**KINDS["lstm"])
    if rdevice.cuda_library_problem() is None and not _cuda_works():
        pass  # CUDA libraries load but no GPU: the session itself falls back
    with caplog.at_level(logging.INFO, logger="runtime"):
        model = runtime.load(make_graph(p), device="auto")
    if not _cuda_works():
        assert model.device == "cpu"
        assert any("runs on cpu" in r.getMessage() for r in caplog.records)


def test_explicit_cuda_without_cuda_is_a_clear_error():
    if _cuda_works():
        pytest.skip("CUDA works here")
    with pytest.raises(DeviceError, match="cannot run"):
        runtime.load(make_graph(make_params(**KINDS["lstm"])), device="cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        runtime.load(make_graph(make_params(**KINDS["lstm"])), device="tpu")


class _FakeSession:
    def __init__(self, providers):
        self.providers = providers

    def get_providers(self):
        return self.providers


@pytest.mark.parametrize("really, want", [(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda:1"),
                                          (["CPUExecutionProvider"], "cpu")])
def test_auto_trusts_only_the_session(monkeypatch, really, want):
    """onnxruntime-gpu lists CUDA even where it cannot start: only get_providers() counts."""
    made = []

    def fake(model, providers, options):
        made.append(providers)
        wants_cuda = any(isinstance(q, tuple) for q in providers)
        return _FakeSession(really if wants_cuda else ["CPUExecutionProvider"])

    monkeypatch.setattr(rdevice, "available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(rdevice, "cuda_library_problem", lambda: None)
    monkeypatch.setattr(rdevice, "new_session", fake)
    _, where = rdevice.create_session(b"", "cuda:1" if want != "cpu" else "auto")
    assert where == want
    assert made[0][0] == ("CUDAExecutionProvider", {"device_id": 1 if want != "cpu" else 0})
    if want == "cpu":
        with pytest.raises(DeviceError, match="fell back"):
            rdevice.create_session(b"", "cuda")


def test_cpu_sessions_default_to_one_thread():
    options = rdevice.SessionConfig().options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert not options.enable_cpu_mem_arena       # malloc beats the arena on a step's tensors
    assert rdevice.SessionConfig(threads=4).options().intra_op_num_threads == 4


def _cuda_works():
    return rdevice.cuda_library_problem() is None and "CUDAExecutionProvider" in \
        _probe_providers()


def _probe_providers():
    try:
        session, _ = rdevice.create_session(make_graph(make_params(**KINDS["lstm"])), "cuda")
        return session.get_providers()
    except DeviceError:
        return []


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not _cuda_works():
        pytest.skip("no working CUDA execution provider")
    p = make_params(**KINDS["stacked"])
    cpu = load_mode(p, "stateful")
    gpu = runtime.load(make_graph(p), device="cuda", window=3, carry_state=True)
    assert gpu.device.startswith("cuda") and gpu._runner.bound
    xs = data(p, 30)
    a, b = cpu.stream(), gpu.stream()
    np.testing.assert_allclose(b.feed(xs), a.feed(xs), atol=1e-5)
    streams = [gpu.stream() for _ in range(64)]
    alone = [cpu.stream() for _ in range(64)]
    for t in range(5):
        x = data(p, 64, seed=t)
        np.testing.assert_allclose(gpu.step(streams, x),
                                   np.array([np.full(2, np.nan) if (y := s.step(v)) is None else y
                                             for s, v in zip(alone, x)]), atol=1e-5)


# --- the edge install -----------------------------------------------------------------------

def test_import_runtime_leaves_tensorflow_out():
    code = ("import sys, runtime; bad = [m for m in ('tensorflow', 'keras', 'trainer', 'onnx') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
