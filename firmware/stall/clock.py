# Clocks: wrapping tick sources (board, host, scaled, virtual) and the accumulated monotonic millisecond clock.
#
# Every duration the stall bills comes from MonoClock.now_ms(): an ordinary
# Python int that starts near 0 at boot and only grows. It is built by
# adding ticks_diff(now, last) on every call, never by diffing against a
# session start, because the ports' ticks_ms() wraps every 2**30 ms (about
# 12.4 days) and ticks_diff() is only valid for half of that. Any task that
# calls now_ms() at least every few days keeps it exact; the sampler calls
# it every sample.
#
# A tick source has ticks_ms(), ticks_diff(a, b) and an async sleep_ms(ms).
# The app never touches time.* directly: the source is injected, so the
# simulator can accelerate time (HostTicks(speed=60)) and tests can run a
# three-week session in milliseconds (VirtualTicks) across several wraps.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


TICKS_PERIOD = const(0x40000000)  # 2**30: time.ticks_ms() period on ESP32 and RP2040
_MASK = const(0x3FFFFFFF)
_HALF = const(0x20000000)


def ticks_diff(a, b):
    """Signed difference a - b of two 2**30-periodic tick values, as time.ticks_diff."""
    return ((a - b + _HALF) & _MASK) - _HALF


class BoardTicks:
    """The port's own time.ticks_ms()/ticks_diff() and asyncio.sleep_ms()."""

    def __init__(self):
        import time

        self._time = time

    def ticks_ms(self):
        return self._time.ticks_ms()

    def ticks_diff(self, a, b):
        return self._time.ticks_diff(a, b)

    async def sleep_ms(self, ms):
        import asyncio

        await asyncio.sleep_ms(ms)


class HostTicks:
    """CPython: real monotonic time, wrapped at 2**30 like a port, optionally
    accelerated `speed` times (the simulator's --speed). `start_ms` places
    the first reading, e.g. just below a wrap."""

    def __init__(self, speed=1, start_ms=0):
        import time

        if speed <= 0:
            raise ValueError("speed must be > 0")
        self._mono = time.monotonic
        self._t0 = time.monotonic()
        self.speed = speed
        self._start = start_ms

    def elapsed_ms(self):
        """Unwrapped clock milliseconds since creation (for the simulator's world)."""
        return self._start + int((self._mono() - self._t0) * 1000 * self.speed)

    def ticks_ms(self):
        return self.elapsed_ms() & _MASK

    def ticks_diff(self, a, b):
        return ticks_diff(a, b)

    async def sleep_ms(self, ms):
        import asyncio

        await asyncio.sleep(ms / 1000 / self.speed)


class VirtualTicks:
    """CPython: time that moves only when a driver says so (tests, or a
    simulator running as fast as it can). Sleepers wake in due order;
    `await run_for(ms)` advances time, letting every task run at each
    instant something is due. Wraps at 2**30 like a port."""

    def __init__(self, start_ms=0):
        self.ms = start_ms  # unwrapped
        self._sleepers = []  # heap of (due, seq, future)
        self._seq = 0

    def ticks_ms(self):
        return self.ms & _MASK

    def ticks_diff(self, a, b):
        return ticks_diff(a, b)

    def advance(self, ms):
        """Move time without waking anyone (for code driven without tasks)."""
        self.ms += ms

    async def sleep_ms(self, ms):
        import asyncio
        import heapq

        fut = asyncio.get_event_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.ms + max(0, int(ms)), self._seq, fut))
        await fut

    async def _settle(self):
        import asyncio

        for _ in range(8):  # let woken tasks run until they block again
            await asyncio.sleep(0)

    async def run_for(self, ms):
        """Advance `ms` of virtual time, waking sleepers in order."""
        import heapq

        end = self.ms + ms
        await self._settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            due = self._sleepers[0][0]
            if due > self.ms:
                self.ms = due
            while self._sleepers and self._sleepers[0][0] <= self.ms:
                fut = heapq.heappop(self._sleepers)[2]
                if not fut.done():
                    fut.set_result(None)
            await self._settle()
        self.ms = end
        await self._settle()


class MonoClock:
    """Accumulated monotonic milliseconds since this clock was made (boot).

    now_ms() adds ticks_diff(now, last) to a Python int: exact across any
    number of tick wraps as long as it is called more often than every
    2**29 ms. sleep_ms() sleeps in the tick source's time."""

    def __init__(self, ticks):
        self.ticks = ticks
        self._last = ticks.ticks_ms()
        self._ms = 0

    def now_ms(self):
        t = self.ticks.ticks_ms()
        d = self.ticks.ticks_diff(t, self._last)
        if d > 0:  # a negative diff would be a source bug: never go backwards
            self._ms += d
            self._last = t
        return self._ms

    def sleep_ms(self, ms):
        # The tick source's awaitable itself, not a coroutine around it: every
        # task sleeps through here several times a second.
        return self.ticks.sleep_ms(ms)
