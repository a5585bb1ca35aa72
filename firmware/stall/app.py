# The stall application: one asyncio loop whose tasks drive the StallCore, the hardware, the MQTT link and the watchdog.
#
# Tasks (each beats the Health table; the watchdog feeds only while all are on time):
#   sampler     every sample_ms: hw.poll, core.sample (connector machine), relay
#   accounting  every tick_ms: core.tick (idle fees, heartbeat, TTLs, held records), boot-guard checkpoints
#   outbox      every pump_ms: uplink.pump (retained state, outbox, resends)
#   link        MqttLink's own tasks (reconnect with backoff, keepalive); commands
#               and acks arrive through its on_message callback (stall.uplink)
#   wall        NTP (or an injected wall source): core.wall
#   meter       hw.run: the board's Modbus polling (nothing in the simulator)
#   console     Console over a line stream, when one is given
#   watchdog    feeds the WDT while every task is healthy
#   wifi        boards only
# A task that raises records a crash in the boot guard and stops the app;
# run() re-raises it (main.py resets the board; a simulator may reboot it).
#
# Everything comes in through the constructor (config, fs and folder,
# hardware, clock, wall source, link, watchdog), so one process can run many
# stalls side by side with simulated hardware and an accelerated clock.

import asyncio

from protocol import journal, wire
from stall import config as configmod
from stall.clock import BoardTicks, MonoClock
from stall.console import Console
from stall.core import StallCore
from stall.hw import make_hardware
from stall.uplink import Uplink
from stall.watchdog import BootGuard, Health, StubWdt

BOOTS_FILE = "boots.json"


class App:
    """One stall. App(cfg, fs, root="", hw=None, clock=None, wall=None,
    link=None, wdt=None, reset="power", console=None)

    cfg      validated config (stall.config.load/validate)
    fs, root journal file system and this stall's folder prefix ("" or "dir/")
    hw       hardware (default: make_hardware(cfg))
    clock    MonoClock (default: the port's ticks)
    wall     object with async fetch(clock) -> Unix ms or None (default: none)
    link     MqttLink-like object; None builds an MqttLink from cfg; False runs offline
    wdt      object with feed() (default: StubWdt)
    reset    "power", "wdt" or "soft": why the previous run ended
    console  (reader, write) to serve the technician console on"""

    def __init__(self, cfg, fs, root="", hw=None, clock=None, wall=None, link=None, wdt=None, reset="power", console=None):
        self.cfg = cfg
        self.fs = fs
        self.root = root
        self.clock = clock or MonoClock(BoardTicks())
        self.hw = hw if hw is not None else make_hardware(cfg)
        self.wall = wall
        self.link = link
        self.wdt = wdt if wdt is not None else StubWdt(cfg["wdt_ms"])
        if isinstance(self.wdt, StubWdt) and self.wdt.clock is None:
            self.wdt.clock = self.clock
        self.reset = reset
        self.console_io = console
        self.console = Console(self)
        self.health = Health()
        self.guard = BootGuard(fs, root + BOOTS_FILE, cfg["crash_n"], cfg["crash_window_s"])
        self.core = None
        self.uplink = None
        self.boot_no = 0
        self.safe = False
        self.crash = None  # (task name, exception) that stopped the app
        self.late = None  # a task that missed its deadline (the watchdog starves)
        self.extra_tasks = []  # coroutines a port adds (the board's wifi)
        self._done = None
        self._tasks = []
        self._graceful = True

    # -- boot ------------------------------------------------------------------

    def boot(self):
        """Count the boot, open and recover the core, build the link. Idempotent."""
        if self.core is not None or not configmod.provisioned(self.cfg):
            return self.core
        _makedirs(self.fs, self.root)
        now = self.clock.now_ms()
        boot, safe, reason = self.guard.begin(self.reset)
        core = StallCore(self.cfg, self.fs, self.root)
        self.console.attach(core)  # its event tap sees the boot events too
        self.boot_no = core.start(now, boot, safe, reason)
        self.guard.set_boot(self.boot_no)
        self.safe = safe
        self.core = core
        self.uplink = Uplink(core, self.clock)
        if self.link is None:
            self.link = self._mqtt_link(core)
        if self.link:
            self.uplink.attach(self.link)
        return core

    def _mqtt_link(self, core):
        from stall.mqtt_link import MqttLink

        cfg = self.cfg
        return MqttLink(
            cfg["mqtt_host"],
            cfg["mqtt_port"],
            cfg["station"],
            username=cfg["mqtt_user"],
            password=cfg["mqtt_password"],
            ssl=True if cfg["mqtt_tls"] else None,
            keepalive_s=cfg["mqtt_keepalive_s"],
            backoff_max_ms=cfg["mqtt_backoff_max_ms"],
            will=(core.t_avail, wire.AVAIL_OFFLINE, 1, True),
            clean_session=False,
            subscriptions=[(core.t_ack, 1), (core.t_cmd, 1), (core.t_occupancy, 1), (core.t_tariff, 1)],
        )

    # -- running -----------------------------------------------------------------

    async def run(self):
        """Run until stop()/kill() or a task crashes (then re-raised)."""
        self.boot()
        self._done = asyncio.Event()
        now = self.clock.now_ms()
        cfg = self.cfg
        jobs = [("watchdog", self._watchdog)]
        if self.core is not None:
            h = self.health
            h.register("sampler", max(20 * cfg["sample_ms"], 2000), now)
            h.register("accounting", max(10 * cfg["tick_ms"], 10000), now)
            h.register("outbox", 10000, now)
            jobs += [("sampler", self._sampler), ("accounting", self._accounting), ("outbox", self._outbox), ("meter", self._meter)]
            if self.wall is not None:
                jobs.append(("wall", self._wall))
        if self.console_io is not None:
            jobs.append(("console", self._console))
        for name, fn in jobs:
            self._tasks.append(asyncio.create_task(self._guarded(name, fn)))
        for coro in self.extra_tasks:
            self._tasks.append(asyncio.create_task(coro))
        if self.link:
            self.link.start()
        await self._done.wait()
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        if self.link:
            self.link.stop(self._graceful)
        await asyncio.sleep(0)
        if self.crash is not None:
            raise self.crash[1]

    def stop(self):
        """Stop cleanly (the link says DISCONNECT: no last will)."""
        self._graceful = True
        if self._done is not None:
            self._done.set()

    def kill(self):
        """Stop as a power cut would: no DISCONNECT, so the broker publishes the will."""
        self._graceful = False
        if self._done is not None:
            self._done.set()

    async def _guarded(self, name, fn):
        try:
            await fn()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.crash = (name, e)
            try:
                self.guard.crashed(self.clock.now_ms())
            except Exception:
                pass
            self._graceful = False
            if self._done is not None:
                self._done.set()

    async def _sampler(self):
        clock, hw, core, h = self.clock, self.hw, self.core, self.health
        while True:
            now = clock.now_ms()
            hw.poll(now)
            core.sample(now, hw.pilot, hw.current_ma, hw.energy_wh, hw.fault)
            hw.withheld = core.paused
            hw.set_relay(core.relay)
            h.beat("sampler", now)
            await clock.sleep_ms(core.cfg["sample_ms"])

    async def _accounting(self):
        clock, core, h = self.clock, self.core, self.health
        while True:
            now = clock.now_ms()
            core.tick(now)
            self.console.watch(now)  # the console's log of what changed
            self.guard.alive(now)
            h.beat("accounting", now)
            await clock.sleep_ms(core.cfg["tick_ms"])

    async def _outbox(self):
        clock, up, h = self.clock, self.uplink, self.health
        while True:
            now = clock.now_ms()
            up.pump(now)
            h.beat("outbox", now)
            await clock.sleep_ms(self.core.cfg["pump_ms"])

    async def _meter(self):
        await self.hw.run(self.clock)

    async def _wall(self):
        clock, core = self.clock, self.core
        while True:
            ms = await self.wall.fetch(clock)
            if ms is not None:
                core.wall(ms, clock.now_ms())
            # Until the first answer, ask every 30 s.
            await clock.sleep_ms(core.cfg["ntp_period_s"] * 1000 if core.synced else 30000)

    async def _watchdog(self):
        clock = self.clock
        while True:
            self.late = self.health.late(clock.now_ms())
            if self.late is None:
                self.wdt.feed()
            await clock.sleep_ms(max(100, self.cfg["wdt_ms"] // 4))

    async def _console(self):
        reader, write = self.console_io
        await self.console.run(reader, write)

    # -- for the console --------------------------------------------------------

    def info(self):
        now = self.clock.now_ms()
        out = {"uptime_ms": now, "boot": self.boot_no, "safe": self.safe, "late": self.late}
        if self.core is None:
            out["state"] = "unprovisioned"
        else:
            out["core"] = self.core.info(now)
        link = self.link
        if link and hasattr(link, "status"):
            out["link"] = link.status()
        return out


def _makedirs(fs, root):
    # OsFs needs the stall's folder to exist; other fs objects have no folders.
    if not root or not isinstance(fs, journal.OsFs):
        return
    import os

    path = ""
    for part in root.strip("/").split("/"):
        path = path + "/" + part if path or root.startswith("/") else part
        try:
            os.mkdir(path)
        except OSError:
            pass
