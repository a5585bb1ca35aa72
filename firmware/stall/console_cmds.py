# The technician console's commands: each reads the app (or changes it, behind the PIN) and returns human text plus JSON data.
#
# install(con) registers them on a stall.console.Console. A handler takes
# the argument words and returns (text, data); ConsoleError is a refusal.
# Every handler does bounded work: nothing here waits, polls hardware or
# walks more than a session's bounded timeline. Commands that act after
# their reply (reboot, service, factory-reset) set con.action; the driver
# (stall.console_io) performs it once the reply is on the wire.

import sys

from protocol import canonjson, fee
from stall import config as configmod
from stall.console import EVENTS_KEPT, LOG_LINES, UNLOCK_MS, ConsoleError, config_value, dur

# Keys the console will not change: identity and keys come from `overstay flash`,
# the tariff from the backend.
FIXED_KEYS = ("schema", "station", "site", "connector", "station_key", "site_key", "pin_hash", "tariff")

_PILOT = {
    "A": "no vehicle",
    "B": "vehicle connected, not ready",
    "C": "vehicle ready to charge",
    "D": "ready, needs ventilation",
    "E": "no pilot (short or no supply)",
    "F": "pilot fault (-12 V)",
}
_ZERO_DECIMALS = ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF")
_THREE_DECIMALS = ("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND")


def install(con):
    def bind(fn):
        return lambda args: fn(con, args)

    r = con.register
    r("help", bind(cmd_help), "list the commands, or one command's usage", usage="[COMMAND]")
    r("status", bind(cmd_status), "connector status, pilot, current, session, idle time, fee")
    r("session", bind(cmd_session), "the open session in detail")
    r("events", bind(cmd_events), "the stall's latest events (default 10)", usage="[N]")
    r("outbox", bind(cmd_outbox), "messages waiting for the bridge's ack: depth, oldest")
    r("net", bind(cmd_net), "Wi-Fi and MQTT state, last error, reconnects")
    r("time", bind(cmd_time), "wall time, sync state, uptime")
    r("config", bind(cmd_config), "show the settings (secrets masked) or change one", pin=("set",), usage="list | get KEY | set KEY VALUE")
    r("tariff", bind(cmd_tariff), "the tariff in force")
    r("selftest", bind(cmd_selftest), "pilot, contactor, meter and sampler checks")
    r("log", bind(cmd_log), "the console log (default 20 lines)", usage="[N]")
    r("pause", bind(cmd_pause), "withhold energy (relay open, idle clock stopped) until resume", pin=True, usage="[REASON]")
    r("resume", bind(cmd_resume), "end a pause", pin=True)
    r("reboot", bind(cmd_reboot), "restart the controller (an open session continues)", pin=True)
    r("service", bind(cmd_service), "stop the stall app and hand the port to the MicroPython REPL (for mpremote)", pin=True, usage="[force]")
    r("factory-reset", bind(cmd_factory_reset), "erase config, keys, journal and counters, then reboot unprovisioned", pin=True, usage="confirm [force]")
    r("pin", bind(cmd_pin), "unlock the changing commands for 5 minutes; no PIN: show the lock state", usage="[NNNNNN]")
    r("lock", bind(cmd_lock), "end the PIN unlock now")
    r("json", bind(cmd_json), "answer every command with one JSON line (or prefix a line with -j)", usage="on|off")


# -- formatting ------------------------------------------------------------------------


def utc(t):
    """Unix seconds as 2025-11-22 17:00:00Z (no datetime on MicroPython)."""
    if t is None:
        return "-"
    days = t // 86400
    s = t - days * 86400
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    y = yoe + era * 400 + (1 if m <= 2 else 0)
    return "%04d-%02d-%02d %02d:%02d:%02dZ" % (y, m, d, s // 3600, s % 3600 // 60, s % 60)


def hms(t):
    """The time of day of Unix seconds: 17:00:00Z."""
    return "-" if t is None else utc(t)[11:]


def money(minor, cur):
    if minor is None:
        return "-"
    places = 0 if cur in _ZERO_DECIMALS else 3 if cur in _THREE_DECIMALS else 2
    if places == 0:
        return "%d %s" % (minor, cur)
    q = 10**places
    sign = "-" if minor < 0 else ""
    minor = -minor if minor < 0 else minor
    frac = str(minor % q)
    return "%s%d.%s %s" % (sign, minor // q, "0" * (places - len(frac)) + frac, cur)


def amps(ma):
    if ma is None:
        return "-"
    return "%d.%d A" % (ma // 1000, ma % 1000 // 100)


def _yes(b):
    return "yes" if b else "no"


def _int_arg(args, default, hi):
    if not args:
        return default
    try:
        n = int(args[0])
    except ValueError:
        raise ConsoleError("usage", "expected a number, got " + args[0])
    if n < 1:
        raise ConsoleError("usage", "the number must be at least 1")
    return n if n < hi else hi


def on_board(con):
    if con.board is not None:
        return con.board
    return sys.platform in ("esp32", "rp2")


def _no_core(con):
    if configmod.provisioned(con.cfg()):
        return "the stall app has not started its core yet (booting)"
    return "not provisioned (no station/site keys): enrol it with `overstay flash`"


def _core(con):
    core = con.app.core
    if core is None:
        raise ConsoleError("not_provisioned" if not configmod.provisioned(con.cfg()) else "starting", _no_core(con))
    return core


def _link(app):
    link = app.link
    if not link:
        return None
    st = getattr(link, "status", None)
    if st is not None:
        return st()
    return {"connected": bool(getattr(link, "connected", False))}


# -- read-only commands ------------------------------------------------------------------


def cmd_help(con, args):
    cmds = con.commands
    names = sorted(cmds)
    if args:
        e = cmds.get(args[0])
        if e is None:
            raise ConsoleError("unknown", "unknown command " + args[0])
        names = [args[0]]
    rows = []
    lines = ["commands (* needs the technician PIN; -j before any command answers in JSON):"] if not args else []
    for n in names:
        e = cmds[n]
        pin = e[2]
        rows.append({"name": n, "usage": e[3], "help": e[1], "pin": list(pin) if isinstance(pin, tuple) else bool(pin)})
        left = (n + " " + e[3]).strip()
        mark = "*" if pin is True else " "
        if isinstance(pin, tuple) and pin:
            mark = "*"
        lines.append("%s %-38s %s%s" % (mark, left, e[1], " (* " + "/".join(pin) + ")" if isinstance(pin, tuple) else ""))
    data = {"commands": rows, "station": con.cfg()["station"], "version": 1, "json": con.json}
    return "\n".join(lines), data


def _session_brief(core, now):
    tab = core.tab
    if tab is None:
        return None
    q = tab.s.quote(tab.unix(now))
    return {
        "id": tab.sid,
        "idle_s": q["idle_s"],
        "billable_s": q["billable_s"],
        "billed_min": q["billed_min"],
        "fee": q["fee"],
        "currency": q["currency"],
        "capped": q["capped"],
    }


def cmd_status(con, args):
    app = con.app
    core = app.core
    now = app.clock.now_ms()
    cfg = con.cfg()
    link = _link(app)
    data = {
        "station": cfg["station"],
        "site": cfg["site"],
        "provisioned": configmod.provisioned(cfg),
        "boot": app.boot_no,
        "uptime_s": now // 1000,
        "safe": app.safe,
        "late": app.late,
        "mqtt": None if link is None else ("connected" if link.get("connected") else "down"),
    }
    head = "station %s  site %s  boot %d  up %s" % (cfg["station"], cfg["site"], app.boot_no, dur(now // 1000))
    if core is None:
        data["connectors"] = []
        return head + "\n" + _no_core(con), data
    hw = app.hw
    sess = _session_brief(core, now)
    shown = "Unavailable" if core.safe or core.blocked else core.status
    c = {
        "id": core.cid,
        "status": shown,
        "machine": core.status,
        "pilot": core.pilot,
        "current_ma": core.current_ma,
        "energy_wh": core.energy_wh,
        "relay": bool(hw.relay),
        "paused": core.paused,
        "fault": core.fault,
        "session": sess,
    }
    data["connectors"] = [c]
    data["outbox"] = len(core.outbox)
    data["synced"] = core.synced
    data["unix"] = core.unix(now)
    lines = [head + ("  SAFE MODE" if app.safe else "")]
    flags = []
    if core.paused:
        flags.append("PAUSED")
    if core.fault:
        flags.append("FAULT")
    if core.blocked:
        flags.append("JOURNAL FULL")
    if shown != core.status:
        flags.append("(connector %s)" % core.status)
    lines.append(("connector %d: %s %s" % (core.cid, shown, " ".join(flags))).rstrip())
    lines.append(
        "  pilot %s (%s)  current %s  relay %s  energy %s"
        % (core.pilot, _PILOT.get(core.pilot, "?"), amps(core.current_ma), "closed" if hw.relay else "open", "-" if core.energy_wh is None else "%d Wh" % core.energy_wh)
    )
    if sess is None:
        lines.append("  no session")
    else:
        lines.append(
            "  session %s  idle %s  fee %s%s" % (sess["id"], dur(sess["idle_s"]), money(sess["fee"], sess["currency"]), " (capped)" if sess["capped"] else "")
        )
    lines.append(
        "mqtt %s  outbox %d  time %s%s"
        % (data["mqtt"] or "offline", len(core.outbox), utc(core.unix(now)), "" if core.synced else " (not synced)")
    )
    return "\n".join(lines), data


def cmd_session(con, args):
    core = _core(con)
    tab = core.tab
    if tab is None:
        return "no open session (status %s)" % core.status, {"session": None}
    now = con.app.clock.now_ms()
    s = tab.s
    at = tab.unix(now)
    q = s.quote(at)
    t = s.tariff
    energy = None
    if core.energy_wh is not None and tab.energy0 is not None:
        energy = core.energy_wh - tab.energy0
    tl = s.timeline
    tail = tl[-10:]
    data = {
        "id": tab.sid,
        "status": core.status,
        "plug_in": s.plug_in,
        "first_charging": s.first_charging,
        "charge_complete": s.charge_complete,
        "idle_s": q["idle_s"],
        "grace_s": t.grace_s,
        "billable_s": q["billable_s"],
        "billed_min": q["billed_min"],
        "fee": q["fee"],
        "currency": q["currency"],
        "capped": q["capped"],
        "tariff": [t.id, t.version],
        "energy_wh": energy,
        "synced": tab.synced,
        "boots": len(tab.segs),
        "timeline": tail,
        "timeline_len": len(tl),
    }
    lines = [
        "session %s  (%s)" % (tab.sid, core.status),
        "  plugged in  %s (%s ago)" % (utc(s.plug_in), dur(at - s.plug_in if at > s.plug_in else 0)),
        "  charging    %s" % ("since " + utc(s.first_charging) if s.first_charging is not None else "not yet"),
        "  complete    %s" % (utc(s.charge_complete) if s.charge_complete is not None else "no"),
        "  energy      %s" % ("-" if energy is None else "%d Wh" % energy),
        "  idle        %s (grace %s, billable %s, %d min billed)" % (dur(q["idle_s"]), dur(t.grace_s), dur(q["billable_s"]), q["billed_min"]),
        "  fee         %s%s" % (money(q["fee"], q["currency"]), " (capped)" if q["capped"] else ""),
        "  tariff      %s v%d%s" % (t.id, t.version, "" if tab.synced else "  (times not synced yet)"),
        "  timeline    %d entries%s:" % (len(tl), ", the last %d" % len(tail) if len(tail) < len(tl) else ""),
    ]
    for e in tail:
        if "status" in e:
            lines.append("    %s  %s" % (utc(e["t"]), e["status"]))
        else:
            lines.append("    %s  occupancy %s%%" % (utc(e["t"]), e.get("occupancy")))
    return "\n".join(lines), data


def _event_text(b):
    t = b.get("type")
    if t == "status":
        return "status %s -> %s" % (b.get("from"), b.get("status"))
    if t == "charge_complete":
        return "charge complete, grace ends %s%s" % (hms(b.get("grace_end")), ", %d Wh" % b["energy_wh"] if "energy_wh" in b else "")
    if t == "idle_fee_started":
        return "idle fee started at %s, %s/min" % (hms(b.get("at")), money(b.get("rate"), b.get("currency", "")))
    if t == "idle_tick":
        return "idle fee %s after %d billed min%s" % (money(b.get("fee"), b.get("currency", "")), b.get("billed_min", 0), " (capped)" if b.get("capped") else "")
    if t == "boot":
        return "boot %s%s" % (b.get("boot"), " in SAFE MODE" if b.get("safe") else "")
    if t == "fault":
        return "fault %s %s" % (b.get("code"), b.get("detail", ""))
    if t == "paused":
        return "paused" + (": " + b["reason"] if "reason" in b else "")
    if t == "resumed":
        return "resumed"
    rest = {}
    for k in b:
        if k not in ("type", "connector"):
            rest[k] = b[k]
    return str(t) + " " + canonjson.dumps(rest).decode()


def cmd_events(con, args):
    n = _int_arg(args, 10, EVENTS_KEPT)
    items = con.events.items(n)
    rows = []
    lines = []
    for seq, t, body in items:
        rows.append({"n": seq, "t": t, "event": body})
        sess = body.get("session")
        lines.append("%s  n=%d  %s%s" % (utc(t) if t is not None else "(time not synced)  ", seq, _event_text(body), "  [" + sess + "]" if sess else ""))
    if not lines:
        lines.append("no events since the console started")
    return "\n".join(lines), {"events": rows, "total": con.events.total}


def cmd_outbox(con, args):
    core = _core(con)
    now = con.app.clock.now_ms()
    ob = core.outbox
    es = ob.entries
    data = {
        "depth": len(ob),
        "oldest": None,
        "closing": len(core.closing),
        "sent": ob.sent,
        "resent": ob.resent,
        "acked": ob.acked,
        "lost_telemetry": ob.lost_telemetry,
        "window": ob.window,
        "journal_bytes": core.j.size,
        "journal_soft": core.cfg["journal_soft"],
        "journal_hard": core.cfg["journal_hard"],
    }
    lines = ["outbox %d message(s) waiting for the bridge's ack (window %d)" % (len(ob), ob.window)]
    if es:
        e = es[0]
        n = ob.seq(e)
        made = n // 1000 if n > 1000000000000 else None  # n is Unix ms once the stall was synced
        age = core.unix(now) - made if made is not None else None
        sent_ms = e[3]
        oldest = {"n": n, "kind": ob.leaf(e), "made": made, "age_s": age, "sent_ago_s": (now - sent_ms) // 1000 if sent_ms >= 0 else None}
        data["oldest"] = oldest
        lines.append(
            "  oldest unacked: %s n=%d%s, %s"
            % (
                oldest["kind"],
                n,
                " made %s (%s ago)" % (utc(made), dur(age if age > 0 else 0)) if made is not None and age is not None else "",
                "last sent %s ago" % dur(oldest["sent_ago_s"]) if oldest["sent_ago_s"] is not None else "not sent on this connection yet",
            )
        )
    if core.closing:
        lines.append("  %d closed session(s) waiting for the wall time before encoding" % len(core.closing))
    lines.append("  sent %d  resent %d  acked %d  telemetry dropped %d" % (ob.sent, ob.resent, ob.acked, ob.lost_telemetry))
    lines.append("  journal %d bytes (soft %d, hard %d)" % (core.j.size, core.cfg["journal_soft"], core.cfg["journal_hard"]))
    return "\n".join(lines), data


def _wifi(con):
    cfg = con.cfg()
    if not on_board(con):
        return {"state": "simulated", "ssid": cfg["wifi_ssid"]}
    if not cfg["wifi_ssid"]:
        return {"state": "not configured", "ssid": None}
    try:
        network = __import__("network")
        w = network.WLAN(network.STA_IF)
        up = w.isconnected()
        out = {"state": "connected" if up else "disconnected", "ssid": cfg["wifi_ssid"]}
        if up:
            out["ip"] = w.ifconfig()[0]
            try:
                out["rssi"] = w.status("rssi")
            except Exception:
                pass
        return out
    except Exception as e:
        return {"state": "unknown", "ssid": cfg["wifi_ssid"], "error": str(e)}


def cmd_net(con, args):
    app = con.app
    cfg = con.cfg()
    wifi = _wifi(con)
    link = _link(app)
    data = {"wifi": wifi, "mqtt": link, "broker": "%s:%d" % (cfg["mqtt_host"], cfg["mqtt_port"]), "tls": cfg["mqtt_tls"]}
    w = "wifi %s" % wifi["state"]
    if wifi.get("ssid"):
        w += " (ssid %s)" % wifi["ssid"]
    if "ip" in wifi:
        w += "  ip %s" % wifi["ip"]
    if "rssi" in wifi:
        w += "  rssi %s dBm" % wifi["rssi"]
    if wifi["state"] == "simulated":
        w = "wifi simulated (desktop: no radio)"
    lines = [w]
    if link is None:
        lines.append("mqtt off (this stall runs without an uplink)")
    else:
        lines.append("mqtt %s to %s%s" % ("connected" if link.get("connected") else "DOWN", data["broker"], " (TLS)" if cfg["mqtt_tls"] else ""))
        if link.get("last_error"):
            lines.append("  last error: %s" % link["last_error"])
        if "attempts" in link:
            lines.append(
                "  attempts %d  connects %d  reconnects %d  next retry after %d ms  in flight %d"
                % (link["attempts"], link["connects"], link["reconnects"], link["retry_ms"], link.get("inflight", 0))
            )
    up = app.uplink
    if up is not None:
        data["uplink"] = {"disconnects": up.disconnects, "pubacks": up.pubacks}
        lines.append("  disconnects %d  broker acks %d" % (up.disconnects, up.pubacks))
    return "\n".join(lines), data


def cmd_time(con, args):
    app = con.app
    core = app.core
    now = app.clock.now_ms()
    cfg = con.cfg()
    src = "no time source" if app.wall is None else ("NTP " + cfg["ntp_host"] if on_board(con) else "simulated wall clock")
    data = {"uptime_s": now // 1000, "boot": app.boot_no, "source": src, "unix": None, "utc": None, "synced": False}
    lines = []
    if core is None:
        lines.append("wall time unknown (not provisioned: the stall does not run its clock tasks)")
    else:
        u = core.unix(now)
        data["unix"] = u
        data["utc"] = utc(u)
        data["synced"] = core.synced
        if core.synced:
            lines.append("wall %s (synced, %s)" % (utc(u), src))
        else:
            lines.append("wall %s NOT SYNCED (an estimate: the last time saved before this boot, plus uptime; %s)" % (utc(u), src))
    lines.append("uptime %s  boot %d" % (dur(now // 1000), app.boot_no))
    return "\n".join(lines), data


def _show(v):
    return canonjson.dumps(v).decode()


def cmd_config(con, args):
    cfg = con.cfg()
    pub = configmod.public(cfg)
    sub = args[0] if args else "list"
    if sub == "list":
        keys = sorted(pub)
        lines = []
        for k in keys:
            f = configmod.FIELDS.get(k)
            note = ""
            if k in con.pending:
                pv = con.pending[k]
                note = "   (saved: %s, after reboot)" % ("***" if f and f[3] and pv else _show(pv))
            lines.append("%s = %s%s" % (k, _show(pub[k]), note))
        pend = {}
        for k in con.pending:
            f = configmod.FIELDS.get(k)
            pend[k] = "***" if f and f[3] and con.pending[k] else con.pending[k]
        return "\n".join(lines), {"config": pub, "pending": pend}
    if sub == "get":
        if len(args) != 2:
            raise ConsoleError("usage", "config get KEY")
        k = args[1]
        if k not in pub:
            raise ConsoleError("config", "unknown key " + k + " (config list shows them)")
        d = {"key": k, "value": pub[k]}
        text = "%s = %s" % (k, _show(pub[k]))
        if k in con.pending:
            f = configmod.FIELDS[k]
            pv = "***" if f[3] and con.pending[k] else con.pending[k]
            d["pending"] = pv
            text += "   (saved: %s, after reboot)" % _show(pv)
        return text, d
    if sub == "set":
        if len(args) < 3:
            raise ConsoleError("usage", "config set KEY VALUE")
        return _config_set(con, args[1], " ".join(args[2:]))
    raise ConsoleError("usage", "config list | get KEY | set KEY VALUE")


def _config_set(con, key, text):
    from stall.core import CONFIG_FILE

    if key in FIXED_KEYS:
        raise ConsoleError("config", key + " is set by enrolment (`overstay flash`) or the backend, not the console")
    value = config_value(key, text)
    app = con.app
    core = app.core
    base = core.cfg if core is not None else app.cfg
    d = {}
    for k in base:
        d[k] = base[k]
    for k in con.pending:
        d[k] = con.pending[k]
    d[key] = value
    try:
        saved = configmod.validate(d)  # raises ConfigError naming the key
    except configmod.ConfigError as e:
        raise ConsoleError("config", str(e))
    f = configmod.FIELDS[key]
    live = core is not None and f[2]
    if live:
        r = core._config({key: value})  # the same path as a signed remote config command
        if r is not None:
            raise ConsoleError("config", key + ": refused (" + r + ")")
        app.cfg = core.cfg
        if key in con.pending:
            del con.pending[key]
    else:
        con.pending[key] = value
    configmod.save(app.fs, app.root + CONFIG_FILE, saved)
    shown = "***" if f[3] and value else _show(value)
    con.note("config set %s = %s" % (key, shown))
    when = "now" if live else "reboot"
    text = "%s = %s  saved; %s" % (key, shown, "in effect now" if live else "takes effect after reboot")
    if live and core is not None and core._ccfg_pending is not None:
        text += " (connector settings: from the next session)"
    return text, {"key": key, "value": "***" if f[3] and value else value, "applied": when}


def cmd_tariff(con, args):
    core = _core(con)
    t = core.tariff
    p = fee.parse_tariff(t)
    lines = ["tariff %s v%d  %s/min idle fee after %s grace" % (p.id, p.version, money(p.rate, p.currency), dur(p.grace_s))]
    keys = sorted(t)
    for k in keys:
        if k not in ("id", "version"):
            lines.append("  %s: %s" % (k, _show(t[k])))
    data = {"tariff": t, "session_tariff": None}
    tab = core.tab
    if tab is not None:
        st = tab.s.tariff
        data["session_tariff"] = st.source
        if st.source != t:
            lines.append("the open session %s keeps tariff %s v%d" % (tab.sid, st.id, st.version))
    return "\n".join(lines), data


def cmd_selftest(con, args):
    app = con.app
    core = app.core
    hw = app.hw
    cfg = con.cfg()
    now = app.clock.now_ms()
    checks = []

    def check(name, ok, detail):
        checks.append({"name": name, "ok": bool(ok), "detail": detail})

    p = hw.pilot
    detail = "state %s (%s)" % (p, _PILOT.get(p, "?"))
    samples = getattr(hw, "samples", None)
    if samples is not None and len(samples):
        from stall import pilot as pilotmod

        lo = hi = samples[0]
        for v in samples:
            lo = v if v < lo else lo
            hi = v if v > hi else hi
        detail += ", last burst %d..%d mV" % (pilotmod.pilot_mv(lo, cfg), pilotmod.pilot_mv(hi, cfg))
    check("pilot", p in ("A", "B", "C", "D"), detail)
    want = core.relay if core is not None else False
    check("contactor", bool(hw.relay) == bool(want), "commanded %s, output %s" % ("closed" if want else "open", "closed" if hw.relay else "open"))
    watch = getattr(hw, "watch", None)
    if cfg["meter"] == "none" and on_board(con):
        check("meter", False, "no meter configured (meter: none)")
    elif watch is None:
        check("meter", True, "current %s, energy %s" % (amps(hw.current_ma), hw.energy_wh))
    elif watch.good_ms is None:
        check("meter", False, "no reading yet (%d read errors)" % watch.errors)
    else:
        stale = watch.stale(now)
        check(
            "meter",
            not stale,
            "current %s, energy %s Wh, last good reading %d ms ago, %d read errors%s"
            % (amps(hw.current_ma), "-" if hw.energy_wh is None else hw.energy_wh, now - watch.good_ms, watch.errors, " (STALE)" if stale else ""),
        )
    check("fault input", not hw.fault, "fault" if hw.fault else "clear")
    h = app.health
    if "sampler" in h.limit:
        age = now - h.last["sampler"]
        check("sampler", age <= h.limit["sampler"], "last sample %d ms ago (every %d ms)" % (age, cfg["sample_ms"]))
    else:
        check("sampler", core is None, "not running" + (" (not provisioned)" if core is None else ""))
    lines = []
    bad = []
    for c in checks:
        lines.append("%-12s %s  %s" % (c["name"], "ok  " if c["ok"] else "FAIL", c["detail"]))
        if not c["ok"]:
            bad.append(c["name"])
    data = {"ok": not bad, "checks": checks}
    text = "\n".join(lines)
    if bad:
        raise ConsoleError("selftest", "failed: " + ", ".join(bad), data=data, detail=text)
    return text + "\nall checks passed", data


def cmd_log(con, args):
    n = _int_arg(args, 20, LOG_LINES)
    rows = []
    lines = []
    for up, unix, text in con.log.items(n):
        rows.append({"uptime_s": up // 1000, "unix": unix, "text": text})
        lines.append("+%-9s %s  %s" % (dur(up // 1000), utc(unix) if unix is not None else "-" * 20, text))
    if not lines:
        lines.append("the log is empty")
    return "\n".join(lines), {"lines": rows}


# -- commands behind the PIN -----------------------------------------------------------------


def cmd_pause(con, args):
    core = _core(con)
    body = {"connector": 0}  # type: dict
    if args:
        body["reason"] = " ".join(args)
    was = core.paused
    core._pause(body, True, con.app.clock.now_ms())  # the same path as the backend's pause command
    if not was:
        con.note("paused from the console" + (": " + body["reason"] if args else ""))
    return ("already paused" if was else "paused: energy withheld (relay open) until resume"), {"paused": True}


def cmd_resume(con, args):
    core = _core(con)
    was = core.paused
    core._pause({"connector": 0}, False, con.app.clock.now_ms())
    if was:
        con.note("resumed from the console")
    return ("resumed" if was else "was not paused"), {"paused": False}


def cmd_reboot(con, args):
    core = con.app.core
    con.action = "reboot"
    con.note("reboot from the console")
    text = "rebooting"
    if core is not None and core.tab is not None:
        text += " (session %s continues after the boot; the downtime is not billed)" % core.tab.sid
    return text, {"action": "reboot"}


def _plugged(core):
    return core is not None and (core.tab is not None or core.status != "Available")


def cmd_service(con, args):
    core = con.app.core
    force = "force" in args
    if _plugged(core) and not force:
        raise ConsoleError(
            "refused",
            "a car is plugged in (%s): service mode stops metering; unplug it first, or `service force`" % (core.tab.sid if core.tab is not None else core.status),
        )
    con.action = "service"
    con.note("service mode from the console")
    if on_board(con):
        text = "service mode: stopping the stall app (contactor open); the port is the MicroPython REPL's now (mpremote can flash). Press reset to return."
    else:
        text = "service mode (simulated): a board would now stop metering and hand this port to the MicroPython REPL; this console ignores input until Ctrl-D"
    return text, {"action": "service", "board": on_board(con)}


def cmd_factory_reset(con, args):
    app = con.app
    core = app.core
    if "confirm" not in args:
        raise ConsoleError(
            "confirm",
            "this erases config.json (identity, keys, PIN, Wi-Fi), the journal, counters and the boot log; "
            "the stall then needs `overstay flash`. Type `factory-reset confirm` to go ahead",
        )
    if core is not None and "force" not in args:
        waiting = len(core.outbox) + len(core.closing)
        if _plugged(core):
            raise ConsoleError("refused", "a car is plugged in: its session would be lost (unplug it, or add force)")
        if waiting:
            raise ConsoleError("refused", "%d billing message(s) are not acked by the bridge yet and would be lost (wait for the uplink, or add force)" % waiting)
    con.action = "factory-reset"
    con.note("factory reset from the console")
    return "erasing the stall's data and rebooting unprovisioned", {"action": "factory-reset"}


def cmd_pin(con, args):
    now = con.now()
    left = con.lock.left_ms(now)
    unl = con._unlock_until - now if con.unlocked() else 0
    data = {"unlocked_s": unl // 1000, "locked_s": (left + 999) // 1000, "fails": con.lock.fails, "pin_set": bool(con.cfg()["pin_hash"])}
    if left:
        text = "locked out after %d wrong PINs: try again in %s" % (con.lock.fails, dur(data["locked_s"]))
    elif unl:
        text = "unlocked for another %s" % dur(unl // 1000)
    else:
        text = "locked: `pin NNNNNN` unlocks the changing commands for %d minutes" % (UNLOCK_MS // 60000)
    if con.lock.fails and not left:
        text += " (%d wrong PIN(s) in a row)" % con.lock.fails
    return text, data


def cmd_lock(con, args):
    was = con.unlocked()
    con.relock()
    if was:
        con.note("console locked")
    return "locked", {"unlocked_s": 0}


def cmd_json(con, args):
    if args and args[0] in ("on", "off"):
        con.json = args[0] == "on"
    elif args:
        raise ConsoleError("usage", "json on|off")
    return "json " + ("on" if con.json else "off"), {"json": con.json}
