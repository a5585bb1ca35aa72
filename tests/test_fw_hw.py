# Hardware layer: pilot divider and states, Modbus RTU framing and CRC for Eastron meters, the simulated stall, NTP packets, clocks.
import asyncio
import struct

import pytest
from hypothesis import given, strategies as st

from tests.fw_helpers import make_cfg

from stall import modbus, ntp, pilot  # noqa: I001
from stall.clock import HostTicks, MonoClock, VirtualTicks, ticks_diff
from stall.hw import SimHardware, make_hardware

# --- pilot ------------------------------------------------------------------------

CFG = make_cfg()


def raw_for(pilot_mv, cfg=CFG):
    # Invert the default divider: adc_mv = pilot_mv * den / num + offset.
    adc = pilot_mv * cfg["pilot_div_den"] // cfg["pilot_div_num"] + cfg["pilot_offset_mv"]
    return adc * 65535 // cfg["pilot_vref_mv"]


@pytest.mark.parametrize("volts, state", [(12, "A"), (9, "B"), (6, "C"), (3, "D"), (0, "E"), (-12, "F")])
def test_nominal_levels_through_the_divider(volts, state):
    assert pilot.letter(pilot.pilot_mv(raw_for(volts * 1000), CFG)) == state


@pytest.mark.parametrize("mv, state", [(10600, "A"), (10400, "B"), (7600, "B"), (7400, "C"), (4600, "C"), (4400, "D"), (1600, "D"), (1400, "E"), (-5000, "E"), (-7000, "F")])
def test_thresholds_sit_halfway(mv, state):
    assert pilot.letter(mv) == state


def test_burst_takes_the_pwm_high_level():
    # 1 kHz PWM at 6 V / -12 V: the burst's maximum is the state.
    burst = [raw_for(-12000)] * 30 + [raw_for(6000)] * 10 + [raw_for(-12000)] * 8
    assert pilot.state_of_burst(burst, CFG) == "C"
    assert pilot.state_of_burst([raw_for(-12000)] * 48, CFG) == "F"


def test_default_divider_maps_the_adc_range_to_plus_minus_12_v():
    assert pilot.pilot_mv(0, CFG) in range(-12001, -11900)
    assert pilot.pilot_mv(65535, CFG) in range(11900, 12001)


# --- Modbus RTU -----------------------------------------------------------------------


def crc16_table(data):
    # Independent reference: the table-driven form from the Modbus serial-line spec.
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
        table.append(c)
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def test_crc_matches_the_specification_example():
    assert modbus.crc16(bytes([0x02, 0x07])) == 0x1241  # MODBUS over serial line, 6.2.2


@given(st.binary(max_size=64))
def test_crc_matches_the_table_form(data):
    assert modbus.crc16(data) == crc16_table(data)


def test_sdm_current_request_frame():
    frame, count = modbus.current_request(1, 1)
    assert count == 2
    assert frame[:6] == bytes([0x01, 0x04, 0x00, 0x06, 0x00, 0x02])
    assert frame[6:] == struct.pack("<H", modbus.crc16(frame[:6]))
    frame3, count3 = modbus.current_request(7, 3)
    assert count3 == 6 and frame3[:6] == bytes([0x07, 0x04, 0x00, 0x06, 0x00, 0x06])
    e, _ = modbus.energy_request(1)
    assert e[:6] == bytes([0x01, 0x04, 0x01, 0x56, 0x00, 0x02])


def reply(addr, values):
    body = bytes([addr, 0x04, 4 * len(values)]) + b"".join(struct.pack(">f", v) for v in values)
    return body + struct.pack("<H", modbus.crc16(body))


def test_parse_current_and_energy_replies():
    data = modbus.parse_response(reply(1, [15.8]), 1, 2)
    assert modbus.current_ma(data) == 15800
    data3 = modbus.parse_response(reply(1, [0.4, 16.05, 7.0]), 1, 6)
    assert modbus.current_ma(data3) == 16050  # the busiest phase
    assert modbus.energy_wh(modbus.parse_response(reply(1, [1234.567]), 1, 2)) == 1234567


@pytest.mark.parametrize(
    "frame, code",
    [
        (b"\x01\x04", "short"),
        (reply(2, [1.0]), "addr"),
        (reply(1, [1.0])[:-1] + b"\x00", "crc"),
        (bytes([1, 0x84, 2]) + struct.pack("<H", modbus.crc16(bytes([1, 0x84, 2]))), "exception"),
        (reply(1, [1.0])[:7], "short"),
    ],
)
def test_bad_replies_raise(frame, code):
    with pytest.raises(modbus.ModbusError) as info:
        modbus.parse_response(frame, 1, 2)
    assert info.value.code == code


@pytest.mark.parametrize("v, out", [(float("nan"), 0), (float("inf"), 0), (-3.2, 0), (0.0004, 0), (0.0006, 1)])
def test_floats_never_bill_garbage(v, out):
    assert modbus.to_milli(v) == out


def test_request_misuse():
    with pytest.raises(ValueError):
        modbus.read_input_registers(0, 6, 2)
    with pytest.raises(ValueError):
        modbus.read_input_registers(1, 6, 126)


# --- simulated hardware ------------------------------------------------------------------


def test_sim_current_flows_only_with_the_relay_closed_and_pilot_c():
    hw = SimHardware()
    hw.pilot, hw.draw_ma = "C", 16000
    hw.poll(0)
    assert hw.current_ma == 0
    hw.set_relay(True)
    hw.poll(1000)
    assert hw.current_ma == 16000
    hw.poll(3600 * 1000 + 1000)
    assert hw.energy_wh == (16 * 230 * 3601) // 3600  # 3601 s at 16 A, 230 V
    hw.pilot = "B"
    hw.poll(3601 * 1000 + 1000)
    assert hw.current_ma == 0


def test_sim_meter_errors_keep_the_last_reading_then_fault():
    hw = SimHardware(stale_ms=5000)
    hw.pilot, hw.draw_ma = "C", 10000
    hw.set_relay(True)
    hw.poll(0)
    hw.meter_error = True
    hw.draw_ma = 0
    hw.poll(4000)
    assert hw.current_ma == 10000 and not hw.fault
    hw.poll(6000)
    assert hw.fault and hw.watch.errors == 2
    hw.meter_error = False
    hw.poll(7000)
    assert not hw.fault and hw.current_ma == 0


def test_make_hardware_never_imports_machine_for_sim():
    import sys

    hw = make_hardware(CFG)
    assert isinstance(hw, SimHardware) and "machine" not in sys.modules


# --- NTP -----------------------------------------------------------------------------------


def ntp_reply(unix_s, frac=0, mode=4, stratum=2):
    pkt = bytearray(48)
    pkt[0] = (0 << 6) | (4 << 3) | mode
    pkt[1] = stratum
    struct.pack_into(">II", pkt, 40, unix_s + ntp.NTP_DELTA, frac)
    return bytes(pkt)


def test_ntp_request_and_reply():
    req = ntp.request()
    assert len(req) == 48 and req[0] == 0x23
    assert ntp.parse(ntp_reply(1763830800, 1 << 31)) == 1763830800500
    assert ntp.parse(ntp_reply(1763830800, mode=3)) is None
    assert ntp.parse(ntp_reply(1763830800, stratum=0)) is None  # kiss-of-death
    assert ntp.parse(ntp_reply(1000)) is None
    assert ntp.parse(b"short") is None


def test_fixed_wall_for_simulators():
    w = ntp.FixedWall(lambda now: 1763830800000 + now)
    clock = MonoClock(VirtualTicks())
    assert asyncio.run(w.fetch(clock)) == 1763830800000


# --- clocks ----------------------------------------------------------------------------------


@given(st.integers(0, (1 << 30) - 1), st.integers(-(1 << 29), (1 << 29) - 1))
def test_ticks_diff_inverts_a_wrapped_add(a, d):
    assert ticks_diff((a + d) & ((1 << 30) - 1), a) == d


def test_mono_clock_accumulates_across_many_wraps():
    ticks = VirtualTicks(start_ms=(1 << 30) - 10)
    clock = MonoClock(ticks)
    total = 0
    for step in [5, 20, 500000000, 500000000, 500000000, 1]:
        ticks.advance(step)
        total += step
        assert clock.now_ms() == total
    assert ticks.ms > (1 << 31)


def test_host_ticks_wrap_and_accelerate():
    t = HostTicks(speed=1000, start_ms=(1 << 30) - 5)
    clock = MonoClock(t)
    assert t.ticks_ms() < (1 << 30)
    asyncio.run(t.sleep_ms(50))  # 50 clock ms = 50 real microseconds
    assert clock.now_ms() >= 50


def test_virtual_ticks_wake_sleepers_in_order():
    ticks = VirtualTicks()
    order = []

    async def sleeper(name, ms):
        await ticks.sleep_ms(ms)
        order.append((name, ticks.ms))

    async def main():
        tasks = [asyncio.create_task(sleeper("b", 200)), asyncio.create_task(sleeper("a", 100))]
        await ticks.run_for(150)
        assert order == [("a", 100)]
        await ticks.run_for(100)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == [("a", 100), ("b", 200)] and ticks.ms == 250
