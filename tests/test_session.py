# Tests for protocol/session.py: session records and live accrual, always priced by the fee engine.
import pytest
from hypothesis import given, settings, strategies as st

from protocol import fee
from protocol.session import Accountant, Session
from tests.fee_examples import T0

TIERED = dict(T0, id="T1", version=3, tiers=[{"min_occupancy_pct": 50, "rate": 50}, {"min_occupancy_pct": 100, "rate": 100}])


def counter():
    n = [0]

    def nxt():
        n[0] += 1
        return "S1-%d" % n[0]

    return nxt


def test_full_session_record():
    acc = Accountant("S1", 1, T0, counter())
    assert acc.on_status(0, "Preparing") is None
    acc.on_status(10, "Charging")
    acc.on_status(3610, "SuspendedEV")
    acc.on_charge_complete(3610)
    acc.session.set_energy(22000)
    done = acc.on_status(4530, "Available")
    assert done is not None and acc.session is None
    r = done.record()
    assert r["session_id"] == "S1-1"
    assert (r["station"], r["connector"]) == ("S1", 1)
    assert (r["plug_in"], r["first_charging"], r["charge_complete"], r["unplug"]) == (0, 10, 3610, 4530)
    assert (r["idle_s"], r["billed_min"], r["fee"], r["currency"]) == (920, 10, 500, "USD")
    assert (r["tariff_id"], r["tariff_version"], r["energy_wh"]) == ("T0", 1, 22000)
    assert r["minutes"] == [{"start": 3910, "count": 10, "rate": 50}]
    # The record carries its own timeline: anyone can re-price it with the same engine.
    assert fee.quote(T0, r["timeline"])["fee"] == r["fee"]


def test_live_accrual_and_grace_end():
    acc = Accountant("S1", 1, T0, counter())
    acc.on_status(0, "Charging")
    acc.on_status(1000, "SuspendedEV")
    s = acc.session
    assert s.grace_end(1000) == 1300
    assert s.grace_end(1299) == 1300
    assert s.grace_end(1300) is None
    assert [s.accrued(t) for t in (1000, 1300, 1359, 1360, 1420)] == [0, 0, 0, 50, 100]
    acc.on_status(1500, "Charging")
    assert s.grace_end(1600) is None
    assert s.accrued(99999) == 150  # charging again: frozen at 3 minutes


def test_tariff_change_reaches_only_later_sessions():
    acc = Accountant("S1", 1, T0, counter())
    acc.on_status(0, "SuspendedEV")
    acc.set_tariff(dict(T0, version=2, rate=100))
    first = acc.on_status(660, "Available").record()
    assert (first["tariff_version"], first["fee"]) == (1, 300)
    acc.on_status(1000, "SuspendedEV")
    second = acc.on_status(1660, "Available").record()
    assert (second["session_id"], second["tariff_version"], second["fee"]) == ("S1-2", 2, 600)


def test_occupancy_known_before_plug_in_prices_the_session():
    acc = Accountant("S1", 2, TIERED, counter())
    acc.on_occupancy(-50, 100)
    acc.on_status(0, "Charging")
    acc.on_occupancy(100, 100)  # unchanged: not stored again
    acc.on_status(100, "SuspendedEV")
    r = acc.on_status(100 + 300 + 120, "Available").record()
    assert r["fee"] == 200
    assert [e for e in r["timeline"] if "occupancy" in e] == [{"t": -50, "occupancy": 100}]


def test_closed_session_rejects_more_statuses_and_time_runs_forward():
    s = Session("x", "S1", 1, T0, 100, "Preparing")
    with pytest.raises(ValueError):
        s.add_status(50, "Charging")
    with pytest.raises(TypeError):
        s.add_status(150.5, "Charging")
    with pytest.raises(ValueError):
        s.add_status(200, "Parked")
    s.add_status(200, "Available")
    with pytest.raises(ValueError):
        s.add_status(300, "Charging")


def test_statuses_before_plug_in_open_nothing():
    acc = Accountant("S1", 1, T0, counter())
    for st_ in ("Available", "Faulted", "Unavailable", "Reserved"):
        assert acc.on_status(0, st_) is None
        assert acc.session is None


@st.composite
def status_runs(draw):
    t = 0
    out = []
    for _ in range(draw(st.integers(1, 15))):
        t += draw(st.integers(0, 1200))
        if draw(st.integers(0, 3)) == 0:
            out.append(("occ", t, draw(st.integers(0, 100))))
        else:
            out.append(("status", t, draw(st.sampled_from(fee.STATUSES))))
    return out


@settings(max_examples=200, deadline=None)
@given(status_runs(), st.integers(0, 5000))
def test_every_record_reprices_identically(events, later):
    acc = Accountant("S1", 1, TIERED, counter())
    records = []
    last_t = 0
    for kind, t, v in events:
        last_t = t
        if kind == "occ":
            acc.on_occupancy(t, v)
        else:
            done = acc.on_status(t, v)
            if done is not None:
                records.append(done.record())
    if acc.session is not None:
        at = last_t + later
        live = acc.session.record(at)
        assert live["unplug"] is None
        assert live["fee"] == fee.quote(TIERED, live["timeline"], at)["fee"] == acc.session.accrued(at)
    for r in records:
        q = fee.quote(TIERED, r["timeline"])
        assert (r["fee"], r["idle_s"], r["minutes"]) == (q["fee"], q["idle_s"], q["minutes"])
