"""Benchmarks side by side: the runtime against raw ONNX Runtime, Keras, TFLite and numpy.

    python -m bench                 # everything, CPU (and CUDA where it really works)
    python -m bench --quick         # fewer steps, for a smoke run

Writes bench/results/latest.md and latest.json, with the machine, versions and thread
settings at the top. Measures and prints; never fails because a machine is slow. Every
comparison is measured in the same run, so the ratios hold where absolute times drift.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")   # TensorFlow on CPU: export needs it

import numpy as np  # noqa: E402

from . import steppers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench"
RESULTS = Path(__file__).resolve().parent / "results"
FEATURES = 3
MODELS = {"lstm 1x16": (1, 16), "lstm 2x64": (2, 64), "lstm 2x128": (2, 128)}
# The bundled model's shape (one feature, sequence mode, LSTM 32) exported twice: plain, and
# with the default forecast framing (residual target, differenced inputs, the prev state).
PLAIN, FRAMED = "lstm 1x32, plain", "lstm 1x32, default framing"
# ... and with the linear path lstm-train adds where it wins on validation (water flow: 3 lags)
LINEAR = "lstm 1x32, default framing + linear path (3 lags)"
STREAM_COUNTS = (1, 16, 256, 1024, 4096)


def timings_us(fn, samples: np.ndarray, repeat: int, warmup: int = 20) -> np.ndarray:
    """Per-call wall times of ``fn(sample)`` in µs, after ``warmup`` untimed calls."""
    for s in samples[:warmup]:
        fn(s)
    out = np.empty(repeat)
    clock = time.perf_counter_ns
    for k in range(repeat):
        s = samples[k % len(samples)]
        t0 = clock()
        fn(s)
        out[k] = (clock() - t0) / 1e3
    return out


def summary(us: np.ndarray) -> dict:
    return {"median_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99))}


def build_models(quick: bool) -> dict:
    """Keras sequence models with seeded random weights, saved and exported once."""
    import keras

    from trainer.export import export

    WORK.mkdir(parents=True, exist_ok=True)
    models = {}
    for name, (layers, units) in MODELS.items():
        keras.utils.set_random_seed(0)
        stack = [keras.Input((None, FEATURES))]
        stack += [keras.layers.LSTM(units, return_sequences=True) for _ in range(layers)]
        model = keras.Sequential(stack + [keras.layers.Dense(1)])
        stem = name.replace(" ", "-")
        model.save(WORK / f"{stem}.keras")
        t0 = time.perf_counter()
        export(model, WORK / f"{stem}.onnx", steps=200 if quick else 1000)
        models[name] = {"keras": model, "onnx": str(WORK / f"{stem}.onnx"),
                        "export_s_in_process": time.perf_counter() - t0}
    models |= build_framing_pair(quick)
    demo_keras, demo_onnx = ROOT / "build" / "demo" / "water.keras", ROOT / "exported" / "water-flow.onnx"
    if demo_keras.exists() and demo_onnx.exists():
        models["demo (water-flow)"] = {"keras": keras.models.load_model(demo_keras),
                                       "onnx": str(demo_onnx)}
    return models


def build_framing_pair(quick: bool) -> dict:
    """The same seeded LSTM 32 exported plain and with the trainer's default framing.

    The framed one gets the sidecar ``lstm-train`` writes for the bundled water-flow model
    (its scaler and forecast keys), so the exporter builds (and folds) the same framing.
    """
    import keras

    from trainer.export import export
    from trainer.train import sidecar_path

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 1)), keras.layers.LSTM(32, return_sequences=True),
                              keras.layers.Dense(1)])
    scale = 0.26686434395848735          # the bundled model's change scale (l/s)
    WORK.mkdir(parents=True, exist_ok=True)
    side = {"mode": "sequence", "look_back": 24, "features": ["flow"], "targets": ["flow"],
            "scaler": {"kind": "robust", "x": {"mean": [-0.03], "std": [scale]},
                       "y": {"mean": [0.0], "std": [scale]}},
            "forecast": {"target_kind": "residual", "target_features": [0], "difference": True,
                         "delta_scale": [scale]}}
    linear = json.loads(json.dumps(side))
    linear["forecast"]["linear"] = {"weights": [[[0.4]], [[-0.2]], [[0.1]]], "bias": [0.0]}
    out = {}
    for name, sidecar in ((PLAIN, None), (FRAMED, side), (LINEAR, linear)):
        stem = WORK / name.replace(" ", "-").replace(",", "")
        model.save(stem.with_suffix(".keras"))
        if sidecar is not None:
            sidecar_path(stem.with_suffix(".keras")).write_text(json.dumps(sidecar))
        report = export(stem.with_suffix(".keras"), stem.with_suffix(".onnx"),
                        steps=200 if quick else 1000)
        out[name] = {"keras": model, "onnx": str(stem.with_suffix(".onnx")),
                     "nodes": sum(report.op_counts.values())}
    return out


def bench_framing(models: dict, rounds: int, repeat: int) -> dict:
    """µs per reading, default framing against plain, interleaved; the least round median."""
    import runtime

    streams = {name: runtime.load(models[name]["onnx"], device="cpu").stream()
               for name in (PLAIN, FRAMED, LINEAR)}
    x = np.full((512, 1), 100.0, np.float32) + np.random.default_rng(2).standard_normal(
        (512, 1)).astype(np.float32)
    medians: dict = {name: [] for name in streams}
    for _ in range(rounds):
        for name, stream in streams.items():
            medians[name].append(float(np.median(timings_us(stream.step, x, repeat))))
    row = {name: {"us": min(m), "spread_us": [min(m), max(m)], "nodes": models[name]["nodes"]}
           for name, m in medians.items()}
    row["ratio"] = row[FRAMED]["us"] / row[PLAIN]["us"]
    row["ratio_linear"] = row[LINEAR]["us"] / row[PLAIN]["us"]
    for name, ratio in ((FRAMED, row["ratio"]), (LINEAR, row["ratio_linear"])):
        print(f"  {name.removeprefix('lstm 1x32, ')} vs plain LSTM 32: {row[name]['us']:.1f} vs "
              f"{row[PLAIN]['us']:.1f} µs per reading ({ratio:.2f}x; "
              f"{row[name]['nodes']} vs {row[PLAIN]['nodes']} nodes)", flush=True)
    return row


def bench_single(models: dict, repeat: int, device: str) -> dict:
    """Per-step latency, one stream, every contender on the same model."""
    import runtime

    rows = {}
    rng = np.random.default_rng(0)
    for name, m in models.items():
        f = m["keras"].inputs[0].shape[-1]
        samples = rng.standard_normal((512, f)).astype(np.float32)
        model = runtime.load(m["onnx"], device=device)
        contenders = {"runtime": steppers.runtime_stepper(model)}
        if device == "cpu":
            contenders |= {"ort": steppers.ort_stepper(m["onnx"]),
                           "tflite": steppers.tflite_stepper(m["keras"]),
                           "numpy": steppers.numpy_stepper(m["keras"]),
                           "keras": steppers.keras_stepper(m["keras"])}
        # Interleaved rounds: drift on a shared machine hits every contender alike.
        rounds, times = 10, {who: [] for who in contenders}
        for _ in range(rounds):
            for who, fn in contenders.items():
                n = max(5, repeat // 200) if who == "keras" else repeat // rounds
                times[who].append(timings_us(fn, samples, n))
        row = {who: summary(np.concatenate(t)) for who, t in times.items()}
        rows[name] = row
        print(f"  single stream, {name}: " + ", ".join(
            f"{k} {v['median_us']:.1f}" for k, v in row.items()) + " µs (median)", flush=True)
    return rows


def bench_many(models: dict, device: str, counts, budget_s: float) -> dict:
    """Stream-steps per second: N streams in one call vs the same N streams one by one."""
    import runtime

    from runtime.device import SessionConfig

    rows = {}
    for name in list(models)[:2]:
        model = runtime.load(models[name]["onnx"], device=device)
        # Ready-made options: every call on one thread, the automatic threads' reference.
        single = runtime.load(models[name]["onnx"], device=device,
                              session_options=SessionConfig(threads=1).options())
        f = model.n_features
        row = {}
        for n in counts:
            streams = [model.stream() for _ in range(n)]
            others = [single.stream() for _ in range(n)]
            samples = np.random.default_rng(n).standard_normal((n, f)).astype(np.float32)
            batched = _rate(lambda: model.step(streams, samples), n, budget_s)
            one_thread = _rate(lambda: single.step(others, samples), n, budget_s)
            alone = _rate(lambda: [s.step(x) for s, x in zip(streams, samples)], n, budget_s)
            row[str(n)] = {"batched_steps_per_s": batched, "one_by_one_steps_per_s": alone,
                           "ratio": batched / alone, "one_thread_steps_per_s": one_thread}
            print(f"  {name}, {n} streams: {batched:,.0f} stream-steps/s in one call "
                  f"(automatic threads), {one_thread:,.0f} on one thread, {alone:,.0f} one "
                  f"by one ({batched / alone:.1f}x)", flush=True)
        rows[name] = row
    return rows


def _rate(fn, per_call: int, budget_s: float) -> float:
    fn()                                                   # warm-up
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < budget_s:
        fn()
        calls += 1
    return calls * per_call / (time.perf_counter() - t0)


def bench_chunked(models: dict, device: str, n: int = 10_000) -> dict:
    """Readings per second feeding an n-reading series in chunks vs one step at a time."""
    import runtime

    rows = {}
    for name in list(models)[:2]:
        model = runtime.load(models[name]["onnx"], device=device)
        series = np.random.default_rng(1).standard_normal((n, model.n_features)).astype(np.float32)
        row = {}
        for chunk in (1, 100, 1000, n):
            stream = model.stream()
            t0 = time.perf_counter()
            if chunk == 1:
                for x in series:
                    stream.step(x)
            else:
                for k in range(0, n, chunk):
                    stream.feed(series[k:k + chunk])
            row[str(chunk)] = n / (time.perf_counter() - t0)
        rows[name] = row
        print(f"  {name}, {n:,} samples: " + ", ".join(
            f"chunk {k}: {v:,.0f}/s" for k, v in row.items()), flush=True)
    return rows


def _child(code: str, runs: int = 5) -> dict:
    """Median wall time of a fresh Python process running ``code`` (and what it printed)."""
    times, out = [], ""
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})
        times.append(time.perf_counter() - t0)
        out = proc.stdout.strip() or proc.stderr.strip()[-300:]
    return {"median_s": float(np.median(times)), "min_s": float(min(times)), "output": out}


def bench_cold(models: dict, runs: int) -> dict:
    onnx = models["lstm 1x16"]["onnx"]
    keras_file = str(WORK / "lstm-1x16.keras")
    lstm_run = str(Path(sys.executable).parent / "lstm-run")
    first = "import numpy as np; x = np.zeros(3, np.float32)"
    rows = {
        "lstm-run --info": _child(f"import subprocess; subprocess.run([{lstm_run!r}, "
                                  f"{onnx!r}, '--info'], capture_output=True)", runs),
        "runtime: import + load + first prediction": _child(
            f"{first}; import runtime; m = runtime.load({onnx!r}, device='cpu'); "
            f"print(m.stream().step(x))", runs),
        "keras: import + load + first prediction": _child(
            f"{first}; import keras; m = keras.models.load_model({keras_file!r}); "
            f"print(m(x[None, None]))", max(2, runs // 2)),
    }
    for k, v in rows.items():
        print(f"  cold start, {k}: {v['median_s']:.3f} s (median of fresh processes)", flush=True)
    return rows


def bench_memory(models: dict) -> dict:
    onnx = models["lstm 2x64"]["onnx"]
    rows = {}
    for n in (1, 4096):
        # VmHWM, not ru_maxrss: the latter survives exec and would report this (TensorFlow-
        # laden) parent's peak, not the child's.
        code = (f"import numpy as np, runtime; m = runtime.load({onnx!r}, device='cpu');"
                f"s = [m.stream() for _ in range({n})];"
                f"x = np.zeros(({n}, m.n_features), np.float32);"
                f"[m.step(s, x) for _ in range(10)];"
                f"print(next(l.split()[1] for l in open('/proc/self/status') "
                f"if l.startswith('VmHWM')))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})
        rows[str(n)] = {"peak_rss_mib": int(proc.stdout.split()[-1]) / 1024}
        print(f"  peak RSS, {n} streams: {rows[str(n)]['peak_rss_mib']:.1f} MiB", flush=True)
    return rows


def bench_export(runs: int) -> dict:
    lstm_export = str(Path(sys.executable).parent / "lstm-export")
    keras_file, out = str(WORK / "lstm-2x64.keras"), str(WORK / "cli-2x64.onnx")
    res = _child(f"import subprocess, sys; p = subprocess.run([{lstm_export!r}, {keras_file!r}, "
                 f"'-o', {out!r}], capture_output=True, text=True); print(p.returncode)", runs)
    print(f"  lstm-export 2x64 (TensorFlow import + parity check): {res['median_s']:.2f} s",
          flush=True)
    return res


def machine() -> dict:
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor()) \
        if Path("/proc/cpuinfo").exists() else platform.processor()
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "onnxruntime": onnxruntime.__version__}
    for mod in ("tensorflow", "keras"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    from runtime.device import BATCH_THREADS_FROM

    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "versions": versions, "load": [round(v, 2) for v in os.getloadavg()],
            "threads": f"runtime and raw ORT: 1 intra-op thread, sequential (runtime: every "
                       f"core for calls of {BATCH_THREADS_FROM:,} streams or more); "
                       f"TFLite: 1 thread"}


def cuda_works() -> bool:
    import runtime

    try:
        runtime.load(str(WORK / "lstm-1x16.onnx"), device="cuda")
        return True
    except runtime.LstmEdgeError:
        return False


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    repeat, runs, budget = (500, 2, 0.2) if args.quick else (5000, 5, 1.0)

    report = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print("building and exporting the models ...", flush=True)
    models = build_models(args.quick)
    report["export_in_process_s"] = {k: m["export_s_in_process"] for k, m in models.items()
                                     if "export_s_in_process" in m}
    report["framing"] = bench_framing(models, 5 if args.quick else 15, repeat // 10)
    from . import framing_floor

    report["framing_floor"] = framing_floor.measure(5 if args.quick else 15)
    report["single"] = bench_single(models, repeat, "cpu")
    from . import live

    report["live"] = live.measure(300 if args.quick else 2000)
    report["many"] = bench_many(models, "cpu", STREAM_COUNTS, budget)
    report["chunked"] = bench_chunked(models, "cpu")
    report["cold"] = bench_cold(models, runs)
    report["memory"] = bench_memory(models)
    report["export_cli"] = bench_export(max(1, runs // 2))
    report["load_after"] = [round(v, 2) for v in os.getloadavg()]
    if cuda_works():
        print("CUDA works here: the same on the GPU", flush=True)
        report["cuda_single"] = bench_single(models, repeat, "cuda")
        report["cuda_many"] = bench_many(models, "cuda", STREAM_COUNTS + (16384,), budget)
    else:
        report["cuda"] = "no working CUDA execution provider on this machine"

    from .report import markdown

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "latest.md").write_text(markdown(report))
    print(f"\n{markdown(report)}\nwrote {args.out / 'latest.md'} and latest.json")


if __name__ == "__main__":
    main()
