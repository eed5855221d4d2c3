"""A service's months in minutes: memory, state file and speed over a long stream.

    python -m bench.soak                          # 1,000,000 readings of 1,000 sensors
    python -m bench.soak --readings 200000 --sensors 100

``lstm-run`` runs as a device runs it: ``--stream`` over a pipe, each sensor its own stream
(``--stream-column``), its state in a database (``--state``), alerts on (``--interval 0.9
--stuck 6 --cusum 4``). The readings are the bundled model's kind (a flow near 100 l/s), an
hour apart per sensor, with a fault now and then (a spike, a stuck run, a level shift), so
the alert state churns as it would. At every tenth of the readings, once all their answers
are back, it prints the child's resident memory (VmRSS), the state file and its WAL, and the
readings per second of that tenth. At the end it checks that every line was answered and
that each sensor's ``step`` column counts 1, 2, 3, ... (nothing fed twice, nothing lost),
then stops the child with SIGTERM, as systemd does, and times the exit.

Memory that grows with the readings (rather than with the sensors) is a leak a service
would hit after months. Figures, not pass/fail; results go to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "exported" / "water-flow.onnx"
RESULTS = Path(__file__).resolve().parent / "results"
FEATURE = "Water flow [l/s]"
START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
TENTHS = 10


def readings(sensors: int, rounds: int, seed: int = 0) -> np.ndarray:
    """``(rounds, sensors)`` flows: a slow random walk near 100 l/s with noise, and about
    one fault in 500 readings (a spike, six equal readings, a level shift of 8 l/s)."""
    rng = np.random.default_rng(seed)
    walk = 100 + np.cumsum(rng.normal(0, 0.05, (rounds, sensors)), axis=0)
    flow = walk + rng.normal(0, 0.3, (rounds, sensors))
    for _ in range(max(1, rounds * sensors // 500)):
        r, s, kind = rng.integers(rounds), rng.integers(sensors), rng.integers(3)
        if kind == 0:
            flow[r, s] += 30
        elif kind == 1:
            flow[r:r + 6, s] = flow[r, s]
        else:
            flow[r:r + 48, s] += 8
    return np.round(flow, 2)


def chunk(flow: np.ndarray, first: int, last: int) -> bytes:
    """CSV lines for rounds ``first`` to ``last`` (every sensor once per round)."""
    out = io.StringIO()
    for r in range(first, last):
        time_ = (START + dt.timedelta(hours=r)).isoformat()
        out.writelines(f"{time_},s{s},{v:.2f}\n" for s, v in enumerate(flow[r]))
    return out.getvalue().encode()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pid: int) -> float:
    """The process's user + system CPU seconds so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def size_mib(path: Path) -> float:
    return path.stat().st_size / 2**20 if path.exists() else 0.0


class Answers(threading.Thread):
    """Reads the child's stdout: counts the lines, keeps each sensor's steps in order."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.lines, self.bad = stream, 0, []
        self.last_step: dict[str, int] = {}

    def run(self) -> None:
        text = io.TextIOWrapper(self.stream, encoding="utf-8", newline="")
        header = next(csv.reader([text.readline()]))
        sensor, step = header.index("sensor"), header.index("step")
        for row in csv.reader(text):
            s = row[sensor]
            want = self.last_step.get(s, 0) + 1
            if row[step] != str(want) and len(self.bad) < 5:
                self.bad.append(f"{s}: step {row[step]!r} where {want} was due")
            self.last_step[s] = want
            self.lines += 1

    def wait_for(self, n: int, timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while self.lines < n:
            if time.monotonic() > deadline or not self.is_alive():
                raise TimeoutError(f"{self.lines} of {n} answers")
            time.sleep(0.005)


def soak(total: int, sensors: int, work: Path) -> dict:
    rounds = max(TENTHS, total // sensors)
    flow = readings(sensors, rounds)
    per = max(1, 2000 // sensors)                       # rounds a write (about 2,000 lines)
    writes = [[chunk(flow, first, min(upto, first + per))
               for first in range(rounds * (tenth - 1) // TENTHS, upto, per)]
              for tenth in range(1, TENTHS + 1) for upto in [rounds * tenth // TENTHS]]
    state = work / "soak.db"
    cmd = [sys.executable, "-m", "runtime.cli", str(MODEL), "--stream", "--stream-column",
           "sensor", "--state", str(state), "--interval", "0.9", "--stuck", "6", "--cusum",
           "4", "--no-progress"]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=ROOT)
    answers = Answers(child.stdout)
    answers.start()
    child.stdin.write(f"time,sensor,{FEATURE}\n".encode())
    rows, done, started = [], 0, time.perf_counter()
    print(f"{rounds * sensors:,} readings of {sensors:,} sensors ({rounds:,} each):")
    print("| readings | RSS MiB | state file MiB | WAL MiB | readings/s | lstm-run CPU µs a "
          "reading |")
    print("|---|---|---|---|---|---|")
    for tenth in range(1, TENTHS + 1):
        upto = rounds * tenth // TENTHS
        t0, cpu0 = time.perf_counter(), cpu_s(child.pid)
        for data in writes[tenth - 1]:
            child.stdin.write(data)
        child.stdin.flush()
        answers.wait_for(upto * sensors)
        rate = (upto - done) * sensors / (time.perf_counter() - t0)
        cpu_us = (cpu_s(child.pid) - cpu0) / ((upto - done) * sensors) * 1e6
        done = upto
        time.sleep(1.2)                       # one --save-interval: the state is committed
        row = {"readings": upto * sensors, "rss_mib": rss_mib(child.pid),
               "state_mib": size_mib(state), "wal_mib": size_mib(Path(f"{state}-wal")),
               "per_s": rate, "cpu_us": cpu_us}
        rows.append(row)
        print(f"| {row['readings']:,} | {row['rss_mib']:.1f} | {row['state_mib']:.2f} | "
              f"{row['wal_mib']:.2f} | {row['per_s']:,.0f} | {row['cpu_us']:.1f} |", flush=True)
    t0 = time.perf_counter()
    child.send_signal(signal.SIGTERM)
    code = child.wait(timeout=120)
    stop_s = time.perf_counter() - t0
    answers.join(timeout=30)
    err = child.stderr.read().decode(errors="replace").strip().splitlines()
    out = {"sensors": sensors, "readings": rounds * sensors, "rows": rows,
           "answers": answers.lines, "step_errors": answers.bad, "sigterm_exit": code,
           "sigterm_s": stop_s, "final_state_mib": size_mib(state),
           "final_wal_mib": size_mib(Path(f"{state}-wal")),
           "seconds": time.perf_counter() - started, "stderr_tail": err[-3:]}
    first, last = rows[0], rows[-1]
    print(f"\nRSS {first['rss_mib']:.1f} MiB after the first tenth, {last['rss_mib']:.1f} MiB "
          f"after all ({last['rss_mib'] - first['rss_mib']:+.1f} MiB over "
          f"{last['readings'] - first['readings']:,} more readings); state file "
          f"{first['state_mib']:.2f} -> {last['state_mib']:.2f} MiB.")
    print(f"answers {answers.lines:,} of {rounds * sensors:,}; steps out of order: "
          f"{answers.bad or 'none'}; SIGTERM: exit {code} in {stop_s:.2f} s, state file "
          f"{out['final_state_mib']:.2f} MiB, WAL {out['final_wal_mib']:.2f} MiB.")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--sensors", type=int, default=1000)
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        report = soak(args.readings, args.sensors, Path(work))
    report["load_average_end"] = list(os.getloadavg())
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
