# The stall's technician console, sans-IO and through its asyncio driver: line editing, frames, JSON, the PIN and its lockout, every command, actions.
import asyncio
import hashlib
import json
import os
import sys
import types

import pytest

from tests.fw_helpers import T0, MemFs, make_cfg

from stall import config as configmod  # noqa: I001
from stall import console_io, console_pin
from stall.app import App
from stall.clock import MonoClock, VirtualTicks
from stall.console import MAX_LINE, MAX_QUEUE, PIN_STEP, RS, STX, UNLOCK_MS, Console
from stall.hw import SimHardware
from stall.ntp import FixedWall

PIN = "246810"
SALT = bytes(range(16))
PIN_HASH = console_pin.hash_pin(PIN, SALT, 1000)
UNIX0_MS = 1763830800000


class Link:
    """Just enough of an MqttLink for `net` and `status`."""

    def __init__(self, connected=True):
        self.connected = connected
        self.stopped = None

    def status(self):
        return {"connected": self.connected, "last_error": "connection refused", "attempts": 3, "connects": 2, "reconnects": 1, "retry_ms": 800, "inflight": 0}

    def stop(self, disconnect=True):
        self.stopped = "disconnect" if disconnect else "dropped"


def make_app(fs=None, ticks=None, link=None, pin_hash=PIN_HASH, boot=True, **over):
    ticks = ticks or VirtualTicks()
    cfg = make_cfg(pin_hash=pin_hash, sample_ms=1000, tick_ms=1000, pump_ms=1000, **over)
    boot_at = ticks.ms
    app = App(
        cfg,
        fs if fs is not None else MemFs(),
        hw=SimHardware(),
        clock=MonoClock(ticks),
        wall=FixedWall(lambda now: UNIX0_MS + boot_at + now),
        link=link if link is not None else False,
    )
    app.console.board = False
    if boot:
        app.boot()
        app.core.wall(UNIX0_MS + boot_at, 0)
    return app, ticks


def drive(app, ticks, seconds, pilot=None, ma=None):
    """What the sampler and accounting tasks do, once a second, without asyncio."""
    hw, core = app.hw, app.core
    if pilot is not None:
        hw.pilot = pilot
    if ma is not None:
        hw.draw_ma = ma
    for _ in range(seconds):
        ticks.advance(1000)
        now = app.clock.now_ms()
        hw.poll(now)
        core.sample(now, hw.pilot, hw.current_ma, hw.energy_wh, hw.fault)
        hw.set_relay(core.relay)
        if "sampler" not in app.health.limit:
            app.health.register("sampler", 2000, now)
        app.health.beat("sampler", now)
        core.tick(now)
        app.console.watch(now)


def with_session(app, ticks):
    drive(app, ticks, 5, "B", 0)
    drive(app, ticks, 600, "C", 16000)
    drive(app, ticks, 900, "C", 0)  # 15 min idle: 10 billed after the 5 min grace


def feed_all(con, text):
    data = text.encode() if isinstance(text, str) else text
    out = []
    while data:
        k = con.feed(data)
        data = data[k:]
        while con.busy:
            con.step()
        out.append(con.take())
    out.append(con.take())
    return "".join(out)


def frames(out):
    """[(body, status)] of every reply frame in console output."""
    got = []
    i = out.find(STX)
    while i >= 0:
        j = out.index(RS, i)
        k = out.index("\n", j)
        got.append((out[i + 1 : j].rstrip("\n"), out[j + 1 : k]))
        i = out.find(STX, k)
    return got


def ask(con, line):
    (f,) = frames(feed_all(con, line + "\r"))
    return f


def ask_json(con, line):
    body, status = ask(con, "-j " + line)
    assert "\n" not in body
    return json.loads(body), status


# -- the PIN hash ----------------------------------------------------------------------------------


def test_pbkdf2_in_steps_matches_hashlib_and_the_flash_tool():
    from host_tools import flash_secrets

    for pin, salt, n in (("0000", b"s", 1), ("246810", SALT, 1000), ("123456789012", b"x" * 40, 77)):
        job = console_pin.Pbkdf2(pin.encode(), salt, n)
        steps = 0
        while not job.step(PIN_STEP):
            steps += 1
        assert job.key() == hashlib.pbkdf2_hmac("sha256", pin.encode(), salt, n, 32)
        assert steps == max(0, (n - 1 + PIN_STEP - 1) // PIN_STEP - 1)
    stored = flash_secrets.pin_hash("482913")
    parsed = console_pin.parse_hash(stored)
    check = console_pin.PinCheck("482913", parsed)
    while not check.step(PIN_STEP):
        pass
    assert check.ok is True
    assert flash_secrets.check_pin(PIN, PIN_HASH)
    for bad in (None, "", "pbkdf2-sha256$1000$zz$00", "sha1$1$00$" + "00" * 32, "pbkdf2-sha256$0$00$" + "00" * 32, "pbkdf2-sha256$10$00$00"):
        assert console_pin.parse_hash(bad) is None


# -- line editing and frames ------------------------------------------------------------------------


def test_echo_editing_and_frames():
    app, ticks = make_app()
    con = app.console
    con.start()
    assert con.take().endswith("st-01> ")
    out = feed_all(con, "statx\x7fus\r\n")  # DEL erases, CR LF is one line end
    assert out.startswith("statx\b \bus\n" + STX + "station st-01")
    assert out.endswith(RS + "ok\nst-01> ")
    out = feed_all(con, "sta\x03")  # Ctrl-C drops the line
    assert out == "sta^C\nst-01> " and not con.busy
    out = feed_all(con, "\x1b[Ahelp\x1bOB\r")  # arrow keys are skipped
    assert frames(out)[0][1] == "ok"
    out = feed_all(con, "x" * (MAX_LINE + 50) + "\r")
    (body, status) = frames(out)[0]
    assert status == "error usage" and "line too long" in body and out.split("\n")[0] == "x" * MAX_LINE
    out = feed_all(con, b"\xff\xfe\r")
    assert frames(out)[0][1] == "error usage"
    out = feed_all(con, "\r")
    assert out == "\nst-01> "  # an empty line: just the prompt
    out = feed_all(con, "pin " + PIN + "\r")
    assert PIN not in out and "pin ******" in out and out.endswith("st-01# ")
    out = feed_all(con, "status --pin 1234\r")
    assert "1234" not in out.split(STX)[0]


def test_bodies_never_carry_the_frame_bytes():
    app, ticks = make_app()
    con = app.console
    con.register("evil", lambda args: "a\x02b\x1ec", "returns control bytes")
    body, status = ask(con, "evil")
    assert body == "a?b?c" and status == "ok"


def test_a_handler_that_raises_is_an_internal_error_and_unknown_commands_say_so():
    app, ticks = make_app()
    con = app.console

    def boom(args):
        raise RuntimeError("bad")

    con.register("boom", boom)
    assert ask(con, "boom") == ("console: boom: RuntimeError: bad", "error internal")
    assert ask(con, "nope") == ("console: unknown command nope (try help)", "error unknown")
    assert ask(con, 'config get "open') == ("console: unbalanced quote", "error usage")


def test_queue_back_pressure_and_bounded_steps():
    app, ticks = make_app()
    con = app.console
    data = b"status\r" * 10
    taken = con.feed(data)
    assert taken == len(b"status\r") * MAX_QUEUE  # stops taking once MAX_QUEUE lines wait
    replies = 0
    while con.busy:
        con.step()
        replies += con.take().count(STX)
        assert replies <= MAX_QUEUE
    assert replies == MAX_QUEUE
    # A PIN check is spread over many steps, each at most PIN_STEP rounds.
    con.feed(("pin " + PIN + "\r").encode())
    steps = 0
    while con.busy:
        con.step()
        steps += 1
    assert steps == 1 + (1000 - 1 + PIN_STEP - 1) // PIN_STEP
    assert con.unlocked()


# -- every command, human and JSON --------------------------------------------------------------------


LINES = (
    "help",
    "help status",
    "status",
    "session",
    "events 5",
    "outbox",
    "net",
    "time",
    "config list",
    "config get mqtt_host",
    "tariff",
    "selftest",
    "log 5",
    "pin",
    "lock",
    "json off",
)


def test_every_read_only_command_human_and_json():
    app, ticks = make_app(link=Link())
    with_session(app, ticks)
    con = app.console
    for line in LINES:
        body, status = ask(con, line)
        assert status == "ok", (line, body)
        assert body and "Traceback" not in body
        d, status = ask_json(con, line)
        assert status == "ok" and d["ok"] is True and d["cmd"] == line.split()[0], line
    assert "SuspendedEV" in ask(con, "status")[0]
    d, _ = ask_json(con, "status")
    c = d["data"]["connectors"][0]
    assert c["status"] == "SuspendedEV" and c["pilot"] == "C" and c["relay"] is True
    s = c["session"]
    assert 880 <= s["idle_s"] <= 900 and s["billed_min"] == (s["idle_s"] - 300) // 60 and s["fee"] == 50 * s["billed_min"] > 0
    assert s["currency"] == "USD"
    d, _ = ask_json(con, "session")
    assert d["data"]["fee"] == s["fee"] and d["data"]["timeline"][-1]["status"] == "SuspendedEV"
    d, _ = ask_json(con, "events 32")
    types_ = [e["event"]["type"] for e in d["data"]["events"]]
    assert types_[:2] == ["boot", "status"] and "charge_complete" in types_ and "idle_fee_started" in types_
    assert types_.count("idle_tick") == 1  # a run of ticks is one line: the newest
    d, _ = ask_json(con, "outbox")
    assert d["data"]["depth"] == len(app.core.outbox) > 0 and d["data"]["oldest"]["kind"] == "event"
    d, _ = ask_json(con, "net")
    assert d["data"]["mqtt"]["reconnects"] == 1 and d["data"]["wifi"]["state"] == "simulated"
    assert "last error: connection refused" in ask(con, "net")[0]
    d, _ = ask_json(con, "time")
    assert d["data"]["synced"] is True and d["data"]["utc"].startswith("2025-11-22 17:")
    d, _ = ask_json(con, "config list")
    assert d["data"]["config"]["station_key"] == "***" and d["data"]["config"]["pin_hash"] == "***"
    assert PIN_HASH not in ask(con, "config list")[0] and "***" in ask(con, "config get site_key")[0]
    d, _ = ask_json(con, "tariff")
    assert d["data"]["tariff"] == T0
    d, _ = ask_json(con, "selftest")
    assert [c["name"] for c in d["data"]["checks"]] == ["pilot", "contactor", "meter", "fault input", "sampler"]
    d, _ = ask_json(con, "log 32")
    texts = [r["text"] for r in d["data"]["lines"]]
    assert "status Charging -> SuspendedEV" in texts
    d, _ = ask_json(con, "help")
    pins = {c["name"]: c["pin"] for c in d["data"]["commands"]}
    assert pins["reboot"] is True and pins["status"] is False and pins["config"] == ["set"]
    assert set(pins) >= {"help", "status", "session", "events", "outbox", "net", "time", "config", "tariff", "selftest", "log", "reboot", "service", "factory-reset", "pin", "lock", "pause", "resume", "json"}


def test_json_mode_answers_every_command_with_one_line():
    app, ticks = make_app()
    con = app.console
    assert ask(con, "json on")[1] == "ok"
    for line in LINES[:-1] + ("reboot", "nope", "events x"):
        body, status = ask(con, line)
        assert "\n" not in body
        d = json.loads(body)
        assert d["ok"] is (status == "ok")
        if not d["ok"]:
            assert status == "error " + d["error"] and d["message"]
    ask(con, "json off")
    assert not ask(con, "time")[0].startswith("{")


def test_selftest_fails_on_a_stale_meter_and_an_unknown_pilot():
    app, ticks = make_app()
    drive(app, ticks, 3, "B")
    app.hw.meter_error = True
    drive(app, ticks, 10)
    app.hw.pilot = "E"
    body, status = ask(app.console, "selftest")
    assert status == "error selftest" and "meter        FAIL" in body and "pilot        FAIL" in body
    assert body.splitlines()[-1] == "console: selftest: failed: pilot, meter, fault input"


def test_an_unprovisioned_stall_answers_what_it_can():
    app = App(configmod.defaults(), MemFs(), hw=SimHardware(), clock=MonoClock(VirtualTicks()), link=False)
    con = app.console
    assert "not provisioned" in ask(con, "status")[0]
    assert ask(con, "session")[1] == "error not_provisioned"
    assert ask(con, "reboot --pin 1234")[1] == "error no_pin"
    assert ask(con, "help")[1] == "ok" and ask(con, "time")[1] == "ok" and ask(con, "net")[1] == "ok"


def test_registered_commands_keep_working():
    app, ticks = make_app()
    app.console.register("hello", lambda args: "hi " + " ".join(args), "greets")
    assert app.console.handle("hello stall 1") == "hi stall 1"
    assert "hello" in app.console.handle("help") and "greets" in app.console.handle("help")


# -- the PIN ----------------------------------------------------------------------------------------


def test_changing_commands_need_the_pin_and_unlock_expires():
    app, ticks = make_app()
    con = app.console
    for line in ("reboot", "service", "factory-reset", "pause", "resume", "config set heartbeat_s 30"):
        assert ask(con, line)[1] == "error pin_required", line
    assert ask(con, "config get heartbeat_s")[1] == "ok"
    assert ask(con, "pause --pin " + PIN) == ("paused: energy withheld (relay open) until resume", "ok")
    assert app.core.paused and not con.unlocked()  # --pin is for that one command
    assert ask(con, "resume")[1] == "error pin_required"
    assert ask(con, "pin " + PIN)[1] == "ok" and con.prompt() == "st-01# "
    assert ask(con, "resume") == ("resumed", "ok")
    ticks.advance(UNLOCK_MS + 1)
    assert ask(con, "pause")[1] == "error pin_required" and con.prompt() == "st-01> "
    ask(con, "pin " + PIN)
    ask(con, "lock")
    assert ask(con, "pause")[1] == "error pin_required"
    assert ask(con, "pin 12ab")[1] == "error usage" and con.lock.fails == 0  # not a PIN: not counted


def test_five_wrong_pins_lock_out_with_a_growing_lockout_that_survives_a_reboot():
    fs = MemFs()
    app, ticks = make_app(fs=fs)
    con = app.console
    for i in range(4):
        body, status = ask(con, "reboot --pin 000000")
        assert status == "error pin_wrong" and "%d more" % (4 - i) in body
    body, status = ask(con, "reboot --pin 000000")
    assert status == "error locked" and "try again in 1m00s" in body
    # Locked: even the right PIN is refused, without being checked.
    body, status = ask(con, "pin " + PIN)
    assert status == "error locked" and not con.unlocked()
    d, status = ask_json(con, "reboot --pin " + PIN)
    assert d["error"] == "locked" and d["data"]["retry_s"] == 60
    ticks.advance(60001)
    body, status = ask(con, "pin 111111")  # the 6th wrong one: twice as long
    assert status == "error locked" and "2m00s" in body
    ticks.advance(30000)
    con.watch(app.clock.now_ms())  # the accounting task re-saves the time left
    # Power cut: a new App on the same files is still locked out, for what was left.
    app2, _ = make_app(fs=fs.reboot(), ticks=ticks)
    d, status = ask_json(app2.console, "pin " + PIN)
    assert d["error"] == "locked" and d["data"]["retry_s"] == 90 and d["data"]["fails"] == 6
    ticks.advance(90001)
    assert ask(app2.console, "pin " + PIN)[1] == "ok"
    assert app2.console.lock.fails == 0
    app3, _ = make_app(fs=app2.fs.reboot(), ticks=ticks)
    assert ask(app3.console, "pin")[0].startswith("locked: `pin NNNNNN`")  # the count was reset for good


def test_lockout_caps_and_an_unreadable_lock_file_locks():
    lk = console_pin.Lockout(MemFs(), "console.json")
    locks = [lk.failed(0) for _ in range(20)]
    assert locks[:4] == [0, 0, 0, 0] and locks[4:7] == [60000, 120000, 240000]
    assert max(locks) == console_pin.LOCK_MAX_MS
    fs = MemFs()
    fs.files["console.json"] = bytearray(b"{not json")
    lk = console_pin.Lockout(fs, "console.json")
    assert lk.left_ms(0) == console_pin.LOCK_BASE_MS


def test_a_stall_without_a_pin_refuses_changes():
    app, ticks = make_app(pin_hash=None)
    assert ask(app.console, "reboot --pin 1234")[1] == "error no_pin"
    app, ticks = make_app(pin_hash="md5$xx")
    assert "unreadable" in ask(app.console, "pin 1234")[0]


# -- config ----------------------------------------------------------------------------------------


def test_config_set_is_validated_saved_and_applied_when_it_can_be():
    fs = MemFs()
    app, ticks = make_app(fs=fs)
    con = app.console
    ask(con, "pin " + PIN)
    body, status = ask(con, "config set sample_ms 5")
    assert status == "error config" and "sample_ms: must be at least 10" in body
    assert ask(con, "config set station st-99")[1] == "error config"
    assert ask(con, "config set tariff {}")[1] == "error config"
    assert ask(con, "config set nope 1")[1] == "error config"
    assert ask(con, "config set mqtt_tls maybe")[1] == "error config"
    assert ask(con, "config set heartbeat_s 30") == ("heartbeat_s = 30  saved; in effect now", "ok")
    assert app.core.cfg["heartbeat_s"] == 30
    body, status = ask(con, 'config set wifi_ssid "Depot IoT"')
    assert status == "ok" and "after reboot" in body and app.core.cfg["wifi_ssid"] is None
    body, status = ask(con, "config set wifi_password hunter2hunter2")
    assert "hunter2" not in body and "***" in body
    assert "hunter2" not in ask(con, "config list")[0] and "hunter2" not in ask(con, "-j config get wifi_password")[0]
    saved = configmod.load(fs, "config.json")
    assert saved["heartbeat_s"] == 30 and saved["wifi_ssid"] == "Depot IoT" and saved["wifi_password"] == "hunter2hunter2"
    assert saved["station_key"] == app.cfg["station_key"]
    assert "Depot IoT" in ask(con, "config get wifi_ssid")[0]
    ask(con, "config set wifi_ssid null")
    assert configmod.load(fs, "config.json")["wifi_ssid"] is None


# -- actions -----------------------------------------------------------------------------------------


def test_service_on_the_desktop_is_a_flag_until_ctrl_d():
    app, ticks = make_app()
    con = app.console
    drive(app, ticks, 5, "B")
    body, status = ask(con, "service --pin " + PIN)
    assert status == "error refused" and "unplug" in body and con.action is None
    drive(app, ticks, 5, "A")
    body, status = ask(con, "service --pin " + PIN)
    assert status == "ok" and con.action == "service"
    console_io.perform(con)
    assert con.service and con.requested == "service"
    assert feed_all(con, "status\r") == ""  # nobody home: the REPL would have the port
    out = feed_all(con, b"\x04status\r")
    assert "overstay console on st-01" in out and frames(out)[0][1] == "ok"


def test_reboot_and_factory_reset_stop_the_app_and_reset_erases_the_files():
    async def main():
        fs = MemFs()
        ticks = VirtualTicks()
        app, _ = make_app(fs=fs, ticks=ticks, boot=False)
        reader = asyncio.StreamReader()
        out = []
        app.console_io = (reader, out.append)
        task = asyncio.create_task(app.run())
        await ticks.run_for(3000)
        reader.feed_data(b"factory-reset --pin " + PIN.encode() + b"\r")
        await ticks.run_for(2000)
        text = "".join(out)
        assert "factory-reset confirm" in text and not task.done()
        reader.feed_data(b"factory-reset confirm --pin " + PIN.encode() + b"\r")
        await ticks.run_for(2000)
        text = "".join(out)
        assert "billing message(s) are not acked" in text and not task.done()  # the boot event is not acked yet
        assert any(k.endswith("journal.log") for k in fs.files)
        reader.feed_data(b"factory-reset confirm force --pin " + PIN.encode() + b"\r")
        await ticks.run_for(2000)
        await task
        assert app.console.requested == "factory-reset"
        await ticks.run_for(5000)
        assert not fs.files, fs.files.keys()  # and nothing wrote after the erase
        # Reboot: the same, without the erasing.
        app2, _ = make_app(fs=MemFs(), ticks=ticks, boot=False)
        reader2 = asyncio.StreamReader()
        app2.console_io = (reader2, lambda s: None)
        task2 = asyncio.create_task(app2.run())
        await ticks.run_for(2000)
        reader2.feed_data(b"reboot --pin " + PIN.encode() + b"\r")
        await ticks.run_for(2000)
        await task2
        assert app2.console.requested == "reboot"

    asyncio.run(main())


def test_service_on_a_board_opens_the_contactor_drops_the_link_feeds_the_watchdog_and_leaves_for_the_repl(monkeypatch):
    calls = []

    class Timer:
        PERIODIC = 1

        def __init__(self, tid):
            calls.append(("timer", tid))

        def init(self, period, mode, callback):
            calls.append(("init", period))
            self.callback = callback
            callback(self)

    monkeypatch.setitem(sys.modules, "machine", types.SimpleNamespace(Timer=Timer))
    monkeypatch.setitem(sys.modules, "micropython", types.SimpleNamespace(kbd_intr=lambda ch: calls.append(("kbd_intr", ch)), const=lambda x: x))
    link = Link()
    app, ticks = make_app(link=link)
    app.hw.set_relay(True)
    con = app.console
    con.board = True
    body, status = ask(con, "service --pin " + PIN)
    assert "MicroPython REPL" in body
    feeds = app.wdt.feeds
    with pytest.raises(KeyboardInterrupt):
        console_io.perform(con)
    assert app.hw.relay is False and link.stopped == "dropped"
    assert ("init", console_io.WDT_FEED_MS) in calls and ("kbd_intr", 3) in calls and app.wdt.feeds == feeds + 1


# -- the driver ------------------------------------------------------------------------------------


def test_the_board_driver_polls_stdin_without_blocking_and_switches_ctrl_c_off(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "micropython", types.SimpleNamespace(kbd_intr=lambda ch: calls.append(ch), const=lambda x: x))

    async def main():
        r, w = os.pipe()
        stdin = open(r, "rb", buffering=0)
        try:
            ticks = VirtualTicks()
            app, _ = make_app(ticks=ticks, boot=False)
            out = []
            reader = types.SimpleNamespace(s=stdin)  # what MicroPython's StreamReader(sys.stdin) holds
            app.console_io = (reader, out.append)
            app.console.board = True
            task = asyncio.create_task(app.run())
            await ticks.run_for(1000)
            polls = app.hw.polls
            os.write(w, b"sta")  # half a line: nothing may wait for the rest
            await ticks.run_for(5000)
            assert app.hw.polls - polls == 5 and "sta" in "".join(out)
            os.write(w, b"tus\r-j time\r")
            await ticks.run_for(1000)
            app.stop()
            await task
            return "".join(out)
        finally:
            stdin.close()
            os.close(w)

    out = asyncio.run(main())
    assert calls == [-1]
    assert [s for _b, s in frames(out)] == ["ok", "ok"] and '"cmd":"time"' in out


def test_the_stream_driver_keeps_the_sampler_on_time_under_a_flood():
    # Virtual time: every sampler period must still produce exactly one sample
    # while the console chews through a flood fed as fast as it takes it.
    async def main():
        ticks = VirtualTicks()
        app, _ = make_app(ticks=ticks, boot=False)
        reader = asyncio.StreamReader()
        out = []
        app.console_io = (reader, out.append)
        task = asyncio.create_task(app.run())
        app.hw.pilot, app.hw.draw_ma = "C", 16000
        await ticks.run_for(5000)
        polls = app.hw.polls
        junk = (b"status\r-j events 30\rpin 000000\r" + b"z" * 500 + b"\r\x1b[A\x03help\r") * 200
        reader.feed_data(junk)
        await ticks.run_for(60000)
        got = app.hw.polls - polls
        app.stop()
        await task
        return app, got, "".join(out)

    app, got, out = asyncio.run(main())
    assert got == 60  # one sample per second of the minute, flood or not
    # Virtual time gives the console a few turns per instant: it keeps answering, bounded per turn.
    assert app.late is None and out.count(STX) >= 40 and app.console.lock.fails >= 1


def test_a_request_id_comes_back_in_the_status_line():
    app, ticks = make_app()
    con = app.console
    body, status = ask(con, "@h7 -j time")
    assert status == "ok @h7" and json.loads(body)["cmd"] == "time"
    out = feed_all(con, "@h8 reboot --pin " + PIN + "\r")  # across a PIN check too
    assert frames(out)[0][1] == "ok @h8"
    assert ask(con, "time")[1] == "ok"  # no id, none back
