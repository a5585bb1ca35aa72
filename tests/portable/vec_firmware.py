# Golden-vector runner for the stall firmware core (firmware/stall): scripted scenarios through StallCore on an in-memory fs.
#
# The same scenario must produce byte-identical signed messages on CPython
# and on MicroPython. Input: {"op": "scenario", "cfg": {...overrides},
# "steps": [...]} with steps
#   ["run", seconds, step_s, pilot, mA]     sample (and tick) every step_s
#   ["sync", unix_s]                        the wall clock answers
#   ["cut", down_s]                         power cut: reboot on the surviving files, down_s later
#   ["cmd", leaf, body, t]                  a signed command on cmd/occupancy/tariff (leaf)
#   ["bad", leaf, body, t]                  the same signed with a wrong key (must be refused)
#   ["offline"] / ["online"]                the link goes down / comes back (reconnect: resend all)
# While online the bridge acks whatever was sent, after every sample.
# Output: {"n": messages sent, "digest": sha256 of all payloads joined by "\n",
#          "session": the last session payload, "results": command results,
#          "one_payload_per_seq": bool, "outbox": messages left unacked}
# Op "clock": a MonoClock over wrapping ticks advanced by "steps" ms each -> {"now_ms", "ticks"}.

import hashlib
import sys
from binascii import hexlify


def _up(p):
    i = p.rfind("/")
    return p[:i] if i > 0 else "/"


_FW = _up(_up(_up(__file__.replace("\\", "/")))).rstrip("/") + "/firmware"
if _FW not in sys.path:
    sys.path.insert(0, _FW)

from protocol import wire  # noqa: E402
from stall import config  # noqa: E402
from stall.clock import MonoClock, VirtualTicks  # noqa: E402
from stall.core import StallCore  # noqa: E402
from stall.memfs import MemFs  # noqa: E402

STATION_KEY = b"demo-station-key-0123456789abcdef"
SITE_KEY = b"demo-site-key-01-0123456789abcdef"
WRONG_KEY = b"not-the-right-key-0123456789abcd"
UNIX0 = 1763830800


def _cfg(over):
    d = {
        "site": "lot-a",
        "station": "st-01",
        "station_key": hexlify(STATION_KEY).decode(),
        "site_key": hexlify(SITE_KEY).decode(),
        "tariff": {"id": "T0", "version": 1, "rate": 50, "grace_s": 300},
    }
    for k in over:
        d[k] = over[k]
    return config.validate(d)


class _World:
    def __init__(self, cfg):
        self.cfg = cfg
        self.fs = MemFs()
        self.w = 0  # world ms
        self.boot_w = 0
        self.core = None
        self.out = []  # payloads in the order sent
        self.sent = []  # seqs sent, not yet acked
        self.n = {"cmd": 0, "occupancy": 0, "tariff": 0, "ack": 0}
        self.results = []
        self.wh = 0
        self.online = True
        self.boot()

    def now(self):
        return self.w - self.boot_w

    def boot(self):
        self.core = StallCore(self.cfg, self.fs)
        self.core.start(self.now())
        self.pump()

    def pump(self):
        c = self.core
        if not self.online:
            return
        if c.state_dirty:
            self.out.append(c.state_bytes)
            c.state_dirty = False
        ob = c.outbox
        for e in ob.due(self.now()):
            self.out.append(ob.payload(e))
            ob.mark_sent(e, self.now())
            self.sent.append(ob.seq(e))
        if self.sent:
            self.ack()

    def run(self, seconds, step_s, pilot, ma):
        end = self.w + seconds * 1000
        while self.w < end:
            self.w += step_s * 1000
            if ma:
                self.wh += ma * 230 * step_s // 3600000
            self.core.sample(self.now(), pilot, ma, self.wh, False)
            self.core.tick(self.now())
            self.pump()

    def topic(self, leaf):
        if leaf == "cmd":
            return wire.station_topic("lot-a", "st-01", leaf)
        return wire.site_topic("lot-a", leaf)

    def cmd(self, leaf, body, t, key=None):
        self.n[leaf] += 1
        sender = "st-01" if leaf == "cmd" else "lot-a"
        if key is None:
            key = STATION_KEY if leaf == "cmd" else SITE_KEY
        p = wire.encode(key, "cmd", sender, self.n[leaf], t, body)
        self.results.append(self.core.on_message(self.topic(leaf), p, self.now()))
        self.pump()

    def ack(self):
        while self.sent:
            self.n["ack"] += 1
            p = wire.encode(STATION_KEY, "ack", "st-01", self.n["ack"], UNIX0, {"acks": self.sent[:64]})
            self.sent = self.sent[64:]
            if self.core.on_message(wire.station_topic("lot-a", "st-01", "ack"), p, self.now()) != "ack":
                raise ValueError("ack refused")


def _scenario(inp):
    wd = _World(_cfg(inp.get("cfg", {})))
    for st in inp["steps"]:
        op = st[0]
        if op == "run":
            wd.run(st[1], st[2], st[3], st[4])
        elif op == "sync":
            wd.core.wall(st[1] * 1000, wd.now())
            wd.pump()
        elif op == "cut":
            wd.fs = wd.fs.reboot()
            wd.w += st[1] * 1000
            wd.boot_w = wd.w
            wd.sent = []
            wd.boot()
        elif op == "cmd":
            wd.cmd(st[1], st[2], st[3])
        elif op == "bad":
            wd.cmd(st[1], st[2], st[3], WRONG_KEY)
        elif op == "offline":
            wd.online = False
            wd.sent = []
            wd.core.link_down()
        elif op == "online":
            wd.online = True
            wd.core.link_up(wd.now())
            wd.pump()
        else:
            raise ValueError("unknown step " + repr(op))
    h = hashlib.sha256()
    session = None
    by_seq = {}
    unique = True
    for p in wd.out:
        h.update(p)
        h.update(b"\n")
        if b'"k":"session"' in p:
            session = p.decode()
        n = wire.decode(p, lambda s: STATION_KEY).seq
        if by_seq.setdefault(n, p) != p:
            unique = False
    return {
        "n": len(wd.out),
        "digest": hexlify(h.digest()).decode(),
        "session": session,
        "results": wd.results,
        "one_payload_per_seq": unique,
        "outbox": len(wd.core.outbox),
    }


def _clock(inp):
    ticks = VirtualTicks(inp["start"])
    clock = MonoClock(ticks)
    for ms in inp["steps"]:
        ticks.advance(ms)
        clock.now_ms()
    return {"now_ms": clock.now_ms(), "ticks": ticks.ticks_ms()}


def run(inp):
    op = inp["op"]
    if op == "scenario":
        return _scenario(inp)
    if op == "clock":
        return _clock(inp)
    raise ValueError("unknown op " + repr(op))
