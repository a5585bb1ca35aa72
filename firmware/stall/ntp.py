# NTP (RFC 5905 client mode) over a non-blocking UDP socket: packet build/parse sans-IO, and the board's wall-time source.
#
# ntptime.time() blocks the whole loop for up to its socket timeout; this
# one sends, then polls the socket between asyncio sleeps. DNS is resolved
# with getaddrinfo (blocking on the ports, once per query, bounded by the
# stack's DNS timeout); configure an IP as ntp_host to avoid even that.

import struct

NTP_DELTA = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_MIN_UNIX = 1577836800  # 2020-01-01: anything earlier is a broken answer


def request():
    """48-byte client request: LI 0, version 4, mode 3."""
    pkt = bytearray(48)
    pkt[0] = 0x23
    return pkt


def parse(data):
    """Unix milliseconds of the server's transmit timestamp, or None when the
    reply is not a usable server answer (wrong size or mode, unsynchronised,
    kiss-of-death, a time before 2020)."""
    if len(data) < 48:
        return None
    mode = data[0] & 7
    stratum = data[1]
    if mode != 4 or stratum == 0 or stratum > 15 or data[0] >> 6 == 3:
        return None
    secs, frac = struct.unpack_from(">II", data, 40)
    unix = secs - NTP_DELTA
    if unix < _MIN_UNIX:
        return None
    return unix * 1000 + (frac * 1000 >> 32)


class NtpWall:
    """Wall time from NTP: `await fetch(clock)` returns Unix ms or None."""

    def __init__(self, host="pool.ntp.org", port=123, timeout_ms=2000):
        self.host = host
        self.port = port
        self.timeout_ms = timeout_ms

    async def fetch(self, clock):
        # __import__: the rp2 stubs lack a `socket` module the Pico W port has.
        socket = __import__("socket")
        try:
            addr = socket.getaddrinfo(self.host, self.port)[0][-1]
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError:
            return None
        try:
            s.setblocking(False)
            s.sendto(request(), addr)
            waited = 0
            while waited < self.timeout_ms:
                await clock.sleep_ms(50)
                waited += 50
                try:
                    data = s.recv(64)
                except OSError:
                    continue
                ms = parse(data)
                if ms is not None:
                    # Half the wait is the best guess of the one-way delay.
                    return ms + waited // 2
            return None
        except OSError:
            return None
        finally:
            s.close()


class FixedWall:
    """Wall time from a function of the clock: simulators and tests.

    `fn(now_ms)` returns Unix ms or None (no network)."""

    def __init__(self, fn):
        self.fn = fn

    async def fetch(self, clock):
        return self.fn(clock.now_ms())
