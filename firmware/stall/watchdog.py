# Task health, the watchdog that trusts it, and the crash-loop guard (persisted boot counter with run times).
#
# Health: every long-running task beats (name, now_ms); each has a deadline.
# The watchdog task feeds the hardware WDT only while every task beat in
# time, so one hung task (a blocking driver, a dead loop) resets the board.
#
# BootGuard keeps a small JSON file, replaced atomically:
#   {"boot": n, "runs": [[uptime_ms, crashed], ...]}   (newest last)
# A run is a crash when it ended in an exception the app recorded, or the
# next boot finds a watchdog reset. When the last crash_n runs all crashed
# within crash_window_s of uptime in total, the stall boots into safe mode:
# console and uplink alive, nothing new metered, a fault event published.
# Uptime (not wall time) measures the window: a crash-looping stall may
# never reach NTP. Power cuts are not crashes. A run that stays up longer
# than the window breaks the chain, so the next boot is normal again.

from protocol import canonjson
from stall import store

_CHECKPOINTS = (10000, 60000)  # uptimes at which the run's length is saved (plus the window)


class Health:
    def __init__(self):
        self.limit = {}
        self.last = {}

    def register(self, name, max_ms, now_ms):
        self.limit[name] = max_ms
        self.last[name] = now_ms

    def beat(self, name, now_ms):
        self.last[name] = now_ms

    def late(self, now_ms):
        """Name of a task that missed its deadline, or None."""
        for name in self.limit:
            if now_ms - self.last[name] > self.limit[name]:
                return name
        return None


class StubWdt:
    """The desktop's watchdog: counts feeds; `expired(now_ms)` says whether a
    board would have reset (the simulator may treat that as a crash).
    `clock` (a MonoClock; the app sets its own) stamps each feed."""

    def __init__(self, timeout_ms, clock=None):
        self.timeout_ms = timeout_ms
        self.clock = clock
        self.feeds = 0
        self.last_ms = None

    def feed(self, now_ms=None):
        self.feeds += 1
        if now_ms is None and self.clock is not None:
            now_ms = self.clock.now_ms()
        self.last_ms = now_ms

    def expired(self, now_ms):
        return self.last_ms is not None and now_ms - self.last_ms > self.timeout_ms


class BootGuard:
    def __init__(self, fs, path, crash_n=5, window_s=600):
        self.fs = fs
        self.path = path
        self.n = crash_n
        self.window_ms = window_s * 1000
        self.boot = 0
        self.runs = []
        self._next = 0
        self._cps = _CHECKPOINTS + (self.window_ms,)  # alive() runs every tick: built once

    def _load(self):
        data = store.read_file(self.fs, self.path)
        if not data:
            return
        try:
            d = canonjson.loads(data)
            self.boot = int(d["boot"])
            self.runs = [[int(r[0]), int(r[1])] for r in d["runs"]]
        except (ValueError, KeyError, TypeError, IndexError):
            self.boot, self.runs = 0, []  # a broken log only costs the history

    def _save(self):
        store.write_file(self.fs, self.path, canonjson.dumps({"boot": self.boot, "runs": self.runs}))

    def begin(self, reset="power"):
        """Count this boot; returns (boot, safe, reason). reset: "wdt" marks
        the previous run crashed; "power" and "soft" do not by themselves."""
        self._load()
        if reset == "wdt" and self.runs:
            self.runs[-1][1] = 1
        last = self.runs[-self.n :] if self.n else []
        safe = False
        reason = ""
        if self.n and len(last) == self.n:
            up = 0
            crashed = True
            for r in last:
                up += r[0]
                crashed = crashed and r[1] == 1
            if crashed and up < self.window_ms:
                safe = True
                reason = "%d crashes within %d s of uptime" % (self.n, up // 1000)
        self.boot += 1
        self.runs.append([0, 0])
        del self.runs[: -(self.n + 1)]
        self._next = 0
        self._save()
        return self.boot, safe, reason

    def set_boot(self, boot):
        """Adopt a larger boot number (the journal remembered more boots)."""
        if boot != self.boot:
            self.boot = boot
            self._save()

    def alive(self, uptime_ms):
        """Save the run's length at a few checkpoints (cheap to call often)."""
        cps = self._cps
        if self._next >= len(cps) or uptime_ms < cps[self._next]:
            return
        while self._next < len(cps) and uptime_ms >= cps[self._next]:
            self._next += 1
        self.runs[-1][0] = uptime_ms
        self._save()

    def crashed(self, uptime_ms):
        """The app is dying of an exception: mark this run crashed."""
        if self.runs:
            self.runs[-1] = [uptime_ms, 1]
            self._save()
