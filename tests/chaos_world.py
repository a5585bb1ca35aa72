# Chaos suite, the world: simulated time, the cars' hardware, each stall's firmware App through power cuts, the fault schedule.
#
# Theory of operation
# -------------------
# Time. One virtual clock (Ticks) for the whole run, in world milliseconds
# since the scenario's start; it moves only when the driver says so, so a
# run's billing does not depend on how fast the machine is. Each stall is
# the firmware's own App (stall.app) with its own MonoClock on that clock,
# started at its boot instant (a whole world second), and FixedWall answers
# NTP with the world's time: the stall's instants are the world's seconds.
#
# Sampling. The App's sampler sleeps core.cfg["sample_ms"] between samples.
# The cars' hardware (CarHw) sets it at every poll: 500 ms from 1 s before
# to 2 s after any change a car makes (the contactor closes one sample after
# pilot C, so current flows within the same second), and `coarse_ms`
# otherwise. A status change is stamped at the sample that first sees its
# condition, so every instant in a record is exact to the second, and an
# hour of quiet costs a few hundred samples instead of thousands.
#
# Power cuts. With a MemFs budget the supply dies inside the next journal
# write (PowerCut from a task or from an ack being applied); without one the
# App is killed between writes (no DISCONNECT: the broker sees the will).
# The files that survived boot a new App at the next whole second after the
# downtime, exactly as stall.memfs and docs/firmware.md describe.
#
# Network and bridge. A `net` object (tests/chaos_mem.py: in memory;
# tests/chaos_broker.py: Mosquitto and `overstay bridge` processes) makes
# each App's link and carries out the network, broker and bridge faults.
# The driver advances time in steps (1 s while anything is in flight, up to
# 5 s otherwise, always landing on fault and boot instants) and lets the net
# move messages between steps.
#
# CHAOS_DEBUG=1 in the environment logs every stall's outbox, open session
# and link every 500 s of simulated time while a run drains (its log is
# printed when it fails, or with --keep).
import asyncio
import bisect
import collections
import heapq
import os
import sys
import time

from host_tools.scenario import GroundTruth
from protocol import wire
from tests.chaos_plan import CUT_WAIT_S

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FW = os.path.join(_REPO, "firmware")
if _FW not in sys.path:
    sys.path.insert(0, _FW)

from stall import config as configmod  # noqa: E402
from stall.app import App  # noqa: E402
from stall.clock import MonoClock, ticks_diff  # noqa: E402
from stall.hw import SimHardware  # noqa: E402
from stall.memfs import MemFs, PowerCut  # noqa: E402
from stall.ntp import FixedWall  # noqa: E402

FINE_MS = 500
_MASK = 0x3FFFFFFF


class Ticks:
    """A port-like tick source (wraps at 2**30) that moves only in run_for()."""

    def __init__(self):
        self.ms = 0
        self._heap = []
        self._seq = 0

    def ticks_ms(self):
        return self.ms & _MASK

    def ticks_diff(self, a, b):
        return ticks_diff(a, b)

    async def sleep_ms(self, ms):
        fut = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._heap, (self.ms + max(0, int(ms)), self._seq, fut))
        await fut

    async def run_for(self, ms):
        """Advance ms, waking sleepers in due order; each woken task runs until it sleeps again."""
        end = self.ms + ms
        h = self._heap
        for _ in range(4):  # tasks created since the last step (a boot) start and go to sleep first
            await asyncio.sleep(0)
        while h and h[0][0] <= end:
            if h[0][0] > self.ms:
                self.ms = h[0][0]
            while h and h[0][0] <= self.ms:
                fut = heapq.heappop(h)[2]
                if not fut.done():
                    fut.set_result(None)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        self.ms = end


class CarHw(SimHardware):
    """SimHardware whose pilot and draw come from the stall's car plan, and which paces the sampler (see above)."""

    def __init__(self, st, boot_w, cfg):
        super().__init__(stale_ms=cfg["meter_stale_ms"], energy_wh=st.energy_wh)
        self.st = st
        self.boot_w = boot_w
        self.cfg = cfg

    def poll(self, now_ms):
        st = self.st
        w = self.boot_w + now_ms
        if self.polls == 0:
            st.first_polls.append((self.boot_w, w))
        i = bisect.bisect_right(st.plan_w, w) - 1
        if i >= 0:
            _w, self.pilot, self.draw_ma = st.plan[i]
        else:
            self.pilot, self.draw_ma = "A", 0
        SimHardware.poll(self, now_ms)
        st.energy_wh = self.energy_wh
        self.cfg["sample_ms"] = st.cadence(w)


class Stall:
    def __init__(self, world, number, station, key):
        self.world = world
        self.number = number
        self.station = station
        self.key = key
        self.plan = []  # [(world ms, pilot, mA)]
        self.plan_w = []
        self.changes = []  # world ms of every plan change
        self.energy_wh = 0
        self.fs = MemFs()
        self.app = None
        self.task = None
        self.boots = 0
        self.down_until = None  # world ms of the next boot while powered off
        self.cut = None  # pending cut: {"down": ms, "deadline": world ms}
        self.died_w = None
        self.outages = []  # [(cut world ms, boot world ms)]
        self.crashes = []  # firmware exceptions (bugs): (world ms, repr)
        self.published = {}  # (n) -> kind/type of billing messages the stall sent
        self.net_down = False
        self.first_polls = []  # (boot world ms, world ms of the boot's first sample): the harness's own check

    def cadence(self, w):
        ch = self.changes
        i = bisect.bisect_left(ch, w - 2000)
        if i < len(ch) and ch[i] - 1000 <= w:
            return FINE_MS
        coarse = self.world.coarse_ms
        if i < len(ch):
            nxt = ch[i] - 1000 - w
            return max(FINE_MS, min(coarse, nxt))
        return coarse

    @property
    def core(self):
        return self.app.core if self.app is not None else None

    def quiet(self):
        c = self.core
        if c is None or self.down_until is not None or self.cut is not None:
            return False
        return not len(c.outbox) and not c.closing and c.tab is None


class World:
    """One chaos run: plan (tests/chaos_plan.Plan), net (mem or broker), keys (host_tools.sim_keys.Keys)."""

    def __init__(self, plan, net, keys, occupancy_sync=False):
        self.plan = plan
        # Lockstep with the bridge's occupancy (tests/test_e2e.py): time moves in
        # 100 ms steps, with real pauses, until every connected stall holds the
        # occupancy of the cars present, so each learns a change within a second or two.
        self.occupancy_sync = occupancy_sync
        self.occ_waits = 0
        self.sc = sc = plan.scenario
        self.net = net
        self.keys = keys
        k = plan.knobs
        self.coarse_ms = k["coarse_ms"]
        self.ticks = Ticks()
        ids = [sc.station(i) for i in range(1, sc.stalls + 1)]
        self.stalls = [Stall(self, i, ids[i - 1], keys.station(ids[i - 1])) for i in range(1, sc.stalls + 1)]
        for v in sc.vehicles:
            st = self.stalls[v.stall - 1]
            for s, pilot, ma in v.plan():
                st.plan.append((s * 1000, pilot, ma))
        for st in self.stalls:
            st.plan.sort(key=lambda p: p[0])
            st.plan_w = [p[0] for p in st.plan]
            st.changes = sorted(set(st.plan_w))
        self.truth = GroundTruth(sc, sc.stalls, configmod.connector_config(self.stall_config(self.stalls[0])))
        self._sched = []
        self._seq = 0
        for f in plan.faults:
            self._at(f["at"] * 1000, f)
        self.log = []  # what happened, for a failure report
        self.counts = collections.Counter()
        self.timed_out = None
        self.real_s = 0.0
        self.steps = 0

    # -- stalls ---------------------------------------------------------------

    def stall_config(self, st):
        k = self.plan.knobs
        d = {
            "site": self.sc.site,
            "station": st.station,
            "connector": 1,
            "station_key": st.key.hex(),
            "site_key": self.keys.site_key.hex(),
            "mqtt_host": "127.0.0.1",
            "mqtt_port": getattr(self.net, "port", 1883),
            "tariff": self.sc.tariff,
            "hardware": "sim",
            "sample_ms": FINE_MS,
            "tick_ms": self.coarse_ms,
            "pump_ms": k.get("pump_ms", self.coarse_ms),
            "heartbeat_s": k["heartbeat_s"],
            "resend_s": k["resend_s"],
            "outbox_window": k["outbox_window"],
            "wdt_ms": 60000,
            "mqtt_backoff_max_ms": 1000,
            "occupancy_ttl_s": 30 * 86400,
        }
        return configmod.validate(d)

    def note(self, line):
        self.log.append("%8.1fs %s" % (self.ticks.ms / 1000.0, line))

    def boot(self, st, w):
        cfg = self.stall_config(st)
        clock = MonoClock(self.ticks)
        base = (self.sc.start * 1000) + w
        late = self.plan.knobs.get("ntp_delay_s", 0) * 1000
        wall = FixedWall(lambda now, base=base: base + now if now >= late else None)
        link = self.net.make_link(st, lambda topic, payload, st=st: self._tap(st, topic, payload))
        app = App(cfg, st.fs, "", hw=CarHw(st, w, cfg), clock=clock, wall=wall, link=link, reset="power")
        app.boot()
        st.app = app
        st.boots += 1
        st.down_until = None
        st.died_w = None
        st.task = asyncio.ensure_future(self._life(st, app))
        self.note("%s boot %d" % (st.station, st.boots))

    async def _life(self, st, app):
        try:
            await app.run()
        except PowerCut:
            pass
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a firmware bug: a board would reset
            st.crashes.append((self.ticks.ms, repr(e)))
        if st.died_w is None:
            st.died_w = self.ticks.ms

    def _tap(self, st, topic, payload):
        # Every billing message a stall hands to its link: it must end up in the database.
        if not (topic.endswith("/event") or topic.endswith("/session")):
            return
        try:
            msg = wire.decode(bytes(payload), lambda s: st.key)
        except wire.WireError as e:
            st.crashes.append((self.ticks.ms, "published an undecodable message: " + e.code))
            return
        if msg.kind == wire.SESSION or msg.body.get("type") != "idle_tick":
            st.published[msg.seq] = msg.kind if msg.kind == wire.SESSION else msg.body.get("type")

    def powered(self, st):
        return st.app is not None and st.down_until is None and st.cut is None

    # -- faults ---------------------------------------------------------------

    def _at(self, w, what):
        self._seq += 1
        heapq.heappush(self._sched, (w, self._seq, what))

    async def _apply(self, f, now):
        kind = f["kind"]
        if kind == "power_cut":
            st = self.stalls[f["stall"] - 1]
            if not self.powered(st):
                self.note("%s power cut skipped (already down)" % st.station)
                return
            if f.get("budget") is not None:
                st.fs.budget = f["budget"]
                st.cut = {"down": f["down"] * 1000, "deadline": now + CUT_WAIT_S * 1000}
            else:
                st.cut = {"down": f["down"] * 1000, "deadline": now}
            self.note("%s power cut (%s), down %d s" % (st.station, "inside a write" if f.get("budget") is not None else "between writes", f["down"]))
        elif kind == "net_drop":
            targets = self.stalls if f["stall"] == 0 else [self.stalls[f["stall"] - 1]]
            for st in targets:
                st.net_down = True
                self.net.partition(st, True)
            self._at(now + f["dur"] * 1000, {"kind": "net_back", "stall": f["stall"]})
            self.note("net drop %s for %d s" % (f["stall"] or "all", f["dur"]))
        elif kind == "net_back":
            targets = self.stalls if f["stall"] == 0 else [self.stalls[f["stall"] - 1]]
            for st in targets:
                st.net_down = False
                self.net.partition(st, False)
            self.note("net back %s" % (f["stall"] or "all"))
        elif kind == "broker_restart":
            await self.net.broker_down(now)
            self._at(now + f["down"] * 1000, {"kind": "broker_up"})
            self.note("broker killed (no persistence) for %d s" % f["down"])
        elif kind == "broker_up":
            await self.net.broker_up(now)
            self.note("broker back, empty")
        elif kind == "bridge_crash":
            await self.net.bridge_crash(now, f["down"] * 1000)
            self.note("bridge crash armed/killed, restart after %d s" % f["down"])
        else:
            raise ValueError("unknown fault " + kind)

    async def _settle_cut(self, st, now):
        # A pending cut: the App died inside a write, or the deadline passed (cut between writes).
        if st.cut is None:
            return
        if st.fs.dead and st.died_w is None and not st.task.done():
            # The supply died inside a write the App did not see fail (an ack handled
            # in a link callback): the board is off now, whatever its tasks would do next.
            st.died_w = now
            st.app.kill()
            await st.task
        if not st.task.done():
            if now < st.cut["deadline"]:
                return
            st.died_w = now
            st.app.kill()
            await st.task
            self.counts["cuts_between_writes"] += 1
        else:
            self.counts["cuts_inside_writes"] += 1
        cut_w = st.died_w if st.died_w is not None else now
        up = -(-(cut_w + st.cut["down"]) // 1000) * 1000
        st.outages.append((cut_w, up))
        st.fs.budget = None
        st.fs = st.fs.reboot()
        st.cut = None
        st.app = None
        st.down_until = up
        self.note("%s powered off at %.1f s, back at %d s" % (st.station, cut_w / 1000.0, up // 1000))

    async def _reap(self, st, now):
        # An App that stopped without a cut: a firmware exception (a board resets), or a
        # PowerCut that surfaced elsewhere.
        if st.cut is not None or st.app is None or not st.task.done():
            return
        if st.fs.dead:
            st.cut = {"down": 0, "deadline": now}
            await self._settle_cut(st, now)
            return
        st.app = None
        st.fs = st.fs.reboot()
        st.down_until = -(-(now + 1000) // 1000) * 1000
        self.note("%s stopped (crash %s), reboots" % (st.station, st.crashes[-1][1] if st.crashes else "?"))

    # -- the run ----------------------------------------------------------------

    def _occupancy_known(self, now):
        # A powered stall that is not connected yet has not heard either: it
        # would take the retained (older) percentage seconds late, so wait for it
        # too (lockstep runs have no faults that keep a stall away for long).
        pct = self.truth.occupancy_at(self.sc.start + now // 1000)
        for st in self.stalls:
            c = st.core
            if c is not None and self.powered(st) and (not st.app.link.connected or c.occ != pct):
                return False
        return True

    def quiet(self):
        return all(st.quiet() for st in self.stalls) and not self.net.busy()

    def _step(self, now, end_w):
        busy = self.net.busy() or any(st.core is not None and len(st.core.outbox) for st in self.stalls)
        step = self.net.step_ms(busy)
        limits = [now + step]
        if self._sched:
            limits.append(self._sched[0][0])
        for st in self.stalls:
            if st.down_until is not None:
                limits.append(st.down_until)
            if st.cut is not None:
                limits.append(st.cut["deadline"])
        if now < end_w:
            limits.append(end_w)
        nxt = min(x for x in limits if x > now) if any(x > now for x in limits) else now + step
        return nxt - now

    async def run(self, real_limit_s=120.0, extra_virtual_s=12 * 3600):
        t0 = time.monotonic()
        end_w = self.plan.end_s * 1000
        limit_w = end_w + extra_virtual_s * 1000
        await self.net.start(self)
        for st in self.stalls:
            self.boot(st, 0)
        try:
            while True:
                now = self.ticks.ms
                while self._sched and self._sched[0][0] <= now:
                    await self._apply(heapq.heappop(self._sched)[2], now)
                for st in self.stalls:
                    await self._settle_cut(st, now)
                    await self._reap(st, now)
                for st in self.stalls:
                    if st.down_until is not None and st.down_until <= now:
                        self.boot(st, st.down_until)
                await self.net.step(now)
                if self.occupancy_sync and not self._occupancy_known(now):
                    self.occ_waits += 1
                    if self.occ_waits <= 1000:  # 100 s simulated, about 10 s real: then carry on regardless
                        await asyncio.sleep(0.01)
                        await self.ticks.run_for(100)
                        continue
                    if self.occ_waits == 1001:
                        self.note("occupancy did not converge")
                elif self.occupancy_sync:
                    self.occ_waits = 0
                if now >= end_w and not self._sched and self.quiet():
                    break
                if now >= end_w and now % 500000 < 5000 and os.environ.get("CHAOS_DEBUG"):
                    self.note("draining: " + "; ".join("%s outbox %s closing %s tab %s conn %s" % (
                        st.station, len(st.core.outbox) if st.core else None, len(st.core.closing) if st.core else None,
                        st.core.tab is not None if st.core else None, st.app.link.status() if st.app else None) for st in self.stalls) + " net busy %s" % self.net.busy())
                if now >= limit_w or time.monotonic() - t0 > real_limit_s:
                    self.timed_out = "not settled after %d s simulated, %.0f s real" % (now // 1000, time.monotonic() - t0)
                    break
                await self.ticks.run_for(self._step(now, end_w))
                self.steps += 1
        finally:
            for st in self.stalls:
                if st.app is not None:
                    st.app.stop()
            tasks = [st.task for st in self.stalls if st.task is not None and not st.task.done()]
            if tasks:
                await asyncio.wait(tasks, timeout=10)
            self.real_s = time.monotonic() - t0
        return self
