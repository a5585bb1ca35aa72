# The bridge process: paho-mqtt network thread, feeder and acker threads, housekeeping; verification and the database in a worker process.
#
# Processes, threads and hand-offs
# --------------------------------
#   paho network thread   on_message only appends (topic, payload, mid, qos,
#                         receipt time) to a deque: no parsing, no database.
#   feeder thread         moves what arrived to the worker process over a
#                         pipe, in arrival order, and keeps (mid, qos) of
#                         each message in the same order.
#   worker process        worker.py: batches, Ingestor.process (verify, one
#                         transaction), commit, signs the station acks, and
#                         reports `done` (messages handled so far) with the
#                         acks to publish.
#   acker thread          after each report: client.ack(mid) for every
#                         message up to `done` (all committed), then publishes
#                         the station acks; metrics and logs from the report.
#   housekeeping thread   occupancy (on change and every interval), gap
#                         scan and alerts. On PostgreSQL only the process
#                         holding an advisory lock does it (leader).
#
# Two processes because one Python process runs one thread at a time (the
# GIL): receiving and verifying would take turns on one core.
#
# Everything this process publishes at QoS 1 goes through a window of at
# most ack_window unconfirmed messages: paho's message ids wrap at 65,535,
# and an unbounded paho queue would hide a broker that stopped answering.
import collections
import multiprocessing
import os
import sys
import threading
import time

from host_tools.bridge import db as dbmod
from host_tools.bridge import gaps, ingest, mqttconn, occupancy, worker
from host_tools.bridge.logs import Log
from host_tools.bridge.metrics import Metrics
from host_tools.bridge.worker import MAX_ACKS_PER_MESSAGE, AckCounter  # noqa: F401 - part of this module's API
from protocol import wire

_LEADER_LOCK = 0x6F766C64  # "ovld": pg_try_advisory_lock key of the housekeeping leader
_CHUNK_MAX = 1000  # messages per pipe write to the worker
_CHUNK_MIN = 200  # while the worker is busy, gather at least this many (or wait 2 ms) per write


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
        # A streaming station's acks (previous acked commit less than
        # ack_stream_s ago) are held up to ack_hold_s and merged (worker.py).
        self.ack_hold_s = kw.get("ack_hold_s", 1.0)
        self.ack_stream_s = kw.get("ack_stream_s", 0.5)
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
        AckCounter(settings.instance)  # raises ValueError for an instance outside 0..999
        self.s = settings
        self.log = log or Log()
        self.metrics = metrics or Metrics()
        self.stop_event = threading.Event()
        self.stopped = threading.Event()
        self.inbox = collections.deque()  # (topic, payload, mid, qos, t_recv) from paho
        self.unacked = collections.deque()  # (mid, qos) of what went to the worker, in order
        self.wake = threading.Event()
        self.window = Window(settings.ack_window, self.metrics)
        self.dirty_sites = set()
        self.hk_wake = threading.Event()
        self.client = None
        self.proc = None  # the worker process
        self._to_worker = None
        self._from_worker = None
        self._threads = []
        self._acker_thread = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.worker_ready = threading.Event()
        self.batches = 0
        self.error = None
        self._shutting_down = False
        self._abandoned = 0

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
        self.inbox.append((message.topic, message.payload, message.mid, message.qos, time.monotonic()))
        if not self.wake.is_set():
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
        """Migrate the database, start the worker, connect, start the threads."""
        s = self.s
        dbmod.open_db(s.db_url).close()  # migrate (and fail early on a bad URL) before anything runs
        self.log.info(
            "starting", db=dbmod.redact(s.db_url), dialect=_dialect(s.db_url),
            broker=s.broker.url, client_id=s.client_id, share=s.share or "", instance=s.instance, pid=os.getpid(),
        )
        self._start_worker()
        c = self.client = mqttconn.make_client(s.broker, s.client_id, clean_session=False, manual_ack=True)
        # The Window bounds what is in flight. paho's own limit must stay off:
        # with one set, every PUBACK makes paho walk all its outgoing messages
        # (Client._update_inflight), which cost the bridge a quarter of its
        # paho process with a full window.
        c.max_inflight_messages_set(0)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        try:
            c.connect_async(s.broker.host, s.broker.port, keepalive=s.keepalive)
        except (OSError, ValueError) as e:
            self._stop_worker(0)
            raise dbmod.DatabaseError("cannot connect to the broker: %s" % e) from None
        c.loop_start()
        for target, name in ((self._feeder, "feeder"), (self._acker, "acker"), (self._housekeeping, "housekeeping")):
            t = threading.Thread(target=target, name="bridge-" + name, daemon=True)
            t.start()
            self._threads.append(t)
            if name == "acker":
                self._acker_thread = t
        return self

    def _start_worker(self):
        # spawn, not fork: this process may already run threads (tests, the
        # metrics server), and a forked child would inherit their locks.
        ctx = multiprocessing.get_context("spawn")
        to_worker_r, self._to_worker = ctx.Pipe(duplex=False)
        self._from_worker, from_worker_w = ctx.Pipe(duplex=False)
        for conn in (self._to_worker, self._from_worker):
            _grow_pipe(conn)
        self.proc = ctx.Process(
            target=worker.main, args=(to_worker_r, from_worker_w, worker.WorkerSettings(self.s)),
            name="overstay-bridge-worker", daemon=True,
        )
        self.proc.start()
        to_worker_r.close()
        from_worker_w.close()
        # The worker opens the database before it says "ready"; a database
        # that cannot be opened shows here rather than after the first message.
        if not self._from_worker.poll(60):
            self._stop_worker(0)
            raise dbmod.DatabaseError("the ingest worker did not start within 60 s")
        try:
            msg = self._from_worker.recv()
        except EOFError:
            msg = ("error", "exit code %s" % self.proc.exitcode)
        if msg[0] != "ready":
            self._stop_worker(0)
            raise dbmod.DatabaseError("the ingest worker failed to start: %s" % (msg[1],))
        self.worker_ready.set()
        self.log.info("worker_started", pid=msg[1])

    def _stop_worker(self, timeout):
        if self.proc is None:
            return
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        for conn in (self._to_worker, self._from_worker):
            try:
                conn.close()
            except OSError:
                pass

    def request_stop(self):
        self.stop_event.set()
        self.wake.set()
        self.hk_wake.set()

    def wait(self, timeout=None):
        return self.stopped.wait(timeout)

    def run(self):
        """start(), block until request_stop(), shut down. Returns 0 (1 after an internal error)."""
        # The process is the bridge's own (`overstay bridge`): hand the GIL
        # over every 1 ms instead of 5, so the housekeeping thread's Python
        # (a gap scan takes 10 to 25 ms) delays the acker less.
        sys.setswitchinterval(0.001)
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
        # The feeder hands over what was received and asks the worker to
        # drain; the acker acks what the worker commits until it stops.
        for t in self._threads:
            t.join(self.s.drain_s + 10)
        if self.client is not None:
            self.window.wait_empty(2.0)
            self.client.disconnect()
            self.client.loop_stop()
        self._stop_worker(5)
        self.log.info("stopped", batches=self.batches, abandoned=len(self.inbox) + len(self.unacked))
        self.stopped.set()

    # -- feeder thread: paho -> worker ----------------------------------------

    def _feeder(self):
        q = self.inbox
        unacked = self.unacked
        send = self._to_worker.send
        try:
            while True:
                if not q:
                    if self.stop_event.is_set():
                        break
                    self.wake.clear()
                    if not q:
                        self.wake.wait(0.2)
                    continue
                if len(q) < _CHUNK_MIN and len(unacked) >= self.s.batch_max and not self.stop_event.is_set():
                    # The worker has a full batch to work on: let messages
                    # gather rather than send them one by one (each pipe
                    # write costs both processes a wakeup and a pickle).
                    time.sleep(0.002)
                    continue
                items = []
                while q and len(items) < _CHUNK_MAX:
                    topic, payload, mid, qos, t_recv = q.popleft()
                    unacked.append((mid, qos))
                    items.append((topic, payload, t_recv))
                self.metrics.queue_depth.set(len(unacked))
                send(("msgs", items, len(q)))  # and how many still wait here (the worker merges acks when far behind)
            send(("drain", self.s.drain_s))
        except OSError:
            pass  # the worker is gone; the acker reports it

    # -- acker thread: worker -> PUBACKs, station acks, metrics ----------------

    def _acker(self):
        acked = 0
        try:
            while True:
                msg = self._from_worker.recv()
                kind = msg[0]
                if kind == "out":
                    acked = self._after_commit(acked, msg[1], msg[2], msg[3])
                elif kind == "stopped":
                    self._abandoned = msg[1]
                    if not self.stop_event.is_set():  # it only stops when asked to drain
                        self._fail("worker_crashed", "the ingest worker stopped unasked")
                    return
                elif kind == "error":
                    self._fail("worker_crashed", msg[1])
        except (EOFError, OSError):
            # Gone without "stopped": killed, or crashed. What it committed
            # but did not report is not acked: the broker redelivers it and
            # the ledger turns it into a duplicate.
            self.proc.join(1)
            self._fail("worker_crashed", "the ingest worker exited (code %s)" % self.proc.exitcode)

    def _fail(self, event, error):
        if self.error is None:
            self.error = error
            self.log.error(event, error=error)
        self.request_stop()

    def _after_commit(self, acked, done, pubs, rep):
        # Everything up to `done` is committed. Metrics first (whoever got
        # an ack may look at them), then the station acks, then the PUBACKs.
        if rep is not None:
            self._report(rep)
        t_commit = rep.t_commit if rep is not None else None
        sent = 0
        for topic, payload, _ in pubs:
            if self.publish(topic, payload, False, t_commit):
                sent += 1
        if sent:
            self.metrics.acks_sent.inc(sent)
        c = self.client
        unacked = self.unacked
        for _ in range(done - acked):
            mid, qos = unacked.popleft()
            if qos > 0:
                c.ack(mid, qos)
        if rep is not None and rep.size:
            self.batches += 1
            self.log.debug(
                "batch", size=rep.size, stored=sum(rep.stored.values()), acked=rep.acked,
                commit_ms=round(sum(rep.commit_s) * 1000, 2),
            )
        elif pubs:
            self.log.debug("acks", acked=sum(p[2] for p in pubs), messages=len(pubs))
        return done

    def _report(self, rep):
        m = self.metrics
        total = 0
        for kind, k in rep.stored.items():
            m.messages.labels(kind, "stored").inc(k)
            total += k
        for kind, k in rep.duplicates.items():
            m.messages.labels(kind, "duplicate").inc(k)
        for reason, k in rep.rejects.items():
            m.rejects.labels(reason).inc(k)
        if rep.quarantined:
            m.quarantined.inc(rep.quarantined)
        if rep.db_errors:
            m.db_errors.inc(rep.db_errors)
        for result, k in rep.fee_checks.items():
            m.fee_checks.labels(result).inc(k)
        for reason, k in rep.fee_reasons.items():
            m.fee_mismatches.labels(reason).inc(k)
        if rep.seen:
            wall = time.time()
            for station in rep.seen:
                m.last_seen.labels(station).set(wall)
        if rep.size:
            m.count_committed(total + sum(rep.duplicates.values()))
            m.batch_size.observe(rep.size)
        for dt in rep.commit_s:
            m.commit_seconds.observe(dt)
        for dt in rep.recv_to_commit_s:
            m.receive_to_commit.observe(dt)
        m.queue_depth.set(len(self.unacked))
        for level, event, fields in rep.events:
            self.log.log(level, event, **fields)
        if rep.states_changed:
            self.dirty_sites |= rep.states_changed
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


def _grow_pipe(conn):
    # Linux pipes hold 64 KiB: about 80 session records, so the feeder would
    # block and wake the worker many times per batch. 1 MiB is the
    # unprivileged maximum (/proc/sys/fs/pipe-max-size); elsewhere, no change.
    try:
        import fcntl

        fcntl.fcntl(conn.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass


def _dialect(url):
    return dbmod.POSTGRES if url.startswith(("postgresql://", "postgres://")) else dbmod.SQLITE
