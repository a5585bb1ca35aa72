# Chaos suite, the seeded run generator: one seed gives one run's stalls, cars, flat tariff, faults and transport mode.
#
# Everything about a run comes from random.Random(seed), so `python -m
# tests.chaos --seed N` replays it. A plan is plain data (print it with
# describe()); tests/chaos_world.py carries it out and tests/chaos_check.py
# judges the result against the scenario's ground truth.
#
# Modes. "mem": the stalls' App/StallCore outboxes joined in memory to the
# bridge's Ingestor (tests/chaos_mem.py), with in-process equivalents of every
# fault; cheap and fully deterministic. "broker": a real Mosquitto and
# `overstay bridge` processes (tests/chaos_broker.py), for the faults that
# need them: the broker killed and restarted without persistence, the bridge
# SIGKILLed and killed between commit and ack. Seeds divisible by 5 run in
# broker mode unless a mode is forced.
#
# Cars. 1..3 stalls, 1..3 cars each, times in whole seconds: some never charge
# (the start timeout makes them idle), some stop on pilot B, some stay on C
# drawing 0.2 A, some leave before the charge-complete hold (never idle), some
# linger for hours. Lingering times stay clear of the 60 s complete hold by
# at least 10 s: the rules' boundary there is exact, a sampled controller's is not.
#
# Tariff. Flat (no occupancy tiers) so that a car's fee depends on what the
# car did and nothing else: grace, rate, floor/ceil, cap, start timeout,
# local-time windows. Occupancy pricing end to end is tests/test_e2e.py.
#
# Wall time. Every boot may learn the wall time late (ntp_delay_s). Cuts are
# placed so that every boot learns it before the stall's next cut: a boot
# that never learns it is placed by the firmware's estimate, right before the
# next boot (zero downtime, durations kept: docs/firmware.md), which moves
# its instants away from the ground truth's by the unknown downtime. That
# estimate is the documented behaviour and is not what this oracle checks.
#
# Faults (each run draws a few):
#   power_cut        a stall loses power at `at` for `down` s; with `budget`
#                    the supply dies `budget` bytes into the next journal write
#                    (MemFs; if none comes within CUT_WAIT_S, between two
#                    writes), else between two writes. Cuts are placed where
#                    no car changes anything from 70 s before to 10 s after
#                    the outage (see chaos_check: what a cut may change).
#   net_drop         a stall (0: every stall) is cut off the network for `dur` s
#                    (up to 4 hours of simulated time)
#   broker_restart   the broker dies (no persistence) at `at`, back after `down` s
#   bridge_crash     the bridge is killed at `at` and restarted after `down` s;
#                    broker mode: SIGKILL, then a bridge with
#                    OVERSTAY_FAULT=after_commit_exit, then a normal one; mem
#                    mode: the next batch commits and its acks are lost
#   ntp_delay_s      every boot learns the wall time this late (before that the
#                    stall estimates it: zero downtime, or seconds since boot)
#   network knobs    dup (share of publishes delivered twice), reorder_ms
#                    (random extra delivery delay: later messages overtake),
#                    replay_s (a proxy re-publishes a random stored payload
#                    about this often, from any earlier moment of the run)
import json
import random

from host_tools import scenario as scenmod
from protocol import connector

BASE_START = 1791000000  # 2026-10-03, a Saturday; each seed moves it by whole days and hours
MODES = ("mem", "broker")
HOLD_S = connector.DEFAULT_CONFIG["complete_hold_ms"] // 1000
RESUME_S = connector.DEFAULT_CONFIG["resume_hold_ms"] // 1000
CUT_CLEAR_BEFORE_S = HOLD_S + 10
CUT_CLEAR_AFTER_S = 10
CUT_WAIT_S = 60  # a cut with a budget waits this long for a journal write, then cuts between writes


class Plan:
    """One run: seed, mode, scenario document, faults [dict], knobs {}."""

    def __init__(self, seed, mode, doc, faults, knobs):
        self.seed = seed
        self.mode = mode
        self.doc = doc
        self.faults = faults
        self.knobs = knobs
        self.scenario = scenmod.parse(doc, "chaos-%d" % seed)

    @property
    def end_s(self):
        """Simulated seconds until every car is gone and every fault is over."""
        end = self.scenario.end_s
        for f in self.faults:
            end = max(end, f["at"] + f.get("down", 0) + f.get("dur", 0) + 30)
        return end


def mode_for(seed):
    return "broker" if seed % 5 == 0 else "mem"


def _tariff(rng):
    t = {"id": "chaos", "version": 1, "currency": "USD", "rate": rng.choice([1, 10, 25, 40, 50, 100, 120])}
    t["grace_s"] = rng.choice([0, 60, 120, 300, 600])
    if rng.random() < 0.5:
        t["rounding"] = "ceil"
    if rng.random() < 0.25:
        t["cap"] = rng.choice([100, 500, 2000])
    t["start_timeout_s"] = rng.choice([None, 120, 600, 900])
    if rng.random() < 0.2:
        a = rng.randint(0, 20)
        t["windows"] = [{"days": sorted(rng.sample(range(7), rng.randint(1, 7))), "start": "%02d:00" % a, "end": "%02d:%02d" % (rng.randint(a + 1, 23), rng.choice([0, 30]))}]
        t["utc_offset_min"] = rng.choice([-300, 0, 60, 330])
    return t


def _linger(rng):
    k = rng.random()
    if k < 0.15:
        return rng.randint(0, HOLD_S - 10)  # leaves before the charge-complete hold: never idle
    if k < 0.85:
        return rng.randint(HOLD_S + 10, 1800)
    return rng.randint(3600, 4 * 3600)


def _vehicles(rng, stalls, long_run):
    out = []
    for stall in range(1, stalls + 1):
        t = rng.randint(0, 900)
        for _ in range(rng.randint(1, 3)):
            charge = 0 if rng.random() < 0.15 else rng.randint(RESUME_S + 30, 3600 if long_run else 1800)
            linger = _linger(rng) if long_run else min(_linger(rng), 1800)
            if charge == 0 and linger < 60:
                linger = rng.randint(60, 1200)
            v = {"stall": stall, "arrive_s": t, "charge_s": charge, "amps": rng.choice([8, 16, 24, 32, 48]) if charge else 0, "linger_s": linger}
            if charge and rng.random() < 0.3:
                v["stop"] = "C"
            out.append(v)
            t += scenmod.HANDSHAKE_S + charge + linger + rng.randint(scenmod.MIN_GAP_S + 5, 1800)
    return out


def _changes(sc, stall):
    """Instants (s after start) at which the cars on `stall` change pilot or current."""
    out = []
    for v in sc.vehicles:
        if v.stall == stall:
            out += [s for s, _p, _ma in v.plan()]
    return sorted(out)


def _cut_ok(changes, at, down):
    return not any(at - CUT_CLEAR_BEFORE_S <= c <= at + CUT_WAIT_S + down + CUT_CLEAR_AFTER_S for c in changes)


def _synced_between(faults, stall, at, down, ntp_delay):
    """Every boot of the stall learns the wall time before its next cut (see the module comment)."""
    settle = ntp_delay + 40  # NTP asks every 30 s until it answers
    if at < settle:
        return False
    for f in faults:
        if f["kind"] == "power_cut" and f["stall"] == stall:
            if not (at >= f["at"] + CUT_WAIT_S + f["down"] + settle or f["at"] >= at + CUT_WAIT_S + down + settle):
                return False
    return True


def make(seed, mode=None):
    """The plan of run `seed` (mode: force "mem" or "broker"; default mode_for(seed))."""
    rng = random.Random(seed)
    mode = mode or mode_for(seed)
    if mode not in MODES:
        raise ValueError("mode must be one of %s" % ", ".join(MODES))
    stalls = rng.randint(1, 3)
    long_run = mode == "mem" and rng.random() < 0.3
    start = BASE_START + rng.randrange(0, 365) * 86400 + rng.randrange(0, 24) * 3600
    doc = {"site": "chaos", "stalls": stalls, "start": start, "tariff": _tariff(rng), "vehicles": _vehicles(rng, stalls, long_run)}
    sc = scenmod.parse(doc, "chaos-%d" % seed)
    span = sc.end_s
    ntp_delay = rng.choice([0, 0, 0, 30, 300])
    faults = []

    def at():
        return rng.randint(5, span)

    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        stall = rng.randint(1, stalls)
        ch = _changes(sc, stall)
        down = rng.choice([rng.randint(1, 60), rng.randint(60, 900)] + ([rng.randint(3600, 3 * 3600)] if long_run else []))
        for _try in range(60):
            # Half the cuts aim inside a visit, where they matter most.
            if rng.random() < 0.5:
                v = rng.choice([x for x in sc.vehicles if x.stall == stall])
                t = rng.randint(v.arrive_s, max(v.arrive_s, v.unplug_s))
            else:
                t = at()
            if t >= 5 and _cut_ok(ch, t, down) and _synced_between(faults, stall, t, down, ntp_delay):
                budget = rng.randint(0, 400) if rng.random() < 0.7 else None
                faults.append({"kind": "power_cut", "stall": stall, "at": t, "down": down, "budget": budget})
                break
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        dur = rng.choice([rng.randint(10, 900), rng.randint(900, 3600)] + ([rng.randint(3600, 4 * 3600)] if long_run else [rng.randint(3600, 2 * 3600)] if mode == "broker" else []))
        faults.append({"kind": "net_drop", "stall": 0 if rng.random() < 0.2 else rng.randint(1, stalls), "at": at(), "dur": dur})
    p_infra = 0.9 if mode == "broker" else 0.35
    if rng.random() < p_infra:
        faults.append({"kind": "broker_restart", "at": at(), "down": rng.randint(1, 600)})
    if rng.random() < p_infra:
        crash = {"kind": "bridge_crash", "at": at(), "down": rng.randint(1, 1800)}
        for b in [f for f in faults if f["kind"] == "broker_restart"]:
            # Real processes: a bridge restarted into a dead broker only waits for it
            # (paho's back-off); keep the two outages apart.
            if crash["at"] <= b["at"] + b["down"] + 60 and b["at"] <= crash["at"] + crash["down"] + 60:
                crash["at"] = b["at"] + b["down"] + 120
        faults.append(crash)
    faults.sort(key=lambda f: (f["at"], f["kind"]))
    knobs = {
        "dup": rng.choice([0, 0, 0.05, 0.25]),
        "reorder_ms": rng.choice([0, 0, 2000, 20000]),
        "replay_s": rng.choice([0, 0, 60, 600]),
        "coarse_ms": rng.choice([2000, 5000]),
        "heartbeat_s": rng.choice([5, 30, 60]),
        "resend_s": rng.choice([30, 60, 300]),
        "outbox_window": rng.choice([16] if mode == "broker" else [1, 4, 16]),
        "batch_max": rng.choice([1, 7, 50, 500]),
        "bridge_reconnect_s": rng.randint(1, 10),
        "net_seed": rng.randrange(1 << 30),
        "ntp_delay_s": ntp_delay,
    }
    return Plan(seed, mode, doc, faults, knobs)


def quiet_knobs(**over):
    """Knobs of a run without network faults (tests/test_e2e.py)."""
    k = {"dup": 0, "reorder_ms": 0, "replay_s": 0, "coarse_ms": 5000, "heartbeat_s": 60, "resend_s": 60, "outbox_window": 16,
         "batch_max": 500, "bridge_reconnect_s": 1, "net_seed": 1, "ntp_delay_s": 0}
    k.update(over)
    return k


def describe(plan):
    """One line: what the run does."""
    sc = plan.scenario
    kinds = {}
    for f in plan.faults:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    k = plan.knobs
    net = [name for name, on in (("dup", k["dup"]), ("reorder", k["reorder_ms"]), ("replay", k["replay_s"])) if on]
    return "%s: %d stall(s), %d car(s), %ds simulated; faults %s; network %s" % (
        plan.mode, sc.stalls, len(sc.vehicles), plan.end_s, ", ".join("%s x%d" % kv for kv in sorted(kinds.items())) or "none", "+".join(net) or "clean")


def dump(plan):
    return json.dumps({"seed": plan.seed, "mode": plan.mode, "scenario": plan.doc, "faults": plan.faults, "knobs": plan.knobs}, indent=1, sort_keys=True)
