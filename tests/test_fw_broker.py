# The stall app end to end against a real Mosquitto: the real MqttLink, a paho client playing the billing bridge, a broker restart mid-session.
import asyncio
import queue

import paho.mqtt.client as paho

from protocol import wire
from tests.fw_helpers import STATION_KEY, UNIX0, MemFs, key_for, make_cfg

from stall.app import App  # noqa: I001
from stall.clock import HostTicks, MonoClock
from stall.hw import SimHardware
from stall.ntp import FixedWall

TARIFF = {"id": "T-fast", "version": 1, "rate": 60, "grace_s": 1}
QUICK = dict(
    plug_debounce_ms=100,
    unplug_debounce_ms=100,
    resume_hold_ms=300,
    complete_hold_ms=300,
    sample_ms=50,
    tick_ms=100,
    pump_ms=50,
    resend_s=2,
    mqtt_backoff_max_ms=1000,
    tariff=TARIFF,
)


class Bridge:
    """A paho client that records what the stall publishes and acks events and sessions."""

    def __init__(self, port):
        self.q = queue.Queue()
        self.ack_n = 0
        self.acking = True
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bridge", clean_session=True)
        c.on_message = self._on_message
        c.on_connect = self._on_connect  # (re)subscribe after every connect: the broker restarts
        c.reconnect_delay_set(0.1, 1)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.c = c

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe([(wire.topic_filter(leaf), 1) for leaf in ("event", "session", "state", "avail")])

    def _on_message(self, client, userdata, msg):
        leaf = msg.topic.rsplit("/", 1)[1]
        self.q.put((leaf, bytes(msg.payload), msg.retain))
        if leaf in ("event", "session") and self.acking:
            m = wire.decode(msg.payload, key_for)
            self.ack_n += 1
            ack = wire.encode(STATION_KEY, "ack", m.sender, self.ack_n, UNIX0, {"acks": [m.seq]})
            client.publish(wire.station_topic("lot-a", m.sender, "ack"), ack, qos=1)

    def drain(self):
        out = []
        while True:
            try:
                out.append(self.q.get_nowait())
            except queue.Empty:
                return out

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


async def until(cond, timeout=15.0):
    for _ in range(int(timeout / 0.02)):
        if cond():
            return True
        await asyncio.sleep(0.02)
    raise AssertionError("timed out waiting")


def test_session_through_mosquitto_with_a_broker_restart(mosquitto):
    bridge = Bridge(mosquitto.port)
    seen = []

    async def main():
        cfg = make_cfg(mqtt_port=mosquitto.port, **QUICK)
        hw = SimHardware()
        clock = MonoClock(HostTicks())
        app = App(cfg, MemFs(), hw=hw, clock=clock, wall=FixedWall(lambda now: UNIX0 * 1000 + now))
        task = asyncio.create_task(app.run())
        await until(lambda: app.link is not None and app.link.connected)
        hw.pilot = "B"
        await asyncio.sleep(0.3)
        hw.pilot, hw.draw_ma = "C", 16000
        await until(lambda: app.core.status == "Charging")
        await asyncio.sleep(0.5)
        hw.draw_ma = 0
        await until(lambda: app.core.status == "SuspendedEV")
        mosquitto.kill()  # the broker dies while the car lingers: idle ticks queue up
        await until(lambda: not app.link.connected)
        await asyncio.sleep(2.5)
        hw.pilot = "A"
        await until(lambda: app.core.status == "Available")
        assert len(app.core.outbox) > 0
        mosquitto.start()
        await until(lambda: app.link.connected)
        await until(lambda: len(app.core.outbox) == 0)
        seen.extend(bridge.drain())
        app.kill()  # a power cut: the broker publishes the will
        await task
        await until(will_seen)
        return app

    def will_seen():
        seen.extend(bridge.drain())
        return any(leaf == "avail" and p == b"offline" for leaf, p, r in seen)

    try:
        app = asyncio.run(main())
    finally:
        bridge.close()
    sessions = [wire.decode(p, key_for).body for leaf, p, r in seen if leaf == "session"]
    assert len({s["session_id"] for s in sessions}) == 1
    s = sessions[0]
    assert [e["status"] for e in s["timeline"]] == ["Preparing", "Charging", "SuspendedEV", "Available"]
    assert s["fee"] == s["billed_min"] * 60 and s["idle_s"] >= 2
    events = [wire.decode(p, key_for).body["type"] for leaf, p, r in seen if leaf == "event"]
    assert "charge_complete" in events and events.count("status") >= 4
    assert (b"online" in [p for leaf, p, r in seen if leaf == "avail"])
    assert app.core.rejected == {}
