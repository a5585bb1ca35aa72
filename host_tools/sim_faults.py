# Simulator fault specs: parse the --power-cut/--net-drop/--pilot-glitch/--meter-error flags and place the random ones with a seeded generator.
#
#   --power-cut    STALL@T[+DOWN]        the stall loses power at T for DOWN (default 30 s)
#   --net-drop     STALL@T+DURATION      the stall (or `all`) loses the network at T for DURATION
#   --pilot-glitch STALL@T[:PILOT]       one sample reads PILOT (default A) at T
#   --meter-error  STALL@T+DURATION      meter reads fail from T for DURATION
#   any of them    random[+DURATION]     a random stall and instant (inside a car's visit), from --seed
#
# T and durations are simulated seconds after the scenario start: 90, 90s,
# 15m, 2h, 1h30m. STALL is a stall number (1..N).
import random as _random
import re

from host_tools.errors import UserError

KINDS = ("power_cut", "net_drop", "pilot_glitch", "meter_error")
FLAGS = {"power_cut": "--power-cut", "net_drop": "--net-drop", "pilot_glitch": "--pilot-glitch", "meter_error": "--meter-error"}
POWER_DOWN_S = 30
GLITCH_PILOTS = ("A", "B", "C", "D", "E", "F")
_DUR = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?$")


class Fault:
    """One fault to inject: kind, stall (1-based, or 0 for every stall), at_s, dur_s, pilot."""

    __slots__ = ("kind", "stall", "at_s", "dur_s", "pilot", "random")

    def __init__(self, kind, stall, at_s, dur_s=0, pilot=None, random=False):
        if kind not in KINDS:
            raise ValueError("unknown fault kind " + repr(kind))
        self.kind = kind
        self.stall = stall
        self.at_s = at_s
        self.dur_s = dur_s
        self.pilot = pilot
        self.random = random

    def __repr__(self):
        return "Fault(%s, stall %s, at %s s, %s s%s)" % (self.kind, self.stall, self.at_s, self.dur_s, ", " + self.pilot if self.pilot else "")


def duration(text):
    """Seconds of 90, 90s, 15m, 2h, 1h30m; ValueError otherwise."""
    m = _DUR.match(text.strip())
    if not text.strip() or m is None or not any(m.groups()):
        raise ValueError("not a duration (90, 90s, 15m, 2h, 1h30m): " + repr(text))
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def parse(kind, spec):
    """A Fault from one flag value; UserError naming the flag when it is malformed."""
    flag = FLAGS[kind]
    text = spec.strip()
    try:
        return _parse(kind, text)
    except ValueError as e:
        raise UserError("%s %s: %s" % (flag, spec, e)) from None


def _parse(kind, text):
    if text == "random" or text.startswith("random+"):
        dur = duration(text[7:]) if text.startswith("random+") else None
        if kind == "pilot_glitch" and dur is not None:
            raise ValueError("a pilot glitch has no duration (random, or STALL@T[:PILOT])")
        return Fault(kind, None, None, dur, None, random=True)
    if "@" not in text:
        raise ValueError("give STALL@SECONDS%s or random" % ("[+DOWN]" if kind == "power_cut" else "[:PILOT]" if kind == "pilot_glitch" else "+DURATION"))
    who, when = text.split("@", 1)
    if who == "all":
        if kind != "net_drop":
            raise ValueError("`all` works only for --net-drop")
        stall = 0
    else:
        if not who.isdigit() or int(who) < 1:
            raise ValueError("stall must be a stall number from 1, not %r" % who)
        stall = int(who)
    pilot = None
    dur = 0
    if kind == "pilot_glitch":
        if ":" in when:
            when, pilot = when.split(":", 1)
            if pilot not in GLITCH_PILOTS:
                raise ValueError("pilot must be one of %s, not %r" % (" ".join(GLITCH_PILOTS), pilot))
        else:
            pilot = "A"
        if "+" in when:
            raise ValueError("a pilot glitch lasts one sample: no +DURATION")
        at = duration(when)
    elif "+" in when:
        when, d = when.split("+", 1)
        at = duration(when)
        dur = duration(d)
        if dur < 1:
            raise ValueError("the duration must be at least 1 s")
    else:
        if kind != "power_cut":
            raise ValueError("give STALL@SECONDS+DURATION")
        at = duration(when)
        dur = POWER_DOWN_S
    return Fault(kind, stall, at, dur if kind != "power_cut" or dur else POWER_DOWN_S, pilot)


def place(faults, scenario, stalls, seed):
    """Resolve random faults with random.Random(seed); check stall numbers. Returns new Faults."""
    rng = _random.Random(seed)
    visits = sorted(scenario.vehicles, key=lambda v: (v.arrive_s, v.stall, v.index))
    out = []
    for f in faults:
        if not f.random:
            if f.stall and f.stall > stalls:
                raise UserError("%s: unknown stall %d (the simulation runs stalls 1..%d)" % (FLAGS[f.kind], f.stall, stalls))
            out.append(f)
            continue
        if not visits:
            raise UserError("%s random: the scenario has no vehicles to aim at" % FLAGS[f.kind])
        v = rng.choice(visits)
        lo, hi = v.arrive_s + 1, max(v.arrive_s + 1, v.unplug_s - 1)
        at = rng.randint(lo, hi)
        if f.kind == "power_cut":
            out.append(Fault(f.kind, v.stall, at, f.dur_s or POWER_DOWN_S))
        elif f.kind == "net_drop":
            out.append(Fault(f.kind, v.stall, at, f.dur_s or rng.randint(60, 900)))
        elif f.kind == "meter_error":
            # Shorter than the meter's staleness limit by default: the stall rides it out.
            out.append(Fault(f.kind, v.stall, at, f.dur_s or rng.randint(1, 4)))
        else:
            out.append(Fault(f.kind, v.stall, at, 0, rng.choice(("A", "B", "F"))))
    return out
