# Modbus RTU for the energy meter, sans-IO: request framing, CRC-16, response parsing, Eastron SDM registers.
#
# Only function 0x04 (read input registers) is needed: Eastron SDM120 and
# SDM630 expose their measurements as IEEE-754 float32 pairs, big-endian,
# one value per two registers. The float is turned into integer milliamps or
# watt-hours right here, at the edge: nothing above this module sees a float.
# The async transaction over a UART lives in stall.board.

import struct

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


FC_READ_INPUT = const(0x04)
# Eastron SDM input registers (float32, 2 registers each).
REG_CURRENT_L1 = const(0x0006)  # A; L2 at 0x0008, L3 at 0x000A on the SDM630
REG_TOTAL_ENERGY = const(0x0156)  # total active energy, kWh


class ModbusError(Exception):
    """The meter answered badly or not at all; `code` says how."""

    def __init__(self, code, detail=""):
        super().__init__(code + (": " + detail if detail else ""))
        self.code = code


def crc16(data):
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF)."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def read_input_registers(addr, reg, count):
    """Request frame: addr, 0x04, register (BE), count (BE), CRC (LE)."""
    if not 1 <= addr <= 247:
        raise ValueError("modbus address must be 1..247")
    if not 1 <= count <= 125:
        raise ValueError("register count must be 1..125")
    frame = struct.pack(">BBHH", addr, FC_READ_INPUT, reg, count)
    return frame + struct.pack("<H", crc16(frame))


def response_length(count):
    """Bytes of a normal response to a read of `count` registers."""
    return 5 + 2 * count


def parse_response(frame, addr, count):
    """Register data (bytes) of a response, or raise ModbusError.

    An exception response (function | 0x80) is 5 bytes; its code is in the
    error. Checks address, function, byte count and CRC."""
    n = len(frame)
    if n < 5:
        raise ModbusError("short", "%d bytes" % n)
    if frame[0] != addr:
        raise ModbusError("addr", "from %d, asked %d" % (frame[0], addr))
    if frame[1] == FC_READ_INPUT | 0x80:
        if crc16(frame[:3]) != frame[3] | frame[4] << 8:
            raise ModbusError("crc", "exception response")
        raise ModbusError("exception", "code %d" % frame[2])
    if frame[1] != FC_READ_INPUT:
        raise ModbusError("function", "%d" % frame[1])
    want = response_length(count)
    if n < want:
        raise ModbusError("short", "%d of %d bytes" % (n, want))
    if frame[2] != 2 * count:
        raise ModbusError("count", "%d data bytes" % frame[2])
    if crc16(frame[: want - 2]) != frame[want - 2] | frame[want - 1] << 8:
        raise ModbusError("crc")
    return bytes(frame[3 : want - 2])


def floats(data):
    """The float32 big-endian values in register data."""
    return [struct.unpack_from(">f", data, i)[0] for i in range(0, len(data) - 3, 4)]


def to_milli(value):
    """A meter float (A or kWh) as an integer count of thousandths (mA, Wh), rounded.

    NaN, infinities and negatives (a CT fitted backwards) read as 0 so a bad
    register can never bill."""
    if not value == value or value < 0 or value > 2e9:
        return 0
    return int(value * 1000 + 0.5)


def current_request(addr, phases):
    """(frame, register count) to read the phase currents (1 or 3 phases)."""
    count = 2 * phases
    return read_input_registers(addr, REG_CURRENT_L1, count), count


def energy_request(addr):
    return read_input_registers(addr, REG_TOTAL_ENERGY, 2), 2


def current_ma(data):
    """Largest phase current in mA: the car is idle only when every phase is."""
    best = 0
    for v in floats(data):
        ma = to_milli(v)
        if ma > best:
            best = ma
    return best


def energy_wh(data):
    return to_milli(floats(data)[0])
