# One session's books on the stall: the protocol Session plus the per-boot clock segments, persisted as replayable parts.
#
# Theory of operation
# -------------------
# protocol.session.Session prices a timeline of Unix-second instants. The
# stall measures time on a monotonic millisecond clock that restarts at
# every boot, and learns the wall time only when NTP answers. So a session
# is kept as *segments*, one per boot it spans:
#
#     segment = [boot, first timeline index, off, synced]
#     instant = monotonic_ms // 1000 + off
#
# `off` is captured once per segment (session start, or the boot that
# continued it) and never follows later NTP steps, so a billed duration is
# always a monotonic duration: a wall-clock step cannot change it. Rounding
# the offset to whole seconds keeps the difference of two instants equal to
# the difference of their whole monotonic seconds.
#
# Before the first sync of a boot, `off` is an estimate (the last wall time
# the stall persisted, i.e. zero downtime) and the segment says synced=False.
# When the boot syncs, sync() moves that segment to the true offset, and
# walks back over earlier unsynced segments placing each right before the
# next (zero downtime: the only estimate that never bills a guess). A
# segment boundary is an "Unavailable" entry at the last instant the stall
# persisted before it went down, followed by the status the car was
# restored in at boot: the controller's downtime is never idle time.
#
# Every mutation is a *part*, a small JSON list the core journals before
# applying it; restoring after a power cut replays the parts through the
# same apply(), so the books come back exactly (see StallCore.start):
#
#     ["o", sid, t, status, boot, off, synced, tariff, occ, energy0]  open (its record id is the tab's oid)
#     ["s", oid, t, status(, energy_wh)]       a status change; Available closes
#     ["p", oid, t, pct]                        site occupancy (only when it changes a rate)
#     ["c", oid, t]                             charge complete
#     ["b", oid, t_down, boot, off, synced, t_up, status]   continued after a reboot
#     ["y", oid, boot, off]                     that boot learned the wall time
#     ["z", oid, boot, off]                     a better estimate for an unsynced boot
# A snapshot (tag "X", see snapshot()) replaces all parts before it.
#
# Bounded memory: the timeline holds at most `cap` entries. Beyond that,
# squeeze() first merges neighbouring statuses the fee engine cannot tell
# apart (two non-idle statuses, two idle ones): fee-neutral. Only a car that
# alternates idle/charging more than cap/2 times then loses its earliest idle
# runs (never billed more than it would be); `coalesced` counts such losses
# and goes out in the record.

from protocol import fee
from protocol.session import Session

# Status classes for merging: the fee engine treats every status of a class alike.
_IDLE = ("SuspendedEV", "Finishing")


def _cls(status):
    if status in _IDLE:
        return 1
    if status == "Preparing":
        return 2  # idle only after the start timeout: never merged with others
    return 0


class Tab:
    __slots__ = ("oid", "s", "segs", "parts", "energy0", "energy", "cap", "coalesced", "fc_seg", "cc_seg", "fee_started", "ticked", "closed_ms", "tiers")

    def __init__(self, station, connector, rec, cap):
        # rec is an "o" part.
        _, sid, t, status, boot, off, synced, tariff, occ, energy0 = rec
        # Occupancy changes no rate under a tariff without tiers: leave it out.
        self.tiers = fee.parse_tariff(tariff).tiers is not None
        self.s = Session(sid, station, connector, tariff, t, status, occ if self.tiers else None)
        self.s.synced = bool(synced)
        self.oid = 0
        self.segs = [[boot, 0, off, bool(synced)]]
        self.parts = []
        self.energy0 = energy0
        self.energy = None
        self.cap = cap
        self.coalesced = 0
        self.fc_seg = 0 if status == "Charging" else -1
        self.cc_seg = -1
        self.fee_started = False
        self.ticked = 0
        self.closed_ms = None

    # -- reading -------------------------------------------------------------

    @property
    def sid(self):
        return self.s.session_id

    @property
    def closed(self):
        return self.s.unplug is not None

    @property
    def off(self):
        """Offset of the current (last) segment."""
        return self.segs[-1][2]

    @property
    def boot(self):
        return self.segs[-1][0]

    @property
    def synced(self):
        for g in self.segs:
            if not g[3]:
                return False
        return True

    def unix(self, ms):
        """Instant of monotonic `ms` of the current boot, in this session's frame."""
        return ms // 1000 + self.segs[-1][2]

    def status(self):
        """The status in force (last status entry)."""
        tl = self.s.timeline
        for i in range(len(tl) - 1, -1, -1):
            st = tl[i].get("status")
            if st is not None:
                return st
        return "Available"

    def last_t(self):
        return self.s.timeline[-1]["t"]

    def wants_occupancy(self, pct):
        """Would an occupancy report change this session's timeline?"""
        if not self.tiers or self.closed:
            return False
        last = None
        for ev in self.s.timeline:
            if "occupancy" in ev:
                last = ev["occupancy"]
        rate = self.s.tariff.rate_for_occupancy
        return last is None or rate(last) != rate(pct)

    def record(self):
        r = self.s.record()
        r["synced"] = self.synced
        if self.coalesced:
            r["coalesced"] = self.coalesced
        return r

    # -- parts -----------------------------------------------------------------

    def apply(self, rec):
        """Apply one part (not "o"). Parts of other sessions raise ValueError."""
        k = rec[0]
        if rec[1] != self.oid:
            raise ValueError("part of another session")
        if k == "s":
            self._status(rec[2], rec[3])
            if rec[3] == "Available" and len(rec) > 4:
                self.energy = rec[4]
        elif k == "p":
            self._occupancy(rec[2], rec[3])
        elif k == "c":
            self.s.mark_charge_complete(rec[2])
            self.cc_seg = len(self.segs) - 1
        elif k == "b":
            self._segment(rec[2], rec[3], rec[4], rec[5], rec[6], rec[7])
        elif k == "y":
            self.sync(rec[2], rec[3])
        elif k == "z":
            self.sync(rec[2], rec[3], False)
        else:
            raise ValueError("unknown part " + repr(k))
        self._squeeze()

    def _status(self, t, status):
        s = self.s
        tl = s.timeline
        if s.unplug is not None:
            raise ValueError("session closed")
        i = len(tl)
        if tl and t < tl[-1]["t"]:
            # A retroactive status (the connector confirms changes late) that
            # predates an occupancy report: keep the timeline in time order.
            while i > self.segs[-1][1] + 1 and tl[i - 1]["t"] > t:
                i -= 1
            if tl[i - 1]["t"] > t:
                t = tl[i - 1]["t"]
        tl.insert(i, {"t": t, "status": status})
        if status == "Charging" and s.first_charging is None:
            s.first_charging = t
            self.fc_seg = len(self.segs) - 1
        if status == "Available":
            s.unplug = t

    def _occupancy(self, t, pct):
        tl = self.s.timeline
        if tl and t < tl[-1]["t"]:
            t = tl[-1]["t"]
        tl.append({"t": t, "occupancy": pct})

    def _segment(self, t_down, boot, off, synced, t_up, status):
        # The controller was down from t_down: Unavailable, then the restored status.
        tl = self.s.timeline
        if t_down < tl[-1]["t"]:
            t_down = tl[-1]["t"]
        self._status(t_down, "Unavailable")
        if t_up < t_down:
            off += t_down - t_up
            t_up = t_down
        self.segs.append([boot, len(tl), off, bool(synced)])
        self._status(t_up, status)
        self.s.synced = self.synced

    # -- wall clock ---------------------------------------------------------------

    def _end(self, k):
        return self.segs[k + 1][1] if k + 1 < len(self.segs) else len(self.s.timeline)

    def _shift(self, k, delta):
        if not delta:
            return
        tl = self.s.timeline
        for i in range(self.segs[k][1], self._end(k)):
            tl[i]["t"] += delta
        self.segs[k][2] += delta
        s = self.s
        if k == 0:
            s.plug_in += delta
        if self.fc_seg == k and s.first_charging is not None:
            s.first_charging += delta
        if self.cc_seg == k and s.charge_complete is not None:
            s.charge_complete += delta
        if k == len(self.segs) - 1 and s.unplug is not None:
            s.unplug += delta

    def sync(self, boot, off, final=True):
        """Boot `boot` learned its true offset: move its segment there and
        re-estimate the unsynced segments before it. final=False moves an
        estimate to a better estimate (the segment stays unsynced). True if
        anything moved."""
        k = len(self.segs) - 1
        while k >= 0 and self.segs[k][0] != boot:
            k -= 1
        if k < 0 or self.segs[k][3]:
            return False
        self._shift(k, off - self.segs[k][2])
        self.segs[k][3] = final
        tl = self.s.timeline
        j = k - 1
        while j >= 0:
            first_next = tl[self.segs[j + 1][1]]["t"]
            last_j = tl[self.segs[j + 1][1] - 1]["t"]
            if self.segs[j][3]:
                if last_j > first_next:  # two synced clocks disagree: never run time backwards
                    for m in range(j + 1, len(self.segs)):
                        self._shift(m, last_j - first_next)
                break
            self._shift(j, first_next - last_j)  # zero downtime: the estimate that bills no guess
            j -= 1
        self.s.synced = self.synced
        return True

    # -- bounded memory ------------------------------------------------------------

    def _protected(self, i):
        tl = self.s.timeline
        if i == 0 or tl[i].get("status") == "Available":
            return True
        # The status in force stays: a restart restores the connector from it.
        for m in range(len(tl) - 1, i, -1):
            if "status" in tl[m]:
                break
        else:
            if "status" in tl[i]:
                return True
        # The plug-in entry and whatever precedes it stay.
        for m in range(i):
            if "status" in tl[m]:
                break
        else:
            return True
        for g in self.segs[1:]:
            if i == g[1] or i == g[1] - 1:
                return True
        return False

    def _remove(self, i):
        self.s.timeline.pop(i)
        for g in self.segs:
            if g[1] > i:
                g[1] -= 1

    def _merge_once(self):
        tl = self.s.timeline
        prev = -1
        for i in range(len(tl)):
            st = tl[i].get("status")
            if st is None:
                continue
            c = _cls(st)
            if prev == c and not self._protected(i):
                self._remove(i)
                return True
            prev = c
        return False

    def _drop_idle_once(self):
        tl = self.s.timeline
        for i in range(len(tl)):
            st = tl[i].get("status")
            if st is not None and _cls(st) == 1 and not self._protected(i):
                self._remove(i)
                self.coalesced += 1
                return True
        return False

    def _drop_occupancy_once(self):
        tl = self.s.timeline
        seen = False
        for i in range(len(tl)):
            if "occupancy" in tl[i]:
                if seen and not self._protected(i):
                    self._remove(i)
                    self.coalesced += 1
                    return True
                seen = True
        return False

    def _squeeze(self):
        tl = self.s.timeline
        while len(tl) > self.cap:
            if not (self._merge_once() or self._drop_idle_once() or self._drop_occupancy_once()):
                return

    def shrink(self, cap):
        """Squeeze to a smaller cap (a record that would not fit a message)."""
        self.cap = cap
        self._squeeze()

    # -- snapshots -------------------------------------------------------------------

    def snapshot(self):
        """Everything needed to rebuild this tab, as a JSON-able dict."""
        s = self.s
        return {
            "oid": self.oid,
            "sid": s.session_id,
            "tariff": s.tariff.source,
            "tl": s.timeline,
            "segs": self.segs,
            "plug_in": s.plug_in,
            "fc": [s.first_charging, self.fc_seg],
            "cc": [s.charge_complete, self.cc_seg],
            "unplug": s.unplug,
            "e0": self.energy0,
            "e1": self.energy,
            "co": self.coalesced,
        }

    @staticmethod
    def from_snapshot(station, connector, d, cap):
        first = d["tl"][0]
        rec = ["o", d["sid"], d["plug_in"], first.get("status", "Preparing"), 0, 0, True, d["tariff"], None, d["e0"]]
        tab = Tab(station, connector, rec, cap)
        s = tab.s
        s.timeline = d["tl"]
        tab.segs = d["segs"]
        s.first_charging, tab.fc_seg = d["fc"]
        s.charge_complete, tab.cc_seg = d["cc"]
        tab.coalesced = d["co"]
        s.unplug = d["unplug"]
        tab.energy = d["e1"]
        tab.oid = d["oid"]
        s.synced = tab.synced
        return tab
