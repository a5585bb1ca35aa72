# End to end: a scenario in, sessions out of the bridge's database, through a real Mosquitto and the real `overstay bridge` process; fees checked against the scenario's ground truth.
#
# The ground truth is host_tools.scenario.GroundTruth: charge complete at the
# end of charging, unplug after lingering, the site's occupancy from the cars
# present, all priced by protocol.fee. Two runs:
#
#   flat tariff, as a user runs it   `overstay bridge` and `overstay sim` as
#       processes (the simulator's stalls keep accelerated real time). Every
#       car's idle time is laid out at least 15 s away from a minute
#       boundary, so a loaded machine that samples a second or two late
#       cannot change a fee: fees are checked exactly, instants to within
#       LATE_S seconds (never early), and the bridge must have verified
#       every fee itself (fee_verified = 1).
#   occupancy tiers, in lockstep     the chaos harness's stalls (the firmware
#       App on virtual time, each on its own MqttLink) against the same
#       broker and bridge process. At every change of the site's occupancy,
#       time moves in 100 ms steps with real pauses until each stall holds
#       the bridge's new percentage, so a stall learns a change within a
#       second or two of simulated time (OCC_DELAY_S allows 3); the
#       scenario keeps billed minutes from starting in those seconds, so
#       the fee is exact. Statuses are exact
#       to the second. The bridge re-prices every record to the same fee;
#       it cannot cross-check the occupancy (its history is in real time,
#       the stalls' timelines in simulated time: verify_reason
#       occupancy_unknown, fee_verified NULL), so the test checks each
#       occupancy entry against the cars present instead.
import asyncio
import json
import os
import subprocess
import sys

from host_tools import scenario as scenmod
from host_tools import sim_keys
from protocol import fee
from tests import chaos, chaos_plan
from tests.bridge_helpers import ROOT, BridgeProcess, rows, sqlite_url

LATE_S = 5
OCC_DELAY_S = 3

FLAT = {
    "site": "e2e-flat",
    "stalls": 4,
    "start": "2026-11-02T17:00:00Z",
    "tariff": {"id": "flat", "version": 1, "currency": "USD", "grace_s": 60, "rate": 30, "cap": 200, "start_timeout_s": 120},
    "vehicles": [
        {"stall": 1, "arrive_s": 0, "charge_s": 60, "amps": 32, "linger_s": 330},  # idle 330: 4 billed minutes
        {"stall": 2, "arrive_s": 10, "charge_s": 90, "amps": 16, "linger_s": 200, "stop": "C"},  # stays on C at 0.2 A: 2 minutes
        {"stall": 3, "arrive_s": 20, "charge_s": 0, "amps": 0, "linger_s": 400},  # never charges: idle after the start timeout, 3 minutes
        {"stall": 4, "arrive_s": 30, "charge_s": 70, "amps": 32, "linger_s": 30},  # leaves before the charge-complete hold: no idle
        {"stall": 1, "arrive_s": 420, "charge_s": 60, "amps": 48, "linger_s": 630},  # 9 minutes, capped at 200
    ],
}

TIERED = {
    "site": "e2e-tiers",
    "stalls": 4,
    "start": "2026-11-01T18:00:00Z",
    "tariff": {"id": "tiers", "version": 1, "currency": "USD", "grace_s": 30, "rate": 0,
               "tiers": [{"min_occupancy_pct": 50, "rate": 60}, {"min_occupancy_pct": 100, "rate": 120}]},
    "vehicles": [
        {"stall": 1, "arrive_s": 0, "charge_s": 60, "amps": 32, "linger_s": 600},
        {"stall": 2, "arrive_s": 15, "charge_s": 120, "amps": 16, "linger_s": 300, "stop": "C"},
        {"stall": 3, "arrive_s": 40, "charge_s": 90, "amps": 24, "linger_s": 400},
        {"stall": 4, "arrive_s": 200, "charge_s": 60, "amps": 32, "linger_s": 205},
    ],
}


def _statuses(timeline):
    return [(e["t"], e["status"]) for e in timeline if "status" in e]


def test_flat_tariff_scenario_through_overstay_bridge_and_overstay_sim(tmp_path, mosquitto):
    sc = scenmod.parse(FLAT, "e2e-flat")
    truth = scenmod.GroundTruth(sc)
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(FLAT))
    url = sqlite_url(tmp_path / "bridge.db")
    # Stations enrolled the way the flashing tool does, before the bridge starts.
    db = sim_keys.open_db(url)
    sim_keys.from_db(db, sc.site, [sc.station(i) for i in range(1, sc.stalls + 1)])
    sim_keys.ensure_tariff(db, sc.site, sc.tariff)
    db.close()
    bridge = BridgeProcess(tmp_path, mosquitto.url, url).start()
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        sim = subprocess.run(
            [sys.executable, "-m", "host_tools.cli", "sim", "--broker", mosquitto.url, "--scenario", str(path), "--db", url,
             "--speed", "60", "--memfs", "--quiet", "--wait-occupancy", "0", "--drain-timeout", "30"],
            cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=120,
        )
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert "every record is acked by the bridge" in sim.stdout, sim.stdout
        assert bridge.terminate() == 0
    finally:
        bridge.close()
    assert "Traceback" not in bridge.logs()

    got = rows(url, "SELECT station, session_id, plug_in, first_charging, charge_complete, unplug, energy_wh, billed_min, fee, fee_bridge,"
                    " fee_verified, verify_reason, capped, timeline FROM sessions ORDER BY plug_in")
    assert len(got) == len(sc.vehicles), got
    assert len({r[1] for r in got}) == len(got)
    assert rows(url, "SELECT COUNT(*) FROM quarantine") == [(0,)]
    assert rows(url, "SELECT reason, COUNT(*) FROM rejects WHERE NOT (kind = 'state' AND reason = 'replay') GROUP BY reason") == []
    for v in sc.vehicles:
        m = truth.milestones(v)
        q = truth.quote(v)
        cand = [r for r in got if r[0] == sc.station(v.stall) and m["plug_in"] <= r[2] <= m["plug_in"] + LATE_S]
        assert len(cand) == 1, (v.label(), got)
        station, sid, plug_in, first_ch, complete, unplug, energy, billed, fee_st, fee_br, verified, reason, capped, tl = cand[0]
        for name, val in (("first_charging", first_ch), ("charge_complete", complete), ("unplug", unplug)):
            want = m[name]
            assert (val is None) == (want is None) and (want is None or want <= val <= want + LATE_S), (v.label(), name, val, want)
        want_tl = truth.statuses(v)
        have_tl = _statuses(json.loads(tl))
        assert [s for _t, s in have_tl] == [e["status"] for e in want_tl], (v.label(), have_tl, want_tl)
        assert fee_st == q["fee"] and billed == q["billed_min"] and bool(capped) == q["capped"], (v.label(), fee_st, q)
        assert fee_br == fee_st and verified == 1 and reason is None, (v.label(), fee_br, verified, reason)
        assert abs(energy - m["energy_wh"]) <= m["energy_wh"] * 0.03 + 2, (v.label(), energy, m["energy_wh"])
    fees = [truth.quote(v)["fee"] for v in sc.vehicles]
    assert fees == [120, 60, 90, 0, 200]  # the layout above: one of each case, one capped


def test_occupancy_tiers_through_the_real_broker_and_bridge_match_the_ground_truth():
    from tests.chaos_world import World

    plan = chaos_plan.Plan(0, "broker", TIERED, [], chaos_plan.quiet_knobs(pump_ms=500, coarse_ms=2000))
    sc = plan.scenario
    world, db_url, workdir = _run_lockstep(plan, World)
    try:
        truth = world.truth
        got = rows(db_url, "SELECT station, plug_in, fee, fee_bridge, fee_verified, verify_reason, timeline FROM sessions")
        assert len(got) == len(sc.vehicles), (got, world.log)
        for st in world.stalls:
            assert st.core is not None and len(st.core.outbox) == 0 and not st.core.closing and st.core.tab is None
        for v in sc.vehicles:
            m = truth.milestones(v)
            r = [x for x in got if x[0] == sc.station(v.stall) and x[1] == m["plug_in"]]
            assert len(r) == 1, (v.label(), got)
            station, plug_in, fee_st, fee_br, verified, reason, tl = r[0]
            tl = json.loads(tl)
            assert _statuses(tl) == [(e["t"], e["status"]) for e in truth.statuses(v)], (v.label(), tl)
            occ = [e for e in tl if "occupancy" in e]
            assert occ, "a tiered tariff's record carries the occupancy it priced"
            for e in occ:
                assert e["occupancy"] in truth.values_between(e["t"] - OCC_DELAY_S, e["t"]), (v.label(), e, truth.occupancy())
            lo, hi = truth.fee_range(v, OCC_DELAY_S)
            assert lo == hi, "the scenario keeps billed minutes away from occupancy changes"
            assert fee_st == lo and fee_st == fee.quote(sc.tariff, tl)["fee"], (v.label(), fee_st, lo, tl)
            assert fee_br == fee_st and reason == "occupancy_unknown" and verified is None, (v.label(), fee_br, verified, reason)
        total = sum(truth.fee_range(v, OCC_DELAY_S)[0] for v in sc.vehicles)
        assert total > 0 and len({truth.tariff.rate_for_occupancy(p) for _t, _o, p in truth.occupancy()}) == 3  # the site goes through every tier
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def _run_lockstep(plan, World):
    import tempfile

    workdir = tempfile.mkdtemp(prefix="overstay-e2e-", dir=chaos.tmp_base())
    db_url = sqlite_url(os.path.join(workdir, "bridge.db"))
    keys = chaos.setup_db(db_url, plan)
    net = chaos.make_net(plan, workdir, db_url)
    world = World(plan, net, keys, occupancy_sync=True)
    asyncio.run(chaos._run(world, net, 60.0))
    assert world.timed_out is None, world.log
    assert not net.problems, net.problems
    return world, db_url, workdir
