# Shared pieces for the bridge tests: stations played with paho, the bridge in-process or as `overstay bridge`, PostgreSQL.
import io
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from host_tools.bridge import db as dbmod
from host_tools.bridge import keys
from host_tools.bridge.logs import Log
from host_tools.bridge.metrics import Metrics
from host_tools.bridge.mqttconn import BrokerOptions
from host_tools.bridge.service import Bridge, Settings
from protocol import session as sessmod
from protocol import wire

ROOT = Path(__file__).resolve().parent.parent
T0 = 1763830800
TARIFF = {"id": "T0", "version": 1, "rate": 50, "grace_s": 300, "currency": "USD"}
TIERED = {"id": "T1", "version": 2, "rate": 10, "grace_s": 0, "currency": "USD", "tiers": [{"min_occupancy_pct": 0, "rate": 10}, {"min_occupancy_pct": 50, "rate": 100}]}
PG_SERVER = os.environ.get("OVERSTAY_TEST_PG", "postgresql://localhost/postgres")


def wait_for(pred, timeout=10.0, interval=0.02, what="condition"):
    """Poll pred() until it is truthy; return its value or fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# -- stations -------------------------------------------------------------


def session_record(station, sid=None, connector=1, plug_in=T0, tariff=TARIFF, occupancy=None, idle_min=20):
    """A real closed session record from protocol/session.py: plug in, charge, idle idle_min minutes, unplug."""
    s = sessmod.Session(sid or "%s-%d" % (station, plug_in), station, connector, tariff, plug_in, "Preparing", occupancy, plug_in if occupancy is not None else None)
    s.add_status(plug_in + 10, "Charging")
    s.add_status(plug_in + 3600, "SuspendedEV")
    s.mark_charge_complete(plug_in + 3600)
    s.set_energy(21450)
    s.add_status(plug_in + 3600 + idle_min * 60, "Available")
    return s.record()


class Station:
    """A station played with paho: signs with its key, counts n, collects and verifies its acks."""

    def __init__(self, port, station, site, key, n=1, connect=True):
        self.port = port
        self.station = station
        self.site = site
        self.key = key
        self.n = n
        self.acked = set()
        self.ack_msgs = []
        self.bad_acks = []
        self.guard = wire.SeqGuard()
        self.lock = threading.Lock()
        self.client = None
        if connect:
            self.connect()

    def connect(self):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="st-%s-%s" % (self.station, secrets.token_hex(3)), protocol=mqtt.MQTTv311)
        ready = threading.Event()
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._on_ack
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        c.subscribe(wire.station_topic(self.site, self.station, "ack"), qos=1)
        assert ready.wait(5), "station could not subscribe to its ack topic"
        self.client = c
        return self

    def close(self):
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def _on_ack(self, client, userdata, message):
        try:
            msg = wire.decode(message.payload, lambda s: self.key, expect_sender=self.station, guard=self.guard, leaf="ack")
        except wire.WireError as e:
            with self.lock:
                self.bad_acks.append(e.code)
            return
        with self.lock:
            self.ack_msgs.append(msg)
            self.acked.update(msg.body["acks"])

    def encode(self, kind, body, n=None, t=None, key=None):
        if n is None:
            n = self.n
            self.n += 1
        return n, wire.encode(key or self.key, kind, self.station, n, T0 if t is None else t, body)

    def send(self, leaf, body, n=None, t=None, key=None, topic=None):
        kind = wire.LEAF_KIND[leaf]
        n, payload = self.encode(kind, body, n, t, key)
        self.send_raw(topic or wire.station_topic(self.site, self.station, leaf), payload)
        return n, payload

    def send_raw(self, topic, payload, retain=None):
        if retain is None:
            retain = topic.endswith("/state")
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def event(self, type_="status", connector=1, **fields):
        body = {"connector": connector, "type": type_}
        body.update(fields)
        return self.send("event", body)

    def state(self, status, connector=1, **fields):
        body = {"connector": connector, "status": status}
        body.update(fields)
        return self.send("state", body)

    def session(self, **kw):
        return self.send("session", session_record(self.station, **kw))

    def wait_acked(self, ns, timeout=10.0):
        ns = set(ns)
        wait_for(lambda: ns <= self.acked, timeout, what="acks for %s (have %s)" % (sorted(ns - self.acked)[:10], len(self.acked)))


def register(db, station, site, connectors=1):
    key = secrets.token_bytes(32)
    keys.register_station(db, station, site, key, connectors=connectors)
    return key


# -- the bridge -----------------------------------------------------------


class InProcessBridge:
    """The Bridge class on threads in this process; logs go to a buffer."""

    def __init__(self, broker_url, db_url, **kw):
        kw.setdefault("occupancy_check_s", 0.1)
        kw.setdefault("gap_scan_s", 0.2)
        kw.setdefault("gap_settle_s", 0)
        kw.setdefault("key_cache_s", 0.2)
        kw.setdefault("batch_ms", 5.0)
        self.stream = io.StringIO()
        self.log = Log(self.stream, as_json=True, level="debug")
        self.metrics = Metrics()
        self.bridge = Bridge(Settings(BrokerOptions(broker_url), db_url, **kw), self.log, self.metrics)

    def start(self):
        self.bridge.start()
        wait_for(self.bridge.subscribed.is_set, 10, what="bridge subscribed")
        return self

    def stop(self):
        self.bridge.shutdown()

    def logs(self):
        return self.stream.getvalue()

    def metric(self, name, **labels):
        v = self.metrics.registry.get_sample_value(name, labels or None)
        return v or 0


class BridgeProcess:
    """`overstay bridge ...` as a subprocess (SIGKILL / SIGTERM for real)."""

    def __init__(self, workdir, broker_url, db_url, *extra, env=None, name="bridge"):
        self.log_path = Path(workdir) / ("%s-%d.log" % (name, int(time.time() * 1000)))
        self.args = [
            sys.executable, "-m", "host_tools.cli", "bridge", "--broker", broker_url, "--db", db_url,
            "--log-level", "debug", "--log-json", "--gap-scan", "1", "--gap-settle", "0", "--batch-ms", "5",
        ] + list(extra)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = str(ROOT) + os.pathsep + self.env.get("PYTHONPATH", "")
        self.env.pop("OVERSTAY_FAULT", None)
        if env:
            self.env.update(env)
        self.proc = None

    def start(self):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.logf, stderr=self.logf, env=self.env, cwd=str(ROOT))
        wait_for(lambda: '"event":"subscribed"' in self.logs() or '"session_present":true' in self.logs() or self.proc.poll() is not None, 20, what="bridge process subscribed")
        assert self.proc.poll() is None, "bridge exited: " + self.logs()
        return self

    def logs(self):
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout=20):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self):
        self.kill()
        self.logf.close()


# -- databases ------------------------------------------------------------


def sqlite_url(path):
    return "sqlite:///" + str(path)  # an absolute path gives sqlite:////...


def count(db_url, sql, params=()):
    db = dbmod.connect(db_url)
    try:
        with db.tx():
            return db.one(sql, params)[0]
    finally:
        db.close()


def rows(db_url, sql, params=()):
    db = dbmod.connect(db_url)
    try:
        with db.tx():
            return [tuple(r) for r in db.all(sql, params)]
    finally:
        db.close()


_pg_state = {}


def _pg_server():
    if "error" in _pg_state or "base" in _pg_state:
        return _pg_state
    try:
        import psycopg

        with psycopg.connect(PG_SERVER, connect_timeout=3, autocommit=True):
            pass
        _pg_state["base"] = PG_SERVER
    except Exception as e:  # noqa: BLE001 - any failure means: no server here
        _pg_state["error"] = "no PostgreSQL server reachable at %s: %s" % (PG_SERVER, " ".join(str(e).split())[:200])
    return _pg_state


@pytest.fixture(scope="session")
def pg_database():
    """A database of its own on the machine's PostgreSQL for this test session (dropped at the end).

    Test modules import this fixture, so pytest may instantiate it once per
    module: the first instance creates the database and drops it at the end
    of the session, the others reuse it."""
    st = _pg_server()
    if "error" in st:
        pytest.skip(st["error"])
    if "url" in st:
        yield st["url"]
        return
    import psycopg

    name = "overstay_test_%d_%s" % (os.getpid(), secrets.token_hex(4))
    with psycopg.connect(st["base"], autocommit=True) as c:
        c.execute("CREATE DATABASE " + name)
    base = st["base"].rsplit("/", 1)[0]
    url = st["url"] = base + "/" + name
    try:
        dbmod.open_db(url).close()
        yield url
    finally:
        st.pop("url", None)
        with psycopg.connect(st["base"], autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)")


@pytest.fixture
def pg_url(pg_database):
    """The session's PostgreSQL database, emptied for this test."""
    db = dbmod.connect(pg_database)
    try:
        with db.tx():
            names = [r[0] for r in db.all("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'")]
            db.execute("TRUNCATE " + ", ".join(names) + " RESTART IDENTITY CASCADE")
    finally:
        db.close()
    return pg_database
