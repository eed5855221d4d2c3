"""``lstm-run --mqtt`` against a real Mosquitto: nothing lost, nothing twice, TLS, payloads.

Each fault test publishes the bundled data as many sensors, interrupts the stream (the broker
restarts, or lstm-run gets SIGTERM or kill -9 and is started again) and holds every answer
published to an uninterrupted run of ``lstm-run`` on the same readings through stdin: each
reading answered (at least once on the wire), every copy with the step and prediction of
the uninterrupted run (a reading fed twice would count a step more), none lost.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from mqtt_broker import (FEATURE, MODEL, ROOT, Broker, Collector, Tool, free_port, publish,
                         readings, unavailable, until)
from helpers import ATOL, LSTM_RUN, RTOL, TIMEOUT

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
# After a kill -9 between a batch's --state commit and its acks, the broker delivers that
# batch again; only the runtime's order rule (a stream's position, runtime/state.py)
# recognises those readings as fed. Before it, the kill -9 tests hold "0 lost" and "every
# reading answered" only; with it, "fed once" (every copy the uninterrupted run's) too.
ORDER_RULE = importlib.util.find_spec("runtime.state") is not None
PRED = f"pred_{FEATURE}"


def reference(data: dict[str, list[dict]]) -> dict[tuple[str, str], tuple[int, float]]:
    """``(sensor, time) -> (step, prediction)`` of one uninterrupted ``lstm-run`` on stdin."""
    lines = [json.dumps({"sensor": s, **row}) for rows in zip(*data.values())
             for s, row in zip(data, rows)]
    done = subprocess.run([*LSTM_RUN, str(MODEL), "--stream-column", "sensor"],
                          input="\n".join(lines).encode(), capture_output=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    out = [json.loads(line) for line in done.stdout.decode().splitlines()]
    return {(a["sensor"], a["time"]): (a["step"], a[PRED]) for a in out}


def check(collector: Collector, data: dict[str, list[dict]], fed_once: bool = True) -> None:
    """Every reading answered, every copy of its answer the uninterrupted run's, 0 lost."""
    expected = reference(data)
    copies: dict[tuple[str, str], list[dict]] = {}
    for topic, answer, _ in collector.answers:
        assert topic == f"predictions/{answer['sensor']}", (topic, answer)
        copies.setdefault((answer["sensor"], answer["time"]), []).append(answer)
    lost = set(expected) - set(copies)
    assert not lost, f"{len(lost)} readings never answered, e.g. {sorted(lost)[:3]}"
    assert set(copies) == set(expected)
    if not fed_once:
        return
    steps = {key: [a["step"] for a in got] for key, got in copies.items()}
    wrong = {key: (s, expected[key][0]) for key, s in steps.items()
             if any(step != expected[key][0] for step in s)}
    assert not wrong, (f"{len(wrong)} readings answered with another step than an "
                       f"uninterrupted run (fed twice or skipped), e.g. "
                       f"{list(wrong.items())[:3]}")
    got = np.array([a[PRED] for key in sorted(copies) for a in copies[key]])
    want = np.array([expected[key][1] for key in sorted(copies) for _ in copies[key]])
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def lstm_run(broker_url: str, state, *extra) -> Tool:
    tool = Tool([str(MODEL), "--mqtt", broker_url, "--topic", "sensors/+/flow",
                 "--client-id", "lstm-run-test", "--state", str(state), *extra])
    tool.wait_for("connected to")
    return tool


@pytest.mark.parametrize("sensors,per_sensor", [(3, 60), (1000, 4)], ids=["3", "1000"])
@pytest.mark.parametrize("fault", ["broker-restart", "sigterm", "kill-9"])
def test_interrupted_streams_equal_an_uninterrupted_run(broker, tmp_path, fault, sensors,
                                                        per_sensor):
    data = readings(sensors, per_sensor)
    collector = Collector(broker.url)
    state = tmp_path / "state.db"
    tool = lstm_run(broker.url, state)
    try:
        half = per_sensor // 2
        publish(broker.url, data, slice(0, half))
        if fault == "broker-restart":
            broker.stop()           # lstm-run is still answering the first half
            broker.start()
            tool.wait_for("connected to the MQTT broker")
            outage = [line for line in tool.lines if "MQTT broker" in line]
            assert len(outage) == 2 and "lost the MQTT broker" in outage[0], tool.stderr()
        else:
            until(lambda: collector.answers, "a first answer")
            code = tool.stop(signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
            assert code == (143 if fault == "sigterm" else -signal.SIGKILL), tool.stderr()
        publish(broker.url, data, slice(half, None))     # while lstm-run is away, if it is
        if fault != "broker-restart":
            tool = lstm_run(broker.url, state)
        total = sum(len(rows) for rows in data.values())
        until(lambda: len(collector.answered()) >= total, f"answers to all {total} readings")
        assert tool.stop() == 143, tool.stderr()
        check(collector, data, fed_once=ORDER_RULE or fault != "kill-9")
    finally:
        tool.stop(signal.SIGKILL)
        collector.close()


def test_payload_shapes_and_error_records(broker, tmp_path):
    """A bare number, a CSV line with a time, a JSON object: one stream; junk: error topic."""
    collector = Collector(broker.url)
    tool = lstm_run(broker.url, tmp_path / "state.db")
    try:
        from mqtt_broker import client
        c = client(broker.url, "shapes")
        for payload in ["100.59", "2022-03-20T12:00:00+01:00,100.89",
                        json.dumps({"time": "2022-03-20T13:00:00+01:00", FEATURE: 101.2}), "abc", "{broken", "1,2"]:
            c.publish("sensors/pump-1/flow", payload, qos=1).wait_for_publish(TIMEOUT)
        c.publish("sensors//flow", "100.0", qos=1).wait_for_publish(TIMEOUT)   # no sensor
        c.disconnect()
        until(lambda: len(collector.answers) >= 7, "seven answers")
    finally:
        assert tool.stop() == 143, tool.stderr()
        collector.close()
    *shapes, (topic, unnamed, _) = collector.answers
    assert topic == "predictions//error" and "names no sensor" in unnamed["error"], unnamed
    topics = [t for t, _, _ in shapes]
    assert topics == ["predictions/pump-1"] * 3 + ["predictions/pump-1/error"] * 3
    answers = [a for _, a, _ in shapes]
    assert [a["step"] for a in answers[:3]] == [1, 2, 3]
    stdin = subprocess.run([*LSTM_RUN, str(MODEL), "--format", "headerless"],
                           input=b"100.59\n100.89\n101.2\n", capture_output=True,
                           timeout=TIMEOUT)
    want = [float(line.split(",")[3]) for line in stdin.stdout.decode().splitlines()]
    np.testing.assert_allclose([a[PRED] for a in answers[:3]], want, rtol=RTOL, atol=ATOL)
    assert answers[1]["time"] == "2022-03-20T12:00:00+01:00"
    assert [a["input"] for a in answers[3:]] == ["abc", "{broken", "1,2"]
    assert all(a["sensor"] == "pump-1" and a["error"] for a in answers[3:])
    assert "sensors/pump-1/flow: not valid JSON" in tool.stderr()


def test_a_batch_delivered_again_is_answered_once(broker, tmp_path):
    """What a kill -9 between a batch's commit and its acks leaves: the broker delivers the
    batch again (DUP). The sensor's last reading is answered again as before; the older ones,
    answered before that commit, are acknowledged without a second answer or an error record;
    an old reading published anew is still answered "skipped" on the error topic."""
    from mqtt_broker import client
    data = readings(1, 4)
    held: list = []
    subscribed: list = []
    taker = client(broker.url, "lstm-run-test", manual_ack=True)     # lstm-run's session
    taker.on_message = lambda c, u, msg: held.append(msg)
    taker.on_subscribe = lambda c, u, mid, reasons, props: subscribed.append(mid)
    taker.subscribe("sensors/+/flow", qos=1)
    until(lambda: subscribed, "the subscription")
    publish(broker.url, data)
    until(lambda: len(held) == 4, "the four readings at the killed lstm-run")
    taker.disconnect()
    taker.loop_stop()
    state = tmp_path / "state.db"       # ... whose commit counted them
    lines = "".join(json.dumps({"sensor": "s0", **row}) + "\n" for row in data["s0"])
    done = subprocess.run([*LSTM_RUN, str(MODEL), "--stream-column", "sensor", "--state",
                           str(state)], input=lines.encode(), capture_output=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr.decode()
    before = [json.loads(line) for line in done.stdout.decode().splitlines()]
    collector = Collector(broker.url)
    tool = lstm_run(broker.url, state)
    try:
        publish(broker.url, {"s0": data["s0"][:1]})
        until(lambda: len(collector.answers) >= 2, "two answers")
        time.sleep(0.5)                    # room for a wrong third
    finally:
        assert tool.stop() == 143, tool.stderr()
        collector.close()
    (t1, last, _), (t2, old, _) = collector.answers[:2]
    assert len(collector.answers) == 2, collector.answers
    assert (t1, last["time"], last["step"]) == ("predictions/s0", before[-1]["time"], 4)
    np.testing.assert_allclose(last[PRED], before[-1][PRED], rtol=RTOL, atol=ATOL)
    assert last["order"] == "replay"
    assert (t2, old["time"]) == ("predictions/s0/error", before[0]["time"])
    assert old["order"].startswith("skipped: not after this sensor's last reading"), old
    assert ("sensor 's0': 1 replayed reading(s) answered as before, 1 older reading(s) skipped "
            "(not fed; --no-order-check feeds them), 3 older reading(s) delivered again by "
            "the broker (answered before; acknowledged, not answered twice)") in tool.stderr()


def make_tls(directory) -> dict[str, str]:
    """A self-signed CA and a server certificate for 127.0.0.1 it signs (openssl)."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.crt")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", "server.key", "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.crt")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=lstm-run",
        "-keyout", "client.key", "-out", "client.csr")
    ssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-out", "client.crt")
    return {name: str(directory / name) for name in ("ca.crt", "server.crt", "server.key",
                                                      "client.crt", "client.key")}


@pytest.mark.skipif(not __import__("shutil").which("openssl"), reason="openssl is not installed")
def test_tls_against_a_plain_listener_is_one_error_line(broker):
    """mqtts:// to a port that speaks plain MQTT: the server drops the handshake; that will
    not change by retrying, so it is an Error line and exit 2 (it retried forever)."""
    url = broker.url.replace("mqtt://", "mqtts://")
    done = subprocess.run([*LSTM_RUN, str(MODEL), "--mqtt", url, "--topic", "s/+"],
                          capture_output=True, timeout=TIMEOUT)
    err = done.stderr.decode()
    assert done.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("Error: TLS with") and "speaks TLS" in err, err


def test_payloads_are_read_by_the_rules_of_stdin_lines():
    """The size limit, a byte-order mark, and each reason a payload is not a reading, as
    ``lstm-run`` gives them for the same line on stdin (the reference: a subprocess)."""
    from runtime.mqtt import Payloads
    payloads = Payloads([FEATURE], [FEATURE], "sensor")
    t = "2022-03-20T12:00:00+01:00"
    for text in [f"{t},abc", f"{t},1e39", "abc", "1e39"]:
        line, error = payloads.line("p", text.encode())
        first = f"{t},100.0" if text.startswith(t) else "100.0"    # a reading of its shape
        stdin = subprocess.run([*LSTM_RUN, str(MODEL), "--stream"],
                               input=f"{first}\n{text}\n".encode(), capture_output=True,
                               timeout=TIMEOUT).stderr.decode()
        assert line is None and error["error"] in stdin, (error, stdin)
    line, _ = payloads.line("p", b"\xef\xbb\xbf100.5")
    assert json.loads(line) == {FEATURE: 100.5, "sensor": "p"}
    line, error = payloads.line("p", b"1" * (2 << 20))
    assert line is None and "longer than 1048576 bytes" in error["error"]
    line, _ = payloads.line("p", json.dumps({FEATURE: 1e999}).replace("Infinity", "1e999")
                            .encode())
    assert json.loads(line)[FEATURE] is None          # JSON has no infinity: null
    line, error = payloads.line("p", b"[1, 2]")        # JSON, not a CSV line ending in "2]"
    assert line is None and "got a JSON array" in error["error"], error
    # The topic names the sensor: a payload naming another is refused, not silently renamed.
    line, error = payloads.line("p", json.dumps({FEATURE: 1.0, "sensor": "zzz"}).encode())
    assert line is None and "the payload's 'sensor' is 'zzz'" in error["error"], error
    line, _ = payloads.line("p", json.dumps({FEATURE: 1.0, "sensor": "p"}).encode())
    assert json.loads(line) == {FEATURE: 1.0, "sensor": "p"}


def test_tls_with_a_password_and_a_client_certificate(tmp_path, monkeypatch):
    files = make_tls(tmp_path)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwd"), "lstm", "s3cret"],
                   check=True, capture_output=True)
    tls = (f"cafile {files['ca.crt']}\ncertfile {files['server.crt']}\n"
           f"keyfile {files['server.key']}\n")
    mutual = free_port()          # a second listener that wants a client certificate
    broker = Broker(tmp_path / "broker", tls=True, extra=(
        f"{tls}allow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
        f"listener {mutual} 127.0.0.1\n{tls}require_certificate true\n")).start()
    secure = {"auth": ("lstm", "s3cret"), "ca_certs": files["ca.crt"]}
    url = f"mqtts://lstm:s3cret@127.0.0.1:{broker.port}"
    try:
        collector = Collector(broker.url, **secure)
        tool = lstm_run(url, tmp_path / "state.db", "--ca-file", files["ca.crt"])
        data = readings(2, 3)
        publish(broker.url, data, **secure)
        until(lambda: len(collector.answered()) >= 6, "answers over TLS")
        assert tool.stop() == 143, tool.stderr()
        collector.close()
        check(collector, data)
        # A wrong password and an unknown CA: one line each, exit 2.
        for bad, says in [(url.replace("s3cret", "wrong"), "refused the connection"),
                          (url, "TLS with")]:
            extra = ["--ca-file", files["ca.crt"]] if "wrong" in bad else []
            done = subprocess.run([*LSTM_RUN, str(MODEL), "--mqtt", bad, "--topic", "s/+",
                                   "--client-id", "bad", *extra], capture_output=True,
                                  timeout=TIMEOUT)
            err = done.stderr.decode()
            assert done.returncode == 2 and says in err and "Traceback" not in err, err
            assert len(err.strip().splitlines()) == 1, err     # no "lost the broker" first
        # The listener that wants a client certificate answers with one (and the password
        # from the environment).
        monkeypatch.setenv("MQTT_PASSWORD", "s3cret")
        tool = lstm_run(f"mqtts://lstm@127.0.0.1:{mutual}", tmp_path / "state.db",
                        "--ca-file", files["ca.crt"], "--cert-file", files["client.crt"],
                        "--key-file", files["client.key"])
        assert tool.stop() == 143, tool.stderr()
    finally:
        broker.stop()


def test_broker_down_at_start_waits_and_says_so(tmp_path):
    broker = Broker(tmp_path / "broker")          # not started yet: nothing listens
    tool = Tool([str(MODEL), "--mqtt", broker.url, "--topic", "sensors/+/flow",
                 "--state", str(tmp_path / "state.db")])
    try:
        tool.wait_for("waiting for the MQTT broker")
        broker.start()
        tool.wait_for("answering sensors/+/flow")
        assert tool.stop() == 143, tool.stderr()
    finally:
        tool.stop(signal.SIGKILL)
        broker.stop()
    assert len(tool.lines) == 2, tool.stderr()      # waiting, then connected: nothing else


@pytest.mark.parametrize("args,says", [
    (["--topic", "s/+"], "-i cannot be used with --mqtt"),
    ([], "--mqtt needs --topic"),
    (["--topic", "s/#/x"], "is not an MQTT topic filter"),
    (["--topic", "s/+", "--publish", "p/{device}"], "the only field a topic may name"),
    (["--topic", "s/+", "--ca-file", str(MODEL)], "is plain MQTT: use an mqtts:// URL"),
])
def test_usage_errors_are_one_line(args, says):
    extra = ["-i", str(MODEL)] if "-i cannot" in says else []
    done = subprocess.run([*LSTM_RUN, str(MODEL), "--mqtt", "mqtt://127.0.0.1:1", *args,
                           *extra], capture_output=True, timeout=TIMEOUT)
    err = done.stderr.decode()
    assert done.returncode == 2 and says in err and "Traceback" not in err, err


def test_without_the_extra_says_which_to_install():
    code = ("import sys; sys.modules['paho'] = None; sys.argv[0] = 'lstm-run'; "
            "from runtime.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code, str(MODEL), "--mqtt",
                           "mqtt://127.0.0.1:1", "--topic", "s/+"], capture_output=True,
                          timeout=TIMEOUT)
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.strip().splitlines() == [
        "Error: --mqtt needs the MQTT client library, which is not installed: "
        "pip install 'lstm-edge[mqtt]'"]


def readme_blocks() -> list[str]:
    """The fenced blocks of docs/mqtt.md, in order."""
    return re.findall(r"```\w+\n(.*?)```", (ROOT / "docs" / "mqtt.md").read_text(), re.S)


def test_readme_mqtt_section_runs_as_written(tmp_path):
    """docs/mqtt.md's commands, on a broker with its user and password, give its output."""
    install, command, clients, shown = readme_blocks()[:4]
    assert "pip install 'lstm-edge[mqtt]'" in install
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(tmp_path / "passwd"), "lstm",
                    "secret"], check=True, capture_output=True)
    broker = Broker(tmp_path / "broker", extra=f"allow_anonymous false\n"
                                               f"password_file {tmp_path / 'passwd'}").start()

    def here(text: str) -> str:            # this broker instead of localhost:1883
        return (text.replace("localhost:1883", f"127.0.0.1:{broker.port}")
                .replace("-h localhost", f"-h 127.0.0.1 -p {broker.port}"))

    args = shlex.split(here(command).replace("\\\n", " "))
    assert args[:2] == ["lstm-run", "exported/water-flow.onnx"]
    tool = Tool([str(ROOT / args[1]), *args[2:]], cwd=tmp_path)
    try:
        tool.wait_for(f"connected to mqtt://127.0.0.1:{broker.port} as 'lstm-run-water-flow': "
                      f"answering sensors/+/flow on predictions/{{sensor}}")
        # The subscriber of the section, on a session made first, so that it cannot miss
        # the answers for starting after the publishers; it exits after the two answers.
        session = "-c -i readme -q 1"
        subprocess.run(["bash", "-c", here(f"mosquitto_sub -h localhost -u lstm -P secret "
                                           f"{session} -t 'predictions/#' -E")],
                       check=True, timeout=TIMEOUT)
        script = here(clients).replace(" -q 1 -t 'predictions/#' -v &",
                                       f" {session} -t 'predictions/#' -v -C 2 -W 60 "
                                       f"> answers.txt &")
        assert "answers.txt" in script
        subprocess.run(["bash", "-c", script + "\nwait\n"], cwd=tmp_path, check=True,
                       timeout=TIMEOUT)
        assert (tmp_path / "answers.txt").read_text() == shown
        assert tool.stop() == 143, tool.stderr()
        assert (tmp_path / "water-flow.state.db").exists()
    finally:
        tool.stop(signal.SIGKILL)
        broker.stop()


def test_a_retained_message_is_not_fed(broker, tmp_path):
    """Sensors often publish with the retain flag; the broker then sends its stored copy of
    the last reading to every new subscription, and (MQTT 5 retain handling 0) again on each
    resubscribe of a resumed session. That copy was published before lstm-run subscribed (or
    was answered live already): fed, a reading without a time would be fed once per start."""
    from mqtt_broker import client
    sensor = client(broker.url, "pump-1")
    sensor.publish("sensors/pump-1/flow", "100.59", qos=1, retain=True).wait_for_publish(TIMEOUT)
    sensor.publish("sensors/pump-2/flow", "99.0", qos=1, retain=True).wait_for_publish(TIMEOUT)
    collector = Collector(broker.url)
    state = tmp_path / "state.db"
    try:
        for value, start in (("100.89", 1), ("101.2", 2)):
            tool = lstm_run(broker.url, state)
            try:
                sensor.publish("sensors/pump-1/flow", value, qos=1).wait_for_publish(TIMEOUT)
                until(lambda n=start: len(collector.answers) >= n, f"an answer to {value}")
                time.sleep(0.5)                        # room for a wrong extra answer
            finally:
                assert tool.stop() == 143, tool.stderr()
            said = tool.stderr()
            if start == 1:      # a new subscription: the broker's copy came, and was left
                named = [line for line in tool.lines if "a retained message" in line]
                assert len(named) == 1 and "(the broker's stored copy of a reading " \
                    "published before" in named[0], said     # the first named, then counted
                assert "2 retained messages acknowledged and not fed" in said, said
    finally:
        sensor.disconnect()
        sensor.loop_stop()
        collector.close()
    answers = [a for _, a, _ in collector.answers]
    assert [(a["step"], a[FEATURE]) for a in answers] == [(1, 100.89), (2, 101.2)], answers
    stdin = subprocess.run([*LSTM_RUN, str(MODEL), "--format", "headerless"],
                           input=b"100.89\n101.2\n", capture_output=True, timeout=TIMEOUT)
    want = [float(line.split(",")[3]) for line in stdin.stdout.decode().splitlines()]
    np.testing.assert_allclose([a[PRED] for a in answers], want, rtol=RTOL, atol=ATOL)


def test_one_topic_at_qos_0_is_counted_at_the_stop_too(broker, tmp_path):
    """docs/mqtt.md: at the stop one line counts the QoS 0 topics, one of them included."""
    from mqtt_broker import client
    collector = Collector(broker.url)
    tool = lstm_run(broker.url, tmp_path / "state.db")
    sensor = client(broker.url, "pump-1")
    try:
        sensor.publish("sensors/pump-1/flow", "100.59", qos=0).wait_for_publish(TIMEOUT)
        until(lambda: len(collector.answers) >= 1, "the answer")
    finally:
        sensor.disconnect()
        sensor.loop_stop()
        assert tool.stop() == 143, tool.stderr()
        collector.close()
    told = [line for line in tool.lines if "QoS 0" in line]
    assert len(told) == 2 and told[1] == ("1 topic published at QoS 0 (readings there can be "
                                          "lost over a restart), sensors/pump-1/flow"), told


def test_a_reading_at_qos_0_is_answered_and_its_risk_said_once(broker, tmp_path):
    """QoS 0 is delivered at QoS 0 whatever lstm-run subscribes with: nothing to acknowledge,
    nothing kept over a restart. The answers are the same; stderr says what is at stake."""
    from mqtt_broker import client
    collector = Collector(broker.url)
    tool = lstm_run(broker.url, tmp_path / "state.db")
    sensor = client(broker.url, "pump-1")
    try:
        for value in ("100.59", "100.89"):
            sensor.publish("sensors/pump-1/flow", value, qos=0).wait_for_publish(TIMEOUT)
        until(lambda: len(collector.answers) >= 2, "two answers")
        sensor.publish("sensors/pump-2/flow", "99.0", qos=0).wait_for_publish(TIMEOUT)
        until(lambda: len(collector.answers) >= 3, "the second pump's answer")
    finally:
        sensor.disconnect()
        sensor.loop_stop()
        assert tool.stop() == 143, tool.stderr()
        collector.close()
    assert [a["step"] for _, a, _ in collector.answers] == [1, 2, 1], collector.answers
    told = [line for line in tool.lines if "QoS 0" in line]     # the first named, then counted
    assert told == ["sensors/pump-1/flow: published at QoS 0, which the broker neither keeps "
                    "for lstm-run while it restarts nor delivers again: readings can be lost "
                    "there; publish at QoS 1 for nothing to be lost",
                    "2 topics published at QoS 0 (readings there can be lost over a restart), "
                    "e.g. sensors/pump-1/flow, sensors/pump-2/flow"], tool.stderr()
