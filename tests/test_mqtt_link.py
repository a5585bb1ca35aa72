# Tests for firmware/stall/mqtt_link.py under CPython asyncio against a real Mosquitto, with paho-mqtt as the other peer.

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import threading
import time

import paho.mqtt.client as paho
import pytest

from firmware.stall.mqtt_link import MqttLink
from protocol import mqtt
from tests.broker import Mosquitto, free_port

AVAIL = "overstay/v1/lot-a/st-01/avail"
CMD = "overstay/v1/lot-a/st-01/cmd"
EVENT = "overstay/v1/lot-a/st-01/event"
TARIFF = "overstay/v1/lot-a/tariff"
TICK = 0.010  # the control loop's period in these tests
# What these tests prove is that the loop is never *blocked* on the network: a
# blocking connect, DNS lookup or write shows up as whole seconds of delay.
# The bound leaves room for a loaded CI machine's scheduler; the measured
# figures are printed, and `make bench` is where they are tracked.
BLOCKED = 0.25


def run(coro, timeout=20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)


class Peer:
    """paho-mqtt 2.x on its own thread: the bridge's side of the conversation."""

    def __init__(self, port, client_id="bridge", clean_session=True, subscribe=(), host="127.0.0.1"):
        self.messages = []
        self.lock = threading.Lock()
        self.subscribe = list(subscribe)
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.ready = threading.Event()  # connected and every SUBACK in
        self.c.connect(host, port, keepalive=10)
        self.c.loop_start()
        if not self.ready.wait(5):
            raise AssertionError("paho did not connect and subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if not self.subscribe:
            self.ready.set()
        for f in self.subscribe:
            client.subscribe(f, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.subscribe_acks = getattr(self, "subscribe_acks", 0) + 1
        if self.subscribe_acks >= len(self.subscribe):
            self.ready.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.retain, msg.qos))

    def got(self, topic=None):
        with self.lock:
            return [m for m in self.messages if topic is None or m[0] == topic]

    def publish(self, topic, payload, qos=1, retain=False):
        self.c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def peer(port, **kw):
    return Peer(port, **kw)


class Ticker:
    """The stall's control loop stand-in: wakes every TICK, records how late it
    woke, and tries to publish on every tick (publish must not wait)."""

    def __init__(self, link=None, topic=EVENT, qos=1):
        self.link = link
        self.topic = topic
        self.qos = qos
        self.worst_late = 0.0
        self.worst_publish = 0.0
        self.ticks = 0
        self.accepted = 0
        self.phase = ""
        self.worst_phase = ""

    async def run(self):
        loop = asyncio.get_running_loop()
        due = loop.time() + TICK
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            now = loop.time()
            if now - due > self.worst_late:
                self.worst_late = now - due
                self.worst_phase = self.phase
            self.ticks += 1
            if self.link is not None:
                t0 = time.perf_counter()
                if self.link.publish(self.topic, b"tick %d" % self.ticks, self.qos):
                    self.accepted += 1
                self.worst_publish = max(self.worst_publish, time.perf_counter() - t0)
            due = now + TICK


async def saved(broker, since, timeout=4.0):
    """Wait for mosquitto's autosave (every second) to write its database after `since`."""
    db = os.path.join(broker.workdir, "mosquitto.db")
    await until(lambda: os.path.exists(db) and os.path.getmtime(db) > since, timeout, "mosquitto.db autosave")


class Caps:
    """A random source that always picks the largest delay, recording each cap."""

    def __init__(self):
        self.caps = []

    def __call__(self, n):
        self.caps.append(n)
        return n


def make_link(port, **kw):
    kw.setdefault("backoff_min_ms", 50)
    kw.setdefault("backoff_max_ms", 400)
    kw.setdefault("poll_ms", 20)
    kw.setdefault("keepalive_s", 5)
    return MqttLink(kw.pop("host", "127.0.0.1"), port, kw.pop("client_id", "st-01"), **kw)


# ---------------------------------------------------------------- round trips


def test_subscribe_publish_qos1_round_trip_and_retained(mosquitto):
    bridge = peer(mosquitto.port, subscribe=[EVENT])
    bridge.publish(TARIFF, b"tariff-v7", qos=1, retain=True)  # retained before the stall connects
    got, acks, connects = [], [], []

    async def scenario():
        link = make_link(
            mosquitto.port,
            subscriptions=[(CMD, 1), (TARIFF, 1)],
            on_message=got.append,
            on_puback=acks.append,
            on_connect=connects.append,
        )
        assert link.publish(EVENT, b"early", 1) is False  # not connected: refused at once
        link.start()
        await until(lambda: link.connected and link.session.subscribed(), what="connect + SUBACK")
        await until(lambda: any(m.topic == TARIFF for m in got), what="retained tariff")
        pid = link.publish(EVENT, b"charge_complete", 1)
        assert isinstance(pid, int) and pid >= 1
        assert link.publish(EVENT, b"qos0", 0) is True
        await until(lambda: pid in acks, what="PUBACK")
        await until(lambda: len(bridge.got(EVENT)) == 2, what="bridge delivery")
        bridge.publish(CMD, b'{"op":"pause"}', qos=1)
        await until(lambda: any(m.topic == CMD for m in got), what="command delivery")
        link.stop()
        return link

    link = run(scenario())
    bridge.close()
    tariff = [m for m in got if m.topic == TARIFF][0]
    assert tariff.payload == b"tariff-v7" and tariff.retain
    cmd = [m for m in got if m.topic == CMD][0]
    assert cmd.payload == b'{"op":"pause"}' and cmd.qos == 1 and not cmd.retain
    assert sorted(m[1] for m in bridge.got(EVENT)) == [b"charge_complete", b"qos0"]
    assert connects == [False]
    assert link.status()["connects"] == 1 and link.last_error is None


def test_will_published_when_socket_dies_and_online_retained(mosquitto):
    states = []

    async def scenario():
        link = make_link(mosquitto.port, will=(AVAIL, b"offline", 1, True), backoff_min_ms=20, backoff_max_ms=50)
        link.on_connect = lambda sp: link.publish(AVAIL, b"online", 1, True)
        link.start()
        await until(lambda: link.connected and not link.session.inflight(), what="online published")
        # A late subscriber still sees the retained state.
        watcher = peer(mosquitto.port, client_id="console", subscribe=[AVAIL])
        await until(lambda: watcher.got(AVAIL), what="retained online")
        states.append(watcher.got(AVAIL)[0])
        # The stall's socket dies without DISCONNECT.
        link._writer.transport.abort()
        await until(lambda: len(watcher.got(AVAIL)) >= 2, what="last will")
        states.append(watcher.got(AVAIL)[1])
        # The link reconnects and says online again.
        await until(lambda: len(watcher.got(AVAIL)) >= 3, what="online again")
        states.append(watcher.got(AVAIL)[2])
        assert link.reconnects == 1
        # A clean stop sends DISCONNECT: no will this time.
        await asyncio.sleep(0.05)
        link.stop()
        await asyncio.sleep(0.3)
        states.append(len(watcher.got(AVAIL)))
        watcher.close()

    run(scenario())
    assert states[0] == (AVAIL, b"online", True, 1)
    assert states[1][:2] == (AVAIL, b"offline")
    assert states[2][:2] == (AVAIL, b"online")
    assert states[3] == 3


# ---------------------------------------------------------------- outages


def test_hung_then_restarted_broker_delivers_inflight_and_loop_never_waits(mosquitto):
    """The broker freezes (SIGSTOP: a black hole after connect), is killed,
    stays dead for a while and comes back from its persisted state. The link
    detects the hang by keepalive, backs off while the broker is dead,
    reconnects into its persistent session and resends the unacknowledged
    QoS 1 publishes; meanwhile the 10 ms control loop is never held up."""
    bridge = peer(mosquitto.port, client_id="bridge", clean_session=False, subscribe=[EVENT])
    caps = Caps()
    acks, sessions = [], []

    async def scenario():
        link = make_link(
            mosquitto.port,
            keepalive_s=1,
            connect_timeout_ms=500,
            backoff_min_ms=100,
            backoff_max_ms=800,
            random=caps,
            on_puback=acks.append,
            on_connect=sessions.append,
        )
        link.start()
        await until(lambda: link.connected, what="connect")
        ticker = Ticker()
        tick_task = asyncio.create_task(ticker.run())
        ticker.phase = "connected"
        await saved(mosquitto, time.time())  # both sessions must survive a SIGKILL
        ticker.phase = "hung"
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)
        pids = [link.publish(EVENT, b"session-%d" % i, 1) for i in range(5)]
        assert all(pids) and link.session.inflight() == pids
        ticker.link = link  # from now on the loop also publishes every tick
        await until(lambda: not link.connected, timeout=3, what="hang detected")
        hang_error = link.last_error
        ticker.phase = "harness: killing the broker"
        await asyncio.to_thread(mosquitto.kill)
        ticker.phase = "dead"  # off the loop: the test must not stall it either
        await asyncio.sleep(1.0)  # dead broker: refused connections, backing off
        attempts_while_dead = link.attempts
        ticker.link = None
        ticker.phase = "harness: starting the broker"
        await asyncio.to_thread(mosquitto.start)
        ticker.phase = "reconnecting"
        await until(lambda: link.connected, timeout=5, what="reconnect")
        ticker.phase = "resending"
        await until(lambda: not link.session.inflight(), timeout=5, what="resent publishes acknowledged")
        tick_task.cancel()
        link.stop()
        return link, pids, ticker, hang_error, attempts_while_dead

    link, pids, ticker, hang_error, attempts_while_dead = run(scenario(), timeout=30)
    bridge.close()
    # The bridge (persistent session) gets every message, possibly twice.
    late = peer(mosquitto.port, client_id="bridge", clean_session=False, subscribe=[EVENT])
    deadline = time.monotonic() + 5
    want = {b"session-%d" % i for i in range(5)}
    while not want <= {m[1] for m in bridge.got(EVENT) + late.got(EVENT)} and time.monotonic() < deadline:
        time.sleep(0.05)
    late.close()
    assert want <= {m[1] for m in bridge.got(EVENT) + late.got(EVENT)}
    assert "keepalive" in hang_error
    assert sessions == [False, True]  # the broker had kept the stall's session
    assert set(pids) <= set(acks)
    assert attempts_while_dead >= 3
    # Full-jitter caps double from backoff_min up to backoff_max, and restart from the minimum after a CONNACK.
    assert caps.caps[:4] == [100, 200, 400, 800]
    assert all(c <= 800 for c in caps.caps)
    # The control loop: never more than one tick late; publish() answers in well under a millisecond.
    print("worst tick delay %.2f ms (%s), worst publish() %.3f ms" % (ticker.worst_late * 1000, ticker.worst_phase, ticker.worst_publish * 1000))
    assert ticker.worst_late < BLOCKED
    assert ticker.worst_publish < BLOCKED / 10
    assert ticker.accepted == 16 - 5  # until the in-flight window was full; refused from then on


def test_black_hole_broker_and_dns_lookup_per_attempt():
    """A listener that never accepts: the first connection completes in the
    kernel and waits forever for CONNACK, later SYNs are dropped. The link must
    time out each attempt, back off, look the name up again every time, and
    never delay the control loop."""
    hole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    port = hole.getsockname()[1]
    lookups = []

    async def scenario():
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def counting(host, *a, **kw):
            lookups.append(host)
            return await real(host, *a, **kw)

        loop.getaddrinfo = counting
        link = make_link(port, host="localhost", connect_timeout_ms=250, backoff_min_ms=20, backoff_max_ms=100)
        ticker = Ticker(link)
        tick_task = asyncio.create_task(ticker.run())
        link.start()
        await asyncio.sleep(2.0)
        tick_task.cancel()
        link.stop()
        return link, ticker

    try:
        link, ticker = run(scenario())
    finally:
        hole.close()
    print("black hole: %d attempts, worst tick delay %.2f ms" % (link.attempts, ticker.worst_late * 1000))
    assert link.connects == 0 and ticker.accepted == 0
    assert link.attempts >= 3
    assert len(lookups) >= link.attempts - 1 and set(lookups) == {"localhost"}
    assert "CONNACK" in link.last_error or "timed out" in link.last_error
    assert ticker.worst_late < BLOCKED


def test_dead_broker_publish_returns_at_once(mosquitto):
    async def scenario():
        link = make_link(mosquitto.port, backoff_min_ms=10, backoff_max_ms=100)
        link.start()
        await until(lambda: link.connected, what="connect")
        await asyncio.to_thread(mosquitto.kill)
        await until(lambda: not link.connected, what="drop noticed")
        ticker = Ticker(link)
        tick_task = asyncio.create_task(ticker.run())
        await asyncio.sleep(1.0)
        tick_task.cancel()
        link.stop()
        return link, ticker

    link, ticker = run(scenario())
    print("dead broker: %d attempts, worst tick delay %.2f ms" % (link.attempts, ticker.worst_late * 1000))
    assert link.attempts >= 4 and ticker.accepted == 0
    assert "Connect" in link.last_error or "refused" in link.last_error.lower()
    assert ticker.worst_late < BLOCKED


# ---------------------------------------------------------------- credentials and TLS


def test_username_password(tmp_path):
    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "st-01", "right-pass"], check=True, capture_output=True)
    broker = Mosquitto(tmp_path / "auth", extra="allow_anonymous false\npassword_file %s\n" % pwfile).start()
    caps = Caps()

    async def scenario():
        good = make_link(broker.port, username="st-01", password=b"right-pass")
        bad = make_link(broker.port, client_id="st-02", username="st-01", password="wrong", random=caps)
        good.start()
        bad.start()
        await until(lambda: good.connected, what="good credentials accepted")
        await asyncio.sleep(1.0)
        good.stop()
        bad.stop()
        return good, bad

    try:
        good, bad = run(scenario())
    finally:
        broker.kill()
    assert good.connects == 1
    assert bad.connects == 0 and bad.attempts >= 3
    assert bad.last_error == "connection refused: not authorized"  # mosquitto's answer to a wrong password
    assert caps.caps[:3] == [50, 100, 200]  # refused attempts back off like any failure


def _self_signed(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


def test_tls_with_self_signed_certificate(tmp_path):
    key, cert = _self_signed(tmp_path)
    tls_port = free_port()
    broker = Mosquitto(
        tmp_path / "tls", extra="listener %d 127.0.0.1\ncertfile %s\nkeyfile %s\n" % (tls_port, cert, key)
    ).start()
    bridge = peer(broker.port, subscribe=[EVENT])  # plain listener on the same broker
    got = []

    async def scenario():
        ctx = ssl.create_default_context(cafile=str(cert))
        link = make_link(tls_port, ssl=ctx, subscriptions=[(CMD, 1)], on_message=got.append)
        wrong = make_link(tls_port, client_id="st-02", ssl=ssl.create_default_context())  # system CAs only
        link.start()
        wrong.start()
        await until(lambda: link.connected and link.session.subscribed(), what="TLS connect")
        assert link.publish(EVENT, b"over tls", 1)
        bridge.publish(CMD, b"to the stall")
        await until(lambda: got and bridge.got(EVENT), what="TLS round trip")
        link.stop()
        wrong.stop()
        return link, wrong

    try:
        link, wrong = run(scenario())
    finally:
        bridge.close()
        broker.kill()
    assert got[0].payload == b"to the stall"
    assert bridge.got(EVENT)[0][1] == b"over tls"
    assert wrong.connects == 0 and "CERTIFICATE_VERIFY_FAILED" in wrong.last_error


# ---------------------------------------------------------------- smaller behaviours


def test_window_full_and_pending_bytes_refuse(mosquitto):
    async def scenario():
        link = make_link(mosquitto.port, max_inflight=2)
        link.start()
        await until(lambda: link.connected, what="connect")
        os.kill(mosquitto.proc.pid, signal.SIGSTOP)  # nothing gets acknowledged
        try:
            r = [link.publish(EVENT, b"x", 1) for _ in range(3)]
            assert r[0] and r[1] and r[2] is False
            assert link.publish(EVENT, b"qos0 still fits", 0) is True
            assert link.can_publish(0) and not link.can_publish(1)
        finally:
            os.kill(mosquitto.proc.pid, signal.SIGCONT)
        await until(lambda: link.can_publish(1), what="window reopens")
        with pytest.raises(ValueError):
            link.publish("bad/+", b"x", 1)
        with pytest.raises(ValueError):
            link.publish(EVENT, b"x", 2)
        link.stop()

    run(scenario())


def test_callback_errors_do_not_take_the_link_down(mosquitto):
    bridge = peer(mosquitto.port)

    def boom(msg):
        raise RuntimeError("handler bug")

    async def scenario():
        link = make_link(mosquitto.port, subscriptions=[(CMD, 1)], on_message=boom)
        link.start()
        await until(lambda: link.connected and link.session.subscribed(), what="subscribed")
        bridge.publish(CMD, b"1")
        await until(lambda: link.last_error and "handler bug" in link.last_error, what="callback error noted")
        assert link.connected and link.connects == 1
        link.stop()

    run(scenario())
    bridge.close()


def test_stop_before_connect_and_misuse():
    async def scenario():
        link = make_link(free_port(), backoff_min_ms=1000, backoff_max_ms=1000)
        task = link.start()
        assert link.start() is task
        await asyncio.sleep(0.05)
        assert link.publish(EVENT, b"x", 1) is False
        link.stop()
        await asyncio.sleep(0.01)
        assert task.done()

    run(scenario())
    with pytest.raises(ValueError):
        MqttLink("h", 1883, "st-01", backoff_min_ms=10, backoff_max_ms=5)
    with pytest.raises(ValueError):
        MqttLink("h", 1883, "st-01", will=("a/+", b"", 0, False))
    with pytest.raises(ValueError):
        MqttLink("h", 1883, "", clean_session=False)
    assert mqtt.MAX_PACKET >= 16384 + 100
