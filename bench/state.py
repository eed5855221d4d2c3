"""The ``lstm-run --state`` database with many live sensors: shutdown, resume, save cost.

    python -m bench.state                   # 100,000 sensors, the bundled water-flow model
    python -m bench.state --sensors 10000   # a smaller run

Prints figures (and writes bench/results/state.json); never fails because a machine is slow.

- SIGTERM: ``lstm-run --stream --stream-column sensor --state DB`` has answered one line for
  each sensor (so every sensor changed since the last save); the time from SIGTERM to the
  process's exit, answers flushed and the state committed.
- resume: the time from start to the first answer of a run that resumes every sensor, next to
  the same run without a state file (model load and start-up), and the difference.
- save cost: ``Server.save_state`` in process with every sensor loaded, after 1%, 10% and
  100% of them took a line.
- per-batch commits: lines/s of ``serve`` over one-line batches (``--stream`` from a live
  sensor), committing after every batch (``--save-every 1``) against only at the end.
- the npz snapshot file the database replaces, saved and loaded with the same sensors.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "exported" / "water-flow.onnx"
RESULTS = Path(__file__).resolve().parent / "results"
LSTM_RUN = [sys.executable, "-m", "runtime.cli"]
FEATURE = "Water flow [l/s]"


def lines_for(sensors: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    values = rng.normal(100, 5, sensors)
    return (f"sensor,{FEATURE}\n" + "".join(f"s{i},{v:.2f}\n" for i, v in enumerate(values))
            ).encode()


def read_lines(proc, n: int, timeout: float = 600) -> float:
    """Read ``n`` output lines from ``proc``; the time the last one arrived."""
    fd, got, deadline = proc.stdout.fileno(), 0, time.monotonic() + timeout
    while got < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise TimeoutError(f"{got} of {n} answers")
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            raise RuntimeError(f"output closed after {got} of {n} answers: "
                               f"{proc.stderr.read().decode()[-2000:]}")
        got += chunk.count(b"\n")
    return time.monotonic()


def sigterm(db: Path, sensors: int, interval: float) -> dict:
    """Every sensor answered once, then SIGTERM: seconds to exit with the state committed.

    ``interval``: ``--save-interval``; 0 leaves every sensor unsaved until the SIGTERM.
    """
    data = lines_for(sensors)
    proc = subprocess.Popen(LSTM_RUN + [str(MODEL), "--stream", "--stream-column", "sensor",
                                        "--state", str(db), "--device", "cpu",
                                        "--save-interval", str(interval)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT)
    t0 = time.monotonic()
    import threading
    writer = threading.Thread(target=lambda: (proc.stdin.write(data), proc.stdin.flush()))
    writer.start()
    read_lines(proc, sensors + 1)                       # the header too
    answered = time.monotonic() - t0
    writer.join()
    t1 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    proc.wait()
    took = time.monotonic() - t1
    proc.stdin.close()
    from runtime import load_snapshots
    rows = load_snapshots(db)
    return {"sensors": sensors, "save_interval": interval, "exit": proc.returncode,
            "sigterm_to_exit_s": took,
            "answer_all_s": answered, "rows_committed": len(rows),
            "steps_committed": int(sum(s.steps for s in rows.values())),
            "bytes_after_sigterm": len(rest), "db_mb": db.stat().st_size / 1e6}


def first_answer(args: list[str]) -> float:
    """Seconds from start to the first answer line of ``lstm-run args``."""
    proc = subprocess.Popen(LSTM_RUN + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    t0 = time.monotonic()
    proc.stdin.write(f"sensor,{FEATURE}\ns0,100.0\n".encode())
    proc.stdin.flush()
    t = read_lines(proc, 2) - t0
    proc.stdin.close()
    proc.stdout.read()
    proc.wait()
    return t


def resume(db: Path) -> dict:
    base = [str(MODEL), "--stream", "--stream-column", "sensor", "--device", "cpu"]
    cold = min(first_answer(base) for _ in range(2))
    with_state = first_answer(base + ["--state", str(db)])
    return {"first_answer_no_state_s": cold, "first_answer_resuming_s": with_state,
            "resume_s": with_state - cold}


def save_cost(db: Path, sensors: int) -> dict:
    """In process: load every sensor, step a share of them, time the save."""
    import runtime
    from runtime.serve import ServeConfig, Server

    model = runtime.load(MODEL, device="cpu")
    server = Server(model, ServeConfig(stream_column="sensor", state=db))
    t0 = time.perf_counter()
    server.load_state()
    load_s = time.perf_counter() - t0
    out = {"load_in_process_s": load_s}
    for share in (0.01, 0.1, 1.0):
        n = max(1, int(sensors * share))
        batch = [(1, f"sensor,{FEATURE}".encode())] if server.format is None else []
        batch += [(i + 2, f"s{i},101.5".encode()) for i in range(n)]
        server.handle(batch)
        server.delivered()
        t0 = time.perf_counter()
        server.save_state()
        out[f"save_{int(share * 100)}pct_s"] = time.perf_counter() - t0
        out[f"save_{int(share * 100)}pct_rows"] = n
        t0 = time.perf_counter()
        server.checkpoint()          # what a quiet feed does after the save
        out[f"checkpoint_{int(share * 100)}pct_s"] = time.perf_counter() - t0
    server.close()
    return out


def integrity(db: Path) -> dict:
    """What an integrity check of the whole database at start would cost."""
    import sqlite3
    out = {}
    for check in ("quick_check", "integrity_check"):
        con = sqlite3.connect(db)
        t0 = time.perf_counter()
        result = con.execute(f"PRAGMA {check}").fetchall()
        out[f"{check}_s"] = time.perf_counter() - t0
        out[f"{check}_result"] = result[0][0]
        con.close()
    return out


def per_batch_commits(folder: Path, lines: int = 3000) -> dict:
    """serve() over one-line batches, with and without a commit after each."""
    import runtime
    from runtime.serve import ServeConfig, serve

    model = runtime.load(MODEL, device="cpu")

    class OneLine:
        signals = None

        def batches(self):
            yield [(1, f"sensor,{FEATURE}".encode())]
            for i in range(lines):
                yield [(i + 2, f"s{i % 10},{100 + i % 7}".encode())]

    out = {}
    for every in (0, 1):
        db = folder / f"commits-{every}.db"
        t0 = time.perf_counter()
        serve(model, ServeConfig(stream_column="sensor", state=db, save_every=every),
              OneLine(), lambda out: None)
        out[f"lines_per_s_save_every_{every}"] = lines / (time.perf_counter() - t0)
    out["commit_us_per_line"] = 1e6 * (1 / out["lines_per_s_save_every_1"]
                                       - 1 / out["lines_per_s_save_every_0"])
    return out


def npz_reference(db: Path, folder: Path) -> dict:
    """The npz snapshot file of the same sensors: one save and one load of all of them."""
    import runtime

    snaps = runtime.load_snapshots(db)
    path = folder / "reference.npz"
    t0 = time.perf_counter()
    runtime.save_snapshots(path, snaps)
    save = time.perf_counter() - t0
    t0 = time.perf_counter()
    runtime.load_snapshots(path)
    load = time.perf_counter() - t0
    return {"npz_save_all_s": save, "npz_load_s": load, "npz_mb": path.stat().st_size / 1e6}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.state", description=__doc__.split("\n")[0])
    parser.add_argument("--sensors", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = folder / "state.db"
        figures = {"sigterm": sigterm(db, args.sensors, 1.0)}
        print(json.dumps(figures["sigterm"]), flush=True)
        db.unlink()
        figures["sigterm_all_unsaved"] = sigterm(db, args.sensors, 0.0)
        print(json.dumps(figures["sigterm_all_unsaved"]), flush=True)
        figures["resume"] = resume(db)
        print(json.dumps(figures["resume"]), flush=True)
        figures["save"] = save_cost(db, args.sensors)
        print(json.dumps(figures["save"]), flush=True)
        figures["integrity"] = integrity(db)
        print(json.dumps(figures["integrity"]), flush=True)
        figures["commits"] = per_batch_commits(folder)
        print(json.dumps(figures["commits"]), flush=True)
        figures["npz"] = npz_reference(db, folder)
        print(json.dumps(figures["npz"]), flush=True)
    s, r, c, v = figures["sigterm"], figures["resume"], figures["save"], figures["commits"]
    print(f"\n{args.sensors:,} sensors, {MODEL.name} (LSTM 32 units), state database "
          f"{s['db_mb']:.1f} MB")
    w = figures["sigterm_all_unsaved"]
    print(f"  SIGTERM -> exit, answers flushed, state committed: {s['sigterm_to_exit_s']:.2f} s "
          f"with --save-interval 1 (the default), {w['sigterm_to_exit_s']:.2f} s with every "
          f"sensor unsaved (--save-interval 0) (target <= 2 s); exit {s['exit']}, "
          f"{s['rows_committed']:,} rows")
    print(f"  resume: first answer {r['first_answer_resuming_s']:.2f} s vs "
          f"{r['first_answer_no_state_s']:.2f} s without state: {r['resume_s']:.2f} s to "
          f"resume (target <= 5 s); in process {c['load_in_process_s']:.2f} s")
    for p in (1, 10, 100):
        print(f"  save after {p:>3}% changed ({c[f'save_{p}pct_rows']:,} rows): "
              f"{c[f'save_{p}pct_s'] * 1e3:.1f} ms, then its checkpoint into the file "
              f"{c[f'checkpoint_{p}pct_s'] * 1e3:.1f} ms")
    g = figures["integrity"]
    print(f"  PRAGMA quick_check {g['quick_check_s']:.2f} s, integrity_check "
          f"{g['integrity_check_s']:.2f} s ({g['quick_check_result']})")
    print(f"  one-line batches: {v['lines_per_s_save_every_0']:.0f} lines/s saving at the end, "
          f"{v['lines_per_s_save_every_1']:.0f} lines/s committing each batch "
          f"(+{v['commit_us_per_line']:.0f} µs a line)")
    n = figures["npz"]
    print(f"  the npz file it replaces: save all {n['npz_save_all_s']:.2f} s, load "
          f"{n['npz_load_s']:.2f} s, {n['npz_mb']:.1f} MB")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "state.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
