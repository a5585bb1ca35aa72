# Session books: bounded timelines (fee-neutral merges first), snapshots, and moving boot segments to the true wall time.
from hypothesis import given, settings, strategies as st

from protocol import fee
from tests.fw_helpers import T0

from stall.tab import Tab  # noqa: I001

OPEN = ["o", "st-01-1", 1000, "Preparing", 1, 1000, True, T0, None, 0]


def tab(cap=1000):
    t = Tab("st-01", 1, OPEN, cap)
    t.oid = 7
    return t


statuses = st.sampled_from(["Charging", "SuspendedEV", "SuspendedEVSE", "Faulted", "Finishing"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 400), statuses), min_size=1, max_size=80), st.integers(8, 40))
def test_squeezing_never_bills_more_and_merges_are_fee_neutral(steps, cap):
    full, small = tab(), tab(cap)
    t = 1000
    for dt, s in steps:
        t += dt
        for x in (full, small):
            x.apply(["s", 7, t, s])
    end = t + 100
    for x in (full, small):
        x.apply(["s", 7, end, "Available"])
    a, b = full.s.quote(), small.s.quote()
    assert len(small.s.timeline) <= max(cap, 1)
    assert b["fee"] <= a["fee"]
    if small.coalesced == 0:
        assert b == a
    assert small.s.timeline[0] == full.s.timeline[0] and small.s.timeline[-1] == full.s.timeline[-1]


def test_snapshot_round_trip():
    t = tab()
    for i, s in enumerate(["Charging", "SuspendedEV", "Charging", "SuspendedEV"]):
        t.apply(["s", 7, 1100 + 100 * i, s])
    t.apply(["c", 7, 1200])
    t.apply(["b", 7, 1600, 2, 5000, False, 5000, "SuspendedEV"])
    import json

    u = Tab.from_snapshot("st-01", 1, json.loads(json.dumps(t.snapshot())), 1000)
    assert u.s.timeline == t.s.timeline and u.segs == t.segs and u.oid == 7
    assert u.record() == t.record()


def test_sync_moves_only_the_booting_segment_and_chains_estimates_back():
    t = Tab("st-01", 1, ["o", "s1", 10, "Preparing", 1, 0, False, T0, None, 0], 1000)
    t.oid = 7
    t.apply(["s", 7, 20, "Charging"])
    t.apply(["s", 7, 620, "SuspendedEV"])
    t.apply(["b", 7, 900, 2, 900, False, 900, "SuspendedEV"])  # boot 2, estimated offset
    before = [e["t"] for e in t.s.timeline]
    t.apply(["y", 7, 2, 1763830800])  # boot 2 learns its true offset
    after = [e["t"] for e in t.s.timeline]
    # Durations inside each boot unchanged; boot 1 placed right before boot 2.
    assert [b - a for a, b in zip(before, before[1:])][:3] == [b - a for a, b in zip(after, after[1:])][:3]
    assert after[3] == after[4] == 1763830800  # boot 2 began at its monotonic 0
    assert t.s.plug_in == after[0] and t.s.first_charging == after[1]
    assert t.synced is False and t.segs[1][3] is True
    assert fee.quote(T0, t.s.timeline)["idle_s"] == fee.quote(T0, [dict(e, t=e["t"] - after[0]) for e in t.s.timeline])["idle_s"]
