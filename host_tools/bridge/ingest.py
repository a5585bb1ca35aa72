# The bridge's batch ingest: verify station messages, classify (new, duplicate, conflict, reject), store in one transaction.
#
# Theory of operation
# -------------------
# process(batch) takes what the MQTT thread received and returns what to
# acknowledge once the transaction has committed. Nothing here talks MQTT,
# so the whole pipeline is tested against a bare database.
#
#   All of it runs in one transaction per batch:
#   1. Station records (site, valid keys, low-water mark) come from a cache
#      refreshed every key_cache_s; misses are fetched in one query.
#   2. Each payload is decoded with fastwire.decode (wire.decode's verdicts)
#      under expect_sender = the topic's station and leaf = the topic's leaf;
#      then the topic's site must be the station's registered site.
#   3. One query per table finds what the database already holds for the
#      batch: audit (station, n) -> digest, the connectors' latest states,
#      sessions by (station, session_id).
#   4. Each message is classified in arrival order (docs/bridge.md):
#        same (station, n), same digest      duplicate: stored once, acked again
#        same (station, n), other digest     conflict: quarantined, not acked
#        state with n <= the connector's     replay (stale telemetry)
#        session_id known, other n           duplicate (same body) / quarantine
#        otherwise                           new: audit + events/sessions/states
#   5. Bulk writes (executemany; on PostgreSQL an unnest INSERT ... RETURNING
#      on the audit ledger, so a row another bridge committed first turns
#      into a duplicate or a conflict instead of a double insert, and COPY
#      for the events and sessions hanging off the rows just inserted).
#   6. The caller commits (by leaving the transaction), then MQTT-acks every
#      message of the batch and publishes one application ack per station.
import hashlib
import time

from host_tools.bridge import fastwire, keys, tariffs, verify
from protocol import wire

STATION_LEAVES = ("state", "event", "session")
# Codes raised after the signature verified: the sender really used that n.
AUTHENTIC_CODES = (wire.ERR_KIND, wire.ERR_SCHEMA, wire.ERR_REPLAY)
# Reasons the bridge adds to wire's codes.
ERR_TOPIC = "topic"  # not a station data topic
ERR_SITE = "site"  # the topic's site is not the station's registered site
REJECT_RAW_MAX = wire.MAX_SIZE + 1024  # an oversized payload is kept truncated

# A stall counts as occupied from plug-in to unplug: these statuses mean a
# car is (still) there; Faulted/Unavailable/SuspendedEVSE keep an open session
# occupied; Available ends it; Reserved alone is not occupancy.
# Integer body fields stored in 64-bit columns; a larger value (JSON allows
# it) is rejected as `schema` instead of failing the batch's transaction.
INT64_MAX = 2**63 - 1
_SESSION_INTS = ("connector", "plug_in", "first_charging", "charge_complete", "unplug", "energy_wh", "idle_s",
                 "billable_s", "billed_min", "fee", "tariff_version")

PLUGGED = ("Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing")
HOLD = ("Faulted", "Unavailable")


# Column lists (and PostgreSQL element types) of the bulk inserts.
AUDIT_COLS = ("station", "n", "kind", "site", "t", "digest", "raw", "key_index", "received_at")
AUDIT_TYPES = ("text", "bigint", "text", "text", "bigint", "bytea", "bytea", "int", "bigint")
EVENT_COLS = ("station", "n", "connector", "type", "t", "body", "received_at")
EVENT_TYPES = ("text", "bigint", "bigint", "text", "bigint", "text", "bigint")
SESSION_COLS = (
    "station", "n", "site", "connector", "session_id", "plug_in", "first_charging", "charge_complete", "unplug",
    "energy_wh", "idle_s", "billable_s", "billed_min", "fee", "capped", "fee_bridge", "fee_verified", "verify_reason",
    "occupancy_verified", "currency", "tariff_id", "tariff_version", "synced", "minutes", "timeline", "body_digest", "received_at",
)
SESSION_TYPES = (
    "text", "bigint", "text", "bigint", "text", "bigint", "bigint", "bigint", "bigint",
    "bigint", "bigint", "bigint", "bigint", "bigint", "int", "bigint", "int", "text",
    "int", "text", "text", "bigint", "int", "text", "text", "bytea", "bigint",
)
STATE_COLS = ("station", "connector", "site", "status", "t", "occupied", "body", "received_at", "n", "plugged_since")
STATE_TYPES = ("text", "bigint", "text", "text", "bigint", "int", "text", "bigint", "bigint", "bigint")
REJECT_COLS = ("received_at", "topic", "site", "station", "sender", "n", "kind", "reason", "authentic", "detail", "size", "raw")
REJECT_TYPES = ("bigint", "text", "text", "text", "text", "bigint", "text", "text", "int", "text", "int", "bytea")

_MISSING = object()
_MAX_TOPICS = 200000


class Inbound:
    """One MQTT message as the network thread received it."""

    __slots__ = ("topic", "payload", "mid", "qos", "retain", "t_recv")

    def __init__(self, topic, payload, mid=0, qos=1, retain=False, t_recv=0.0):
        self.topic = topic
        self.payload = payload
        self.mid = mid
        self.qos = qos
        self.retain = retain
        self.t_recv = t_recv


class Config:
    """Ingest tunables (see `overstay bridge --help`)."""

    def __init__(self, key_cache_s=5.0, occupancy_tolerance_s=verify.DEFAULT_TOLERANCE_S, last_seen_every_s=5.0):
        self.key_cache_s = key_cache_s
        self.occupancy_tolerance_s = occupancy_tolerance_s
        self.last_seen_every_s = last_seen_every_s


class Result:
    """What a committed batch means for MQTT, logs and metrics."""

    def __init__(self):
        self.acks = {}  # station -> [site, key, [n, ...]]
        self.mids = []  # (mid, qos) of every message of the batch
        self.stored = {}  # kind -> count
        self.duplicates = {}  # kind -> count
        self.rejects = {}  # reason -> count
        self.reject_details = []  # (station, reason, detail) for the debug log
        self.quarantined = 0
        self.fee_checks = []  # (station, session_id, fee_verified, reason)
        self.states_changed = set()  # sites whose connector states changed
        self.seen = {}  # station -> t_recv of its latest message
        self.events = []  # (level, event, fields) for the structured log
        self.t_first = None  # monotonic receive time of the oldest message

    def count(self, d, key, k=1):
        d[key] = d.get(key, 0) + k


class _Station:
    __slots__ = ("site", "connectors", "floor_n", "keys", "loaded")

    def __init__(self, site, connectors, floor_n, keylist, loaded):
        self.site = site
        self.connectors = connectors
        self.floor_n = floor_n
        self.keys = keylist
        self.loaded = loaded


def _occupied(status, body, was_plugged_since, t):
    """(occupied 0/1, plugged_since) after this state (docs/bridge.md)."""
    if "session" in body:  # a station that says whether a session is open wins
        open_ = bool(body["session"])
        return (1 if open_ else 0), ((was_plugged_since if was_plugged_since is not None else t) if open_ else None)
    if status in PLUGGED:
        return 1, (was_plugged_since if was_plugged_since is not None else t)
    if status in HOLD and was_plugged_since is not None:
        return 1, was_plugged_since
    return 0, None


class Ingestor:
    """Verifies and stores batches on one Database (one thread)."""

    def __init__(self, db, config=None, clock=time.time):
        self.db = db
        self.config = config or Config()
        self.clock = clock
        self._stations = {}  # station -> _Station
        self._unknown = {}  # station -> monotonic time it was found unregistered
        self._tariffs = {}  # (site, id, version) -> fee.Tariff (immutable once stored)
        self._last_seen_written = {}  # station -> monotonic time last_seen was written
        self._topics = {}  # topic -> wire.parse_topic(topic)

    # -- station cache ------------------------------------------------------

    def forget(self, station=None):
        """Drop cached station records (all, or one) so the next batch reloads them."""
        if station is None:
            self._stations.clear()
            self._unknown.clear()
        else:
            self._stations.pop(station, None)
            self._unknown.pop(station, None)

    def _refresh_stations(self, names, mono):
        ttl = self.config.key_cache_s
        want = []
        for s in names:
            rec = self._stations.get(s)
            if rec is not None and mono - rec.loaded < ttl:
                continue
            u = self._unknown.get(s)
            if u is not None and mono - u < ttl:
                continue
            want.append(s)
        if not want:
            return
        recs = keys.station_records(self.db, want, int(self.clock()))  # inside the caller's transaction
        for s in want:
            r = recs.get(s)
            if r is None:
                self._stations.pop(s, None)
                self._unknown[s] = mono
            else:
                self._unknown.pop(s, None)
                self._stations[s] = _Station(r[0], r[1], r[2], r[3], mono)

    def station_keys(self, station):
        rec = self._stations.get(station)
        return rec.keys if rec is not None else None

    def station_site(self, station):
        rec = self._stations.get(station)
        return rec.site if rec is not None else None

    # -- the batch ----------------------------------------------------------

    def process(self, batch, mono=None):
        """Verify, classify and store one batch in one transaction; return a
        Result. Raises the driver's error (nothing committed) on a database
        failure: the caller retries the same batch."""
        mono = time.monotonic() if mono is None else mono
        now = int(self.clock())
        res = Result()
        rejects = []
        decoded = []  # (inbound, site, station, leaf, msg)

        parsed = []
        names = set()
        topics = self._topics
        for m in batch:
            res.mids.append((m.mid, m.qos))
            if res.t_first is None or (m.t_recv and m.t_recv < res.t_first):
                res.t_first = m.t_recv
            pt = topics.get(m.topic, _MISSING)
            if pt is _MISSING:
                pt = wire.parse_topic(m.topic)
                if len(topics) >= _MAX_TOPICS:
                    topics.clear()
                topics[m.topic] = pt
            parsed.append(pt)
            if pt is not None and pt[1] is not None:
                names.add(pt[1])
        # One transaction for the whole batch: the key refresh, then the
        # classification and the writes (one commit per batch, also on
        # PostgreSQL, where each statement is a round trip).
        with self.db.tx():
            self._refresh_stations(names, mono)
            self._decode(batch, parsed, decoded, rejects, res, now, mono)
            self._store(decoded, rejects, res, now, mono)
        for r in rejects:
            res.count(res.rejects, r[9])
            res.reject_details.append((r[3], r[9], r[10]))
        return res

    def _decode(self, batch, parsed, decoded, rejects, res, now, mono):
        # Verify each message (fastwire: wire.decode's verdicts) and its site.
        stations = self._stations

        def key_for(sender):
            rec = stations.get(sender)
            return rec.keys if rec is not None else None

        for m, pt in zip(batch, parsed):
            if pt is None or pt[1] is None or pt[2] not in STATION_LEAVES:
                rejects.append(self._reject(m, pt, ERR_TOPIC, "not a station state/event/session topic", None, now))
                continue
            site, station, leaf = pt
            try:
                msg = fastwire.decode(m.payload, key_for, expect_sender=station, leaf=leaf)
            except wire.WireError as e:
                hdr = fastwire.header(m.payload) if e.code in AUTHENTIC_CODES else None
                rejects.append(self._reject(m, pt, e.code, e.detail, hdr, now, authentic=hdr is not None))
                continue
            rec = stations[station]
            big = _out_of_range(msg)
            if big is not None:
                rejects.append(self._reject(m, pt, wire.ERR_SCHEMA, big + " is out of the 64-bit range", msg, now, True))
                continue
            if rec.site != site:
                rejects.append(
                    self._reject(m, pt, ERR_SITE, "station %s is registered on site %s" % (station, rec.site), msg, now, True)
                )
                continue
            decoded.append((m, site, station, leaf, msg))
            res.seen[station] = m.t_recv or mono

    def _reject(self, m, pt, reason, detail, msg, now, authentic=False):
        site = station = None
        if pt is not None:
            site, station = pt[0], pt[1]
        raw = m.payload if isinstance(m.payload, bytes) else bytes(m.payload)
        return (
            now,
            m.topic if isinstance(m.topic, str) else repr(m.topic),
            site,
            station,
            msg.sender if msg is not None else None,
            msg.seq if (msg is not None and authentic) else None,
            msg.kind if msg is not None else None,
            reason,
            authentic and 1 or 0,
            reason,  # index 9: the reason again, for counting (dropped before insert)
            detail[:500],
            len(raw),
            raw[:REJECT_RAW_MAX],
        )

    def _store(self, decoded, rejects, res, now, mono):
        db = self.db
        # 3. What the database already holds for this batch.
        pairs = sorted({(d[2], d[4].seq) for d in decoded})
        existing = self._audit_digests(pairs)
        state_keys = sorted({(d[2], d[4].body["connector"]) for d in decoded if d[4].kind == wire.STATE})
        states = self._states(state_keys)
        sess_keys = sorted({(d[2], d[4].body["session_id"]) for d in decoded if d[4].kind == wire.SESSION})
        sessions = self._sessions(sess_keys)

        audit_rows = []
        event_rows = []
        session_recs = []  # (msg, site, body_digest)
        state_rows = {}  # (station, connector) -> row
        quarantine = []  # (station, site, n, kind, reason, stored_digest, stored_raw_or_None, msg, stored_n)
        acked = {}  # station -> set of n
        key_of = {}  # station -> key that verified its latest message
        batch_seen = {}  # (station, n) -> (digest, raw)

        for m, site, station, leaf, msg in decoded:
            n = msg.seq
            kind = msg.kind
            rec = self._stations[station]
            prev = batch_seen.get((station, n))
            prev_digest = prev[0] if prev is not None else existing.get((station, n))
            if prev_digest is not None:
                if prev_digest == msg.digest:
                    res.count(res.duplicates, kind)
                    if kind != wire.STATE:
                        acked.setdefault(station, set()).add(n)
                        key_of[station] = rec.keys[msg.key_index]
                else:
                    quarantine.append((station, site, n, kind, "conflict", prev_digest, prev[1] if prev else None, msg, n))
                continue
            if kind == wire.STATE:
                c = msg.body["connector"]
                cur = state_rows.get((station, c)) or states.get((station, c))
                cur_n = cur[0] if cur is not None else None
                if cur_n is not None and n <= cur_n:
                    rejects.append(
                        self._reject(
                            m, (site, station, leaf), wire.ERR_REPLAY,
                            "state n %d is not above connector %d's stored state n %d" % (n, c, cur_n), msg, now, True,
                        )
                    )
                    continue
                status = msg.body["status"]
                occ, plugged = _occupied(status, msg.body, cur[1] if cur is not None else None, msg.t)
                state_rows[(station, c)] = (n, plugged, station, c, site, status, msg.t, occ, _body_json(msg), now)
                res.states_changed.add(site)
            else:
                # An authentic event or session whose n the database does not
                # hold is stored, however old: the signature proves the station
                # sent it, storing is idempotent, and a record that arrives
                # late (after its gap was given up, or before the station's
                # first mark) is exactly the one billing must not lose.
                if kind == wire.SESSION:
                    body = msg.body
                    if body.get("station", station) != station:
                        rejects.append(
                            self._reject(m, (site, station, leaf), wire.ERR_SCHEMA, "session record names station %r" % (body.get("station"),), msg, now, True)
                        )
                        continue
                    bd = hashlib.sha256(fastwire.msg_body_bytes(msg)).digest()
                    known = sessions.get((station, body["session_id"]))
                    if known is not None:
                        known_n, known_bd = known
                        if known_bd != bd:
                            quarantine.append((station, site, n, kind, "session_conflict", None, None, msg, known_n))
                            continue
                        # The same record resent under a new n: accept the
                        # message (audit, ack), keep the one session row.
                        res.count(res.duplicates, "session_resent")
                        res.events.append(("warning", "session_resent", {"station": station, "n": n, "session_id": body["session_id"], "first_n": known_n}))
                    else:
                        sessions[(station, body["session_id"])] = (n, bd)
                        session_recs.append((msg, site, bd))
                else:
                    body = msg.body
                    event_rows.append((station, n, body["connector"], body["type"], msg.t, _body_json(msg), now))
                acked.setdefault(station, set()).add(n)
                key_of[station] = rec.keys[msg.key_index]
            batch_seen[(station, n)] = (msg.digest, msg.raw)
            audit_rows.append((station, n, kind, site, msg.t, msg.digest, msg.raw, msg.key_index, now))
            res.count(res.stored, kind)

        # 5. Writes. The audit ledger first: on PostgreSQL another bridge may
        # have committed some of these (station, n) since the lookup.
        audit_rows.sort(key=lambda r: (r[0], r[1]))
        lost = self._insert_audit(audit_rows)
        if lost:
            self._resolve_lost(lost, audit_rows, event_rows, session_recs, state_rows, quarantine, acked, res)

        # Events and sessions hang off audit rows this transaction inserted:
        # no other writer can hold their (station, n) (db.append_many).
        db.append_many("events", EVENT_COLS, EVENT_TYPES, sorted(event_rows))
        if session_recs:
            db.append_many("sessions", SESSION_COLS, SESSION_TYPES, self._session_rows(session_recs, res, now))
        if state_rows:
            db.insert_many(
                "connector_states", STATE_COLS, STATE_TYPES,
                [(r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[0], r[1]) for _, r in sorted(state_rows.items())],
                tail="ON CONFLICT (station, connector) DO UPDATE SET site = excluded.site, status = excluded.status, t = excluded.t,"
                " occupied = excluded.occupied, body = excluded.body, received_at = excluded.received_at, n = excluded.n,"
                " plugged_since = excluded.plugged_since WHERE connector_states.n < excluded.n",
            )
        if rejects:
            db.insert_many("rejects", REJECT_COLS, REJECT_TYPES, [r[:9] + r[10:] for r in rejects], tail="")
        if quarantine:
            self._quarantine(quarantine, res, now)
        self._write_last_seen(res, mono, now)

        for station, ns in acked.items():
            rec = self._stations[station]
            res.acks[station] = [rec.site, key_of[station], sorted(ns)]

    # -- lookups ------------------------------------------------------------

    def _audit_digests(self, pairs):
        out = {}
        db = self.db
        for chunk in _chunks(pairs, _lookup_chunk(db)):
            if db.is_pg:
                rows = db.all(
                    "SELECT a.station, a.n, a.digest FROM audit a JOIN unnest(?::text[], ?::bigint[]) AS k(station, n)"
                    " ON a.station = k.station AND a.n = k.n",
                    ([p[0] for p in chunk], [p[1] for p in chunk]),
                )
            else:
                rows = db.all(
                    "SELECT a.station, a.n, a.digest FROM (VALUES %s) AS k JOIN audit a ON a.station = k.column1 AND a.n = k.column2"
                    % ",".join(["(?, ?)"] * len(chunk)),
                    [x for p in chunk for x in p],
                )
            for st, n, dg in rows:
                out[(st, n)] = bytes(dg)
        return out

    def _states(self, keys_):
        out = {}
        db = self.db
        for chunk in _chunks(keys_, _lookup_chunk(db)):
            if db.is_pg:
                rows = db.all(
                    "SELECT c.station, c.connector, c.n, c.plugged_since FROM connector_states c"
                    " JOIN unnest(?::text[], ?::bigint[]) AS k(station, connector) ON c.station = k.station AND c.connector = k.connector",
                    ([p[0] for p in chunk], [p[1] for p in chunk]),
                )
            else:
                rows = db.all(
                    "SELECT c.station, c.connector, c.n, c.plugged_since FROM (VALUES %s) AS k"
                    " JOIN connector_states c ON c.station = k.column1 AND c.connector = k.column2" % ",".join(["(?, ?)"] * len(chunk)),
                    [x for p in chunk for x in p],
                )
            for st, c, n, ps in rows:
                out[(st, c)] = (n, ps)
        return out

    def _sessions(self, keys_):
        out = {}
        db = self.db
        for chunk in _chunks(keys_, _lookup_chunk(db)):
            if db.is_pg:
                rows = db.all(
                    "SELECT s.station, s.session_id, s.n, s.body_digest FROM sessions s"
                    " JOIN unnest(?::text[], ?::text[]) AS k(station, session_id) ON s.station = k.station AND s.session_id = k.session_id",
                    ([p[0] for p in chunk], [p[1] for p in chunk]),
                )
            else:
                rows = db.all(
                    "SELECT s.station, s.session_id, s.n, s.body_digest FROM (VALUES %s) AS k"
                    " JOIN sessions s ON s.station = k.column1 AND s.session_id = k.column2" % ",".join(["(?, ?)"] * len(chunk)),
                    [x for p in chunk for x in p],
                )
            for st, sid, n, bd in rows:
                out[(st, sid)] = (n, bytes(bd))
        return out

    # -- writes -------------------------------------------------------------

    def _insert_audit(self, rows):
        """Insert audit rows; return the (station, n) another writer committed first (PostgreSQL only)."""
        if not rows:
            return set()
        got = self.db.insert_many("audit", AUDIT_COLS, AUDIT_TYPES, rows, returning="station, n")
        if not self.db.is_pg:
            return set()  # BEGIN IMMEDIATE: no other writer since the lookup
        inserted = {(st, n) for st, n in got}
        return {(r[0], r[1]) for r in rows} - inserted

    def _resolve_lost(self, lost, audit_rows, event_rows, session_recs, state_rows, quarantine, acked, res):
        # Another bridge stored these (station, n) between our lookup and our
        # insert: compare digests now that its row is committed.
        theirs = self._audit_digests(sorted(lost))
        mine = {(r[0], r[1]): r for r in audit_rows}
        for key in lost:
            r = mine[key]
            station, n, kind, site = r[0], r[1], r[2], r[3]
            res.count(res.stored, kind, -1)
            if theirs.get(key) == r[5]:
                res.count(res.duplicates, kind)
            else:
                acked.get(station, set()).discard(n)
                msg = wire.Message(kind, station, n, r[4], None, r[6], r[5], r[7])
                quarantine.append((station, site, n, kind, "conflict", theirs.get(key) or b"", None, msg, n))
        event_rows[:] = [e for e in event_rows if (e[0], e[1]) not in lost]
        session_recs[:] = [s for s in session_recs if (s[0].sender, s[0].seq) not in lost]
        for k in [k for k, v in state_rows.items() if (v[2], v[0]) in lost]:
            del state_rows[k]

    def _session_rows(self, recs, res, now):
        wanted = set()
        for msg, site, _ in recs:
            b = msg.body
            k = (site, b["tariff_id"], b["tariff_version"])
            if k not in self._tariffs:
                wanted.add(k)
        if wanted:
            self._tariffs.update(tariffs.lookup(self.db, sorted(wanted)))
        evs = [verify.occupancy_events(msg.body.get("timeline")) for msg, _, _ in recs]
        histories = self._histories(recs, evs)
        tol = self.config.occupancy_tolerance_s
        rows = []
        for (msg, site, bd), ev in zip(recs, evs):
            b = msg.body
            tariff = self._tariffs.get((site, b["tariff_id"], b["tariff_version"]))
            v = verify.verify(b, tariff, histories.get(site), tol, ev)
            res.fee_checks.append((msg.sender, b["session_id"], v.fee_verified, v.reason))
            rows.append(
                (
                    msg.sender,
                    msg.seq,
                    site,
                    b["connector"],
                    b["session_id"],
                    b["plug_in"],
                    _int_or_none(b.get("first_charging")),
                    _int_or_none(b.get("charge_complete")),
                    b["unplug"],
                    _int_or_none(b.get("energy_wh")),
                    _int_or_none(b.get("idle_s")),
                    _int_or_none(b.get("billable_s")),
                    _int_or_none(b.get("billed_min")),
                    b["fee"],
                    _bool_int(b.get("capped")),
                    v.fee_bridge,
                    v.fee_verified,
                    v.reason,
                    v.occupancy_ok,
                    b["currency"],
                    b["tariff_id"],
                    b["tariff_version"],
                    _bool_int(b.get("synced")),
                    fastwire.dumps(b.get("minutes", [])),
                    fastwire.dumps(b["timeline"]),
                    bd,
                    now,
                )
            )
        rows.sort(key=lambda r: (r[0], r[1]))
        return rows

    def _histories(self, recs, evs):
        # The bridge's occupancy history around the batch's occupancy events, per site.
        spans = {}
        for (msg, site, _), ev in zip(recs, evs):
            for t, _pct in ev:
                lo, hi = spans.get(site, (t, t))
                spans[site] = (min(lo, t), max(hi, t))
        out = {}
        tol = self.config.occupancy_tolerance_s
        for site, (lo, hi) in spans.items():
            rows = self.db.all(
                "SELECT t, pct FROM occupancy_history WHERE site = ? AND t > ? AND t <= ? ORDER BY t, id",
                (site, lo - tol, hi + tol),
            )
            before = self.db.one(
                "SELECT t, pct FROM occupancy_history WHERE site = ? AND t <= ? ORDER BY t DESC, id DESC LIMIT 1",
                (site, lo - tol),
            )
            if before is not None:
                rows = [tuple(before)] + [tuple(r) for r in rows]
            out[site] = verify.History(rows) if rows else None
        return out

    def _quarantine(self, items, res, now):
        db = self.db
        for station, site, n, kind, reason, stored_digest, stored_raw, msg, stored_n in items:
            if stored_raw is None:
                row = db.one("SELECT digest, raw FROM audit WHERE station = ? AND n = ?", (station, stored_n))
                if row is not None:
                    stored_digest, stored_raw = bytes(row[0]), bytes(row[1])
                else:
                    stored_digest, stored_raw = stored_digest or b"", b""
            cur = db.execute(
                "INSERT INTO quarantine (received_at, station, site, n, kind, reason, stored_digest, stored_raw, new_digest, new_raw)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (now, station, site, n, kind, reason, stored_digest, stored_raw, msg.digest, msg.raw),
            )
            fields = {"station": station, "site": site, "n": n, "kind": kind, "reason": reason}
            if stored_n != n:
                fields["stored_n"] = stored_n
            if cur.rowcount == 1:
                res.quarantined += 1
                res.events.append(("error", "quarantined", fields))
            else:
                res.events.append(("warning", "quarantined_again", fields))

    def _write_last_seen(self, res, mono, now):
        every = self.config.last_seen_every_s
        rows = []
        for station in res.seen:
            t = self._last_seen_written.get(station)
            if t is None or mono - t >= every:
                self._last_seen_written[station] = mono
                rows.append((now, station, now))
        if rows:
            rows.sort(key=lambda r: r[1])
            self.db.executemany("UPDATE stations SET last_seen = ? WHERE station = ? AND (last_seen IS NULL OR last_seen < ?)", rows)


def _out_of_range(msg):
    # The name of an integer field too large for the database, or None.
    if type(msg) is fastwire.FastMessage:
        return None  # the fast path holds no integer of more than 18 digits
    b = msg.body
    names = _SESSION_INTS if msg.kind == wire.SESSION else ("connector",)
    for k in names:
        v = b.get(k)
        if type(v) is int and v > INT64_MAX:
            return k
    return None


def _body_json(msg):
    return fastwire.msg_body_bytes(msg).decode("utf-8")


def _int_or_none(v):
    return v if type(v) is int else None


def _bool_int(v):
    if v is None:
        return None
    return 1 if v else 0


def _lookup_chunk(db):
    # Keys per lookup query: PostgreSQL takes them as two arrays (one query
    # for any batch); SQLite as 2 parameters each, and SQLite before 3.32
    # allows 999 parameters per statement.
    return 5000 if db.is_pg else 400


def _chunks(seq, size):
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
