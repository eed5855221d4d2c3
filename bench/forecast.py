"""Forecast quality on the bundled CSVs: does the model beat "repeat the last value"?

``python -m bench.forecast`` trains, for every bundled CSV and two horizons, the level
target (the trainer's old default), the residual target (the default) and the residual
target on differenced inputs, each with a few fixed seeds, and prints one markdown table of
the untouched test tail's MAE, RMSE and skill (model MAE / naive MAE, below 1 beats naive)
beside the naive and seasonal-naive forecasts on the same rows. Small models (16 units, at
most 40 epochs, early stopping); a few minutes on two cores. Not a test: figures, not
pass/fail.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# (file, target, features, look_back, horizons): horizon 1 and about an hour / a season's third.
SERIES = [
    ("water-flow.csv", "Water flow [l/s]", None, 24, (1, 6)),      # hourly: 6 hours ahead
    ("occupancy.csv", "V4", None, 12, (1, 4)),                     # ~16 min: an hour ahead
    ("airline-passengers.csv", "passengers", None, 12, (1, 4)),     # monthly: 4 months ahead
]
VARIANTS = [("level", dict(target_kind="level", difference=False)),    # the old default
            ("residual", dict(target_kind="residual", difference=False)),
            ("residual + difference", dict(target_kind="residual", difference=True))]  # default


def run_one(path, target, features, look_back, horizon, mode, seed, options, work):
    from trainer.model import ModelConfig
    from trainer.train import TrainConfig, train

    cfg = TrainConfig(look_back=look_back, horizon=horizon, epochs=40, verbose=0, seed=seed,
                      model=ModelConfig(mode=mode, units=16), **options)
    out = Path(work) / f"{path.stem}-h{horizon}-{seed}.keras"
    metrics = train(path, target, features, out, cfg).sidecar["metrics"]
    return {**metrics["test"], "season": metrics["season"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2, help="seeds per setting (0, 1, ...)")
    parser.add_argument("--mode", default="sequence", choices=["sequence", "window"])
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows, wins = [], {name: 0 for name, _ in VARIANTS}
    settings = 0
    with tempfile.TemporaryDirectory() as work:
        for file, target, features, look_back, horizons in SERIES:
            for horizon in horizons:
                settings += 1
                figures = {}
                for name, options in VARIANTS:
                    runs = [run_one(ROOT / "data" / file, target, features, look_back, horizon,
                                    args.mode, seed, options, work) for seed in range(args.seeds)]
                    figures[name] = runs
                first = figures["level"][0]
                base = f"| {file} | {horizon} | {first['steps']} "
                naive = np.mean(first["naive"]["mae"])
                rows.append(base + _cells("naive", first["naive"], naive))
                if "seasonal_naive" in first:
                    rows.append(base + _cells(f"seasonal naive (m={first['season']})",
                                              first["seasonal_naive"], naive))
                for name, _ in VARIANTS:
                    runs = figures[name]
                    mae = np.mean([np.mean(r["model"]["mae"]) for r in runs])
                    rmse = np.mean([np.mean(r["model"]["rmse"]) for r in runs])
                    skills = [np.mean(r["skill"]) for r in runs]
                    wins[name] += np.mean(skills) < 1
                    spread = f" ({min(skills):.3f}–{max(skills):.3f})" if len(runs) > 1 else ""
                    rows.append(base + f"| {name} | {mae:.4g} | {rmse:.4g} | "
                                f"**{np.mean(skills):.3f}**{spread} |")
    print(f"Forecast quality on the test tail (last 15% of rows, never trained or "
          f"early-stopped on); {args.mode} mode, 16 units, <= 40 epochs, "
          f"{args.seeds} seed(s) per model, mean (min–max) skill over seeds.\n")
    print("| data | horizon | test steps | forecast | MAE | RMSE | skill (÷ naive MAE) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\nsettings where the mean skill is below 1 (beats naive): "
          + ", ".join(f"{name} {n}/{settings}" for name, n in wins.items()))
    print(f"({time.perf_counter() - started:.0f} s)")


def _cells(name, fig, naive) -> str:
    mae, rmse = np.mean(fig["mae"]), np.mean(fig["rmse"])
    return f"| {name} | {mae:.4g} | {rmse:.4g} | {mae / naive:.3f} |"


if __name__ == "__main__":
    main()
