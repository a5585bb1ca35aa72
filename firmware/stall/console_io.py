# The console's asyncio driver: bytes from the serial port into stall.console.Console, its output back, one bounded step per turn of the loop.
#
# On a board the port is the REPL's UART/USB: sys.stdin is polled with
# select.poll(0) and read one byte at a time while bytes wait (at most
# READ_MAX per turn), because sys.stdin.readline() would block the whole
# loop until a newline arrived. The REPL's Ctrl-C is switched off while the
# console runs (micropython.kbd_intr(-1)): a stray 0x03 would otherwise
# kill metering; the console treats it as "cancel the line". Output goes out
# in OUT_CHUNK pieces with a yield in between (a UART write blocks at the
# baud rate). Elsewhere (desktop, tests) the reader is any asyncio
# StreamReader-like object with read(n).
#
# After a reply is out the driver performs the command's action:
#   reboot         app.stop(); main.py resets the board (the simulator decides)
#   factory-reset  end the app's other tasks and the link, erase the stall's
#                  files, then as reboot (nothing writes after the erase)
#   service        board: contactor open, link dropped (the broker publishes
#                  the will), the REPL's Ctrl-C back, a machine.Timer keeps
#                  feeding the watchdog, and KeyboardInterrupt ends main.py,
#                  which leaves the port to the REPL for mpremote. Desktop:
#                  the console ignores input until Ctrl-D (a flag).

import asyncio
import sys

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


READ_MAX = const(128)  # bytes taken from the port per turn
OUT_CHUNK = const(128)  # characters written per turn (about 11 ms at 115200 baud)
POLL_MS = const(20)  # idle poll period on a board
WDT_FEED_MS = const(1000)  # the service-mode watchdog feeder's period

ON_BOARD = sys.platform in ("esp32", "rp2")

_service_timer = None  # keeps the watchdog feeder alive while the REPL runs


class StdinPoll:
    """Board: the bytes waiting on the REPL's stdin, without ever blocking."""

    def __init__(self, stream=None):
        import select

        stream = stream or sys.stdin
        self.stream = getattr(stream, "buffer", stream)
        self.poller = select.poll()
        self.poller.register(stream, select.POLLIN)

    def read(self, n):
        out = bytearray()
        while len(out) < n and self.poller.poll(0):
            c = self.stream.read(1)
            if not c:
                break
            out += c.encode() if isinstance(c, str) else c
        return bytes(out)


def kbd_intr(ch):
    try:
        import micropython

        micropython.kbd_intr(ch)
    except (ImportError, AttributeError):
        pass


async def serve(con, reader, write, board=None):
    """Run the console on a stream until EOF (never, on a board)."""
    if board is None:
        board = con.board if con.board is not None else ON_BOARD
    con.board = board
    clk = getattr(reader, "console_clock", None)  # a simulator's pty: PIN timers on real time
    if clk is not None and con.clock is None:
        con.clock = clk
    src = None
    if board:
        src = StdinPoll(getattr(reader, "s", None))
        kbd_intr(-1)
    clock = con.app.clock
    con.start()
    await flush(con, write)
    pend = b""
    while True:
        if not pend:
            if src is not None:
                pend = src.read(READ_MAX)
            elif not con.busy:
                pend = await reader.read(READ_MAX)
                if not pend:
                    return  # EOF
        if pend:
            k = con.feed(pend)
            pend = pend[k:]
        if con.busy:
            con.step()
        await flush(con, write)
        if con.action is not None:
            perform(con)
        if src is not None and not pend and not con.busy:
            await clock.sleep_ms(POLL_MS)
        else:
            await asyncio.sleep(0)


async def flush(con, write):
    out = con.take()
    i = 0
    n = len(out)
    while i < n:
        write(out[i : i + OUT_CHUNK])
        i += OUT_CHUNK
        if i < n:
            await asyncio.sleep(0)


def perform(con):
    """Carry out the action whose reply has just gone out."""
    act = con.action
    con.action = None
    con.requested = act  # the simulator (or a test) reads what was asked
    app = con.app
    if act == "service":
        if con.board:
            board_service(app)
        else:
            con.service = True
        return
    if act == "factory-reset":
        # Nothing may write after the erase: end the other tasks and the link
        # first (a cancelled task runs no more of its code), then erase, then stop.
        me = asyncio.current_task()
        for t in app._tasks:
            if t is not me:
                t.cancel()
        if app.link:
            app.link.stop(False)
        erase(app)
        app.kill()
        return
    app.stop()


def erase(app):
    """Remove the stall's files (config, journal, counters, boot log, console state)."""
    from stall import core as coremod
    from stall.app import BOOTS_FILE
    from stall.console import STATE_FILE

    fs = app.fs
    for name in (coremod.CONFIG_FILE, coremod.JOURNAL, coremod.SEQ_FILE, BOOTS_FILE, STATE_FILE):
        for p in (app.root + name, app.root + name + ".tmp"):
            try:
                if fs.size(p) is not None:
                    fs.remove(p)
            except OSError:
                pass
    app.console.lock.clear()


def board_service(app):
    """Stop metering safely and leave main.py for the REPL (never returns)."""
    global _service_timer
    try:
        app.hw.set_relay(False)
    except Exception:
        pass
    if app.link:
        try:
            app.link.stop(False)
        except Exception:
            pass
    wdt = app.wdt
    import machine

    try:
        t = machine.Timer(-1)
    except (ValueError, TypeError):
        t = machine.Timer(0)
    t.init(period=WDT_FEED_MS, mode=machine.Timer.PERIODIC, callback=lambda _t: wdt.feed())
    _service_timer = t
    kbd_intr(3)
    raise KeyboardInterrupt()
