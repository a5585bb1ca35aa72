# StallCore scenarios on simulated samples: plug, charge, complete, linger, unplug; resume; faults; pause; tariffs; occupancy; wall time.
from tests.fw_helpers import T0, UNIX0, Rig, make_cfg

from protocol import fee


def session(r, msgs=None):
    msgs = r.drain() if msgs is None else msgs
    s = r.sessions(msgs)
    assert len(s) == 1, s
    return s[0], msgs


def example1(r):
    # Idle-fee rules, example 1: plug at 0, Charging at 10, idle at 3610, unplug at 4530.
    r.run(10, pilot="B")
    r.run(3600, pilot="C", ma=16000)
    r.run(920, pilot="C", ma=0)
    r.run(5, pilot="A")


def test_plug_charge_complete_linger_unplug():
    r = Rig(now=0)
    r.sync(UNIX0)
    example1(r)
    s, msgs = session(r)
    assert [e["status"] for e in s["timeline"]] == ["Preparing", "Charging", "SuspendedEV", "Available"]
    t = [e["t"] for e in s["timeline"]]
    # Retroactive instants: Charging from the first drawing sample, idle from the first idle one.
    assert t[1] - t[0] == 10 and t[2] - t[1] == 3600 and t[3] - t[2] == 920
    assert (s["idle_s"], s["billable_s"], s["billed_min"], s["fee"]) == (920, 620, 10, 500)
    assert s["synced"] is True and s["tariff_id"] == "T0" and s["energy_wh"] > 0
    q = fee.quote(T0, s["timeline"])
    assert s["minutes"] == q["minutes"] == [{"start": t[2] + 300, "count": 10, "rate": 50}]
    ev = r.events(msgs)
    types = [e["type"] for e in ev]
    assert types[0] == "boot"
    assert [e["status"] for e in ev if e["type"] == "status"] == ["Preparing", "Charging", "SuspendedEV", "Available"]
    cc = r.events(msgs, "charge_complete")
    assert len(cc) == 1 and cc[0]["at"] == t[2] and cc[0]["grace_end"] == t[2] + 300
    started = r.events(msgs, "idle_fee_started")
    assert len(started) == 1 and started[0]["at"] == t[2] + 300 and started[0]["rate"] == 50
    ticks = r.events(msgs, "idle_tick")
    assert [e["billed_min"] for e in ticks] == list(range(1, 11))
    assert [e["fee"] for e in ticks] == [50 * k for k in range(1, 11)]
    assert all(e["session"] == s["session_id"] for e in ev if e["type"] != "boot")
    # Message seqs strictly increase in the order they were made.
    seqs = [m.seq for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_idle_ticks_are_published_each_minute_while_idle():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(100, pilot="C", ma=16000)
    r.run(60 + 300, pilot="C", ma=0)  # complete hold, then grace
    assert r.events(r.sent(ack=True), "idle_tick") == []
    r.run(60)
    ticks = r.events(r.sent(ack=True), "idle_tick")
    assert [e["billed_min"] for e in ticks] == [1]
    r.run(180)
    ticks = r.events(r.sent(ack=True), "idle_tick")
    assert [e["billed_min"] for e in ticks] == [2, 3, 4]


def test_resume_after_complete_then_idle_again():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(600, pilot="C", ma=16000)
    r.run(400, pilot="C", ma=0)  # complete (60 s hold), 340 s idle: 40 s billable
    r.run(300, pilot="C", ma=12000)  # the car draws again: Charging after resume hold
    r.run(700, pilot="C", ma=0)
    r.run(2, pilot="A")
    s, msgs = session(r)
    st = [e["status"] for e in s["timeline"]]
    assert st == ["Preparing", "Charging", "SuspendedEV", "Charging", "SuspendedEV", "Available"]
    assert s["idle_s"] == 400 + 700
    assert s["fee"] == fee.quote(T0, s["timeline"])["fee"] == (1100 - 300) // 60 * 50
    assert len(r.events(msgs, "charge_complete")) == 1  # the first completion only


def test_fault_stops_the_idle_clock_and_resumes_where_it_was():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(600, pilot="C", ma=16000)
    r.run(400, pilot="C", ma=0)
    r.run(100, fault=True)
    r.run(300, fault=False)
    r.run(2, pilot="A")
    s, _ = session(r)
    st = [e["status"] for e in s["timeline"]]
    assert st == ["Preparing", "Charging", "SuspendedEV", "Faulted", "SuspendedEV", "Available"]
    # The fault's 100 s are not idle; idle resumes (retroactively) when it clears.
    assert s["idle_s"] == 400 + 300


def test_pilot_error_state_faults_and_opens_the_relay():
    r = Rig(now=0)
    r.run(10, pilot="B")
    r.run(40, pilot="C", ma=16000)
    assert r.core.relay is True
    r.run(5, pilot="E")
    assert r.core.status == "Faulted" and r.core.relay is False


def test_pause_withholds_energy_and_stops_idle_billing():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(600, pilot="C", ma=16000)
    r.run(400, pilot="C", ma=0)
    assert r.deliver(*r.backend.cmd({"op": "pause", "connector": 1, "reason": "maintenance"}, t=UNIX0 + 1000)) == "ok"
    r.run(1)
    assert r.core.status == "SuspendedEVSE" and r.core.relay is False and r.core.paused
    r.run(200)
    assert r.deliver(*r.backend.cmd({"op": "resume"}, t=UNIX0 + 1200)) == "ok"
    r.run(100)
    r.run(2, pilot="A")
    s, msgs = session(r)
    assert [e["status"] for e in s["timeline"]] == ["Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "SuspendedEV", "Available"]
    assert s["idle_s"] == 400 + 100  # paused time is not idle; idle again from the resume
    assert [e["type"] for e in r.events(msgs) if e["type"] in ("paused", "resumed")] == ["paused", "resumed"]


def test_pause_is_remembered_across_a_reboot():
    r = Rig(now=0)
    r.deliver(*r.backend.cmd({"op": "pause"}))
    r2 = Rig(fs=r.fs.reboot(), now=0)
    assert r2.core.paused is True
    r2.run(10, pilot="B")
    r2.run(60, pilot="C", ma=16000)
    assert r2.core.status == "SuspendedEVSE" and r2.core.relay is False


def test_tariff_update_applies_to_sessions_that_start_after_it():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(600, pilot="C", ma=16000)
    t2 = {"id": "T2", "version": 2, "rate": 100, "grace_s": 0}
    assert r.deliver(*r.backend.tariff(t2, t=UNIX0 + 600)) == "ok"
    r.run(400, pilot="C", ma=0)
    r.run(2, pilot="A")
    r.run(10, pilot="B")
    r.run(100, pilot="C", ma=16000)
    r.run(400, pilot="C", ma=0)
    r.run(2, pilot="A")
    msgs = r.drain()
    a, b = r.sessions(msgs)
    assert (a["tariff_id"], a["fee"]) == ("T0", fee.quote(T0, a["timeline"])["fee"])
    assert (b["tariff_id"], b["fee"]) == ("T2", 400 // 60 * 100)


def test_occupancy_tiers_price_minutes_as_in_example_5():
    tiers = dict(T0, tiers=[{"min_occupancy_pct": 50, "rate": 50}, {"min_occupancy_pct": 100, "rate": 100}])
    r = Rig(now=0, cfg=make_cfg(tariff=tiers, occupancy_ttl_s=100000))
    r.sync(UNIX0)
    r.deliver(*r.backend.occupancy(40, t=UNIX0))
    r.run(10, pilot="B")
    r.run(3600, pilot="C", ma=16000)
    r.run(600, pilot="C", ma=0)  # 3610 + 600 = 4210
    r.deliver(*r.backend.occupancy(100, t=UNIX0 + 4210))
    r.run(320, pilot="C", ma=0)
    r.run(5, pilot="A")
    s, _ = session(r)
    assert [e.get("occupancy") for e in s["timeline"] if "occupancy" in e] == [40, 100]
    assert s["fee"] == 500 and [(m["count"], m["rate"]) for m in s["minutes"]] == [(5, 0), (5, 100)]
    assert s["minutes"] == fee.quote(tiers, s["timeline"])["minutes"]


def test_occupancy_expires_after_its_ttl_and_new_sessions_carry_none():
    tiers = dict(T0, tiers=[{"min_occupancy_pct": 50, "rate": 80}])
    r = Rig(now=0, cfg=make_cfg(tariff=tiers, occupancy_ttl_s=600))
    r.sync(UNIX0)
    r.deliver(*r.backend.occupancy(90, t=UNIX0))
    r.run(700)
    assert r.core.occ is None
    r.run(10, pilot="B")
    r.run(2, pilot="A")
    s, _ = session(r)
    assert [e for e in s["timeline"] if "occupancy" in e] == []


def test_occupancy_without_tiers_stays_out_of_the_timeline():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.deliver(*r.backend.occupancy(90))
    r.run(10, pilot="B")
    r.deliver(*r.backend.occupancy(20, t=UNIX0 + 10))
    r.run(2, pilot="A")
    s, _ = session(r)
    assert all("occupancy" not in e for e in s["timeline"])


def test_records_before_the_first_sync_are_corrected_when_it_comes():
    r = Rig(now=0)  # no wall time yet
    r.run(10, pilot="B")
    r.run(600, pilot="C", ma=16000)
    r.run(400, pilot="C", ma=0)
    early = r.sent(ack=True)
    assert all(m.body.get("synced") is False for m in early if "synced" in m.body)
    assert r.events(early, "charge_complete")[0]["at"] < 10000  # seconds since boot: not a wall instant
    r.sync(UNIX0 + 5000)  # NTP answers: wall time at the current instant
    r.run(2, pilot="A")
    s, _ = session(r)
    assert s["synced"] is True
    t = [e["t"] for e in s["timeline"]]
    now_unix = UNIX0 + 5000
    assert t[-1] == now_unix + 1 and t[1] - t[0] == 10 and t[2] - t[1] == 600 and t[3] - t[2] == 400 + 1 - 1
    assert s["idle_s"] == 400 and s["fee"] == fee.quote(T0, s["timeline"])["fee"]


def test_a_wall_clock_step_never_changes_a_billed_duration():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(600, pilot="C", ma=16000)
    r.run(300, pilot="C", ma=0)
    r.sync(UNIX0 - 7200)  # NTP steps the clock two hours back mid-session
    r.run(620)
    r.sync(UNIX0 + 86400)  # and a day forward
    r.run(2, pilot="A")
    s, _ = session(r)
    t = [e["t"] for e in s["timeline"]]
    assert t[3] - t[2] == 920 and s["idle_s"] == 920 and s["fee"] == 500
    # The next session follows the new clock.
    r.run(10, pilot="B")
    r.run(2, pilot="A")
    nxt = r.sessions(r.drain())[0]
    assert nxt["plug_in"] >= UNIX0 + 86400


def test_three_week_session_across_tick_wraps_is_billed_exactly():
    from stall.clock import MonoClock, VirtualTicks

    ticks = VirtualTicks(start_ms=(1 << 30) - 5000)  # wraps 5 s after boot, then every 12.4 days
    clock = MonoClock(ticks)
    r = Rig(now=0)
    r.sync(UNIX0)

    def run(seconds, step=10000, **kw):
        r.set(**kw)
        end = clock.now_ms() + seconds * 1000
        k = 0
        while clock.now_ms() < end:
            ticks.advance(min(step, end - clock.now_ms()))
            r.now = clock.now_ms()
            r.core.sample(r.now, r.pilot, r.ma, r.wh, r.fault)
            r.core.tick(r.now)
            k += 1
            if k % 50 == 0:
                r.sent(ack=True)

    run(10, step=1000, pilot="B")
    run(4 * 3600, step=60000, pilot="C", ma=16000)
    three_weeks = 21 * 86400
    run(three_weeks, step=60000, pilot="C", ma=0)
    run(5, step=1000, pilot="A")
    assert ticks.ms > 2 * (1 << 30)  # the tick counter wrapped at least twice
    r.drain()
    s, _ = session(r, r.seen)
    t = [e["t"] for e in s["timeline"]]
    # Statuses start at the first sample showing them (10 s grid, then 1 s).
    assert t[2] - t[1] == 4 * 3600
    idle = three_weeks - 60 + 1
    assert t[3] - t[2] == idle
    assert s["idle_s"] == idle and s["billed_min"] == (idle - 300) // 60
    assert s["fee"] == (idle - 300) // 60 * 50



def test_seq_floor_from_config_starts_numbers_above_it():
    """A replacement board (fresh journal, no NTP yet) enrolled with a floor never reuses an old number."""
    floor = UNIX0 * 1000
    r = Rig(now=0, cfg=make_cfg(seq_floor=floor))
    example1(r)
    msgs = r.drain()
    assert msgs and min(m.seq for m in msgs) > floor
    # Without a floor, an unsynced fresh board counts from 1.
    r0 = Rig(now=0)
    example1(r0)
    assert min(m.seq for m in r0.drain()) < floor
