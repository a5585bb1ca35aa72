# Chaos suite, real transport: a Mosquitto process, `overstay bridge` processes, and each stall App on the firmware's own MqttLink.
#
# The world's clock is virtual (tests/chaos_world.py); the broker, the
# bridge and the links run in real time. Between two steps of the world the
# driver sleeps a couple of real milliseconds while messages are in flight,
# so acks reach the stalls a few simulated seconds after their records;
# while a process restarts the world waits (simulated time stands still),
# so a planned downtime lasts what the plan says.
#
#   broker_restart   SIGKILL the broker (it runs without persistence), start
#                    it again empty: every session, subscription, queued
#                    message and retained message is gone. The world waits
#                    until the bridge has reconnected and subscribed again.
#   bridge_crash     SIGKILL the bridge at once; after the downtime start one
#                    with OVERSTAY_FAULT=after_commit_exit, which kills itself
#                    right after its first commit that has station acks (the
#                    broker's redelivered backlog, usually), then a normal one.
#   net_drop         the stall's link points at a closed port and drops the
#                    connection (no DISCONNECT); the real port comes back later
#   duplicates and   ChaosLink (an MqttLink) sends some publishes twice and
#   reordering       holds some back for a while (later ones overtake them);
#                    ReplayProxy, a paho client, stores every station payload
#                    it sees and re-publishes random ones from any earlier time
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading

import paho.mqtt.client as mqtt

from protocol import wire
from tests.broker import Mosquitto
from tests.chaos_world import _REPO
from stall.mqtt_link import MqttLink  # noqa: E402 - chaos_world put the firmware on sys.path

PAUSE_S = 0.002  # real seconds per world step while messages are in flight


class ChaosLink(MqttLink):
    """The stall's MqttLink, plus duplicated and held-back publishes."""

    def __init__(self, *a, tap=None, rng=None, dup=0.0, hold_ms=0, clock=None, **kw):
        super().__init__(*a, **kw)
        self.tap = tap
        self.rng = rng
        self.dup = dup
        self.hold_ms = hold_ms
        self.clock = clock  # world ms
        self.held = []  # (release world ms, topic, payload, qos, retain)

    def publish(self, topic, payload, qos=0, retain=False):
        if self.hold_ms and qos == 1 and self.connected and self.rng.random() < 0.3:
            data = bytes(payload)
            self.held.append((self.clock() + self.rng.randint(1, self.hold_ms), topic, data, qos, retain))
            self._tap(topic, data)
            return True  # the stall thinks it went out; a lost one is resent (no ack)
        r = MqttLink.publish(self, topic, payload, qos, retain)
        if r is not False:
            self._tap(topic, payload)
            if self.dup and self.rng.random() < self.dup:
                MqttLink.publish(self, topic, payload, qos, retain)
        return r

    def _tap(self, topic, payload):
        if self.tap is not None:
            self.tap(topic, bytes(payload))

    def flush(self, now):
        keep = []
        for h in self.held:
            if h[0] <= now:
                MqttLink.publish(self, h[1], h[2], h[3], h[4])  # False: lost, the stall resends
            else:
                keep.append(h)
        self.held = keep


class ReplayProxy:
    """A paho client that re-publishes stored station payloads (duplicates from the past)."""

    def __init__(self, port, rng, every_ms):
        self.rng = rng
        self.every_ms = every_ms
        self.stored = []
        self._seen = set()
        self.lock = threading.Lock()
        self.next = None
        self.replayed = 0
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="chaos-replayer-%d" % os.getpid(), protocol=mqtt.MQTTv311)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(1, 2)
        c.connect_async("127.0.0.1", port)
        c.loop_start()

    def _on_connect(self, client, userdata, flags, rc, props):
        client.subscribe([(wire.topic_filter(leaf), 1) for leaf in ("state", "event", "session")])

    def _on_message(self, client, userdata, m):
        with self.lock:
            if m.payload not in self._seen:
                self._seen.add(m.payload)
                self.stored.append((m.topic, m.payload))

    def tick(self, now):
        if self.next is None:
            self.next = now + self.rng.randint(1, 2 * self.every_ms)
        if now < self.next:
            return
        self.next = now + self.rng.randint(1, 2 * self.every_ms)
        with self.lock:
            if not self.stored:
                return
            topic, payload = self.stored[self.rng.randrange(len(self.stored))]
        self.client.publish(topic, payload, qos=1)
        self.replayed += 1

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class BridgeProc:
    """`overstay bridge` as a process; each start logs to its own file."""

    def __init__(self, workdir, broker_url, db_url, batch_max):
        self.workdir = workdir
        self.args = [sys.executable, "-m", "host_tools.cli", "bridge", "--broker", broker_url, "--db", db_url,
                     "--log-json", "--gap-scan", "1", "--batch-max", str(batch_max)]
        self.proc = None
        self.starts = 0
        self.logs = []

    def start(self, fault=None):
        self.starts += 1
        path = os.path.join(self.workdir, "bridge-%d%s.log" % (self.starts, "-" + fault if fault else ""))
        self.logs.append(path)
        env = dict(os.environ)
        env["PYTHONPATH"] = _REPO + os.pathsep + env.get("PYTHONPATH", "")
        env.pop("OVERSTAY_FAULT", None)
        if fault:
            env["OVERSTAY_FAULT"] = fault
        with open(path, "ab") as f:
            self.proc = subprocess.Popen(self.args, stdout=f, stderr=f, env=env, cwd=_REPO, start_new_session=True)

    def log(self):
        try:
            with open(self.logs[-1], "r", errors="replace") as f:
                return f.read()
        except (OSError, IndexError):
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    async def wait_for(self, needle, count=1, timeout=30.0):
        """Until the current log holds `needle` count times, or the process exits; True if it did."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while loop.time() < end:
            if self.log().count(needle) >= count:
                return True
            if not self.alive():
                return False
            await asyncio.sleep(0.02)
        return False

    def kill(self):
        if self.alive():
            # The whole group: the paho process and its ingest worker.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
            self.proc.wait(10)

    def terminate(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class RealNet:
    mode = "broker"

    def __init__(self, workdir, db_url, knobs):
        self.workdir = workdir
        self.knobs = knobs
        self.rng = random.Random(knobs["net_seed"])
        self.broker = Mosquitto(os.path.join(workdir, "mosquitto"), persistence=False)
        self.port = self.broker.port
        self.bridge = BridgeProc(workdir, self.broker.url, db_url, knobs["batch_max"])
        self.world = None
        self.links = {}  # station -> the running App's ChaosLink
        self.cut_off = set()
        self.phase = "ok"  # bridge: ok | down (killed, restart at up_at) | fault (running with after_commit_exit)
        self.up_at = None
        self.proxy = None
        self.problems = []
        self.counts = {}
        self._dead = None

    def _dead_port(self):
        if self._dead is None:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
            self._dead = s
        return self._dead.getsockname()[1]

    async def start(self, world):
        self.world = world
        self.broker.start()
        self.bridge.start()
        if not await self.bridge.wait_for('"event":"subscribed"'):
            raise RuntimeError("the bridge did not subscribe: " + self.bridge.log()[-2000:])
        if self.knobs["replay_s"]:
            self.proxy = ReplayProxy(self.port, random.Random(self.knobs["net_seed"] + 2), self.knobs["replay_s"] * 1000)

    def make_link(self, st, tap):
        site = self.world.sc.site
        topics = {leaf: wire.station_topic(site, st.station, leaf) for leaf in ("avail", "ack", "cmd")}
        down = st.station in self.cut_off
        link = ChaosLink(
            "127.0.0.1", self._dead_port() if down else self.port, st.station,
            keepalive_s=30, backoff_max_ms=1000, poll_ms=50, clean_session=False,
            will=(topics["avail"], wire.AVAIL_OFFLINE, 1, True),
            subscriptions=[(topics["ack"], 1), (topics["cmd"], 1), (wire.site_topic(site, "occupancy"), 1), (wire.site_topic(site, "tariff"), 1)],
            tap=tap, rng=random.Random(self.rng.random()), dup=self.knobs["dup"], hold_ms=self.knobs["reorder_ms"],
            clock=lambda: self.world.ticks.ms,
        )
        self.links[st.station] = link
        return link

    def partition(self, st, on):
        link = self.links.get(st.station)
        if on:
            self.cut_off.add(st.station)
            if link is not None:
                link.port = self._dead_port()
                link.drop("network cut off (chaos)")
        else:
            self.cut_off.discard(st.station)
            if link is not None:
                link.port = self.port

    async def broker_down(self, now):
        self.broker.kill()
        self.counts["broker_kills"] = self.counts.get("broker_kills", 0) + 1

    async def broker_up(self, now):
        subscribed = self.bridge.log().count('"event":"subscribed"')
        self.broker.restart(clean=True)
        if self.phase == "ok" and not await self.bridge.wait_for('"event":"subscribed"', subscribed + 1, timeout=60):
            self.problems.append("bridge did not subscribe again after the broker restart")

    async def bridge_crash(self, now, down_ms):
        if self.phase != "ok":
            return
        self.bridge.kill()
        self.phase = "down"
        self.up_at = now + down_ms
        self.counts["bridge_kills"] = self.counts.get("bridge_kills", 0) + 1

    def step_ms(self, busy):
        return 5000

    def busy(self):
        return self.phase == "down" or any(link.held for link in self.links.values())

    async def step(self, now):
        for link in self.links.values():
            if link.held:
                link.flush(now)
        if self.phase == "down" and now >= self.up_at:
            self.bridge.start("after_commit_exit")
            self.phase = "fault"
            if self.broker.proc is not None:
                await self.bridge.wait_for('"event":"connected"')
        if self.phase == "fault" and not self.bridge.alive():
            code = self.bridge.proc.returncode
            if code != -signal.SIGKILL:
                self.problems.append("bridge with after_commit_exit ended with %s, not SIGKILL" % code)
            self.counts["commit_ack_kills"] = self.counts.get("commit_ack_kills", 0) + 1
            self.bridge.start()
            self.phase = "ok"
            if self.broker.proc is not None and not await self.bridge.wait_for('"event":"connected"'):
                self.problems.append("restarted bridge did not connect: " + self.bridge.log()[-1000:])
        if self.phase == "ok" and not self.bridge.alive():
            self.problems.append("bridge exited: " + self.bridge.log()[-1000:])
            self.bridge.start()
            await self.bridge.wait_for('"event":"connected"')
        if self.proxy is not None:
            self.proxy.tick(now)
        # A stall holding records needs real time: to send them when connected,
        # and to reconnect when not (its link backs off on the real clock), unless
        # it is cut off and the partition's end is a scheduled step anyway.
        st_busy = any(st.core is not None and len(st.core.outbox) and (st.app.link.connected or st.station not in self.cut_off)
                      for st in self.world.stalls)
        await asyncio.sleep(PAUSE_S if st_busy or self.busy() else 0)

    async def close(self):
        if self.proxy is not None:
            self.counts["replayed"] = self.proxy.replayed
            self.proxy.close()
        self.bridge.terminate()
        self.bridge.kill()
        self.broker.kill()
        if self._dead is not None:
            self._dead.close()
        for path in self.bridge.logs:
            try:
                with open(path, "r", errors="replace") as f:
                    text = f.read()
            except OSError:
                continue
            if "Traceback" in text:
                self.problems.append("%s: Traceback: %s" % (os.path.basename(path), text[text.index("Traceback"):][:1500]))
        self.counts["bridge_starts"] = self.bridge.starts
