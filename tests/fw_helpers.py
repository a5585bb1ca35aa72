# Shared helpers for the firmware tests: config with demo keys, a core rig on an in-memory fs, a fake bridge and backend.
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIRMWARE = os.path.join(os.path.dirname(HERE), "firmware")
if FIRMWARE not in sys.path:
    sys.path.insert(0, FIRMWARE)

from protocol import wire  # noqa: E402
from stall import config as configmod  # noqa: E402
from stall.core import StallCore  # noqa: E402
from stall.memfs import MemFs, PowerCut  # noqa: E402

STATION_KEY = b"demo-station-key-0123456789abcdef"
SITE_KEY = b"demo-site-key-01-0123456789abcdef"
T0 = {"id": "T0", "version": 1, "rate": 50, "grace_s": 300}
UNIX0 = 1763830800  # a round instant for the wall clock


def make_cfg(**over):
    d = {
        "site": "lot-a",
        "station": "st-01",
        "station_key": STATION_KEY.hex(),
        "site_key": SITE_KEY.hex(),
        "tariff": T0,
    }
    d.update(over)
    return configmod.validate(d)


def key_for(sender):
    # Test stalls st-00, st-01, ... share the demo station key; lot-a is the site.
    return STATION_KEY if sender.startswith("st-") else SITE_KEY if sender == "lot-a" else None


class Backend:
    """Signs what the bridge and the backend send to a stall."""

    def __init__(self, site="lot-a", station="st-01"):
        self.site = site
        self.station = station
        self.n = {"ack": 0, "cmd": 0, "occupancy": 0, "tariff": 0}

    def _seq(self, leaf):
        self.n[leaf] += 1
        return self.n[leaf]

    def ack(self, ns, t=UNIX0):
        return wire.station_topic(self.site, self.station, "ack"), wire.encode(STATION_KEY, "ack", self.station, self._seq("ack"), t, {"acks": list(ns)})

    def cmd(self, body, t=UNIX0, seq=None, key=STATION_KEY, sender=None):
        n = self._seq("cmd") if seq is None else seq
        return wire.station_topic(self.site, self.station, "cmd"), wire.encode(key, "cmd", sender or self.station, n, t, body)

    def occupancy(self, pct, t=UNIX0, seq=None):
        n = self._seq("occupancy") if seq is None else seq
        return wire.site_topic(self.site, "occupancy"), wire.encode(SITE_KEY, "cmd", self.site, n, t, {"op": "occupancy", "occupancy": pct})

    def tariff(self, tariff, t=UNIX0, seq=None):
        n = self._seq("tariff") if seq is None else seq
        return wire.site_topic(self.site, "tariff"), wire.encode(SITE_KEY, "cmd", self.site, n, t, {"op": "tariff", "tariff": tariff})


def decode(payload):
    return wire.decode(payload, key_for)


class Rig:
    """A StallCore on a MemFs driven with scripted samples on a fake monotonic clock.

    `now` is the monotonic ms the core sees; `unix` (optional) the wall
    time at now == 0, fed with sync(). sent() pulls what the uplink would
    publish; the bridge side keeps every message it saw in `seen`."""

    def __init__(self, fs=None, cfg=None, now=0, boot_hint=0, safe=False, start=True):
        self.fs = fs if fs is not None else MemFs()
        self.cfg = cfg or make_cfg()
        self.core = StallCore(self.cfg, self.fs)
        self.now = now
        self.backend = Backend()
        self.seen = []  # decoded Messages the bridge received, in order
        self.pilot = "A"
        self.ma = 0
        self.wh = 0
        self._mj = 0  # energy below one Wh, in millijoules
        self.fault = False
        if start:
            self.core.start(now, boot_hint, safe)

    def sync(self, unix_s):
        self.core.wall(unix_s * 1000, self.now)

    def set(self, pilot=None, ma=None, fault=None):
        if pilot is not None:
            self.pilot = pilot
        if ma is not None:
            self.ma = ma
        if fault is not None:
            self.fault = fault

    def run(self, seconds, step_ms=1000, **kw):
        """Sample (and tick) every step_ms for `seconds`, the car as set()."""
        self.set(**kw)
        end = self.now + int(seconds * 1000)
        while self.now < end:
            self.now = min(end, self.now + step_ms)
            self._mj += self.ma * 230 * step_ms // 1000  # mA x 230 V = mW; x s = mJ
            self.wh += self._mj // 3600000
            self._mj %= 3600000
            self.core.sample(self.now, self.pilot, self.ma, self.wh, self.fault)
            self.core.tick(self.now)

    def sent(self, ack=False):
        """Messages the outbox would send now (decoded); optionally ack them all."""
        out = []
        for e in self.core.outbox.due(self.now):
            msg = decode(self.core.outbox.payload(e))
            self.core.outbox.mark_sent(e, self.now)
            out.append(msg)
            self.seen.append(msg)
        if ack and out:
            self.deliver(*self.backend.ack([m.seq for m in out]))
        return out

    def drain(self):
        """Send and ack until the outbox is empty; returns every message."""
        out = []
        while len(self.core.outbox):
            got = self.sent(ack=True)
            if not got:
                self.now += self.core.outbox.resend_ms
                continue
            out.extend(got)
        return out

    def deliver(self, topic, payload):
        return self.core.on_message(topic, payload, self.now)

    def events(self, msgs, typ=None):
        return [m.body for m in msgs if m.kind == "event" and (typ is None or m.body["type"] == typ)]

    def sessions(self, msgs):
        return [m.body for m in msgs if m.kind == "session"]
