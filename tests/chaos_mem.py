# Chaos suite, in-memory transport: each stall App's link joined to the bridge's Ingestor through a simulated broker (h11 ConnectionPair style).
#
# MemLink is what stall.uplink expects of a link (connected, publish, the
# four callbacks, start/stop/drop). MemNet plays the broker with the
# sessions the real deployment uses: the bridge's persistent session queues
# what the stalls publish (QoS 1) while the bridge is away; each stall's
# persistent session queues its acks while it is offline; a message being
# handled when the power dies is not PUBACKed, so it comes again. MemBridge
# is the bridge's own pipeline without paho: host_tools.bridge.ingest.Ingestor
# on SQLite (verify, classify, one transaction per batch), then the signed
# station acks (host_tools.bridge.fastwire.encode_ack), then the gap scanner
# that keeps the low-water mark (host_tools.bridge.gaps). Its clock is the
# world's, so received_at and the gap scanner live in simulated time.
#
# In-process equivalents of the faults:
#   broker killed, no persistence   every queue, session and retained message
#                                   is gone; every link drops; stalls
#                                   reconnect when it is back, the bridge
#                                   `bridge_reconnect_s` later (until then
#                                   nobody is subscribed: what stalls publish
#                                   is dropped, except that a retained state
#                                   is kept and goes to the new subscription first)
#   bridge killed between commit    the next batch with station acks commits,
#     and ack                       then nothing of it is acked: the broker
#                                   redelivers the un-PUBACKed messages when
#                                   the bridge is back; a fresh Ingestor (new
#                                   connection, empty caches) takes them
#   duplicates, reordering          each publish may be queued twice, each
#                                   with a random extra delay; a proxy
#                                   re-publishes random payloads it stored
#   network cut-off                 the stall's link drops and cannot connect
import collections
import heapq
import random

from host_tools.bridge import db as dbmod
from host_tools.bridge import fastwire, gaps, ingest
from host_tools.bridge.worker import MAX_ACKS_PER_MESSAGE, AckCounter
from protocol import wire
from tests.chaos_world import PowerCut


class Msg:
    __slots__ = ("topic", "payload")

    def __init__(self, topic, payload):
        self.topic = topic
        self.payload = payload


class MemLink:
    """One stall's connection to MemNet."""

    def __init__(self, net, st, tap):
        self.net = net
        self.st = st
        self.tap = tap
        self.connected = False
        self.started = False
        self.on_connect = self.on_disconnect = self.on_message = self.on_puback = None
        self.connects = 0
        self.reconnects = 0
        self.last_error = None

    def start(self):
        self.started = True
        self.net.links[self.st.station] = self

    def stop(self, disconnect=True):
        self.started = False
        self.connected = False
        if self.net.links.get(self.st.station) is self:
            del self.net.links[self.st.station]

    def drop(self, reason="dropped"):
        if self.connected:
            self.connected = False
            self.last_error = reason
            if self.on_disconnect is not None:
                self.on_disconnect(reason)

    def up(self, session_present):
        self.connected = True
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        if self.on_connect is not None:
            self.on_connect(session_present)

    def publish(self, topic, payload, qos=0, retain=False):
        if not self.connected:
            return False
        data = bytes(payload)
        self.tap(topic, data)
        self.net.from_stall(topic, data, retain)
        return True

    def can_publish(self, qos=1):
        return self.connected

    def status(self):
        return {"connected": self.connected, "last_error": self.last_error, "connects": self.connects, "reconnects": self.reconnects}


class MemNet:
    mode = "mem"
    SETTLE_EXTRA_S = 30  # the bridge's --gap-settle in simulated seconds, above the largest reorder delay

    def __init__(self, db_url, knobs):
        self.db_url = db_url
        self.knobs = knobs
        self.rng = random.Random(knobs["net_seed"])
        self.world = None
        self.links = {}  # station -> MemLink of the running App
        self.cut_off = set()  # stations without network
        self.broker_alive = True
        self.sessions_lost = False  # the broker restarted empty since the stall last connected
        self.bridge_subscribed = True
        self.bridge_back_at = None  # world ms the bridge reconnects after a broker restart
        self.to_bridge = []  # heap (due world ms, seq, topic, payload): the bridge's session queue
        self.to_stall = collections.defaultdict(collections.deque)  # station -> (topic, payload)
        self.stored = []  # what the replay proxy saw
        self.retained = {}  # topic -> payload (the stalls' states)
        self.next_replay = None
        self._seq = 0
        self.bridge = None
        self.counts = collections.Counter()

    # -- the world's interface ---------------------------------------------------

    async def start(self, world):
        self.world = world
        self.bridge = MemBridge(self, self.db_url, self.knobs, lambda: world.sc.start + world.ticks.ms // 1000)
        if self.knobs["replay_s"]:
            self.next_replay = self.rng.randint(1, 2 * self.knobs["replay_s"]) * 1000

    def make_link(self, st, tap):
        return MemLink(self, st, tap)

    def partition(self, st, on):
        if on:
            self.cut_off.add(st.station)
            link = self.links.get(st.station)
            if link is not None:
                link.drop("network cut off")
        else:
            self.cut_off.discard(st.station)

    async def broker_down(self, now):
        self.broker_alive = False
        for link in list(self.links.values()):
            link.drop("broker gone")
        self.counts["lost_to_bridge"] += len(self.to_bridge)
        self.to_bridge = []
        self.to_stall.clear()
        self.retained.clear()
        self.bridge_subscribed = False
        self.bridge_back_at = None

    async def broker_up(self, now):
        self.broker_alive = True
        self.bridge_back_at = now + self.knobs["bridge_reconnect_s"] * 1000

    async def bridge_crash(self, now, down_ms):
        self.bridge.crash_next = down_ms

    def step_ms(self, busy):
        # 1 s while messages can move (the bridge can take them, a connected stall has acks waiting).
        b = self.bridge
        moving = self.to_bridge and b.up and self.bridge_subscribed and self.broker_alive
        if moving or any(q and st in self.links and self.links[st].connected for st, q in self.to_stall.items()):
            return 1000
        return 5000

    def busy(self):
        b = self.bridge
        # An armed crash that no batch with acks comes to trigger is not work left.
        return bool(self.to_bridge) or not b.up or not self.bridge_subscribed or any(self.to_stall.values())

    async def close(self):
        if self.bridge is not None:
            self.bridge.close()

    # -- the broker ------------------------------------------------------------------

    def from_stall(self, topic, payload, retain=False):
        if topic.rsplit("/", 1)[1] not in ingest.STATION_LEAVES:
            return  # avail: the bridge subscribes to state, event and session only
        if retain:
            self.retained[topic] = payload  # a new subscriber gets it first
        now = self.world.ticks.ms
        if self.knobs["replay_s"]:
            self.stored.append((topic, payload))
        if not self.bridge_subscribed:
            self.counts["dropped_unsubscribed"] += 1
            return  # nobody subscribed: the broker drops it
        self._enqueue(now, topic, payload)
        if self.knobs["dup"] and self.rng.random() < self.knobs["dup"]:
            self.counts["duplicated"] += 1
            self._enqueue(now, topic, payload)

    def _enqueue(self, now, topic, payload):
        r = self.knobs["reorder_ms"]
        self._seq += 1
        heapq.heappush(self.to_bridge, (now + (self.rng.randint(0, r) if r else 0), self._seq, topic, payload))

    def requeue(self, items):
        for it in items:
            heapq.heappush(self.to_bridge, it)

    def to_station(self, station, topic, payload):
        if self.broker_alive:
            self.to_stall[station].append((topic, payload))

    async def step(self, now):
        if not self.broker_alive:
            return
        if self.bridge_back_at is not None and now >= self.bridge_back_at:
            self.bridge_back_at = None
            self.bridge_subscribed = True  # a new subscription: the retained messages come first
            for topic in sorted(self.retained):
                self._enqueue(now, topic, self.retained[topic])
        for station, link in list(self.links.items()):
            if link.started and not link.connected and station not in self.cut_off:
                link.up(True)
        if self.next_replay is not None and now >= self.next_replay:
            self.next_replay = now + self.rng.randint(1, 2 * self.knobs["replay_s"]) * 1000
            if self.stored and self.bridge_subscribed:
                topic, payload = self.stored[self.rng.randrange(len(self.stored))]
                self.counts["replayed"] += 1
                self._enqueue(now, topic, payload)
        self.bridge.step(now)
        for station, q in self.to_stall.items():
            link = self.links.get(station)
            while q and link is not None and link.connected:
                topic, payload = q[0]
                try:
                    link.on_message(Msg(topic, payload))
                except PowerCut:
                    link.st.died_w = now
                    link.st.app.kill()
                    break  # not PUBACKed: the broker sends it again
                q.popleft()


class MemBridge:
    """The bridge's ingest pipeline on SQLite, without paho (see the module comment)."""

    def __init__(self, net, db_url, knobs, clock):
        self.net = net
        self.db_url = db_url
        self.clock = clock
        self.rng = random.Random(knobs["net_seed"] + 1)
        self.batch_max = knobs["batch_max"]
        self.settle_s = knobs["reorder_ms"] // 1000 + net.SETTLE_EXTRA_S
        self.acks = AckCounter(0)
        self.up = True
        self.restart_at = None
        self.crash_next = None  # down ms: the next batch with acks commits, then the bridge dies
        self.crashes = 0
        self.batches = 0
        self.next_scan = 0
        self.db = None
        self.ingestor = None
        self._open()

    def _open(self):
        self.db = dbmod.connect(self.db_url)
        self.ingestor = ingest.Ingestor(self.db, ingest.Config(key_cache_s=3600), clock=self.clock)

    def close(self):
        if self.db is not None:
            self.db.close()
            self.db = None

    def step(self, now):
        net = self.net
        if not self.up:
            if now < self.restart_at:
                return
            self.up = True
            self._open()
        if not (net.broker_alive and net.bridge_subscribed):
            return
        due = []
        q = net.to_bridge
        while q and q[0][0] <= now:
            due.append(heapq.heappop(q))
        i = 0
        while i < len(due):
            k = self.rng.randint(1, self.batch_max)
            part = due[i : i + k]
            res = self.ingestor.process([ingest.Inbound(t, p, 0, 1, False, 0.0) for _d, _s, t, p in part])
            self.batches += 1
            if self.crash_next is not None and res.acks:
                # Committed; killed before any PUBACK or station ack. The broker
                # redelivers everything it had handed over and not had acked.
                net.requeue(due[i:])
                self.up = False
                self.restart_at = now + self.crash_next
                self.crash_next = None
                self.crashes += 1
                net.counts["commit_ack_kills"] += 1
                self.close()
                net.world.note("bridge killed between commit and ack (%d messages committed, none acked)" % len(part))
                return
            t = self.clock()
            for station, (site, key, ns) in res.acks.items():
                topic = wire.station_topic(site, station, "ack")
                for j in range(0, len(ns), MAX_ACKS_PER_MESSAGE):
                    net.to_station(station, topic, fastwire.encode_ack(key, station, self.acks.next(), t, ns[j : j + MAX_ACKS_PER_MESSAGE]))
            i += k
        if due and now >= self.next_scan:
            self.next_scan = now + 30000  # the gap scanner, after new messages (a real bridge: every 5 s)
            gaps.scan(self.db, now=self.clock(), settle_s=self.settle_s)
