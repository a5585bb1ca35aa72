# Board hardware (ESP32, RP2040): pilot ADC burst, contactor pin, Eastron SDM meter over Modbus RTU on a UART, Wi-Fi.
#
# Imported only on boards (stall.hw.make_hardware, stall.app): it imports
# machine and network at module level. Pins and meter settings come from the
# config (docs/hardware.md); nothing here hard-codes a board.
#
# Timing. poll() reads a burst of pilot_burst ADC samples (about 1.5 ms on
# an ESP32, more than one 1 kHz PWM period) and keeps the maximum, the PWM's
# high level; it never waits on the meter. The meter is polled by its own
# task (run): request, then poll uart.any() between asyncio sleeps until the
# reply or meter_timeout_ms, so a silent meter never blocks the loop. With
# an RS-485 transceiver that needs a direction pin (meter_de_pin), the pin
# is held high until uart.txdone().

from array import array

import machine

from stall import modbus, pilot
from stall.hw import MeterWatch


class ModbusMeter:
    """Eastron SDM120 (1 phase) or SDM630 (3 phases) on a UART, function 0x04."""

    def __init__(self, cfg):
        self.addr = cfg["meter_addr"]
        self.phases = 3 if cfg["meter"] == "sdm630" else 1
        self.timeout_ms = cfg["meter_timeout_ms"]
        self.period_ms = cfg["meter_period_ms"]
        self.uart = machine.UART(
            cfg["meter_uart"],
            baudrate=cfg["meter_baud"],
            bits=8,
            parity=None,
            stop=1,
            tx=machine.Pin(cfg["meter_tx"]),
            rx=machine.Pin(cfg["meter_rx"]),
        )
        de = cfg["meter_de_pin"]
        self.de = machine.Pin(de, machine.Pin.OUT, value=0) if de is not None else None
        self.cur_req, self.cur_count = modbus.current_request(self.addr, self.phases)
        self.en_req, self.en_count = modbus.energy_request(self.addr)
        self.buf = bytearray(modbus.response_length(6))

    async def transact(self, frame, count, clock):
        """Send a request, collect the reply; register data or ModbusError."""
        u = self.uart
        while u.any():
            u.read()  # stale bytes of an earlier, late reply
        if self.de is not None:
            self.de.value(1)
        u.write(frame)
        if self.de is not None:
            while not u.txdone():
                await clock.sleep_ms(1)
            self.de.value(0)
        want = modbus.response_length(count)
        got = 0
        waited = 0
        buf = self.buf
        while got < want and waited < self.timeout_ms:
            await clock.sleep_ms(5)
            waited += 5
            n = u.any()
            if n:
                chunk = u.read(min(n, want - got))
                if chunk:
                    buf[got : got + len(chunk)] = chunk
                    got += len(chunk)
                if got >= 5 and buf[1] & 0x80:
                    break  # an exception reply is 5 bytes
        if got == 0:
            raise modbus.ModbusError("timeout")
        return modbus.parse_response(memoryview(buf)[:got], self.addr, count)

    async def run(self, hw, clock):
        while True:
            try:
                hw.current_ma = modbus.current_ma(await self.transact(self.cur_req, self.cur_count, clock))
                await clock.sleep_ms(20)  # Modbus inter-frame gap, with margin
                hw.energy_wh = modbus.energy_wh(await self.transact(self.en_req, self.en_count, clock))
                hw.watch.good(clock.now_ms())
            except modbus.ModbusError:
                hw.watch.bad()
            await clock.sleep_ms(self.period_ms)


class BoardHardware:
    """The stall's real hardware; see stall.hw for the interface."""

    def __init__(self, cfg):
        self.cfg = cfg
        pin = machine.Pin(cfg["pilot_adc_pin"])
        atten = getattr(machine.ADC, "ATTN_11DB", None)  # ESP32: full 0..3.3 V range; RP2040 has none
        self.adc = machine.ADC(pin, atten=atten) if atten is not None and not _is_rp2() else machine.ADC(pin)
        self.samples = array("H", [0] * cfg["pilot_burst"])
        self.active_high = cfg["relay_active_high"]
        self.relay_pin = machine.Pin(cfg["relay_pin"], machine.Pin.OUT, value=0 if self.active_high else 1)
        fp = cfg["fault_pin"]
        self.fault_pin = machine.Pin(fp, machine.Pin.IN, machine.Pin.PULL_UP) if fp is not None else None
        self.meter = ModbusMeter(cfg) if cfg["meter"] != "none" else None
        self.watch = MeterWatch(cfg["meter_stale_ms"])
        self.pilot = "A"
        self.current_ma = 0
        self.energy_wh = None
        self.fault = False
        self.relay = False
        self.withheld = False

    def poll(self, now_ms):
        s = self.samples
        read = self.adc.read_u16
        for i in range(len(s)):
            s[i] = read()
        self.pilot = pilot.state_of_burst(s, self.cfg)
        hw_fault = self.fault_pin is not None and self.fault_pin.value() == 0  # active low
        self.fault = hw_fault or self.watch.stale(now_ms)

    def set_relay(self, on):
        on = bool(on)
        if on != self.relay:
            self.relay = on
            self.relay_pin.value(1 if on == self.active_high else 0)

    async def run(self, clock):
        if self.meter is not None:
            await self.meter.run(self, clock)


def _is_rp2():
    import sys

    return sys.platform == "rp2"


async def wifi(cfg, clock, period_ms=5000):
    """Keep the station interface connected (non-blocking connect, re-checked every period)."""
    ssid = cfg["wifi_ssid"]
    if not ssid:
        return
    network = __import__("network")  # the rp2 stubs lack the module the Pico W port has
    w = network.WLAN(network.STA_IF)
    w.active(True)
    while True:
        if not w.isconnected():
            try:
                w.connect(ssid, cfg["wifi_password"] or "")
            except OSError:
                pass
        await clock.sleep_ms(period_ms)


def reset_cause():
    """"wdt" after a watchdog reset, "soft" after machine.reset(), else "power"."""
    c = machine.reset_cause()
    if c == machine.WDT_RESET:
        return "wdt"
    if c == getattr(machine, "SOFT_RESET", -1):
        return "soft"
    return "power"


class BoardWdt:
    """machine.WDT: once started it cannot be stopped; feed() or the board resets."""

    def __init__(self, timeout_ms):
        self.wdt = machine.WDT(timeout=min(timeout_ms, 8300))  # RP2040 caps it at 8.3 s
        self.feeds = 0

    def feed(self):
        self.wdt.feed()
        self.feeds += 1
