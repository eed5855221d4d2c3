"""Residual targets and differenced inputs, through export and the runtime, against Keras.

Each model is trained (tiny, 2 epochs) on a hand-made hourly CSV, exported with the parity
check, then streamed by the runtime from a fresh stream over the whole series; the
reference is Keras on the same scaled (and differenced) series, with the change it predicts
added to the target's reading in numpy. Differences are measured in the network's units
(divided by the change scale), beyond one float32 step of the raw value the graph returns.
"""

import json

import numpy as np
import pytest

from runtime import load
from trainer.export import export
from trainer.forecast import differences, lagged_changes, seasonal_change
from trainer.model import ModelConfig, build_model, reset_states
from trainer.train import TrainConfig, train

ROWS = 260


@pytest.fixture(scope="module")
def series_csv(tmp_path_factory):
    """Hourly level + daily cycle + slow trend + noise, and a second, noisy feature."""
    rng = np.random.default_rng(3)
    t = np.arange(ROWS)
    level = 50 + 5 * np.sin(2 * np.pi * t / 24) + 0.03 * t + rng.normal(0, 0.4, ROWS)
    other = 20 + np.cos(2 * np.pi * t / 24) + rng.normal(0, 0.2, ROWS)
    path = tmp_path_factory.mktemp("data") / "series.csv"
    lines = ["time,level,other"] + [
        f"2024-01-{1 + i // 24:02d}T{i % 24:02d}:00:00,{a:.3f},{b:.3f}"
        for i, (a, b) in enumerate(zip(level, other))]
    path.write_text("\n".join(lines) + "\n")
    return path


def config(mode, difference=False, epochs=2, target_kind="residual", linear=False, **kw):
    """A tiny model; without the linear path unless asked (its own tests below)."""
    return TrainConfig(look_back=6, epochs=epochs, batch_size=16, verbose=0, seed=2,
                       difference=difference, target_kind=target_kind, anchor_budget=0,
                       linear=linear, model=ModelConfig(mode=mode, units=4), **kw)


def readings(csv_path):
    data = np.genfromtxt(csv_path, delimiter=",", skip_header=1, usecols=(1, 2))
    return data.astype(np.float32)                                     # (rows, 2)


def streams_what_keras_predicts(onnx_file, keras_file, side, x):
    """Stepped and chunked (one call per chunk mode), the exported model gives what the
    Keras model predicts on the readings ``x``; returns the rows compared and Keras's
    predictions for them."""
    rows, expected = keras_reference(keras_file, side, x)
    model = load(onnx_file)
    stream = model.stream()
    stepped = np.array([stream.step(r) for r in x][rows[0]:])         # (n, targets)
    assert_close(stepped, expected, side)
    assert_close(model.stream().feed(x)[rows], expected, side)
    return rows, expected


def keras_reference(model_path, side, x):
    """What the model predicts for every reading of ``x`` as it streams, in raw units."""
    import keras

    model = keras.models.load_model(model_path)
    sx = side["scaler"]["x"]
    framing = side["forecast"]
    net = differences(x.astype(np.float64)) if framing["difference"] else x.astype(np.float64)
    net = ((net - np.asarray(sx["mean"])) / np.asarray(sx["std"])).astype(np.float32)
    window = side["look_back"]
    if side["mode"] == "sequence":
        change = model.predict(net[None], verbose=0)[0]                # (rows, targets)
        rows = np.arange(len(x))
    else:
        # Every window of look_back readings; a differenced window's first step is "no change".
        wins = np.lib.stride_tricks.sliding_window_view(net, window, axis=0).transpose(0, 2, 1)
        wins = np.array(wins)                                          # (n, window, features)
        if framing["difference"]:
            wins[:, 0] = ((0.0 - np.asarray(sx["mean"])) / np.asarray(sx["std"]))
        if side["mode"] == "stateful":
            units = model.get_layer("lstm_0").units                     # 4 a network
            probe = build_model(ModelConfig(mode="stateful", units=units), window, x.shape[1],
                                1, batch_size=1)
            probe.set_weights(model.get_weights())
            reset_states(probe)
            change = probe.predict(wins, batch_size=1, verbose=0)
        else:
            change = model.predict(wins, verbose=0)
        rows = np.arange(window - 1, len(x))
    index = framing["target_features"]
    start = x[rows][:, index].astype(np.float64)
    if framing["target_kind"] == "seasonal":
        start += seasonal_change(x[:, index].astype(np.float64), side["horizon"],
                                 framing["season"])[rows]
    if "linear" in framing:
        w = np.asarray(framing["linear"]["weights"])                   # (lags, features, k)
        start += lagged_changes(x.astype(np.float64), len(w))[rows] @ w.reshape(-1, w.shape[2])
        start += np.asarray(framing["linear"]["bias"])
    return rows, change * np.asarray(framing["delta_scale"]) + start


def assert_close(actual, expected, side):
    """<= 1e-5 in the network's units, beyond one float32 step of the raw value."""
    scale = np.asarray(side["forecast"]["delta_scale"])
    slack = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
    excess = np.abs(actual.astype(np.float64) - expected) - slack
    assert np.max(excess / scale) <= 1e-5, np.max(np.abs(actual - expected) / scale)


@pytest.mark.parametrize("mode", ["window", "stateful", "sequence"])
@pytest.mark.parametrize("difference", [False, True], ids=["levels", "differenced"])
def test_residual_graph_streams_what_keras_predicts(tmp_path, series_csv, mode, difference):
    result = train(series_csv, "level", None, tmp_path / "m.keras", config(mode, difference))
    side = result.sidecar
    assert side["forecast"]["target_kind"] == "residual"
    assert side["forecast"]["target_features"] == [0]
    assert side["look_back"] == 6 + (difference and mode != "sequence")
    report = export(result.model_path, tmp_path / "m.onnx", steps=200)
    extra = report.info.extra
    assert json.loads(extra["residual"]) == {"target_features": [0]}
    kind = "state" if mode == "sequence" else "window"
    assert ("difference" in extra) == difference
    prev = [s for s in report.info.state if s.kind == "prev"]
    assert len(prev) == (difference and mode == "sequence")

    x = readings(series_csv)
    streams_what_keras_predicts(tmp_path / "m.onnx", result.model_path, side, x)
    if difference:
        assert json.loads(extra["difference"]) == kind


@pytest.mark.parametrize("mode", ["window", "stateful", "sequence"])
def test_deep_ensemble_streams_what_keras_predicts(tmp_path, series_csv, mode):
    """Two networks of different seeds merged into one twice as wide: the exported graph
    streams (stepped, chunked) what the saved Keras model predicts, and that model gives
    the figures the trainer reported for the mean of its members."""
    result = train(series_csv, "level", None, tmp_path / "m.keras",
                   config(mode, True, members=2, linear=mode == "sequence"))
    side = result.sidecar
    assert side["members"] == {"count": 2, "trained": 2, "note": ""}
    report = export(result.model_path, tmp_path / "m.onnx", steps=200)
    assert [(s.kind, s.units) for s in report.info.state if s.kind != "prev"] == \
        [("lstm", 8)]                                                  # 2 networks x 4 units

    x = readings(series_csv)
    rows, expected = streams_what_keras_predicts(tmp_path / "m.onnx", result.model_path,
                                                 side, x)
    data = side["data"]
    target = rows + side["horizon"]
    val = (target >= data["split"]) & (target < data["test"])
    mae = np.abs(expected[val] - x[target[val], :1]).mean()
    assert mae == pytest.approx(side["metrics"]["validation"]["model"]["mae"][0], rel=1e-4)


@pytest.mark.parametrize("cell, layers, dense", [("lstm", 1, 0), ("gru", 2, 3)])
def test_merged_networks_predict_the_mean_of_their_members(cell, layers, dense):
    """Keras on the merged model equals the mean of Keras on each member, over a whole
    sequence: every gate, stacked layer and hidden head keeps its member's block."""
    import keras

    from trainer.ensemble import merge

    cfg = ModelConfig(mode="sequence", cell=cell, units=5, layers=layers, dense=dense)
    members = []
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        members.append(build_model(cfg, None, 2, 2))
        members[-1].set_weights([w + np.random.default_rng(seed).normal(0, 0.1, w.shape)
                                 for w in members[-1].get_weights()])  # nonzero biases too
    x = np.random.default_rng(9).normal(size=(4, 30, 2)).astype(np.float32)
    mean = np.mean([m.predict(x, verbose=0) for m in members], axis=0)  # (4, 30, 2)
    merged = merge(members, cfg, None, 2, 2)
    assert merged.get_layer(f"{cell}_0").units == 15
    np.testing.assert_allclose(merged.predict(x, verbose=0), mean, atol=1e-5)


@pytest.mark.parametrize("difference, horizon", [(False, 1), (True, 3)])
def test_seasonal_graph_streams_what_keras_predicts(tmp_path, series_csv, difference, horizon):
    """The start y[t] + y[t+h-m] - y[t-m] is built in the graph from the last season's
    readings, carried as state: stepped, chunked and resumed streams equal Keras."""
    result = train(series_csv, "level", None, tmp_path / "m.keras",
                   config("sequence", difference, target_kind="seasonal", horizon=horizon))
    side = result.sidecar
    assert side["forecast"]["target_kind"] == "seasonal" and side["forecast"]["season"] == 24
    report = export(result.model_path, tmp_path / "m.onnx", steps=200)
    assert json.loads(report.info.extra["seasonal"]) == {"season": 24, "horizon": horizon}
    held = [s for s in report.info.state if s.layer == "last season's readings"]
    assert [(s.kind, s.units) for s in held] == [("prev", 24 * 2)]

    x = readings(series_csv)
    rows, expected = keras_reference(result.model_path, side, x)
    model = load(tmp_path / "m.onnx")
    stream = model.stream()
    stepped = np.array([stream.step(r) for r in x])                   # (rows, targets)
    assert_close(stepped, expected, side)
    assert_close(model.stream().feed(x), expected, side)
    first = model.stream()
    first.feed(x[:100])
    resumed = model.stream(first.snapshot())
    assert_close(resumed.feed(x[100:]), expected[100:], side)


@pytest.mark.parametrize("target_kind, lags", [("residual", 1), ("seasonal", 3)])
def test_linear_path_graph_streams_what_keras_predicts(tmp_path, series_csv, target_kind, lags):
    """The linear path on the last ``lags`` changes of every reading is built in the graph
    (more than one lag: the last changes carried as state): stepped, chunked and resumed
    streams equal Keras plus the sidecar's linear start in numpy."""
    result = train(series_csv, "level", None, tmp_path / "m.keras",
                   config("sequence", True, target_kind=target_kind, linear=True))
    side = result.sidecar
    assert np.asarray(side["forecast"]["linear"]["weights"]).shape[1:] == (2, 1)
    # The graph computes whatever path the sidecar holds: make it `lags` lags, none zero.
    side["forecast"]["linear"] = {"weights": np.linspace(-0.5, 0.7, lags * 2).reshape(
        lags, 2, 1).tolist(), "bias": [0.25]}
    result.sidecar_path.write_text(json.dumps(side))
    report = export(result.model_path, tmp_path / "m.onnx", steps=200)
    assert json.loads(report.info.extra["linear"]) == side["forecast"]["linear"]
    carried = [(s.kind, s.units) for s in report.info.state if s.layer == "last changes"]
    assert carried == ([("prev", (lags - 1) * 2)] if lags > 1 else [])
    assert report.op_counts.get("Pad") == 1              # the previous reading folded too

    x = readings(series_csv)
    _, expected = keras_reference(result.model_path, side, x)
    model = load(tmp_path / "m.onnx")
    stream = model.stream()
    assert_close(np.array([stream.step(r) for r in x]), expected, side)
    assert_close(model.stream().feed(x), expected, side)
    first = model.stream()
    first.feed(x[:100])
    assert_close(model.stream(first.snapshot()).feed(x[100:]), expected[100:], side)
    # The sidecar is untrusted: weights of the wrong shape, or not numbers, get one line.
    from trainer.errors import ExportError

    for weights in ([[[1.0]]], [[["a"], [1.0]]], [[[float("nan")], [1.0]]]):
        side["forecast"]["linear"]["weights"] = weights
        result.sidecar_path.write_text(json.dumps(side))
        with pytest.raises(ExportError, match="linear path has weights .* re-train it"):
            export(result.model_path, tmp_path / "bad.onnx", steps=20)


def test_auto_keeps_the_linear_path_only_where_it_wins_on_validation(series_csv):
    """Changes that carry on (an AR(1) in the changes) take the path and its lags; a random
    walk's independent changes leave the start as it is. Chosen on validation rows only."""
    from trainer.forecast import Framing

    rng = np.random.default_rng(1)
    change = np.zeros(ROWS)
    for t in range(1, ROWS):
        change[t] = 0.8 * change[t - 1] + rng.normal()
    walks = {"momentum": np.cumsum(change), "random walk": np.cumsum(rng.normal(size=ROWS))}
    picked = {}
    for name, walk in walks.items():
        x = np.stack([walk, rng.normal(size=ROWS)], axis=1)             # (rows, 2)
        picked[name] = Framing.choose("auto", ["level", "other"], ["level"], x[:, :1], 182,
                                      221, 1, True, None, "sequence", x)
        assert "linear path: on the validation rows" in picked[name].note
    assert picked["momentum"].linear is not None
    assert picked["momentum"].linear[0][0, 0, 0] > 0.5                 # about 0.8
    assert picked["random walk"].linear is None
    assert Framing.choose("auto", ["level", "other"], ["level"], x[:, :1], 182, 221, 1, True,
                          None, "window", x).linear is None           # no carried changes there
    from trainer.errors import DataError, ExportError
    from trainer.forecast_graph import plan

    with pytest.raises(DataError, match="linear path needs differenced inputs and --mode seq"):
        Framing.choose("residual", ["level", "other"], ["level"], x[:, :1], 182, 221, 1, True,
                       None, "window", x, linear=True)
    side = {"horizon": 1, "forecast": {"target_kind": "residual", "target_features": [0],
                                       "difference": True, "linear": {"weights": [[[1.0]]],
                                                                      "bias": [0.0]}}}
    with pytest.raises(ExportError, match="export it in sequence mode"):
        plan(side, window=6, carry_state=False)


def test_iterated_linear_path_is_the_autoregression_run_forward():
    """More than one step ahead the path may be a one-step autoregression of every reading's
    change iterated h steps: on changes that are an AR(1) of 0.8 its weight on the last
    change is 0.8 + 0.8² + 0.8³ three steps ahead, the other reading's changes weigh
    nothing; and the choice between it and the direct fit is made on the validation rows."""
    from trainer.forecast import Framing, iterated_weights

    rng = np.random.default_rng(4)
    rows = 6000
    change = np.zeros(rows)
    for t in range(1, rows):
        change[t] = 0.8 * change[t - 1] + rng.normal(0, 0.1)
    x = np.stack([np.cumsum(change), np.cumsum(rng.normal(0, 0.1, rows))], axis=1)
    w = iterated_weights(x, rows, 3, 2)                                # (2 * 2 + 1, 2)
    assert w[0, 0] == pytest.approx(0.8 + 0.8 ** 2 + 0.8 ** 3, abs=0.05)
    assert np.abs(w[1:, 0]).max() < 0.1                                # the rest: ~nothing
    framing = Framing.choose("auto", ["level", "other"], ["level"], x[:, :1], 4200, 5100, 3,
                             True, None, "sequence", x)
    assert "over 3 steps" in framing.note
    last = np.arange(4200, 5100 - 3)                                  # validation rows
    start = framing.start(x[:, :1], last, 3, x)
    naive = np.abs(x[last, :1] - x[last + 3, :1]).mean()
    assert np.abs(start - x[last + 3, :1]).mean() < 0.8 * naive         # ~0.67


def test_auto_takes_the_seasonal_target_only_where_it_wins_on_validation(series_csv):
    from trainer.data import read_csv, select
    from trainer.forecast import Framing

    sel = select(read_csv(series_csv), "level", None, "error", source="s")
    y = sel.y.astype(np.float64)
    choose = lambda y, mode: Framing.choose("auto", sel.features, sel.targets, y, 182, 221,
                                            1, True, 24, mode)              # noqa: E731
    picked = choose(y, "sequence")
    assert picked.kind == "seasonal" and "validation rows" in picked.note
    assert choose(y, "window").kind == "residual"          # the graph carries no season there
    # A season that repeats nothing (noise) loses to the last reading on validation.
    noise = np.cumsum(np.random.default_rng(0).normal(size=y.shape), axis=0)
    assert choose(noise, "sequence").kind == "residual"


def test_a_seasonal_target_where_it_cannot_stream_is_refused_in_one_line(series_csv):
    from trainer.errors import DataError, ExportError
    from trainer.forecast import Framing
    from trainer.forecast_graph import plan

    y = readings(series_csv)[:, :1].astype(np.float64)
    with pytest.raises(DataError, match="needs --mode sequence"):
        Framing.choose("seasonal", ["level", "other"], ["level"], y, 182, 221, 1, True, 24,
                       "window")
    with pytest.raises(DataError, match="needs --horizon at most the season"):
        Framing.choose("seasonal", ["level", "other"], ["level"], y, 182, 221, 30, True, 24)
    side = {"horizon": 1, "forecast": {"target_kind": "seasonal", "season": 24,
                                       "target_features": [0], "difference": False}}
    with pytest.raises(ExportError, match="export it in sequence mode"):
        plan(side, window=6, carry_state=False)
    assert plan(side, window=1, carry_state=True)["seasonal"] == {"season": 24, "horizon": 1}


def test_untrained_residual_model_is_the_naive_forecast_exactly(tmp_path, series_csv):
    """Zero epochs: the head is still zero, so every prediction is the last reading."""
    result = train(series_csv, "level", None, tmp_path / "m.keras",
                   config("sequence", difference=True, epochs=0))
    test = result.sidecar["metrics"]["test"]
    assert test["model"] == test["naive"] and test["skill"] == [1.0]
    export(result.model_path, tmp_path / "m.onnx", steps=50)
    x = readings(series_csv)
    stream = load(tmp_path / "m.onnx").stream()
    predicted = np.array([stream.step(r) for r in x])[:, 0]
    assert np.array_equal(predicted, x[:, 0])                          # bit for bit


def test_a_previous_reading_of_zero_is_real_a_fresh_stream_is_not(tmp_path, series_csv):
    """The carried reading has a flag: a fresh stream's first step reads "no change", a
    stream whose last reading was 0 reads the change from 0 (Keras on the same series)."""
    import keras

    result = train(series_csv, "level", None, tmp_path / "m.keras",
                   config("sequence", difference=True))
    export(result.model_path, tmp_path / "m.onnx", steps=50)
    side = result.sidecar
    x = np.array([[0.0, 0.0], [5.0, 1.0], [5.0, 3.0]], np.float32)
    _, expected = keras_reference(result.model_path, side, x)
    model = load(tmp_path / "m.onnx")
    stream = model.stream()
    got = np.array([stream.step(r) for r in x])
    assert_close(got, expected, side)
    assert stream.state["in_x0"].tolist() == [5.0, 3.0, 1.0]
    # A snapshot keeps the reading: a restored stream goes on as the original does.
    restored = model.stream(stream.snapshot())
    assert np.array_equal(restored.step([6.0, 2.0]), stream.step([6.0, 2.0]))
    # Three streams in one call, one of them already under way, equal each alone.
    streams = [model.stream(), model.stream(), stream]
    together = model.step(streams, np.tile(x[1], (3, 1)))
    alone = load(tmp_path / "m.onnx").stream()
    assert np.array_equal(together[0], alone.step(x[1]))
    keras.backend.clear_session()


def test_target_not_among_features_falls_back_to_a_level(tmp_path, series_csv):
    result = train(series_csv, "level", "other", tmp_path / "m.keras",
                   config("window", difference=True, epochs=1))
    assert result.sidecar["forecast"]["target_kind"] == "level"
    assert result.sidecar["forecast"]["difference"] is False      # differences alone: no level
    assert any("not among the features" in w for w in result.warnings)
    report = export(result.model_path, tmp_path / "m.onnx", steps=50)
    assert "residual" not in report.info.extra


def test_test_tail_is_untouched_and_plotted(tmp_path, series_csv):
    result = train(series_csv, "level", None, tmp_path / "m.keras", config("window", epochs=1),
                   plot=tmp_path / "tail.png")
    side = result.sidecar
    split, test = side["data"]["split"], side["data"]["test"]
    assert 0 < split < test < ROWS
    val, tail = side["metrics"]["validation"], side["metrics"]["test"]
    assert val["steps"] == test - split and tail["steps"] == ROWS - test   # horizon 1
    assert side["metrics"]["season"] == 24 and side["metrics"]["season_source"] == "hourly"
    report = result.report()
    assert "skill" in report and "best by MAE" in report and "seasonal naive (24)" in report
    png = (tmp_path / "tail.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
