# The asyncio app: tasks drive the core with simulated hardware on a virtual clock; crash loops, the watchdog, the console, many stalls in one loop.
import asyncio

import pytest

from protocol import fee, mqtt, wire
from tests.fw_helpers import STATION_KEY, T0, UNIX0, Backend, MemFs, key_for, make_cfg

from stall.app import App  # noqa: I001
from stall.clock import MonoClock, VirtualTicks
from stall.hw import SimHardware
from stall.ntp import FixedWall
from stall.watchdog import StubWdt

FAST = dict(sample_ms=1000, tick_ms=1000, pump_ms=1000)


class FakeLink:
    """An in-memory MqttLink: publish() refuses while down; the test plays broker and bridge."""

    def __init__(self):
        self.connected = False
        self.published = []  # (topic, payload, qos, retain)
        self.on_connect = self.on_disconnect = self.on_message = self.on_puback = None
        self.started = False
        self.stopped = None

    def start(self):
        self.started = True

    def stop(self, disconnect=True):
        self.stopped = "disconnect" if disconnect else "dropped"

    def publish(self, topic, payload, qos=0, retain=False):
        if not self.connected:
            return False
        self.published.append((topic, bytes(payload), qos, retain))
        return len(self.published)

    def up(self):
        self.connected = True
        self.on_connect(False)

    def down(self):
        self.connected = False
        self.on_disconnect("test")

    def deliver(self, topic, payload):
        self.on_message(mqtt.Publish(topic, payload, 1, False, False, 1))


class Stall:
    """One App on a virtual clock with simulated hardware, a fake link and a bridge that acks."""

    def __init__(self, ticks, fs=None, station="st-01", reset="power", wall=True, **over):
        self.ticks = ticks
        self.fs = fs or MemFs()
        self.cfg = make_cfg(station=station, **dict(FAST, **over))
        self.hw = SimHardware()
        self.link = FakeLink()
        self.clock = MonoClock(ticks)
        boot_at = ticks.ms
        w = FixedWall(lambda now: (UNIX0 * 1000 + boot_at + now)) if wall else None
        self.app = App(self.cfg, self.fs, hw=self.hw, clock=self.clock, wall=w, link=self.link, wdt=StubWdt(8000, ), reset=reset)
        self.backend = Backend(station=station)
        self.seen = []
        self.acked = 0
        self.task = None

    def start(self):
        self.app.boot()  # run() would do it; the test wants the link callbacks wired now
        self.task = asyncio.create_task(self.app.run())

    def bridge(self):
        """Decode what was published, ack events and sessions (as the bridge does after its commit)."""
        new = self.link.published[len(self.seen) :]
        acks = []
        for topic, payload, qos, retain in new:
            self.seen.append((topic, payload, retain))
            leaf = topic.rsplit("/", 1)[1]
            if leaf in ("event", "session"):
                acks.append(wire.decode(payload, key_for).seq)
        if acks:
            self.link.deliver(*self.backend.ack(acks))
            self.acked += len(acks)

    def messages(self, leaf):
        return [wire.decode(p, key_for) for t, p, r in self.seen if t.endswith("/" + leaf)]

    def car(self, pilot=None, draw=None):
        if pilot is not None:
            self.hw.pilot = pilot
        if draw is not None:
            self.hw.draw_ma = draw


async def run_for(ticks, stalls, seconds, step=10):
    for _ in range(int(seconds // step)):
        await ticks.run_for(step * 1000)
        for s in stalls:
            s.bridge()


def test_scripted_session_through_the_app():
    async def main():
        ticks = VirtualTicks()
        s = Stall(ticks)
        s.start()
        await run_for(ticks, [s], 10)
        s.link.up()
        s.car("B")
        await run_for(ticks, [s], 10)
        s.car("C", 16000)
        await run_for(ticks, [s], 3600)
        assert s.hw.relay and s.hw.current_ma == 16000
        s.car(draw=0)
        await run_for(ticks, [s], 920)
        s.car("A")
        await run_for(ticks, [s], 30)
        s.app.stop()
        await s.task
        return s

    s = asyncio.run(main())
    (sess,) = [m.body for m in s.messages("session")]
    assert sess["fee"] == fee.quote(T0, sess["timeline"])["fee"] == 500
    assert sess["idle_s"] == 920 and sess["synced"] is True
    assert 3670 <= sess["energy_wh"] <= 16 * 230  # about an hour at 16 A, 230 V, metered by the sim
    assert [e["status"] for e in sess["timeline"]] == ["Preparing", "Charging", "SuspendedEV", "Available"]
    avail = [(p, r) for t, p, r in s.seen if t.endswith("/avail")]
    assert avail[0] == (wire.AVAIL_ONLINE, True)
    states = s.messages("state")
    assert [m.body["status"] for m in states][-1] == "Available"
    assert all(r for t, p, r in s.seen if t.endswith("/state"))  # retained
    assert len(s.app.core.outbox) == 0 and s.link.stopped == "disconnect"
    assert s.app.wdt.feeds > 0 and s.app.late is None


def test_nothing_is_lost_while_the_link_is_down():
    async def main():
        ticks = VirtualTicks()
        s = Stall(ticks)
        s.start()
        s.car("B")
        await run_for(ticks, [s], 10)
        s.car("C", 16000)
        await run_for(ticks, [s], 600)
        s.car(draw=0)
        await run_for(ticks, [s], 600)
        s.car("A")
        await run_for(ticks, [s], 20)
        assert s.link.published == [] and len(s.app.core.outbox) > 5
        s.link.up()
        await run_for(ticks, [s], 200)
        s.app.stop()
        await s.task
        return s

    s = asyncio.run(main())
    assert len(s.messages("session")) == 1 and len(s.app.core.outbox) == 0


def test_power_cut_and_reboot_through_the_app_continue_the_session():
    async def main():
        ticks = VirtualTicks()
        s = Stall(ticks)
        s.start()
        s.link.up()
        s.car("B")
        await run_for(ticks, [s], 10)
        s.car("C", 16000)
        await run_for(ticks, [s], 600)
        s.car(draw=0)
        await run_for(ticks, [s], 400)
        s.app.kill()  # the supply dies: no DISCONNECT
        await s.task
        assert s.link.stopped == "dropped"
        await ticks.run_for(300 * 1000)  # down for five minutes
        s2 = Stall(ticks, fs=s.fs.reboot())
        s2.hw.pilot, s2.hw.draw_ma = "C", 0  # the car is still there, idle
        s2.seen = list(s.seen)
        s2.link.published = [(t, p, 1, r) for t, p, r in s.seen]
        s2.start()
        s2.link.up()
        await run_for(ticks, [s2], 300)
        s2.car("A")
        await run_for(ticks, [s2], 20)
        s2.app.stop()
        await s2.task
        return s2

    s2 = asyncio.run(main())
    (sess,) = [m.body for m in s2.messages("session")]
    st = [e["status"] for e in sess["timeline"]]
    assert st == ["Preparing", "Charging", "SuspendedEV", "Unavailable", "SuspendedEV", "Available"]
    down = sess["timeline"][4]["t"] - sess["timeline"][3]["t"]
    assert 300 <= down <= 300 + 60  # from the last heartbeat to the boot
    assert sess["idle_s"] + down + 600 + 10 >= 1300 and sess["idle_s"] <= 400 + 300


def test_crash_loop_boots_into_safe_mode_which_meters_nothing_and_says_so():
    fs = MemFs()

    async def crash_once(ticks):
        s = Stall(ticks, fs=fs)

        def boom(now_ms):
            raise RuntimeError("bug in tick")

        s.app.boot()
        s.app.core.tick = boom
        s.start()
        with pytest.raises(RuntimeError):
            await _drive(ticks, s)
        return s

    async def _drive(ticks, s):
        while not s.task.done():
            await ticks.run_for(1000)
        await s.task

    async def main():
        ticks = VirtualTicks()
        for _ in range(5):
            await crash_once(ticks)
        s = Stall(ticks, fs=fs)
        s.start()
        s.link.up()
        s.car("B")
        await run_for(ticks, [s], 10)
        s.car("C", 16000)
        await run_for(ticks, [s], 120)
        assert s.app.safe and s.app.core.safe
        assert s.hw.relay is False and s.app.core.tab is None
        s.app.stop()
        await s.task
        return s

    s = asyncio.run(main())
    faults = [m.body for m in s.messages("event") if m.body["type"] == "fault"]
    assert faults and faults[0]["code"] == "safe_mode"
    assert s.messages("state")[-1].body["status"] == "Unavailable" and s.messages("state")[-1].body["safe"] is True
    assert s.messages("session") == []


def test_a_hung_task_starves_the_watchdog():
    async def main():
        ticks = VirtualTicks()
        s = Stall(ticks)

        async def hung():
            await s.clock.sleep_ms(10**9)  # never beats again

        s.app._accounting = hung  # noqa: SLF001
        s.start()
        await ticks.run_for(20000)  # the accounting deadline is 10 s
        fed = s.app.wdt.feeds
        await ticks.run_for(30000)
        assert s.app.late == "accounting" and s.app.wdt.feeds == fed
        assert s.app.wdt.expired(s.clock.now_ms())
        s.app.stop()
        await s.task

    asyncio.run(main())


def test_many_stalls_run_in_one_loop_each_with_its_own_identity_and_files():
    async def main():
        ticks = VirtualTicks()
        stalls = [Stall(ticks, station="st-%02d" % i) for i in range(8)]
        for s in stalls:
            s.start()
            s.link.up()
        for i, s in enumerate(stalls):
            s.car("B")
            await run_for(ticks, stalls, 10)
            s.car("C", 10000 + 1000 * i)
        await run_for(ticks, stalls, 1200)
        for s in stalls:
            s.car(draw=0)
        await run_for(ticks, stalls, 600)
        for s in stalls:
            s.car("A")
        await run_for(ticks, stalls, 30)
        for s in stalls:
            s.app.stop()
        await asyncio.gather(*(s.task for s in stalls))
        return stalls

    stalls = asyncio.run(main())
    ids = set()
    for s in stalls:
        (sess,) = [m.body for m in s.messages("session")]
        assert sess["station"] == s.cfg["station"] and sess["idle_s"] in range(590, 611)
        assert all(t.split("/")[3] == s.cfg["station"] for t, p, r in s.seen)
        ids.add(sess["session_id"])
    assert len(ids) == 8


def test_an_unprovisioned_stall_runs_only_its_console_and_watchdog():
    from stall import config

    async def main():
        ticks = VirtualTicks()
        reader = asyncio.StreamReader()
        out = []
        app = App(config.defaults(), MemFs(), hw=SimHardware(), clock=MonoClock(ticks), link=False, console=(reader, out.append))
        task = asyncio.create_task(app.run())
        reader.feed_data(b"status\n")
        await ticks.run_for(5000)
        app.stop()
        await task
        return app, out

    app, out = asyncio.run(main())
    assert app.core is None and "not provisioned" in "".join(out) and app.wdt.feeds > 0
