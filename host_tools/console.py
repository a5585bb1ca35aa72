# overstay console: the technician's shell on a stall's serial port (interactive with history and completion, or one command for scripts).
#
#   overstay console --port PORT [--baud 115200] [--json] [--pin-file F] [--timeout S] [COMMAND ...]
#   overstay console --list
#
# The stall side is firmware/stall/console.py. Every command line we send
# comes back as a frame, after the stall's echo of the line:
#
#     STX body RS "ok" LF prompt        or        STX body RS "error <code>" LF prompt
#
# so we take what lies between STX and RS and ignore echoes, banners and
# prompts. Each line we send starts with a request id "@h<n>" that the stall
# repeats at the end of the status line, so replies still on their way from
# before we connected (another tool, a flood of input) are skipped. Reads have an idle timeout (nothing new for --timeout seconds)
# and an overall one (OVERALL_FACTOR x --timeout), both on the monotonic
# clock. The port opens with pyserial's serial_for_url, so a pseudo-terminal
# (the simulator's, see host_tools/console_pty.py), loop:// or socket://
# work as well as /dev/ttyUSB0.
#
# Exit codes: 0 the stall answered ok; 1 the stall reported an error (the
# command was refused or a self-test failed); 2 a problem of ours: missing
# port, permission, no answer, wrong PIN, lockout (one line on stderr).
import argparse
import getpass
import json
import os
import sys
import time

from host_tools.errors import UserError

# Control bytes; they must match firmware/stall/console.py.
STX = b"\x02"  # a reply frame starts (after the stall's echo of our line)
RS = b"\x1e"  # the reply's body ends; "ok" or "error <code>" and LF follow
CTRL_U = b"\x15"  # clears a half-typed line on the stall: sent once before the first command
EOL = b"\n"  # ends a command line

DEFAULT_BAUD = 115200
DEFAULT_TIMEOUT = 5.0
OVERALL_FACTOR = 4  # a reply may take this many idle timeouts in all
POLL_S = 0.02
PIN_ERRORS = ("pin_required", "pin_wrong", "locked", "no_pin")
HISTORY = os.path.join("~", ".overstay_console_history")
REPL_SIGNS = (b">>> ", b"raw REPL", b"MicroPython v")


class NoAnswer(UserError):
    """The port gave no reply frame in time."""


class Reply:
    """One reply: ok, code ("ok" or the error code), text (the body), data (parsed JSON or None), prompt."""

    def __init__(self, ok, code, text, data=None, prompt=""):
        self.ok = ok
        self.code = code
        self.text = text
        self.data = data
        self.prompt = prompt

    def message(self):
        """The stall's one-line reason for an error."""
        if self.data is not None and "message" in self.data:
            return self.data["message"]
        last = self.text.strip().splitlines()[-1] if self.text.strip() else self.code
        if last.startswith("console: "):
            last = last.split(": ", 2)[-1]
        return last


def check_port_path(port):
    """Refuse a device path that is missing or not ours to open; URLs and COM names pass."""
    if not port or port != port.strip():
        raise UserError("--port: give the stall's serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0 (`overstay console --list` lists them)")
    if "://" in port or not port.startswith("/"):
        return
    if not os.path.exists(port):
        raise UserError("no such port: %s (is the stall's USB cable plugged in? `overstay console --list` lists the ports)" % port)
    if not os.access(port, os.R_OK | os.W_OK):
        raise UserError(permission_message(port))


def permission_message(port):
    return "permission denied on %s: add yourself to the dialout group (sudo usermod -aG dialout $USER), then log out and in again" % port


def open_port(port, baud=DEFAULT_BAUD):
    """An open pyserial port (non-blocking reads), or UserError saying why not."""
    import serial

    check_port_path(port)
    try:
        return serial.serial_for_url(port, baudrate=baud, timeout=0, write_timeout=5)
    except serial.SerialException as e:
        raise UserError(describe_open_error(port, e)) from None
    except (ValueError, OSError) as e:
        raise UserError("cannot open %s: %s" % (port, e)) from None


def describe_open_error(port, e):
    import errno as errno_mod

    code = getattr(e, "errno", None)
    text = str(e)
    if code in (errno_mod.EACCES, errno_mod.EPERM) or "Permission denied" in text:
        return permission_message(port)
    if code == errno_mod.ENOENT or "No such file" in text:
        return "no such port: %s (is the stall's USB cable plugged in? `overstay console --list` lists the ports)" % port
    if code == errno_mod.EBUSY or "busy" in text.lower():
        return "%s is in use by another program (another console, mpremote or a terminal): close it and retry" % port
    return "cannot open %s: %s" % (port, text)


def join_words(words):
    """Command words as one console line; words with spaces go in double quotes."""
    out = []
    for w in words:
        if w == "" or any(c in w for c in " \t"):
            if '"' in w:
                raise UserError("a console word cannot hold both spaces and a double quote: %r" % w)
            w = '"' + w + '"'
        out.append(w)
    return " ".join(out)


class StallPort:
    """The console protocol over an open pyserial port."""

    def __init__(self, ser, name, timeout=DEFAULT_TIMEOUT, clock=time.monotonic):
        self.ser = ser
        self.name = name
        self.timeout = timeout
        self.clock = clock
        self.station = None
        self.commands = {}  # name -> the help entry (usage, help, pin)
        self._seq = int(time.time() * 1000) % 1000000  # request ids: "@h<n>", new per run

    def close(self):
        try:
            self.ser.close()
        except Exception:
            pass

    def _discard_input(self):
        try:
            self.ser.reset_input_buffer()
        except Exception:
            pass

    def hello(self):
        """Clear any half-typed line, ask `-j help`; returns its data (the liveness check)."""
        self._discard_input()
        self._write(CTRL_U)
        r = self.request("-j help")
        if not r.ok or not isinstance(r.data, dict) or "data" not in r.data:
            raise UserError("%s answered `help` with an error: %s" % (self.name, r.message()))
        data = r.data["data"]
        self.station = data.get("station")
        self.commands = {c["name"]: c for c in data.get("commands", [])}
        if data.get("json"):
            self.request("json off")  # someone left JSON mode on: we add -j ourselves when asked
        return data

    def needs_pin(self, words):
        c = self.commands.get(words[0]) if words else None
        if c is None:
            return False
        pin = c.get("pin")
        if isinstance(pin, list):
            return len(words) > 1 and words[1] in pin
        return bool(pin)

    def _write(self, data):
        import serial

        try:
            self.ser.write(data)
            self.ser.flush()
        except serial.SerialTimeoutException:
            raise NoAnswer("%s does not take our bytes (write timed out): is the stall's console running?" % self.name) from None
        except (serial.SerialException, OSError) as e:
            raise UserError("lost %s: %s" % (self.name, e)) from None

    def request(self, line, timeout=None):
        """Send one command line; returns its Reply. NoAnswer when no frame comes in time."""
        import serial

        idle = self.timeout if timeout is None else timeout
        overall = idle * OVERALL_FACTOR
        self._seq += 1
        tag = "@h%d" % self._seq
        self._discard_input()
        self._write(tag.encode() + b" " + line.encode("utf-8") + EOL)
        buf = bytearray()
        start = last = self.clock()
        while True:
            try:
                chunk = self.ser.read(self.ser.in_waiting or 1)
            except (serial.SerialException, OSError) as e:
                raise UserError("lost %s: %s" % (self.name, e)) from None
            now = self.clock()
            if chunk:
                buf += chunk
                last = now
                frame = _frame(buf, tag)
                if frame is not None:
                    return self._reply(line, *frame)
            else:
                if now - last >= idle or now - start >= overall:
                    raise NoAnswer(self._silence(buf, idle))
                time.sleep(POLL_S)

    def _reply(self, line, body, status, tail):
        text = body.decode("utf-8", "replace").replace("\r", "")
        if text.endswith("\n"):
            text = text[:-1]
        st = status.decode("ascii", "replace").strip().split()
        ok = bool(st) and st[0] == "ok"
        code = "ok" if ok else (st[1] if len(st) > 1 else "error")
        data = None
        if line.startswith("-j ") or line.startswith("--json "):
            try:
                data = json.loads(text)
            except ValueError:
                data = None
        prompt = tail.decode("utf-8", "replace").replace("\r", "").replace("\n", "")
        return Reply(ok, code, text, data, prompt)

    def _silence(self, buf, idle):
        if any(s in buf for s in REPL_SIGNS):
            return (
                "%s answers with the MicroPython REPL, not the stall console: the stall is in service mode "
                "or its app is not running (press reset, or flash it with `overstay flash`)" % self.name
            )
        if not buf:
            return (
                "no answer from %s within %.0f s: is this the stall's console port, and is the stall powered and "
                "running (not in service mode)? (--timeout S waits longer)" % (self.name, idle)
            )
        shown = bytes(buf[:60]).decode("ascii", "replace")
        return "%s answered, but not as the stall console does (got %r): wrong port or wrong --baud?" % (self.name, shown)


def _frame(buf, tag=None):
    """(body, status, tail) of the first complete reply frame in buf whose status
    line ends with tag (any frame when tag is None), or None."""
    start = 0
    while True:
        i = buf.find(STX, start)
        if i < 0:
            return None
        j = buf.find(RS, i + 1)
        if j < 0:
            return None
        k = buf.find(b"\n", j + 1)
        if k < 0:
            return None
        status = bytes(buf[j + 1 : k]).rstrip(b"\r")
        if tag is None:
            return bytes(buf[i + 1 : j]), status, bytes(buf[k + 1 :])
        words = status.split()
        if words and words[-1] == tag.encode():
            return bytes(buf[i + 1 : j]), b" ".join(words[:-1]), bytes(buf[k + 1 :])
        start = k + 1  # a reply to someone else's line (or from before we came): skip it


# -- the command --------------------------------------------------------------------------


def register(sub):
    p = sub.add_parser(
        "console",
        help="the technician console on a stall's serial port",
        description="Talk to a stall's technician console over its serial port (USB cable, or a simulator's pseudo-terminal). "
        "With a COMMAND: run it and exit (0 ok, 1 the stall reported an error, 2 no answer / PIN / port problem). "
        "Without: an interactive shell with history and tab completion. Options go before the command.",
    )
    p.add_argument("--port", help="serial port: /dev/ttyUSB0, /dev/ttyACM0, COM3, a simulator's /dev/pts/N, socket://HOST:PORT")
    p.add_argument("--baud", type=int, default=DEFAULT_BAUD, help="baud rate (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print each reply as the stall's one JSON line")
    p.add_argument("--pin-file", metavar="FILE", help="file holding the technician PIN, for the commands that need it")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S", help="seconds of silence before giving up (default %(default)s)")
    p.add_argument("--list", action="store_true", help="list the serial ports with their descriptions and exit")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="a console command and its arguments, e.g. status, events 20, config get mqtt_host")
    p.set_defaults(func=run)


def list_ports(out=None, err=None):
    from serial.tools import list_ports as lp

    out = out or sys.stdout
    err = err or sys.stderr
    ports = sorted(lp.comports(), key=lambda p: p.device)
    if not ports:
        print("no serial ports found (plug in the stall's USB cable; a simulator prints its /dev/pts/N path)", file=err)
        return 0
    width = max(len(p.device) for p in ports)
    for p in ports:
        desc = p.description if p.description and p.description != "n/a" else "-"
        hw = p.hwid if p.hwid and p.hwid != "n/a" else ""
        print(("%-*s  %s  %s" % (width, p.device, desc, hw)).rstrip(), file=out)
    return 0


def read_pin_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UserError("--pin-file: no such file: " + path) from None
    except IsADirectoryError:
        raise UserError("--pin-file: is a directory: " + path) from None
    except PermissionError:
        raise UserError("--pin-file: permission denied: " + path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError("--pin-file: cannot read %s: %s" % (path, e)) from None
    pin = text.strip()
    if not (pin.isascii() and pin.isdigit() and 4 <= len(pin) <= 12):
        raise UserError("--pin-file: the file must hold the PIN (4 to 12 digits) on one line")
    return pin


def run(args):
    if args.list:
        return list_ports()
    if not args.port:
        raise UserError("--port is required (or --list to see the ports)")
    if args.baud <= 0:
        raise UserError("--baud: must be a positive number")
    if not 0.1 <= args.timeout <= 600:
        raise UserError("--timeout: must be between 0.1 and 600 seconds")
    pin = read_pin_file(args.pin_file) if args.pin_file else None
    words = list(args.command)
    if words and words[0] == "--":
        words = words[1:]
    ser = open_port(args.port, args.baud)
    sp = StallPort(ser, args.port, args.timeout)
    try:
        sp.hello()
        if words:
            return one_shot(sp, words, args.json, pin)
        if sys.stdin.isatty():
            return Shell(sp, args.json, pin).loop()
        return script(sp, sys.stdin, args.json, pin)
    finally:
        sp.close()


def _with_pin(sp, words, pin, ask):
    """The line to send: words, plus --pin when the command needs it and we have (or may ask for) one."""
    line = join_words(words)
    if not sp.needs_pin(words) or "--pin" in words:
        return line
    if pin is None and ask:
        pin = getpass.getpass("PIN for %s: " % (sp.station or sp.name))
    if pin:
        line += " --pin " + pin
    return line


def _pin_failure(sp, r, have_pin):
    msg = "%s: %s" % (sp.station or sp.name, r.message())
    if r.code == "pin_required" and not have_pin:
        msg += " (pass --pin-file FILE)"
    return UserError(msg)


def one_shot(sp, words, as_json, pin, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    ask = pin is None and sys.stdin.isatty()
    line = _with_pin(sp, words, pin, ask)
    r = sp.request(("-j " if as_json else "") + line)
    if as_json:
        print(r.text, file=out)
    if r.ok:
        if not as_json:
            print(r.text, file=out)
        return 0
    if r.code in PIN_ERRORS:
        raise _pin_failure(sp, r, pin is not None or ask)
    if not as_json:
        print(r.text, file=err)
    return 1


def script(sp, stream, as_json, pin, out=None, err=None):
    """Commands from a non-interactive stdin, one per line (# starts a comment); the worst exit code wins."""
    out = out or sys.stdout
    err = err or sys.stderr
    worst = 0
    for raw in stream:
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        line = text
        if pin is not None and sp.needs_pin(text.split()) and "--pin" not in text.split():
            line += " --pin " + pin
        r = sp.request(("-j " if as_json else "") + line)
        print(r.text, file=out if r.ok or as_json else err)
        rc = 0 if r.ok else 2 if r.code in PIN_ERRORS else 1
        worst = max(worst, rc)
    return worst


class Shell:
    """The interactive shell: readline history and completion from the stall's own help list."""

    def __init__(self, sp, as_json=False, pin=None, out=None):
        self.sp = sp
        self.json = as_json
        self.pin = pin
        self.out = out
        self.unlocked = False
        self.prompt = (sp.station or "stall") + "> "
        self.config_keys = None
        self.readline = None

    # -- completion ---------------------------------------------------------------

    def words_for(self, before):
        """Completion candidates for the word after `before` (the words already typed)."""
        sp = self.sp
        if not before:
            return sorted(list(sp.commands) + ["exit", "quit"])
        cmd = before[0]
        n = len(before)
        if cmd == "help" and n == 1:
            return sorted(sp.commands)
        if cmd == "config":
            if n == 1:
                return ["get", "list", "set"]
            if n == 2 and before[1] in ("get", "set"):
                return self._config_keys()
        if cmd == "json" and n == 1:
            return ["off", "on"]
        if cmd == "service" and n == 1:
            return ["force"]
        if cmd == "factory-reset":
            return ["confirm", "force"]
        return []

    def _config_keys(self):
        if self.config_keys is None:
            try:
                r = self.sp.request("-j config list")
                self.config_keys = sorted(r.data["data"]["config"]) if r.ok and r.data else []
            except UserError:
                self.config_keys = []
        return self.config_keys

    def complete(self, text, state):
        try:
            rl = self.readline
            buf = rl.get_line_buffer()[: rl.get_begidx()] if rl is not None else ""
            before = buf.split()
            if before and before[0] == "-j":
                before = before[1:]
            opts = [w + " " for w in self.words_for(before) if w.startswith(text)]
            return opts[state] if state < len(opts) else None
        except Exception:
            return None

    def _setup_readline(self):
        try:
            import readline
        except ImportError:
            return None
        self.readline = readline
        readline.set_completer(self.complete)
        readline.set_completer_delims(" \t")
        readline.parse_and_bind("tab: complete")
        path = os.path.expanduser(HISTORY)
        try:
            readline.read_history_file(path)
        except (OSError, ValueError):
            pass
        readline.set_history_length(1000)
        return path

    def _forget_last(self):
        # A line holding a PIN stays out of the history.
        rl = self.readline
        if rl is None:
            return
        n = rl.get_current_history_length()
        if n:
            try:
                rl.remove_history_item(n - 1)
            except (ValueError, OSError):
                pass

    # -- the loop -----------------------------------------------------------------

    def say(self, text):
        print(text, file=self.out or sys.stdout)

    def send(self, line):
        r = self.sp.request(("-j " if self.json else "") + line)
        if r.prompt.endswith("> ") or r.prompt.endswith("# "):
            self.prompt = r.prompt
        return r

    def unlock(self, pin):
        r = self.send("pin " + pin)
        if r.ok:
            self.unlocked = True
        return r

    def run_line(self, line):
        words = line.split()
        locked = not self.prompt.endswith("# ")
        if words[0] == "pin" and len(words) == 1 and locked and sys.stdin.isatty() and self.pin is None:
            pin = getpass.getpass("PIN: ")
            if not pin:
                return
            r = self.unlock(pin)
        elif words[0] == "pin" and len(words) == 1 and locked and self.pin is not None:
            r = self.unlock(self.pin)
        else:
            if words[0] == "pin" or "--pin" in words:
                self._forget_last()
            r = self.send(line)
            if r.code == "pin_required":
                pin = self.pin
                if pin is None and sys.stdin.isatty():
                    pin = getpass.getpass("%s needs the technician PIN: " % words[0])
                if pin:
                    u = self.unlock(pin)
                    r = self.send(line) if u.ok else u
            if words[0] == "lock" and r.ok:
                self.unlocked = False
        self.say(r.text)

    def loop(self):
        path = self._setup_readline()
        self.say(
            "connected to %s on %s: `help` lists the commands, Tab completes, `exit` or Ctrl-D leaves"
            % (self.sp.station or "the stall", self.sp.name)
        )
        try:
            while True:
                try:
                    line = input(self.prompt)
                except EOFError:
                    self.say("")
                    break
                except KeyboardInterrupt:
                    self.say("")
                    continue
                line = line.strip()
                if not line:
                    continue
                if line in ("exit", "quit"):
                    break
                try:
                    self.run_line(line)
                except NoAnswer as e:
                    self.say("overstay: " + str(e))
        finally:
            if self.unlocked:
                try:
                    self.sp.request("lock", timeout=min(self.sp.timeout, 2.0))
                except UserError:
                    pass
            if path and self.readline is not None:
                try:
                    self.readline.write_history_file(path)
                except OSError:
                    pass
        return 0


def main(argv=None):
    """`python -m host_tools.console ...`: the same as `overstay console ...` (host_tools/cli.py's error
    handling: one line, exit 2), without loading the other subcommands first."""
    from host_tools import cli

    parser = cli._Parser(prog="overstay")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=cli._Parser)
    register(sub)
    try:
        args = parser.parse_args(["console"] + list(sys.argv[1:] if argv is None else argv))
        return args.func(args) or 0
    except UserError as e:
        msg = str(e)
        print(msg if msg.startswith("overstay") else "overstay: error: " + msg, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("overstay: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
