# The bridge's ingest worker process: verify, classify, store and commit batches, sign the station acks; no MQTT.
#
# Theory of operation
# -------------------
# One Python process runs one thread at a time (the GIL): with paho's network
# thread and the database writer in one process, receiving and verifying
# take turns on one core. So the bridge is two processes (docs/bridge.md):
#
#   paho process (service.py)                 worker process (this module, one thread)
#   on_message: (topic, payload, t) -> deque   pipe -> deque, take a batch,
#   feeder thread: deque -> pipe, keeps          Ingestor.process (one transaction),
#     (mid, qos) of each message in order        commit, sign the station acks,
#   acker thread: pipe -> PUBACK every           -> pipe ("out", done, acks, report)
#     message up to `done`, publish the acks
#
# Messages cross the pipe in the order paho delivered them and the worker
# handles them in that order, so one number says what is on disk: `done`,
# the count of messages handled (committed, or stored as a reject) since the
# worker started. The paho process PUBACKs exactly its first `done` messages
# and nothing else. The worker reports `done` only after the commit, signs
# the acks only for committed messages and hands them over after the commit:
# the bridge's rule "commit, then ack" holds across the two processes.
#
# Station acks of a streaming station (one whose previous acked commit was
# less than ack_stream_s ago: an outbox catching up), and every station's
# while the worker is far behind (four full batches already waiting: a
# backlog draining), are held up to ack_hold_s and merged, so one signed ack lists
# many n instead of one ack per record; with the bridge keeping up, a
# station sending now and then is acked at once.
#
# Lifecycle: the paho process sends ("msgs", [(topic, payload, t_recv), ...],
# still queued there) and, at shutdown, ("drain", seconds): the worker handles what it has for at
# most that long, sends every held ack, reports ("stopped", abandoned) and
# exits. End of file on the pipe (the paho process died) stops it at once.
# The worker ignores SIGINT and SIGTERM: a Ctrl-C reaches the whole process
# group, and only the paho process decides how to drain.
import collections
import os
import signal
import time

from host_tools.bridge import db as dbmod
from host_tools.bridge import fastwire, ingest
from protocol import wire

MAX_ACKS_PER_MESSAGE = 500  # keeps an ack far below wire.MAX_SIZE
_LAST_SEEN_EVERY_S = 1.0  # station_last_seen_seconds is refreshed at most this often per station


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


class WorkerSettings:
    """The part of service.Settings the worker needs (picklable: no sockets, no broker)."""

    def __init__(self, s):
        self.db_url = s.db_url
        self.instance = s.instance
        self.batch_max = s.batch_max
        self.batch_ms = s.batch_ms
        self.key_cache_s = s.key_cache_s
        self.occupancy_tolerance_s = s.occupancy_tolerance_s
        self.ack_hold_s = s.ack_hold_s
        self.ack_stream_s = s.ack_stream_s
        self.fault = s.fault


class AckHold:
    """Committed (station, n) waiting for their signed ack.

    add() returns what to send now: a station whose previous acked commit was
    at least stream_s ago is acked at once; a streaming one, or any station
    while the worker is busy (far behind), is held until
    hold_s after its first held commit (or until it has a full ack), so its
    acks merge. take_due() returns the held stations whose time has come
    (all of them with force=True). Entries are (station, site, key, [n, ...])."""

    def __init__(self, hold_s, stream_s):
        self.hold_s = hold_s
        self.stream_s = stream_s
        self.pending = {}  # station -> [site, key, set of n, due]; insertion order = due order
        self.last = {}  # station -> monotonic time of its latest commit with acks
        self._prune_at = 0.0

    def add(self, acks, now, busy=False):
        out = []
        last = self.last
        pending = self.pending
        for station, (site, key, ns) in acks.items():
            prev = last.get(station)
            last[station] = now
            p = pending.get(station)
            if p is not None:
                p[0], p[1] = site, key
                p[2].update(ns)
                if len(p[2]) >= MAX_ACKS_PER_MESSAGE:
                    del pending[station]
                    out.append((station, p[0], p[1], sorted(p[2])))
            elif self.hold_s > 0 and (busy or (prev is not None and now - prev < self.stream_s)):
                pending[station] = [site, key, set(ns), now + self.hold_s]
            else:
                out.append((station, site, key, ns))
        if now >= self._prune_at:
            self._prune_at = now + 10.0
            old = now - self.stream_s
            for station in [s for s, t in last.items() if t < old]:
                del last[station]
        return out

    def take_due(self, now, force=False):
        out = []
        pending = self.pending
        while pending:
            station = next(iter(pending))
            site, key, ns, due = pending[station]
            if due > now and not force:
                break
            del pending[station]
            out.append((station, site, key, sorted(ns)))
        return out

    def next_due(self):
        """Monotonic time the oldest held ack is due, or None."""
        for p in self.pending.values():
            return p[3]
        return None


class Report:
    """What one handled batch means for metrics and logs in the paho process."""

    __slots__ = (
        "size", "stored", "duplicates", "rejects", "quarantined", "fee_checks", "fee_reasons", "seen",
        "events", "states_changed", "commit_s", "recv_to_commit_s", "t_commit", "acked", "db_errors",
    )

    def __init__(self):
        self.size = 0
        self.stored = {}  # kind -> count
        self.duplicates = {}  # kind -> count
        self.rejects = {}  # reason -> count
        self.quarantined = 0
        self.fee_checks = {}  # match|mismatch|unverified -> count
        self.fee_reasons = {}  # reason -> count
        self.seen = []  # stations whose last-seen gauge is due
        self.events = []  # (level, event, fields) for the log
        self.states_changed = set()  # sites
        self.commit_s = []  # per transaction
        self.recv_to_commit_s = []  # per transaction: oldest message's receipt to its commit
        self.t_commit = None  # monotonic time of the last commit
        self.acked = 0  # n listed in the acks sent with this report
        self.db_errors = 0  # failed commits (retried)


def _add(d, key, k):
    d[key] = d.get(key, 0) + k


class Worker:
    """The worker process's state: one database connection, one Ingestor."""

    def __init__(self, ws, rx, tx):
        self.ws = ws
        self.rx = rx  # ("msgs", [...]) and ("drain", seconds) from the paho process
        self.tx = tx  # ("ready"|"out"|"stopped"|"error", ...) to it
        self.inbox = collections.deque()
        self.waiting = 0  # messages still queued in the paho process, as of its last write
        self.eof = False
        self.drain_at = None  # monotonic deadline once a drain was requested
        self.done = 0  # messages handled (committed or set aside), in receive order
        self.acks = AckCounter(ws.instance)
        self.hold = AckHold(ws.ack_hold_s, ws.ack_stream_s)
        self.db = None
        self.ingestor = None
        self._seen_at = {}  # station -> monotonic time its last-seen was last reported
        self._linger = 0.0  # seconds the last batch took: the adaptive wait for more messages
        self._ack_now = []  # (station, site, key, [n, ...]) to sign and send after this batch

    # -- the pipe -------------------------------------------------------------

    def _pull(self, timeout):
        """Move everything the paho process has sent into the inbox, waiting
        up to timeout for the first message (read here, not by a thread of
        its own: one wake-up less on the way of each message)."""
        rx = self.rx
        try:
            if not rx.poll(timeout):
                return
            while True:
                msg = rx.recv()
                if msg[0] == "msgs":
                    self.inbox.extend(msg[1])
                    self.waiting = msg[2]
                elif msg[0] == "drain":
                    self.drain_at = time.monotonic() + msg[1]
                if not rx.poll(0):
                    return
        except (EOFError, OSError):
            self.eof = True

    def _send(self, msg):
        self.tx.send(msg)

    # -- the loop -------------------------------------------------------------

    def run(self):
        ws = self.ws
        self.db = dbmod.connect(ws.db_url)
        cfg = ingest.Config(key_cache_s=ws.key_cache_s, occupancy_tolerance_s=ws.occupancy_tolerance_s)
        self.ingestor = ingest.Ingestor(self.db, cfg)
        self._send(("ready", os.getpid()))
        abandoned = 0
        try:
            while not self.eof:
                self._pull(0)
                if self.drain_at is not None and (not self.inbox or time.monotonic() > self.drain_at):
                    break
                batch = self._take()
                now = time.monotonic()
                if not batch:
                    due = self.hold.take_due(now)
                    if due:
                        self._send(("out", self.done, self._sign(due), None))
                    continue
                rep = Report()
                if not self._handle(batch, rep):
                    # Abandoned at the drain deadline: not reported as done,
                    # so never PUBACKed; the broker redelivers it.
                    abandoned = len(batch)
                    self._send(("out", self.done, [], rep))
                    break
                self._linger = time.monotonic() - now
                self.done += len(batch)
                pubs = self._sign(self._ack_now + self.hold.take_due(rep.t_commit))
                self._ack_now = []
                rep.acked = sum(p[2] for p in pubs)
                self._send(("out", self.done, pubs, rep))
            if not self.eof:
                # Drained: every held ack (all committed) goes now.
                held = self._sign(self._ack_now + self.hold.take_due(0, force=True))
                if held:
                    self._send(("out", self.done, held, None))
                self._send(("stopped", abandoned + len(self.inbox)))
        finally:
            self.db.close()

    def _take(self):
        """Up to batch_max messages; [] when none came before the next held ack is due."""
        q = self.inbox
        if not q:
            if self.eof or self.drain_at is not None:
                return []
            due = self.hold.next_due()
            self._pull(0.5 if due is None else max(0.0, due - time.monotonic()))
            if not q:
                return []
        limit = self.ws.batch_max
        batch = []
        # Wait for more only when fewer than a batch are here, at most
        # --batch-ms and at most as long as the last batch took: under load
        # batches fill by themselves, and an idle bridge acks at once.
        linger = min(self.ws.batch_ms / 1000.0, self._linger)
        deadline = time.monotonic() + linger
        while len(batch) < limit:
            try:
                batch.append(q.popleft())
            except IndexError:
                left = deadline - time.monotonic()
                if left <= 0 or self.drain_at is not None or self.eof:
                    break
                self._pull(min(left, 0.002))
        return [ingest.Inbound(t, p, 0, 1, False, tr) for t, p, tr in batch]

    # -- one batch ------------------------------------------------------------

    def _handle(self, batch, rep):
        """Store the batch (retrying, or splitting out a message that fails);
        fill rep. False when abandoned during a drain (nothing committed is
        lost: what was not committed is not reported)."""
        delay = 0.05
        races = 0
        while True:
            t0 = time.monotonic()
            try:
                res = self.ingestor.process(batch)
                break
            except self.db.errors as e:
                if self.db.is_race(e) and races < 3:
                    # Another bridge stored a unique key (a session id) after
                    # our lookup: run the batch again, the lookup now sees it.
                    races += 1
                    rep.events.append(("warning", "commit_raced", {"error": _short(e), "batch": len(batch)}))
                    continue
                if self.db.is_permanent(e):
                    # The database refuses the data (a value out of range...):
                    # retrying cannot help; find the message and set it aside.
                    rep.events.append(("error", "commit_refused", {"error": _short(e), "batch": len(batch)}))
                    if len(batch) == 1:
                        res = self._store_internal_reject(batch[0], e, "db_refused")
                        break
                    half = len(batch) // 2
                    return self._handle(batch[:half], rep) and self._handle(batch[half:], rep)
                rep.events.append(("error", "commit_failed", {"error": _short(e), "batch": len(batch), "retry_in_s": round(delay, 2)}))
                rep.db_errors += 1
                self._flush_events(rep)
                if self.eof or (self.drain_at is not None and time.monotonic() > self.drain_at):
                    return False  # abandon: nothing acked, the broker redelivers
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._reconnect_db(rep)
            except Exception as e:  # noqa: BLE001 - isolate a poison message instead of looping on it
                if len(batch) == 1:
                    rep.events.append(("error", "internal_error", {"topic": batch[0].topic, "error": repr(e)}))
                    res = self._store_internal_reject(batch[0], e, "internal")
                    break
                half = len(batch) // 2
                return self._handle(batch[:half], rep) and self._handle(batch[half:], rep)
        t_commit = time.monotonic()
        if self.ws.fault == "after_commit_exit" and res.acks:
            # Tests only: die right after the commit, before any MQTT or station ack.
            os.kill(os.getppid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        self._account(batch, res, rep, t0, t_commit)
        return True

    def _flush_events(self, rep):
        # A batch retried for long gets its log lines and error count out now.
        r = Report()
        r.events, rep.events = rep.events, []
        r.db_errors, rep.db_errors = rep.db_errors, 0
        self._send(("out", self.done, [], r))

    def _account(self, batch, res, rep, t0, t_commit):
        rep.size += len(batch)
        rep.commit_s.append(t_commit - t0)
        if res.t_first:
            rep.recv_to_commit_s.append(t_commit - res.t_first)
        rep.t_commit = t_commit
        for kind, k in res.stored.items():
            _add(rep.stored, kind, k)
        for kind, k in res.duplicates.items():
            _add(rep.duplicates, kind, k)
        for reason, k in res.rejects.items():
            _add(rep.rejects, reason, k)
        rep.quarantined += res.quarantined
        for station, session_id, verified, reason in res.fee_checks:
            _add(rep.fee_checks, {1: "match", 0: "mismatch"}.get(verified, "unverified"), 1)
            if verified != 1 and reason:
                for r in reason.split(","):
                    _add(rep.fee_reasons, r.split(":")[0], 1)
            if verified == 0:
                rep.events.append(("warning", "fee_mismatch", {"station": station, "session_id": session_id, "reason": reason}))
            elif verified is None:
                rep.events.append(("warning", "fee_unverified", {"station": station, "session_id": session_id, "reason": reason}))
        seen_at = self._seen_at
        for station in res.seen:
            t = seen_at.get(station)
            if t is None or t_commit - t >= _LAST_SEEN_EVERY_S:
                seen_at[station] = t_commit
                rep.seen.append(station)
        if len(seen_at) > 200000:
            seen_at.clear()
        rep.events.extend(res.events)
        if res.rejects:
            rep.events.append(("warning", "rejected", {"count_" + k: v for k, v in sorted(res.rejects.items())}))
            for station, reason, detail in res.reject_details:
                rep.events.append(("debug", "reject", {"station": station, "reason": reason, "detail": detail}))
        rep.states_changed |= res.states_changed
        if res.acks:
            # Far behind (four batches waiting): these acks are late anyway, merge them.
            busy = len(self.inbox) + self.waiting >= 4 * self.ws.batch_max
            self._ack_now.extend(self.hold.add(res.acks, t_commit, busy))

    def _sign(self, items):
        """(topic, payload, count of n) of signed acks for (station, site, key, [n, ...]) entries."""
        out = []
        now = int(time.time())
        for station, site, key, ns in items:
            topic = wire.station_topic(site, station, "ack")
            for i in range(0, len(ns), MAX_ACKS_PER_MESSAGE):
                part = ns[i : i + MAX_ACKS_PER_MESSAGE]
                out.append((topic, fastwire.encode_ack(key, station, self.acks.next(), now, part), len(part)))
        return out

    def _reconnect_db(self, rep):
        try:
            self.db.close()
            self.db = dbmod.connect(self.ws.db_url)
            self.ingestor.db = self.db
        except Exception as e:  # noqa: BLE001 - keep retrying until the database is back
            rep.events.append(("error", "db_reconnect_failed", {"error": _short(e)}))

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


def _short(e):
    return " ".join(str(e).split())[:300]


def main(rx, tx, ws):
    """Entry point of the worker process (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    w = Worker(ws, rx, tx)
    try:
        w.run()
    except (BrokenPipeError, EOFError):
        pass  # the paho process is gone: nothing to report to
    except BaseException as e:  # noqa: BLE001 - a bug: tell the paho process, which stops the bridge
        try:
            tx.send(("error", repr(e)))
        except OSError:
            pass
        raise
