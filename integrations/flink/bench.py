"""Flink job throughput per task slot, latency and an exact restore, beside ``lstm-run``.

Run with the Flink environment (``make flink-env``)::

    .venv-flink/bin/python -m integrations.flink.bench              # ~3 minutes
    .venv-flink/bin/python -m integrations.flink.bench --quick      # a smoke run

Every job runs with parallelism 1 (one task slot) on a local mini-cluster. The same readings
are read in two orders: **per-sensor files** (one file per sensor, each in time order) and
**interleaved** (one file in time order, as a live feed arrives: every sensor's first
reading, then every sensor's second, ...). For each order:

- **records/s per slot** of the batched operator (the default), the per-record operator,
  and the **no-model ceiling**: the batched job's own pipeline (routing, shard keying, the
  pending lines in keyed state, the flushes) with an operator that echoes the lines instead
  of answering them. Answers are timed as they reach stdout, between the 10th and the 90th
  percentile of the run, so start-up (JVM, Python workers, model load) is left out;
- **lstm-run** on the same lines, one process (start-up included).

Then **latency**: a watched folder gets a small file every 50 ms, each line stamped with the
time its file landed; latency is landing to answer on stdout (file discovery included). And
**restore**: the interleaved input run to part files with a checkpoint a second, SIGKILLed
half-way, resumed with ``--resume latest``: its answers must be ``lstm-run``'s, each once.
The machine's load average is printed beside the figures: on a shared machine it decides them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "exported" / "water-flow.onnx"
FEATURE = "Water flow [l/s]"
JOB = ["--stream-column", "sensor", "--time-column", "t"]

# (name, job options): what is timed in each input order
VARIANTS = [
    ("batched, defaults (flush 200 ms / 5,000, 4 shards)", []),
    ("batched, flush 50 ms / 2,000", ["--flush-time", "50", "--flush-size", "2000"]),
    ("batched, 32 shards", ["--shards", "32"]),
    ("per-record operator", ["--operator", "record"]),
    ("no-model ceiling (batched pipeline, lines echoed)", ["--echo"]),
]
LATENCY = [
    ("batched, flush 200 ms, bundle 100 ms", []),
    ("batched, flush 10 ms, bundle 10 ms", ["--flush-time", "10", "--bundle-time", "10"]),
    ("per-record, bundle 10 ms", ["--operator", "record", "--bundle-time", "10"]),
]


def echo_job(argv: list[str]) -> None:
    """The batched job with its operator's answers replaced by the lines themselves."""
    from . import cli as job
    from . import operators
    from .batch import BatchJob

    class Echo(BatchJob):
        def answer_many(self, lines, stored):
            return lines, {}

    class EchoPredict(operators.BatchPredict):
        def open(self, runtime_context):
            super().open(runtime_context)
            self.job = Echo(self.model, self.spec, self.missing)

    operators.BatchPredict = EchoPredict     # build() takes the operator from the module
    job.main(argv)


def write_input(folder: Path, sensors: int, rows: int) -> list[str]:
    """Readings of ``sensors`` sensors, one file per sensor; returns the lines in time order."""
    rng = np.random.default_rng(0)
    (folder / "per-sensor").mkdir(parents=True, exist_ok=True)
    (folder / "interleaved").mkdir(parents=True, exist_ok=True)
    table = []
    for s in range(sensors):
        values = 100 + 5 * np.sin(np.arange(rows) / 10 + s) + rng.normal(0, 1, rows)
        lines = [json.dumps({"sensor": f"s{s:04d}", "t": i, FEATURE: round(float(v), 3)})
                 for i, v in enumerate(values)]
        (folder / "per-sensor" / f"sensor-{s:04d}.jsonl").write_text("\n".join(lines) + "\n")
        table.append(lines)
    interleaved = [table[s][i] for i in range(rows) for s in range(sensors)]
    (folder / "interleaved" / "all.jsonl").write_text("\n".join(interleaved) + "\n")
    return interleaved


def job_command(source: Path, *extra: str) -> list[str]:
    if "--echo" in extra:
        extra = tuple(e for e in extra if e != "--echo")
        return [sys.executable, "-m", "integrations.flink.bench", "--echo-job", str(MODEL),
                "-i", str(source), *JOB, *extra]
    return [sys.executable, "-m", "integrations.flink", str(MODEL), "-i", str(source),
            *JOB, *extra]


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def throughput(source: Path, total: int, extra: list[str], timeout: float) -> dict:
    """Run the job over ``source``; time the answers as they come out."""
    proc = subprocess.Popen(job_command(source, *extra), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    started = time.perf_counter()
    times = []
    try:
        for _line in proc.stdout:
            times.append(time.perf_counter())
            if len(times) == total or times[-1] - started > timeout:
                break
    finally:
        kill(proc)
    if len(times) < total // 2:
        return {"records": len(times), "per_s": float("nan")}
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9)
    return {"records": len(times), "per_s": (hi - lo) / (times[hi] - times[lo])}


def latency(tmp: Path, seconds: float, per_file: int, extra: list[str]) -> dict:
    """Small files into a watched folder, every 50 ms; landing-to-answer times."""
    folder = tmp / "live"
    folder.mkdir(parents=True)
    proc = subprocess.Popen(job_command(folder, "--watch", "0.1", *extra), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    os.set_blocking(proc.stdout.fileno(), False)
    delays, pending, n, first, last, end = [], b"", 0, None, 0.0, None
    deadline = time.monotonic() + 120 + seconds
    try:
        while time.monotonic() < deadline:
            now = time.time()
            # the first file warms up (start-up is not latency); then one every 50 ms
            if n == 0 or (end is not None and now < end and now - last >= 0.05):
                stamp = time.time()
                lines = [json.dumps({"sensor": f"s{k}", "t": n, FEATURE: 100.0 + k,
                                     "landed": stamp}) for k in range(per_file)]
                tmpfile = folder / f".f{n}.tmp"
                tmpfile.write_text("\n".join(lines) + "\n")
                tmpfile.rename(folder / f"f{n:06d}.jsonl")
                n, last = n + 1, stamp
            chunk = proc.stdout.read() or b""
            got = time.time()
            *done, pending = (pending + chunk).split(b"\n")
            for line in done:
                landed = json.loads(line)["landed"]
                if end is None:
                    end, first = got + seconds, got   # the first answer: measuring starts now
                elif landed > first:                  # files of the warm-up left out
                    delays.append(got - landed)
            if end is not None and now > end + 2:
                break
            time.sleep(0.005)
    finally:
        kill(proc)
    if not delays:
        return {"files": n, "answers": 0}
    d = np.array(delays) * 1000
    return {"answers": len(d), "p50_ms": float(np.median(d)), "p99_ms": float(np.percentile(d, 99))}


def lstm_run(source: Path, tmp: Path) -> dict:
    """``lstm-run --stream-column sensor`` over the same lines; its output file."""
    exe = ROOT / ".venv" / "bin" / "lstm-run"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "runtime.cli"]
    out = tmp / "lstm-run.jsonl"
    start = time.perf_counter()
    done = subprocess.run(command + [str(MODEL), "-i", str(source), "-o", str(out),
                                     "--stream-column", "sensor"], capture_output=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode:
        return {"error": done.stderr.decode()[-300:]}
    return {"seconds": seconds, "out": out}


def restore(source: Path, tmp: Path, want: list[str], timeout: float = 240) -> str:
    """SIGKILL half-way, ``--resume latest``; the answers against ``lstm-run``'s."""
    out, checkpoints = tmp / "restore-out", tmp / "restore-ck"
    args = job_command(source, "-o", str(out), "--checkpoint-dir", str(checkpoints),
                       "--checkpoint-every", "1")

    def committed() -> list[str]:
        return [line for p in sorted(out.glob("part*")) for line in
                p.read_text().splitlines()] if out.is_dir() else []

    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while len(committed()) < len(want) // 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        kill(proc)
    before = len(committed())
    done = subprocess.run(args + ["--resume", "latest"], cwd=ROOT, capture_output=True,
                          timeout=timeout, start_new_session=True)
    after = committed()
    if done.returncode:
        return f"resume failed: {done.stderr.decode()[-300:]}"
    exact = sorted(after) == sorted(want)
    return (f"killed with {before:,} of {len(want):,} answers committed; after --resume "
            f"latest {len(after):,} answers, {len(after) - len(set(after))} duplicates, "
            f"{'equal to' if exact else 'NOT equal to'} lstm-run's, byte for byte")


def load() -> str:
    return "load {:.1f}".format(os.getloadavg()[0])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small input, fewer variants")
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--rows", type=int, default=300, help="readings per sensor")
    parser.add_argument("--skip", default="", help="comma-separated: latency,restore")
    args, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--echo-job":
        return echo_job(rest[1:])
    sensors, rows = (50, 200) if args.quick else (args.sensors, args.rows)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {load()}; python "
          f"{platform.python_version()}; {sensors} sensors x {rows} readings = "
          f"{sensors * rows:,} lines, model {MODEL.name}, parallelism 1", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="flink-bench-"))
    try:
        want_order = write_input(tmp, sensors, rows)
        run = lstm_run(tmp / "interleaved" / "all.jsonl", tmp)
        print("| job | per-sensor files | interleaved | load |")
        print("|---|---|---|---|")
        results = {}
        for name, extra in VARIANTS[:1] if args.quick else VARIANTS:
            cells = [throughput(tmp / order, len(want_order), extra, timeout=200)["per_s"]
                     for order in ("per-sensor", "interleaved")]
            results[name] = cells
            print(f"| {name} | {cells[0]:,.0f} records/s | {cells[1]:,.0f} records/s | "
                  f"{load()} |", flush=True)
        if len(results) == len(VARIANTS):
            ratio = [a / b for a, b in zip(results[VARIANTS[0][0]], results[VARIANTS[-1][0]])]
            print(f"| batched (defaults) / no-model ceiling | {ratio[0]:.2f} | {ratio[1]:.2f} "
                  f"| |")
        if "error" in run:
            print(f"lstm-run failed: {run['error']}")
        else:
            print(f"| lstm-run, one process, start-up included | | "
                  f"{len(want_order) / run['seconds']:,.0f} records/s | {load()} |")
        if "latency" not in args.skip:
            for name, extra in LATENCY:
                lat = latency(tmp / name.replace(" ", "-").replace(",", ""),
                              5 if args.quick else 15, 10, extra)
                if lat.get("answers"):
                    print(f"latency, {name}: p50 {lat['p50_ms']:.0f} ms, p99 "
                          f"{lat['p99_ms']:.0f} ms ({lat['answers']} answers; 10 lines a "
                          f"file every 50 ms, discovery 0.1 s; {load()})", flush=True)
                else:
                    print(f"latency, {name}: no answers ({lat})")
        if "restore" not in args.skip and "out" in run:
            want = run["out"].read_text().splitlines()
            print("restore (interleaved, batched):",
                  restore(tmp / "interleaved", tmp, want), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
