"""Forecast quality on the bundled CSVs: does the model beat what a practitioner tries first?

``python -m bench.forecast`` trains the trainer's default (``--target-kind auto``: the
seasonal target where it beats the residual one on the validation rows; differenced inputs;
``--linear auto``: the linear path where it wins on the validation rows)
for every bundled CSV and two horizons, with a few fixed seeds, and prints one markdown
table of the untouched test tail's skill (MAE / naive MAE, below 1 beats naive) beside
seasonal naive and the statistical anchors (AutoETS, AutoTheta, AutoARIMA; the ``[stats]``
extra) on the same rows: fitted once before the tail, updated reading by reading
(:mod:`trainer.anchors`). Small models (16 units, at most 40 epochs, early stopping); four
to six minutes on two cores. Not a test: figures, not pass/fail. ``--members auto`` measures
the deep ensemble (``lstm-train --members``) instead: about three times the training.
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
ANCHORS = ("AutoETS", "AutoTheta", "AutoARIMA")


def run_one(path, target, features, look_back, horizon, mode, seed, budget, work,
            members=1):
    from trainer.model import ModelConfig
    from trainer.train import TrainConfig, train

    cfg = TrainConfig(look_back=look_back, horizon=horizon, epochs=40, verbose=0, seed=seed,
                      anchor_budget=budget, members=members,
                      model=ModelConfig(mode=mode, units=16))
    out = Path(work) / f"{path.stem}-h{horizon}-{seed}.keras"
    side = train(path, target, features, out, cfg).sidecar
    linear = side["forecast"].get("linear")
    p = len(linear["weights"]) if linear else 0
    fit = ", iterated" if side["forecast"].get("linear_fit") == "iterated" else ""
    lags = f" + linear ({p} lag{'s' * (p > 1)}{fit})" if linear else ""
    k = side["members"]["count"]
    ensemble = f", {k} networks" if k > 1 else ""
    return {**side["metrics"]["test"], "season": side["metrics"]["season"],
            "target": side["forecast"]["target_kind"] + lags + ensemble}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per setting (0, 1, ...)")
    parser.add_argument("--mode", default="sequence", choices=["sequence", "window"])
    parser.add_argument("--anchor-budget", type=float, default=60.0,
                        help="seconds for the statistical anchors per setting")
    parser.add_argument("--members", default="1",
                        help="networks averaged per model (a deep ensemble); auto: 1 to 3, "
                             "the validation rows choose")
    args = parser.parse_args(argv)
    members = None if args.members == "auto" else int(args.members)
    started = time.perf_counter()
    rows, notes, beats_naive, beats_best, settings = [], [], 0, 0, 0
    with tempfile.TemporaryDirectory() as work:
        for file, target, features, look_back, horizons in SERIES:
            for horizon in horizons:
                settings += 1
                # The anchors do not depend on the seed: measured with seed 0's run only.
                runs = [run_one(ROOT / "data" / file, target, features, look_back, horizon,
                                args.mode, seed, args.anchor_budget if seed == 0 else 0, work,
                                members)
                        for seed in range(args.seeds)]
                row, note, wins = _row(file, horizon, runs)
                rows.append(row)
                notes += [f"- {file}, h={horizon}: {note}"] if note else []
                beats_naive += wins[0]
                beats_best += wins[1]
    print(f"Forecast quality on the test tail (last 15% of rows, never trained, early-stopped "
          f"or chosen on); skill = MAE / naive MAE on the same rows. LSTM: the trainer's "
          f"default{f' with --members {args.members}' if members != 1 else ''}, "
          f"{args.mode} mode, 16 units, <= 40 epochs, {args.seeds} seed(s): mean "
          f"(min–max). Anchors fitted once before the tail, updated reading by reading.\n")
    print("| data | h | test steps | naive MAE | seasonal naive | AutoETS | AutoTheta "
          "| AutoARIMA | LSTM | LSTM target |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if notes:
        print("\n" + "\n".join(notes))
    print(f"\nLSTM below naive in {beats_naive}/{settings} settings; below the best "
          f"statistical model in {beats_best}/{settings}.")
    print(f"({time.perf_counter() - started:.0f} s)")


def _row(file, horizon, runs):
    """One table row, the anchors' note, and (beats naive, beats the best anchor)."""
    first = runs[0]
    naive = np.mean(first["naive"]["mae"])

    def skill(fig):
        return np.mean(fig["mae"]) / naive

    anchors = first.get("anchors", {})
    cells = [f"{skill(first['seasonal_naive']):.3f} (m={first['season']})"
             if "seasonal_naive" in first else "-"]
    best = min((skill(anchors[n]) for n in ANCHORS if n in anchors), default=np.inf)
    for name in ANCHORS:
        text = f"{skill(anchors[name]):.3f}" if name in anchors else "skipped"
        cells.append(f"**{text}**" if name in anchors and skill(anchors[name]) == best else text)
    skills = [np.mean(r["skill"]) for r in runs]
    lstm = np.mean(skills)
    spread = f" ({min(skills):.3f}–{max(skills):.3f})" if len(runs) > 1 else ""
    mark = f"**{lstm:.3f}**" if lstm < best else f"{lstm:.3f}"
    targets = sorted({r["target"] for r in runs})
    row = (f"| {file} | {horizon} | {first['steps']} | {naive:.4g} | {' | '.join(cells)} "
           f"| {mark}{spread} | {', '.join(targets)} |")
    return row, first.get("anchors_note", ""), (lstm < 1, lstm < best)


if __name__ == "__main__":
    main()
