"""Readings with names (pandas DataFrames and Series): matched to the model's features by
name, never by position; checked against a numpy LSTM written from the weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper as oh

import runtime
from runtime import InputError
from runtime.contract import ModelInfo, StateSpec

from helpers import contract_model, make_params

pd = pytest.importorskip("pandas")

FEATURES = ("temp", "rh", "co2")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A sequence model reading (temp, rh, co2), and its weights."""
    p = make_params([("lstm", 5)], features=3, targets=1, seed=3)
    proto = contract_model(p)
    info = ModelInfo(state=(StateSpec.for_layer(0, "lstm", "lstm", 5),), features=FEATURES,
                     targets=("y",))
    del proto.metadata_props[:]
    oh.set_model_props(proto, info.to_metadata())
    path = tmp_path_factory.mktemp("cols") / "named.onnx"
    onnx.save(proto, str(path))
    return runtime.load(path, device="cpu"), p


def reference(p, xs) -> np.ndarray:
    """ONNX's LSTM (gates i, o, f, c) over ``xs`` (n, features) in float64: (n, targets)."""
    layer = p["layers"][0]
    u = layer["units"]
    W, R, B = (layer[k][0].astype(np.float64) for k in "WRB")
    b = B[:4 * u] + B[4 * u:]
    h, c, out = np.zeros(u), np.zeros(u), []
    for x in np.asarray(xs, np.float64):
        z = ((x - p["mean"]) / p["std"]) @ W.T + h @ R.T + b
        i, o, f, g = (z[k * u:(k + 1) * u] for k in range(4))
        sig = lambda v: 1 / (1 + np.exp(-v))          # noqa: E731
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h @ p["Wd"] + p["bd"])
    return np.array(out)


@pytest.fixture(scope="module")
def frame():
    rng = np.random.default_rng(1)
    return pd.DataFrame({"temp": 20 + 3 * rng.normal(size=12),
                         "rh": 50 + 8 * rng.normal(size=12),
                         "co2": 600 + 40 * rng.normal(size=12)})


def test_feed_takes_a_dataframes_columns_by_name(built, frame):
    model, p = built
    want = reference(p, frame[list(FEATURES)].to_numpy())
    swapped = frame[["co2", "rh", "temp"]]
    got = model.stream().feed(swapped)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # by position the answers would differ: the test tells the two apart
    assert not np.allclose(reference(p, swapped.to_numpy()), want, rtol=1e-3)
    s = model.stream()
    ys = s.feed(swapped, at=list(range(12)))                # with positions, too
    np.testing.assert_allclose(ys, want, rtol=1e-5, atol=1e-5)
    assert s.order(swapped.iloc[11], 11) == "replay"        # the same reading, named


def test_step_takes_a_series_by_its_index(built, frame):
    model, p = built
    want = reference(p, frame[list(FEATURES)].to_numpy())
    s = model.stream()
    got = [s.step(frame[["rh", "co2", "temp"]].iloc[i]) for i in range(len(frame))]
    np.testing.assert_allclose(np.array(got), want, rtol=1e-5, atol=1e-5)
    t = model.stream()
    got = [t.step(frame[["co2", "temp", "rh"]].iloc[i], at=i) for i in range(3)]
    np.testing.assert_allclose(np.array(got), want[:3], rtol=1e-5, atol=1e-5)


def test_many_streams_take_a_dataframes_columns_by_name(built, frame):
    model, p = built
    streams = [model.stream() for _ in range(4)]
    rows = frame.iloc[:4][["rh", "temp", "co2"]]            # row i: stream i's one reading
    want = np.concatenate([reference(p, frame[list(FEATURES)].to_numpy()[i:i + 1])
                           for i in range(4)])
    np.testing.assert_allclose(model.step(streams, rows), want, rtol=1e-5, atol=1e-5)
    others = [model.stream() for _ in range(4)]
    np.testing.assert_allclose(model.step(others, rows, at=[1, 1, 1, 1]), want,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, says", [
    (lambda f: f.rename(columns={"co2": "pressure"}), "missing 'co2'; not features 'pressure'"),
    (lambda f: f.assign(Time=pd.date_range("2022-03-20", periods=len(f), freq="h")),
     "not features 'Time'"),
    (lambda f: f[["temp", "rh"]], "missing 'co2'"),
])
def test_a_dataframe_whose_names_are_not_the_features_is_refused_in_one_line(
        built, frame, change, says):
    model, _ = built
    bad = change(frame)
    for call in (lambda: model.stream().feed(bad), lambda: model.step(
            [model.stream() for _ in range(len(bad))], bad)):
        with pytest.raises(InputError, match=says) as info:
            call()
        text = str(info.value)
        assert "\n" not in text and "df[list(model.features)]" in text
    with pytest.raises(InputError, match=says):
        model.stream().step(bad.iloc[0])


def test_a_named_column_that_is_not_numbers_is_named(built, frame):
    model, _ = built
    bad = frame.assign(co2=frame["co2"].map(str))
    with pytest.raises(InputError, match=r"column 'co2' \(object\) does not hold numbers"):
        model.stream().feed(bad)


def test_labels_that_are_not_names_are_taken_by_position(built, frame):
    model, p = built
    plain = pd.DataFrame(frame[list(FEATURES)].to_numpy())   # columns 0, 1, 2
    want = reference(p, plain.to_numpy())
    np.testing.assert_allclose(model.stream().feed(plain), want, rtol=1e-5, atol=1e-5)
