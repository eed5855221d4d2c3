"""Calibrated intervals and alerts on the bundled CSVs: coverage, width, detected faults.

``python -m bench.alerts`` trains a small model (sequence mode, 16 units, few epochs) for
every bundled CSV at two horizons, exports it and streams the whole series through the
runtime. Two tables:

1. Test-tail coverage (share of test readings inside the interval) and mean width of the
   80/90/95/99 % intervals, calibrated on the validation rows, with the local spread (the
   default) and without it (raw residual quantiles). Targets: 90 % within 87–93 %, 99 %
   at least 97 %.
2. Faults injected after the training rows (bench/faults.py, fixed seed): recall and
   precision of the alerts per fault kind and false alerts per 1,000 normal readings, for
   our alerts (99 % interval, ``--stuck``) and a rolling z-score detector (|x - mean| /
   std of the last 24 readings above 3, and above 2.5), all with the same hygiene
   (``--min-run``, ``--hold-off``).

A few minutes on two cores. Not a test: figures, not pass/fail; results go to
bench/results/alerts.md and alerts.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402

from bench.faults import KINDS, SEED, inject  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# (file, target, look_back, horizons): as bench/forecast.py.
SERIES = [("water-flow.csv", "Water flow [l/s]", 24, (1, 6)),
          ("occupancy.csv", "V4", 12, (1, 4)),
          ("airline-passengers.csv", "passengers", 12, (1, 4))]
HYGIENE = dict(min_run=1, hold_off=3)
STUCK = 6            # our stuck rule: the same value 6 times in a row
Z_WINDOW, Z_LIMITS = 24, (3.0, 2.5)   # 3: the usual hand setting; 2.5 fires more often
GRACE = 3            # readings after a fault (plus the horizon) whose alerts are not false
COPIES, PER_COPY = 10, 4


def fit(path: Path, target: str, look_back: int, horizon: int, epochs: int, work: str):
    """Train, export, load; the runtime's forecasts for every row and the sidecar."""
    from runtime import load
    from trainer.export import export
    from trainer.model import ModelConfig
    from trainer.train import TrainConfig, train

    cfg = TrainConfig(look_back=look_back, horizon=horizon, epochs=epochs, verbose=0,
                      model=ModelConfig(mode="sequence", units=16))
    out = Path(work) / f"{path.stem}-h{horizon}.keras"
    result = train(path, target, None, out, cfg)
    onnx = export(out, out.with_suffix(".onnx"), check=False).path
    return load(onnx, device="cpu"), result.sidecar


def coverage_rows(model, side, path) -> list[dict]:
    """The test tail's coverage and width, spread-scaled (as trained) and unscaled."""
    from trainer.calibrate import coverage, intervals, target_columns
    from trainer.data import read_csv, select

    sel = select(read_csv(path), side["targets"], side["features"], "error", source=str(path))
    h, data = side["horizon"], side["data"]
    pred = model.stream().feed(sel.x.astype(np.float32)).astype(np.float64)   # (rows, targets)
    last = np.arange(len(pred) - h)
    val = last[(last + h >= data["split"]) & (last + h < data["test"])]
    test = last[last + h >= data["test"]]
    out = []
    for scale in ("mean-abs-change", "none"):
        iv = intervals(sel.y, pred[val], val, h, target_columns(sel.features, sel.targets),
                       "validation", sel.y[:data["split"]], scale=scale)
        out.append({"scale": scale, "test": len(test),
                    "levels": coverage(iv, sel.y, pred[test], test, h)})
    return out


def raised(outside: np.ndarray, min_run: int, hold_off: int) -> np.ndarray:
    """Rows where an alert is raised from per-row outside flags (runtime.alerts' rule)."""
    run = calm = 0
    alerting, rows = False, []
    for i, o in enumerate(outside):
        if o:
            run, calm = run + 1, 0
            if run >= min_run and not alerting:
                alerting = True
                rows.append(i)
        else:
            run, calm = 0, calm + 1
            if alerting and calm >= hold_off:
                alerting = False
    return np.asarray(rows, int)


def ours(model, x: np.ndarray) -> np.ndarray:
    """Rows where our alerts (99 % interval, stuck rule) are raised on readings ``x``."""
    from runtime.alerts import AlertConfig, Alerts, AlertState

    alerts, state = Alerts(model, AlertConfig(level=0.99, stuck=STUCK, **HYGIENE)), \
        AlertState()
    pred = model.stream().feed(x.astype(np.float32))                   # (rows, targets)
    return np.asarray([i for i, (reading, p) in enumerate(zip(x, pred))
                       if alerts.observe(state, reading, p).alert], int)


def zscore(y: np.ndarray, limit: float) -> np.ndarray:
    """Rows where the rolling z-score detector raises an alert on target values ``y``."""
    outside = np.zeros(len(y), bool)
    for i in range(Z_WINDOW, len(y)):
        past = y[i - Z_WINDOW:i]
        std = past.std()
        outside[i] = abs(y[i] - past.mean()) > limit * std if std > 0 else y[i] != past[0]
    return raised(outside, **HYGIENE)


def judge(alerts: np.ndarray, where, first: int, rows: int, horizon: int) -> dict:
    """Faults detected, alerts inside/outside fault windows, normal readings."""
    near = np.zeros(rows, bool)
    for start, end in where:
        near[start:end + horizon + GRACE] = True
    alerts = alerts[alerts >= first]
    hit = sum(bool(((alerts >= s) & (alerts < e + horizon + GRACE)).any()) for s, e in where)
    return {"faults": len(where), "detected": hit, "true": int(near[alerts].sum()),
            "false": int((~near[alerts]).sum()), "normal": int((~near[first:]).sum())}


def faults(model, side, path) -> dict:
    from trainer.data import read_csv, select

    sel = select(read_csv(path), side["targets"], side["features"], "error", source=str(path))
    column = list(sel.features).index(side["targets"][0])
    rng = np.random.default_rng(SEED)
    first = side["data"]["split"]
    out: dict = {}
    for kind in KINDS:
        totals: dict = {}
        for _ in range(COPIES):
            y, where = inject(sel.x[:, column], kind, rng, first, PER_COPY)
            x = sel.x.copy()
            x[:, column] = y
            found = {"ours": ours(model, x)}
            found.update((f"z-score {z:g}", zscore(y, z)) for z in Z_LIMITS)
            for who, rows in found.items():
                got = judge(rows, where, first, len(y), side["horizon"])
                mine = totals.setdefault(who, dict.fromkeys(got, 0))
                for k, v in got.items():
                    mine[k] += v
        out[kind] = totals
    return out


def _pct(a, b) -> str:
    return f"{a / b:.0%}" if b else "–"


def tables(report: dict) -> str:
    lines = ["## Interval coverage on the test tail", "",
             "Calibrated on the validation rows; coverage = share of test readings inside. "
             "Targets: 90 % in 87–93 %, 99 % ≥ 97 %.", "",
             "| series | h | test readings | scale | 80 % | 90 % | 95 % | 99 % | "
             "90 % width | 99 % width |", "|---" * 10 + "|"]
    for row in report["coverage"]:
        for c in row["figures"]:
            lv = {f["level"]: f for f in c["levels"]}
            cells = [f"{np.mean(lv[v]['coverage']):.1%}" for v in (0.8, 0.9, 0.95, 0.99)]
            lines.append(f"| {row['series']} | {row['horizon']} | {c['test']} | {c['scale']} | "
                         + " | ".join(cells) + f" | {np.mean(lv[0.9]['width']):.4g} | "
                         f"{np.mean(lv[0.99]['width']):.4g} |")
    lines += ["", "## Injected faults (horizon 1)", "",
              f"Ours: 99 % interval, stuck after {STUCK} equal readings; z-score L: "
              f"|x − mean| > L std of the last {Z_WINDOW} readings; all min-run "
              f"{HYGIENE['min_run']}, hold-off {HYGIENE['hold_off']}. A fault is detected by "
              f"an alert from its first reading to {GRACE} readings (plus the horizon) after "
              f"its end; recall / precision per kind.", "",
              "| series, detector | " + " | ".join(KINDS)
              + " | false alerts per 1,000 normal readings |", "|---" * (len(KINDS) + 2) + "|"]
    for series, kinds in report["faults"].items():
        for who in next(iter(kinds.values())):
            cells, false, normal = [], 0, 0
            for t in kinds.values():
                f = t[who]
                cells.append(f"{_pct(f['detected'], f['faults'])} / "
                             f"{_pct(f['true'], f['true'] + f['false'])}")
                false, normal = false + f["false"], normal + f["normal"]
            lines.append(f"| {series.removesuffix('.csv')}, {who} | " + " | ".join(cells)
                         + f" | {1000 * false / normal:.1f} |")
    faults = {k: v["ours"]["faults"] for k, v in next(iter(report["faults"].values())).items()}
    lines += ["", "Faults per kind (first series): "
              + ", ".join(f"{k} {n}" for k, n in faults.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: dict = {"coverage": [], "faults": {}}
    with tempfile.TemporaryDirectory() as work:
        for file, target, look_back, horizons in SERIES:
            path = ROOT / "data" / file
            for horizon in horizons:
                model, side = fit(path, target, look_back, horizon, args.epochs, work)
                report["coverage"].append({"series": file, "horizon": horizon,
                                           "figures": coverage_rows(model, side, path)})
                if horizon == 1:
                    report["faults"][file] = faults(model, side, path)
    text = tables(report) + f"\n({time.perf_counter() - started:.0f} s, {args.epochs} epochs)\n"
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "alerts.md").write_text(text)
        (RESULTS / "alerts.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
