"""``lstm-run --mqtt`` against the shell pipe it replaces, on one local Mosquitto.

    python -m bench.mqtt                    # 3 and 1,000 sensors
    python -m bench.mqtt --seconds 3        # a shorter paced phase

For each number of sensors, two ways of answering the same bare-number payloads on
``sensors/<id>/flow``, in the same run, against the same broker:

- ``lstm-run MODEL --mqtt URL --topic 'sensors/+/flow'`` (QoS 1 both ways, manual acks,
  answers to ``predictions/<id>``), without ``--state`` as the pipe, and with it (a commit
  before each batch's acks);
- ``mosquitto_sub -q 1 -F '%t,%p' | lstm-run MODEL --stream ... | mosquitto_pub -q 1 -l``.

Figures: messages/s over a burst (every message published at once, QoS 1, until the last
answer arrives), and publish-to-prediction latency p50/p99 (from the publish call to the
answer's arrival at a subscriber in this process) at a paced 200 messages/s. Prints a table
and writes bench/results/mqtt.json; never fails because a machine is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from mqtt_broker import MODEL, Broker, Tool, client, unavailable, until  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RATE = 200          # messages/s of the paced phase


class Answers:
    """Arrival times of the answers, keyed (sensor, step), from either way of answering."""

    def __init__(self, url: str):
        self.lock = threading.Lock()
        self.arrived: dict[tuple[str, int], float] = {}
        self.client = client(url, f"bench-collector-{time.monotonic_ns()}")
        self.client.on_message = self._message
        self.client.subscribe("predictions/#", qos=1)

    def _message(self, c, userdata, msg) -> None:
        now = time.monotonic()
        text = msg.payload.decode()
        if text.startswith("{"):                     # lstm-run --mqtt: JSON
            answer = json.loads(text)
            key = (answer["sensor"], answer["step"])
        else:                                        # the pipe: topic,value,step,...
            fields = text.split(",")
            key = (fields[0].split("/")[1], int(fields[2]))
        with self.lock:
            self.arrived.setdefault(key, now)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Sensors:
    """Publishes bare-number readings and remembers when each (sensor, step) went out."""

    def __init__(self, url: str, names: list[str]):
        self.client = client(url, f"bench-sensors-{time.monotonic_ns()}")
        self.names = names
        self.steps = {n: 0 for n in names}
        self.sent: dict[tuple[str, int], float] = {}
        self.values = [float(r.split(",")[1]) for r in
                       (ROOT / "data" / "water-flow.csv").read_text().splitlines()[1:]]

    def send(self, name: str):
        self.steps[name] += 1
        step = self.steps[name]
        self.sent[(name, step)] = time.monotonic()
        value = self.values[step % len(self.values)]
        return self.client.publish(f"sensors/{name}/flow", repr(value), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def warm_up(sensors: Sensors, answers: Answers) -> None:
    """One reading per sensor, answered, so that the model and every stream are there."""
    for name in sensors.names:
        sensors.send(name)
    until(lambda: all((n, 1) in answers.arrived for n in sensors.names), "the warm-up answers")


def burst(sensors: Sensors, answers: Answers, per_sensor: int) -> float:
    """Messages/s: every message published at once, until the last answer arrives."""
    start = time.monotonic()
    keys = []
    for _ in range(per_sensor):
        for name in sensors.names:
            sensors.send(name)
            keys.append((name, sensors.steps[name]))
    until(lambda: all(k in answers.arrived for k in keys), "the burst's answers", timeout=300)
    return len(keys) / (max(answers.arrived[k] for k in keys) - start)


def paced(sensors: Sensors, answers: Answers, seconds: float) -> np.ndarray:
    """Publish-to-prediction latencies (s) at RATE messages/s, sensors in turn."""
    keys = []
    start = time.monotonic()
    for i in range(int(RATE * seconds)):
        delay = start + i / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        name = sensors.names[i % len(sensors.names)]
        sensors.send(name)
        keys.append((name, sensors.steps[name]))
    until(lambda: all(k in answers.arrived for k in keys), "the paced answers")
    return np.array([answers.arrived[k] - sensors.sent[k] for k in keys])


def lstm_run() -> list[str]:
    exe = Path(sys.executable).parent / "lstm-run"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "runtime.cli"]


def start(way: str, broker: Broker, tag: str):
    """The process answering the broker (a Tool, or the pipe's shell)."""
    if way.startswith("lstm-run"):
        state = ["--state", str(broker.dir / f"{tag}.db")] if "--state" in way else []
        tool = Tool([str(MODEL), "--mqtt", broker.url, "--topic", "sensors/+/flow",
                     "--client-id", f"bench-{tag}", *state])
        tool.wait_for("connected to")
        return tool
    run = " ".join(map(shlex.quote, lstm_run()))
    pipe = (f"mosquitto_sub -h 127.0.0.1 -p {broker.port} -q 1 -c -i pipe-{tag} "
            f"-t 'sensors/+/flow' -F '%t,%p' "
            f"| {run} {shlex.quote(str(MODEL))} --stream --columns 'sensor,Water flow [l/s]' "
            f"--stream-column sensor "
            f"| mosquitto_pub -h 127.0.0.1 -p {broker.port} -q 1 -l -t predictions")
    return subprocess.Popen(["bash", "-c", pipe], start_new_session=True,
                            stderr=subprocess.DEVNULL)


def stop(proc) -> None:
    if isinstance(proc, Tool):
        proc.stop()
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)


def measure(broker: Broker, way: str, count: int, per_sensor: int, seconds: float) -> dict:
    tag = f"{way.split()[-1].strip('-')}-{count}-{time.monotonic_ns()}"
    answers = Answers(broker.url)
    proc = start(way, broker, tag)
    sensors = Sensors(broker.url, [f"s{i}" for i in range(count)])
    try:
        if not isinstance(proc, Tool):
            time.sleep(1.0)       # mosquitto_sub has no ready signal; its session is not there yet
        warm_up(sensors, answers)
        rate = burst(sensors, answers, per_sensor)
        latency = paced(sensors, answers, seconds)
    finally:
        stop(proc)
        sensors.close()
        answers.close()
    p50, p99 = np.percentile(latency, [50, 99]) * 1e3
    return {"way": way, "sensors": count, "messages_per_s": rate,
            "burst_messages": count * per_sensor, "p50_ms": p50, "p99_ms": p99,
            "paced_messages": len(latency)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the paced phase")
    args = parser.parse_args()
    why = unavailable()
    if why:
        sys.exit(f"cannot run: {why}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker").start()
        try:
            for count, per_sensor in [(3, 1000), (1000, 5)]:
                for way in ("lstm-run --mqtt", "lstm-run --mqtt --state", "shell pipe"):
                    rows.append(measure(broker, way, count, per_sensor, args.seconds))
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            broker.stop()
    print()
    print("| sensors | way | messages/s (burst) | latency p50 | latency p99 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sensors']:,} | {r['way']} | {r['messages_per_s']:,.0f} "
              f"({r['burst_messages']:,} messages) | {r['p50_ms']:.1f} ms | "
              f"{r['p99_ms']:.1f} ms |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mqtt.json").write_text(json.dumps(
        {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
         "load_average": os.getloadavg(), "paced_rate": RATE, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
