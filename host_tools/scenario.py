# Simulator scenarios: load and validate the JSON file, the cars' pilot/current plans, and the ground truth an end-to-end check prices independently of the firmware.
#
# A scenario is one site's stalls and the cars that use them (docs/scenarios.md):
#
#   {"site": "lot-a", "stalls": 8, "start": "2026-11-20T17:00:00Z",
#    "tariff": {...},                       protocol.fee tariff (parse_tariff)
#    "vehicles": [{"stall": 1, "arrive_s": 0, "charge_s": 1800, "amps": 32,
#                  "linger_s": 600, "stop": "B"}, ...]}
#
# Optional: "description", "handshake_s" (2), "volts" (230), "end_s", "station_prefix".
#
# A car plugs in at start + arrive_s (pilot B), asks for energy handshake_s
# later (pilot C) and draws `amps` for charge_s, then stops drawing: it goes
# back to pilot B ("stop": "B", the default) or stays on C drawing almost
# nothing ("stop": "C", 0.2 A); linger_s later it leaves (pilot A).
#
# The ground truth (GroundTruth) is what the cars did and what the idle-fee
# rules make of it, derived from this file alone: the statuses of spec
# section 10 with the connector's hold times (a car that leaves less than
# complete_hold after it stopped drawing never became SuspendedEV), the
# site's occupancy from the cars present, and the fee by protocol.fee.
import datetime
import json
import os

from host_tools.errors import UserError
from protocol import connector, fee, wire

HANDSHAKE_S = 2  # plug-in to the car's first request for energy
VOLTS = 230
MIN_GAP_S = 5  # a stall is empty at least this long between two cars
HOLD_MARGIN_S = 3  # charge_s and linger_s keep this far from the connector's holds, so sampling cannot decide them
TAIL_S = 120  # simulated time after the last car leaves (records close and go out)
RESIDUAL_MA = 200  # what a car that stays on pilot C draws once it is full
MAX_AMPS = 80  # IEC 61851-1 AC
MAX_STALLS = 100000
_TOP = ("site", "stalls", "start", "tariff", "vehicles", "description", "handshake_s", "volts", "end_s", "station_prefix")
_VEH = ("stall", "arrive_s", "charge_s", "amps", "linger_s", "stop", "name")


class ScenarioError(UserError):
    """A scenario with problems: one line each (`problems`)."""

    def __init__(self, where, problems):
        self.where = where
        self.problems = list(problems)
        super().__init__("\n".join("overstay: error: %s: %s" % (where, p) for p in self.problems))


def _int(x):
    return type(x) is int


def parse_start(value):
    """Unix seconds of a scenario start: an integer, or ISO 8601 with a UTC offset."""
    if _int(value):
        if value < 946684800:
            raise ValueError("must be a Unix time after 2000 (seconds)")
        return value
    if not isinstance(value, str):
        raise ValueError('must be ISO 8601 like "2026-11-20T17:00:00Z" or Unix seconds')
    try:
        d = datetime.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ValueError('must be ISO 8601 like "2026-11-20T17:00:00Z", not %r' % value) from None
    if d.tzinfo is None:
        raise ValueError("needs a UTC offset (end it with Z for UTC), not %r" % value)
    if d.microsecond:
        raise ValueError("must be a whole second")
    return int(d.timestamp())


def iso(unix_s):
    return datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def hms(unix_s):
    return datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).strftime("%H:%M:%S")


class Vehicle:
    """One car's visit; instants in seconds after the scenario start."""

    __slots__ = ("index", "stall", "arrive_s", "charge_s", "amps", "ma", "linger_s", "stop", "name", "handshake_s")

    def __init__(self, index, stall, arrive_s, charge_s, amps, linger_s, stop, name, handshake_s):
        self.index = index
        self.stall = stall
        self.arrive_s = arrive_s
        self.charge_s = charge_s
        self.amps = amps
        self.ma = int(round(amps * 1000))
        self.linger_s = linger_s
        self.stop = stop
        self.name = name
        self.handshake_s = handshake_s

    @property
    def charge_start_s(self):
        return self.arrive_s + self.handshake_s

    @property
    def charge_end_s(self):
        return self.charge_start_s + self.charge_s

    @property
    def unplug_s(self):
        return self.charge_end_s + self.linger_s

    def label(self):
        return self.name or "vehicles[%d]" % self.index

    def plan(self):
        """[(s after start, pilot, mA the car would draw)] in time order: what the car does."""
        out = [(self.arrive_s, "B", 0)]
        if self.charge_s > 0:
            out.append((self.charge_start_s, "C", self.ma))
            out.append((self.charge_end_s, "C", RESIDUAL_MA) if self.stop == "C" else (self.charge_end_s, "B", 0))
        out.append((self.unplug_s, "A", 0))
        return out


class Scenario:
    """A validated scenario (see the top of this file); build with parse() or load()."""

    def __init__(self, doc, name="scenario"):
        self.name = name
        self.doc = doc
        self.site = doc["site"]
        self.stalls = doc["stalls"]
        self.start = parse_start(doc["start"])
        self.tariff = doc["tariff"]
        self.description = doc.get("description", "")
        self.handshake_s = doc.get("handshake_s", HANDSHAKE_S)
        self.volts = doc.get("volts", VOLTS)
        self.prefix = doc.get("station_prefix", self.site + "-")
        self.vehicles = [
            Vehicle(i, v["stall"], v["arrive_s"], v["charge_s"], v["amps"], v["linger_s"], v.get("stop", "B"), v.get("name"), self.handshake_s)
            for i, v in enumerate(doc["vehicles"])
        ]
        last = max([v.unplug_s for v in self.vehicles] or [0])
        self.end_s = doc.get("end_s", last + TAIL_S)

    def station(self, stall, stalls=None):
        """Station id of stall number `stall` (1-based): prefix + zero-padded number."""
        width = max(3, len(str(stalls or self.stalls)))
        return "%s%0*d" % (self.prefix, width, stall)

    def by_stall(self):
        out = {}
        for v in sorted(self.vehicles, key=lambda v: v.arrive_s):
            out.setdefault(v.stall, []).append(v)
        return out


def parse(doc, name="scenario", stalls=None):
    """Validate a scenario document (a dict). Raises ScenarioError listing every problem.

    stalls: the number of stalls the simulation will run (default the scenario's)."""
    p = []
    if not isinstance(doc, dict):
        raise ScenarioError(name, ["must be a JSON object"])
    for k in doc:
        if k not in _TOP:
            p.append("unknown key %r (known: %s)" % (k, ", ".join(_TOP)))
    for k in ("site", "stalls", "start", "tariff", "vehicles"):
        if k not in doc:
            p.append("%s: required" % k)
    site = doc.get("site")
    if "site" in doc and not wire.valid_id(site):
        p.append("site: must be 1..32 characters of A-Z a-z 0-9 _ -, not %r" % (site,))
    n = doc.get("stalls")
    if "stalls" in doc and (not _int(n) or not 1 <= n <= MAX_STALLS):
        p.append("stalls: must be a whole number from 1 to %d, not %r" % (MAX_STALLS, n))
        n = None
    if stalls is not None and _int(n) and stalls < n:
        p.append("stalls: the scenario has %d stalls but the simulation runs only %d" % (n, stalls))
    total = stalls if stalls is not None else n
    if "start" in doc:
        try:
            parse_start(doc["start"])
        except ValueError as e:
            p.append("start: " + str(e))
    if "tariff" in doc:
        try:
            fee.parse_tariff(doc["tariff"])
        except ValueError as e:  # fee.TariffError names the field: "tariff.rate: ..."
            msg = str(e)
            p.append(msg if msg.startswith("tariff") else "tariff: " + msg)
    hs = doc.get("handshake_s", HANDSHAKE_S)
    if not _int(hs) or not 0 <= hs <= 600:
        p.append("handshake_s: must be a whole number of seconds from 0 to 600, not %r" % (hs,))
        hs = HANDSHAKE_S
    volts = doc.get("volts", VOLTS)
    if not _int(volts) or not 100 <= volts <= 480:
        p.append("volts: must be a whole number from 100 to 480, not %r" % (volts,))
    if "description" in doc and not isinstance(doc["description"], str):
        p.append("description: must be a string")
    prefix = doc.get("station_prefix", (site if isinstance(site, str) else "site") + "-")
    if not isinstance(prefix, str):
        p.append("station_prefix: must be a string")
    elif _int(total) and total >= 1:
        example = "%s%0*d" % (prefix, max(3, len(str(total))), total)
        if not wire.valid_id(example):
            p.append("station ids like %r are not valid ids (1..32 of A-Z a-z 0-9 _ -): set a shorter station_prefix" % example)
    holds = connector.DEFAULT_CONFIG
    resume_s = -(-holds["resume_hold_ms"] // 1000)
    vs = doc.get("vehicles")
    good = []
    if "vehicles" in doc and not isinstance(vs, list):
        p.append("vehicles: must be a list")
        vs = []
    for i, v in enumerate(vs or []):
        where = "vehicles[%d]" % i
        if not isinstance(v, dict):
            p.append(where + ": must be an object")
            continue
        bad = False
        for k in v:
            if k not in _VEH:
                p.append("%s: unknown key %r (known: %s)" % (where, k, ", ".join(_VEH)))
                bad = True
        for k in ("stall", "arrive_s", "charge_s", "amps", "linger_s"):
            if k not in v:
                p.append("%s.%s: required" % (where, k))
                bad = True
        st = v.get("stall")
        if "stall" in v:
            if not _int(st) or st < 1:
                p.append("%s.stall: must be a stall number from 1, not %r" % (where, st))
                bad = True
            elif _int(n) and st > n:
                p.append("%s.stall: unknown stall %d (the scenario has stalls 1..%d)" % (where, st, n))
                bad = True
        for k in ("arrive_s", "charge_s", "linger_s"):
            x = v.get(k)
            if k in v and (not _int(x) or x < 0):
                p.append("%s.%s: must be a whole number of seconds >= 0, not %r" % (where, k, x))
                bad = True
        amps = v.get("amps")
        if "amps" in v:
            if type(amps) not in (int, float) or amps != amps or amps < 0 or amps > MAX_AMPS:
                p.append("%s.amps: must be a number from 0 to %d, not %r" % (where, MAX_AMPS, amps))
                bad = True
            elif _int(v.get("charge_s")) and v["charge_s"] > 0 and amps * 1000 < holds["i_resume_ma"]:
                p.append("%s.amps: %s A never counts as charging (the stall needs at least %g A)" % (where, amps, holds["i_resume_ma"] / 1000))
                bad = True
        cs = v.get("charge_s")
        if _int(cs) and 0 < cs < resume_s + HOLD_MARGIN_S:
            p.append("%s.charge_s: %d s is too short for a stall to see charging (it needs %d s of current; give at least %d s, or 0 = never charges)"
                     % (where, cs, resume_s, resume_s + HOLD_MARGIN_S))
            bad = True
        ls = v.get("linger_s")
        if _int(cs) and cs > 0 and _int(ls) and abs(ls * 1000 - holds["complete_hold_ms"]) < HOLD_MARGIN_S * 1000:
            p.append("%s.linger_s: %d s is too close to the %d s a stall waits before it calls a car full: whether this car ever idles "
                     "would depend on sampling (stay %d s or less, or %d s or more)"
                     % (where, ls, holds["complete_hold_ms"] // 1000, holds["complete_hold_ms"] // 1000 - HOLD_MARGIN_S, holds["complete_hold_ms"] // 1000 + HOLD_MARGIN_S))
            bad = True
        if "stop" in v and v["stop"] not in ("B", "C"):
            p.append('%s.stop: must be "B" (pilot back to B when full) or "C" (stays on C drawing ~0 A), not %r' % (where, v["stop"]))
            bad = True
        if "name" in v and not isinstance(v["name"], str):
            p.append(where + ".name: must be a string")
            bad = True
        if not bad:
            veh = Vehicle(i, st, v["arrive_s"], cs, amps, v["linger_s"], v.get("stop", "B"), v.get("name"), hs)
            if veh.unplug_s - veh.arrive_s < 1:
                p.append("%s: stays less than a second (give linger_s or charge_s)" % where)
                continue
            good.append(veh)
    # Overlaps, per stall in arrival order.
    last = {}
    for veh in sorted(good, key=lambda x: (x.stall, x.arrive_s, x.index)):
        prev = last.get(veh.stall)
        if prev is not None and veh.arrive_s < prev.unplug_s + MIN_GAP_S:
            if veh.arrive_s < prev.unplug_s:
                p.append(
                    "vehicles[%d]: overlaps vehicles[%d] on stall %d (that car is there from %d s to %d s; this one arrives at %d s)"
                    % (veh.index, prev.index, veh.stall, prev.arrive_s, prev.unplug_s, veh.arrive_s)
                )
            else:
                p.append(
                    "vehicles[%d]: arrives on stall %d at %d s, only %d s after vehicles[%d] left: leave the stall empty at least %d s"
                    % (veh.index, veh.stall, veh.arrive_s, veh.arrive_s - prev.unplug_s, prev.index, MIN_GAP_S)
                )
            continue
        last[veh.stall] = veh
    if "end_s" in doc:
        e = doc["end_s"]
        lastu = max([x.unplug_s for x in good] or [0])
        if not _int(e) or e < 1:
            p.append("end_s: must be a whole number of seconds >= 1, not %r" % (e,))
        elif e < lastu:
            p.append("end_s: %d s is before the last car leaves (%d s)" % (e, lastu))
    if p:
        raise ScenarioError(name, p)
    return Scenario(doc, name)


def load(path, stalls=None):
    """Read and validate a scenario file; ScenarioError (a UserError) lists every problem."""
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError("--scenario: no such file: " + path) from None
    except IsADirectoryError:
        raise UserError("--scenario: is a directory: " + path) from None
    except OSError as e:
        raise UserError("--scenario: cannot read %s: %s" % (path, e.strerror or e)) from None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError("%s: not valid JSON: %s" % (name, e)) from None
    return parse(doc, name, stalls)


# -- ground truth ----------------------------------------------------------------


class GroundTruth:
    """What the scenario's cars did, in Unix seconds, and what the fee rules make of it.

    stalls: how many stalls the site has (occupancy's denominator; the
    simulation may run more stalls than the scenario uses)."""

    def __init__(self, scenario, stalls=None, connector_cfg=None):
        self.sc = scenario
        self.stalls = stalls or scenario.stalls
        self.ccfg = connector.parse_config(connector_cfg)
        self.tariff = fee.parse_tariff(scenario.tariff)
        self._occ = None

    def t(self, s):
        return self.sc.start + s

    def milestones(self, v):
        """{plug_in, first_charging, charge_complete, unplug, energy_wh} as the rules see the car."""
        t0 = self.sc.start
        complete = None
        charging = None
        if v.charge_s > 0:
            charging = t0 + v.charge_start_s
            if v.linger_s * 1000 > self.ccfg["complete_hold_ms"]:
                complete = t0 + v.charge_end_s
        mas = v.ma * v.charge_s + (RESIDUAL_MA * v.linger_s if v.stop == "C" and v.charge_s > 0 else 0)  # mA x s
        energy = mas * self.sc.volts // 3600000
        return {"plug_in": t0 + v.arrive_s, "first_charging": charging, "charge_complete": complete, "unplug": t0 + v.unplug_s, "energy_wh": energy}

    def statuses(self, v, outages=()):
        """The car's status timeline (spec section 10 with the connector's holds).

        outages: [(t_down, t_up)] Unix seconds when the controller was down
        (power cut): Unavailable in between, then the status the car is in."""
        m = self.milestones(v)
        tl = [(m["plug_in"], "Preparing")]
        if m["first_charging"] is not None:
            tl.append((m["first_charging"], "Charging"))
        if m["charge_complete"] is not None:
            tl.append((m["charge_complete"], "SuspendedEV"))
        end = m["unplug"]
        for down, up in sorted(outages):
            before = [s for s in tl if s[0] <= down]
            after = [s for s in tl if s[0] > down]
            status_at_up = [s for s in tl if s[0] <= up][-1][1]
            later = [s for s in after if s[0] > up]
            tl = before + [(down, "Unavailable")] + ([(up, status_at_up)] if up < end else []) + later
        tl.append((end, "Available"))
        return [{"t": t, "status": s} for t, s in tl]

    def occupancy(self):
        """[(t, occupied, pct)] at every change of the site's occupancy (cars present)."""
        if self._occ is None:
            deltas = {}
            for v in self.sc.vehicles:
                a = self.t(v.arrive_s)
                u = self.t(v.unplug_s)
                deltas[a] = deltas.get(a, 0) + 1
                deltas[u] = deltas.get(u, 0) - 1
            out = [(self.sc.start, 0, 0)]
            occ = 0
            for t in sorted(deltas):
                if deltas[t] == 0:
                    continue
                occ += deltas[t]
                pct = occ * 100 // self.stalls
                if t == out[-1][0]:
                    out[-1] = (t, occ, pct)
                else:
                    out.append((t, occ, pct))
            self._occ = out
        return self._occ

    def occupancy_at(self, t):
        pct = 0
        for ts, _occ, p in self.occupancy():
            if ts <= t:
                pct = p
            else:
                break
        return pct

    def values_between(self, a, b):
        """Occupancy percentages in force at some instant of [a, b]."""
        out = {self.occupancy_at(a)}
        for ts, _occ, p in self.occupancy():
            if a < ts <= b:
                out.add(p)
        return out

    def timeline(self, v, outages=(), delay_s=0, pick=None):
        """The fee timeline: statuses plus occupancy events during the visit.

        delay_s > 0 with pick (min or max over tier rates) gives the
        timeline a stall that learns each change up to delay_s late could
        have at worst/best: at every instant the occupancy is one that was
        in force at some instant of the delay_s before it."""
        sts = self.statuses(v, outages)
        a, u = sts[0]["t"], sts[-1]["t"]
        if self.tariff.tiers is None:
            return sts
        changes = [(t, p) for t, _o, p in self.occupancy() if a < t < u]
        if delay_s <= 0 or pick is None:
            occ = [(a, self.occupancy_at(a))] + changes
        else:
            points = sorted({a} | {t for t, _ in changes if t > a} | {t + delay_s for t, _ in changes if t + delay_s < u} | {t + delay_s for t, _o, _p in self.occupancy() if a - delay_s < t <= a})
            occ = []
            for t in points:
                vals = self.values_between(t - delay_s, t)
                occ.append((t, pick(vals, key=self.tariff.rate_for_occupancy)))
        evs = [{"t": t, "occupancy": p} for t, p in occ]
        # Merge in time order; at equal instants the status first (the session starts at it).
        merged = sorted([(e["t"], 0, i, e) for i, e in enumerate(sts)] + [(e["t"], 1, i, e) for i, e in enumerate(evs)], key=lambda x: x[:3])
        return [m[3] for m in merged]

    def quote(self, v, outages=()):
        return fee.quote(self.tariff, self.timeline(v, outages))

    def fee_range(self, v, delay_s, outages=()):
        """(lowest, highest) fee when the stall learns each occupancy change up to delay_s late."""
        if self.tariff.tiers is None or delay_s <= 0:
            f = self.quote(v, outages)["fee"]
            return f, f
        lo = fee.quote(self.tariff, self.timeline(v, outages, delay_s, min))["fee"]
        hi = fee.quote(self.tariff, self.timeline(v, outages, delay_s, max))["fee"]
        return min(lo, hi), max(lo, hi)

    def summary(self):
        """[(vehicle, quote)] for every car, in arrival order."""
        return [(v, self.quote(v)) for v in sorted(self.sc.vehicles, key=lambda v: (v.arrive_s, v.stall))]
