# Scenario files: validation (one line per problem), the cars' plans, and the ground truth priced by the fee rules.
import json
import os

import pytest

from host_tools import scenario as scenmod
from host_tools.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T0 = {"id": "T0", "version": 1, "rate": 50, "grace_s": 300}
TIERS = {"id": "T1", "version": 1, "rate": 0, "grace_s": 0, "tiers": [{"min_occupancy_pct": 50, "rate": 50}, {"min_occupancy_pct": 100, "rate": 100}]}


def doc(**over):
    d = {"site": "lot-a", "stalls": 2, "start": "2026-11-20T17:00:00Z", "tariff": T0,
         "vehicles": [{"stall": 1, "arrive_s": 0, "charge_s": 3600, "amps": 16, "linger_s": 920}]}
    d.update(over)
    return d


def problems(d, stalls=None):
    with pytest.raises(scenmod.ScenarioError) as e:
        scenmod.parse(d, "s.json", stalls)
    lines = str(e.value).splitlines()
    assert all(line.startswith("overstay: error: s.json: ") for line in lines)
    return [line[len("overstay: error: s.json: "):] for line in lines]


def test_shipped_scenarios_are_valid():
    folder = os.path.join(ROOT, "scenarios")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".json"))
    assert "busy-evening.json" in names
    for name in names:
        sc = scenmod.load(os.path.join(folder, name))
        assert sc.vehicles and sc.description


def test_busy_evening_is_a_busy_evening_at_tesla_like_rates():
    sc = scenmod.load(os.path.join(ROOT, "scenarios", "busy-evening.json"))
    assert sc.stalls == 8 and sc.site == "lot-a"
    t = sc.tariff
    assert t["grace_s"] == 300 and t["rate"] == 0
    assert t["tiers"] == [{"min_occupancy_pct": 50, "rate": 50}, {"min_occupancy_pct": 100, "rate": 100}]
    gt = scenmod.GroundTruth(sc)
    assert max(p for _t, _o, p in gt.occupancy()) == 100
    fees = [q["fee"] for _v, q in gt.summary()]
    assert sum(fees) > 0 and 0 in fees
    # An evening: about two and a half hours, so 150x runs it in about a minute.
    assert 2 * 3600 <= sc.end_s <= 3 * 3600


def test_start_forms():
    assert scenmod.parse_start("2026-11-20T17:00:00Z") == 1795194000
    assert scenmod.parse_start("2026-11-20T18:00:00+01:00") == 1795194000
    assert scenmod.parse_start(1795194000) == 1795194000
    for bad in ("2026-11-20T17:00:00", "yesterday", 12, 1.5, "2026-11-20T17:00:00.5Z"):
        with pytest.raises(ValueError):
            scenmod.parse_start(bad)


def test_every_problem_is_one_line():
    d = doc(
        stalls=2,
        tariff={"id": "x", "version": 1, "rate": 1.5},
        vehicles=[
            {"stall": 1, "arrive_s": 0, "charge_s": 600, "amps": 16, "linger_s": 90},
            {"stall": 1, "arrive_s": 300, "charge_s": 600, "amps": 16, "linger_s": 90},
            {"stall": 3, "arrive_s": 0, "charge_s": 600, "amps": 16, "linger_s": 90},
            {"stall": 2, "arrive_s": -5, "charge_s": 600, "amps": 16, "linger_s": 90},
            {"stall": 2, "arrive_s": 10, "charge_s": 10, "amps": 16, "linger_s": 90},
            {"stall": 2, "arrive_s": 10, "charge_s": 600, "amps": 3, "linger_s": 90, "colour": "red"},
        ],
    )
    got = problems(d)
    assert "tariff.rate: must be an integer >= 0" in got, got
    assert any("vehicles[1]: overlaps vehicles[0] on stall 1" in p for p in got), got
    assert any("vehicles[2].stall: unknown stall 3 (the scenario has stalls 1..2)" in p for p in got), got
    assert any(p.startswith("vehicles[3].arrive_s: must be a whole number of seconds >= 0, not -5") for p in got), got
    assert any(p.startswith("vehicles[4].charge_s: 10 s is too short for a stall to see charging (it needs 30 s") for p in got), got
    assert any(p.startswith("vehicles[5].amps: 3 A never counts as charging") for p in got), got
    assert any("vehicles[5]: unknown key 'colour'" in p for p in got), got
    assert len(got) == 7, got


def test_top_level_problems():
    got = problems({"site": "bad site!", "stalls": 0, "start": "noon", "vehicles": {}, "extra": 1})
    assert "tariff: required" in got
    assert any(p.startswith("unknown key 'extra'") for p in got)
    assert any(p.startswith("site: must be 1..32") for p in got)
    assert any(p.startswith("stalls: must be a whole number") for p in got)
    assert any(p.startswith("start: must be ISO 8601") for p in got)
    assert "vehicles: must be a list" in got


def test_charge_and_linger_keep_clear_of_the_connector_holds():
    v = {"stall": 1, "arrive_s": 0, "charge_s": 31, "amps": 16, "linger_s": 59}
    got = problems(doc(vehicles=[v]))
    assert got[0].startswith("vehicles[0].charge_s: 31 s is too short") and "give at least 33 s" in got[0]
    assert got[1].startswith("vehicles[0].linger_s: 59 s is too close to the 60 s") and "(stay 57 s or less, or 63 s or more)" in got[1]
    v.update(charge_s=33, linger_s=63)
    assert scenmod.parse(doc(vehicles=[v])).vehicles[0].linger_s == 63


def test_too_short_a_gap_between_two_cars_on_one_stall():
    vs = [{"stall": 1, "arrive_s": 0, "charge_s": 0, "amps": 0, "linger_s": 100},
          {"stall": 1, "arrive_s": 104, "charge_s": 0, "amps": 0, "linger_s": 100}]
    got = problems(doc(vehicles=vs, handshake_s=0))
    assert got == ["vehicles[1]: arrives on stall 1 at 104 s, only 4 s after vehicles[0] left: leave the stall empty at least 5 s"]
    vs[1]["arrive_s"] = 105
    assert len(scenmod.parse(doc(vehicles=vs, handshake_s=0)).vehicles) == 2


def test_more_stalls_than_the_scenario_and_station_ids():
    sc = scenmod.parse(doc(), "s", stalls=2000)
    assert sc.station(7, 2000) == "lot-a-0007"
    assert scenmod.parse(doc()).station(7) == "lot-a-007"
    assert problems(doc(stalls=4), stalls=2) == ["stalls: the scenario has 4 stalls but the simulation runs only 2"]
    assert any("station_prefix" in p for p in problems(doc(site="a" * 30)))
    assert scenmod.parse(doc(site="a" * 30, station_prefix="s")).station(1) == "s001"


def test_load_reports_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        scenmod.load(str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        scenmod.load(str(bad))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(doc()))
    assert scenmod.load(str(good)).vehicles[0].ma == 16000


def test_plan_is_the_pilot_sequence():
    sc = scenmod.parse(doc(vehicles=[{"stall": 1, "arrive_s": 10, "charge_s": 60, "amps": 32, "linger_s": 300, "stop": "C"}]))
    v = sc.vehicles[0]
    assert v.plan() == [(10, "B", 0), (12, "C", 32000), (72, "C", scenmod.RESIDUAL_MA), (372, "A", 0)]
    v2 = scenmod.parse(doc()).vehicles[0]
    assert [p[1] for p in v2.plan()] == ["B", "C", "B", "A"]
    v3 = scenmod.parse(doc(vehicles=[{"stall": 1, "arrive_s": 0, "charge_s": 0, "amps": 0, "linger_s": 60}])).vehicles[0]
    assert v3.plan() == [(0, "B", 0), (62, "A", 0)]


def test_ground_truth_reproduces_the_spec_example():
    # Example 1 of the idle-fee rules: charging 10..3610, idle 920 s, fee 500.
    sc = scenmod.parse(doc(handshake_s=10, vehicles=[{"stall": 1, "arrive_s": 0, "charge_s": 3600, "amps": 16, "linger_s": 920}]))
    gt = scenmod.GroundTruth(sc)
    v = sc.vehicles[0]
    t0 = sc.start
    assert gt.statuses(v) == [{"t": t0, "status": "Preparing"}, {"t": t0 + 10, "status": "Charging"},
                              {"t": t0 + 3610, "status": "SuspendedEV"}, {"t": t0 + 4530, "status": "Available"}]
    q = gt.quote(v)
    assert (q["idle_s"], q["fee"], q["minutes"][0]["start"]) == (920, 500, t0 + 3910)
    assert gt.milestones(v)["energy_wh"] == 16 * 230  # 16 A x 230 V for an hour


def test_a_short_linger_never_becomes_idle():
    # Unplugged 45 s after it stopped drawing: shorter than complete_hold (60 s).
    sc = scenmod.parse(doc(tariff=dict(T0, grace_s=0), vehicles=[{"stall": 1, "arrive_s": 0, "charge_s": 60, "amps": 16, "linger_s": 45}]))
    gt = scenmod.GroundTruth(sc)
    assert [e["status"] for e in gt.statuses(sc.vehicles[0])] == ["Preparing", "Charging", "Available"]
    assert gt.milestones(sc.vehicles[0])["charge_complete"] is None
    gt2 = scenmod.GroundTruth(sc, connector_cfg={"complete_hold_ms": 10000})
    assert [e["status"] for e in gt2.statuses(sc.vehicles[0])] == ["Preparing", "Charging", "SuspendedEV", "Available"]


def test_occupancy_and_tiers_from_the_cars_present():
    vs = [{"stall": 1, "arrive_s": 0, "charge_s": 60, "amps": 16, "linger_s": 600},
          {"stall": 2, "arrive_s": 300, "charge_s": 60, "amps": 16, "linger_s": 90}]
    sc = scenmod.parse(doc(tariff=TIERS, vehicles=vs))
    gt = scenmod.GroundTruth(sc)
    t0 = sc.start
    assert gt.occupancy() == [(t0, 1, 50), (t0 + 300, 2, 100), (t0 + 452, 1, 50), (t0 + 662, 0, 0)]
    assert gt.occupancy_at(t0 + 451) == 100 and gt.values_between(t0 + 440, t0 + 460) == {100, 50}
    v = sc.vehicles[0]
    # Idle 62..662, no grace: minutes at 62, 122, ...; those at 302, 362, 422 at 100 %, the rest at 50 %.
    q = gt.quote(v)
    assert q["billed_min"] == 10
    assert q["fee"] == 7 * 50 + 3 * 100
    # Learning each change up to 30 s late can leave the minute at 302 (2 s
    # after the change at 300) at the old rate; the one at 482 is 30 s after
    # the change back and cannot be affected.
    assert gt.fee_range(v, 30) == (q["fee"] - 50, q["fee"])
    assert gt.fee_range(v, 0) == (q["fee"], q["fee"])


def test_power_cut_outage_in_the_truth():
    sc = scenmod.parse(doc())
    gt = scenmod.GroundTruth(sc)
    v = sc.vehicles[0]
    t0 = sc.start
    sts = gt.statuses(v, [(t0 + 3700, t0 + 3800)])
    assert [(e["t"] - t0, e["status"]) for e in sts] == [(0, "Preparing"), (2, "Charging"), (3602, "SuspendedEV"), (3700, "Unavailable"), (3800, "SuspendedEV"), (4522, "Available")]
    assert gt.quote(v, [(t0 + 3700, t0 + 3800)])["idle_s"] == 920 - 100
