# Technician console: a sans-IO line shell (line editing, command table, PIN checks, reply frames) fed with bytes from the serial port.
#
# Theory of operation
# -------------------
# Console(app) never reads or writes a port. A driver (stall.console_io on a
# board or in the app's asyncio loop, host_tools/console_pty.py on a
# simulator's pseudo-terminal) does:
#
#     used = con.feed(data)   # bytes in; returns how many it took (it stops
#                             # taking when MAX_QUEUE lines wait: back-pressure)
#     while con.busy:         # lines waiting or a PIN being checked
#         con.step()          # bounded work: one command, or PIN_STEP PBKDF2 rounds
#         write(con.take())   # echo, replies and prompts as text
#         yield to the loop
#     con.action              # "reboot" / "service" / "factory-reset" once its reply is out
#
# so the sampler and the rest of the stall never wait for the console for
# longer than one step. Lines are at most MAX_LINE bytes (longer ones are
# refused whole), and output beyond MAX_OUT bytes not yet taken is dropped.
#
# What the port shows: the typed line is echoed (a PIN as *), then a reply
# frame, then the prompt:
#
#     STX body RS "ok" LF prompt              (or RS "error <code>" LF)
#
# A line may start with "@id" (a host tool's request id): the status line
# then ends with " @id" ("ok @h7"), so the tool can skip replies that were
# still on their way from before it connected.
# The body is human text, or exactly one JSON line when the line started
# with -j or after `json on`: {"ok": true, "cmd": ..., "data": {...}} or
# {"ok": false, "cmd": ..., "error": code, "message": ...}. STX and RS never
# occur in a body (control characters are replaced), so a host tool takes
# whatever lies between them and ignores echoes, banners and prompts. The
# prompt is "<station>> ", or "<station># " while the PIN unlocks the console.
#
# Commands that change anything are marked pin=True: they run when the
# console is unlocked (`pin NNNNNN`, UNLOCK_MS) or with `--pin NNNNNN` on the
# line. stall.console_pin checks the PIN against config's pin_hash, a few
# PBKDF2 rounds per step, and keeps the persisted lockout. Handlers take
# the argument list and return text or (text, data); ConsoleError(code,
# message) is a refusal; any other exception becomes error "internal".

from protocol import canonjson
from stall import config as configmod
from stall import console_pin as pinmod

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# Bytes on the wire.
STX = "\x02"  # starts a reply frame (after the echo of the line)
RS = "\x1e"  # ends a reply's body; the status line "ok" or "error <code>" follows
_CTRL_C = const(0x03)  # cancels the line being typed (the REPL's Ctrl-C is off while the console runs on a board)
_CTRL_D = const(0x04)  # leaves the desktop's simulated service mode (a soft reset on a board)
_BS = const(0x08)  # backspace
_DEL = const(0x7F)  # what most terminals send for backspace
_CTRL_U = const(0x15)  # clears the line being typed (the host tool sends it before its first command)
_ESC = const(0x1B)  # starts a terminal escape sequence (arrow keys): skipped
_CR = const(0x0D)
_LF = const(0x0A)

MAX_LINE = const(240)  # bytes in one command line
MAX_QUEUE = const(4)  # complete lines waiting for their turn
MAX_OUT = const(16384)  # output not yet taken by the driver
PIN_STEP = const(50)  # PBKDF2 rounds per step
UNLOCK_MS = const(300000)  # how long `pin NNNNNN` unlocks the console
LOG_LINES = const(32)
EVENTS_KEPT = const(32)
STATE_FILE = "console.json"  # the PIN lockout (stall.console_pin)
VERSION = 1  # of the frame format and the JSON replies

# Replies whose code means "the PIN stopped this" (the host tool exits 2 on them).
PIN_ERRORS = ("pin_required", "pin_wrong", "locked", "no_pin")


class ConsoleError(Exception):
    """A refusal: code (a short word), message (one line), optional data and detail text."""

    def __init__(self, code, message, data=None, detail=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.detail = detail


class Ring:
    """The last `size` items, oldest first from items()."""

    def __init__(self, size):
        self.size = size
        self.buf = []
        self.head = 0  # index of the oldest once full
        self.total = 0

    def add(self, item):
        self.total += 1
        if len(self.buf) < self.size:
            self.buf.append(item)
        else:
            self.buf[self.head] = item
            self.head = (self.head + 1) % self.size

    def last(self):
        if not self.buf:
            return None
        return self.buf[(self.head - 1) % len(self.buf)] if len(self.buf) == self.size else self.buf[-1]

    def replace_last(self, item):
        if len(self.buf) == self.size:
            self.buf[(self.head - 1) % self.size] = item
        else:
            self.buf[-1] = item

    def items(self, n=None):
        out = self.buf[self.head :] + self.buf[: self.head]
        if n is not None and n < len(out):
            out = out[len(out) - n :]
        return out

    def clear(self):
        self.buf = []
        self.head = 0


def split(line):
    """Words of a line; "double quotes" keep spaces. ConsoleError on an open quote."""
    out = []
    cur = None
    quoted = False
    for c in line:
        if quoted:
            if c == '"':
                quoted = False
            else:
                cur += c
        elif c == '"':
            quoted = True
            if cur is None:
                cur = ""
        elif c == " " or c == "\t":
            if cur is not None:
                out.append(cur)
                cur = None
        else:
            cur = c if cur is None else cur + c
    if quoted:
        raise ConsoleError("usage", "unbalanced quote")
    if cur is not None:
        out.append(cur)
    return out


def _clean(text):
    # Nothing but LF and printable characters in a body: STX/RS stay unique.
    for c in text:
        if c < " " and c != "\n":
            break
    else:
        return text
    out = []
    for c in text:
        out.append(c if c >= " " or c == "\n" else "?")
    return "".join(out)


class Console:
    def __init__(self, app, clock=None):
        self.app = app
        self.clock = clock  # the console's own timer (PIN unlock, lockout); None: the app's
        self.commands = {}  # name -> (handler, help, pin, usage)
        self.json = False
        self.log = Ring(LOG_LINES)  # [uptime_ms, unix or None, text]
        self.events = Ring(EVENTS_KEPT)  # [n, unix or None (not synced), body] of the events the stall emitted
        self.lock = pinmod.Lockout(app.fs, app.root + STATE_FILE)
        self.action = None  # "reboot", "service" or "factory-reset": its reply is out, the driver acts
        self.requested = None  # the last action performed (for the simulator and tests)
        self.service = False  # desktop service mode: input ignored until Ctrl-D
        self.board = None  # None: decided by the driver (sys.platform)
        self.pending = {}  # config keys saved to config.json, applied at the next boot
        self._unlock_until = 0
        self._buf = bytearray()
        self._too_long = False
        self._masking = False
        self._esc = 0
        self._last = 0
        self._lines = []
        self._out = []
        self._outlen = 0
        self.dropped = 0  # output bytes dropped (nobody took them)
        self.replies = 0  # reply frames made (a gauge for tests and the simulator)
        self._job = None  # [PinCheck, continuation]
        self._capture = None
        self._tag = ""  # " @id" of the line being answered
        self._snap = None
        self._core = None
        from stall import console_cmds

        console_cmds.install(self)

    # -- the table ---------------------------------------------------------------

    def register(self, name, handler, help="", pin=False, usage=""):
        """Add a command: handler(args) -> text or (text, data). pin: True if it changes
        anything, or a tuple of the subcommands (first argument) that do."""
        self.commands[name] = (handler, help, pin, usage)

    # -- wiring ------------------------------------------------------------------

    def attach(self, core):
        """Called by the app with each new StallCore, before it starts: taps its events."""
        if core is self._core:
            return
        self._core = core
        emit = core._event
        events = self.events

        def tap(now_ms, body, telemetry=False):
            emit(now_ms, body, telemetry)
            item = [core.seq, core.unix(now_ms) if core.synced else None, body]
            last = events.last()
            if body.get("type") == "idle_tick" and last is not None and last[2].get("type") == "idle_tick":
                events.replace_last(item)  # one line per run of ticks: the newest
            else:
                events.add(item)

        core._event = tap

    def now(self):
        c = self.clock or self.app.clock
        return c.now_ms()

    def cfg(self):
        core = self.app.core
        return core.cfg if core is not None else self.app.cfg

    def note(self, text):
        """Add a line to the log ring."""
        app = self.app
        now = app.clock.now_ms()
        core = app.core
        self.log.add([now, core.unix(now) if core is not None and core.synced else None, text])

    def watch(self, now_ms):
        """Called every tick by the app: log what changed, keep the lockout file current."""
        self.lock.tick(self.now())
        app = self.app
        core = app.core
        if core is None:
            return
        link = app.link
        up = bool(link) and bool(getattr(link, "connected", False))
        rej = core.rejected
        n = 0
        for k in rej:
            n += rej[k]
        snap = (core.status, up, core.synced, core.paused, core.blocked, core.fault, app.late, n, core.safe)
        old = self._snap
        self._snap = snap
        if old is None:
            self.note("boot %d%s, %s" % (core.boot, " in SAFE MODE" if core.safe else "", core.status))
            if up:
                self.note("mqtt connected")
            return
        if snap == old:
            return
        if snap[0] != old[0]:
            self.note("status " + old[0] + " -> " + snap[0])
        if snap[1] != old[1]:
            st = getattr(link, "status", None)
            err = st().get("last_error") if st is not None else None
            self.note("mqtt connected" if up else "mqtt down" + (": " + err if err else ""))
        if snap[2] and not old[2]:
            self.note("wall time synced")
        if snap[3] != old[3]:
            self.note("paused by the operator" if snap[3] else "resumed")
        if snap[4] != old[4]:
            self.note("journal full: no new session" if snap[4] else "journal has room again")
        if snap[5] != old[5]:
            self.note("hardware fault" if snap[5] else "hardware fault cleared")
        if snap[6] != old[6]:
            self.note(("task late: " + snap[6]) if snap[6] else "all tasks on time")
        if snap[7] > old[7]:
            self.note("refused %d message(s) (%s)" % (snap[7] - old[7], ", ".join(sorted(rej))))

    # -- PIN state ---------------------------------------------------------------

    def unlocked(self):
        return self._unlock_until > 0 and self.now() < self._unlock_until

    def prompt(self):
        return self.cfg()["station"] + ("# " if self.unlocked() else "> ")

    # -- bytes in --------------------------------------------------------------------

    @property
    def busy(self):
        return bool(self._lines) or self._job is not None

    def start(self):
        """The banner and the first prompt."""
        self._out_add("\noverstay console on " + self.cfg()["station"] + " (help lists the commands)\n" + self.prompt())

    def feed(self, data):
        """Take bytes from the port; returns how many were taken (the rest later)."""
        i = 0
        n = len(data)
        while i < n:
            if len(self._lines) >= MAX_QUEUE:
                return i
            b = data[i]
            i += 1
            if self.service:
                if b == _CTRL_D:
                    self.service = False
                    self.note("left service mode")
                    self.start()
                continue
            if self._esc:
                # ESC [ ... final byte, or ESC + one byte.
                if self._esc == 1 and (b == 0x5B or b == 0x4F):  # CSI "[" or SS3 "O"
                    self._esc = 2
                elif self._esc == 2 and not (0x40 <= b <= 0x7E):
                    pass
                else:
                    self._esc = 0
                continue
            last = self._last
            self._last = b
            if b == _CR or b == _LF:
                if b == _LF and last == _CR:
                    continue  # CR LF is one line end
                self._end_line()
            elif b == _BS or b == _DEL:
                if self._buf and not self._too_long:
                    self._buf = self._buf[:-1]
                    self._out_add("\b \b")
                    self._masking = self._mask_now()
            elif b == _CTRL_C or b == _CTRL_U:
                self._buf = bytearray()
                self._too_long = False
                self._masking = False
                self._out_add(("^C" if b == _CTRL_C else "^U") + "\n" + self.prompt())
            elif b == _ESC:
                self._esc = 1
            elif b < 0x20:
                pass  # other control bytes mean nothing here
            elif self._too_long:
                pass
            elif len(self._buf) >= MAX_LINE:
                self._too_long = True
            else:
                self._buf.append(b)
                if b == 0x20:
                    self._masking = self._mask_now()
                    self._out_add(" ")
                else:
                    self._out_add("*" if self._masking else chr(b) if b < 0x80 else "?")
        return n

    def _mask_now(self):
        # Echo the word after "pin" or "--pin" as stars.
        words = bytes(self._buf).split(b" ")
        if len(words) < 2:
            return False
        prev = words[-2]
        return prev == b"pin" or prev == b"--pin"

    def _end_line(self):
        self._out_add("\n")
        raw = bytes(self._buf)
        too_long = self._too_long
        self._buf = bytearray()
        self._too_long = False
        self._masking = False
        if too_long:
            self._lines.append(None)
            return
        try:
            line = raw.decode()
        except UnicodeError:
            line = None
        if line is None:
            self._lines.append(None)  # refused in step(): not text
            return
        if not line.strip():
            self._out_add(self.prompt())
            return
        self._lines.append(line)

    # -- bytes out ---------------------------------------------------------------------

    def _out_add(self, s):
        if self._outlen + len(s) > MAX_OUT:
            self.dropped += len(s)
            return
        self._out.append(s)
        self._outlen += len(s)

    def take(self):
        """Everything written since the last take(), as text ("" for nothing)."""
        if not self._out:
            return ""
        s = "".join(self._out)
        self._out = []
        self._outlen = 0
        return s

    # -- work ------------------------------------------------------------------------

    def step(self):
        """Bounded work: some PBKDF2 rounds, or one command line."""
        job = self._job
        if job is not None:
            if job[0].step(PIN_STEP):
                self._job = None
                self._tag = job[2]
                self._checked(job[0].ok, job[1])
            return
        if self._lines:
            line = self._lines.pop(0)
            if line is None:
                self._error("console", False, "usage", "line too long or not text (at most %d characters)" % MAX_LINE)
            elif line:
                self.line(line)

    def handle(self, line):
        """Run one line to the end and return the reply body (no frame, no prompt).
        For tests and tools; the port goes through feed()/step()."""
        cap = self._capture = []
        try:
            self.line(line)
            while self._job is not None:
                self.step()
        finally:
            self._capture = None
        return "\n".join(cap)

    def line(self, line):
        """Run one command line (its reply goes out as a frame)."""
        try:
            words = split(line.strip())
        except ConsoleError as e:
            self._error("console", False, e.code, e.message)
            return
        js = self.json
        self._tag = ""
        while words and (words[0] == "-j" or words[0] == "--json" or (words[0][:1] == "@" and len(words[0]) > 1)):
            if words[0][:1] == "@":
                self._tag = " " + words[0][:24]  # a host tool's request id, repeated in the status line
            else:
                js = True
            words = words[1:]
        if not words:
            self._error("console", js, "usage", "-j needs a command after it")
            return
        name = words[0]
        args = words[1:]
        entry = self.commands.get(name)
        if entry is None:
            self._error(name, js, "unknown", "unknown command " + name + " (try help)", "console: unknown command " + name + " (try help)")
            return
        pin = None
        if "--pin" in args:
            k = args.index("--pin")
            if k + 1 >= len(args):
                self._error(name, js, "usage", "--pin needs the PIN after it")
                return
            pin = args[k + 1]
            args = args[:k] + args[k + 2 :]
        if name == "pin":
            if args and pin is None:
                pin = args[0]
                args = args[1:]
            if pin is None:
                self._run(name, entry, args, js)
            else:
                self._check(pin, [name, None, args, js])
            return
        needs = entry[2]
        if needs is not True and needs:  # a tuple of the subcommands that change something
            needs = bool(args) and args[0] in needs
        if not needs or (pin is None and self.unlocked()):
            self._run(name, entry, args, js)
        elif pin is None:
            self._error(name, js, "pin_required", "needs the technician PIN: `pin NNNNNN` first, or " + name + " ... --pin NNNNNN")
        else:
            self._check(pin, [name, entry, args, js])

    # -- PIN ---------------------------------------------------------------------------

    def _check(self, pin, cont):
        name, js = cont[0], cont[3]
        now = self.now()
        left = self.lock.left_ms(now)
        if left:
            self._locked(name, js, left)
            return
        stored = self.cfg()["pin_hash"]
        if not stored:
            self._error(name, js, "no_pin", "no technician PIN is set on this stall: enrol it with `overstay flash`")
            return
        parsed = pinmod.parse_hash(stored)
        if parsed is None:
            self._error(name, js, "no_pin", "the stored PIN hash is unreadable: re-flash the stall")
            return
        if not pinmod.valid_pin(pin):
            self._error(name, js, "usage", "a PIN is 4 to 12 digits")
            return
        self._job = [pinmod.PinCheck(pin, parsed), cont, self._tag]

    def _checked(self, ok, cont):
        name, entry, args, js = cont
        now = self.now()
        if not ok:
            lock = self.lock.failed(now)
            self.note("wrong PIN (%d in a row)" % self.lock.fails)
            if lock:
                self.note("PIN lockout for %d s" % (lock // 1000))
                self._locked(name, js, lock, "wrong PIN. ")
            else:
                left = self.lock.tries_left()
                self._error(name, js, "pin_wrong", "wrong PIN (%d more before a lockout)" % left, data={"tries_left": left})
            return
        self.lock.succeeded(now)
        if entry is None:  # `pin NNNNNN`
            self._unlock_until = now + UNLOCK_MS
            self.note("console unlocked")
            self._reply(name, js, "unlocked for %d minutes (lock ends it sooner)" % (UNLOCK_MS // 60000), {"unlocked_s": UNLOCK_MS // 1000})
            return
        self._run(name, entry, args, js)

    def _locked(self, name, js, left_ms, prefix=""):
        s = (left_ms + 999) // 1000
        self._error(
            name,
            js,
            "locked",
            prefix + "too many wrong PINs: locked out, try again in " + dur(s),
            data={"retry_s": s, "fails": self.lock.fails},
        )

    def relock(self):
        self._unlock_until = 0

    # -- replies ------------------------------------------------------------------------

    def _run(self, name, entry, args, js):
        try:
            r = entry[0](args)
        except ConsoleError as e:
            self._error(name, js, e.code, e.message, data=e.data, detail=e.detail)
            return
        except Exception as e:
            self._error(name, js, "internal", type(e).__name__ + ": " + str(e))
            return
        if isinstance(r, tuple):
            text, data = r
        else:
            text, data = r, None
        if data is None:
            data = {"text": text}
        self._reply(name, js, text, data)

    def _reply(self, name, js, text, data):
        if js:
            body = canonjson.dumps({"ok": True, "cmd": name, "data": data}).decode()
        else:
            body = text
        self._frame(body, "ok")

    def _error(self, name, js, code, message, line=None, data=None, detail=None):
        if js:
            d = {"ok": False, "cmd": name, "error": code, "message": message}
            if data is not None:
                d["data"] = data
            body = canonjson.dumps(d).decode()
        else:
            body = line or ("console: " + message if name == "console" else "console: " + name + ": " + message)
            if detail:
                body = detail + "\n" + body
        self._frame(body, "error " + code)

    def _frame(self, body, status):
        self.replies += 1
        body = _clean(body)
        if self._capture is not None:
            self._capture.append(body)
            return
        if body and body[-1] != "\n":
            body += "\n"
        self._out_add(STX + body + RS + status + self._tag + "\n" + self.prompt())

    # -- the stream ---------------------------------------------------------------------

    async def run(self, reader, write):
        """Serve a stream: reader (an asyncio StreamReader; the REPL's stdin on a board), write(text)."""
        from stall import console_io

        await console_io.serve(self, reader, write)


def dur(s):
    """Seconds as 45s, 4m05s, 2h03m, 3d04h."""
    if s < 60:
        return "%ds" % s
    if s < 3600:
        return "%dm%02ds" % (s // 60, s % 60)
    if s < 86400:
        return "%dh%02dm" % (s // 3600, s % 3600 // 60)
    return "%dd%02dh" % (s // 86400, s % 86400 // 3600)


def config_value(key, text):
    """A console word as the value of config key `key`, by the key's type."""
    f = configmod.FIELDS.get(key)
    if f is None:
        raise ConsoleError("config", "unknown key " + key + " (config list shows them)")
    typ = f[0]
    if text == "null" and (typ == configmod._OPT_STR or typ == configmod._OPT_INT):
        return None
    if typ == configmod._INT or typ == configmod._OPT_INT:
        try:
            return int(text)
        except ValueError:
            raise ConsoleError("config", key + ": expected an integer, got " + text)
    if typ == configmod._BOOL:
        if text in ("true", "on", "yes", "1"):
            return True
        if text in ("false", "off", "no", "0"):
            return False
        raise ConsoleError("config", key + ": expected true or false, got " + text)
    if typ == configmod._OBJ:
        try:
            return canonjson.loads(text)
        except ValueError:
            raise ConsoleError("config", key + ": expected a JSON object")
    return text
