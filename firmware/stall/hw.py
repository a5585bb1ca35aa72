# Hardware layer: the interface the app samples, the meter-staleness rule both implementations share, and the simulated stall.
#
# A hardware object has:
#   pilot        "A".."F", the control pilot state at the last poll
#   current_ma   int, metered current at the last good meter reading
#   energy_wh    int or None (no meter), the meter's energy register
#   fault        bool: the hardware reports a fault (including a meter that
#                has not answered for meter_stale_ms: without a meter the
#                stall can neither bill energy nor tell charging from idle,
#                so the connector goes Faulted, which bills no idle time,
#                and the relay opens: no unmetered energy)
#   relay        bool, the contactor as last set
#   withheld     bool, the station itself withholds energy (mirrors the
#                operator pause; the core feeds it to the connector)
#   poll(now_ms)         refresh pilot/current/fault; fast, never blocks
#   set_relay(on)        switch the contactor
#   async run(clock)     background work (the board's Modbus polling); may return at once
#
# Board code (machine, UART, ADC) lives in stall.board and is imported only
# when the config says hardware: "board" (make_hardware), so the desktop and
# the simulator never import machine.


class MeterWatch:
    """Marks the meter stale when no good reading came for stale_ms."""

    def __init__(self, stale_ms):
        self.stale_ms = stale_ms
        self.good_ms = None
        self.errors = 0

    def good(self, now_ms):
        self.good_ms = now_ms

    def bad(self):
        self.errors += 1

    def stale(self, now_ms):
        if self.good_ms is None:
            return False  # nothing read yet: not a fault before the first poll
        return now_ms - self.good_ms > self.stale_ms


class SimHardware:
    """A simulated stall for the desktop and the simulator. Set `pilot`,
    `draw_ma` (what the car would draw; it flows only while the relay is
    closed and the pilot is C or D), `hw_fault` and `meter_error` (reads
    fail: the last current is kept until the meter goes stale). Energy is
    integrated at `volts` from the current that flows."""

    def __init__(self, volts=230, stale_ms=5000, energy_wh=0):
        self.pilot = "A"
        self.draw_ma = 0
        self.hw_fault = False
        self.meter_error = False
        self.volts = volts
        self.current_ma = 0
        self.energy_wh = energy_wh
        self.fault = False
        self.relay = False
        self.withheld = False
        self.watch = MeterWatch(stale_ms)
        self._mj = 0  # energy below 1 Wh, millijoules
        self._t = None
        self.polls = 0

    def set_relay(self, on):
        self.relay = bool(on)

    def flowing_ma(self):
        return self.draw_ma if self.relay and (self.pilot == "C" or self.pilot == "D") else 0

    def poll(self, now_ms):
        self.polls += 1
        dt = 0 if self._t is None else now_ms - self._t
        self._t = now_ms
        flow = self.flowing_ma()
        if flow and dt > 0:
            self._mj += flow * self.volts * dt // 1000  # mA x V = mW; x s = mJ
            self.energy_wh += self._mj // 3600000
            self._mj %= 3600000
        if self.meter_error:
            self.watch.bad()
        else:
            self.current_ma = flow
            self.watch.good(now_ms)
        self.fault = self.hw_fault or self.watch.stale(now_ms)

    async def run(self, clock):
        return


def make_hardware(cfg):
    """The hardware the config names: SimHardware, or the board's (lazy import)."""
    if cfg["hardware"] == "board":
        from stall import board

        return board.BoardHardware(cfg)
    return SimHardware(stale_ms=cfg["meter_stale_ms"])
