"""A real Mosquitto for the MQTT tests and benchmark: started on 127.0.0.1, stopped by PID.

:class:`Broker` runs Debian's ``mosquitto`` with its own config file (persistence on, so a
restart keeps sessions and queued QoS 1 messages). :class:`Sensors` publishes readings from
the bundled data at QoS 1; :class:`Collector` gathers the answers on a persistent session;
:class:`Tool` is a live ``lstm-run --mqtt`` whose stderr is read as it comes.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "exported" / "water-flow.onnx"
FEATURE = "Water flow [l/s]"
WAIT = 120          # seconds any wait for the broker or for answers may take before failing


def mosquitto() -> str | None:
    """The broker's executable (Debian puts it in /usr/sbin, off a user's PATH)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def unavailable() -> str | None:
    """Why the MQTT tests cannot run here (None: they can)."""
    if mosquitto() is None or shutil.which("mosquitto_pub") is None:
        return "Mosquitto is not installed (apt-get install mosquitto mosquitto-clients)"
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        return "paho-mqtt is not installed (pip install 'lstm-edge[mqtt]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(done, what: str, timeout: float = WAIT) -> None:
    """Wait until ``done()``; AssertionError naming ``what`` if it never is."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Broker:
    """One Mosquitto on 127.0.0.1 with its own config, data directory and log."""

    def __init__(self, directory: Path, *, extra: str = "", tls: bool = False,
                 persistence: bool = True):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = self.dir / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"user {getpass.getuser()}\n"     # as root, stay root: it writes our directory
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {self.dir}/\n"
            "max_queued_messages 1000000\nmax_inflight_messages 1000\n"
            f"{'' if 'allow_anonymous' in extra else 'allow_anonymous true'}\n{extra}\n")
        self.url = f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Broker":
        log = open(self.dir / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([str(mosquitto()), "-c", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        until(listening, "Mosquitto to listen")
        return self

    def stop(self) -> None:
        """SIGTERM to its PID: it saves its persistence file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(WAIT)
        self.proc = None

    def log(self) -> str:
        path = self.dir / "mosquitto.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def client(broker_url: str, client_id: str, *, auth: tuple[str, str] | None = None,
           manual_ack: bool = False, **tls):
    """A connected paho client (MQTT 5, persistent session, network thread running);
    ``manual_ack``: it acknowledges no message it is delivered."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    c.max_inflight_messages_set(100)
    if tls:
        c.tls_set(**tls)
    if auth:
        c.username_pw_set(*auth)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    port = int(broker_url.rsplit(":", 1)[1])
    c.connect("127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    return c


def readings(sensors: int, per_sensor: int) -> dict[str, list[dict]]:
    """Each sensor's readings from data/water-flow.csv (a slice of its own), with their time."""
    rows = (ROOT / "data" / "water-flow.csv").read_text().splitlines()[1:]
    out = {}
    for i in range(sensors):
        start = (i * 7) % (len(rows) - per_sensor)
        out[f"s{i}"] = [{"time": t, FEATURE: float(v)}
                        for t, v in (r.split(",") for r in rows[start:start + per_sensor])]
    return out


def publish(broker_url: str, data: dict[str, list[dict]], part: slice = slice(None),
            **options) -> None:
    """Publish ``part`` of every sensor's readings at QoS 1, sensors interleaved; return once
    the broker acknowledged them all."""
    c = client(broker_url, f"sensors-{os.getpid()}-{time.monotonic_ns()}", **options)
    try:
        infos = []
        for rows in zip(*(rows[part] for rows in data.values())):
            for sensor, row in zip(data, rows):
                infos.append(c.publish(f"sensors/{sensor}/flow", json.dumps(row), qos=1))
        for info in infos:
            info.wait_for_publish(WAIT)
    finally:
        c.disconnect()
        c.loop_stop()


class Collector:
    """Every answer published under ``predictions/#``, on a persistent QoS 1 session."""

    def __init__(self, broker_url: str, **options):
        self.lock = threading.Lock()
        self.answers: list[tuple[str, dict, float]] = []     # (topic, answer, arrival time)
        self.client = client(broker_url, f"collector-{os.getpid()}-{time.monotonic_ns()}",
                             **options)
        self.client.on_message = self._message
        self.client.subscribe("predictions/#", qos=1)

    def _message(self, client, userdata, msg) -> None:
        with self.lock:
            self.answers.append((msg.topic, json.loads(msg.payload), time.monotonic()))

    def answered(self) -> set[tuple[str, str]]:
        with self.lock:
            return {(a.get("sensor", ""), a.get("time", "")) for _, a, _ in self.answers}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Tool:
    """A live ``lstm-run MODEL --mqtt URL ...``, its stderr gathered line by line."""

    def __init__(self, args: list[str], cwd: Path | None = None):
        exe = Path(sys.executable).parent / "lstm-run"
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "runtime.cli"]
        self.proc = subprocess.Popen(command + args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=cwd)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def wait_for(self, text: str) -> None:
        def seen() -> bool:
            assert self.said(text) or self.proc.poll() is None, self.stderr()
            return self.said(text)
        until(seen, f"lstm-run to say {text!r}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        code = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return code

    def stderr(self) -> str:
        return "\n".join(self.lines)
