# Tests for protocol/fee.py: the spec's worked examples, tariff validation, and invariants checked against a per-second oracle.
import datetime

import pytest
from hypothesis import given, settings, strategies as st

from protocol import fee
from protocol.fee import TariffError, TimelineError, parse_tariff, quote
from tests.fee_examples import EX1, T0


# --- the spec's worked examples (section 9) ---------------------------------


def test_example_1_floor():
    r = quote(T0, EX1)
    assert r == {
        "session_start": 0,
        "session_end": 4530,
        "idle_s": 920,
        "billable_s": 620,
        "billed_min": 10,
        "fee": 500,
        "currency": "USD",
        "capped": False,
        "minutes": [{"start": 3910, "count": 10, "rate": 50}],
    }


def test_example_2_inside_grace():
    tl = EX1[:3] + [{"t": 3800, "status": "Available"}]
    r = quote(T0, tl)
    assert (r["idle_s"], r["billable_s"], r["billed_min"], r["fee"], r["minutes"]) == (190, 0, 0, 0, [])


def test_example_3_ceil():
    r = quote(dict(T0, rounding="ceil"), EX1)
    assert (r["billed_min"], r["fee"]) == (11, 550)
    assert r["minutes"] == [{"start": 3910, "count": 11, "rate": 50}]


def test_example_4_evse_pause():
    tl = EX1[:3] + [
        {"t": 4000, "status": "SuspendedEVSE"},
        {"t": 4100, "status": "SuspendedEV"},
        EX1[3],
    ]
    r = quote(T0, tl)
    assert (r["idle_s"], r["billable_s"], r["billed_min"], r["fee"]) == (820, 520, 8, 400)


def test_example_5_tiers():
    t = dict(T0, tiers=[{"min_occupancy_pct": 50, "rate": 50}, {"min_occupancy_pct": 100, "rate": 100}])
    tl = [{"t": 0, "occupancy": 40}] + EX1[:3] + [{"t": 4210, "occupancy": 100}, EX1[3]]
    r = quote(t, tl)
    assert r["fee"] == 500
    assert r["minutes"] == [
        {"start": 3910, "count": 5, "rate": 0},
        {"start": 4210, "count": 5, "rate": 100},
    ]


# --- rules in detail ----------------------------------------------------------


def test_open_session_priced_as_of_last_event_or_at():
    tl = EX1[:3]
    assert quote(T0, tl)["idle_s"] == 0  # as of its last event
    r = quote(T0, tl, at=4530)
    assert r["session_end"] is None
    assert (r["idle_s"], r["fee"]) == (920, 500)


def test_closed_session_ignores_at():
    assert quote(T0, EX1, at=99999) == quote(T0, EX1)


def test_at_before_start_is_an_error():
    tl = [{"t": 100, "status": "Preparing"}]
    with pytest.raises(TimelineError) as e:
        quote(T0, tl, at=50)
    assert e.value.field == "at"


def test_events_after_at_are_ignored_for_open_session():
    tl = EX1[:3] + [{"t": 5000, "status": "Charging"}]
    assert quote(T0, tl, at=4530)["idle_s"] == 920


def test_no_session_is_an_error():
    with pytest.raises(TimelineError):
        quote(T0, [{"t": 0, "status": "Available"}, {"t": 5, "occupancy": 10}])


def test_unsorted_timeline_is_an_error():
    with pytest.raises(TimelineError) as e:
        quote(T0, [{"t": 10, "status": "Preparing"}, {"t": 5, "status": "Charging"}])
    assert e.value.field == "timeline[1].t"


def test_unknown_status_is_an_error():
    with pytest.raises(TimelineError) as e:
        quote(T0, [{"t": 0, "status": "Parked"}])
    assert e.value.field == "timeline[0].status"


def test_start_timeout_bills_a_car_that_never_charges():
    tl = [{"t": 0, "status": "Preparing"}, {"t": 1500, "status": "Available"}]
    r = quote(T0, tl)  # idle from 600 to 1500 = 900 s, billable 600 s
    assert (r["idle_s"], r["billed_min"], r["minutes"][0]["start"]) == (900, 10, 900)
    assert quote(dict(T0, start_timeout_s=None), tl)["idle_s"] == 0


def test_preparing_after_the_timeout_counts_even_mid_session():
    tl = [
        {"t": 0, "status": "Preparing"},
        {"t": 100, "status": "Charging"},
        {"t": 700, "status": "Preparing"},
        {"t": 800, "status": "Available"},
    ]
    assert quote(T0, tl)["idle_s"] == 100


def test_unavailable_faulted_reserved_do_not_bill():
    tl = [
        {"t": 0, "status": "Charging"},
        {"t": 100, "status": "SuspendedEV"},
        {"t": 200, "status": "Unavailable"},
        {"t": 1000, "status": "Faulted"},
        {"t": 2000, "status": "Reserved"},
        {"t": 3000, "status": "Finishing"},
        {"t": 3100, "status": "Available"},
    ]
    assert quote(T0, tl)["idle_s"] == 200


def test_minute_that_starts_exactly_at_interval_end_begins_at_next_interval():
    # Billing clock reaches 60 exactly when the first idle run ends at 360.
    tl = [
        {"t": 0, "status": "SuspendedEV"},
        {"t": 360, "status": "Charging"},
        {"t": 1000, "status": "SuspendedEV"},
        {"t": 1100, "status": "Available"},
    ]
    r = quote(dict(T0, grace_s=0), tl)
    assert r["minutes"] == [{"start": 0, "count": 7, "rate": 50}]
    r = quote(dict(T0, grace_s=0, tiers=[{"min_occupancy_pct": 0, "rate": 7}]), tl + [])
    assert r["minutes"][0]["rate"] == 50  # no occupancy event: base rate
    tl2 = [{"t": 0, "occupancy": 10}] + tl
    t = dict(T0, grace_s=0, windows=[{"days": [3], "start": "00:00", "end": "00:06"}])
    r = quote(t, tl2)
    # minutes at 0..300 are inside Thursday 00:00-00:06; minute 6 begins at 1000, outside.
    assert r["minutes"] == [{"start": 0, "count": 6, "rate": 50}, {"start": 1000, "count": 1, "rate": 0}]


def test_cap():
    r = quote(dict(T0, cap=300), EX1)
    assert (r["fee"], r["capped"]) == (300, True)
    r = quote(dict(T0, cap=500), EX1)
    assert (r["fee"], r["capped"]) == (500, False)


def test_windows_with_utc_offset_and_midnight_end():
    # 2025-11-22 is a Saturday (5). 17:00 UTC is 09:00 at UTC-8.
    sat_17utc = 1763830800
    assert datetime.datetime.fromtimestamp(sat_17utc, datetime.timezone.utc).weekday() == 5
    t = dict(T0, grace_s=0, utc_offset_min=-480, windows=[{"days": [5], "start": "09:30", "end": "24:00"}])
    tl = [{"t": sat_17utc, "status": "SuspendedEV"}, {"t": sat_17utc + 3600, "status": "Available"}]
    r = quote(t, tl)
    assert r["minutes"] == [
        {"start": sat_17utc, "count": 30, "rate": 0},
        {"start": sat_17utc + 1800, "count": 30, "rate": 50},
    ]
    assert r["fee"] == 1500


def test_tier_below_all_thresholds_is_free():
    t = dict(T0, grace_s=0, tiers=[{"min_occupancy_pct": 50, "rate": 80}])
    tl = [{"t": 0, "occupancy": 10}, {"t": 0, "status": "SuspendedEV"}, {"t": 600, "status": "Available"}]
    assert quote(t, tl)["fee"] == 0


def test_equal_instant_occupancy_list_order_wins():
    t = dict(T0, grace_s=0, tiers=[{"min_occupancy_pct": 0, "rate": 1}, {"min_occupancy_pct": 50, "rate": 2}])
    tl = [
        {"t": 0, "occupancy": 90},
        {"t": 0, "occupancy": 10},
        {"t": 0, "status": "SuspendedEV"},
        {"t": 120, "status": "Available"},
    ]
    assert quote(t, tl)["minutes"] == [{"start": 0, "count": 2, "rate": 1}]


def test_three_week_session_with_thousands_of_changes_is_exact():
    tl = [{"t": 0, "status": "Preparing"}]
    t = 0
    for i in range(3000):
        t += 300
        tl.append({"t": t, "status": "Charging" if i % 2 else "SuspendedEV"})
        tl.append({"t": t + 1, "occupancy": (i * 7) % 101})
    t += 300
    tl.append({"t": t, "status": "Available"})
    tiered = dict(T0, tiers=[{"min_occupancy_pct": 0, "rate": 10}, {"min_occupancy_pct": 50, "rate": 20}])
    r = quote(tiered, tl)
    assert r["idle_s"] == 1500 * 300
    assert r["billed_min"] == (1500 * 300 - 300) // 60
    assert sum(m["count"] for m in r["minutes"]) == r["billed_min"]
    assert r["fee"] == sum(m["count"] * m["rate"] for m in r["minutes"])


# --- tariff validation names the field -----------------------------------------


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"rate": -1}, "rate"),
        ({"rate": 1.5}, "rate"),
        ({"rate": True}, "rate"),
        ({"rate": None}, "rate"),
        ({"grace_s": -5}, "grace_s"),
        ({"rounding": "nearest"}, "rounding"),
        ({"cap": -1}, "cap"),
        ({"cap": "10"}, "cap"),
        ({"start_timeout_s": 1.0}, "start_timeout_s"),
        ({"currency": "usd"}, "currency"),
        ({"version": "1"}, "version"),
        ({"id": ""}, "id"),
        ({"colour": "red"}, "colour"),
        ({"utc_offset_min": 1440}, "utc_offset_min"),
        ({"tiers": [{"min_occupancy_pct": 50, "rate": 1}, {"min_occupancy_pct": 20, "rate": 2}]}, "tiers[1].min_occupancy_pct"),
        ({"tiers": [{"min_occupancy_pct": 50, "rate": 1}, {"min_occupancy_pct": 50, "rate": 2}]}, "tiers[1].min_occupancy_pct"),
        ({"tiers": [{"min_occupancy_pct": 101, "rate": 1}]}, "tiers[0].min_occupancy_pct"),
        ({"tiers": [{"min_occupancy_pct": -1, "rate": 1}]}, "tiers[0].min_occupancy_pct"),
        ({"tiers": [{"min_occupancy_pct": 10, "rate": -1}]}, "tiers[0].rate"),
        ({"tiers": [{"min_occupancy_pct": 10}]}, "tiers[0].rate"),
        ({"tiers": [{"min_occupancy_pct": 10, "rate": 1, "x": 1}]}, "tiers[0].x"),
        ({"tiers": "all"}, "tiers"),
        ({"windows": []}, "windows"),
        ({"windows": [{"days": [], "start": "08:00", "end": "09:00"}]}, "windows[0].days"),
        ({"windows": [{"days": [7], "start": "08:00", "end": "09:00"}]}, "windows[0].days[0]"),
        ({"windows": [{"days": [1, 1], "start": "08:00", "end": "09:00"}]}, "windows[0].days[1]"),
        ({"windows": [{"days": [1], "start": "8:00", "end": "09:00"}]}, "windows[0].start"),
        ({"windows": [{"days": [1], "start": "08:00", "end": "24:01"}]}, "windows[0].end"),
        ({"windows": [{"days": [1], "start": "24:00", "end": "24:00"}]}, "windows[0].start"),
        ({"windows": [{"days": [1], "start": "10:00", "end": "09:00"}]}, "windows[0].start"),
        ({"windows": [{"days": [1], "start": "10:00", "end": "10:00"}]}, "windows[0].start"),
        ({"windows": [{"days": [1], "start": "10:00"}]}, "windows[0].end"),
        ({"windows": [{"days": [1], "start": "10:00", "end": "11:00", "tz": 1}]}, "windows[0].tz"),
    ],
)
def test_bad_tariff_names_the_field(patch, field):
    with pytest.raises(TariffError) as e:
        parse_tariff(dict(T0, **patch))
    assert e.value.field == field
    assert field in str(e.value)


@pytest.mark.parametrize("missing", ["id", "version", "rate"])
def test_required_fields(missing):
    d = dict(T0)
    del d[missing]
    with pytest.raises(TariffError) as e:
        parse_tariff(d)
    assert e.value.field == missing


def test_defaults():
    t = parse_tariff({"id": "x", "version": 0, "rate": 1})
    assert (t.currency, t.grace_s, t.rounding_ceil, t.cap, t.start_timeout_s, t.tiers, t.week) == (
        "USD",
        300,
        False,
        None,
        600,
        None,
        None,
    )


# --- invariants against an independent per-second oracle ---------------------

STATUS_POOL = ["Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Faulted", "Unavailable", "Reserved"]


def oracle(tariff, timeline, at=None):
    """Second-by-second reading of the rules, for small timelines only."""
    start_i = next(i for i, e in enumerate(timeline) if e.get("status") in fee.PLUGGED)
    start = timeline[start_i]["t"]
    end_i = next((j for j in range(start_i + 1, len(timeline)) if timeline[j].get("status") == "Available"), None)
    if end_i is not None:
        end = timeline[end_i]["t"]
        events = timeline[start_i:end_i]
    else:
        end = timeline[-1]["t"] if at is None else at
        events = timeline[start_i:]
    grace = tariff.get("grace_s", 300)
    timeout = tariff.get("start_timeout_s", 600)
    idle = 0
    taus = []
    for s in range(start, end):
        status = [e["status"] for e in events if "status" in e and e["t"] <= s][-1]
        running = status in ("SuspendedEV", "Finishing") or (
            status == "Preparing" and timeout is not None and s >= start + timeout
        )
        if running:
            b = idle - grace
            if b >= 0 and b % 60 == 0:
                taus.append(s)
            idle += 1
    billable = max(0, idle - grace)
    billed = -(-billable // 60) if tariff.get("rounding") == "ceil" else billable // 60
    occ = [e for e in timeline if "occupancy" in e]
    rates = []
    for tau in taus[:billed]:
        rate = tariff["rate"]
        if tariff.get("windows"):
            local = datetime.datetime.fromtimestamp(tau + 60 * tariff.get("utc_offset_min", 0), datetime.timezone.utc)
            sod = local.hour * 3600 + local.minute * 60 + local.second
            inside = False
            for w in tariff["windows"]:
                a = int(w["start"][:2]) * 3600 + int(w["start"][3:]) * 60
                b = int(w["end"][:2]) * 3600 + int(w["end"][3:]) * 60
                if local.weekday() in w["days"] and a <= sod < b:
                    inside = True
            if not inside:
                rates.append(0)
                continue
        if tariff.get("tiers"):
            seen = [e["occupancy"] for e in occ if e["t"] <= tau]
            if seen:
                rate = 0
                for tier in tariff["tiers"]:
                    if tier["min_occupancy_pct"] <= seen[-1]:
                        rate = tier["rate"]
        rates.append(rate)
    total = sum(rates)
    cap = tariff.get("cap")
    capped = cap is not None and total > cap
    runs = []
    for tau, rate in zip(taus, rates):
        if runs and runs[-1]["rate"] == rate:
            runs[-1]["count"] += 1
        else:
            runs.append({"start": tau, "count": 1, "rate": rate})
    return {
        "session_start": start,
        "session_end": end if end_i is not None else None,
        "idle_s": idle,
        "billable_s": billable,
        "billed_min": billed,
        "fee": min(total, cap) if capped else total,
        "currency": tariff.get("currency", "USD"),
        "capped": capped,
        "minutes": runs,
    }


@st.composite
def timelines(draw, closed=None):
    t = draw(st.integers(0, 10**9))
    evs = []
    # Sometimes the timeline opens before the plug-in: an occupancy report and
    # the connector still Available, which must not start the session.
    if draw(st.booleans()):
        evs.append({"t": t, "occupancy": draw(st.integers(0, 100))})
        evs.append({"t": t, "status": "Available"})
        t += draw(st.integers(0, 300))
    n = draw(st.integers(1, 12))
    first = draw(st.sampled_from(fee.PLUGGED))
    evs.append({"t": t, "status": first})
    for _ in range(n):
        t += draw(st.integers(0, 900))
        if draw(st.integers(0, 4)) == 0:
            evs.append({"t": t, "occupancy": draw(st.integers(0, 100))})
        else:
            evs.append({"t": t, "status": draw(st.sampled_from(STATUS_POOL))})
    if closed is None:
        closed = draw(st.booleans())
    if closed:
        t += draw(st.integers(0, 900))
        evs.append({"t": t, "status": "Available"})
    return evs


@st.composite
def tariffs(draw):
    d = {"id": "T", "version": 1, "rate": draw(st.integers(0, 200))}
    d["grace_s"] = draw(st.sampled_from([0, 1, 59, 60, 61, 300]))
    d["rounding"] = draw(st.sampled_from(["floor", "ceil"]))
    d["start_timeout_s"] = draw(st.sampled_from([None, 0, 30, 600]))
    if draw(st.booleans()):
        d["cap"] = draw(st.integers(0, 3000))
    if draw(st.booleans()):
        pcts = sorted(draw(st.sets(st.integers(0, 100), min_size=1, max_size=3)))
        d["tiers"] = [{"min_occupancy_pct": p, "rate": draw(st.integers(0, 200))} for p in pcts]
    if draw(st.booleans()):
        d["utc_offset_min"] = draw(st.integers(-720, 840))
        wins = []
        for _ in range(draw(st.integers(1, 3))):
            a = draw(st.integers(0, 1439))
            b = draw(st.integers(a + 1, 1440))
            wins.append(
                {
                    "days": sorted(draw(st.sets(st.integers(0, 6), min_size=1, max_size=7))),
                    "start": "%02d:%02d" % divmod(a, 60),
                    "end": "%02d:%02d" % divmod(b, 60),
                }
            )
        d["windows"] = wins
    return d


@settings(max_examples=300, deadline=None)
@given(tariffs(), timelines())
def test_engine_matches_per_second_oracle(tariff, timeline):
    assert quote(tariff, timeline) == oracle(tariff, timeline)


@settings(max_examples=200, deadline=None)
@given(tariffs(), timelines())
def test_fee_never_above_cap(tariff, timeline):
    r = quote(tariff, timeline)
    if tariff.get("cap") is not None:
        assert r["fee"] <= tariff["cap"]
    assert r["fee"] >= 0


@settings(max_examples=200, deadline=None)
@given(tariffs(), timelines())
def test_zero_within_grace(tariff, timeline):
    r = quote(tariff, timeline)
    if r["idle_s"] <= tariff["grace_s"]:
        assert r["fee"] == 0 and r["billed_min"] == 0 and r["minutes"] == []


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(0, 400), st.integers(0, 20000), st.integers(0, 20000), st.sampled_from(["floor", "ceil"]))
def test_constant_rate_fee_monotonic_in_idle_time(rate, grace, idle_a, extra, rounding):
    t = {"id": "T", "version": 1, "rate": rate, "grace_s": grace, "rounding": rounding}

    def priced(idle):
        return quote(t, [{"t": 0, "status": "Charging"}, {"t": 100, "status": "SuspendedEV"}, {"t": 100 + idle, "status": "Available"}])["fee"]

    assert priced(idle_a) <= priced(idle_a + extra)


@settings(max_examples=200, deadline=None)
@given(tariffs(), timelines())
def test_floor_le_ceil_le_floor_plus_one_minute(tariff, timeline):
    base = dict(tariff)
    base.pop("cap", None)
    f = quote(dict(base, rounding="floor"), timeline)
    c = quote(dict(base, rounding="ceil"), timeline)
    top_rate = max([base["rate"]] + [x["rate"] for x in base.get("tiers", [])])
    assert f["fee"] <= c["fee"] <= f["fee"] + top_rate
    assert f["billed_min"] <= c["billed_min"] <= f["billed_min"] + 1


@settings(max_examples=200, deadline=None)
@given(tariffs(), timelines(closed=True), st.data())
def test_splitting_a_pause_in_two_changes_nothing(tariff, timeline, data):
    # Insert a repeat of the current status somewhere inside the session: a
    # pause (or any period) cut in two must price exactly the same.
    start = next(j for j, e in enumerate(timeline) if e.get("status") in fee.PLUGGED)
    i = data.draw(st.integers(start + 1, len(timeline) - 1))
    prev_status = [e["status"] for e in timeline[:i] if "status" in e][-1]
    lo, hi = timeline[i - 1]["t"], timeline[i]["t"]
    mid = data.draw(st.integers(lo, hi))
    split = timeline[:i] + [{"t": mid, "status": prev_status}] + timeline[i:]
    assert quote(tariff, split) == quote(tariff, timeline)


def test_parsed_tariff_cache_sees_a_mutated_dict():
    t = dict(T0)
    assert quote(t, EX1)["fee"] == 500
    t["rate"] = 100  # same dict object, new content: must be validated and priced afresh
    assert quote(t, EX1)["fee"] == 1000
    t["rate"] = -1
    with pytest.raises(TariffError):
        quote(t, EX1)
    t["rate"] = 50
    t["tiers"] = [{"min_occupancy_pct": 0, "rate": 1}]
    assert parse_tariff(t).tiers == ((0, 1),)
    t["tiers"][0]["rate"] = 2  # nested change
    assert parse_tariff(t).tiers == ((0, 2),)


@pytest.mark.parametrize(
    "bad, field",
    [
        ([{"t": 0, "status": "Preparing"}, {"t": 1, "status": "Charging", "x": 1}], "timeline[1]"),
        ([{"t": 0, "status": "Preparing"}, {"t": 1}], "timeline[1]"),
        ([{"t": 0, "status": "Preparing"}, {"t": 1, "occupancy": 101}], "timeline[1].occupancy"),
        ([{"t": 0, "status": "Preparing"}, {"t": 1, "occupancy": True}], "timeline[1].occupancy"),
        ([{"t": 0, "status": "Preparing"}, {"t": "1", "status": "Charging"}], "timeline[1].t"),
        ([{"t": 0, "status": "Preparing"}, "Charging"], "timeline[1]"),
        ([{"t": 0, "status": "Preparing"}, {"t": 1, "status": "Charging", "occupancy": 5}], "timeline[1]"),
        ({"t": 0}, "timeline"),
    ],
)
def test_bad_timeline_names_the_event(bad, field):
    with pytest.raises(TimelineError) as e:
        quote(T0, bad)
    assert e.value.field.startswith(field)
