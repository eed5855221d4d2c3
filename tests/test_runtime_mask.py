"""Masking: Keras models with a ``Masking`` layer, exported and streamed, against Keras itself.

Keras 3 skips a masked step (every feature equal to the mask value) in every recurrent layer:
the state is untouched and the output repeats the previous step's. The exporter writes the
mask in raw units (``lstm_edge.mask_value``); the runtime must not feed masked samples, in
every path: ``Stream.step``, ``Stream.feed`` and ``Model.step`` (see ``Model``, "Masking").

Keras gives the head of a zero output where nothing unmasked came before (a sequence that
starts masked, a window of masked samples only); the runtime answers it too, from the file's
``lstm_edge.mask_answer`` (tests/test_masking_answers.py holds those answers to Keras).
"""

import numpy as np
import pytest

import runtime

keras = pytest.importorskip("keras")
export = pytest.importorskip("trainer.export")

ATOL = 1e-4
N, F, LOOK_BACK = 30, 2, 5
SCALER = {"x": {"mean": [12.5, -3.0], "std": [4.0, 0.25]}, "y": {"mean": [100.0], "std": [20.0]}}
# Masked rows: at the start, a run in the middle, single ones, the end.
MASKED = [0, 1, 7, 8, 9, 15, 22, 29]


def _export(model, path, scaler=None):
    export.export(model, path, scaler=scaler, steps=100)
    return runtime.load(path, device="cpu")


def _sequences(n_seq, seed, masked=MASKED):
    """``(n_seq, N, F)`` normalised inputs with the masked rows set to the mask value 0."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(n_seq, N, F)).astype(np.float32)
    for k in range(n_seq):
        xs[k, [(t + 3 * k) % N for t in masked]] = 0.0     # each stream masked elsewhere
    return xs


def _raw(xs, scaler):
    """What the runtime is fed: raw units, computed the way a user would (float32)."""
    if scaler is None:
        return xs
    return (xs * np.float32(SCALER["x"]["std"]) + np.float32(SCALER["x"]["mean"])).astype(np.float32)


def _keras_raw(y, scaler):
    return y if scaler is None else y * SCALER["y"]["std"][0] + SCALER["y"]["mean"][0]


def _lead(xs):
    """How many masked rows a sequence starts with (Keras: head of zeros there)."""
    return int(np.argmin((xs == 0).all(axis=-1)))


def _report(name, got, want):
    ok = ~np.isnan(got)
    diff = float(np.abs(got[ok] - want[ok]).max())
    print(f"{name}: max abs diff {diff:.2e} over {int(ok.sum())} predictions")
    return diff


# --- sequence mode --------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["no scaler", "scaler"])
def sequence(request, tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, F)), keras.layers.Masking(mask_value=0.0),
                              keras.layers.LSTM(6, return_sequences=True),
                              keras.layers.Dense(1)])
    scaler = SCALER if request.param == "scaler" else None
    rt = _export(model, tmp_path_factory.mktemp("seq") / "m.onnx", scaler)
    xs = _sequences(4, seed=1)
    want = _keras_raw(model.predict(xs, verbose=0), scaler)       # (4, N, 1)
    return request.param, rt, _raw(xs, scaler), want, [_lead(x) for x in xs]


def test_sequence_mask_is_read_in_raw_units(sequence):
    name, rt, raw, _, _ = sequence
    assert rt.mode == "sequence"
    want = [0.0, 0.0] if name == "no scaler" else SCALER["x"]["mean"]
    np.testing.assert_allclose(rt.mask_value, want)


def test_sequence_step_matches_keras(sequence):
    name, rt, raw, want, lead = sequence
    s = rt.stream()
    got = np.array([s.step(x) for x in raw[0]])                    # Keras's answer throughout
    assert lead[0] > 0
    assert _report(f"mask {name} step", got, want[0]) <= ATOL * (20 if name == "scaler" else 1)
    np.testing.assert_allclose(got, want[0], rtol=1e-5,
                               atol=ATOL * (20 if name == "scaler" else 1))
    masked = (raw[0] == raw[0][0]).all(axis=1)
    assert s.steps == int((~masked).sum())                         # masked samples are not fed


def test_sequence_feed_matches_keras(sequence):
    name, rt, raw, want, lead = sequence
    tol = ATOL * (20 if name == "scaler" else 1)
    got = rt.stream().feed(raw[0])
    np.testing.assert_allclose(got, want[0], atol=tol)             # the masked lead too
    s = rt.stream()   # chunks that start and end on masked rows carry the last prediction over
    chunked = np.concatenate([s.feed(raw[0][a:b]) for a, b in
                              ((0, 1), (1, 8), (8, 9), (9, 16), (16, 22), (22, N))])
    np.testing.assert_array_equal(np.isnan(chunked), np.isnan(got))
    np.testing.assert_allclose(chunked, got, atol=1e-6)
    stepped = rt.stream()
    for x in raw[0]:
        stepped.step(x)
    for k, v in stepped.state.items():
        np.testing.assert_allclose(s.state[k], v, atol=1e-6)


def test_sequence_many_streams_match_keras(sequence):
    name, rt, raw, want, lead = sequence
    tol = ATOL * (20 if name == "scaler" else 1)
    streams = [rt.stream() for _ in raw]
    got = np.stack([rt.step(streams, raw[:, t]) for t in range(N)], axis=1)   # (4, N, 1)
    np.testing.assert_allclose(got, want, atol=tol)
    _report(f"mask {name} many streams", got, want)
    alone = rt.stream()
    np.testing.assert_allclose(np.array([np.nan if (y := alone.step(x)) is None else y[0]
                                         for x in raw[0]]), got[0, :, 0], atol=1e-6)


def test_sequence_snapshot_keeps_the_prediction_a_masked_step_repeats(sequence, tmp_path):
    _, rt, raw, _, _ = sequence
    s = rt.stream()
    s.feed(raw[0][:7])                                             # row 7 is masked
    runtime.save_snapshots(tmp_path / "s.npz", {"a": s.snapshot()})
    back = rt.stream(runtime.Snapshot.load(tmp_path / "s.npz"))
    np.testing.assert_array_equal(back.step(raw[0][7]), s.step(raw[0][7]))
    np.testing.assert_array_equal(back.feed(raw[0][8:]), s.feed(raw[0][8:]))


def test_mask_matches_within_float32_rounding_only(sequence):
    """Raw mask = mask * std + mean: a few float32 steps off still match; 0 alone is exact."""
    name, rt, raw, _, _ = sequence
    mask = np.asarray(rt.mask_value, np.float32)                   # (features,)
    s = rt.stream()
    first = s.step(raw[0][3])
    np.testing.assert_array_equal(s.step(mask), first)             # masked: previous repeats
    assert s.steps == 1
    near = np.nextafter(mask, np.float32(np.inf))                  # one float32 step away
    if name == "scaler":
        np.testing.assert_array_equal(s.step(near), first)
        np.testing.assert_array_equal(s.step(mask + mask * np.float32(4e-7)), first)
        assert s.steps == 1
    else:                                                          # Keras: 0 != 1e-45
        assert s.step(near) is not None and s.steps == 2
    before = s.steps
    s.step(mask + np.float32(1e-3) * (np.abs(mask) + 1))           # clearly off: fed
    half = mask.copy()
    half[1] += 1                                                   # one feature only: fed
    s.step(half)
    assert s.steps == before + 2


# --- window and stateful modes --------------------------------------------------------------

@pytest.fixture(scope="module")
def window(tmp_path_factory):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((LOOK_BACK, F)), keras.layers.Masking(mask_value=0.0),
                              keras.layers.LSTM(6), keras.layers.Dense(1)])
    path = tmp_path_factory.mktemp("win") / "m.onnx"
    rt = _export(model, path, SCALER)
    rt.path = path   # for loading it again with other settings
    # Windows with masked samples at the start, middle and end, and one of masked only.
    xs = _sequences(3, seed=2, masked=MASKED + [10, 11, 12, 13, 14])
    windows = np.stack([x[t - LOOK_BACK + 1:t + 1] for x in xs
                        for t in range(LOOK_BACK - 1, N)])        # (3 * r, LOOK_BACK, F)
    want = _keras_raw(model.predict(windows, verbose=0), SCALER).reshape(3, -1)   # (3, r)
    empty = (windows == 0).all(axis=(1, 2)).reshape(3, -1)       # masked windows only
    assert empty.any() and (~empty).any()
    return rt, _raw(xs, SCALER), want, empty


def _check_windows(name, got, want, empty):
    """Runtime (n, N) against Keras (n, r): warm-up NaN, else equal (masked-only windows too)."""
    assert np.isnan(got[:, :LOOK_BACK - 1]).all()
    got = got[:, LOOK_BACK - 1:]
    np.testing.assert_allclose(got[empty], want[empty], atol=ATOL * 20)
    np.testing.assert_allclose(got, want, atol=ATOL * 20)
    _report(name, got, want)


def test_window_step_matches_keras_predict_per_window(window):
    rt, raw, want, empty = window
    assert (rt.mode, rt.window) == ("window", LOOK_BACK)
    got = []
    for seq in raw:
        s = rt.stream()
        got.append([np.nan if (y := s.step(x)) is None else y[0] for x in seq])
        assert s.steps == N                                        # masked samples fill windows
    _check_windows("mask window step", np.array(got), want, empty)


def test_window_feed_matches_keras(window):
    rt, raw, want, empty = window
    whole = np.stack([rt.stream().feed(seq)[:, 0] for seq in raw])
    _check_windows("mask window feed", whole, want, empty)
    chunked = []
    for seq in raw:
        s = rt.stream()
        chunked.append(np.concatenate([s.feed(seq[a:b]) for a, b in ((0, 3), (3, 11), (11, N))]))
    np.testing.assert_allclose(np.array(chunked)[..., 0], whole, atol=1e-6)


def test_window_many_streams_match_keras(window):
    rt, raw, want, empty = window
    streams = [rt.stream() for _ in raw]
    got = np.stack([rt.step(streams, raw[:, t])[:, 0] for t in range(N)], axis=1)
    _check_windows("mask window many streams", got, want, empty)


def test_stateful_mask_matches_keras_stateful_predict(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input(batch_shape=(1, LOOK_BACK, F)),
                              keras.layers.Masking(mask_value=0.0),
                              keras.layers.LSTM(6, stateful=True), keras.layers.Dense(1)])
    rt = _export(model, tmp_path / "m.onnx")
    assert rt.mode == "stateful"
    xs = _sequences(1, seed=4, masked=[6, 12, 13, 20])[0]          # no window masked only
    windows = np.stack([xs[t - LOOK_BACK + 1:t + 1] for t in range(LOOK_BACK - 1, N)])
    want = np.concatenate([model.predict(w[None], verbose=0) for w in windows])
    s = rt.stream()
    got = np.array([s.step(x) for x in xs][LOOK_BACK - 1:])
    _report("mask stateful step", got, want)
    np.testing.assert_allclose(got, want, atol=ATOL)
    np.testing.assert_allclose(rt.stream().feed(xs)[LOOK_BACK - 1:], want, atol=ATOL)
    together = [rt.stream(), rt.stream()]
    many = np.stack([rt.step(together, np.stack([x, x]))[0] for x in xs])[LOOK_BACK - 1:]
    np.testing.assert_allclose(many, want, atol=ATOL)


def test_io_binding_runner_skips_masked_samples_too(window):
    """The CUDA path's device-resident state, exercised with CPU OrtValues (stateful mode)."""
    rt, raw, _, _ = window
    host = runtime.load(rt.path, device="cpu", carry_state=True)
    bound = runtime.load(rt.path, device="cpu", carry_state=True, io_binding=True)
    assert bound._runner.bound and host.mode == "stateful"
    a, b = host.stream(), bound.stream()
    for x in raw[0]:
        ya, yb = a.step(x), b.step(x)
        assert (ya is None) == (yb is None)
        if ya is not None:
            np.testing.assert_allclose(yb, ya, atol=1e-6)
    np.testing.assert_allclose(bound.stream().feed(raw[0]), host.stream().feed(raw[0]), atol=1e-6)
