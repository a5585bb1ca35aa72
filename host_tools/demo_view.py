# The demo's screens: the live view of the site (rich Live + Table, or plain progress lines off a terminal) and the final billing summary read from the bridge's database.
import collections
import os
import sqlite3
import time
import urllib.parse

from host_tools.scenario import hms
from host_tools.sim_engine import duration_text, money

STATUS_STYLE = {
    "Available": "dim",
    "Preparing": "yellow",
    "Charging": "green",
    "SuspendedEV": "bold magenta",
    "SuspendedEVSE": "bold magenta",
    "Finishing": "magenta",
    "Unavailable": "red",
    "Faulted": "bold red",
}
IDLE = ("SuspendedEV", "SuspendedEVSE", "Finishing")


class BridgeDb:
    """Read-only look at the bridge's SQLite database while it runs (WAL: readers never block it)."""

    def __init__(self, path):
        self.path = path
        self.conn = None

    def _c(self):
        if self.conn is None and os.path.exists(self.path):
            uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + "?mode=ro"
            self.conn = sqlite3.connect(uri, uri=True, timeout=1.0, isolation_level=None)
        return self.conn

    def all(self, sql, params=()):
        c = self._c()
        if c is None:
            return []
        try:
            return c.execute(sql, params).fetchall()
        except sqlite3.Error:
            return []

    def live(self, site):
        """(sessions stored, fees stored, fees verified, latest published occupancy pct or None)."""
        r = self.all("SELECT COUNT(*), COALESCE(SUM(fee), 0), COALESCE(SUM(fee_verified = 1), 0) FROM sessions WHERE site = ?", (site,))
        n, fees, ok = r[0] if r else (0, 0, 0)
        o = self.all("SELECT pct FROM occupancy_history WHERE site = ? ORDER BY id DESC LIMIT 1", (site,))
        return n, fees, ok, (o[0][0] if o else None)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# -- what the site looks like now ------------------------------------------------------


def snapshot(sim, db, expected, final=False):
    """The site now, as a JSON-able dict (it crosses a pipe to the screen process).

    final: the run is over and the stalls have disconnected on purpose (not shown as offline)."""
    sc = sim.scenario
    world_s = min(sim.world.ms() // 1000, sc.end_s)
    rows = []
    occupied = closed = closed_fees = 0
    for st in sim.stalls:
        core = st.core
        row = {"station": st.station, "status": "Unavailable" if (core is None or st.down) else core.status,
               "amps": 0.0, "idle_s": None, "fee": None, "billed": None, "closed": len(st.sessions),
               "closed_fees": sum(r["fee"] for r in st.sessions.values()), "link": final or bool(st.app is not None and st.app.link.connected)}
        if core is not None and not st.down:
            info = core.info(st.app.clock.now_ms())
            row["amps"] = (core.current_ma or 0) / 1000.0
            sess = info.get("session")
            if sess is not None:
                row["idle_s"] = sess["idle_s"]
                row["fee"] = sess["fee"]
                row["billed"] = sess["billed_min"]
        if row["status"] not in ("Available", "Reserved"):
            occupied += 1
        closed += row["closed"]
        closed_fees += row["closed_fees"]
        rows.append(row)
    pct = occupied * 100 // len(rows) if rows else 0
    t = sim.tariff
    return {
        "world_s": world_s, "unix": sc.start + world_s, "end_s": sc.end_s, "currency": t.currency, "stalls": rows,
        "occupied": occupied, "pct": pct, "rate": t.rate_for_occupancy(pct) if t.tiers is not None else t.rate,
        "closed": closed, "closed_fees": closed_fees, "expected": expected,
        "db": list(db.live(sim.site)) if db is not None else [0, 0, 0, None],
    }


def rate_text(minor, currency):
    return "free" if minor == 0 else money(minor, currency) + "/min"


# -- the live view (a terminal) ------------------------------------------------------------


def render(s, title, events):
    """One frame of the live view (rich renderables) from a snapshot()."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    cur = s["currency"]
    t = Table(title=title, title_justify="left", expand=False, header_style="bold")
    for name, right in (("stall", False), ("status", False), ("draw", True), ("idle", True), ("billed", True),
                        ("accrued fee", True), ("closed", True), ("fees closed", True)):
        t.add_column(name, justify="right" if right else "left")
    for r in s["stalls"]:
        st = r["status"]
        idle = "" if r["idle_s"] is None else duration_text(r["idle_s"])
        billed = "" if r["billed"] is None else "%d min" % r["billed"]
        accrued = "" if r["fee"] is None else money(r["fee"], cur)
        amps = "%.1f A" % r["amps"] if r["amps"] >= 0.05 else ""
        t.add_row(r["station"], Text(st + ("" if r["link"] else " (offline)"), style=STATUS_STYLE.get(st, "")), amps,
                  Text(idle, style="magenta" if st in IDLE else ""), billed,
                  Text(accrued, style="bold" if r["fee"] else ""), str(r["closed"]), money(r["closed_fees"], cur))
    n, _fees, ok, bpct = s["db"]
    frac = s["world_s"] / s["end_s"] if s["end_s"] else 1.0
    bar = int(frac * 30)
    head = Text.assemble(
        ("%s  " % hms(s["unix"]), "bold"), ("[" + "#" * bar + "." * (30 - bar) + "] %3d%%  " % int(frac * 100), "cyan"),
        "occupancy ", ("%d/%d (%d%%)" % (s["occupied"], len(s["stalls"]), s["pct"]), "bold"),
        "  idle rate ", (rate_text(s["rate"], cur), "bold magenta" if s["rate"] else "dim"),
    )
    foot = Text.assemble(
        "sessions closed ", ("%d/%d" % (s["closed"], s["expected"]), "bold"), ", fees ", (money(s["closed_fees"], cur), "bold"),
        "   bridge database: %d stored, %d fee-verified, occupancy %s" % (n, ok, "-" if bpct is None else "%d%%" % bpct),
    )
    return Group(head, t, foot, Text("\n".join(events), style="dim"))


class ScreenView:
    """The live view, drawn by a separate process (host_tools/demo_screen.py).

    Drawing a frame takes tens of milliseconds of CPU, and at 150x every
    millisecond the simulator's event loop is held is 0.15 s of the stalls'
    time: their samples, and so the instants in their records, would land
    late. So this process only sends a small JSON snapshot down a
    non-blocking pipe four times a second (a frame is skipped, never
    waited for, when the screen falls behind) and the screen process draws."""

    def __init__(self, title, children):
        import subprocess
        import sys

        from host_tools import demo_procs

        self.children = children
        self.child = children.add(demo_procs.Child("screen", [sys.executable, "-m", "host_tools.demo_screen", title], None,
                                                   env=demo_procs.child_env(), stdin=subprocess.PIPE, new_session=False))
        self.fd = self.child.proc.stdin.fileno()
        os.set_blocking(self.fd, False)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _send(self, obj, droppable):
        import json

        if droppable and self.buf:
            return  # the screen is behind: skip this frame
        self.buf += json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        self._flush()

    def _flush(self):
        try:
            while self.buf:
                n = os.write(self.fd, self.buf)
                self.buf = self.buf[n:]
        except BlockingIOError:
            pass
        except (BrokenPipeError, OSError):
            self.buf = b""

    def line(self, text):
        self._send({"event": text}, False)

    def due(self):
        return True

    def show(self, snap, force=False):
        self._send({"snap": snap}, not force)

    def close(self, timeout=5.0):
        """Send what is left, close the pipe: the screen draws its last frame and exits."""
        import time

        deadline = time.monotonic() + timeout
        while self.buf and time.monotonic() < deadline and self.child.alive():
            self._flush()
            time.sleep(0.01)
        try:
            self.child.proc.stdin.close()
        except OSError:
            pass
        try:
            self.child.proc.wait(max(0.1, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired: stop it the hard way
            pass
        self.child.stop(2)
        if self.child in self.children.items:
            self.children.items.remove(self.child)


class PlainView:
    """No terminal (CI, a pipe): the simulator's lines as they come and a progress line every few seconds."""

    def __init__(self, write, every_s=5.0):
        self.write = write
        self.every_s = every_s
        self.next = 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def line(self, text):
        self.write("  " + text)

    def due(self):
        return time.monotonic() >= self.next

    def show(self, s, force=False):
        self.next = time.monotonic() + self.every_s
        n, _fees, ok, _bpct = s["db"]
        rows = s["stalls"]
        charging = sum(1 for r in rows if r["status"] == "Charging")
        idle = sum(1 for r in rows if r["status"] in IDLE)
        self.write("%s occupancy %d/%d (%d%%, idle rate %s), %d charging, %d idle; sessions %d/%d closed, fees %s; bridge %d stored, %d verified" % (
            hms(s["unix"]), s["occupied"], len(rows), s["pct"], rate_text(s["rate"], s["currency"]), charging, idle, s["closed"],
            s["expected"], money(s["closed_fees"], s["currency"]), n, ok))


# -- the billing summary ---------------------------------------------------------------------

SESSION_COLS = ("station", "session_id", "plug_in", "unplug", "idle_s", "billed_min", "fee", "fee_bridge", "fee_verified",
                "verify_reason", "currency", "timeline", "tariff_id", "tariff_version")


def read_sessions(db_path, site):
    import json

    db = BridgeDb(db_path)
    try:
        rows = db.all("SELECT " + ", ".join(SESSION_COLS) + " FROM sessions WHERE site = ? ORDER BY station, plug_in", (site,))
    finally:
        db.close()
    out = []
    for r in rows:
        d = dict(zip(SESSION_COLS, r))
        d["timeline"] = json.loads(d["timeline"]) if d["timeline"] else []
        out.append(d)
    return out


def judge(sim, sessions):
    """Match each stored session to its scenario car and price the car by the fee rules.

    Returns (per-session notes {(station, session_id): (vehicle, exact, lo, hi)}, cars with no session)."""
    by_station = {st.station: st for st in sim.stalls}
    notes = {}
    seen = set()
    for s in sessions:
        st = by_station.get(s["station"])
        v = sim.vehicle_for(st, s) if st is not None else None
        if v is None:
            notes[(s["station"], s["session_id"])] = (None, None, None, None)
            continue
        seen.add(v.index)
        exact = sim.truth.quote(v)["fee"]
        lo, hi = sim.truth.fee_range(v, sim.occupancy_delay_s(), sim.outages_for(s))
        notes[(s["station"], s["session_id"])] = (v, exact, lo, hi)
    missing = [v for v in sim.scenario.vehicles if v.index not in seen]
    return notes, missing


def tariff_text(t, cur):
    tiers = t.get("tiers") or []
    parts = ["%s of grace" % duration_text(t["grace_s"])]
    if tiers:
        parts += ["%s from %d%% occupancy" % (rate_text(x["rate"], cur), x["min_occupancy_pct"]) for x in tiers]
        parts.append("%s below %d%%" % (rate_text(t["rate"], cur), min(x["min_occupancy_pct"] for x in tiers)))
    else:
        parts.append("then " + rate_text(t["rate"], cur))
    return "%s v%d: %s" % (t["id"], t["version"], ", ".join(parts))


def summary_lines(sim, sessions, db_label, report=None):
    """The billing summary as plain lines (the same on a terminal and in a log, so it can be quoted)."""
    sc = sim.scenario
    cur = sim.tariff.currency
    notes, missing = judge(sim, sessions)
    per = collections.OrderedDict((st.station, []) for st in sim.stalls)
    for s in sessions:
        per.setdefault(s["station"], []).append(s)
    lines = [
        "Billing summary, read back from the bridge database %s" % db_label,
        "site %s, tariff %s" % (sc.site, tariff_text(sc.tariff, cur)),
        "",
        "  %-12s %8s %10s %7s %11s %11s  %s" % ("stall", "sessions", "idle", "billed", "fee", "truth", "fee_verified"),
    ]
    tot = {"n": 0, "idle": 0, "billed": 0, "fee": 0, "truth": 0, "ok": 0}
    for station, ss in per.items():
        idle = sum(s["idle_s"] for s in ss)
        billed = sum(s["billed_min"] for s in ss)
        fees = sum(s["fee"] for s in ss)
        truth = sum(notes[(s["station"], s["session_id"])][1] or 0 for s in ss)
        ok = sum(1 for s in ss if s["fee_verified"] == 1)
        lines.append("  %-12s %8d %10s %7s %11s %11s  %d/%d" % (station, len(ss), duration_text(idle), "%d min" % billed, money(fees, cur), money(truth, cur), ok, len(ss)))
        tot["n"] += len(ss)
        tot["idle"] += idle
        tot["billed"] += billed
        tot["fee"] += fees
        tot["truth"] += truth
        tot["ok"] += ok
    lines.append("  %-12s %8d %10s %7s %11s %11s  %d/%d" % ("total", tot["n"], duration_text(tot["idle"]), "%d min" % tot["billed"], money(tot["fee"], cur), money(tot["truth"], cur), tot["ok"], tot["n"]))
    lines.append("  (truth: the scenario's cars priced by the fee rules, independently of the firmware)")
    lines.append("")
    bad = [s for s in sessions if s["fee_verified"] != 1]
    if not bad and sessions:
        lines.append("fee verification: %d of %d sessions fee_verified by the bridge (it re-priced each record's timeline to the stall's fee and found every occupancy in its own history)" % (len(sessions), len(sessions)))
    else:
        lines.append("fee verification: %d of %d sessions fee_verified" % (len(sessions) - len(bad), len(sessions)))
        for s in bad:
            lines.append("  %s %s: fee_verified %s (%s)" % (s["station"], s["session_id"], s["fee_verified"], s["verify_reason"] or "no reason"))
    exact = [s for s in sessions if notes[(s["station"], s["session_id"])][1] == s["fee"]]
    lines.append("ground truth: %d of %d cars have a session; %d of %d fees equal the truth" % (
        len(sc.vehicles) - len(missing), len(sc.vehicles), len(exact), len(sessions)))
    delay = duration_text(sim.occupancy_delay_s())
    late_occ = late_status = 0
    for s in sessions:
        v, ex, lo, hi = notes[(s["station"], s["session_id"])]
        if v is None:
            lines.append("  %s %s: no car of the scenario" % (s["station"], s["session_id"]))
        elif ex != s["fee"]:
            if lo <= s["fee"] <= hi:
                late_occ += 1
                why = "the rules give %s..%s for occupancy learnt up to %s late" % (money(lo, cur), money(hi, cur), delay)
            else:
                late_status += 1
                why = "outside %s..%s: a status change seen late" % (money(lo, cur), money(hi, cur))
            lines.append("  %s %s: fee %s, truth %s (%s)" % (s["station"], v.label(), money(s["fee"], cur), money(ex, cur), why))
    for v in missing:
        lines.append("  no session for %s on stall %d (plugged in at %s)" % (v.label(), v.stall, hms(sc.start + v.arrive_s)))
    if late_occ:
        lines.append("  Why: a stall learns an occupancy change from the bridge a moment after it happens (as on a real site), so a billed")
        lines.append("  minute that starts within that moment is priced at the rate before the change; the truth uses the new rate.")
    if late_status:
        lag = (report.lag.get("loop_p99_ms") if report is not None else None) or 0.0
        lines.append("  Why: at %gx a millisecond of lag in the simulator is %g s of the stalls' time (event-loop lag p99 %.0f ms this run):"
                     % (sim.speed, sim.speed / 1000.0, lag))
        lines.append("  a stall stamps a change at the first sample that sees it. A slower run (make demo SPEED=30) leaves more margin.")
    return lines


def result_ok(sim, sessions, report):
    """Exit 0 when every car was billed once, every record acked and every fee verified by the bridge."""
    notes, missing = judge(sim, sessions)
    if missing or len(sessions) != len(sim.scenario.vehicles) or report is None or report.exit_code != 0:
        return False
    return all(notes[(s["station"], s["session_id"])][0] is not None and s["fee_verified"] == 1 for s in sessions)
