# StallCore: the stall's sans-IO heart. Samples, wall time and MQTT payloads in; journaled, signed messages out.
#
# Theory of operation
# -------------------
# The core owns the connector state machine (protocol.connector), the
# session books (stall.tab around protocol.session), the journal
# (protocol.journal) with its outbox (stall.outbox), the sequence counter,
# the replay guards and the backend's commands. It never reads a clock, a
# pin or a socket: every call carries now_ms, the caller's accumulated
# monotonic milliseconds (stall.clock.MonoClock), and the asyncio app
# (stall.app) drives it from its tasks. The same object runs under the
# MicroPython VM with an in-memory fs (tests/portable/vec_firmware.py).
#
#   start(now_ms, boot_hint, safe)  open the journal, recover, continue a session
#   sample(now_ms, pilot, current_ma, energy_wh, fault)   one hardware sample
#   tick(now_ms)                    idle ticks, heartbeat, TTLs, held records
#   wall(unix_ms, now_ms)           NTP answered
#   on_message(topic, payload, now_ms)   acks and commands from the broker
#   link_up(now_ms) / link_down()   the MQTT connection came or went
#   outbox, state_bytes/state_dirty, relay   what the app sends and switches
#
# Durability. Everything that bills is journaled before it takes effect or
# leaves: a session part before the session changes, a message's exact
# bytes before its first send. A power cut at any byte leaves a journal
# prefix that start() turns back into the same books (tests cut power at
# every write). Time: instants are monotonic ms // 1000 + an offset captured
# per session segment (see stall.tab): a wall-clock step never changes a
# billed duration.
#
# Sequence numbers (wire "n", one counter for state, event and session):
#   n = max(last n + 1, Unix ms when the wall time is known)
# and a high-water mark above every n handed out is persisted ahead of use,
# both in the journal (META) and in a separate small file, so neither a
# reboot nor the loss of one of them can make n go back; with both lost,
# the Unix-ms floor still keeps n above anything sent before, once synced.

from binascii import unhexlify

from protocol import canonjson, connector, fee, journal, wire
from stall import config as configmod
from stall import store
from stall.outbox import LEAF_EVENT, LEAF_SESSION, Outbox
from stall.tab import Tab

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# Journal META keys.
_M_BOOT = const(1)  # boot counter (also in the boot log file)
_M_SEQ = const(2)  # sequence high-water mark
_M_HB = const(3)  # heartbeat: [boot, now_ms, unix_s, synced], the last instant known alive
_M_TARIFF = const(4)  # the tariff in force (JSON)
_M_GUARDS = const(5)  # replay guards {topic leaf: {sender: n}}
_M_PAUSED = const(6)  # b"1" while the operator paused energy delivery

JOURNAL = "journal.log"
SEQ_FILE = "seq"
CONFIG_FILE = "config.json"

_MIN_UNIX_MS = 1577836800000  # 2020-01-01: an earlier wall time is a broken source
_SEQ_AHEAD_SYNCED = const(3600000)  # an hour of Unix ms
_SEQ_AHEAD = const(1000)
_MAX_CLOSING = const(4)  # closed sessions held for the wall time, at most
_IDLE_STATUSES = ("SuspendedEV", "Finishing", "Preparing")
_GUARD_LEAVES = ("cmd", "occupancy", "tariff")


class StallCore:
    """One stall (one connector): see the theory of operation above.

    StallCore(cfg, fs, root="") with cfg from stall.config (provisioned:
    station and site keys set), fs a journal file system (journal.OsFs() or
    stall.memfs.MemFs()), root the folder prefix of this stall's files
    ("" or ending in "/")."""

    def __init__(self, cfg, fs, root=""):
        if not configmod.provisioned(cfg):
            raise ValueError("the stall has no station_key/site_key: provision it first")
        self.cfg = cfg
        self.fs = fs
        self.root = root
        self.station = cfg["station"]
        self.site = cfg["site"]
        self.cid = cfg["connector"]
        self.key = unhexlify(cfg["station_key"])
        self.site_key = unhexlify(cfg["site_key"])
        self.j = journal.Journal(fs, root + JOURNAL, cfg["journal_soft"], cfg["journal_hard"])
        self.reader = store.Reader(fs, root + JOURNAL, self.j)
        self.outbox = Outbox(self.j, self.reader, cfg["resend_s"] * 1000, cfg["outbox_window"])
        st, si = self.station, self.site
        self.t_state = wire.station_topic(si, st, "state")
        self.t_event = wire.station_topic(si, st, "event")
        self.t_session = wire.station_topic(si, st, "session")
        self.t_avail = wire.station_topic(si, st, "avail")
        self.t_ack = wire.station_topic(si, st, "ack")
        self.t_cmd = wire.station_topic(si, st, "cmd")
        self.t_occupancy = wire.site_topic(si, "occupancy")
        self.t_tariff = wire.site_topic(si, "tariff")
        self.conn = connector.Connector(configmod.connector_config(cfg))
        self.tab = None  # the open session
        self.closing = []  # closed sessions whose record waits for the wall time
        self.boot = 0
        self.off = 0  # wall offset, s: instant = now_ms // 1000 + off
        self.synced = False
        self.seq = 0
        self.seq_hw = 0
        self.tariff = cfg["tariff"]
        self.paused = False
        self.safe = False
        self.blocked = False  # journal full: no new session may start
        self.occ = None  # site occupancy %, None = unknown
        self.occ_until = 0
        self.guards = {}
        for leaf in _GUARD_LEAVES:
            self.guards[leaf] = wire.SeqGuard()
        self._guards_dirty = False
        self.status = "Available"
        self.pilot = "A"
        self.current_ma = 0
        self.energy_wh = None
        self.fault = False
        self.state_bytes = None  # the latest retained state message
        self.state_dirty = False
        self.online_ms = -1  # when the link came up, -1 while down
        self.rejected = {}  # reason -> count of refused messages
        self.counts = {"accepted": 0, "dup": 0, "acks": 0, "events": 0, "sessions": 0, "lost": 0, "journal_full": 0}
        self._hb = None
        self._next_idle = 0
        self._next_hb = 0
        self._ccfg_pending = None
        self._started = False

    # -- clock -----------------------------------------------------------------

    def unix(self, now_ms):
        """The stall's best Unix-second estimate of monotonic `now_ms`."""
        t = now_ms // 1000 + self.off
        return t if t > 0 else 0

    # -- start-up ----------------------------------------------------------------

    def start(self, now_ms, boot_hint=0, safe=False, reason=""):
        """Open and recover the journal; returns the boot number.

        boot_hint: the boot log's counter (the larger of it and the
        journal's wins). safe: crash-loop safe mode: nothing new is
        metered, the outbox and commands keep working, a fault goes out."""
        j = self.j.open()
        m = j.meta(_M_BOOT)
        self.boot = max(boot_hint, (int(m) if m else 0) + 1)
        j.put_meta(_M_BOOT, str(self.boot).encode())
        hw = j.meta(_M_SEQ)
        fhw = store.read_file(self.fs, self.root + SEQ_FILE)
        self.seq = max(int(hw) if hw else 0, int(fhw) if fhw else 0, self.cfg.get("seq_floor", 0))
        self.seq_hw = self.seq
        hb = j.meta(_M_HB)
        if hb:
            self._hb = canonjson.loads(hb)
            if not self.synced:
                self.off = self._hb[2] - now_ms // 1000  # zero downtime until NTP says otherwise
        t = j.meta(_M_TARIFF)
        if t:
            self.tariff = canonjson.loads(t)
        g = j.meta(_M_GUARDS)
        if g:
            d = canonjson.loads(g)
            for leaf in _GUARD_LEAVES:
                self.guards[leaf] = wire.SeqGuard(d.get(leaf, {}))
        self.paused = j.meta(_M_PAUSED) == b"1"
        self.safe = safe
        self._started = True
        self._recover(now_ms)
        body = {"type": "boot", "boot": self.boot, "safe": safe}
        if j.cut:
            body["journal_cut"] = j.cut[1]
        self._event(now_ms, body)
        if safe:
            self._event(now_ms, {"type": "fault", "code": "safe_mode", "detail": reason})
        self._state(now_ms)
        return self.boot

    def _recover(self, now_ms):
        j = self.j
        ix = j.index
        rd = self.reader
        bad = []
        items = []  # (first id, "S" rec | "X" ids) in id order
        encoded = {}  # oids whose session record is journaled
        cur = None  # chunked item being collected: [tag, ids, parts, meta]
        for i in store.live(j):
            rid = ix.ids[i]
            p = rd.payload(i, 64)
            tag = p[0]
            if tag == 0x43:  # "C"
                if cur is not None and rid == cur[1][-1] + 1 and len(cur[1]) < cur[2]:
                    cur[1].append(rid)
                else:
                    bad.append(rid)
                continue
            if cur is not None:
                self._adopt(cur, bad, items, encoded)
                cur = None
            nl = p.find(b"\n")
            if tag == 0x57 and nl > 0:  # "W": leaf n parts ref
                f = p[2:nl].split(b" ")
                cur = [tag, [rid], int(f[1]), (p[1:2].decode(), int(f[0]), f[2])]
            elif tag == 0x58 and nl > 0:  # "X": oid parts
                f = p[1:nl].split(b" ")
                cur = [tag, [rid], int(f[1]), int(f[0])]
            elif tag == 0x53:  # "S"
                items.append((rid, canonjson.loads(rd.payload(i)[1:])))
            else:
                bad.append(rid)
        if cur is not None:
            self._adopt(cur, bad, items, encoded)
        rd.close()

        tabs = {}
        cap = self.cfg["max_timeline"]
        for rid, x in items:
            if type(x) is tuple:  # a snapshot's record ids
                d = canonjson.loads(rd.item(x))
                oid = d["oid"]
                if oid in encoded:
                    bad.extend(x)
                    continue
                old = tabs.get(oid)
                if old is not None:
                    bad.extend(old.parts)
                tab = Tab.from_snapshot(self.station, self.cid, d, cap)
                tab.parts = list(x)
                tabs[oid] = tab
                continue
            oid = rid if x[0] == "o" else x[1]
            if oid in encoded:
                bad.append(rid)
                continue
            if x[0] == "o":
                tab = Tab(self.station, self.cid, x, cap)
                tab.oid = rid
                tabs[rid] = tab
            else:
                tab = tabs.get(oid)
                if tab is None:
                    bad.append(rid)  # its session is gone (retired halfway): nothing to add to
                    continue
                try:
                    tab.apply(x)
                except ValueError:
                    bad.append(rid)
                    continue
            tab.parts.append(rid)
        rd.close()
        if bad:
            j.ack(*bad)  # leftovers of finished or half-written items

        oids = sorted(tabs)
        for oid in oids:
            tab = tabs[oid]
            if tab.closed:
                tab.closed_ms = now_ms
                self.closing.append(tab)
        opened = [tabs[o] for o in oids if not tabs[o].closed]
        # Only one session can be open on one connector: close all but the newest.
        for tab in opened[:-1]:
            self._part(tab, ["s", tab.oid, tab.last_t(), "Available", None])
            tab.closed_ms = now_ms
            self.closing.append(tab)
        if opened and not self.safe:
            self._continue(now_ms, opened[-1])
        # In safe mode an open session stays in the journal untouched; the
        # next normal boot continues it, the time in between Unavailable.

    def _adopt(self, cur, bad, items, encoded):
        tag, ids, parts, meta = cur
        if len(ids) != parts:  # power cut mid-item: it never existed
            bad.extend(ids)
            return
        if tag == 0x57:
            leaf, n, ref = meta
            self.outbox.adopt(n, ids, leaf)
            if leaf == LEAF_SESSION and ref:
                encoded[int(ref)] = True
        else:
            items.append((ids[0], tuple(ids)))

    def _continue(self, now_ms, tab):
        # The car was plugged in when the stall went down: same session,
        # the downtime Unavailable from the last instant known alive.
        t_down = tab.last_t()
        hb = self._hb
        if hb is not None and hb[0] == tab.boot:
            t_down = max(t_down, hb[1] // 1000 + tab.off)
        off = self.off
        if now_ms // 1000 + off < t_down:
            off = t_down - now_ms // 1000
            self.off = off
        t_up = now_ms // 1000 + off
        status = tab.status()
        self._part(tab, ["b", tab.oid, t_down, self.boot, off, self.synced, t_up, status])
        self.tab = tab
        charged = tab.s.first_charging is not None
        completed = tab.s.charge_complete is not None
        ccfg = configmod.connector_config(self.cfg)
        try:
            self.conn = connector.Connector(ccfg, status, charged, completed and charged)
        except ValueError:
            self.conn = connector.Connector(ccfg, "Faulted", charged, completed and charged)
        self.status = status
        self._event(now_ms, {"type": "status", "status": "Unavailable", "from": status, "at": t_down, "session": tab.sid, "synced": tab.synced})
        self._event(now_ms, {"type": "status", "status": status, "from": "Unavailable", "at": t_up, "session": tab.sid, "synced": tab.synced})

    # -- persistence helpers ---------------------------------------------------------

    def _part(self, tab, rec):
        try:
            rid = self.j.append(journal.BILLING, b"S" + canonjson.dumps(rec))
            tab.parts.append(rid)
        except journal.JournalFull:
            # Only when the session reserve was sized too small: keep the
            # books in RAM, say so, and let acks make room.
            self.counts["journal_full"] += 1
            self.blocked = True
        tab.apply(rec)
        if len(tab.parts) > 2 * tab.cap + 16:
            self._snapshot(tab)

    def _snapshot(self, tab):
        data = canonjson.dumps(tab.snapshot())
        ids = store.append_chunked(self.j, journal.BILLING, "X" + str(tab.oid) + " %d\n", data)
        old = tab.parts
        tab.parts = ids
        self.j.ack(*old)

    def _next_seq(self, now_ms):
        n = self.seq + 1
        if self.synced:
            u = now_ms + self.off * 1000
            if u > n:
                n = u
        self.seq = n
        if n >= self.seq_hw:
            self.seq_hw = n + (_SEQ_AHEAD_SYNCED if self.synced else _SEQ_AHEAD)
            v = str(self.seq_hw).encode()
            store.write_file(self.fs, self.root + SEQ_FILE, v)
            self.j.put_meta(_M_SEQ, v)
        return n

    def _encode(self, kind, n, now_ms, body):
        return wire.encode(self.key, kind, self.station, n, self.unix(now_ms), body)

    def _event(self, now_ms, body, telemetry=False):
        body["connector"] = self.cid
        n = self._next_seq(now_ms)
        data = self._encode(wire.EVENT, n, now_ms, body)
        try:
            if self.outbox.put(LEAF_EVENT, n, data, "", telemetry):
                self.counts["events"] += 1
        except journal.JournalFull:
            self.counts["journal_full"] += 1
            self.counts["lost"] += 1

    def _state(self, now_ms):
        tab = self.tab
        st = self.status
        if self.safe or self.blocked:
            st = "Unavailable"
        since = self.conn.status_since
        body = {
            "connector": self.cid,
            "status": st,
            "since": (tab.unix(since) if tab is not None else self.unix(since)) if since is not None else self.unix(now_ms),
            "current_ma": self.current_ma,
            "energy_wh": self.energy_wh,
            "paused": self.paused,
            "safe": self.safe,
            "synced": self.synced,
            "session": tab.sid if tab is not None else None,
        }
        self.state_bytes = self._encode(wire.STATE, self._next_seq(now_ms), now_ms, body)
        self.state_dirty = True

    def _persist_guards(self):
        d = {}
        for leaf in _GUARD_LEAVES:
            d[leaf] = self.guards[leaf].last
        self.j.put_meta(_M_GUARDS, canonjson.dumps(d))
        self._guards_dirty = False

    # -- samples -----------------------------------------------------------------------

    @property
    def relay(self):
        """Whether the contactor should be closed now."""
        return (
            self.tab is not None
            and not self.safe
            and not self.paused
            and not self.blocked
            and not self.fault
            and (self.pilot == "C" or self.pilot == "D")
            and self.status != "Faulted"
        )

    def sample(self, now_ms, pilot, current_ma, energy_wh=None, fault=False):
        """One hardware sample. Cheap when nothing changes."""
        self.pilot = pilot
        self.current_ma = current_ma
        if energy_wh is not None:
            self.energy_wh = energy_wh
        self.fault = fault
        if self.safe:
            return
        conn = self.conn
        conn.feed(now_ms, pilot, current_ma, self.paused, fault)
        ev = conn.next_event()
        while ev is not None:
            if ev[0] == "status":
                self._on_status(now_ms, ev[1], ev[2])
            else:
                self._on_complete(now_ms, ev[1])
            ev = conn.next_event()

    def _on_status(self, now_ms, at, status):
        prev = self.status
        self.status = status
        tab = self.tab
        if tab is None and status in fee.PLUGGED:
            tab = self._open(now_ms, at, status)
            t = tab.unix(at) if tab is not None else self.unix(at)
        elif tab is not None:
            t = tab.unix(at)
            rec = ["s", tab.oid, t, status]
            if status == "Available":
                rec.append(self.energy_wh)
            self._part(tab, rec)
            t = tab.s.timeline[-1]["t"] if status == "Available" else t
            if status == "Available":
                self.tab = None
                tab.closed_ms = now_ms
                self.closing.append(tab)
        else:
            t = self.unix(at)
        body = {"type": "status", "status": status, "from": prev, "at": t}
        if tab is not None:
            body["session"] = tab.sid
            body["synced"] = tab.synced
        else:
            body["synced"] = self.synced
        self._event(now_ms, body)
        self._next_idle = 0
        if status == "Available":
            if self._ccfg_pending is not None:
                self.conn = connector.Connector(self._ccfg_pending)
                self._ccfg_pending = None
            self._finalize_ready(now_ms)
        self._state(now_ms)

    def _open(self, now_ms, at, status):
        n = self._next_seq(now_ms)
        sid = self.station + "-" + str(n)
        occ = self.occ if self.occ is not None and now_ms < self.occ_until else None
        rec = ["o", sid, at // 1000 + self.off, status, self.boot, self.off, self.synced, self.tariff, occ, self.energy_wh]
        try:
            rid = self.j.append(journal.BILLING, b"S" + canonjson.dumps(rec), self.cfg["session_reserve"])
        except journal.JournalFull:
            self.counts["journal_full"] += 1
            self.blocked = True
            return None
        self.blocked = False
        tab = Tab(self.station, self.cid, rec, self.cfg["max_timeline"])
        tab.oid = rid
        tab.parts.append(rid)
        self.tab = tab
        self._next_hb = 0
        return tab

    def _on_complete(self, now_ms, at):
        tab = self.tab
        if tab is None:
            return
        t = tab.unix(at)
        self._part(tab, ["c", tab.oid, t])
        q_at = tab.last_t()
        if q_at < t:
            q_at = t
        q = tab.s.quote(q_at)
        left = tab.s.tariff.grace_s - (q["idle_s"] - (q_at - t))
        body = {"type": "charge_complete", "session": tab.sid, "at": t, "grace_end": t + left if left > 0 else t, "synced": tab.synced}
        if self.energy_wh is not None and tab.energy0 is not None:
            body["energy_wh"] = self.energy_wh - tab.energy0
        self._event(now_ms, body)

    # -- time passing -------------------------------------------------------------------

    def tick(self, now_ms):
        """Call about every second: idle fees, heartbeat, TTLs, held records."""
        if self.occ is not None and now_ms >= self.occ_until:
            self.occ = None  # unknown; an open session keeps its last report (docs/firmware.md)
        if self.tab is not None:
            self._idle(now_ms)
        elif self.blocked and self.status in fee.PLUGGED and not self.safe:
            if self._open(now_ms, now_ms, self.status) is not None:
                self._state(now_ms)
        if (self.tab is not None or self.closing) and now_ms >= self._next_hb:
            self._heartbeat(now_ms)
        elif self._guards_dirty and now_ms >= self._next_hb:
            self._next_hb = now_ms + self.cfg["heartbeat_s"] * 1000
            self._persist_guards()
        if self.closing:
            self._finalize_ready(now_ms)

    def _heartbeat(self, now_ms):
        self._next_hb = now_ms + self.cfg["heartbeat_s"] * 1000
        self.j.put_meta(_M_HB, canonjson.dumps([self.boot, now_ms, self.unix(now_ms), self.synced]))
        if self._guards_dirty:
            self._persist_guards()

    def _idle(self, now_ms):
        tab = self.tab
        if now_ms < self._next_idle:
            return
        if self.status not in _IDLE_STATUSES:
            self._next_idle = now_ms + 3600000  # a status change re-arms it
            return
        now_u = tab.unix(now_ms)
        q = tab.s.quote(now_u)
        b = q["billable_s"]
        if b > 0 and not tab.fee_started:
            tab.fee_started = True
            src = tab.s.tariff.source
            c = {}
            for k in src:
                c[k] = src[k]
            c["rounding"] = "ceil"  # the minute in progress is minute 0: when billing began
            m = fee.quote(c, tab.s.timeline, now_u)["minutes"]
            at, rate = (m[0]["start"], m[0]["rate"]) if m else (now_u - b, tab.s.tariff.rate)
            self._event(now_ms, {"type": "idle_fee_started", "session": tab.sid, "at": at, "rate": rate, "currency": q["currency"], "synced": tab.synced})
        bm = q["billed_min"]
        if bm > tab.ticked:
            tab.ticked = bm
            body = {"type": "idle_tick", "session": tab.sid, "billed_min": bm, "fee": q["fee"], "currency": q["currency"], "capped": q["capped"], "synced": tab.synced}
            self._event(now_ms, body, True)
        t = tab.s.tariff
        idle = q["idle_s"]
        if idle < t.grace_s:
            wait = t.grace_s - idle
            if idle == 0 and self.status == "Preparing":
                wait = 3600 if t.start_timeout_s is None else tab.s.plug_in + t.start_timeout_s - now_u
        elif t.rounding_ceil:
            wait = (b + 59) // 60 * 60 + 1 - b
        else:
            wait = 60 - b % 60
        self._next_idle = now_ms + (wait if wait > 1 else 1) * 1000

    def _finalize_ready(self, now_ms):
        hold = self.cfg["unsynced_hold_s"] * 1000
        for tab in list(self.closing):
            if (
                self.synced
                or tab.synced
                or (self.online_ms >= 0 and now_ms - self.online_ms >= hold)
                or len(self.closing) > _MAX_CLOSING
            ):
                if not self._finalize(now_ms, tab):
                    return

    def _finalize(self, now_ms, tab):
        # Encode the closed session once, journal it, then retire its parts.
        if tab.energy is not None and tab.energy0 is not None and tab.energy >= tab.energy0:
            tab.s.set_energy(tab.energy - tab.energy0)
        n = self._next_seq(now_ms)
        while True:
            try:
                data = self._encode(wire.SESSION, n, now_ms, tab.record())
                break
            except ValueError:
                if tab.cap <= 16:
                    raise
                tab.shrink(tab.cap * 3 // 4)  # cannot fit wire.MAX_SIZE: squeeze the timeline
        try:
            self.outbox.put(LEAF_SESSION, n, data, str(tab.oid))
        except journal.JournalFull:
            self.counts["journal_full"] += 1
            return False  # stays in closing; retried after acks make room
        self.counts["sessions"] += 1
        self.j.ack(*tab.parts)
        self.closing.remove(tab)
        return True

    # -- wall time ---------------------------------------------------------------------

    def wall(self, unix_ms, now_ms):
        """The wall clock says Unix ms `unix_ms` at monotonic `now_ms`.

        The first answer of a boot moves its unsynced session segments to
        the true time (durations unchanged) and re-estimates older ones;
        later answers only steer new sessions and message stamps."""
        if type(unix_ms) is not int or unix_ms < _MIN_UNIX_MS:
            return False
        off = (unix_ms - now_ms) // 1000
        first = not self.synced
        delta = off - self.off
        self.off = off
        self.synced = True
        if first and self._started:
            for tab in ([self.tab] if self.tab is not None else []) + self.closing:
                g = tab.segs[-1]
                if g[0] == self.boot:
                    if not g[3]:
                        self._part(tab, ["y", tab.oid, self.boot, off])
                elif not g[3] and delta:
                    # Closed in an earlier unsynced boot: still an estimate,
                    # now anchored to a true time (zero downtime since then).
                    self._part(tab, ["z", tab.oid, g[0], g[2] + delta])
            self._heartbeat(now_ms)
            self._finalize_ready(now_ms)
            self._state(now_ms)
        return True

    # -- the link --------------------------------------------------------------------------

    def link_up(self, now_ms):
        self.online_ms = now_ms
        self.outbox.reconnected()
        if self.state_bytes is not None:
            self.state_dirty = True

    def link_down(self):
        self.online_ms = -1

    # -- messages from the broker -------------------------------------------------------------

    def _reject(self, code):
        self.rejected[code] = self.rejected.get(code, 0) + 1
        return code

    def on_message(self, topic, payload, now_ms):
        """Handle one received message; returns "ack", "ok", "dup" or the
        reason it was refused (also counted in `rejected`)."""
        if isinstance(topic, (bytes, bytearray)):
            topic = bytes(topic).decode()
        if topic == self.t_ack:
            try:
                msg = wire.decode(payload, self._station_key, self.station, None, wire.MAX_SIZE, "ack")
            except wire.WireError as e:
                return self._reject("ack_" + e.code)
            self.counts["acks"] += self.outbox.ack(msg.body["acks"])
            return "ack"
        if topic == self.t_cmd:
            return self._command(payload, "cmd", self.station, self._station_key, now_ms)
        if topic == self.t_occupancy:
            return self._command(payload, "occupancy", self.site, self._site_key, now_ms)
        if topic == self.t_tariff:
            return self._command(payload, "tariff", self.site, self._site_key, now_ms)
        return self._reject("topic")

    def _station_key(self, sender):
        return self.key if sender == self.station else None

    def _site_key(self, sender):
        return self.site_key if sender == self.site else None

    def _command(self, payload, leaf, sender, key_for, now_ms):
        try:
            msg = wire.decode(payload, key_for, sender, None, wire.MAX_SIZE, leaf)
        except wire.WireError as e:
            return self._reject(e.code)
        except (ValueError, TypeError):
            return self._reject(wire.ERR_MALFORMED)
        guard = self.guards[leaf]
        last = guard.last.get(msg.sender)
        if last is not None and msg.seq <= last:
            if msg.seq < last:
                return self._reject(wire.ERR_REPLAY)
            # The retained message again (every reconnect): only a fresh
            # occupancy report is worth reading twice.
            self.counts["dup"] += 1
            if msg.body["op"] == wire.OP_OCCUPANCY and self.synced and self.occ is None:
                self._occupancy(msg, now_ms)
            return "dup"
        op = msg.body["op"]
        if leaf == "cmd" and self.synced and op in (wire.OP_PAUSE, wire.OP_RESUME, wire.OP_CONFIG):
            if self.unix(now_ms) - msg.t > self.cfg["cmd_max_age_s"]:
                return self._reject("stale")
        if op == wire.OP_TARIFF:
            r = self._tariff(msg)
        elif op == wire.OP_OCCUPANCY:
            r = self._occupancy(msg, now_ms)
        elif op == wire.OP_CONFIG:
            r = self._config(msg.body["config"])
        else:
            r = self._pause(msg.body, op == wire.OP_PAUSE, now_ms)
        if r is not None:
            return self._reject(r)
        guard.accept(msg)
        self.counts["accepted"] += 1
        if leaf == "occupancy":
            self._guards_dirty = True  # written with the next heartbeat: frequent, and stale ones are refused by age
        else:
            self._persist_guards()
        return "ok"

    def _tariff(self, msg):
        new = msg.body["tariff"]
        try:
            t = fee.parse_tariff(new)
        except ValueError:
            return "tariff"
        cur = fee.parse_tariff(self.tariff)
        if t.version < cur.version or (t.version == cur.version and new != self.tariff):
            return "tariff_version"
        if new != self.tariff:
            self.tariff = new  # sessions that start from now on
            self.j.put_meta(_M_TARIFF, canonjson.dumps(new))
        return None

    def _occupancy(self, msg, now_ms):
        pct = msg.body["occupancy"]
        if pct > 100:
            return wire.ERR_SCHEMA
        ttl = self.cfg["occupancy_ttl_s"]
        age = 0
        if self.synced:
            age = self.unix(now_ms) - msg.t
            if age < 0:
                age = 0
            if age >= ttl:
                return "stale"
        self.occ = pct
        self.occ_until = now_ms + (ttl - age) * 1000
        tab = self.tab
        if tab is not None and tab.wants_occupancy(pct):
            self._part(tab, ["p", tab.oid, tab.unix(now_ms), pct])
        return None

    def _config(self, changes):
        try:
            new = configmod.apply_remote(self.cfg, changes)
        except ValueError:
            return "config"
        configmod.save(self.fs, self.root + CONFIG_FILE, new)
        self.cfg = new
        self.outbox.resend_ms = new["resend_s"] * 1000
        self.outbox.window = new["outbox_window"]
        ccfg = configmod.connector_config(new)
        if ccfg != self.conn.config:
            if self.tab is None and self.status == "Available":
                self.conn = connector.Connector(ccfg)
            else:
                self._ccfg_pending = ccfg  # thresholds change between sessions, not inside one
        return None

    def _pause(self, body, pause, now_ms):
        c = body.get("connector", 0)
        if type(c) is not int or (c != 0 and c != self.cid):
            return "connector"
        if self.paused != pause:
            self.paused = pause
            self.j.put_meta(_M_PAUSED, b"1" if pause else b"")
            ev = {"type": "paused" if pause else "resumed"}
            if pause and isinstance(body.get("reason"), str):
                ev["reason"] = body["reason"]
            self._event(now_ms, ev)
            self._state(now_ms)
        return None

    # -- for the console -----------------------------------------------------------------------

    def info(self, now_ms):
        tab = self.tab
        out = {
            "station": self.station,
            "boot": self.boot,
            "status": self.status,
            "pilot": self.pilot,
            "current_ma": self.current_ma,
            "energy_wh": self.energy_wh,
            "relay": self.relay,
            "paused": self.paused,
            "safe": self.safe,
            "blocked": self.blocked,
            "synced": self.synced,
            "unix": self.unix(now_ms),
            "occupancy": self.occ,
            "tariff": [fee.parse_tariff(self.tariff).id, fee.parse_tariff(self.tariff).version],
            "outbox": len(self.outbox),
            "closing": len(self.closing),
            "journal_bytes": self.j.size,
            "seq": self.seq,
            "rejected": self.rejected,
            "counts": self.counts,
        }
        if tab is not None:
            q = tab.s.quote(tab.unix(now_ms))
            out["session"] = {"id": tab.sid, "fee": q["fee"], "billed_min": q["billed_min"], "idle_s": q["idle_s"]}
        return out
