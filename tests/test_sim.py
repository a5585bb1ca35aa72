# Simulator pieces: the world clock and the stalls' tick sources, the scripted car hardware, fault specs, keys, timing defaults; a broker run without a bridge.
import asyncio

import pytest

from host_tools import scenario as scenmod
from host_tools import sim_faults, sim_keys
from host_tools.errors import UserError
from host_tools.sim_engine import CarHardware, Simulation, World, WorldTicks, defaults
from tests.bridge_helpers import sqlite_url

from stall.clock import MonoClock  # noqa: I001  (firmware/ is on sys.path once sim_engine is imported)

FLAT = {"id": "flat", "version": 1, "currency": "USD", "rate": 60, "grace_s": 30}


def scen(vehicles, stalls=2, tariff=FLAT, **kw):
    d = {"site": "t-site", "stalls": stalls, "start": "2026-11-01T10:00:00Z", "tariff": tariff, "vehicles": vehicles}
    d.update(kw)
    return scenmod.parse(d, "t.json")


class FakeWorld:
    speed = 1.0

    def __init__(self, ms):
        self.t = ms

    def ms(self):
        return self.t


def test_world_is_frozen_until_started_then_runs_at_speed():
    w = World(1000)
    assert w.ms() == 0 and not w.running
    w.start()
    import time

    time.sleep(0.02)
    assert 15000 <= w.ms() <= 200000


def test_stall_clock_counts_from_its_boot_second_and_wraps_like_a_port():
    fw = FakeWorld(5300)
    ticks = WorldTicks(fw, 5000, start=(1 << 30) - 100)
    clock = MonoClock(ticks)  # built 300 ms after the boot second: the first reading is pinned to it
    assert clock.now_ms() == 300
    fw.t = 5000 + 20 * 86400 * 1000  # three weeks: the 2**30 ticks wrap twice
    for k in range(1, 41):
        fw.t = 5000 + k * 12 * 3600 * 1000
        assert clock.now_ms() == k * 12 * 3600 * 1000
    assert ticks.ticks_ms() < (1 << 30)


def test_car_hardware_plays_the_plan_at_the_sampled_instant():
    sc = scen([{"stall": 1, "arrive_s": 10, "charge_s": 60, "amps": 32, "linger_s": 100}])
    sim = Simulation(sc, ("127.0.0.1", 1), out=None)
    st = sim.stalls[0]
    hw = CarHardware(st, 5000, 5000)  # booted at world 5 s
    seen = []
    for w in (0, 9999, 10000, 11999, 12000, 12100, 71999, 72000, 171999, 172000):
        hw.set_relay(True)
        hw.poll(w - 5000)
        seen.append((w, hw.pilot, hw.current_ma))
    assert seen == [(0, "A", 0), (9999, "A", 0), (10000, "B", 0), (11999, "B", 0), (12000, "C", 32000), (12100, "C", 32000),
                    (71999, "C", 32000), (72000, "B", 0), (171999, "B", 0), (172000, "A", 0)]
    # A glitch replaces exactly one sample; a meter error keeps the last reading.
    st.glitches.append((172500, "F"))
    st.meter_windows.append((173000, 174000))
    hw.poll(172500 - 5000)
    assert hw.pilot == "F"
    hw.poll(172600 - 5000)
    assert hw.pilot == "A"
    hw.poll(173500 - 5000)
    assert hw.meter_error and not hw.fault  # stale only after 5 s
    hw.poll(174000 - 5000)
    assert not hw.meter_error
    assert sim.samples == 13 and sim.max_gap_ms > 0
    assert any("pilot glitch" in a["kind"].replace("_", " ") for a in sim.applied)


def test_defaults_scale_with_stalls_and_speed():
    small = defaults(8, 1)
    assert small["sample_ms"] == 100 and small["resend_s"] == 60 and small["occupancy_ttl_s"] == 900
    big = defaults(2000, 1)
    assert big["sample_ms"] == 400 and big["pump_ms"] == 800 and big["link_poll_ms"] == 2000
    fast = defaults(8, 150)
    assert fast["sample_ms"] == 240 and fast["resend_s"] == 1500 and fast["occupancy_ttl_s"] == 27000
    assert defaults(100000, 100)["sample_ms"] == 500


@pytest.mark.parametrize(
    "kind,spec,want",
    [
        ("power_cut", "3@1200", ("power_cut", 3, 1200, 30, None)),
        ("power_cut", "3@20m+2m", ("power_cut", 3, 1200, 120, None)),
        ("net_drop", "all@1h+90s", ("net_drop", 0, 3600, 90, None)),
        ("pilot_glitch", "2@90", ("pilot_glitch", 2, 90, 0, "A")),
        ("pilot_glitch", "2@90:F", ("pilot_glitch", 2, 90, 0, "F")),
        ("meter_error", "1@1h30m+3", ("meter_error", 1, 5400, 3, None)),
    ],
)
def test_fault_specs(kind, spec, want):
    f = sim_faults.parse(kind, spec)
    assert (f.kind, f.stall, f.at_s, f.dur_s, f.pilot) == want


@pytest.mark.parametrize(
    "kind,spec,msg",
    [
        ("power_cut", "3", "--power-cut 3: give STALL@SECONDS[+DOWN] or random"),
        ("net_drop", "1@60", "--net-drop 1@60: give STALL@SECONDS+DURATION"),
        ("net_drop", "x@60+5", "--net-drop x@60+5: stall must be a stall number from 1, not 'x'"),
        ("power_cut", "all@60", "--power-cut all@60: `all` works only for --net-drop"),
        ("pilot_glitch", "1@60:Z", "--pilot-glitch 1@60:Z: pilot must be one of A B C D E F, not 'Z'"),
        ("meter_error", "1@soon+5", "--meter-error 1@soon+5: not a duration (90, 90s, 15m, 2h, 1h30m): 'soon'"),
    ],
)
def test_bad_fault_specs_are_one_line(kind, spec, msg):
    with pytest.raises(UserError) as e:
        sim_faults.parse(kind, spec)
    assert str(e.value) == msg


def test_random_faults_land_inside_visits_and_repeat_with_the_seed():
    sc = scen([{"stall": 1, "arrive_s": 100, "charge_s": 60, "amps": 16, "linger_s": 300},
               {"stall": 2, "arrive_s": 1000, "charge_s": 60, "amps": 16, "linger_s": 300}])
    asked = [sim_faults.parse(k, "random") for k in sim_faults.KINDS] * 5
    a = sim_faults.place(asked, sc, 2, 7)
    assert [repr(f) for f in a] == [repr(f) for f in sim_faults.place(asked, sc, 2, 7)]
    for f in a:
        v = [v for v in sc.vehicles if v.stall == f.stall][0]
        assert v.arrive_s < f.at_s < v.unplug_s
    with pytest.raises(UserError, match="unknown stall 5"):
        sim_faults.place([sim_faults.parse("power_cut", "5@10")], sc, 2, 0)


def test_keys_file_as_keys_add_prints_it(tmp_path):
    p = tmp_path / "keys.txt"
    st = "ab" * 32
    p.write_text("# from overstay keys add\nstation s-001 secret %s\n\nsite s secret %s\nstation s-002 secret %s\n" % (st, "cd" * 32, "ef" * 32))
    k = sim_keys.from_file(str(p), "s", ["s-001", "s-002"])
    assert k.site_key == bytes.fromhex("cd" * 32) and k.stations["s-002"] == bytes.fromhex("ef" * 32)
    with pytest.raises(UserError, match="no key for station s-003"):
        sim_keys.from_file(str(p), "s", ["s-001", "s-003"])
    with pytest.raises(UserError, match="no `site other secret HEX` line"):
        sim_keys.from_file(str(p), "other", ["s-001"])
    p.write_text("station s-001 key abc\n")
    with pytest.raises(UserError, match=r"keys.txt:1: expected `station ID secret HEX`"):
        sim_keys.from_file(str(p), "s", ["s-001"])


def test_db_registration_is_reused_and_the_tariff_is_guarded(tmp_path):
    url = sqlite_url(tmp_path / "b.db")
    db = sim_keys.open_db(url)
    try:
        k1, new1 = sim_keys.from_db(db, "s", ["s-001", "s-002"])
        k2, new2 = sim_keys.from_db(db, "s", ["s-001", "s-002", "s-003"])
        assert (new1, new2) == (2, 1)
        assert k1.stations["s-001"] == k2.stations["s-001"] and k1.site_key == k2.site_key
        assert sim_keys.site_stations(db, "s") == 3
        with pytest.raises(UserError, match="registered on site s, not t"):
            sim_keys.from_db(db, "t", ["s-001"])
        p1, stored = sim_keys.ensure_tariff(db, "s", FLAT)
        p2, again = sim_keys.ensure_tariff(db, "s", dict(FLAT))
        assert stored and not again and p1 == p2
        with pytest.raises(UserError, match="different tariff under version 1"):
            sim_keys.ensure_tariff(db, "s", dict(FLAT, rate=61))
        sim_keys.ensure_tariff(db, "s", dict(FLAT, version=2))
        with pytest.raises(UserError, match="newer than the scenario's 1"):
            sim_keys.ensure_tariff(db, "s", FLAT)
    finally:
        db.close()


def test_without_a_bridge_nothing_is_acked_and_faults_change_nothing_they_should_not(mosquitto):
    # Journals in memory: the power cut lands inside a journal write. A pilot
    # glitch and a meter error shorter than meter_stale_ms change no status.
    vs = [{"stall": 1, "arrive_s": 0, "charge_s": 40, "amps": 32, "linger_s": 200},
          {"stall": 2, "arrive_s": 5, "charge_s": 40, "amps": 16, "linger_s": 150, "stop": "C"}]
    sc = scen(vs, end_s=260)
    # Stall 2's glitches come after its holds confirmed SuspendedEV (47 + 60 s);
    # the test below puts one inside the hold.
    faults = [sim_faults.Fault("power_cut", 1, 120, 20), sim_faults.Fault("pilot_glitch", 2, 120, 0, "A"),
              sim_faults.Fault("pilot_glitch", 2, 140, 0, "F"), sim_faults.Fault("meter_error", 2, 150, 3)]
    lines = []
    sim = Simulation(sc, ("127.0.0.1", mosquitto.port), speed=40, faults=faults, out=lines.append, config={"heartbeat_s": 10})

    async def main():
        # The technician's `reboot` on stall 2's console, after its car left:
        # the console stops the App (stall.console_io.perform); the simulator boots it again.
        async def reboot_later():
            while sim.world.ms() < 220000:
                await asyncio.sleep(0.02)
            app = sim.stalls[1].app
            app.console.requested = "reboot"
            app.stop()

        t = asyncio.create_task(reboot_later())
        try:
            return await sim.run(drain_timeout=0.5)
        finally:
            t.cancel()

    rep = asyncio.run(main())
    text = "\n".join(lines + sim.summary_lines(rep))
    assert rep.exit_code == 1 and set(rep.unacked) == {"t-site-001", "t-site-002"}, text
    assert "sim: unacked: t-site-001 holds" in text
    recs = {st.number: list(st.sessions.values()) for st in sim.stalls}
    assert len(recs[1]) == 1 and len(recs[2]) == 1, text
    r1, r2 = recs[1][0], recs[2][0]
    # Stall 2 rode out its glitches and meter error: exactly the ground truth.
    assert [e["status"] for e in r2["timeline"]] == ["Preparing", "Charging", "SuspendedEV", "Available"]
    assert r2["fee"] == sim.truth.quote(sc.vehicles[1])["fee"] == 120 and not rep.mismatches, text
    # Stall 1 lost power mid-session (inside a journal write) and continued the same session.
    assert len(sim.stalls[0].outages) == 1 and sim.stalls[0].boots == 2
    sts = [e["status"] for e in r1["timeline"] if "status" in e]
    assert sts == ["Preparing", "Charging", "SuspendedEV", "Unavailable", "SuspendedEV", "Available"], r1["timeline"]
    outs = sim.outages_for(r1)
    assert r1["fee"] == sim.truth.quote(sc.vehicles[0], outs)["fee"]
    cut_w, up_w = sim.stalls[0].outages[0]
    assert outs[0][1] == sc.start + up_w // 1000 and outs[0][0] >= sc.start + cut_w // 1000 - 11
    assert [a["kind"] for a in sim.applied].count("pilot_glitch") == 2
    assert "console_reboot" in [a["kind"] for a in sim.applied] and sim.stalls[1].boots == 2
    assert sim.stalls[1].app.core.boot == 2


def test_a_one_sample_glitch_inside_the_complete_hold_is_billed_as_the_truth(mosquitto):
    # Found by --pilot-glitch: a car full at 47 s, a loose pilot (one sample
    # of A) 23 s into the 60 s complete hold. SuspendedEV still starts when
    # the car stopped drawing, so the driver pays what the rules say: an
    # earlier connector restarted the hold at the glitch, a minute less here.
    vs = [{"stall": 1, "arrive_s": 0, "charge_s": 40, "amps": 16, "linger_s": 150, "stop": "C"}]
    sc = scen(vs, stalls=1, end_s=200)
    lines = []
    sim = Simulation(sc, ("127.0.0.1", mosquitto.port), speed=40, faults=[sim_faults.Fault("pilot_glitch", 1, 70, 0, "A")],
                     out=lines.append)
    rep = asyncio.run(sim.run(drain_timeout=0.5))
    text = "\n".join(lines + sim.summary_lines(rep))
    [rec] = list(sim.stalls[0].sessions.values())
    truth = [(e["t"], e["status"]) for e in sim.truth.timeline(sc.vehicles[0]) if "status" in e]
    assert [(e["t"], e["status"]) for e in rec["timeline"] if "status" in e] == truth, text
    assert rec["fee"] == sim.truth.quote(sc.vehicles[0])["fee"] and not rep.mismatches, text
    assert [a["kind"] for a in sim.applied] == ["pilot_glitch"]
