# The fault-injection suite inside `make test`: a few fixed seeds of each transport mode, the generator's reproducibility, and the oracle's own teeth.
#
# Many more seeds run with `make chaos RUNS=1000 JOBS=2` (docs/testing.md).
# The seeds below were picked so that together they cover every fault kind:
# power cuts inside journal writes and between them, network cut-offs of an
# hour and more, late NTP, duplicated, reordered and replayed delivery, the
# broker restarted empty and the bridge killed between commit and ack, both
# in memory and with the real Mosquitto and `overstay bridge` processes.
import json
import shutil

import pytest

from tests import chaos, chaos_plan
from tests.chaos_check import check

MEM_SEEDS = (152, 277, 285, 373)
BROKER_SEEDS = (40, 265)


def _run(seed, mode):
    r = chaos.run_seed(seed, mode)
    assert r["ok"], chaos.line(r) + "\n" + "\n".join(r["log"])


@pytest.mark.parametrize("seed", MEM_SEEDS)
def test_in_memory_seed(seed):
    _run(seed, "mem")


@pytest.mark.parametrize("seed", BROKER_SEEDS)
def test_real_broker_and_bridge_seed(seed):
    _run(seed, "broker")


def test_the_seeds_cover_every_fault():
    kinds = set()
    net = set()
    cut_in_write = cut_between = long_drop = late_ntp = False
    for seed, mode in [(s, "mem") for s in MEM_SEEDS] + [(s, "broker") for s in BROKER_SEEDS]:
        plan = chaos_plan.make(seed, mode)
        for f in plan.faults:
            kinds.add((f["kind"], mode))
            if f["kind"] == "power_cut":
                cut_in_write |= f["budget"] is not None
                cut_between |= f["budget"] is None
            long_drop |= f["kind"] == "net_drop" and f["dur"] >= 3600
        net |= {k for k in ("dup", "reorder_ms", "replay_s") if plan.knobs[k]}
        late_ntp |= plan.knobs["ntp_delay_s"] > 0
    for kind in ("power_cut", "net_drop", "broker_restart", "bridge_crash"):
        assert (kind, "mem") in kinds
    assert ("broker_restart", "broker") in kinds and ("bridge_crash", "broker") in kinds
    assert net == {"dup", "reorder_ms", "replay_s"}
    assert cut_in_write and cut_between and long_drop and late_ntp


def test_a_seed_is_a_plan():
    a, b = chaos_plan.make(4242), chaos_plan.make(4242)
    assert chaos_plan.dump(a) == chaos_plan.dump(b)
    assert chaos_plan.dump(chaos_plan.make(4243)) != chaos_plan.dump(a)
    assert [chaos_plan.mode_for(s) for s in (5, 6, 10)] == ["broker", "mem", "broker"]
    assert chaos_plan.make(5, "mem").mode == "mem"
    # Power cuts stay clear of what the cars do (see chaos_plan and chaos_check).
    for seed in range(200):
        plan = chaos_plan.make(seed)
        for f in plan.faults:
            if f["kind"] == "power_cut":
                assert chaos_plan._cut_ok(chaos_plan._changes(plan.scenario, f["stall"]), f["at"], f["down"])


def test_the_checker_finds_loss_duplicates_wrong_fees_and_leftovers():
    plan, world, db_url, workdir, problems = chaos.execute(277, "mem")
    try:
        assert problems == []
        from host_tools.bridge import db as dbmod

        db = dbmod.connect(db_url)
        with db.tx():
            rows = db.all("SELECT station, n, session_id, plug_in, fee, timeline FROM sessions ORDER BY plug_in")
        assert len(rows) == len(plan.scenario.vehicles) and len(rows) >= 2
        first, second = rows[0], rows[1]

        def problems_after(sql, params=()):
            with db.tx():
                db.execute(sql, params)
            return check(world, db_url)

        # A wrong fee.
        got = problems_after("UPDATE sessions SET fee = fee + 1 WHERE station = ? AND n = ?", (first[0], first[1]))
        assert any("fee %d" % (first[4] + 1) in p for p in got), got
        problems_after("UPDATE sessions SET fee = fee - 1 WHERE station = ? AND n = ?", (first[0], first[1]))
        # A second row for one car.
        got = problems_after(
            "INSERT INTO sessions (station, n, site, connector, session_id, plug_in, unplug, fee, currency, tariff_id, tariff_version, minutes, timeline, body_digest, received_at)"
            " SELECT station, n + 1, site, connector, session_id || 'x', plug_in, unplug, fee, currency, tariff_id, tariff_version, minutes, timeline, body_digest, received_at"
            " FROM sessions WHERE station = ? AND n = ?", (second[0], second[1]))
        assert any("2 session rows" in p for p in got), got
        # A lost one (and its audit row: the stall's published record is then missing too).
        got = problems_after("DELETE FROM sessions WHERE station = ? AND n IN (?, ?)", (second[0], second[1], second[1] + 1))
        assert any("0 session rows" in p for p in got), got
        got = problems_after("DELETE FROM audit WHERE station = ? AND n = ?", (second[0], second[1]))
        assert any("not in the audit ledger" in p for p in got), got
        # A status moved by a second (the bridge would still verify the fee it re-prices).
        tl = json.loads(first[5])
        tl[-1]["t"] += 1
        got = problems_after("UPDATE sessions SET timeline = ? WHERE station = ? AND n = ?", (json.dumps(tl), first[0], first[1]))
        assert any("statuses" in p for p in got), got
        # A stall still holding a record.
        st = world.stalls[0]
        st.core.outbox.entries.append([1, [0], "e", -1])
        assert any("holds 1 unacked" in p for p in check(world, db_url))
        db.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
