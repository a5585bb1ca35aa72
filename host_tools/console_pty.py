# A simulated stall's technician console on a pseudo-terminal: the firmware's own Console, served from the asyncio loop the App runs on.
#
# Two ways in, the same console behind both:
#
#   path = attach(app, loop)        serve app.console (a stall.app.App's) on a new
#                                   pty from `loop`; reattach(old, new) moves it to the
#                                   next App of the same stall (same path); detach(app)
#   path, io = open_pty(name)       a pty as the (reader, write) pair App(console=io)
#                                   takes: the App's own console task serves it, with the
#                                   firmware's driver (stall.console_io.serve), and every
#                                   App booted with the same io answers on the same path
#
# `overstay console --port PATH` then talks to it, so a technician can
# rehearse every console command on a simulated stall and the tests drive
# the console over pyserial end to end. Either way the console does one
# bounded step per turn of the loop: a flood of input never holds up the
# stall's sampler.
#
# Details:
# - We keep the slave side open ourselves, so a client closing the port is
#   not a hang-up and the next client finds the console where it was.
# - Back-pressure: the console takes input only as fast as it answers it;
#   the kernel's pty buffer then fills and the writer blocks (a board's UART
#   would drop the excess instead).
# - Output is written non-blocking, "\n" as "\r\n" (what a board's stdout
#   does); while nobody reads, at most OUT_MAX bytes are kept (oldest dropped).
# - Actions after a reply: `reboot` and `factory-reset` stop the App
#   (app.console.requested says which; the simulator may boot it again);
#   `service` puts the console in simulated service mode: input is ignored
#   until Ctrl-D, as if the REPL owned the port.
# - The console's PIN timers (unlock, lockout) run on real time by default
#   (`clock`), whatever speed the simulated stall runs at.
import asyncio
import os
import threading
import tty

READ_MAX = 128  # bytes handed to the console per turn (the firmware driver's READ_MAX)
PEND_MAX = 4096  # bytes read from the pty but not yet taken by the console (attach)
OUT_MAX = 65536  # bytes of output kept while nobody reads


def _real_clock():
    from stall.clock import HostTicks, MonoClock

    return MonoClock(HostTicks())


class _Pty:
    """A pty pair: we own the master (non-blocking) and keep the slave open."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.out = bytearray()
        self.loop = None
        self.writing = False
        self.closed = False

    def send(self, text):
        """Queue console output (text) and write what the pty takes now."""
        if self.closed or not text:
            return
        self.out += text.replace("\n", "\r\n").encode("utf-8", "replace")
        if len(self.out) > OUT_MAX:
            del self.out[: len(self.out) - OUT_MAX]
        self._write()

    def _write(self):
        while self.out and not self.closed:
            try:
                n = os.write(self.master, self.out)
            except BlockingIOError:
                n = 0
            except OSError:
                self.out = bytearray()
                return
            if n <= 0:
                if not self.writing and self.loop is not None:
                    self.loop.add_writer(self.master, self._write)
                    self.writing = True
                return
            del self.out[:n]
        if self.writing and not self.out:
            self.loop.remove_writer(self.master)
            self.writing = False

    def _close_fds(self):
        if self.writing and self.loop is not None:
            try:
                self.loop.remove_writer(self.master)
            except Exception:
                pass
            self.writing = False
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass


# -- open_pty: a (reader, write) pair for App(console=...) ----------------------------------------------


class PtyStream(_Pty):
    """The reader half (async read(n), as an asyncio StreamReader) of open_pty()'s pair.
    `console_clock` is picked up by the firmware driver for the PIN timers."""

    def __init__(self, clock=None):
        _Pty.__init__(self)
        self.console_clock = clock if clock is not None else _real_clock()
        self.name = None
        self._fut = None

    async def read(self, n):
        """Up to n bytes from the technician; waits until some arrive (b"" once closed)."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        while not self.closed:
            try:
                data = os.read(self.master, n)
                if data:
                    return data
            except BlockingIOError:
                pass
            except OSError:
                return b""
            fut = self._fut = loop.create_future()

            def ready(fut=fut):
                if not fut.done():
                    fut.set_result(None)

            loop.add_reader(self.master, ready)
            try:
                await fut
            finally:
                self._fut = None
                if not self.closed:
                    loop.remove_reader(self.master)
        return b""

    def write(self, text):
        """The console's output (the write half of the pair)."""
        if self.loop is None:
            try:
                self.loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
        self.send(text)

    def close(self):
        if self.closed:
            return
        self.closed = True
        fut = self._fut
        if fut is not None and self.loop is not None:
            try:
                self.loop.remove_reader(self.master)
            except Exception:
                pass
            if not fut.done():
                fut.set_result(None)  # the reader returns b"": EOF
        self._close_fds()


def open_pty(name=None, clock=None):
    """A new pseudo-terminal for a stall's console: returns (path, (reader, write)).

    Pass the pair as App(console=...): the App's console task serves the
    firmware console on it, and every App booted again with the same pair
    (a reboot in the simulator) answers on the same path. `name` is only a
    label. close it with close_pty(pair)."""
    s = PtyStream(clock)
    s.name = name
    return s.path, (s, s.write)


def close_pty(pair):
    pair[0].close()


# -- attach: serve an App's console from outside the App ---------------------------------------------------


class PtyConsole(_Pty):
    """One App's console on one pseudo-terminal; use attach()/reattach()/detach()."""

    def __init__(self, app, loop, clock=None):
        _Pty.__init__(self)
        self.app = app
        self.con = app.console
        self.loop = loop
        self.con.clock = clock if clock is not None else _real_clock()
        self.con.board = False
        self.pend = bytearray()
        self.reading = False
        self.task = None
        self.wake = None

    def start(self):
        self.wake = asyncio.Event()
        self._read_on()
        self.task = self.loop.create_task(self._work())

    def rebind(self, app, clock=None):
        """Serve another App's console on this pty (the same stall, booted again)."""
        old = self.con
        self.app = app
        self.con = app.console
        self.con.clock = clock if clock is not None else old.clock
        self.con.board = False
        self.pend = bytearray()
        self.con.start()
        self.send(self.con.take())
        if self.wake is not None:
            self.wake.set()

    def _read_on(self):
        if not self.reading and not self.closed:
            self.loop.add_reader(self.master, self._readable)
            self.reading = True

    def _read_off(self):
        if self.reading:
            self.loop.remove_reader(self.master)
            self.reading = False

    def _readable(self):
        try:
            data = os.read(self.master, PEND_MAX)
        except BlockingIOError:
            return
        except OSError:
            self._read_off()
            return
        if data:
            self.pend += data
            if len(self.pend) >= PEND_MAX:
                self._read_off()  # back-pressure until the console catches up
            self.wake.set()

    async def _work(self):
        from stall import console_io

        self.con.start()
        self.send(self.con.take())
        while not self.closed:
            con = self.con  # rebind() may swap it
            if self.pend:
                k = con.feed(bytes(self.pend[:READ_MAX]))
                del self.pend[:k]
            if con.busy:
                con.step()
            self.send(con.take())
            if con.action is not None:
                console_io.perform(con)
            if len(self.pend) < PEND_MAX // 2:
                self._read_on()
            if con.busy or self.pend:
                await asyncio.sleep(0)  # one bounded step per turn: the sampler gets its turns
                continue
            self.wake.clear()
            await self.wake.wait()

    def close(self):
        if self.closed:
            return
        self.closed = True
        self._read_off()
        if self.task is not None:
            self.task.cancel()
        if self.wake is not None:
            self.wake.set()
        self._close_fds()


def _in_loop_thread(loop):
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def attach(app, loop=None, clock=None):
    """Serve app.console (a stall.app.App's) on a new pseudo-terminal; returns its path, e.g. "/dev/pts/5".

    loop: the asyncio loop the App runs on (default: the running loop). Call
    it from that loop, or from another thread while the loop runs (it then
    waits until the loop has taken the pty), or before the loop runs.
    clock: the console's timer for the PIN unlock and lockout (default: real time).
    The App should not also serve its console on a stream (App(console=...))."""
    if loop is None:
        loop = asyncio.get_running_loop()
    if getattr(app, "console_pty", None) is not None:
        raise ValueError("this App's console is already on " + app.console_pty.path)
    pc = PtyConsole(app, loop, clock)
    app.console_pty = pc
    if _in_loop_thread(loop) or not loop.is_running():
        pc.start()
    else:
        done = threading.Event()
        failed = []

        def go():
            try:
                pc.start()
            except BaseException as e:  # reported to the caller below
                failed.append(e)
            finally:
                done.set()

        loop.call_soon_threadsafe(go)
        if not done.wait(10) or failed:
            pc.close()
            app.console_pty = None
            if failed:
                raise failed[0]
            raise RuntimeError("the App's loop did not take the console pty within 10 s")
    return pc.path


def reattach(old_app, new_app, clock=None):
    """Move old_app's console pty to new_app (a reboot in the simulator); returns the same path.
    Call it from the loop the pty was attached on."""
    pc = getattr(old_app, "console_pty", None)
    if pc is None or pc.closed:
        raise ValueError("old_app has no console pty (attach() it first)")
    old_app.console_pty = None
    new_app.console_pty = pc
    pc.rebind(new_app, clock)
    return pc.path


def detach(app):
    """Close the console's pseudo-terminal (safe to call twice; from the App's loop, another thread, or after it ended)."""
    pc = getattr(app, "console_pty", None)
    if pc is None:
        return
    app.console_pty = None
    if pc.loop.is_running() and not _in_loop_thread(pc.loop):
        done = threading.Event()

        def go():
            pc.close()
            done.set()

        pc.loop.call_soon_threadsafe(go)
        done.wait(10)
    else:
        pc.close()
