"""One live line in, its answer back: ``lstm-run --stream`` against ``cat`` and the model step.

    python -m bench.live                     # the bundled model, 2,000 lines per contender
    python -m bench.live --lines 300 --profile build/bench/live.prof
    python -m bench.live --lines 2000 --profile build/bench/alerts.prof --state --alerts

A sensor writes one line and waits for its answer before the next, as a live feed does, so
each round trip is one line through the pipe, the process and back. The same lines go, in
the same run, through ``cat`` (the pipes' and the OS's own cost), through ``lstm-run
--stream`` with and without ``--state`` (and with ``--state`` and the alerts a device runs,
``--interval 0.9 --stuck 6 --cusum 4``), and through the model's own ``Stream.step`` in this
process (the floor: what the model costs). The time ``lstm-run`` adds over ``cat`` and the
step is its own: reading, parsing, formatting, bookkeeping. ``--profile`` runs the
``lstm-run`` child under cProfile instead and writes its statistics (timings then include
the profiler's own cost: read them as shares).
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import cast

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "exported" / "water-flow.onnx"
DATA = ROOT / "data" / "water-flow.csv"
LSTM_RUN = str(Path(sys.executable).parent / "lstm-run")
# the alerts a device runs (docs/alerts.md's settings): the interval, stuck and CUSUM checks
ALERTS = ["--interval", "0.9", "--stuck", "6", "--cusum", "4"]
ALERTING = "lstm-run --stream --state --interval 0.9 --stuck 6 --cusum 4"


def feed(n: int) -> tuple[bytes, list[bytes]]:
    """The data file's header and ``n`` lines of it, repeated with times moved on past its end.

    Repeated as they are, the lines of a second pass would be older than the sensor's last
    reading, which the order rule skips unfed: each pass is shifted by the file's span.
    """
    text = DATA.read_bytes().splitlines(keepends=True)
    rows = [line.split(b",", 1) for line in text[1:]]
    times = [datetime.fromisoformat(t.decode()) for t, _ in rows]
    span = times[-1] - times[0] + (times[1] - times[0])
    body = []
    for k in range(n):
        p, i = divmod(k, len(rows))
        body.append((times[i] + p * span).isoformat().encode() + b"," + rows[i][1])
    return text[0], body


def round_trips(argv: list[str], lines: list[bytes], header: bytes | None,
                env: dict | None = None) -> np.ndarray:
    """µs from writing each line to the child's stdin until its answer line is read back."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, bufsize=0, cwd=ROOT, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    w, r = proc.stdin.fileno(), proc.stdout.fileno()
    pending = b""

    def answer() -> bytes:
        nonlocal pending
        while b"\n" not in pending:
            select.select([r], [], [], 30)
            chunk = os.read(r, 65536)
            if not chunk:
                raise RuntimeError(f"{argv[0]} ended before answering")
            pending += chunk
        line, _, pending = pending.partition(b"\n")
        return line

    if header is not None:
        os.write(w, header)
        answer()
    out = np.empty(len(lines))
    clock = time.perf_counter_ns
    for k, line in enumerate(lines):
        t0 = clock()
        os.write(w, line)
        answer()
        out[k] = (clock() - t0) / 1e3
    proc.stdin.close()
    proc.wait(timeout=60)
    return out


def step_times(lines: list[bytes]) -> np.ndarray:
    """µs per ``Stream.step`` of the bundled model on the same readings, in this process."""
    import runtime

    stream = runtime.load(str(MODEL), device="cpu").stream()
    values = [np.array([float(b.split(b",")[1])], np.float32) for b in lines]
    out = np.empty(len(values))
    clock = time.perf_counter_ns
    for k, x in enumerate(values):
        t0 = clock()
        stream.step(x)
        out[k] = (clock() - t0) / 1e3
    return out


def measure(n: int, warm: int = 50, rounds: int = 8) -> dict:
    """p50/p99 round trip per contender, first ``warm`` lines of each child left out.

    The contenders take turns, ``rounds`` times ``n / rounds`` lines each, so that a burst
    of load on a shared machine falls on all of them rather than on one. Each turn runs
    twice: free to use every core, as a service runs, and with this process and the child on
    one core (Linux), where no line waits for an idle core to wake: that figure is what the
    code itself costs, the first one adds what the machine's idle states cost.
    """
    header, body = feed(n // rounds + warm)
    run = [LSTM_RUN, str(MODEL), "--stream", "--device", "cpu", "--no-progress"]
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    placements = {"": None} | ({"one_core_": {min(cores)}} if cores and len(cores) > 1 else {})
    times: dict[tuple[str, str], list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for where, pinned in placements.items():
                contenders = {
                    "cat": ["cat"],
                    "lstm-run --stream": run,
                    "lstm-run --stream --state":
                        run + ["--state", str(Path(tmp) / f"state{r}{where}.db")],
                    ALERTING: run + ["--state", str(Path(tmp) / f"alerts{r}{where}.db")]
                    + ALERTS,
                    "model step (in process)": None,
                }                   # (a fresh state file each round: its times start again)
                if pinned:
                    os.sched_setaffinity(0, pinned)            # the child inherits it
                try:
                    for name, argv in contenders.items():
                        us = step_times(body) if argv is None else round_trips(argv, body,
                                                                                header)
                        times.setdefault((name, where), []).append(us[warm:])
                finally:
                    if pinned:
                        os.sched_setaffinity(0, cast(set, cores))
    rows: dict[str, dict] = {}
    for (name, where), parts in times.items():
        us = np.concatenate(parts)
        row = rows.setdefault(name, {})
        row |= {f"{where}p50_us": float(np.median(us)),
                f"{where}p99_us": float(np.percentile(us, 99)), f"{where}lines": len(us)}
        print(f"  live round trip, {name}{' (one core)' if where else ''}: "
              f"p50 {row[where + 'p50_us']:.1f} µs, p99 {row[where + 'p99_us']:.1f} µs",
              flush=True)
    return rows


def markdown(rows: dict) -> list[str]:
    step = rows["model step (in process)"]
    pinned = "one_core_p50_us" in step
    out = ["### Live round trip: one line in, its answer back (bundled model, CPU)", "",
           "| path | p50 µs | p99 µs | p50 − model step |"
           + (" one core: p50 µs | p99 µs | p50 − model step |" if pinned else ""),
           "|---|---|---|---|" + ("---|---|---|" if pinned else "")]
    for name, r in rows.items():
        line = (f"| {name} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
                f"{r['p50_us'] - step['p50_us']:+.1f} |")
        if pinned:
            line += (f" {r['one_core_p50_us']:.1f} | {r['one_core_p99_us']:.1f} | "
                     f"{r['one_core_p50_us'] - step['one_core_p50_us']:+.1f} |")
        out.append(line)
    note = (" The first columns let the processes use every core, as a service does; there "
            "a line that finds the other core idle waits for it to wake. On one core (this "
            "process and the child pinned to the same core) no line does: the code's own "
            "cost." if pinned else "")
    return out + ["", f"Target: lstm-run p50 ≤ the model step + 40 µs (the alerts row also "
                  f"checks each reading: the target is for the rows above it).{note}", ""]


def profile(n: int, out: Path, state: bool, alerts: bool = False) -> None:
    """Run the ``lstm-run`` child under cProfile, fed line by line, and print its top calls."""
    import pstats

    header, body = feed(n)
    out.parent.mkdir(parents=True, exist_ok=True)
    code = ("import sys, cProfile; from runtime.cli import main; sys.argv = sys.argv[1:]; "
            f"cProfile.run('main()', {str(out)!r})")
    argv = [sys.executable, "-c", code, "lstm-run", str(MODEL), "--stream", "--device", "cpu",
            "--no-progress"]
    with tempfile.TemporaryDirectory() as tmp:
        if state:
            argv += ["--state", str(Path(tmp) / "state.db")]
        if alerts:
            argv += ALERTS
        try:
            round_trips(argv, body, header)
        except SystemExit:
            pass
    pstats.Stats(str(out)).sort_stats("tottime").print_stats(25)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.live", description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=2000, help="lines per contender")
    parser.add_argument("--profile", type=Path, help="profile lstm-run into this file instead")
    parser.add_argument("--state", action="store_true", help="with --profile: also --state")
    parser.add_argument("--alerts", action="store_true",
                        help="with --profile: also " + " ".join(ALERTS))
    args = parser.parse_args(argv)
    if args.profile:
        profile(args.lines, args.profile, args.state, args.alerts)
        return
    before = os.getloadavg()
    table = markdown(measure(args.lines))
    print("\n".join(table))
    print("load average (1, 5, 15 min): before " + ", ".join(f"{v:.2f}" for v in before)
          + "; after " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
