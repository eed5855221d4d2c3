"""Each training mode fits a tiny model on a bundled real CSV; the report is checked against
numbers recomputed here from the CSV and from Keras itself."""

import csv
import json

import numpy as np
import pytest

from trainer.model import ModelConfig
from trainer.train import TrainConfig, sidecar_path, train

TARGET = "Water flow [l/s]"


def tiny(mode, **kw):
    # The level target keeps these tests about windows, modes and scalers; the residual
    # default has its own tests (test_forecast.py).
    return TrainConfig(look_back=8, horizon=kw.pop("horizon", 1), epochs=2, batch_size=16,
                       verbose=0, seed=1, target_kind=kw.pop("target_kind", "level"),
                       difference=kw.pop("difference", False),
                       model=ModelConfig(mode=mode, units=4, **kw))


def water_series(path):
    with open(path) as f:
        return np.array([float(r[1]) for i, r in enumerate(csv.reader(f)) if i > 0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny model per mode, trained once for the module."""
    from pathlib import Path

    data = Path(__file__).resolve().parent.parent / "data" / "water-flow.csv"
    out = tmp_path_factory.mktemp("models")
    return {mode: train(data, TARGET, None, out / f"{mode}.keras", tiny(mode, horizon=2))
            for mode in ("window", "stateful", "sequence")}


@pytest.mark.parametrize("mode", ["window", "stateful", "sequence"])
def test_each_mode_saves_a_model_and_what_the_exporter_needs(trained, mode):
    import keras

    result = trained[mode]
    side = json.loads(sidecar_path(result.model_path).read_text())
    assert side["format"] == "lstm-edge.training/1"
    assert side["mode"] == mode and side["look_back"] == 8 and side["horizon"] == 2
    assert side["features"] == [TARGET] and side["targets"] == [TARGET]
    model = keras.models.load_model(result.model_path)
    lstm = model.get_layer("lstm_0")
    assert lstm.stateful == (mode == "stateful")
    assert lstm.return_sequences == (mode == "sequence")
    time_axis = model.inputs[0].shape[1]
    assert time_axis == (None if mode == "sequence" else 8)
    for part in ("test", "validation"):
        for name in ("model", "naive", "seasonal_naive", "mean"):
            assert np.isfinite(side["metrics"][part][name]["mae"]).all()


def test_scaler_is_fitted_on_the_training_rows_only(trained, water_csv):
    y = water_series(water_csv)
    side = trained["window"].sidecar
    split = side["data"]["split"]
    assert split == round(len(y) * 0.7)
    q1, median, q3 = np.percentile(y[:split], [25, 50, 75])
    assert side["scaler"]["x"]["mean"] == pytest.approx([median])
    assert side["scaler"]["y"]["std"] == pytest.approx([(q3 - q1) / 1.349])
    whole = np.percentile(y, [25, 75])
    assert (whole[1] - whole[0]) / 1.349 != pytest.approx((q3 - q1) / 1.349)


def test_standard_scaling_uses_mean_and_std(tmp_path, water_csv):
    y = water_series(water_csv)
    cfg = tiny("window")
    cfg.scaling, cfg.epochs = "standard", 1
    side = train(water_csv, TARGET, None, tmp_path / "s.keras", cfg).sidecar
    split = side["data"]["split"]
    assert side["scaler"]["x"]["mean"] == pytest.approx([y[:split].mean()])
    assert side["scaler"]["y"]["std"] == pytest.approx([y[:split].std()])
    assert abs(y[:split].mean() - y.mean()) > 0.5   # the whole series would give another one


def test_baselines_are_computed_on_the_last_rows_only(trained, water_csv):
    y = water_series(water_csv)
    side = trained["window"].sidecar
    split, test, h = side["data"]["split"], side["data"]["test"], 2
    for part, targets in (("validation", np.arange(split, test)),     # target rows
                          ("test", np.arange(test, len(y)))):
        figures = side["metrics"][part]
        assert figures["steps"] == len(targets)
        naive = np.abs(y[targets] - y[targets - h]).mean()
        mean = np.abs(y[targets] - y[:split].mean()).mean()
        seasonal = np.abs(y[targets] - y[targets - 24]).mean()      # hourly: a day ago
        assert figures["naive"]["mae"] == pytest.approx([naive])
        assert figures["mean"]["mae"] == pytest.approx([mean])
        assert figures["seasonal_naive"]["mae"] == pytest.approx([seasonal])
        assert figures["skill"] == pytest.approx([figures["model"]["mae"][0] / naive])


def test_window_model_error_matches_keras_on_the_test_windows(trained, water_csv):
    import keras

    y = water_series(water_csv)
    side = trained["window"].sidecar
    split, lb, h = side["data"]["test"], 8, 2
    model = keras.models.load_model(trained["window"].model_path)
    sx, sy = side["scaler"]["x"], side["scaler"]["y"]
    ends = np.arange(split - h, len(y) - h)           # last row of each validation window
    win = np.stack([y[e - lb + 1:e + 1] for e in ends])[:, :, None]   # (samples, 8, 1)
    pred = model.predict((win - sx["mean"][0]) / sx["std"][0], verbose=0)[:, 0]
    pred = pred * sy["std"][0] + sy["mean"][0]
    assert side["metrics"]["test"]["model"]["mae"][0] == pytest.approx(
        np.abs(pred - y[ends + h]).mean(), rel=1e-4)


def test_seed_makes_a_run_repeatable(tmp_path, water_csv):
    a = train(water_csv, TARGET, None, tmp_path / "a.keras", tiny("window"))
    b = train(water_csv, TARGET, None, tmp_path / "b.keras", tiny("window"))
    assert a.sidecar["metrics"]["test"]["model"] == b.sidecar["metrics"]["test"]["model"]


def test_gru_and_multivariate_on_occupancy(tmp_path, occupancy_csv):
    import keras

    cfg = tiny("sequence", cell="gru", layers=2, dropout=0.1)
    result = train(occupancy_csv, "V4", "V1,V2,V4", tmp_path / "co2.keras", cfg)
    model = keras.models.load_model(result.model_path)
    assert [type(l).__name__ for l in model.layers].count("GRU") == 2
    assert model.inputs[0].shape[-1] == 3
    assert "model" in result.report() and "naive" in result.report()
