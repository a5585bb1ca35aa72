# `overstay console` end to end: a simulated stall's firmware console on a real pty (host_tools.console_pty), driven by the CLI (subprocess) and the host module.
import asyncio
import builtins
import errno
import gc
import io
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import serial

from tests.fw_helpers import MemFs, make_cfg

from host_tools import cli, console_pty  # noqa: I001
from host_tools import console as hc
from host_tools.errors import UserError
from stall import console_pin
from stall.app import App
from stall.clock import HostTicks, MonoClock
from stall.hw import SimHardware
from stall.ntp import FixedWall

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIN = "246810"
PIN_HASH = console_pin.hash_pin(PIN, bytes(range(16)), 1000)
UNIX0_MS = 1763830800000


class FakeLink:
    """An MqttLink stand-in that is connected and takes everything."""

    def __init__(self):
        self.connected = False
        self.on_connect = self.on_disconnect = self.on_message = self.on_puback = None

    def start(self):
        self.connected = True
        self.on_connect(False)

    def stop(self, disconnect=True):
        self.connected = False

    def publish(self, topic, payload, qos=0, retain=False):
        return True

    def status(self):
        return {"connected": self.connected, "last_error": None, "attempts": 1, "connects": 1, "reconnects": 0, "retry_ms": 0, "inflight": 0}


class FakeClock:
    """A console clock the test moves by hand (PIN unlock and lockout)."""

    def __init__(self):
        self.ms = 0

    def now_ms(self):
        return self.ms


class SimStall:
    """An App with SimHardware on an accelerated clock, its asyncio loop in a thread, its console on a pty."""

    def __init__(self, fs=None, speed=1000, console_clock=None, stream=False, **over):
        """stream=False: console_pty.attach(app, loop); True: App(console=open_pty()), what the simulator does."""
        self.fs = fs if fs is not None else MemFs()
        self.ticks = HostTicks(speed=speed)
        self.hw = SimHardware()
        self.cfg = make_cfg(pin_hash=PIN_HASH, **dict(dict(sample_ms=1000, tick_ms=1000, pump_ms=1000), **over))
        self.pair = None
        if stream:
            self.path, self.pair = console_pty.open_pty("st-01", clock=console_clock)
        self.app = self._app(self.fs)
        self.loop = asyncio.new_event_loop()
        self.task = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 5
        while not self.loop.is_running():
            assert time.monotonic() < deadline
            time.sleep(0.005)
        if not stream:
            self.path = console_pty.attach(self.app, self.loop, clock=console_clock)

    def _app(self, fs):
        return App(self.cfg, fs, hw=self.hw, clock=MonoClock(self.ticks), wall=FixedWall(lambda now: UNIX0_MS + now), link=FakeLink(), console=self.pair)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.app.run())
        self.loop.run_forever()

    def reboot(self):
        """The stall's App ended (reboot): boot a new one on the same files and console."""
        self.app = self._app(self.fs.reboot())
        self.fs = self.app.fs
        fut = asyncio.run_coroutine_threadsafe(self._start(), self.loop)
        fut.result(5)

    async def _start(self):
        self.task = asyncio.get_running_loop().create_task(self.app.run())

    def sim_seconds(self, s):
        time.sleep(s / self.ticks.speed)

    def car(self, pilot=None, draw=None):
        if pilot is not None:
            self.hw.pilot = pilot
        if draw is not None:
            self.hw.draw_ma = draw

    def running(self):
        return not self.task.done()

    def close(self):
        console_pty.detach(self.app)
        self.loop.call_soon_threadsafe(self.app.stop)
        deadline = time.monotonic() + 5
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.pair is not None:
            self.loop.call_soon_threadsafe(console_pty.close_pty, self.pair)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def wait_stopped(self, timeout=5):
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.running()


@pytest.fixture(scope="module")
def stall():
    # 300x: the sampler's watchdog deadline (40 s of stall time at sample_ms=2000) is 133 ms
    # real, so a busy test machine does not make selftest fail.
    st = SimStall(speed=300, sample_ms=2000)
    st.sim_seconds(5)
    st.car("B")
    st.sim_seconds(5)
    st.car("C", 16000)
    st.sim_seconds(60)
    st.car(draw=0)
    st.sim_seconds(420)  # idle past the 5 min grace: a fee accrues
    yield st
    st.close()


@pytest.fixture
def pin_file(tmp_path):
    p = tmp_path / "pin"
    p.write_text(PIN + "\n")
    return str(p)


def overstay(*args, timeout=30, entry="host_tools.console"):
    """`overstay console ...` as a separate process (what a script runs). The default entry,
    `python -m host_tools.console`, runs the same code without loading the other
    subcommands (faster); entry="host_tools.cli" goes through the real `overstay` dispatcher."""
    pre = ["console"] if entry == "host_tools.cli" else []
    return subprocess.run(
        [sys.executable, "-m", entry] + pre + list(args),
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def main(capsys, *args):
    rc = cli.main(["console"] + list(args))
    out, err = capsys.readouterr()
    return rc, out, err


# -- every command, through the CLI in its own process ------------------------------------------------


def test_every_command_one_shot_from_a_subprocess(stall, pin_file):
    p = stall.path
    cases = [
        (["help"], "* reboot"),
        (["status"], "connector 1: SuspendedEV"),
        (["session"], "session st-01-"),
        (["events", "5"], "idle fee"),
        (["outbox"], "message(s) waiting"),
        (["net"], "mqtt connected"),
        (["time"], "(synced"),
        (["config", "list"], 'station_key = "***"'),
        (["config", "get", "mqtt_host"], 'mqtt_host = "127.0.0.1"'),
        (["tariff"], "tariff T0 v1"),
        (["selftest"], "all checks passed"),
        (["log", "32"], "+"),
        (["pin"], "locked: `pin NNNNNN`"),
        (["json", "off"], "json off"),
        (["--pin-file", pin_file, "config", "set", "heartbeat_s", "45"], "in effect now"),
        (["--pin-file", pin_file, "pause", "cable", "check"], "paused"),
        (["--pin-file", pin_file, "resume"], "resumed"),
        (["lock"], "locked"),
    ]
    for args, want in cases:
        opts = args[:2] if args[0] == "--pin-file" else []
        r = overstay("--port", p, *opts, *args[len(opts) :])
        assert r.returncode == 0 and want in r.stdout, (args, r.stdout, r.stderr)
        assert "\x02" not in r.stdout and "\x1e" not in r.stdout
    assert stall.app.core.cfg["heartbeat_s"] == 45 and stall.app.core.paused is False
    # A refusal from the stall: exit 1, its reason on stderr.
    r = overstay("--port", p, "--pin-file", pin_file, "service")
    assert r.returncode == 1 and "a car is plugged in" in r.stderr
    r = overstay("--port", p, "nope")
    assert r.returncode == 1 and "unknown command nope" in r.stderr
    # Through the real `overstay` entry point too.
    r = overstay("--port", p, "status", entry="host_tools.cli")
    assert r.returncode == 0 and "connector 1: SuspendedEV" in r.stdout
    # JSON: one line, parsable, exit code from "ok".
    r = overstay("--port", p, "--json", "status", entry="host_tools.cli")
    (line,) = r.stdout.splitlines()
    d = json.loads(line)
    assert r.returncode == 0 and d["ok"] and d["data"]["connectors"][0]["session"]["fee"] > 0
    r = overstay("--port", p, "--json", "reboot", entry="host_tools.cli")
    assert r.returncode == 2 and json.loads(r.stdout)["error"] == "pin_required" and "--pin-file" in r.stderr
    assert stall.running()


def test_every_command_through_the_host_module_in_json_and_text(stall):
    ser = hc.open_port(stall.path)
    sp = hc.StallPort(ser, stall.path, timeout=5)
    try:
        info = sp.hello()
        assert info["station"] == "st-01" and sp.needs_pin(["reboot"]) and sp.needs_pin(["config", "set", "x", "1"])
        assert not sp.needs_pin(["config", "get", "x"]) and not sp.needs_pin(["status"])
        names = sorted(sp.commands)
        assert names == sorted(
            ["config", "events", "factory-reset", "help", "json", "lock", "log", "net", "outbox", "pause", "pin", "reboot", "resume", "selftest", "service", "session", "status", "tariff", "time"]
        )
        args = {"config": "get station", "events": "3", "log": "3", "json": "off", "help": "status"}
        for name in names:
            line = (name + " " + args.get(name, "")).strip()
            r = sp.request("-j " + line)
            assert r.data is not None and "\n" not in r.text, line
            assert r.data["cmd"] == name and r.data["ok"] is r.ok
            if sp.needs_pin([name] + args.get(name, "").split()):
                assert r.code == "pin_required"
            else:
                assert r.ok, (line, r.text)
                t = sp.request(line)
                assert t.ok and t.text and not t.text.startswith("{"), line
        r = sp.request("session")
        assert r.ok and "idle" in r.text and r.prompt == "st-01> "
        r = sp.request("pin " + PIN)
        assert r.ok and r.prompt == "st-01# "
        assert sp.request("lock").prompt == "st-01> "
    finally:
        sp.close()


# -- actions: service, reboot, factory reset -----------------------------------------------------------------


def test_service_then_ctrl_d_then_reboot(pin_file):
    st = SimStall()
    try:
        st.sim_seconds(5)
        r = overstay("--port", st.path, "--pin-file", pin_file, "service")
        assert r.returncode == 0 and "service mode" in r.stdout
        assert st.app.console.service
        r = overstay("--port", st.path, "--timeout", "0.5", "status")
        assert r.returncode == 2 and "no answer" in r.stderr and r.stderr.count("\n") == 1
        with serial.serial_for_url(st.path, timeout=1) as s:
            s.write(b"\x04")  # what a soft reset would be on a board: the console is back
            s.flush()
        deadline = time.monotonic() + 5
        while st.app.console.service and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not st.app.console.service
        r = overstay("--port", st.path, "--pin-file", pin_file, "reboot")
        assert r.returncode == 0 and "rebooting" in r.stdout
        deadline = time.monotonic() + 5
        while st.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not st.running() and st.app.console.requested == "reboot"
    finally:
        st.close()


def test_factory_reset_erases_and_reboots(capsys, pin_file):
    fs = MemFs()
    st = SimStall(fs=fs)
    try:
        st.sim_seconds(5)
        rc, out, err = main(capsys, "--port", st.path, "--pin-file", pin_file, "factory-reset")
        assert rc == 1 and "factory-reset confirm" in err
        rc, out, err = main(capsys, "--port", st.path, "--pin-file", pin_file, "factory-reset", "confirm", "force")
        assert rc == 0 and "erasing" in out
        deadline = time.monotonic() + 5
        while st.running() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not st.running()
        time.sleep(0.1)
        assert not fs.files, list(fs.files)
    finally:
        st.close()


# -- the PIN: wrong, lockout growing, persisted across a reboot ---------------------------------------------


def test_wrong_pins_lock_out_with_a_growing_lockout_that_survives_a_power_cycle(capsys, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("000000\n")
    clock = FakeClock()
    st = SimStall(console_clock=clock)
    try:
        for left in (4, 3, 2, 1):
            rc, out, err = main(capsys, "--port", st.path, "--pin-file", str(wrong), "reboot")
            assert rc == 2 and err == "overstay: error: st-01: wrong PIN (%d more before a lockout)\n" % left
        rc, out, err = main(capsys, "--port", st.path, "--pin-file", str(wrong), "reboot")
        assert rc == 2 and "locked out, try again in 1m00s" in err and err.count("\n") == 1
        r = overstay("--port", st.path, "--pin-file", str(tmp_path / "right"), "reboot")  # a bad --pin-file
        assert r.returncode == 2 and "--pin-file: no such file" in r.stderr
        (tmp_path / "right").write_text(PIN)
        r = overstay("--port", st.path, "--pin-file", str(tmp_path / "right"), "reboot")
        assert r.returncode == 2 and "try again in 1m00s" in r.stderr  # even the right PIN waits
        clock.ms += 61000
        rc, out, err = main(capsys, "--port", st.path, "--pin-file", str(wrong), "reboot")
        assert rc == 2 and "try again in 2m00s" in err  # the 6th: twice as long
        clock.ms += 30000
        st.app.console.lock.tick(clock.ms)  # what the accounting task does every second
        assert st.running()
    finally:
        st.close()
    # Power cycle: a new App on the same files, a console clock starting from zero.
    clock2 = FakeClock()
    st2 = SimStall(fs=st.fs.reboot(), console_clock=clock2)
    try:
        rc, out, err = main(capsys, "--port", st2.path, "--json", "--pin-file", str(tmp_path / "right"), "reboot")
        d = json.loads(out)
        assert rc == 2 and d["error"] == "locked" and d["data"]["retry_s"] == 90 and "1m30s" in err
        clock2.ms += 91000
        rc, out, err = main(capsys, "--port", st2.path, "--pin-file", str(tmp_path / "right"), "pin")
        assert rc == 0 and "unlocked" not in out  # `pin` alone only reports
        rc, out, err = main(capsys, "--port", st2.path, "pin", PIN)
        assert rc == 0 and "unlocked for 5 minutes" in out
    finally:
        st2.close()


# -- errors of ours: one line, exit 2 --------------------------------------------------------------------------


def test_a_missing_port_and_a_port_with_nothing_behind_it():
    r = overstay("--port", "/dev/ttyNOPE9", "status", entry="host_tools.cli")
    assert r.returncode == 2 and r.stderr.startswith("overstay: error: no such port: /dev/ttyNOPE9") and r.stderr.count("\n") == 1
    master, slave = os.openpty()  # a pty nobody answers on
    try:
        path = os.ttyname(slave)
        t0 = time.monotonic()
        r = overstay("--port", path, "--timeout", "0.5", "status", entry="host_tools.cli")
        assert r.returncode == 2 and r.stderr.startswith("overstay: error: no answer from %s within" % path)
        assert r.stderr.count("\n") == 1 and time.monotonic() - t0 < 10
    finally:
        os.close(master)
        os.close(slave)


def test_a_repl_or_an_echo_is_told_apart_from_no_answer(capsys):
    master, slave = os.openpty()
    stop = threading.Event()

    def repl():
        while not stop.is_set():
            try:
                data = os.read(master, 100)
            except OSError:
                return
            if data:
                os.write(master, data + b"\r\n>>> ")

    t = threading.Thread(target=repl, daemon=True)
    t.start()
    try:
        rc, out, err = main(capsys, "--port", os.ttyname(slave), "--timeout", "0.3", "status")
        assert rc == 2 and "answers with the MicroPython REPL" in err
    finally:
        stop.set()
        os.close(slave)
        os.close(master)
    rc, out, err = main(capsys, "--port", "loop://", "--timeout", "0.3", "status")
    assert rc == 2 and "answered, but not as the stall console does" in err


def test_permission_denied_says_how_to_fix_it(tmp_path, capsys):
    e = serial.SerialException(errno.EACCES, "could not open port /dev/ttyUSB0: [Errno 13] Permission denied: '/dev/ttyUSB0'")
    msg = hc.describe_open_error("/dev/ttyUSB0", e)
    assert "permission denied on /dev/ttyUSB0" in msg and "dialout" in msg and "log out and in again" in msg
    assert "in use" in hc.describe_open_error("/dev/ttyUSB0", serial.SerialException(errno.EBUSY, "Device or resource busy"))
    if os.geteuid() != 0:  # root opens anything
        dev = tmp_path / "ttyFAKE"
        dev.write_text("")
        dev.chmod(0)
        rc, out, err = main(capsys, "--port", str(dev), "status")
        assert rc == 2 and "dialout" in err


def test_list_and_bad_flags(monkeypatch, capsys, tmp_path):
    from serial.tools import list_ports
    from serial.tools.list_ports_common import ListPortInfo

    usb = ListPortInfo("/dev/ttyUSB0")
    usb.description = "CP2102 USB to UART Bridge Controller"
    usb.hwid = "USB VID:PID=10C4:EA60"
    acm = ListPortInfo("/dev/ttyACM0")
    acm.description = "Board in FS mode"
    monkeypatch.setattr(list_ports, "comports", lambda *args, **kw: [usb, acm])
    rc, out, err = main(capsys, "--list")
    assert rc == 0 and out.splitlines() == ["/dev/ttyACM0  Board in FS mode", "/dev/ttyUSB0  CP2102 USB to UART Bridge Controller  USB VID:PID=10C4:EA60"]
    monkeypatch.setattr(list_ports, "comports", lambda *args, **kw: [])
    rc, out, err = main(capsys, "--list")
    assert rc == 0 and "no serial ports found" in err
    rc, out, err = main(capsys, "status")
    assert rc == 2 and "--port is required" in err
    bad = tmp_path / "pin"
    bad.write_text("12 34\n")
    rc, out, err = main(capsys, "--port", "/dev/null", "--pin-file", str(bad), "status")
    assert rc == 2 and "4 to 12 digits" in err
    assert hc.join_words(["config", "set", "wifi_ssid", "My Net"]) == 'config set wifi_ssid "My Net"'


# -- the interactive shell ------------------------------------------------------------------------------------


def test_the_shell_completes_from_the_stalls_help_and_asks_for_the_pin_once(stall, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    ser = hc.open_port(stall.path)
    sp = hc.StallPort(ser, stall.path)
    try:
        sp.hello()
        sh = hc.Shell(sp, pin=PIN)
        assert {"status", "selftest", "factory-reset", "exit"} <= set(sh.words_for([]))
        assert sh.words_for(["config"]) == ["get", "list", "set"]
        assert "mqtt_host" in sh.words_for(["config", "get"])

        class RL:
            def get_line_buffer(self):
                return "config get mq"

            def get_begidx(self):
                return len("config get ")

        sh.readline = RL()
        assert sh.complete("mq", 0) == "mqtt_backoff_max_ms " and sh.complete("mq", 99) is None
        lines = iter(["status", "pause shell test", "resume", "config get heartbeat_s", "", "exit"])
        monkeypatch.setattr(builtins, "input", lambda prompt="": next(lines))
        sh = hc.Shell(sp, pin=PIN)
        assert sh.loop() == 0
        out = capsys.readouterr().out
        assert "connected to st-01" in out and "connector 1:" in out and "paused: energy withheld" in out and "resumed" in out
        assert sh.unlocked and not stall.app.console.unlocked()  # unlocked for the session, locked again on exit
        assert os.path.exists(tmp_path / ".overstay_console_history")
        # Commands from a non-interactive stdin: the worst exit code wins.
        assert hc.script(sp, io.StringIO("status\n# a comment\n\ntime\n"), False, None) == 0
        assert hc.script(sp, io.StringIO("status\nnope\n"), False, None) == 1
        assert hc.script(sp, io.StringIO("nope\nreboot\n"), True, None) == 2
        out = capsys.readouterr().out
        assert '"error":"pin_required"' in out
    finally:
        sp.close()


def test_open_pty_serves_the_apps_own_console_and_keeps_its_path_across_a_reboot(capsys, pin_file):
    clock = FakeClock()
    st = SimStall(stream=True, console_clock=clock)
    try:
        st.sim_seconds(3)
        rc, out, err = main(capsys, "--port", st.path, "status")
        assert rc == 0 and "connector 1: Available" in out
        rc, out, err = main(capsys, "--port", st.path, "--pin-file", pin_file, "reboot")
        assert rc == 0 and "rebooting" in out and st.wait_stopped()
        assert st.app.console.requested == "reboot"
        old_console = st.app.console
        st.reboot()  # what the simulator does: a new App on the same files, the same console pair
        rc, out, err = main(capsys, "--port", st.path, "--json", "status")
        assert rc == 0 and json.loads(out)["data"]["boot"] == 2 and st.app.console is not old_console
        assert st.app.console.clock is clock  # the PIN timers run on the pty's clock
    finally:
        st.close()


def test_console_pty_reattach_keeps_the_path_and_detach_closes(stall):
    other = App(make_cfg(pin_hash=PIN_HASH), MemFs(), hw=SimHardware(), clock=MonoClock(HostTicks()), link=False)

    async def swap():
        return console_pty.reattach(stall.app, other)

    path = asyncio.run_coroutine_threadsafe(swap(), stall.loop).result(5)
    try:
        assert path == stall.path
        ser = hc.open_port(path)
        sp = hc.StallPort(ser, path)
        r = sp.request("status")
        assert r.ok and "has not started its core yet" in r.text  # `other` was never booted: it is its console on the pty now
        sp.close()
    finally:

        async def back():
            return console_pty.reattach(other, stall.app)

        assert asyncio.run_coroutine_threadsafe(back(), stall.loop).result(5) == stall.path
    with pytest.raises(ValueError):
        console_pty.attach(stall.app, stall.loop)


# -- the console never holds up metering -------------------------------------------------------------------------


FLOODER = r"""
import os, sys, time
out = os.open(sys.argv[1], os.O_WRONLY | os.O_NOCTTY)  # blocking: the console's back-pressure paces us
back = os.open(sys.argv[1], os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
junk = (b"status\n-j events 30\nhelp\nsession\npin 000000\n" + b"q" * 3000 + b"\n" + bytes(range(256)) + b"\n") * 4
end = time.monotonic() + float(sys.argv[2])
sent = 0
while time.monotonic() < end:
    sent += os.write(out, junk)
    try:
        while os.read(back, 65536):  # drain what the console answers (echo, replies) now and then
            pass
    except BlockingIOError:
        pass
print(sent)
"""


@pytest.mark.parametrize("stream", [False, True], ids=["attach", "open_pty"])
def test_a_flood_on_the_console_does_not_hold_up_the_sampler(tmp_path, stream):
    st = SimStall(speed=1, sample_ms=20, tick_ms=250, pump_ms=100, stream=stream)
    try:
        st.car("C", 16000)
        time.sleep(0.3)
        samples = []
        poll = st.hw.poll

        def counted(now_ms):
            samples.append(now_ms)
            poll(now_ms)

        st.hw.poll = counted
        # The console's work per call, in CPU time of the loop's thread: what it holds the
        # loop for, whatever else the test machine is doing.
        con = st.app.console
        held = {"feed": [], "step": []}

        def timed(name, fn):
            def call(*a):
                t0 = time.thread_time()
                r = fn(*a)
                held[name].append(time.thread_time() - t0)
                return r

            return call

        con.feed = timed("feed", con.feed)
        con.step = timed("step", con.step)
        script = tmp_path / "flood.py"
        script.write_text(FLOODER)
        replies0 = st.app.console.replies
        gc.disable()  # a collection of the test process's heap is not the console's work
        try:
            r = subprocess.run([sys.executable, str(script), st.path, "2.0"], capture_output=True, text=True, timeout=30)
        finally:
            gc.enable()
        assert r.returncode == 0, r.stderr
        sent = int(r.stdout)
        st.hw.poll = poll
        del con.feed, con.step
        span = samples[-1] - samples[0]
        gaps = sorted(b - a for a, b in zip(samples, samples[1:]))
        # The sampler kept its 20 ms period (its own clock, its own count) while the console
        # answered thousands of commands out of the flood, each step holding the loop for a
        # fraction of a period. (A busy test machine may deschedule the whole process now and
        # then: that is not the console's doing, so no assertion on the longest gap.)
        assert span >= 1500 and len(samples) >= 0.5 * span / 20, (len(samples), span)
        assert gaps[len(gaps) // 2] <= 30, gaps
        # Under half a sample period for 99% of the calls (about 0.5 ms seen). Not the
        # longest call: one in thousands can take a page fault or a slow cache (12.6 ms seen once).
        p99 = {k: sorted(v)[len(v) * 99 // 100] for k, v in held.items() if v}
        assert set(p99) == {"feed", "step"} and p99["feed"] < 0.010 and p99["step"] < 0.010, p99
        assert st.app.late is None and st.app.console.replies - replies0 > 100 and sent > 100000
        assert st.hw.relay and st.app.core.tab is not None  # the session went on metering
        # Afterwards the console answers normally.
        sp = hc.StallPort(hc.open_port(st.path), st.path)
        try:
            sp.hello()
            r = sp.request("status")
            assert r.ok and "session st-01-" in r.text
        finally:
            sp.close()
    finally:
        st.close()


def test_user_errors_are_user_errors():
    with pytest.raises(UserError):
        hc.check_port_path(" /dev/ttyUSB0")
    with pytest.raises(UserError):
        hc.join_words(['a "b c'])
