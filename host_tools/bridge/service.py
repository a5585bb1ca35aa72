# The bridge process: paho-mqtt network thread, one writer thread (batch, commit, ack), one housekeeping thread.
#
# Threads and hand-offs
# ---------------------
#   paho network thread   on_message only appends (topic, payload, mid) to a
#                         deque: no parsing, no database.
#   writer thread         takes up to batch_max messages (waiting at most
#                         batch_ms for more once one is there), runs
#                         Ingestor.process (verify, one transaction), then,
#                         after the commit: client.ack(mid) for every
#                         message and one signed ack per station. A failed
#                         commit acks nothing and retries the same batch.
#   housekeeping thread   occupancy (on change and every interval), gap
#                         scan and alerts. On PostgreSQL only the process
#                         holding an advisory lock does it (leader).
#
# Everything this process publishes at QoS 1 goes through a window of at
# most ack_window unconfirmed messages: paho's message ids wrap at 65,535,
# and an unbounded paho queue would hide a broker that stopped answering.
import collections
import os
import signal
import threading
import time

from host_tools.bridge import db as dbmod
from host_tools.bridge import fastwire, gaps, ingest, mqttconn, occupancy
from host_tools.bridge.logs import Log
from host_tools.bridge.metrics import Metrics
from protocol import wire

_LEADER_LOCK = 0x6F766C64  # "ovld": pg_try_advisory_lock key of the housekeeping leader
MAX_ACKS_PER_MESSAGE = 500  # keeps an ack far below wire.MAX_SIZE


class Settings:
    """Everything `overstay bridge` takes; defaults suit production."""

    def __init__(self, broker, db_url, **kw):
        self.broker = broker  # mqttconn.BrokerOptions
        self.db_url = db_url
        self.client_id = kw.get("client_id") or "overstay-bridge-%d" % kw.get("instance", 0)
        self.instance = kw.get("instance", 0)  # 0..999, part of this process's ack n
        self.share = kw.get("share")  # shared subscription group, or None
        self.sites = kw.get("sites")  # restrict subscriptions to these sites, or None for all
        self.batch_max = kw.get("batch_max", 500)
        self.batch_ms = kw.get("batch_ms", 5.0)
        self.ack_window = kw.get("ack_window", 1000)
        self.key_cache_s = kw.get("key_cache_s", 5.0)
        self.occupancy_interval_s = kw.get("occupancy_interval_s", 60.0)
        self.occupancy_check_s = kw.get("occupancy_check_s", 1.0)
        self.occupancy_tolerance_s = kw.get("occupancy_tolerance_s", 30)
        self.gap_scan_s = kw.get("gap_scan_s", 5.0)
        self.gap_alert_s = kw.get("gap_alert_s", 300)
        self.gap_expire_s = kw.get("gap_expire_s", 7 * 86400)
        self.gap_settle_s = kw.get("gap_settle_s", 2)
        self.drain_s = kw.get("drain_s", 5.0)
        self.keepalive = kw.get("keepalive", 30)
        self.fault = kw.get("fault", os.environ.get("OVERSTAY_FAULT", ""))


class AckCounter:
    """n for the bridge's acks: Unix ms * 1000 + instance, strictly increasing in this process."""

    def __init__(self, instance):
        if not 0 <= instance <= 999:
            raise ValueError("instance must be 0..999")
        self.instance = instance
        self.last = 0

    def next(self):
        n = int(time.time() * 1000) * 1000 + self.instance
        if n <= self.last:
            n = self.last + 1
        self.last = n
        return n


class Window:
    """At most `size` QoS 1 publishes awaiting their PUBACK."""

    def __init__(self, size, metrics=None):
        self.size = size
        self.cond = threading.Condition()
        self.pending = {}  # mid -> (monotonic commit time or None)
        self.early = set()  # PUBACKs that arrived before publish() returned the mid
        self.metrics = metrics

    def acquire(self, stop, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            while len(self.pending) >= self.size:
                if stop.is_set() and deadline is None:
                    deadline = time.monotonic() + 2.0
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def track(self, mid, t0):
        with self.cond:
            if mid in self.early:
                self.early.discard(mid)
                self._done(t0)
                return
            self.pending[mid] = t0
            self._gauge()

    def done(self, mid):
        with self.cond:
            if mid in self.pending:
                self._done(self.pending.pop(mid))
            else:
                self.early.add(mid)
                if len(self.early) > 100000:
                    self.early.clear()
            self.cond.notify_all()
            self._gauge()

    def _done(self, t0):
        if t0 is not None and self.metrics is not None:
            self.metrics.commit_to_ack.observe(time.monotonic() - t0)

    def _gauge(self):
        if self.metrics is not None:
            self.metrics.inflight.set(len(self.pending))

    def wait_empty(self, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.pending and time.monotonic() < deadline:
                self.cond.wait(0.05)
            return not self.pending


class Bridge:
    def __init__(self, settings, log=None, metrics=None):
        self.s = settings
        self.log = log or Log()
        self.metrics = metrics or Metrics()
        self.stop_event = threading.Event()
        self.stopped = threading.Event()
        self.queue = collections.deque()
        self.wake = threading.Event()
        self.window = Window(settings.ack_window, self.metrics)
        self.acks = AckCounter(settings.instance)
        self.dirty_sites = set()
        self.hk_wake = threading.Event()
        self.client = None
        self.db = None
        self.ingestor = None
        self._threads = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.batches = 0
        self.error = None
        self._shutting_down = False

    # -- MQTT callbacks (paho's network thread: enqueue only) ---------------

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.log.error("broker_refused", broker=self.s.broker.url, reason=str(reason_code))
            return
        self.connected.set()
        self.metrics.connected.set(1)
        present = bool(getattr(flags, "session_present", False))
        self.log.info("connected", broker=self.s.broker.url, client_id=self.s.client_id, session_present=present)
        if present:
            # The broker kept our subscriptions (and queued messages): a new
            # SUBSCRIBE would only resend every retained state.
            self.subscribed.set()
            return
        topics = []
        for leaf in ingest.STATION_LEAVES:
            for site in self.s.sites or [None]:
                f = wire.topic_filter(leaf, site)
                if self.s.share:
                    f = "$share/" + self.s.share + "/" + f
                topics.append((f, wire.QOS))
        client.subscribe(topics)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            self.log.error("subscribe_refused", reasons=",".join(bad))
        else:
            self.log.info("subscribed", share=self.s.share or "")
            self.subscribed.set()

    def _on_connect_fail(self, client, userdata):
        self.log.warning("connect_failed", broker=self.s.broker.url)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        self.metrics.connected.set(0)
        if not self.stop_event.is_set():
            self.log.warning("disconnected", reason=str(reason_code))

    def _on_message(self, client, userdata, message):
        if self.stop_event.is_set():
            return  # not acked: the broker redelivers it to the next session
        self.queue.append(ingest.Inbound(message.topic, message.payload, message.mid, message.qos, message.retain, time.monotonic()))
        self.wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        self.window.done(mid)

    # -- publishing ---------------------------------------------------------

    def publish(self, topic, payload, retain=False, t0=None):
        """QoS 1 publish through the window. False if the window stayed full until shutdown."""
        if not self.window.acquire(self.stop_event):
            self.log.warning("publish_dropped", topic=topic, reason="window full at shutdown")
            return False
        info = self.client.publish(topic, payload, qos=wire.QOS, retain=retain)
        self.window.track(info.mid, t0)
        return True

    # -- lifecycle ----------------------------------------------------------

    def start(self):
        """Open the database (migrating it), connect, start the threads."""
        s = self.s
        self.db = dbmod.open_db(s.db_url)
        cfg = ingest.Config(key_cache_s=s.key_cache_s, occupancy_tolerance_s=s.occupancy_tolerance_s)
        self.ingestor = ingest.Ingestor(self.db, cfg)
        c = self.client = mqttconn.make_client(s.broker, s.client_id, clean_session=False, manual_ack=True)
        c.max_inflight_messages_set(min(1000, max(20, s.ack_window)))
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        self.log.info(
            "starting", db=dbmod.redact(s.db_url), dialect=self.db.dialect, broker=s.broker.url, client_id=s.client_id,
            share=s.share or "", instance=s.instance, pid=os.getpid(),
        )
        try:
            c.connect_async(s.broker.host, s.broker.port, keepalive=s.keepalive)
        except (OSError, ValueError) as e:
            raise dbmod.DatabaseError("cannot connect to the broker: %s" % e) from None
        c.loop_start()
        for target, name in ((self._writer, "writer"), (self._housekeeping, "housekeeping")):
            t = threading.Thread(target=target, name="bridge-" + name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def request_stop(self):
        self.stop_event.set()
        self.wake.set()
        self.hk_wake.set()

    def wait(self, timeout=None):
        return self.stopped.wait(timeout)

    def run(self):
        """start(), block until request_stop(), shut down. Returns 0."""
        self.start()
        try:
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.shutdown()
        return 0 if self.error is None else 1

    def shutdown(self):
        if self.stopped.is_set() or self._shutting_down:
            return
        self._shutting_down = True
        self.request_stop()
        for t in self._threads:
            t.join(self.s.drain_s + 5)
        if self.client is not None:
            self.window.wait_empty(2.0)
            self.client.disconnect()
            self.client.loop_stop()
        if self.db is not None:
            self.db.close()
        self.log.info("stopped", batches=self.batches, abandoned=len(self.queue))
        self.stopped.set()

    # -- writer thread ------------------------------------------------------

    def _take(self):
        q = self.queue
        batch = []
        while not q:
            if self.stop_event.is_set():
                return batch
            self.wake.wait(0.2)
            self.wake.clear()
        deadline = time.monotonic() + self.s.batch_ms / 1000.0
        limit = self.s.batch_max
        while len(batch) < limit:
            try:
                batch.append(q.popleft())
            except IndexError:
                left = deadline - time.monotonic()
                if left <= 0 or self.stop_event.is_set():
                    break
                self.wake.clear()
                if not q:
                    self.wake.wait(min(left, 0.002))
        return batch

    def _writer(self):
        drain_deadline = None
        try:
            while True:
                if self.stop_event.is_set():
                    if drain_deadline is None:
                        drain_deadline = time.monotonic() + self.s.drain_s
                    if not self.queue or time.monotonic() > drain_deadline:
                        break
                batch = self._take()
                if not batch:
                    continue
                self.metrics.queue_depth.set(len(self.queue))
                self._handle(batch)
        except Exception as e:  # a bug: stop the process rather than ack what was not stored
            self.error = e
            self.log.error("writer_crashed", error=repr(e))
            self.request_stop()

    def _handle(self, batch):
        delay = 0.05
        while True:
            t0 = time.monotonic()
            try:
                res = self.ingestor.process(batch)
                break
            except self.db.errors as e:
                self.metrics.db_errors.inc()
                if self.db.is_permanent(e):
                    # The database refuses the data (a value out of range...):
                    # retrying cannot help; find the message and set it aside.
                    self.log.error("commit_refused", error=" ".join(str(e).split())[:300], batch=len(batch))
                    if len(batch) == 1:
                        res = self._store_internal_reject(batch[0], e, "db_refused")
                        break
                    half = len(batch) // 2
                    self._handle(batch[:half])
                    self._handle(batch[half:])
                    return
                self.log.error("commit_failed", error=" ".join(str(e).split())[:300], batch=len(batch), retry_in_s=round(delay, 2))
                if self.stop_event.is_set() and time.monotonic() > t0 + 1:
                    return  # abandon: nothing acked, the broker redelivers
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._reconnect_db()
            except Exception as e:  # noqa: BLE001 - isolate a poison message instead of looping on it
                if len(batch) == 1:
                    self.log.error("internal_error", topic=batch[0].topic, error=repr(e))
                    res = self._store_internal_reject(batch[0], e, "internal")
                    break
                mid = len(batch) // 2
                self._handle(batch[:mid])
                self._handle(batch[mid:])
                return
        t_commit = time.monotonic()
        self.batches += 1
        if self.s.fault == "after_commit_exit" and res.acks:
            os.kill(os.getpid(), signal.SIGKILL)
        self._after_commit(batch, res, t0, t_commit)

    def _reconnect_db(self):
        try:
            self.db.close()
            self.db = dbmod.connect(self.s.db_url)
            self.ingestor.db = self.db
        except Exception as e:  # noqa: BLE001 - keep retrying until the database is back
            self.log.error("db_reconnect_failed", error=" ".join(str(e).split())[:300])

    def _store_internal_reject(self, m, err, reason):
        rej = self.ingestor._reject(m, wire.parse_topic(m.topic), reason, " ".join(repr(err).split()), None, int(time.time()))
        with self.db.tx():
            self.db.execute(
                "INSERT INTO rejects (received_at, topic, site, station, sender, n, kind, reason, authentic, detail, size, raw)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rej[:9] + rej[10:],
            )
        res = ingest.Result()
        res.mids.append((m.mid, m.qos))
        res.rejects[reason] = 1
        return res

    def _after_commit(self, batch, res, t0, t_commit):
        c = self.client
        for mid, qos in res.mids:
            if qos > 0:
                c.ack(mid, qos)
        now = int(time.time())
        for station, (site, key, ns) in res.acks.items():
            topic = wire.station_topic(site, station, "ack")
            for i in range(0, len(ns), MAX_ACKS_PER_MESSAGE):
                payload = fastwire.encode_ack(key, station, self.acks.next(), now, ns[i : i + MAX_ACKS_PER_MESSAGE])
                if self.publish(topic, payload, False, t_commit):
                    self.metrics.acks_sent.inc()
        m = self.metrics
        total = 0
        for kind, k in res.stored.items():
            m.messages.labels(kind, "stored").inc(k)
            total += k
        for kind, k in res.duplicates.items():
            m.messages.labels(kind, "duplicate").inc(k)
        for reason, k in res.rejects.items():
            m.rejects.labels(reason).inc(k)
        if res.quarantined:
            m.quarantined.inc(res.quarantined)
        for station, session_id, verified, reason in res.fee_checks:
            m.fee_checks.labels({1: "match", 0: "mismatch"}.get(verified, "unverified")).inc()
            if verified != 1 and reason:
                for r in reason.split(","):
                    m.fee_mismatches.labels(r.split(":")[0]).inc()
            if verified == 0:
                self.log.warning("fee_mismatch", station=station, session_id=session_id, reason=reason)
            elif verified is None:
                self.log.warning("fee_unverified", station=station, session_id=session_id, reason=reason)
        wall = time.time()
        for station in res.seen:
            m.last_seen.labels(station).set(wall)
        m.count_committed(total + sum(res.duplicates.values()))
        m.batch_size.observe(len(batch))
        m.commit_seconds.observe(t_commit - t0)
        if res.t_first:
            m.receive_to_commit.observe(t_commit - res.t_first)
        for level, event, fields in res.events:
            self.log.log(level, event, **fields)
        if res.rejects:
            self.log.warning("rejected", **{"count_" + k: v for k, v in sorted(res.rejects.items())})
            for station, reason, detail in res.reject_details:
                self.log.debug("reject", station=station, reason=reason, detail=detail)
        self.log.debug("batch", size=len(batch), stored=total, commit_ms=round((t_commit - t0) * 1000, 2))
        if res.states_changed:
            self.dirty_sites |= res.states_changed
            self.hk_wake.set()

    # -- housekeeping thread ------------------------------------------------

    def _housekeeping(self):
        s = self.s
        hdb = None
        leader = False
        pub = None
        next_occ = 0.0
        next_gap = 0.0
        while not self.stop_event.is_set():
            try:
                if hdb is None:
                    hdb = dbmod.connect(s.db_url)
                    pub = occupancy.Publisher(hdb, self._publish_site, s.occupancy_interval_s, log=self.log, metrics=self.metrics)
                    leader = False
                if not leader:
                    leader = self._try_lead(hdb)
                    if leader:
                        self.log.info("housekeeping_leader", instance=s.instance)
                now = time.monotonic()
                if leader and (now >= next_occ or self.dirty_sites):
                    self.dirty_sites = set()
                    if self.connected.is_set():
                        pub.tick(now)
                    next_occ = now + s.occupancy_check_s
                if now >= next_gap:
                    if leader:
                        r = gaps.scan(hdb, alert_s=s.gap_alert_s, expire_s=s.gap_expire_s, settle_s=s.gap_settle_s)
                        self._report_gaps(r)
                    else:
                        with hdb.tx():
                            self.metrics.open_gaps.set(hdb.one("SELECT COUNT(*) FROM seq_gaps WHERE closed_at IS NULL")[0])
                    next_gap = now + s.gap_scan_s
            except Exception as e:  # noqa: BLE001 - housekeeping must survive a database hiccup
                self.log.error("housekeeping_failed", error=" ".join(str(e).split())[:300])
                if hdb is not None:
                    hdb.close()
                hdb = None
                self.stop_event.wait(1.0)
                continue
            wait = min(next_occ, next_gap) - time.monotonic()
            self.hk_wake.wait(max(0.01, min(wait, 1.0)))
            self.hk_wake.clear()
        if hdb is not None:
            hdb.close()

    def _try_lead(self, hdb):
        if not hdb.is_pg:
            return True
        row = hdb.one("SELECT pg_try_advisory_lock(?)", (_LEADER_LOCK,))
        hdb.conn.commit()
        return bool(row[0])

    def _publish_site(self, topic, payload, retain):
        self.publish(topic, payload, retain)

    def _report_gaps(self, r):
        self.metrics.open_gaps.set(r.open_count)
        for st, a, b in r.opened:
            self.log.info("gap_opened", station=st, start_n=a, end_n=b)
        for st, a, b in r.filled:
            self.log.info("gap_filled", station=st, start_n=a, end_n=b)
        for st, a, b, age in r.alerts:
            self.metrics.gap_alerts.inc()
            self.log.error("gap_alert", station=st, start_n=a, end_n=b, age_s=age)
        for st, a, b in r.expired:
            self.log.warning("gap_expired", station=st, start_n=a, end_n=b)
