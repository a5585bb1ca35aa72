# `overstay flash`: compile the stall firmware for the board's MicroPython, copy it with mpremote, provision the station and enrol its key.
#
# Order of work, chosen so a failure leaves nothing half-enrolled:
#   1. check the flags, open the key registry and refuse an enrolled station
#      (unless --replace); 2. probe the board (version, .mpy ABI); 3. compile
#   protocol/ and firmware/ with mpy-cross; 4. copy the code (main.py is
#   removed first and written last, so a cut-off copy boots to the REPL, not a
#   half-updated app); 5. make the site key if the site is new, write
#   config.json and main.py, read the files back and compare sizes; 6. only
#   then register (or rotate) the station key; 7. reset the board; 8. print
#   the PIN, the MQTT password, the Mosquitto line and the ACL block, once.
# --dry-run does 1-3 read-only (no registry write, no migration, no board
# write) and prints the plan: files and sizes, the mpremote command lines, the
# config with secrets masked.
#
# Board layout: boot.py, main.py and config.json at the root (main.py opens
# "config.json" relative to the root); the packages as .mpy under lib/
# (lib/protocol, lib/stall), which is on sys.path on every port. Copies of
# the packages at the root (the manifest's plain `cp -r` layout) would shadow
# lib/ and are removed. With --romfs the packages go to the board's ROMFS
# partition instead (mpremote romfs deploy), executed in place from flash.
import json
import os
import sys
import time
import tempfile
import urllib.parse

from host_tools import build
from host_tools import flash_board as fb
from host_tools import flash_secrets as fs
from host_tools.errors import UserError

REPO = build.REPO
FIRMWARE = os.path.join(REPO, "firmware")
BUILD_DIR = os.path.join("build", "flash")
ROMFS_DIR = os.path.join("build", "flash-romfs")
CONFIG_FILE = "config.json"
ROOT_FILES = ("boot.py", "main.py")  # run as source from the root by MicroPython itself
NOT_ON_BOARD = ("firmware/manifest.py",)  # build-time only
PORT_FOLDERS = ("esp32", "rp2")  # firmware/<port>/x.py: that port only, copied to lib/x
COPY_IDLE_S = 30.0
COPY_OVERALL_S = 900.0
MASK = "***"


def register(sub):
    p = sub.add_parser(
        "flash",
        help="compile, copy and provision a stall controller; enrol its key",
        description=(
            "Compile protocol/ and firmware/ to .mpy for the board's MicroPython, copy them with mpremote, "
            "write the station's config.json (new station key, the site key, a new technician PIN, MQTT "
            "credentials), register the key in the bridge's registry and print the Mosquitto password and ACL "
            "lines. Secrets are shown once. --dry-run prints the plan and changes nothing. See docs/flashing.md."
        ),
    )
    p.add_argument("--port", required=True, help="the board's serial port (/dev/ttyUSB0, /dev/ttyACM0, COM3, a virtual board's /dev/pts/N)")
    p.add_argument("--station", required=True, metavar="ID", help="station id (also its MQTT username)")
    p.add_argument("--site", required=True, metavar="S", help="site id")
    p.add_argument("--broker", required=True, metavar="URL", help="mqtt://HOST[:1883] or mqtts://HOST[:8883]")
    p.add_argument("--wifi-ssid", metavar="SSID", help="Wi-Fi network name")
    p.add_argument("--wifi-password-file", metavar="F", help="file holding the Wi-Fi password ('-' for standard input)")
    p.add_argument("--db", metavar="URL", help="the bridge's key registry: sqlite:///PATH or postgresql://... (required unless --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; write nothing anywhere")
    p.add_argument("--replace", action="store_true", help="re-flash an enrolled station: rotate its key (old keys stay valid for --grace)")
    p.add_argument("--grace", metavar="DURATION", default="24h", help="with --replace: how long the old key stays valid (default 24h)")
    p.add_argument("--mpremote", metavar="PATH", help="mpremote command to use (default: the project's)")
    p.add_argument("--mpy-cross", dest="mpy_cross", metavar="PATH", help="mpy-cross binary matching the board (default: the project's)")
    p.add_argument("--timeout", type=_seconds, default=10.0, metavar="S", help="seconds to wait for the board to answer (default 10)")
    p.add_argument("--no-reset", action="store_true", help="leave the board at the REPL instead of resetting it into the stall app")
    p.add_argument("--romfs", action="store_true", help="put the packages in the board's ROMFS partition (MicroPython >= 1.25 built with ROMFS)")
    p.set_defaults(func=run_flash)


def _seconds(text):
    try:
        v = float(text)
    except ValueError:
        raise UserError("--timeout: expected seconds, got " + repr(text)) from None
    if not 0.5 <= v <= 600:
        raise UserError("--timeout: must be between 0.5 and 600 seconds")
    return v


# Flags -----------------------------------------------------------------------


def parse_broker(url):
    """mqtt://HOST[:PORT] or mqtts://HOST[:PORT] -> (host, port, tls)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UserError("--broker: not a URL: %r (%s)" % (url, e)) from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise UserError("--broker: use mqtt://HOST[:PORT] or mqtts://HOST[:PORT], not " + repr(url))
    if not parts.hostname:
        raise UserError("--broker: no host in " + repr(url))
    if parts.username is not None or parts.password is not None:
        raise UserError("--broker: leave credentials out of the URL: the station gets its own MQTT password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UserError("--broker: only a host and port, e.g. mqtt://broker.example:1883")
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def _check_id(value, what):
    from protocol import wire

    if not wire.valid_id(value):
        raise UserError("--%s: must be 1..32 characters of A-Z a-z 0-9 _ -, not %r" % (what, value))


def _read_wifi_password(path):
    if path == "-":
        data = sys.stdin.read()
    else:
        try:
            with open(path, encoding="utf-8") as f:
                data = f.read()
        except FileNotFoundError:
            raise UserError("--wifi-password-file: no such file: " + path) from None
        except IsADirectoryError:
            raise UserError("--wifi-password-file: is a directory: " + path) from None
        except PermissionError:
            raise UserError("--wifi-password-file: permission denied: " + path) from None
        except UnicodeDecodeError:
            raise UserError("--wifi-password-file: not UTF-8 text: " + path) from None
        except OSError as e:
            raise UserError("--wifi-password-file: cannot read %s: %s" % (path, e.strerror or e)) from None
    pw = data[:-1] if data.endswith("\n") else data
    pw = pw[:-1] if pw.endswith("\r") else pw
    if "\n" in pw:
        raise UserError("--wifi-password-file: the file must hold the password on one line")
    if not 8 <= len(pw.encode("utf-8")) <= 63:
        raise UserError("--wifi-password-file: a WPA2 password is 8 to 63 characters (this one has %d)" % len(pw))
    return pw


def check_flags(args):
    """Validated options as a dict (raises UserError on the first bad flag)."""
    from host_tools.bridge.cliutil import duration

    _check_id(args.station, "station")
    _check_id(args.site, "site")
    host, port, tls = parse_broker(args.broker)
    if args.wifi_password_file and not args.wifi_ssid:
        raise UserError("--wifi-password-file needs --wifi-ssid")
    if args.wifi_ssid is not None and not 1 <= len(args.wifi_ssid.encode("utf-8")) <= 32:
        raise UserError("--wifi-ssid: an SSID is 1 to 32 bytes")
    if not args.dry_run and not args.db:
        raise UserError("--db URL is required to enrol the station in the bridge's key registry (or use --dry-run)")
    grace = duration(args.grace)
    if args.grace != "24h" and not args.replace:
        raise UserError("--grace only applies with --replace")
    wifi_password = _read_wifi_password(args.wifi_password_file) if args.wifi_password_file else None
    return {"mqtt_host": host, "mqtt_port": port, "mqtt_tls": tls, "wifi_password": wifi_password, "grace": grace}


# Registry --------------------------------------------------------------------


def _enrolled_site(db, station):
    with db.tx():
        row = db.one("SELECT site FROM stations WHERE station = ?", (station,))
    return None if row is None else row[0]


def registry_peek(url, station):
    """Read-only look for --dry-run: (description, enrolled site or None). Never creates or migrates."""
    from host_tools.bridge import db as dbmod

    if url is None:
        return "no --db given: a real run needs one", None
    if url.startswith("sqlite:") and not os.path.exists(dbmod.sqlite_path(url)):
        return "%s does not exist yet (a real run creates it)" % dbmod.redact(url), None
    db = dbmod.connect(url)
    try:
        try:
            if dbmod.schema_version(db) == 0:
                return "%s is empty (a real run creates the schema)" % dbmod.redact(url), None
            site = _enrolled_site(db, station)
        except dbmod.DatabaseError as e:
            raise UserError("--db: " + str(e)) from None
        except db.errors as e:
            raise UserError("--db: database error: " + " ".join(str(e).split())) from None
    finally:
        db.close()
    return dbmod.redact(url), site


def open_registry(url):
    from host_tools.bridge import db as dbmod

    try:
        return dbmod.open_db(url)
    except dbmod.DatabaseError as e:
        raise UserError("--db: " + str(e)) from None


def check_enrolment(station, site, enrolled, replace):
    """Refuse an enrolled station without --replace, or one enrolled on another site."""
    if enrolled is None:
        return
    if not replace:
        raise UserError(
            "station %s is already enrolled (site %s): use --replace to re-flash it with a new key, "
            "or choose another station id" % (station, enrolled)
        )
    if enrolled != site:
        raise UserError("station %s is enrolled on site %s, not %s: a station cannot change site by re-flashing" % (station, enrolled, site))


# Build and layout --------------------------------------------------------------


def device_layout(sizes, platform, build_dir, base=REPO):
    """[(local file, device path, size)] for the compiled tree `sizes` ({rel .mpy: size}).

    boot.py and main.py go to the root as source; every other module as .mpy
    under lib/ (protocol/x -> lib/protocol/x, firmware/pkg/x -> lib/pkg/x,
    firmware/<port>/x -> lib/x on that port only)."""
    out = []
    for rel in sorted(sizes):
        src = rel[:-4] + ".py"
        if src in NOT_ON_BOARD:
            continue
        parts = rel.split("/")
        if parts[0] == "firmware" and len(parts) == 2 and parts[1][:-4] + ".py" in ROOT_FILES:
            local = os.path.join(base, *src.split("/"))
            out.append((local, parts[1][:-4] + ".py", os.path.getsize(local)))
            continue
        if parts[0] == "firmware":
            rest = parts[1:]
            if rest[0] in PORT_FOLDERS:
                if rest[0] != platform:
                    continue
                rest = rest[1:]
        else:
            rest = parts
        out.append((os.path.join(build_dir, *parts), "lib/" + "/".join(rest), sizes[rel]))
    return out


def _packages(layout):
    """Top-level package folders under lib/ (e.g. ["protocol", "stall"])."""
    return sorted({dev.split("/")[1] for _l, dev, _s in layout if dev.startswith("lib/") and dev.count("/") >= 2})


def _dirs(layout):
    found = set()
    for _l, dev, _s in layout:
        parts = dev.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            found.add("/".join(parts[:i]))
    return sorted(found, key=lambda d: (d.count("/"), d))


def compile_firmware(cross, out_dir):
    try:
        return build.compile_tree(out_dir, mpy_cross=cross)
    except build.BuildError as e:
        rel, msg = e.failures[0]
        more = " (and %d more)" % (len(e.failures) - 1) if len(e.failures) > 1 else ""
        raise UserError("mpy-cross cannot compile %s: %s%s" % (rel, msg, more)) from None


# Config ------------------------------------------------------------------------


def firmware_config():
    """firmware/stall/config.py (its validate/public/dumps), or None when it is not there."""
    if FIRMWARE not in sys.path:
        sys.path.insert(0, FIRMWARE)
    try:
        from stall import config  # type: ignore[import-not-found]
    except ImportError:
        return None
    return config


SECRET_KEYS = ("station_key", "site_key", "pin_hash", "wifi_password", "mqtt_password")


def station_config(args, opts, station_key, site_key, pin_hash, mqtt_password):
    """The config.json object: only what provisioning decides; the firmware fills its defaults."""
    mod = firmware_config()
    return {
        "schema": mod.SCHEMA if mod is not None else 1,
        "station": args.station,
        "site": args.site,
        "station_key": station_key.hex(),
        "site_key": site_key.hex(),
        "pin_hash": pin_hash,
        "wifi_ssid": args.wifi_ssid,
        "wifi_password": opts["wifi_password"],
        "mqtt_host": opts["mqtt_host"],
        "mqtt_port": opts["mqtt_port"],
        "mqtt_tls": opts["mqtt_tls"],
        "mqtt_user": args.station,
        "mqtt_password": mqtt_password,
        "hardware": "board",
        # Above every number this station id sent before (see config.py).
        "seq_floor": time.time_ns() // 1_000_000,
    }


def config_bytes(cfg):
    """Validate with the firmware's own validator and encode as the firmware does (canonical JSON)."""
    mod = firmware_config()
    if mod is not None:
        try:
            mod.validate(cfg)
        except ValueError as e:
            raise UserError("the station config would not load on the board: " + str(e)) from None
        return bytes(mod.dumps(cfg))
    from protocol import canonjson

    return bytes(canonjson.dumps(cfg))


def masked(cfg):
    return {k: (MASK if k in SECRET_KEYS and v else v) for k, v in cfg.items()}


# Commands ------------------------------------------------------------------------


def copy_argv(mpremote, port, layout, romfs_dir=None):
    """The first mpremote run: clean (main.py and old package copies), make folders, copy everything but main.py."""
    pkgs = _packages(layout)
    remove = ["main.py"] + ["lib/" + p for p in pkgs] + pkgs
    code_files = [(local, dev) for local, dev, _s in layout if dev != "main.py"]
    if romfs_dir is not None:
        code_files = [(local, dev) for local, dev in code_files if not dev.startswith("lib/")]
        mkdirs = []
    else:
        mkdirs = _dirs(layout)
    argv = [mpremote, "connect", port, "exec", fb.clean_code(remove, mkdirs)]
    if romfs_dir is not None:
        argv += ["+", "romfs", "deploy", romfs_dir]
    if code_files:
        argv += ["+"] + fb.cp_commands(code_files)
    return argv


def config_argv(mpremote, port, config_path, layout, romfs=False):
    """The second run: config.json, then main.py, then list what is on the board."""
    main = [(local, dev) for local, dev, _s in layout if dev == "main.py"]
    pairs = [(config_path, CONFIG_FILE)] + main
    roots = ([] if romfs else ["lib/" + p for p in _packages(layout)]) + [dev for _l, dev, _s in layout if "/" not in dev] + [CONFIG_FILE]
    return [mpremote, "connect", port] + fb.cp_commands(pairs) + ["+", "exec", fb.verify_code(sorted(set(roots)))]


def reset_argv(mpremote, port):
    return [mpremote, "connect", port, "reset"]


def _stage_romfs(layout, romfs_dir):
    import shutil

    top = os.path.join(REPO, romfs_dir)
    shutil.rmtree(top, ignore_errors=True)
    for local, dev, _s in layout:
        if dev.startswith("lib/"):
            dest = os.path.join(top, *dev.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copyfile(local, dest)
    return top


# The command ---------------------------------------------------------------------


def run_flash(args):
    opts = check_flags(args)
    mpremote = fb.find_mpremote(args.mpremote)
    fb.check_port(args.port)
    cross = args.mpy_cross or build.find_mpy_cross()
    if args.mpy_cross and not (os.path.isfile(cross) and os.access(cross, os.X_OK)):
        raise UserError("--mpy-cross: not an executable file: " + cross)
    cross_text = build.mpy_cross_version(cross)
    if not os.path.isdir(FIRMWARE):
        raise UserError("no firmware/ folder next to host_tools/: run overstay flash from a source checkout")

    # 1. Registry: refuse an enrolled station before touching the board.
    db = None
    if args.dry_run:
        registry, enrolled = registry_peek(args.db, args.station)
    else:
        db = open_registry(args.db)
        registry = args.db
        try:
            enrolled = _enrolled_site(db, args.station)
        except db.errors as e:
            db.close()
            raise UserError("--db: database error: " + " ".join(str(e).split())) from None
    try:
        check_enrolment(args.station, args.site, enrolled, args.replace)
        return _flash(args, opts, mpremote, cross, cross_text, db, registry, enrolled)
    finally:
        if db is not None:
            db.close()


def _flash(args, opts, mpremote, cross, cross_text, db, registry, enrolled):
    out = sys.stdout
    # 2. Board.
    board_note = ""
    try:
        info = fb.probe(mpremote, args.port, args.timeout)
    except UserError as e:
        if not args.dry_run:
            raise
        info, board_note = None, "not probed: " + str(e)
    if info is not None:
        compat = fb.check_compatible(info, cross_text, args.port)
        if args.romfs and info.version < (1, 25, 0):
            raise UserError("--romfs needs MicroPython 1.25 or newer; the board runs %s" % info.version_text)
        if args.romfs and not info.romfs:
            raise UserError(
                "--romfs: the board's MicroPython has no ROMFS partition (standard ESP32 and Pico W builds do not "
                "enable it; build one with MICROPY_VFS_ROM): flash without --romfs"
            )
        board_note = info.describe() + ("; " + compat if compat else "")
        if info.config_ids:
            board_note += "; its config.json names station %s on site %s" % info.config_ids

    # 3. Build.
    build_dir = os.path.join(REPO, BUILD_DIR)
    sizes = compile_firmware(cross, build_dir)
    layout = device_layout(sizes, info.platform if info else None, build_dir)
    romfs_dir = _stage_romfs(layout, ROMFS_DIR) if args.romfs else None

    # Secrets and config (real ones even for a dry run: validated, then only shown masked).
    from host_tools.bridge import keys

    station_key = keys.new_secret()
    pin = fs.new_pin()
    mqtt_password = fs.new_mqtt_password()
    site_key = keys.new_secret()  # stand-in until the registry's is known
    cfg = station_config(args, opts, station_key, site_key, fs.pin_hash(pin), mqtt_password)
    data = config_bytes(cfg)

    placeholder = "<private temporary folder>/" + CONFIG_FILE
    copy = copy_argv(mpremote, args.port, layout, romfs_dir)
    write = config_argv(mpremote, args.port, placeholder, layout, romfs=args.romfs)
    reset = None if args.no_reset else reset_argv(mpremote, args.port)

    if args.dry_run:
        _print_plan(out, args, opts, registry, enrolled, board_note, cross, cross_text, layout, data, cfg, [copy, write] + ([reset] if reset else []))
        return 0

    # 4. Copy the code.
    total = sum(s for _l, _d, s in layout)
    print("board    %s: %s" % (args.port, board_note), file=out)
    print("build    %d files, %d bytes (%s)" % (len(layout), total, cross_text), file=out)
    out.flush()
    fb.run(copy, idle=max(COPY_IDLE_S, args.timeout), overall=COPY_OVERALL_S, what="copying the firmware")
    print("copied   %d files to %s%s" % (len(layout) - 1, args.port, " (packages into ROMFS)" if args.romfs else ""), file=out)
    out.flush()

    # 5. Site key, config.json, main.py, read-back.
    site_key, site_created = _site_key(db, args.site)
    cfg["site_key"] = site_key.hex()
    data = config_bytes(cfg)
    tmp = tempfile.mkdtemp(prefix="overstay-flash-")
    try:
        path = os.path.join(tmp, CONFIG_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        stdout, _err = fb.run(
            config_argv(mpremote, args.port, path, layout, romfs=args.romfs),
            idle=max(COPY_IDLE_S, args.timeout),
            overall=COPY_OVERALL_S,
            what="writing config.json",
        )
    finally:
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))
        os.rmdir(tmp)
    _check_readback(fb.parse_files(stdout), layout, len(data), args.romfs)
    print("verified %d files on the board (sizes match); config.json written" % (len(layout) + 1 - (_count_lib(layout) if args.romfs else 0)), file=out)

    # 6. Registry.
    reg = _enrol(db, args, station_key, enrolled, opts["grace"])

    # 7. Reset into the app.
    if reset is not None:
        fb.run(reset, idle=max(COPY_IDLE_S, args.timeout), overall=60, what="resetting the board")

    # 8. Report, secrets once.
    _print_done(out, args, reg, site_created, pin, mqtt_password, reset is not None)
    return 0


def _count_lib(layout):
    return sum(1 for _l, dev, _s in layout if dev.startswith("lib/"))


def _site_key(db, site):
    from host_tools.bridge import keys
    from host_tools.bridge.cliutil import db_call

    return db_call(db, keys.ensure_site, site)


def _enrol(db, args, station_key, enrolled, grace):
    from host_tools.bridge import keys
    from host_tools.bridge.cliutil import db_call

    try:
        if enrolled is None:
            res = db_call(db, keys.register_station, args.station, args.site, secret=station_key)
            res["action"] = "registered"
        else:
            res = db_call(db, keys.rotate_key, args.station, grace_s=grace, secret=station_key)
            res["action"] = "rotated"
    except UserError as e:
        raise UserError(
            "the board is flashed but the key registry refused the key (%s): re-run with --replace once fixed" % e
        ) from None
    return res


def _check_readback(found, layout, config_size, romfs):
    want = {dev: size for _l, dev, size in layout if not (romfs and dev.startswith("lib/"))}
    want[CONFIG_FILE] = config_size
    missing = sorted(d for d in want if d not in found)
    wrong = sorted(d for d in want if d in found and found[d] != want[d])
    extra = sorted(d for d in found if d not in want)
    if missing or wrong or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else ""))
        if wrong:
            parts.append("wrong size " + ", ".join("%s (%d, not %d)" % (d, found[d], want[d]) for d in wrong[:3]))
        if extra:
            parts.append("unexpected " + ", ".join(extra[:3]))
        raise UserError("read-back after copying does not match: " + "; ".join(parts) + " (nothing was enrolled; retry)")


# Output ----------------------------------------------------------------------------


def _print_plan(out, args, opts, registry, enrolled, board_note, cross, cross_text, layout, data, cfg, commands):
    w = out.write
    w("overstay flash: plan (dry run: nothing is written to the board or the registry)\n")
    w("board     %s: %s\n" % (args.port, board_note))
    w("compiler  %s (%s)\n" % (fb.command_line([cross]), cross_text))
    w("station   %s on site %s: " % (args.station, args.site))
    if enrolled is None:
        w("not enrolled; a real run registers a new key\n")
    else:
        w("enrolled; --replace rotates its key (old key valid %ds more)\n" % opts["grace"])
    w("registry  %s\n" % registry)
    total = sum(s for _l, _d, s in layout) + len(data)
    w("files     %d, %d bytes:\n" % (len(layout) + 1, total))
    for local, dev, size in sorted(layout, key=lambda r: r[1]):
        w("  %7d  :%-28s <- %s\n" % (size, dev, os.path.relpath(local, REPO)))
    w("  %7d  :%-28s <- generated (secrets masked below)\n" % (len(data), CONFIG_FILE))
    w("mpremote commands:\n")
    for argv in commands:
        w("  $ %s\n" % fb.command_line(argv))
    w("config.json (secrets masked):\n")
    w("  %s\n" % json.dumps(masked(cfg), sort_keys=True))
    w("then      register the key, print the technician PIN, the MQTT password, the Mosquitto password line and ACL block\n")
    return 0


def _print_done(out, args, reg, site_created, pin, mqtt_password, did_reset):
    w = out.write
    w(
        "registry station %s %s on site %s (key %d, fingerprint %s)%s\n"
        % (args.station, reg["action"], args.site, reg["key_id"], reg["fingerprint"], "; new site with a new site key" if site_created else "")
    )
    if reg["action"] == "rotated":
        w("         the previous key stays valid for %ds; `overstay keys revoke %s --key-id N --db ...` ends it sooner\n" % (reg["grace_s"], args.station))
    w("board    %s\n" % ("reset: the stall app is starting" if did_reset else "left at the REPL (--no-reset): press reset to start the stall app"))
    w("\n")
    w("Secrets below are shown once and are not stored anywhere on this computer.\n")
    w("Technician PIN: %s\n" % pin)
    w("MQTT user %s, password: %s\n" % (args.station, mqtt_password))
    w("\n")
    w("Mosquitto password file: append this line (or run `mosquitto_passwd PASSWORD_FILE %s` and type the password above):\n" % args.station)
    w("  %s\n" % fs.mosquitto_line(args.station, mqtt_password))
    w("Mosquitto ACL: deploy/mosquitto/acl.conf's patterns already limit %s to its own topics; for strict per-site access append:\n" % args.station)
    for line in fs.acl_lines(args.station, args.site):
        w("  %s\n" % line)
    w("Then reload the broker (systemctl reload mosquitto).\n")
