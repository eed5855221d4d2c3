"""Calibrated intervals and alerts on the bundled CSVs: coverage, width, detected faults.

``python -m bench.alerts`` trains a small model (sequence mode, 16 units, few epochs) for
every bundled CSV at two horizons, exports it and streams the whole series through the
runtime. Two tables:

1. Test-tail coverage (share of test readings inside the interval, with the count and its
   Wilson 95 % interval) and mean width of the 90 and 99 % intervals, calibrated on the
   validation rows with the scale the calibration chose on those rows alone
   (trainer.calibrate.choose_scale); then every candidate scale on the test tail, to show
   what the choice cost or gained (not used to choose); and the same intervals streamed by
   the runtime with each stream tracking its quantile (``--adapt``, :func:`tracked`).
   Targets: 90 % within 87–93 %, 99 % at least 97 %.
2. Faults injected after the training rows (bench/faults.py, fixed seed): recall and
   precision of the alerts per fault kind and false alerts per 1,000 normal readings, for
   our alerts (99 % interval, ``--stuck``; and with ``--cusum``, or ``--adapt``) and a
   rolling z-score detector (|x - mean| / std of the last 24 readings above L: 3, the usual hand setting,
   and the L whose false-alert rate on these same readings is at most ours, found by
   bisection), all with the same hygiene (``--min-run``, ``--hold-off``).

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
# Page's CUSUM: h = 4 units of the 80 % half-width (about 5 std of normal errors, with
# k = 0.5 units about 0.64 std: near the textbook k = 0.5, h = 5 std), set before any run.
CUSUM = 4.0
Z_WINDOW, Z_LIMIT = 24, 3.0           # 3: the usual hand setting
GRACE = 3            # readings after a fault (plus the horizon) whose alerts are not false
COPIES, PER_COPY = 10, 4
ADAPT = (0.01, 0.05)  # quantile tracking rates shown (AlertConfig.adapt), slow and fast


def fit(path: Path, target: str, look_back: int, horizon: int, epochs: int, seed: int,
        work: str):
    """Train, export, load: the runtime's model and the sidecar."""
    from runtime import load
    from trainer.export import export
    from trainer.model import ModelConfig
    from trainer.train import TrainConfig, train

    cfg = TrainConfig(look_back=look_back, horizon=horizon, epochs=epochs, verbose=0,
                      seed=seed, model=ModelConfig(mode="sequence", units=16))
    out = Path(work) / f"{path.stem}-h{horizon}-{seed}.keras"
    result = train(path, target, None, out, cfg)
    onnx = export(out, out.with_suffix(".onnx"), check=False).path
    return load(onnx, device="cpu"), result.sidecar


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's 95 % interval of a share k / n (Wilson 1927, JASA 22(158))."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (float(mid - half), float(mid + half))


def coverage_rows(model, side, path) -> dict:
    """The test tail's coverage of the intervals the calibration chose, and of each
    candidate scale (calibrated on the validation rows too; only shown)."""
    from trainer.calibrate import (CANDIDATES, choose_scale, coverage, intervals,
                                   target_columns)
    from trainer.data import read_csv, select

    sel = select(read_csv(path), side["targets"], side["features"], "error", source=str(path))
    h, data = side["horizon"], side["data"]
    pred = model.stream().feed(sel.x.astype(np.float32)).astype(np.float64)   # (rows, targets)
    last = np.arange(len(pred) - h)
    val = last[(last + h >= data["split"]) & (last + h < data["test"])]
    test = last[last + h >= data["test"]]
    floor_rows, columns = sel.y[:data["split"]], target_columns(sel.features, sel.targets)
    choice = choose_scale(sel.y, pred[val], val, h, floor_rows)
    out = {"test": len(test), "validation": len(val), "chosen": list(choice["chosen"]),
           "crossfit": choice["figures"], "candidates": []}
    for cand in CANDIDATES:
        iv = intervals(sel.y, pred[val], val, h, columns, "validation", floor_rows, cand)
        figures = {"scale": cand[0], "readings": cand[1],
                   "levels": coverage(iv, sel.y, pred[test], test, h),
                   "left_out": sum(len(c) for c in (iv.get("left_out") or {}).get("scores", []))}
        out["candidates"].append(figures)
        if cand == choice["chosen"]:
            out["levels"] = figures["levels"]
    out["adaptive"] = [tracked(model, sel.x, pred, val, test, h, level, rate)
                       for rate in (0.0,) + ADAPT for level in (0.9, 0.99)]
    return out


def tracked(model, x, pred, val, test, h, level, rate) -> dict:
    """The test tail's coverage and mean width at ``level`` as the runtime streams them
    (runtime.alerts, ``AlertConfig(adapt=rate)``: quantile tracking), each stream adapting
    from the check of its first validation forecast on, as a service starts after training
    (rate 0: the file's split-conformal interval, streamed)."""
    from runtime.alerts import AlertConfig, Alerts, AlertState

    fixed = Alerts(model, AlertConfig(level=level))
    adapting = Alerts(model, AlertConfig(level=level, adapt=rate))
    state, first = AlertState(), val[0] + h
    answers = [(adapting if i >= first else fixed).observe(state, x[i], pred[i])
               for i in range(len(x))]
    return {"rate": rate, "level": level,
            "coverage": float(np.mean([not answers[t + h].anomaly for t in test])),
            "width": float(np.mean([answers[t].hi - answers[t].lo for t in test]))}


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


def ours(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Rows where our alerts (99 % interval, stuck rule; and with CUSUM) are raised on
    readings ``x``."""
    from runtime.alerts import AlertConfig, Alerts, AlertState

    pred = model.stream().feed(x.astype(np.float32))                   # (rows, targets)
    out = {}
    for who, cusum, adapt in (("ours", 0.0, 0.0), (f"ours + CUSUM {CUSUM:g}", CUSUM, 0.0),
                              (f"ours, adapting at {ADAPT[-1]:g}", 0.0, ADAPT[-1])):
        alerts = Alerts(model, AlertConfig(level=0.99, stuck=STUCK, cusum=cusum, adapt=adapt,
                                           **HYGIENE))
        state = AlertState()
        out[who] = np.asarray([i for i, (reading, p) in enumerate(zip(x, pred))
                               if alerts.observe(state, reading, p).alert], int)
    return out


def zvalues(y: np.ndarray) -> np.ndarray:
    """``|y - mean| / std`` of the last ``Z_WINDOW`` readings at each row (0 before; inf
    where a flat past is left, 0 where it is not)."""
    z = np.zeros(len(y))
    for i in range(Z_WINDOW, len(y)):
        past = y[i - Z_WINDOW:i]
        std = past.std()
        z[i] = abs(y[i] - past.mean()) / std if std > 0 else np.inf * (y[i] != past[0])
    return np.nan_to_num(z, nan=0.0)


def zscore(z: np.ndarray, limit: float) -> np.ndarray:
    """Rows where the rolling z-score detector at ``limit`` raises an alert."""
    return raised(z > limit, **HYGIENE)


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
    first, h = side["data"]["split"], side["horizon"]
    runs = []                      # (kind, where, {detector: alert rows}, z-values)
    for kind in KINDS:
        for _ in range(COPIES):
            y, where = inject(sel.x[:, column], kind, rng, first, PER_COPY)
            x = sel.x.copy()
            x[:, column] = y
            runs.append((kind, where, ours(model, x), zvalues(y)))

    def totals(who: str, found) -> dict:
        out: dict = {}
        for kind, where, mine, z in runs:
            got = judge(found(mine, z), where, first, len(z), h)
            t = out.setdefault(kind, dict.fromkeys(got, 0))
            for k, v in got.items():
                t[k] += v
        return {"detector": who, "kinds": out}

    rows = [totals(who, lambda mine, z, who=who: mine[who]) for who in runs[0][2]]
    rows.append(totals(f"z-score {Z_LIMIT:g}", lambda mine, z: zscore(z, Z_LIMIT)))
    for target in [r for r in rows[:len(runs[0][2])] if "adapting" not in r["detector"]]:
        limit = match_limit(lambda L: totals("", lambda mine, z: zscore(z, L)),
                            false_rate(target))
        rows.append(totals(f"z-score at the false-alert rate of {target['detector']}",
                           lambda mine, z, L=limit: zscore(z, L)) | {"limit": limit})
    return {"detectors": rows}


def false_rate(row: dict) -> float:
    """False alerts per 1,000 normal readings, over every kind."""
    false = sum(t["false"] for t in row["kinds"].values())
    return 1000 * false / sum(t["normal"] for t in row["kinds"].values())


def match_limit(run, rate: float, low: float = 0.5, high: float = 20.0) -> float:
    """The smallest z-score limit whose false-alert rate is at most ``rate`` (bisection;
    the rate falls as the limit grows, up to the hygiene's small wobbles)."""
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if false_rate(run(mid)) > rate else (low, mid)
    return high


def _pct(a, b) -> str:
    return f"{a / b:.0%}" if b else "–"


def _name(scale: str, readings: int) -> str:
    return "none" if scale == "none" else f"mean-abs-change {readings}"


def _cover(per_seed: list[dict], level: float) -> str:
    """``90.4 % (172, 170, 173 of 190; 86–93 %)``: the share over the seeds, each seed's
    count, and Wilson's 95 % interval for one model of n readings at that share."""
    n = per_seed[0]["test"]
    counts = [int(round(np.mean(next(f for f in c["levels"] if f["level"] == level)
                                ["coverage"]) * n)) for c in per_seed]
    share = sum(counts) / (n * len(counts))
    lo, hi = wilson(round(share * n), n)
    return f"{share:.1%} ({', '.join(map(str, counts))} of {n}; {lo:.0%}–{hi:.0%})"


def _width(per_seed: list[dict], level: float) -> str:
    """The mean width of the interval at ``level`` over the seeds."""
    widths = [np.mean(f["width"]) for c in per_seed for f in c["levels"] if f["level"] == level]
    return f"{np.mean(widths):.4g}"


def _chosen(seed: dict) -> dict:
    """One seed's figures for the scale its calibration chose."""
    return next(c for c in seed["candidates"] if [c["scale"], c["readings"]] == seed["chosen"])


def coverage_table(report: dict) -> list[str]:
    seeds = len(report["coverage"][0]["seeds"])
    lines = ["## Interval coverage on the test tail", "",
             "Calibrated on the validation rows, with the scale chosen on those rows alone "
             "(trainer.calibrate.choose_scale: cross-fitted halves, lowest weighted interval "
             f"score). {seeds} models per row (seeds 0–{seeds - 1}): coverage = share of test "
             "readings inside over the seeds, each seed's count, and Wilson's 95 % interval "
             "for one model of that many readings at that share (a miss outside it is more "
             "than chance). Targets: 90 % in 87–93 %, 99 % ≥ 97 %. Left out: validation "
             "rows whose scores the calibration left out as faults (trainer.calibrate.faults), "
             "per seed.", "",
             "| series | h | scale chosen (per seed) | 90 % on validation (cross-fitted) | "
             "left out | 90 % on test | 99 % on test | 90 % width | 99 % width |",
             "|---" * 9 + "|"]
    for row in report["coverage"]:
        per = row["seeds"]
        fits = [next(f for f in c["crossfit"] if [f["scale"], f["readings"]] == c["chosen"])
                for c in per]
        lines.append(f"| {row['series'].removesuffix('.csv')} | {row['horizon']} | "
                     f"{', '.join(_name(*c['chosen']) for c in per)} | "
                     f"{np.mean([f['coverage'] for f in fits]):.1%} of {per[0]['validation']} | "
                     f"{', '.join(str(_chosen(c).get('left_out', 0)) for c in per)} | "
                     f"{_cover(per, 0.9)} | {_cover(per, 0.99)} | {_width(per, 0.9)} | "
                     f"{_width(per, 0.99)} |")
    first = report["coverage"][0]["seeds"][0]["crossfit"]
    lines += ["", "Every candidate's 90 % coverage on the test tail / cross-fitted on the "
              "validation rows, mean over the seeds (shown, not used to choose; *N: chosen "
              "for N seeds):", "",
              "| series | h | " + " | ".join(_name(f["scale"], f["readings"]) for f in first)
              + " |", "|---" * (2 + len(first)) + "|"]
    for row in report["coverage"]:
        cells = []
        for i, cand in enumerate(first):
            test = [np.mean(next(f for f in c["candidates"][i]["levels"] if f["level"] == 0.9)
                            ["coverage"]) for c in row["seeds"]]
            fit = [c["crossfit"][i]["coverage"] for c in row["seeds"]]
            chosen = sum([cand["scale"], cand["readings"]] == c["chosen"] for c in row["seeds"])
            cells.append(f"{np.mean(test):.1%} / {np.mean(fit):.1%}"
                         + (f" *{chosen}" if chosen else ""))
        lines.append(f"| {row['series'].removesuffix('.csv')} | {row['horizon']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Streamed by the runtime (runtime.alerts), each stream tracking its own "
              "quantile from its misses (AlertConfig.adapt, --adapt: quantile tracking, "
              "Angelopoulos et al. 2023) from its first validation forecast on; rate 0 is "
              "the file's interval unchanged. Test-tail coverage at 90 / 99 % and the mean "
              "width of the 90 / 99 % interval, mean over the seeds:", "",
              "| series | h | " + " | ".join(f"rate {r:g}" for r in (0.0,) + ADAPT) + " |",
              "|---" * (3 + len(ADAPT)) + "|"]
    for row in report["coverage"]:
        cells = []
        for rate in (0.0,) + ADAPT:
            got = {(lv, k): np.mean([a[k] for c in row["seeds"] for a in c["adaptive"]
                                     if a["rate"] == rate and a["level"] == lv])
                   for lv in (0.9, 0.99) for k in ("coverage", "width")}
            cells.append(f"{got[0.9, 'coverage']:.1%} / {got[0.99, 'coverage']:.1%} "
                         f"({got[0.9, 'width']:.4g} / {got[0.99, 'width']:.4g})")
        lines.append(f"| {row['series'].removesuffix('.csv')} | {row['horizon']} | "
                     + " | ".join(cells) + " |")
    return lines


def pooled(per_seed: list[dict]) -> list[dict]:
    """Each detector's counts summed over the seeds' runs (the same faults each time)."""
    out = []
    for rows in zip(*(found["detectors"] for found in per_seed)):
        kinds = {k: {f: sum(r["kinds"][k][f] for r in rows) for f in rows[0]["kinds"][k]}
                 for k in rows[0]["kinds"]}
        row = {"detector": rows[0]["detector"], "kinds": kinds}
        if "limit" in rows[0]:
            row["limits"] = [r["limit"] for r in rows]
        out.append(row)
    return out


def fault_table(report: dict) -> list[str]:
    seeds = len(next(iter(report["faults"].values())))
    lines = ["## Injected faults (horizon 1)", "",
             f"Ours: 99 % interval, stuck after {STUCK} equal readings; + CUSUM: Page's test "
             f"on the standardized residuals, threshold {CUSUM:g} (runtime.alerts); adapting: "
             f"each stream tracks its quantile (--adapt {ADAPT[-1]:g}) from its first reading. "
             "z-score L: "
             f"|x − mean| > L std of the last {Z_WINDOW} readings; L = {Z_LIMIT:g}, and the "
             "smallest L whose false alerts per 1,000 normal readings are at most ours, found "
             "by bisection on these same readings, per model (which favours the z-score: it "
             f"is tuned on the data it is judged on). All min-run {HYGIENE['min_run']}, "
             f"hold-off {HYGIENE['hold_off']}. A fault is detected by an alert from its first "
             f"reading to {GRACE} readings (plus the horizon) after its end; recall / "
             f"precision per kind, counts summed over the {seeds} models (seeds).", "",
             "| series, detector | " + " | ".join(KINDS)
             + " | false alerts per 1,000 normal readings |", "|---" * (len(KINDS) + 2) + "|"]
    for series, per_seed in report["faults"].items():
        for row in pooled(per_seed):
            cells = [f"{_pct(t['detected'], t['faults'])} / "
                     f"{_pct(t['true'], t['true'] + t['false'])}" for t in row["kinds"].values()]
            name = row["detector"] + (f" (L = {', '.join(f'{v:.2f}' for v in row['limits'])})"
                                      if "limits" in row else "")
            lines.append(f"| {series.removesuffix('.csv')}, {name} | "
                         + " | ".join(cells) + f" | {false_rate(row):.1f} |")
    counts = {k: t["faults"] for k, t in
              next(iter(report["faults"].values()))[0]["detectors"][0]["kinds"].items()}
    lines += ["", "Faults per kind and model (first series): "
              + ", ".join(f"{k} {n}" for k, n in counts.items()) + "."]
    return lines


def tables(report: dict) -> str:
    return "\n".join(coverage_table(report) + [""] + fault_table(report)) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3, help="models per setting (seeds 0, "
                        "1, ...: as bench.forecast)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    report: dict = {"coverage": [], "faults": {}}
    with tempfile.TemporaryDirectory() as work:
        for file, target, look_back, horizons in SERIES:
            path = ROOT / "data" / file
            for horizon in horizons:
                row: dict = {"series": file, "horizon": horizon, "seeds": []}
                for seed in range(args.seeds):
                    model, side = fit(path, target, look_back, horizon, args.epochs, seed,
                                      work)
                    row["seeds"].append(coverage_rows(model, side, path))
                    if horizon == 1:
                        report["faults"].setdefault(file, []).append(faults(model, side, path))
                report["coverage"].append(row)
    text = tables(report) + (f"\n({time.perf_counter() - started:.0f} s, {args.epochs} "
                             f"epochs, {args.seeds} seeds)\n")
    print(text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "alerts.md").write_text(text)
        (RESULTS / "alerts.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
