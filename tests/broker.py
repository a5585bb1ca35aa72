# A real Mosquitto for tests: started on a free loopback port (below the ephemeral range), killable and restartable mid-test.
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# The suite's broker settings ship with the production ones (deploy/mosquitto/).
TEST_CONF = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "test.conf"


def mosquitto_binary():
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        raise RuntimeError("mosquitto is not installed; `make setup` installs it")
    return exe


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_port():
    """A free loopback port below the ephemeral range, for a broker that is
    killed and restarted while clients retry it. Thousands of reconnects to a
    closed port in the ephemeral range: one whose source port equals the
    broker's connects to itself (TCP simultaneous open) and holds the port, so
    the broker cannot listen on it again (seen in bench/recovery.py)."""
    lo = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo = int(f.read().split()[0])
    except (OSError, ValueError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(max(1024, lo - 12000), lo - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below %d" % lo)


class Mosquitto:
    """One broker process on 127.0.0.1:port with its own config and data folder.

    `persistence` keeps sessions and queued messages on disk across restart();
    `extra` is appended to the generated config (ACLs, password files...).
    """

    def __init__(self, workdir, port=None, persistence=True, extra=""):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.port = port or quiet_port()
        self.persistence = persistence
        self.extra = extra
        self.proc = None
        self.conf = os.path.join(self.workdir, "mosquitto.conf")
        self.log = os.path.join(self.workdir, "mosquitto.log")

    @property
    def url(self):
        return "mqtt://127.0.0.1:%d" % self.port

    def _write_conf(self):
        lines = [
            TEST_CONF.read_text(),
            "listener %d 127.0.0.1" % self.port,
            # Started as root (CI), mosquitto would switch to its own user and
            # could not write into the test's folder: stay who we are.
            "user " + pwd.getpwuid(os.getuid()).pw_name,
            "log_dest file " + self.log,
            "log_type error",
            "log_type warning",
        ]
        if self.persistence:
            lines += [
                "persistence true",
                "persistence_location " + self.workdir + "/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n" + self.extra + "\n")

    def start(self, timeout=10.0):
        self._write_conf()
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", self.conf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError("mosquitto exited at start: " + err.strip())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError("mosquitto did not listen on port %d" % self.port)

    def stop(self):
        """Graceful stop: with persistence, sessions and queues are saved."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self):
        """Crash: SIGKILL, nothing saved since the last autosave."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, clean=False):
        self.stop()
        if clean:
            db = os.path.join(self.workdir, "mosquitto.db")
            if os.path.exists(db):
                os.remove(db)
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
