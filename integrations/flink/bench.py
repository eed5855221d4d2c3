"""Flink job throughput per task slot and end-to-end latency, beside ``lstm-run``.

Run with the Flink environment (``make flink-env``)::

    .venv-flink/bin/python -m integrations.flink.bench              # ~5 minutes
    .venv-flink/bin/python -m integrations.flink.bench --quick      # a smoke run

Every job runs with parallelism 1 (one task slot) on a local mini-cluster and prints its
answers to stdout, which this script reads line by line with a clock:

- **records/s per slot**: answers between the 10th and the 90th percentile of the run over
  the time between them, so the start-up (JVM, Python workers, model load) is left out;
- **latency**: a watched folder gets a small file every 50 ms, each line stamped with the
  time its file landed; latency is the time from there to its answer on stdout (file
  discovery every 0.1 s included);
- **per-record Python cost**: the operator's own work (parse, state decode, ORT step, state
  encode, format) timed in this process with no Flink around it: the ceiling for one slot;
- **lstm-run** on the same lines, one process, all sensors in one stream of input.
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

# (name, extra job options): what each variant changes from the job's defaults
VARIANTS = [
    ("defaults (bundle 1000 / 100 ms, hashmap)", []),
    ("pipeline alone: no model, echo the line (bundle 1000)", ["--echo"]),
    ("bundle 10000 / 100 ms", ["--bundle-size", "10000"]),
    ("bundle 10000 / 1000 ms", ["--bundle-size", "10000", "--bundle-time", "1000"]),
    ("bundle 100 / 100 ms", ["--bundle-size", "100"]),
    ("rocksdb state backend", ["--state-backend", "rocksdb"]),
    ("thread mode (Python in the JVM)", ["--execution-mode", "thread"]),
    ("thread mode, bundle 10000 / 1000 ms", ["--execution-mode", "thread", "--bundle-size",
                                            "10000", "--bundle-time", "1000"]),
]


def echo_job(folder: str, bundle_size: int) -> None:
    """The job's pipeline with no model: route by sensor, touch 314 bytes of keyed state,
    echo the line. What Flink and its Python workers cost per record, alone."""
    from pyflink.common import Configuration, Types, WatermarkStrategy
    from pyflink.datastream import (FlatMapFunction, KeyedProcessFunction,
                                    StreamExecutionEnvironment)
    from pyflink.datastream.connectors.file_system import FileSource, StreamFormat
    from pyflink.datastream.state import ValueStateDescriptor

    class Key(FlatMapFunction):
        def flat_map(self, value):
            yield json.loads(value)["sensor"], value

    class Echo(KeyedProcessFunction):
        def open(self, runtime_context):
            self.state = runtime_context.get_state(
                ValueStateDescriptor("s", Types.PICKLED_BYTE_ARRAY()))

        def process_element(self, value, ctx):
            self.state.value()
            self.state.update(b"x" * 314)
            yield value[1]

    conf = Configuration()
    for key, value in {"python.executable": sys.executable,
                       "python.client.executable": sys.executable,
                       "python.fn-execution.bundle.size": str(bundle_size),
                       "python.fn-execution.bundle.time": "100"}.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(1)
    source = FileSource.for_record_stream_format(StreamFormat.text_line_format(), folder).build()
    (env.from_source(source, WatermarkStrategy.no_watermarks(), "lines")
     .flat_map(Key(), output_type=Types.TUPLE([Types.STRING(), Types.STRING()]))
     .key_by(lambda routed: routed[0], key_type=Types.STRING())
     .process(Echo(), output_type=Types.STRING()).print())
    env.execute("echo")


def write_input(folder: Path, sensors: int, rows: int, stamp: bool = False) -> list[str]:
    """One JSONL file per sensor, readings in time order; returns every line."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    everything = []
    for s in range(sensors):
        values = 100 + 5 * np.sin(np.arange(rows) / 10 + s) + rng.normal(0, 1, rows)
        lines = [json.dumps({"sensor": f"s{s:04d}", "t": i, FEATURE: round(float(v), 3)})
                 for i, v in enumerate(values)]
        (folder / f"sensor-{s:04d}.jsonl").write_text("\n".join(lines) + "\n")
        everything += lines
    return everything


def job_command(folder: Path, *extra: str) -> list[str]:
    if extra and extra[0] == "--echo":
        return [sys.executable, "-m", "integrations.flink.bench", "--echo-job", str(folder)]
    return [sys.executable, "-m", "integrations.flink", str(MODEL), "-i", str(folder),
            "--stream-column", "sensor", "--time-column", "t", *extra]


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def throughput(folder: Path, total: int, extra: list[str], timeout: float) -> dict:
    """Run the job over ``folder``; time the answers as they come out."""
    proc = subprocess.Popen(job_command(folder, *extra), cwd=ROOT, stdout=subprocess.PIPE,
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
        return {"records": len(times), "per_s": float("nan"), "first_s": float("nan")}
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9)
    return {"records": len(times), "per_s": (hi - lo) / (times[hi] - times[lo]),
            "first_s": times[0] - started, "total_s": times[-1] - started}


def latency(tmp: Path, seconds: float, per_file: int, extra: list[str]) -> dict:
    """Small files into a watched folder, every 50 ms; landing-to-answer times."""
    folder = tmp / "live"
    folder.mkdir(parents=True)
    proc = subprocess.Popen(job_command(folder, "--watch", "0.1", *extra), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    os.set_blocking(proc.stdout.fileno(), False)
    delays, pending, n, t, first, last = [], b"", 0, 0, None, 0.0
    try:
        # warm up: one file, wait for its answer (start-up is not latency)
        deadline = time.monotonic() + 120
        end = None
        while True:
            now = time.time()
            if end is None or now < end:
                if n == 0 or (end is not None and now - last >= 0.05):
                    lines = [json.dumps({"sensor": f"s{k}", "t": t, FEATURE: 100.0 + k,
                                         "landed": 0.0}) for k in range(per_file)]
                    stamp = time.time()
                    lines = [line.replace('"landed": 0.0', f'"landed": {stamp!r}')
                             for line in lines]
                    tmpfile = folder / f".f{n}.tmp"
                    tmpfile.write_text("\n".join(lines) + "\n")
                    tmpfile.rename(folder / f"f{n:06d}.jsonl")
                    n, t, last = n + 1, t + 1, stamp
            chunk = proc.stdout.read() or b""
            got = time.time()
            *done, pending = (pending + chunk).split(b"\n")
            for line in done:
                landed = json.loads(line)["landed"]
                if end is None:
                    end, first = got + seconds, got   # the first answer: measuring starts now
                elif landed > first:                  # files of the warm-up left out
                    delays.append(got - landed)
            if end is not None and now > end + 2 or time.monotonic() > deadline + seconds:
                break
            time.sleep(0.005)
    finally:
        kill(proc)
    if not delays:
        return {"files": n, "answers": 0}
    d = np.array(delays) * 1000
    return {"files": n, "answers": len(d), "p50_ms": float(np.median(d)),
            "p99_ms": float(np.percentile(d, 99)), "max_ms": float(d.max())}


def python_cost(lines: list[str], repeat: int = 3) -> float:
    """µs per record of the operator's work alone (LineJob.answer), best of ``repeat``."""
    from integrations.flink.records import LineJob, LineSpec
    job = LineJob(MODEL.read_bytes(), LineSpec("jsonl", (), "sensor", "t"))
    best = float("inf")
    sample = lines[:20000]
    for _ in range(repeat):
        state = {}
        start = time.perf_counter()
        for line in sample:
            key = job.key(line)
            out, blob = job.answer(line, state.get(key), key)
            if blob is not None:
                state[key] = blob
        best = min(best, (time.perf_counter() - start) / len(sample) * 1e6)
    return best


def lstm_run(lines: list[str], tmp: Path) -> dict:
    """``lstm-run --stream-column sensor`` over the same lines, interleaved by time."""
    exe = ROOT / ".venv" / "bin" / "lstm-run"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "runtime.cli"]
    path = tmp / "all.jsonl"
    rows = sorted(lines, key=lambda line: json.loads(line)["t"])   # as a live feed arrives
    path.write_text("\n".join(rows) + "\n")
    start = time.perf_counter()
    done = subprocess.run(command + [str(MODEL), "-i", str(path), "-o", str(tmp / "out.jsonl"),
                                     "--stream-column", "sensor"],
                          capture_output=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode:
        return {"error": done.stderr.decode()[-300:]}
    return {"records": len(rows), "seconds": seconds, "per_s": len(rows) / seconds,
            "command": Path(command[0]).name}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small input, defaults only")
    parser.add_argument("--only", help="run the variants whose name contains this")
    parser.add_argument("--sensors", type=int, default=200)
    parser.add_argument("--rows", type=int, default=300, help="readings per sensor")
    parser.add_argument("--echo-job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_job:
        return echo_job(args.echo_job, 1000)
    sensors, rows = (50, 200) if args.quick else (args.sensors, args.rows)
    variants = VARIANTS[:1] if args.quick else VARIANTS
    if args.only:
        variants = [v for v in VARIANTS if args.only in v[0]]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; python {platform.python_version()}; "
          f"input {sensors} sensors x {rows} readings = {sensors * rows:,} lines, "
          f"model {MODEL.name}, parallelism 1")
    tmp = Path(tempfile.mkdtemp(prefix="flink-bench-"))
    try:
        lines = write_input(tmp / "in", sensors, rows)
        cost = python_cost(lines)
        print(f"operator work alone (parse, decode, step, encode, format): {cost:.1f} µs/record"
              f" = {1e6 / cost:,.0f} records/s ceiling for one slot")
        print("| job | records/s per slot | first answer after | all answers after |")
        print("|---|---|---|---|")
        for name, extra in variants:
            r = throughput(tmp / "in", len(lines), extra, timeout=300)
            print(f"| {name} | {r['per_s']:,.0f} | {r['first_s']:.1f} s | "
                  f"{r.get('total_s', float('nan')):.1f} s ({r['records']:,} answers) |",
                  flush=True)
        run = lstm_run(lines, tmp)
        if "error" in run:
            print(f"lstm-run failed: {run['error']}")
        else:
            print(f"lstm-run ({run['command']}) on the same {run['records']:,} lines: "
                  f"{run['seconds']:.2f} s = {run['per_s']:,.0f} records/s (one process, "
                  f"start-up included; sensors stepped together in one call per batch)")
        for name, extra in [("bundle time 100 ms", []), ("bundle time 10 ms",
                                                          ["--bundle-time", "10"])]:
            lat = latency(tmp / name.replace(" ", "-"), 5 if args.quick else 15, 10, extra)
            if lat.get("answers"):
                print(f"end-to-end latency, {name}: file landed -> answer on stdout "
                      f"({lat['answers']} answers, 10 lines per file every 50 ms, discovery "
                      f"0.1 s): p50 {lat['p50_ms']:.0f} ms, p99 {lat['p99_ms']:.0f} ms, "
                      f"max {lat['max_ms']:.0f} ms", flush=True)
            else:
                print(f"latency, {name}: no answers ({lat})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
