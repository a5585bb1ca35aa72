# The simulator's engine: N stall firmware instances (stall.app.App with simulated hardware) in one asyncio loop, a shared accelerated world clock, scripted cars, faults and the ground truth.
#
# Theory of operation
# -------------------
# World. One clock for the simulated world: world ms since the scenario's
# start, frozen at 0 while the stalls boot and connect, then running `speed`
# times real time. Unix time in the world is scenario.start + world ms.
#
# Stall. Each stall is the firmware's own App: its own config (identity,
# keys, the scenario's tariff as the initial tariff), journal folder (SimFs,
# the OsFs without fsync, under the state dir; or a MemFs), MonoClock,
# CarHardware (SimHardware
# whose pilot and current come from the cars' plan at the sampled instant)
# and MqttLink (its own broker connection). The MonoClock sits on a tick
# source that reads the world clock, wraps at 2**30 like a port, and pins
# its first reading to the boot instant, a whole world second: the stall's
# instants (monotonic ms // 1000 + a whole-second wall offset) are then
# exactly the world's seconds, so its timelines can be compared with the
# ground truth to the second. Wall time (NTP) is FixedWall on the world.
# The stalls' sleeps, their links' too, share timers (Wheel): the loop's timer heap stays small
# with thousands of stalls.
#
# Timing. Everything inside the firmware (sample, tick and pump periods,
# hold times, heartbeat, resend, occupancy TTL) runs on the world clock;
# MqttLink (keepalive, back-off, timeouts) stays on real time, as does the
# bridge. Defaults scale with speed and stall count so the process keeps up
# (see defaults()); docs/simulator.md explains what speed does to each.
#
# Faults. Pilot glitches and meter errors are scripted into the hardware at
# world instants (exactly one sample reads a glitch). Power cuts kill the
# App (no DISCONNECT: the broker publishes the will) and boot a new one on
# the same files at the next whole second after the downtime; on a MemFs the
# cut lands inside the next journal write instead (MemFs budget). Network
# drops point the stall's link at a closed port and drop the connection;
# the real port comes back after the duration.
#
# Observation. Session records are seen as the stall publishes them (a thin
# MqttLink subclass), matched to the car that made them and compared with
# the ground truth (host_tools.scenario.GroundTruth).
import asyncio
import bisect
import collections
import gc
import heapq
import math
import os
import random
import socket
import ssl as sslmod
import sys
import time

from host_tools.errors import UserError
from host_tools.scenario import GroundTruth, hms
from protocol import fee, wire
from protocol.journal import OsFs

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRMWARE = os.path.join(_REPO, "firmware")
if FIRMWARE not in sys.path:
    sys.path.insert(0, FIRMWARE)

from stall import config as configmod  # noqa: E402
from stall.app import App  # noqa: E402
from stall.clock import MonoClock  # noqa: E402
from stall.hw import SimHardware  # noqa: E402
from stall.memfs import MemFs, PowerCut  # noqa: E402
from stall.mqtt_link import MqttLink  # noqa: E402
from stall.ntp import FixedWall  # noqa: E402

_MASK = 0x3FFFFFFF
SAMPLE_BUDGET = 5000  # samples per real second across all stalls, for the default sample_ms
LATE_EDGES_MS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 400, 500, 750, 1000, 2000)  # sampler lateness histogram (real ms)
_ZERO_DECIMALS = ("JPY", "KRW", "CLP", "ISK", "VND", "XAF", "XOF", "HUF")


def money(minor, currency):
    if currency in _ZERO_DECIMALS:
        return "%s %d" % (currency, minor)
    return "%s %d.%02d" % (currency, minor // 100, minor % 100)


def duration_text(s):
    s = int(s)
    if s >= 3600:
        return "%dh%02dm%02ds" % (s // 3600, s % 3600 // 60, s % 60)
    if s >= 60:
        return "%dm%02ds" % (s // 60, s % 60)
    return "%ds" % s


def defaults(stalls, speed):
    """Timing defaults that let one process keep `stalls` stalls at `speed`.

    sample_ms (world ms): about SAMPLE_BUDGET samples per real second in
    total, at least 100 and at most 500 (a status change must still land in
    its own second); pump_ms twice that, at most 1000 (how soon a new message
    goes out). link_poll_ms (real): the link's ticker (pings, hang
    check), from 100 ms up to 2 s with a thousand stalls and more.
    resend_s, occupancy_ttl_s (world s): at least 10 s and 3 minutes of real
    time, because acks and the bridge's occupancy reports come in real time."""
    s = int(math.ceil(stalls * speed * 1000 / SAMPLE_BUDGET / 10.0)) * 10
    sample = min(500, max(100, s))
    return {
        "sample_ms": sample,
        "pump_ms": min(1000, 2 * sample),
        "tick_ms": 1000,
        "link_poll_ms": min(2000, max(100, stalls)),
        "resend_s": max(60, int(math.ceil(10 * speed))),
        "occupancy_ttl_s": max(900, int(math.ceil(180 * speed))),
        "mqtt_backoff_max_ms": 5000,
    }


class SimFs(OsFs):
    """The journal's OsFs without fsync. A simulated power cut kills the App,
    not the machine: what was written is in the OS page cache and survives
    it, so an fsync per journal write would only block the shared event loop
    (milliseconds each, thousands of stalls). Power cuts inside a write are
    what MemFs is for (--memfs)."""

    def rename(self, src, dst):
        os.replace(src, dst)

    def commit(self, f):
        f.flush()
        f.close()


class World:
    """Simulated time: world ms since the scenario start, frozen until start()."""

    def __init__(self, speed):
        if not speed > 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._t0 = None
        self._frozen = 0
        # A timer quantum of 5 real ms, or 20 world ms when that is shorter:
        # sleeps end at most that much late.
        self.wheel = Wheel(min(0.005, 0.02 / speed))

    @property
    def running(self):
        return self._t0 is not None

    def start(self):
        if self._t0 is None:
            self._t0 = time.monotonic() - self._frozen / 1000.0 / self.speed

    def ms(self):
        if self._t0 is None:
            return self._frozen
        return int((time.monotonic() - self._t0) * 1000 * self.speed)

    def real_s(self, world_ms):
        """Real seconds from now until world_ms (<= 0 when past)."""
        return (world_ms - self.ms()) / 1000.0 / self.speed


class Wheel:
    """Shared sleep timers: sleepers due within the same `quantum` of real
    time share one loop timer. Thousands of stalls each sleeping several
    times a second would otherwise keep tens of thousands of asyncio timers
    in the loop's heap, whose comparisons run in Python."""

    def __init__(self, quantum_s):
        self.q = quantum_s
        self.buckets = {}
        self.loop = None

    def sleep(self, delay_s):
        """An awaitable (a future, no coroutine around it) done after delay_s real seconds."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        fut = loop.create_future()
        key = -int(-(loop.time() + delay_s) // self.q)  # round the due time up to the quantum
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = []
            loop.call_at(key * self.q, self._fire, key)
        b.append(fut)
        return fut

    def sleep_ms(self, ms):
        """Real milliseconds, for MqttLink's sleep_ms (its ticker and back-off run on real time)."""
        return self.sleep(ms / 1000.0)

    def _fire(self, key):
        for fut in self.buckets.pop(key, ()):
            if not fut.done():
                fut.set_result(None)


class WorldTicks:
    """A port-like tick source over the world clock: wraps at 2**30, and its
    first reading is pinned to boot_w (a whole world second at or before
    now), so a MonoClock built on it counts from that instant. Sleeps go
    through the world's Wheel."""

    def __init__(self, world, boot_w, start=0):
        self.world = world
        self.boot_w = boot_w
        self.start = start
        self._pinned = True
        self._wheel = getattr(world, "wheel", None)

    def ticks_ms(self):
        if self._pinned:
            self._pinned = False
            return self.start & _MASK
        return (self.start + self.world.ms() - self.boot_w) & _MASK

    def ticks_diff(self, a, b):
        return ((a - b + 0x20000000) & _MASK) - 0x20000000

    def sleep_ms(self, ms):
        if self._wheel is not None:
            return self._wheel.sleep(ms / 1000.0 / self.world.speed)
        return asyncio.sleep(ms / 1000.0 / self.world.speed)


class CarHardware(SimHardware):
    """SimHardware driven by the stall's plan: at each poll the pilot and the
    car's draw are those of the plan at that world instant; scripted pilot
    glitches replace exactly one sample; meter errors cover a window."""

    def __init__(self, stall, boot_w, stale_ms):
        super().__init__(volts=stall.sim.scenario.volts, stale_ms=stale_ms, energy_wh=stall.energy_wh)
        self.stall = stall
        self.boot_w = boot_w
        self._i = -1
        self._last = None

    def poll(self, now_ms):
        st = self.stall
        w = self.boot_w + now_ms
        plan = st.plan
        i = self._i
        n = len(plan)
        while i + 1 < n and plan[i + 1][0] <= w:
            i += 1
        self._i = i
        if i >= 0:
            pilot, ma = plan[i][1], plan[i][2]
        else:
            pilot, ma = "A", 0
        g = st.glitches
        if g and g[0][0] <= w:
            pilot = g.popleft()[1]
            st.sim._note(st, "pilot_glitch", w, 0, "pilot read " + pilot + " for one sample")
        me = False
        for a, b in st.meter_windows:
            if a <= w < b:
                me = True
                break
        self.pilot = pilot
        self.draw_ma = ma
        self.meter_error = me
        SimHardware.poll(self, now_ms)
        st.energy_wh = self.energy_wh
        last = self._last
        self._last = now_ms
        if last is not None:
            st.sim._sampled(now_ms - last)


class SimLink(MqttLink):
    """MqttLink as the board runs it, plus a look at each session record that goes out."""

    sim_stall = None

    def publish(self, topic, payload, qos=0, retain=False):
        r = MqttLink.publish(self, topic, payload, qos, retain)
        st = self.sim_stall
        if r is not False and st is not None and topic == st.t_session:
            st.sim._on_session(st, payload)
        return r


class Stall:
    """One simulated stall: identity, files, its car plan and its current App."""

    def __init__(self, sim, number, station, key):
        self.sim = sim
        self.number = number
        self.station = station
        self.key = key
        self.root = ""
        self.fs = None
        self.plan = []  # [(world ms, pilot, draw mA)]
        self.vehicles = []
        self.glitches = collections.deque()  # [(world ms, pilot)]
        self.meter_windows = []  # [(from world ms, to world ms)]
        self.energy_wh = 0
        self.app = None
        self.task = None
        self.boots = 0
        self.down = False  # powered off
        self.cut = None  # pending power cut: down ms
        self.cut_deadline = None
        self.net_down = False
        self.outages = []  # [(cut world ms, boot world ms)]
        self.sessions = {}  # session id -> record
        self.console = None  # (reader, write) when the console is exposed
        self.console_path = None
        self.crashes = 0
        self.erased = False  # factory reset from the console: unprovisioned from then on
        self.t_session = wire.station_topic(sim.site, station, "session")

    @property
    def core(self):
        return self.app.core if self.app is not None else None

    def unacked(self):
        c = self.core
        return 0 if c is None else len(c.outbox)

    def busy(self):
        """Records still to go out: unacked messages, sessions waiting to be encoded, an open session."""
        if self.erased:
            return False  # factory reset: whatever it held is gone
        c = self.core
        if c is None or self.down:
            return True
        return len(c.outbox) > 0 or bool(c.closing) or c.tab is not None


def _number(st):
    return st.number


class Report:
    """What a run did: exit status, counts, lag metrics, unacked records."""

    def __init__(self):
        self.done = False  # scenario over and every record acked
        self.unacked = {}  # station -> unacked records
        self.sessions = 0
        self.expected = 0
        self.mismatches = []
        self.fees = 0
        self.truth_fees = 0
        self.currency = "USD"
        self.world_s = 0
        self.real_s = 0.0
        self.lag = {}
        self.reconnects = 0
        self.rejected = {}
        self.watchdog_late = 0
        self.missing = []  # cars of the scenario with no session record

    @property
    def exit_code(self):
        return 0 if self.done and not self.unacked else 1


class Simulation:
    """N stalls of the firmware against a real broker.

    scenario     host_tools.scenario.Scenario
    broker       (host, port), or a host_tools.bridge.mqttconn.BrokerOptions
    keys         host_tools.sim_keys.Keys (random keys when None)
    stalls       how many stalls to run (>= the scenario's; the rest stay empty)
    speed        world seconds per real second
    state_dir    journal folders under this directory (OsFs); None: one MemFs per stall
    seed         for random faults and the stalls' tick counters
    faults       [host_tools.sim_faults.Fault] (placed: no random ones left)
    config       extra stall config keys (validated by stall.config)
    timing       overrides of defaults(): sample_ms, pump_ms, tick_ms, link_poll_ms, ...
    out          a function taking one line (print); None for silence
    console      function(Stall) -> (path, (reader, write)) to expose consoles
    wait_occupancy  seconds to wait, before the world starts, for every stall
                 to hold an occupancy report (the bridge's) and, within the
                 same time, for their start-up records to be acked; 0 to skip
    ticks_start  first tick value of every stall ("random": spread over the
                 2**30 period with the seed, so some stalls wrap mid-run)
    boot_spread_s  each stall has been up a random whole number of seconds
                 below this when the scenario starts (0: all boot at its start)
    probe        measure the event loop's lag (one probe per loop is enough
                 when several simulations share it)"""

    def __init__(self, scenario, broker, keys=None, stalls=None, speed=60.0, state_dir=None, seed=0, faults=(), config=None,
                 timing=None, out=print, console=None, wait_occupancy=0.0, ticks_start=0, connect_timeout=30.0, boot_spread_s=600,
                 probe=True):
        from host_tools import sim_keys

        self.scenario = scenario
        self.site = scenario.site
        self.n = stalls or scenario.stalls
        if self.n < scenario.stalls:
            raise UserError("--stalls %d is fewer than the scenario's %d stalls" % (self.n, scenario.stalls))
        self.speed = float(speed)
        self.world = World(self.speed)
        self.tariff = fee.parse_tariff(scenario.tariff)
        if isinstance(broker, tuple):
            self.host, self.port = broker
            self.username = self.password = None
            self.ssl = None
        else:
            self.host, self.port = broker.host, broker.port
            self.username, self.password = broker.username, broker.password
            self.ssl = _ssl_context(broker) if broker.tls else None
        self.state_dir = state_dir
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = list(faults)
        self.extra_cfg = dict(config or {})
        self.timing = defaults(self.n, self.speed)
        self.timing.update(timing or {})
        self.out = out
        self.console_factory = console
        self.wait_occupancy = wait_occupancy
        self.ticks_start = ticks_start
        self.connect_timeout = connect_timeout
        self.boot_spread_s = boot_spread_s
        self.probe = probe
        # Above every number these station ids used before (as `overstay flash` sets it).
        self.seq_floor = time.time_ns() // 1000000
        ids = [scenario.station(i, self.n) for i in range(1, self.n + 1)]
        self.keys = keys or sim_keys.random_keys(self.site, ids)
        self.stalls = [Stall(self, i, ids[i - 1], self.keys.station(ids[i - 1])) for i in range(1, self.n + 1)]
        self.by_station = {st.station: st for st in self.stalls}
        cfg = self.stall_config(self.stalls[0])
        self.truth = GroundTruth(scenario, self.n, configmod.connector_config(cfg))
        self.applied = []  # faults as they happened: dicts
        self.sessions = {}  # session id -> (stall, record, vehicle or None)
        self._actions = []  # heap of (world ms, seq, fn)
        self._cuts = set()  # stalls with a cut_deadline (MemFs power cuts waiting for a journal write)
        self._driver_kick = None  # asyncio.Event: _drive has something new to look at
        self._seq = 0
        self._stopping = False
        self._dead = None  # a socket bound, not listening: a closed port for network drops
        self.samples = 0
        self.late_hist = [0] * (len(LATE_EDGES_MS) + 1)
        self.max_gap_ms = 0
        self.loop_lags = []
        self.watchdog_late = 0
        self.started_real = None
        self.end_w = scenario.end_s * 1000
        self._probe = None
        self._driver = None
        self._built = False
        self._plans()

    # -- building -----------------------------------------------------------------

    def _plans(self):
        for v in self.scenario.vehicles:
            st = self.stalls[v.stall - 1]
            st.vehicles.append(v)
            for s, pilot, ma in v.plan():
                st.plan.append((s * 1000, pilot, ma))
        for st in self.stalls:
            st.vehicles.sort(key=lambda v: v.arrive_s)
            st.plan.sort(key=lambda p: p[0])
        for f in self.faults:
            targets = self.stalls if f.stall == 0 else [self.stalls[f.stall - 1]]
            for st in targets:
                w = f.at_s * 1000
                if f.kind == "pilot_glitch":
                    st.glitches.append((w, f.pilot))
                elif f.kind == "meter_error":
                    st.meter_windows.append((w, w + f.dur_s * 1000))
                elif f.kind == "power_cut":
                    self._at(w, self._power_cut_fn(st, f.dur_s * 1000))
                else:
                    self._at(w, self._net_drop_fn(st, f.dur_s * 1000))
        for st in self.stalls:
            st.glitches = collections.deque(sorted(st.glitches))

    def stall_config(self, st):
        t = self.timing
        d = {
            "site": self.site,
            "station": st.station,
            "connector": 1,
            "station_key": st.key.hex(),
            "site_key": self.keys.site_key.hex(),
            "mqtt_host": self.host,
            "mqtt_port": self.port,
            "mqtt_user": self.username,
            "mqtt_password": self.password,
            "mqtt_tls": self.ssl is not None,
            "tariff": self.scenario.tariff,
            "hardware": "sim",
            "seq_floor": self.seq_floor,
        }
        for k in ("sample_ms", "pump_ms", "tick_ms", "resend_s", "occupancy_ttl_s", "mqtt_backoff_max_ms"):
            d[k] = t[k]
        d.update(self.extra_cfg)
        try:
            return configmod.validate(d)
        except configmod.ConfigError as e:
            raise UserError("stall config: " + str(e)) from None

    def _fs_for(self, st):
        if self.state_dir is None:
            return MemFs(), ""
        return SimFs(), os.path.join(self.state_dir, st.station) + "/"

    def _make_app(self, st, boot_w, reset="power"):
        if st.erased:
            # Factory reset: no config, no keys; the console and watchdog run, nothing else.
            cfg = configmod.defaults()
            clock = MonoClock(WorldTicks(self.world, boot_w, 0))
            app = App(cfg, st.fs, st.root, hw=CarHardware(st, boot_w, cfg["meter_stale_ms"]), clock=clock, link=False, reset=reset, console=st.console)
            st.app = app
            st.boots += 1
            st.down = False
            return app
        cfg = self.stall_config(st)
        saved = None
        try:
            saved = configmod.load(st.fs, st.root + "config.json") if st.fs.size(st.root + "config.json") is not None else None
        except (ValueError, OSError):
            saved = None
        if saved is not None and saved["station"] == st.station:
            cfg = saved  # a remote config change survives reboots, as on a board
        start = self.ticks_start
        if start == "random":
            start = self.rng.randrange(0, 1 << 30)
        clock = MonoClock(WorldTicks(self.world, boot_w, start))
        hw = CarHardware(st, boot_w, cfg["meter_stale_ms"])
        link = self._link(st, cfg)
        # NTP answers the world's time plus half a second: the stall keeps a
        # whole-second offset, floor((unix - now) / 1000), and reads its clock
        # again a few microseconds after the answer; the half second absorbs
        # that, so the stall's instants are exactly the world's seconds.
        base = self.scenario.start * 1000 + boot_w + 500
        wall = FixedWall(lambda now, base=base: base + now)
        app = App(cfg, st.fs, st.root, hw=hw, clock=clock, wall=wall, link=link, reset=reset, console=st.console)
        app.boot()
        st.app = app
        st.boots += 1
        st.down = False
        return app

    def _link(self, st, cfg):
        core_topics = {leaf: wire.station_topic(self.site, st.station, leaf) for leaf in ("avail", "ack", "cmd")}
        link = SimLink(
            "127.0.0.1" if st.net_down else cfg["mqtt_host"],
            self._dead_port() if st.net_down else cfg["mqtt_port"],
            cfg["station"],
            username=cfg["mqtt_user"],
            password=cfg["mqtt_password"],
            ssl=self.ssl,
            keepalive_s=cfg["mqtt_keepalive_s"],
            backoff_max_ms=cfg["mqtt_backoff_max_ms"],
            will=(core_topics["avail"], wire.AVAIL_OFFLINE, 1, True),
            clean_session=False,
            subscriptions=[(core_topics["ack"], 1), (core_topics["cmd"], 1), (wire.site_topic(self.site, "occupancy"), 1), (wire.site_topic(self.site, "tariff"), 1)],
            poll_ms=self.timing["link_poll_ms"],
            sleep_ms=self.world.wheel.sleep_ms,  # real ms on the shared timers: no loop timer per stall
        )
        link.sim_stall = st
        return link

    def _dead_port(self):
        if self._dead is None:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
            self._dead = s
        return self._dead.getsockname()[1]

    # -- running --------------------------------------------------------------------

    async def start(self):
        """Boot every stall (world frozen at 0), connect them, then start the world."""
        if self._built:
            return
        self._built = True
        for st in self.stalls:
            if self.state_dir is not None:
                os.makedirs(os.path.join(self.state_dir, st.station), exist_ok=True)
            st.fs, st.root = self._fs_for(st)
            if self.console_factory is not None:
                got = self.console_factory(st)
                if got is not None:
                    st.console_path, st.console = got
                    self._say("%s console on %s" % (st.station, st.console_path))
            # Each stall has been up for a while when the scenario starts (a whole
            # number of seconds, up to boot_spread_s): their uptime checkpoints
            # and heartbeats then do not all fall on the same instant.
            up_s = self.rng.randrange(0, self.boot_spread_s) if self.boot_spread_s > 0 else 0
            self._make_app(st, -1000 * up_s)
        gc.collect()
        if hasattr(gc, "freeze"):
            gc.freeze()  # thousands of long-lived objects: keep them out of the collector's scans
        # Start the stalls' tasks spread over one sampling period, so their
        # periodic wake-ups do not all fall on the same instant (the world is
        # still frozen: this changes no simulated time).
        spread = min(1.0, self.timing["sample_ms"] / 1000.0 / self.speed)
        groups = 20 if self.n >= 200 else 1
        for g in range(groups):
            for st in self.stalls[g::groups]:
                st.task = asyncio.create_task(self._life(st))
            if groups > 1:
                await asyncio.sleep(spread / groups)
        if self.probe:
            self._probe = asyncio.create_task(self._lag_probe())
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.connect_timeout:
            if all(st.app.link.connected for st in self.stalls):
                break
            await asyncio.sleep(0.05)
        down = [st.station for st in self.stalls if not st.app.link.connected]
        if down:
            err = self.by_station[down[0]].app.link.last_error
            raise UserError("%d of %d stalls could not connect to the broker at %s:%s within %g s (%s)" % (len(down), self.n, self.host, self.port, self.connect_timeout, err))
        self._say("%d stalls connected to %s:%d in %.1f s" % (self.n, self.host, self.port, time.monotonic() - t0))
        if self.wait_occupancy > 0:
            t1 = time.monotonic()
            while time.monotonic() - t1 < self.wait_occupancy:
                if all(st.core.occ is not None for st in self.stalls):
                    break
                await asyncio.sleep(0.05)
            else:
                self._say("no occupancy report from a bridge yet: tier rates wait for one (occupancy unknown prices at the base rate)")
            # The bridge answers: let the start-up traffic (boot events and
            # states out, their acks in) settle before the clock runs, within
            # the same budget, so the first simulated seconds are not sampled
            # behind a burst of acks and journal writes.
            while time.monotonic() - t1 < self.wait_occupancy:
                if all(st.core.occ is not None and len(st.core.outbox) == 0 for st in self.stalls):
                    break
                await asyncio.sleep(0.05)
        _gc_steady()
        self.world.start()
        self.started_real = time.monotonic()
        self._driver = asyncio.create_task(self._drive())
        self._say("world started at %s, speed %gx, scenario ends at %s (%s simulated)" % (
            hms(self.scenario.start), self.speed, hms(self.scenario.start + self.scenario.end_s), duration_text(self.scenario.end_s)))

    async def run(self, drain_timeout=30.0, until_s=None):
        """start(), run the scenario to its end, wait until every record is acked
        (at most drain_timeout real seconds after the end), stop. Returns a Report."""
        end_w = self.end_w if until_s is None else until_s * 1000
        drain_from = None
        try:
            await self.start()
            while True:
                await asyncio.sleep(0.1)
                self._watch()
                if self.world.ms() < end_w or self._pending_faults():
                    continue
                if drain_from is None:
                    drain_from = time.monotonic()
                if not any(st.busy() for st in self.stalls):
                    break
                if time.monotonic() - drain_from >= drain_timeout:
                    break
        finally:
            rep = await self.stop()
        return rep

    def _pending_faults(self):
        return bool(self._actions) or any(st.down or st.cut is not None for st in self.stalls)

    async def stop(self):
        """Stop every stall cleanly (DISCONNECT) and return the Report."""
        rep = self.report()
        self._stopping = True
        for t in (self._driver, self._probe):
            if t is not None:
                t.cancel()
        for st in self.stalls:
            if st.app is not None:
                st.app.stop()
        tasks = [st.task for st in self.stalls if st.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        await asyncio.sleep(0.05)
        if self._dead is not None:
            self._dead.close()
            self._dead = None
        _gc_normal()
        return rep

    async def _life(self, st):
        # One stall's power: run its App; after a cut or a crash, boot it again.
        while not self._stopping:
            app = st.app
            crash = None
            try:
                await app.run()
            except PowerCut:
                pass
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a firmware bug: the board would reset
                crash = e
            if self._stopping:
                return
            now = self.world.ms()
            if st.cut is not None:
                down_ms = st.cut
                st.cut = None
                st.cut_deadline = None
                st.down = True
                if isinstance(st.fs, MemFs) and st.fs.dead:
                    st.fs = st.fs.reboot()
                up = -(-(now + down_ms) // 1000) * 1000
                st.outages.append((now, up))
                self._note(st, "power_cut", now, up - now, "power back at " + hms(self.scenario.start + up // 1000))
                await self._sleep_until(up)
                if self._stopping:
                    return
                self._make_app(st, up, "power")
                self._note(st, "boot", up, 0, "boot %d after a power cut" % st.boots)
                continue
            req = getattr(app.console, "requested", None) if crash is None else None
            if req in ("reboot", "factory-reset"):
                # The technician asked (stall console): the board resets; after a
                # factory reset it comes up unprovisioned, its files erased.
                if req == "factory-reset":
                    st.erased = True
                up = -(-(now + 1000) // 1000) * 1000
                self._note(st, "console_" + req.replace("-", "_"), now, up - now, "the stall restarts at " + hms(self.scenario.start + up // 1000))
                await self._sleep_until(up)
                if self._stopping:
                    return
                self._make_app(st, up, "soft")
                continue
            if crash is not None:
                st.crashes += 1
                self._say("%s %s crashed: %s: %s (rebooting)" % (self._hms(now), st.station, type(crash).__name__, crash))
                up = -(-(now + 1000) // 1000) * 1000
                await self._sleep_until(up)
                if self._stopping:
                    return
                if isinstance(st.fs, MemFs) and st.fs.dead:
                    st.fs = st.fs.reboot()
                self._make_app(st, up, "soft")
                continue
            return  # stopped

    async def _sleep_until(self, w):
        while not self._stopping:
            left = self.world.real_s(w)
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.25))

    # -- faults ------------------------------------------------------------------------

    def _at(self, w, fn):
        self._seq += 1
        heapq.heappush(self._actions, (w, self._seq, fn))
        self._wake_driver()

    def _wake_driver(self):
        if self._driver_kick is not None:
            self._driver_kick.set()

    async def _drive(self):
        # Runs the fault actions at their instants and the MemFs cuts' deadlines.
        # With nothing pending it waits for _wake_driver(): a run without faults
        # costs no wake-ups (the benchmark runs a hundred sites on one loop).
        kick = self._driver_kick = asyncio.Event()
        while True:
            acts = self._actions
            now = self.world.ms()
            while acts and acts[0][0] <= now:
                fn = heapq.heappop(acts)[2]
                fn(now)
            for st in sorted(self._cuts, key=_number):
                if st.cut_deadline is None or st.app is None:
                    self._cuts.discard(st)
                elif now >= st.cut_deadline:
                    st.cut_deadline = None
                    self._cuts.discard(st)
                    st.app.kill()  # no journal write came along: cut between writes
            if not acts and not self._cuts:
                kick.clear()
                await kick.wait()
                continue
            wait = 0.05 if not acts else min(0.05, max(0.0, self.world.real_s(acts[0][0])))
            await asyncio.sleep(wait)

    def _power_cut_fn(self, st, down_ms):
        return lambda now: self._power_cut(st, down_ms)

    def _net_drop_fn(self, st, dur_ms):
        return lambda now: self._net_drop(st, dur_ms, now)

    def _power_cut(self, st, down_ms):
        if st.down or st.cut is not None or st.app is None:
            self._say("%s %s power cut skipped: the stall is already off" % (self._hms(self.world.ms()), st.station))
            return False
        st.cut = down_ms
        if isinstance(st.fs, MemFs):
            # Cut inside the next journal write: the supply dies a few bytes in.
            # No write within a heartbeat period (and a bit): cut between writes.
            st.fs.budget = self.rng.randint(0, 120)
            st.cut_deadline = self.world.ms() + st.app.cfg["heartbeat_s"] * 1000 + 5000
            self._cuts.add(st)
            self._wake_driver()
        else:
            st.app.kill()
        return True

    def _net_drop(self, st, dur_ms, now):
        if st.net_down:
            return
        st.net_down = True
        self._note(st, "net_drop", now, dur_ms, "network back at " + hms(self.scenario.start + (now + dur_ms) // 1000))
        link = st.app.link if st.app is not None else None
        if link:
            link.host = "127.0.0.1"
            link.port = self._dead_port()
            link.drop("network drop (simulated)")
        self._at(now + dur_ms, lambda t: self._net_back(st, t))

    def _net_back(self, st, now):
        st.net_down = False
        link = st.app.link if st.app is not None else None
        if link:
            link.host = st.app.cfg["mqtt_host"]
            link.port = st.app.cfg["mqtt_port"]
        self._note(st, "net_back", now, 0, "network back")

    # Inject while running (tests, the demo); instants are "now".
    def power_cut(self, stall, down_s=30):
        """Cut stall number `stall`'s power now for down_s simulated seconds."""
        return self._power_cut(self.stalls[stall - 1], down_s * 1000)

    def net_drop(self, stall, duration_s):
        """Cut stall number `stall` (0 = every stall) off the network now for duration_s simulated seconds."""
        targets = self.stalls if stall == 0 else [self.stalls[stall - 1]]
        now = self.world.ms()
        for st in targets:
            self._net_drop(st, duration_s * 1000, now)

    def glitch(self, stall, pilot="A"):
        """The next sample of stall number `stall` reads `pilot`."""
        st = self.stalls[stall - 1]
        st.glitches.appendleft((self.world.ms(), pilot))

    def meter_error(self, stall, duration_s):
        st = self.stalls[stall - 1]
        now = self.world.ms()
        st.meter_windows.append((now, now + duration_s * 1000))
        self._note(st, "meter_error", now, duration_s * 1000, "meter reads fail")

    # -- observation ---------------------------------------------------------------------

    def _hms(self, w):
        return hms(self.scenario.start + w // 1000)

    def _say(self, line):
        if self.out is not None:
            self.out(line)

    def _note(self, st, kind, w, dur_ms, text):
        self.applied.append({"kind": kind, "stall": st.number, "station": st.station, "at": self.scenario.start + w // 1000, "world_ms": w, "dur_ms": dur_ms})
        self._say("%s %s %s: %s" % (self._hms(w), st.station, kind.replace("_", " "), text))

    def _sampled(self, gap_ms):
        self.samples += 1
        late = (gap_ms - self.timing["sample_ms"]) / self.speed
        if gap_ms > self.max_gap_ms:
            self.max_gap_ms = gap_ms
        self.late_hist[bisect.bisect_left(LATE_EDGES_MS, late)] += 1

    async def _lag_probe(self):
        # Event-loop lag: how late a 20 ms sleep wakes up (real time).
        lags = self.loop_lags
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.02)
            lag = time.perf_counter() - t - 0.02
            if len(lags) < 500000:
                lags.append(lag)

    def _watch(self):
        for st in self.stalls:
            if st.app is not None and st.app.late is not None and not st.down:
                self.watchdog_late += 1

    def vehicle_for(self, st, rec):
        t0 = self.scenario.start
        for v in st.vehicles:
            if t0 + v.arrive_s - 2 <= rec["plug_in"] <= t0 + v.unplug_s:
                return v
        return None

    def outages_for(self, rec):
        """[(t_down, t_up)] of a record: each Unavailable entry to the next status (the controller's downtime)."""
        out = []
        sts = [e for e in rec["timeline"] if "status" in e]
        for i, e in enumerate(sts):
            if e["status"] == "Unavailable" and i + 1 < len(sts):
                out.append((e["t"], sts[i + 1]["t"]))
        return out

    def occupancy_delay_s(self):
        """How late (world s) a stall may learn an occupancy change: about a real second of bridge and broker time."""
        return max(30, int(math.ceil(self.speed)))

    def _on_session(self, st, payload):
        try:
            msg = wire.decode(bytes(payload), lambda s: st.key)
        except wire.WireError:
            return
        rec = msg.body
        sid = rec["session_id"]
        if sid in self.sessions:
            return
        v = self.vehicle_for(st, rec)
        self.sessions[sid] = (st, rec, v)
        st.sessions[sid] = rec
        cur = rec["currency"]
        line = "%s %s session %s: plug %s, unplug %s, idle %s, billed %d min, fee %s" % (
            hms(rec["unplug"]), st.station, sid, hms(rec["plug_in"]), hms(rec["unplug"]), duration_text(rec["idle_s"]), rec["billed_min"], money(rec["fee"], cur))
        if v is None:
            line += " (no car of the scenario)"
        else:
            lo, hi = self.truth.fee_range(v, self.occupancy_delay_s(), self.outages_for(rec))
            if lo <= rec["fee"] <= hi:
                line += " = truth" if lo == hi else " (truth %s..%s)" % (money(lo, cur), money(hi, cur))
            else:
                line += " != truth %s" % (money(lo, cur) if lo == hi else money(lo, cur) + ".." + money(hi, cur))
        self._say(line)

    def report(self):
        r = Report()
        r.world_s = self.world.ms() // 1000
        r.real_s = time.monotonic() - self.started_real if self.started_real else 0.0
        r.expected = len(self.scenario.vehicles)
        r.sessions = len(self.sessions)
        r.currency = self.tariff.currency
        matched = set()
        for sid, (st, rec, v) in self.sessions.items():
            r.fees += rec["fee"]
            if v is None:
                r.mismatches.append((st.station, sid, "no car of the scenario"))
                continue
            matched.add(v.index)
            lo, hi = self.truth.fee_range(v, self.occupancy_delay_s(), self.outages_for(rec))
            if not lo <= rec["fee"] <= hi:
                r.mismatches.append((st.station, sid, "fee %d, truth %d..%d" % (rec["fee"], lo, hi)))
        for v in self.scenario.vehicles:
            r.truth_fees += self.truth.quote(v)["fee"]
        for st in self.stalls:
            n = st.unacked()
            c = st.core
            if c is not None:
                n += len(c.closing)
                for k, x in c.rejected.items():
                    r.rejected[k] = r.rejected.get(k, 0) + x
            if n or st.down:
                r.unacked[st.station] = n
            if st.app is not None and st.app.link:
                r.reconnects += st.app.link.reconnects
        r.missing = [v for v in self.scenario.vehicles if v.index not in matched]
        r.watchdog_late = self.watchdog_late
        r.lag = self.lag_stats()
        r.done = self.world.ms() >= self.end_w and not r.unacked and not r.missing
        return r

    def lag_stats(self):
        lags = sorted(self.loop_lags)
        out = {"loop_samples": len(lags), "samples": self.samples, "max_sample_gap_ms": self.max_gap_ms}
        if lags:
            out["loop_p50_ms"] = lags[len(lags) // 2] * 1000
            out["loop_p99_ms"] = lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000
            out["loop_max_ms"] = lags[-1] * 1000
        total = sum(self.late_hist)
        if total:
            acc = 0
            p99 = None
            for i, c in enumerate(self.late_hist):
                acc += c
                if p99 is None and acc >= total * 0.99:
                    p99 = LATE_EDGES_MS[i] if i < len(LATE_EDGES_MS) else float("inf")
            out["sample_late_p99_le_ms"] = p99
            out["late_hist"] = list(self.late_hist)
        return out

    def summary_lines(self, rep):
        cur = rep.currency
        lines = []
        lines.append("sim: %d of %d cars' sessions closed, fees %s (truth %s), %d unacked record(s), %d fee mismatch(es)" % (
            rep.sessions, rep.expected, money(rep.fees, cur), money(rep.truth_fees, cur), sum(rep.unacked.values()), len(rep.mismatches)))
        lag = rep.lag
        lines.append("sim: %d stalls at %gx: %s simulated in %.1f s real; loop lag p99 %.1f ms (max %.1f ms); sample gap max %d ms world; reconnects %d; commands refused %s" % (
            self.n, self.speed, duration_text(rep.world_s), rep.real_s, lag.get("loop_p99_ms", 0.0), lag.get("loop_max_ms", 0.0),
            lag.get("max_sample_gap_ms", 0), rep.reconnects, sum(rep.rejected.values())))
        for st_id, sid, why in rep.mismatches:
            lines.append("sim: mismatch %s %s: %s" % (st_id, sid, why))
        for v in rep.missing:
            lines.append("sim: no session yet for %s on stall %d (arrived %s)" % (v.label(), v.stall, hms(self.scenario.start + v.arrive_s)))
        for st_id in sorted(rep.unacked):
            lines.append("sim: unacked: %s holds %d record(s)" % (st_id, rep.unacked[st_id]))
        if rep.done:
            lines.append("sim: done: the scenario is complete and every record is acked by the bridge")
        return lines


# The collector in steady state. A running simulator churns through tens of
# thousands of short-lived objects a second (a future per sleep, a handle per
# wake-up) while its live set of young objects stays large (every sleeping
# task's future); CPython collects generation 0 after 700 more allocations
# than frees, and each such collection walks that whole live set: some 50 ms
# with 2,000 stalls, every two seconds. The connections and tasks made while
# connecting are frozen like the boot objects, and generation 0 is collected
# only after GC_GEN0 net allocations (a reference cycle lives a little longer).
GC_GEN0 = 100000
_gc_saved = []


def _gc_steady():
    if hasattr(gc, "freeze"):
        gc.freeze()
    if not _gc_saved:
        _gc_saved.append(gc.get_threshold())
        t = gc.get_threshold()
        gc.set_threshold(max(t[0], GC_GEN0), t[1], t[2])


def _gc_normal():
    if hasattr(gc, "unfreeze"):
        gc.unfreeze()
    if _gc_saved:
        gc.set_threshold(*_gc_saved.pop())


def _ssl_context(opts):
    ctx = sslmod.create_default_context(cafile=opts.ca) if opts.ca else sslmod.create_default_context()
    if opts.cert:
        ctx.load_cert_chain(opts.cert, opts.key)
    return ctx
