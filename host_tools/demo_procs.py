# The demo's helper processes: a broker (Mosquitto, or the embedded amqtt one) and the billing bridge, started on loopback and always stopped.
#
# Every child is started in its own session (a Ctrl-C at the terminal
# reaches only the demo, which then stops the stalls, the bridge and the
# broker in that order) with a parent-death signal (Linux prctl), so even a
# demo killed with SIGKILL leaves no broker or bridge behind. Children.stop()
# is idempotent and runs on every exit path (finally and atexit).
import atexit
import ctypes
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

from host_tools.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PR_SET_PDEATHSIG = 1


def _die_with_parent(sig):
    """preexec_fn: the kernel sends `sig` to the child when the demo dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the finally/atexit paths still stop it
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary():
    exe = shutil.which("mosquitto")
    if exe is None and os.path.exists("/usr/sbin/mosquitto"):
        exe = "/usr/sbin/mosquitto"
    return exe


def amqtt_available():
    try:
        import amqtt  # noqa: F401
    except ImportError:
        return False
    return True


def install_amqtt(say):
    """pip-install the embedded broker into this interpreter (the `demo` extra)."""
    say("demo: no mosquitto and no amqtt: installing amqtt with pip (the embedded broker)")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "amqtt>=0.12,<0.13"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0 or not amqtt_available():
        err = r.stderr.decode(errors="replace").strip().splitlines()
        raise UserError("demo: cannot install amqtt with pip (%s); install mosquitto (apt-get install mosquitto) or `pip install amqtt`" % (err[-1] if err else "exit %d" % r.returncode))


def descendants(pid):
    """Pids of every live descendant of pid (Linux /proc), for tests and diagnostics."""
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b")") + 2:].split()
        if rest[0] == b"Z":
            continue
        kids.setdefault(int(rest[1]), []).append(int(name))
    out = []
    todo = [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


class Child:
    """One subprocess with a name, a log file and a polite-then-firm stop."""

    def __init__(self, name, argv, log_path, env=None, stop_signal=signal.SIGTERM, death_signal=signal.SIGTERM,
                 stdin=subprocess.DEVNULL, new_session=True):
        """log_path None: the child writes to the demo's own stdout and stderr (the screen)."""
        self.name = name
        self.log_path = log_path
        log = open(log_path, "ab") if log_path is not None else None
        try:
            self.proc = subprocess.Popen(
                argv, stdin=stdin, stdout=log, stderr=subprocess.STDOUT if log is not None else None, env=env,
                start_new_session=new_session, preexec_fn=lambda: _die_with_parent(death_signal),
            )
        finally:
            if log is not None:
                log.close()
        self.stop_signal = stop_signal

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def log_tail(self, lines=15):
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return "".join(f.readlines()[-lines:]).rstrip()
        except OSError:
            return ""

    def stop(self, timeout=10.0):
        """Signal, wait up to timeout, then SIGKILL. Returns the exit code."""
        p = self.proc
        if p.poll() is None:
            try:
                p.send_signal(self.stop_signal)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass
        return p.returncode


class Children:
    """The demo's subprocesses; stop() stops them in reverse start order, once."""

    def __init__(self):
        self.items = []
        atexit.register(self.stop)

    def add(self, child):
        self.items.append(child)
        return child

    def stop(self):
        while self.items:
            self.items.pop().stop()


def wait_port(port, child, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise UserError("demo: %s exited at start (code %s): %s" % (what, child.proc.returncode, child.log_tail(5) or "no output"))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise UserError("demo: %s did not listen on 127.0.0.1:%d within %g s: %s" % (what, port, timeout, child.log_tail(5)))


# -- brokers --------------------------------------------------------------------------


def mosquitto_conf(folder, port):
    """A throwaway site broker: the production settings that matter
    (deploy/mosquitto/production.conf) on one loopback listener."""
    lines = [
        "# Written by `overstay demo` for one run; deleted when the demo ends.",
        "# Settings as deploy/mosquitto/production.conf, on loopback and without passwords.",
        "listener %d 127.0.0.1" % port,
        "allow_anonymous true",
        # As root Mosquitto would switch to its own user and could not write here.
        "user " + pwd.getpwuid(os.getuid()).pw_name,
        # Sessions, subscriptions, retained and queued QoS 1 messages survive a broker restart.
        "persistence true",
        "persistence_location " + folder + "/",
        "autosave_interval 5",
        # Queues sized for outages: no count limit (the default 1,000 drops a
        # backlog), a byte limit bounds RAM; many QoS 1 messages in flight for the bridge.
        "max_queued_messages 0",
        "max_queued_bytes 268435456",
        "max_inflight_messages 1000",
        "max_inflight_bytes 0",
        "max_packet_size 32768",
        "set_tcp_nodelay true",
        "retain_available true",
        "log_dest file " + os.path.join(folder, "mosquitto.log"),
        "log_type error",
        "log_type warning",
        "log_type notice",
    ]
    path = os.path.join(folder, "mosquitto.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def start_broker(kind, folder, children, say):
    """Start `kind` ("mosquitto" or "amqtt") on a free loopback port; returns (url, Child, description)."""
    last = None
    for _attempt in range(3):  # a free port can be taken between choosing and binding it
        port = free_port()
        if kind == "mosquitto":
            conf = mosquitto_conf(folder, port)
            child = children.add(Child("mosquitto", [mosquitto_binary(), "-c", conf], os.path.join(folder, "mosquitto.out")))
            what = "mosquitto (persistence on, outage-sized queues; config %s)" % conf
        else:
            argv = [sys.executable, "-m", "host_tools.demo_amqtt", "--port", str(port)]
            child = children.add(Child("amqtt", argv, os.path.join(folder, "amqtt.log"), env=child_env()))
            what = "amqtt, the embedded Python broker (in memory, unbounded queues)"
        try:
            wait_port(port, child, 20.0, kind)
            return "mqtt://127.0.0.1:%d" % port, child, what
        except UserError as e:
            last = e
            child.stop(2)
            children.items.remove(child)
            if "in use" not in str(e).lower():
                raise
    raise last


def child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- the bridge ------------------------------------------------------------------------


def start_bridge(broker_url, db_url, world_file, log_path, tolerance_s, children):
    argv = [
        sys.executable, "-m", "host_tools.demo_bridge", "--world", world_file, "--",
        "--broker", broker_url, "--db", db_url,
        "--occupancy-tolerance", "%ds" % tolerance_s,
        "--gap-scan", "1s", "--gap-settle", "1s", "--drain", "2s",
    ]
    child = children.add(Child("bridge", argv, log_path, env=child_env()))
    return child


def wait_bridge_subscribed(child, timeout=30.0):
    """The bridge logs `subscribed` once its subscriptions are in place."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise UserError("demo: the bridge exited at start (code %s): %s" % (child.proc.returncode, child.log_tail(5)))
        try:
            with open(child.log_path, "r", errors="replace") as f:
                for line in f:
                    parts = line.split(None, 3)
                    if len(parts) >= 3 and parts[2] == "subscribed":
                        return
        except OSError:
            pass
        time.sleep(0.1)
    raise UserError("demo: the bridge did not subscribe within %g s: %s" % (timeout, child.log_tail(5)))


def write_world(path, start, speed, t0_mono):
    """The simulated clock, for the bridge: Unix time = start + (monotonic - t0) x speed (frozen at start until t0)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"start": start, "speed": speed, "t0_monotonic": t0_mono}, f)
    os.replace(tmp, path)
