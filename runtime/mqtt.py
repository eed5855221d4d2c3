"""``lstm-run --mqtt``: readings from an MQTT broker in, one answer per reading back to it.

The sensors publish to topics such as ``sensors/<id>/flow``; each ``--topic`` filter names
the sensor with its first ``+`` level. A payload is a bare number, a CSV line or a JSON
object, read with the same rules as ``lstm-run``'s stdin (:mod:`runtime.lines`). Each
reading becomes one JSON line for :class:`runtime.serve.Server` (its sensor under
``--stream-column``, ``sensor`` unless named), and each answer is published, as JSON, to
the topic ``--publish`` builds from the sensor; a refused reading's error record goes to
``--errors`` (by default the answer topic with ``/error`` appended).

Nothing lost, nothing twice: messages come in at QoS 1 on a persistent session (MQTT 5,
clean start off, a session expiry), are acknowledged by hand, and only after their answers
have been acknowledged by the broker (PUBACK) and the ``--state`` commit that counts them is
done. A message that is not acknowledged is delivered again by the broker, after a broker
restart or to the next ``lstm-run``; the runtime's order rule (a time or sequence column per
sensor) recognises such a redelivery and answers it with the answer it got.

The client library is paho-mqtt 2.x, the ``[mqtt]`` extra, imported only here.
"""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import numpy as np

from . import lines as fmt
from .errors import LstmEdgeError, counted
from .io import Interrupted, Signals
from .order import OrderColumn

if TYPE_CHECKING:     # serve loads ONNX Runtime: lstm-run --help must not need it
    from .serve import ServeConfig, Server

INSTALL = "pip install 'lstm-edge[mqtt]'"
PASSWORD_VARIABLE = "MQTT_PASSWORD"     # the password of a URL that names a user and no password


class MqttError(LstmEdgeError):
    """The broker cannot be used: a bad URL or template, refused credentials, a TLS failure."""


@dataclass
class MqttConfig:
    """Where ``lstm-run --mqtt`` reads and answers; all are its options."""

    url: str                                   # mqtt[s]://[user[:password]@]host[:port]
    topics: tuple[str, ...]                    # topic filters; the first '+' is the sensor
    publish: str = "predictions/{sensor}"      # answer topic template
    errors: str | None = None                  # error record topic (None: publish + "/error")
    client_id: str = "lstm-run"                # the persistent session's name at the broker
    ca_file: Path | None = None                # CA bundle for mqtts:// (None: the system's)
    cert_file: Path | None = None              # client certificate (with key_file)
    key_file: Path | None = None
    session_expiry: int = 7 * 24 * 3600        # seconds the broker keeps the session offline
    batch: int = 1000                          # most messages answered in one model call round
    keepalive: int = 30                        # seconds between pings on a quiet connection


@dataclass
class Endpoint:
    """An ``mqtt://`` or ``mqtts://`` URL, taken apart."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise MqttError(f"--mqtt expects mqtt://[user[:password]@]host[:port] or mqtts://..., "
                            f"got {url!r}")
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise MqttError(f"--mqtt {url!r}: the port is not a number from 1 to 65535") from None
        user = unquote(parts.username) if parts.username is not None else None
        password = unquote(parts.password) if parts.password is not None else None
        if user is not None and password is None:      # kept out of the URL, and so of ps
            password = os.environ.get(PASSWORD_VARIABLE)
        return cls(parts.hostname, port, parts.scheme == "mqtts", user, password)

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def sensor_of(topic: str, filters: Sequence[str]) -> str | None:
    """The sensor a topic names: its level under the first ``+`` of the filter it matches.

    A filter without ``+`` names the sensor by the whole topic. None: no filter matches.

    >>> sensor_of("sensors/pump-7/flow", ["sensors/+/flow"])
    'pump-7'
    >>> sensor_of("home/kitchen", ["home/#"]), sensor_of("other/x", ["home/#"])
    ('home/kitchen', None)
    """
    levels = topic.split("/")
    for flt in filters:
        parts = flt.split("/")
        if _matches(parts, levels):
            return levels[parts.index("+")] if "+" in parts else topic
    return None


def _matches(parts: list[str], levels: list[str]) -> bool:
    """Whether a topic's levels match a filter's (MQTT's rules: ``+`` one level, ``#`` the rest)."""
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or part not in ("+", levels[i]):
            return False
    return len(parts) == len(levels)


def check_template(template: str, option: str) -> str:
    """``template`` if ``{sensor}`` is its only field; MqttError otherwise."""
    try:
        topic = template.format(sensor="s")
    except (KeyError, IndexError, ValueError):
        raise MqttError(f"{option} {template!r}: the only field a topic may name is {{sensor}} "
                        f"(e.g. predictions/{{sensor}})") from None
    if not topic or "+" in topic or "#" in topic:
        raise MqttError(f"{option} {template!r}: a topic to publish to must be non-empty and "
                        f"hold no wildcard (+ or #)")
    return template


# ---- payloads --------------------------------------------------------------------------

_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


class Payloads:
    """One message's payload as one JSON line for the server, with its sensor under ``key``.

    A JSON object keeps its keys; a bare number or a CSV line is read as a header-less line
    of stdin is (the model's features; an ISO time, then the features; or ``--columns``), and
    its fields become the object's keys. A payload that cannot be one reading gives an error
    record at once (it never reaches a stream).
    """

    def __init__(self, features: Sequence[str], targets: Sequence[str], key: str,
                 columns: Sequence[str] | None = None):
        self.features, self.targets, self.key = tuple(features), tuple(targets), key
        self.columns = columns

    def line(self, sensor: str, payload: bytes) -> tuple[bytes | None, dict]:
        """``(line, {})`` for the server, or ``(None, error record)``."""
        if len(payload) > fmt.MAX_LINE:            # the limit of a line on stdin
            return None, self._error(sensor, f"payload longer than {fmt.MAX_LINE} bytes; "
                                             f"send one reading per message", "")
        try:
            text = fmt.decode(payload).removeprefix("\ufeff").strip()   # a byte-order mark
        except UnicodeDecodeError as exc:
            return None, self._error(sensor, fmt.describe_decode_error(exc),
                                     payload.decode("utf-8", "backslashreplace"))
        if not text:
            return None, self._error(sensor, "empty payload: expected a number, a CSV line or a "
                                             "JSON object", text)
        if "\n" in text:
            return None, self._error(sensor, "expected one reading per message, got "
                                             f"{text.count(chr(10)) + 1} lines", text)
        if text.startswith(("{", "[")):
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                return None, self._error(sensor, f"not valid JSON: {getattr(exc, 'msg', exc)}",
                                         text)
            if not isinstance(obj, dict):
                return None, self._error(sensor, f"expected a JSON object {{...}} (one reading), "
                                                 f"got a JSON {_JSON_KINDS.get(type(obj), 'value')}; send the "
                                                 f"reading as {{\"feature\": value, ...}}", text)
            own = obj.get(self.key)
            if own is not None and own != sensor:
                # Its topic names the sensor: a payload naming another would be fed to one
                # and answered as the other.
                return None, self._error(sensor, f"the payload's {self.key!r} is {own!r}, its "
                                                 f"topic's sensor {sensor!r}: the topic names "
                                                 f"the sensor; drop the key from the payload, "
                                                 f"or publish under the sensor's own topic",
                                         text)
            obj[self.key] = sensor
            return fmt.dump_json(obj).encode(), {}
        return self._csv(sensor, text)

    def _csv(self, sensor: str, text: str) -> tuple[bytes | None, dict]:
        raw = text.encode()
        expected = ("expected a reading: a number, the model's features as CSV (an ISO time "
                    "first, or the fields named by --columns) or a JSON object")
        try:
            form, is_header = fmt.detect(raw, self.features, self.targets, fmt="auto",
                                         columns=self.columns)
        except LstmEdgeError:
            is_header = True
        if is_header or isinstance(form, fmt.JsonlFormat):
            # read as the reading it has the fields of, for the reason it is not one
            fields = fmt.split_csv(text)
            n = len(self.features)
            if len(fields) == n:
                form = fmt.HeaderlessFormat(self.features, self.targets)
            elif len(fields) == n + 1 and self.columns is None:
                form = fmt.CsvFormat([fmt.TIME_COLUMN, *self.features], self.features,
                                     self.targets, has_header=False)
            else:
                shown = text if len(text) <= 40 else text[:37] + "..."
                return None, self._error(sensor, f"{expected}, got {shown!r}", text)
        rec = form.parse(1, raw)
        if not rec.ok:
            return None, self._error(sensor, rec.error or "", text)
        names = form.columns if isinstance(form, fmt.CsvFormat) else list(self.features)
        obj: dict[str, Any] = dict(zip(names, rec.fields if isinstance(rec.fields, list) else []))
        for name, value in zip(self.features, np.asarray(rec.values)):
            obj[name] = None if np.isnan(value) else float(value)
        obj[self.key] = sensor
        return fmt.dump_json(obj).encode(), {}

    def unnamed(self, topic: str, payload: bytes) -> dict:
        """The error record of a message whose topic's sensor level is empty."""
        return self._error("", f"the topic {topic!r} names no sensor (its sensor level is "
                               f"empty); publish each sensor's readings under its name",
                           payload[:200].decode("utf-8", "backslashreplace"))

    def _error(self, sensor: str, reason: str, text: str) -> dict:
        return {self.key: sensor, "error": reason, "input": text}


# ---- the connection --------------------------------------------------------------------

@dataclass
class Message:
    """One message taken from the broker and not yet acknowledged."""

    mid: int
    qos: int
    topic: str
    payload: bytes
    session: int        # the broker session it came on: acknowledged on that session only
    dup: bool = False   # the broker delivers it again (it went to a client before)
    retain: bool = False  # the broker's stored copy of a topic's last message, sent because
                          # lstm-run subscribed: a reading from before, never fed (see _answer)


def paho():
    """The paho-mqtt module; MqttError (one line: which extra to install) where it is absent."""
    try:
        import paho.mqtt.client as client
    except ImportError:
        raise MqttError(f"--mqtt needs the MQTT client library, which is not installed: "
                        f"{INSTALL}") from None
    if not hasattr(client, "CallbackAPIVersion"):
        raise MqttError(f"--mqtt needs paho-mqtt 2.x, found an older one: {INSTALL} --upgrade")
    return client


@dataclass
class Link:
    """The broker connection: messages in, answers out, reconnects, and the acks held back.

    paho's network thread runs the callbacks; the main thread takes messages from ``inbox``
    and answers them. A message stays in ``held`` from its arrival until its PUBACK is sent:
    the broker never reuses a packet id that is not acknowledged, so a message arriving
    with a held id is the broker delivering it again after a reconnect, and is dropped (the
    ack that is coming covers it). An ack sent as the link went down may never have reached
    the broker, which then delivers the message again (DUP) on the next connection: one
    with the id, topic and payload of an ack of the connection before is acknowledged again,
    not answered again. Packet ids belong to one broker session: where the broker has lost
    it (no ``session_present``), they start afresh, and what is held from before is answered
    but never acknowledged.
    """

    config: MqttConfig
    endpoint: Endpoint
    warn: Callable[[str], None]
    inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    held: set[int] = field(default_factory=set)        # packet ids received, not acknowledged
    unsent: list[Message] = field(default_factory=list)  # acks that found no connection
    published: set[int] = field(default_factory=set)    # our answers the broker acknowledged
    fatal: str | None = None       # why the broker cannot be used (bad credentials, ...)
    down_since: float | None = None
    closing: bool = False
    started: bool = False          # connected once: said so on stderr
    session: int = 0               # counts sessions the broker started afresh
    next: Message | None = None    # taken from the inbox, left for the next batch
    acked: OrderedDict = field(default_factory=OrderedDict)   # mid -> (topic, payload) acked
    before: dict = field(default_factory=dict)    # ``acked`` of the connection before this one
    at_most_once: set[str] = field(default_factory=set)   # topics that came at QoS 0
    retained: int = 0              # retained copies acknowledged, not fed (see _answer)

    def __post_init__(self) -> None:
        mqtt = paho()
        config = self.config
        self.lock = threading.Lock()
        self.done = threading.Condition(self.lock)
        self.client = client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                           client_id=config.client_id,
                                           protocol=mqtt.MQTTv5, manual_ack=True)
        if self.endpoint.username is not None:
            client.username_pw_set(self.endpoint.username, self.endpoint.password)
        if self.endpoint.tls:
            try:
                client.tls_set(ca_certs=_text(config.ca_file), certfile=_text(config.cert_file),
                               keyfile=_text(config.key_file))
            except (OSError, ValueError) as exc:
                raise MqttError(f"cannot use the TLS files (--ca-file, --cert-file, --key-file): "
                                f"{exc}") from None
        client.reconnect_delay_set(1, 30)
        client.on_connect = self._connected
        client.on_connect_fail = self._unreachable
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        client.on_publish = self._published
        client.on_subscribe = self._subscribed

    # -- start and stop --

    def start(self) -> None:
        """Connect, or say that the broker is not there and keep trying in the background."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry
        props.ReceiveMaximum = min(65535, 2 * self.config.batch)
        args = dict(host=self.endpoint.host, port=self.endpoint.port,
                    keepalive=self.config.keepalive, clean_start=False, properties=props)
        try:
            self.client.connect(**args)
        except ssl.SSLError as exc:
            raise MqttError(f"TLS with {self.endpoint} failed: {exc.reason or exc}; check "
                            f"--ca-file (the CA that signed the broker's certificate) and that "
                            f"the URL's host is the name in that certificate") from None
        except OSError as exc:
            if self.endpoint.tls and isinstance(exc, (ConnectionResetError, ssl.SSLEOFError)):
                # a server that is up but drops the TLS handshake: not one that will change
                raise MqttError(f"TLS with {self.endpoint} failed: the server closed the "
                                f"connection during the handshake ({_reason(exc)}); check "
                                f"that the port speaks TLS (mqtts, usually 8883), or use "
                                f"mqtt:// for a plain one") from None
            self.down_since = time.monotonic()
            self.warn(f"waiting for the MQTT broker at {self.endpoint}: "
                      f"{_reason(exc)}; retrying every 1 to 30 s")
            self.client.connect_async(**args)
        self.client.loop_start()

    def stop(self) -> None:
        """Disconnect cleanly: the broker keeps the session and every unacknowledged message."""
        self.closing = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- the main thread's side --

    def take(self, most: int, timeout: float) -> list[Message]:
        """Up to ``most`` messages, at most one per sensor: what has arrived, waiting up to
        ``timeout`` for the first.

        One reading per sensor a batch: if lstm-run dies after a batch's commit and before
        its acks, each sensor gets back only its last reading, which the order rule answers
        with the answer it got (an older one it could only skip).
        """
        if self.next is None:
            try:
                self.next = self.inbox.get(timeout=timeout)
            except queue.Empty:
                return []
        batch: list[Message] = []
        sensors: set[str | None] = set()
        while self.next is not None and len(batch) < most:
            sensor = sensor_of(self.next.topic, self.config.topics)
            if sensor in sensors:
                break
            sensors.add(sensor)
            batch.append(self.next)
            try:
                self.next = self.inbox.get_nowait()
            except queue.Empty:
                self.next = None
        return batch

    def publish(self, items: Sequence[tuple[str, str]], signals: Signals) -> None:
        """Publish each ``(topic, payload)`` at QoS 1 and return once the broker has them all.

        Through an outage paho sends them again on the reconnected session. After SIGINT or
        SIGTERM the broker gets ``GRACE`` seconds; then :class:`Interrupted` (not delivered).
        """
        mids = [self.client.publish(topic, payload, qos=1).mid for topic, payload in items]
        deadline = None
        with self.done:
            while not self.published.issuperset(mids):
                self.check()
                if signals.signum is not None:
                    deadline = deadline or time.monotonic() + GRACE
                    if time.monotonic() > deadline:
                        raise Interrupted(signals.signum)
                self.done.wait(0.1)
            self.published.difference_update(mids)

    def ack(self, batch: Sequence[Message]) -> None:
        """Acknowledge messages whose answers are out and counted; a lost link keeps them."""
        with self.lock:
            for m in batch:
                if m.qos == 0 or m.session != self.session:
                    continue
                if self.client.is_connected() and self.client.ack(m.mid, m.qos) == 0:
                    self._acked(m)
                else:
                    self.unsent.append(m)

    def _acked(self, m: Message) -> None:
        """``m``'s ack is sent (lock held); remember it while the broker may not have it."""
        self.held.discard(m.mid)
        self.acked[m.mid] = (m.topic, m.payload)
        while len(self.acked) > 2 * self.config.batch:    # the broker's most unacknowledged
            self.acked.popitem(last=False)

    def check(self) -> None:
        if self.fatal is not None:
            raise MqttError(self.fatal)

    # -- paho's network thread --

    def _connected(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.fatal = (f"the MQTT broker at {self.endpoint} refused the connection: "
                          f"{reason}; check the user and password in the URL and --client-id")
            return
        sock = client.socket()
        if sock is not None:
            # An answer, then an ack: small packets back to back, which Nagle's algorithm
            # would hold for the broker's delayed TCP ACK (40 ms on Linux).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Retained copies only to a new subscription, not on each resume of this session
        # (MQTT 5 retain handling 1); the one that still comes is not fed (see _answer).
        from paho.mqtt.subscribeoptions import SubscribeOptions
        options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        client.subscribe([(t, options) for t in self.config.topics])
        with self.lock:
            self.before, self.acked = self.acked, OrderedDict()
            if not flags.session_present:
                self.session += 1
                self.held.clear()
                self.unsent.clear()
                self.before.clear()
                if self.started:
                    self.warn(f"the MQTT broker at {self.endpoint} lost lstm-run's session; "
                              f"messages it held for {self.config.client_id!r} are gone (give "
                              f"the broker persistence to keep them over a restart)")
            for m in self.unsent:
                client.ack(m.mid, m.qos)
                self._acked(m)
            self.unsent.clear()
        if not self.started:
            self.warn(f"connected to {self.endpoint} as {self.config.client_id!r}: answering "
                      f"{', '.join(self.config.topics)} on {self.config.publish}")
        elif self.down_since is not None:
            self.warn(f"connected to the MQTT broker at {self.endpoint} again after "
                      f"{time.monotonic() - self.down_since:.1f} s; answering again")
        self.started, self.down_since = True, None

    def _unreachable(self, client, userdata) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.warn(f"cannot reach the MQTT broker at {self.endpoint}; retrying every 1 to "
                      f"30 s")

    def _disconnected(self, client, userdata, flags, reason, properties) -> None:
        if self.closing or self.down_since is not None or self.fatal is not None:
            return             # a refusal (a wrong password) is the Error line, said once
        self.down_since = time.monotonic()
        if not self.started:
            self.warn(f"the server at {self.endpoint} closed the connection before MQTT was "
                      f"set up ({reason}): check that it is an MQTT broker and that the URL's "
                      f"scheme (mqtt:// or mqtts://) is the one it speaks; retrying every 1 "
                      f"to 30 s")
            return
        self.warn(f"lost the MQTT broker at {self.endpoint} ({reason}); reconnecting every 1 "
                  f"to 30 s, unacknowledged messages will be delivered again")

    def _message(self, client, userdata, msg) -> None:
        _quick_ack(client)
        with self.lock:
            if msg.qos == 0 and msg.topic not in self.at_most_once:
                if not self.at_most_once:  # the first named; the others counted at the stop
                    self.warn(f"{msg.topic}: published at QoS 0, which the broker neither "
                              f"keeps for lstm-run while it restarts nor delivers again: "
                              f"readings can be lost there; publish at QoS 1 for nothing to "
                              f"be lost")
                self.at_most_once.add(msg.topic)
            if msg.qos > 0:
                if msg.mid in self.held:
                    return
                seen = (msg.topic, msg.payload)
                if msg.dup and seen in (self.before.get(msg.mid), self.acked.get(msg.mid)):
                    client.ack(msg.mid, msg.qos)     # answered and counted already
                    return
                self.held.add(msg.mid)
            self.inbox.put(Message(msg.mid, msg.qos, msg.topic, msg.payload, self.session,
                                   bool(msg.dup), bool(msg.retain)))

    def _published(self, client, userdata, mid, reason, properties) -> None:
        _quick_ack(client)
        with self.done:
            if reason.is_failure:
                self.fatal = (f"the MQTT broker at {self.endpoint} refused an answer: {reason}; "
                              f"check that this user may publish to the --publish and --errors "
                              f"topics")
            self.published.add(mid)
            self.done.notify_all()

    def _subscribed(self, client, userdata, mid, reasons, properties) -> None:
        refused = [(t, r) for t, r in zip(self.config.topics, reasons) if r.is_failure]
        if refused:
            self.fatal = "; ".join(f"the MQTT broker refused the subscription {t!r}: {r}"
                                   for t, r in refused) + " (check the filter and the user's ACL)"


GRACE = 2.0     # seconds the broker gets, after a signal, to acknowledge the last answers


def _quick_ack(client) -> None:
    """Acknowledge the broker's next TCP segment at once (Linux; elsewhere nothing).

    A broker without TCP_NODELAY (Mosquitto's default) holds its second PUBACK of a batch
    until its first is acknowledged, which Linux delays by up to 40 ms; quick-ack mode
    ends by itself, so it is asked for again after each packet read.
    """
    sock = client.socket()
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    return exc.strerror or str(exc) or type(exc).__name__


# ---- the loop --------------------------------------------------------------------------

def serve_mqtt(model, serve_config: ServeConfig, config: MqttConfig, *,
               warn: Callable[[str], None]) -> int:
    """Answer the broker's messages until SIGINT/SIGTERM; the exit code (130/143).

    Each batch: parse, step, publish the answers and wait for their PUBACKs, commit the
    state that counts them (``--state``), and only then acknowledge the messages.
    """
    endpoint = Endpoint.parse(config.url)
    if not endpoint.tls and (config.ca_file or config.cert_file):
        raise MqttError(f"--ca-file, --cert-file and --key-file are for TLS, but {endpoint} "
                        f"is plain MQTT: use an mqtts:// URL (port 8883 by default)")
    for flt in config.topics:
        if not flt or "#" in flt[:-1] or any(("+" in p or "#" in p) and len(p) > 1
                                             for p in flt.split("/")):
            raise MqttError(f"--topic {flt!r} is not an MQTT topic filter: '+' and '#' stand "
                            f"alone in a level, '#' only last (e.g. sensors/+/flow)")
    answers = check_template(config.publish, "--publish")
    errors = check_template(config.errors or answers + "/error", "--errors")
    key = serve_config.stream_column or "sensor"
    payloads = Payloads(model.features, model.targets, key, serve_config.columns)
    topics: dict[int, str] = {}      # the topic of each line of the batch in hand

    def relabel(message: str) -> str:
        """The server's "line N: reason" as "TOPIC: reason"."""
        found = re.match(r"line (\d+): ", message)
        if found and int(found.group(1)) in topics:
            return f"{topics[int(found.group(1))]}: {message[found.end():]}"
        return message

    from .serve import ServeConfig, Server

    server = Server(model, ServeConfig(**{**vars(serve_config), "format": "jsonl",
                                          "stream_column": key, "columns": None,
                                          "strict": False}),
                    warn=lambda message: warn(relabel(message)))
    link = Link(config, endpoint, warn)
    with Signals() as signals:
        server.load_state()
        try:
            link.start()
            while True:
                signals.check()
                link.check()
                batch = link.take(config.batch, timeout=0.2)
                if batch:
                    _answer(batch, server, payloads, link, signals, (answers, errors), warn,
                            topics)
        except Interrupted as exc:
            return 128 + exc.signum
        finally:
            server.report_order()       # replays, skipped and redelivered readings per sensor
            _report_link(link, warn)
            try:
                server.close()
            finally:
                link.stop()


def _report_link(link: Link, warn) -> None:
    """At the stop: how many topics came at QoS 0, and how many retained copies were left."""
    with link.lock:                      # paho's thread adds to it
        topics = sorted(link.at_most_once)
    if topics:                           # the first was named when it came; all counted
        warn(f"{counted(len(topics), 'topic')} published at QoS 0 (readings there can be "
             f"lost over a restart), {'e.g. ' if len(topics) > 1 else ''}"
             f"{', '.join(topics[:3])}")
    if link.retained:
        warn(f"{counted(link.retained, 'retained message')} acknowledged and not fed")


def _answer(batch: list[Message], server: Server, payloads: Payloads, link: Link,
            signals: Signals, templates: tuple[str, str], warn, topics: dict[int, str]) -> None:
    """One batch, end to end: answers out (PUBACK), state committed, then messages acked.

    A retained message is acknowledged and not fed: it is the broker's copy of a reading
    published before lstm-run subscribed, which this stream may have been fed already (a
    reading without a time could not be told from a new one) or never saw in order.
    """
    for m in batch:
        if m.retain:
            if not link.retained:          # the first named; the others counted at the stop
                warn(f"{m.topic}: a retained message (the broker's stored copy of a reading "
                     f"published before lstm-run subscribed) is not fed; readings published "
                     f"from now on are")
            link.retained += 1
    batch_in, batch = batch, [m for m in batch if not m.retain]
    found = [sensor_of(m.topic, link.config.topics) for m in batch]
    sensors = [m.topic if s is None else s for s, m in zip(found, batch)]
    parsed = [payloads.line(s, m.payload) if s else
              (None, payloads.unnamed(m.topic, m.payload)) for s, m in zip(sensors, batch)]
    first = server.lines
    lines = [line for line, _ in parsed if line is not None]
    topics.clear()
    topics.update((first + i + 1, m.topic) for i, m in
                  enumerate(m for m, (line, _) in zip(batch, parsed) if line is not None))
    out = iter(server.handle([(first + i + 1, line) for i, line in enumerate(lines)]))
    step = getattr(server.format, "step", "step")     # the answers' step key
    order = getattr(server.format, "order", None)     # the order check's key, once it is on
    items = []
    for sensor, m, (line, error) in zip(sensors, batch, parsed):
        if line is None:
            warn(f"{m.topic}: {error['error']}")
            server.errors += 1
            text = fmt.dump_json(error)
        else:
            text = next(out)
        record = json.loads(text) if line is not None else {}
        if m.dup and order and str(record.get(order, "")).startswith("skipped"):
            # The broker's redelivery of a reading before its sensor's last one: a later
            # reading was committed, so this one was answered (PUBACK) before that commit.
            cast(OrderColumn, server.order).answered_before(sensor)
            continue
        is_answer = step in record
        topic = (templates[0] if is_answer else templates[1]).format(sensor=sensor)
        items.append((topic, text))
    link.publish(items, signals)
    server.delivered()
    if server.store is not None:
        server.save_state()       # every batch: a message is acknowledged once it is counted
    link.ack(batch_in)


# ---- the command line ------------------------------------------------------------------

def options(command):
    """``lstm-run``'s MQTT options; they reach the command as keyword arguments."""
    import click
    path = click.Path(exists=True, dir_okay=False, path_type=Path)
    for decorator in reversed([
        click.option("--mqtt", "mqtt_url", metavar="URL",
                     help="Read readings from an MQTT broker and publish the answers to it "
                          "instead of stdin/stdout: mqtt://[user[:password]@]host[:port] or "
                          "mqtts://... (TLS); a user without a password takes it from "
                          f"${PASSWORD_VARIABLE}. See docs/mqtt.md."),
        click.option("--topic", "mqtt_topics", multiple=True, metavar="FILTER",
                     help="--mqtt: a topic filter to subscribe to (repeatable); its first '+' "
                          "level names the sensor, e.g. 'sensors/+/flow'."),
        click.option("--publish", "mqtt_publish", default="predictions/{sensor}",
                     show_default=True, metavar="TEMPLATE",
                     help="--mqtt: the topic each answer (JSON) is published to."),
        click.option("--errors", "mqtt_errors", metavar="TEMPLATE",
                     help="--mqtt: the topic a refused reading's error record goes to "
                          "[default: the --publish topic + '/error']."),
        click.option("--client-id", "mqtt_client_id", metavar="ID",
                     help="--mqtt: the client id, which names the broker's persistent session; "
                          "give each lstm-run its own [default: lstm-run-<model name>]."),
        click.option("--ca-file", "mqtt_ca_file", type=path,
                     help="--mqtt mqtts://: the CA certificate(s) that signed the broker's "
                          "[default: the system's]."),
        click.option("--cert-file", "mqtt_cert_file", type=path,
                     help="--mqtt mqtts://: a client certificate (PEM), with --key-file."),
        click.option("--key-file", "mqtt_key_file", type=path,
                     help="--mqtt mqtts://: the client certificate's private key (PEM)."),
    ]):
        command = decorator(command)
    return command


def run_from_options(model, model_path: Path, serve_config: ServeConfig, opts: dict, *,
                     plain: dict, warn) -> int:
    """``lstm-run --mqtt``: check the options that do not apply, then serve; the exit code."""
    import click
    paho()
    given = [name for name, used in plain.items() if used]
    if given:
        raise click.UsageError(f"{', '.join(given)} cannot be used with --mqtt (readings come "
                               f"from the broker and answers go back to it)")
    if not opts["mqtt_topics"]:
        raise click.UsageError("--mqtt needs --topic FILTER, e.g. --topic 'sensors/+/flow'")
    if (opts["mqtt_cert_file"] is None) != (opts["mqtt_key_file"] is None):
        raise click.UsageError("--cert-file and --key-file go together")
    config = MqttConfig(url=opts["mqtt_url"], topics=tuple(opts["mqtt_topics"]),
                        publish=opts["mqtt_publish"], errors=opts["mqtt_errors"],
                        client_id=opts["mqtt_client_id"] or f"lstm-run-{model_path.stem}",
                        ca_file=opts["mqtt_ca_file"], cert_file=opts["mqtt_cert_file"],
                        key_file=opts["mqtt_key_file"])
    return serve_mqtt(model, serve_config, config, warn=warn)
