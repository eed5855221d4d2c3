"""A NaN or inf reading sent to a Triton repository: not fed, y NaN, the sensor's state kept.

The graph cannot refuse a request as ``lstm-run`` does, so the graph written for Triton
guards the exported one: a request whose readings are not all finite leaves every state
tensor as it came in and answers NaN. A request of one reading is then exactly a stream of
``runtime.load(..., missing="skip")`` (which refuses an inf, leaving the stream as it was),
and a request of several readings (sequence mode)
exactly a stream whose ``feed`` refused the chunk (``missing="error"``, the default: the
stream is unchanged). Every other answer, before and after, is the runtime's.
"""

import numpy as np
import pytest

import runtime
from test_triton import DEMO, MODES, TOL, ImplicitState, repository  # noqa: F401 (fixture)
from integrations.triton.repository import write_repository

BAD = (np.nan, np.inf, -np.inf)


def readings(model, n, seed, bad=True):
    """``n`` readings of a realistic size, a NaN, an inf or a -inf in some of them (``bad``)."""
    rng = np.random.default_rng(seed)
    x_scaler = (model.info.scaler or {}).get("x", {})
    scale = np.asarray(x_scaler.get("std", [1.0] * model.n_features))
    centre = np.asarray(x_scaler.get("mean", [0.0] * model.n_features))
    xs = (rng.normal(size=(n, model.n_features)) * scale + centre).astype(np.float32)
    for i in rng.choice(np.arange(3, n), n // 6 if bad else 0, replace=False):  # not at first
        xs[i, rng.integers(model.n_features)] = BAD[i % 3]
    return xs


def serve(folder, exported, sensors=3, n=30):
    """Sensors sending one reading per request, batched; returns (compared, refused)."""
    triton = ImplicitState(folder)
    model = runtime.load(exported, device="cpu", missing="skip")
    variant = "warmup" in [o.name for o in triton.config.output]
    series = {s: readings(model, n, seed=s) for s in range(1, sensors + 1)}
    streams = {s: model.stream() for s in series}
    compared = refused = 0
    for t in range(n):
        answers = triton.call([(s, xs[t][None, None], t == 0, False) for s, xs in series.items()])
        for s, xs in series.items():
            try:
                want = streams[s].step(xs[t])                # None: warming up or not fed
            except runtime.InputError:                       # inf: refused, stream unchanged
                want = None
            got = answers[s]["y"][0, -1]
            if variant:    # warmup says whether the window has filled, fed or not
                assert bool(answers[s]["warmup"][0, 0]) == (not streams[s].ready)
            if not np.isfinite(xs[t]).all():
                assert want is None and np.isnan(got).all(), (s, t, got)
                refused += 1
            elif want is None:
                assert np.isnan(got).all()
            else:
                np.testing.assert_allclose(got, want, rtol=TOL, atol=0)
                compared += 1
    return compared, refused


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["lstm", "stacked"])
def test_a_non_finite_reading_is_not_fed(kind, mode, repository):  # noqa: F811 (fixture)
    exported, report = repository(kind, mode)
    compared, refused = serve(report.folder, exported)
    assert compared > 40 and refused >= 12


def test_the_bundled_model_keeps_its_previous_reading(tmp_path):
    """water-flow is differenced: its ``prev`` state must not take the NaN as a reading."""
    report = write_repository(DEMO, tmp_path)
    compared, refused = serve(report.folder, DEMO)
    assert compared > 60 and refused >= 12


def test_a_chunk_with_a_non_finite_reading_is_not_fed_at_all(tmp_path):
    """Sequence mode, several readings per request: the whole request, as lstm-run's feed."""
    report = write_repository(DEMO, tmp_path)
    triton = ImplicitState(report.folder)
    model = runtime.load(DEMO, device="cpu")
    rng = np.random.default_rng(3)
    good = readings(model, 4, 0, bad=False)
    stream = model.stream()
    for t in range(6):
        chunk = readings(model, 4, t, bad=False) if t else good
        if t in (2, 4):
            chunk[rng.integers(4), 0] = BAD[t % 3]
        got = triton.call([(1, chunk[None], t == 0, False), (2, good[None], t == 0, False)])
        if t in (2, 4):
            with pytest.raises(runtime.InputError):
                stream.feed(chunk)                           # refused: the stream unchanged
            assert np.isnan(got[1]["y"]).all()
        else:
            np.testing.assert_allclose(got[1]["y"][0], stream.feed(chunk), rtol=TOL, atol=0)
        assert np.isfinite(got[2]["y"]).all()                # its batch mate is untouched


def test_token_ids_need_no_guard_but_get_it(tmp_path):
    """Integer ids are always finite: the guard passes every one (answers unchanged)."""
    from test_triton import keras, L
    from trainer.export import export

    keras.utils.set_random_seed(0)
    path = tmp_path / "tokens.onnx"
    export(keras.Sequential([keras.Input((None,), dtype="int32"), L.Embedding(10, 3),
                             L.LSTM(5, return_sequences=True), L.Dense(1)]), path, steps=30)
    report = write_repository(path, tmp_path / "models")
    ids = np.random.default_rng(0).integers(0, 10, (1, 7))
    got = ImplicitState(report.folder).call([(1, ids, True, False)])[1]["y"][0]
    np.testing.assert_allclose(got, runtime.load(path, device="cpu").stream().feed(ids[0]),
                               rtol=TOL, atol=0)
