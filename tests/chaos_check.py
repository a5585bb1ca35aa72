# Chaos suite, the verdict: after a run, every car's session is in the bridge's database exactly once with the ground truth's fee, and nothing is left unacked.
#
# The ground truth is host_tools.scenario.GroundTruth: the car's statuses as
# the idle-fee rules (section 10) define them from what the car did, priced
# by protocol.fee. A power cut adds the controller's downtime to that
# timeline as Unavailable (spec section 4: never billed). The one allowed
# difference, documented in docs/firmware.md: the stall knows it was alive
# only up to its last journal write (a session part or the heartbeat, every
# heartbeat_s while a session is open), so its Unavailable entry may start up
# to heartbeat_s + one accounting tick before the actual cut (idle time lost
# in the driver's favour, never billed extra). The check accepts an
# Unavailable entry [d, u) only when u is the stall's boot instant exactly
# and d lies in [cut - heartbeat_s - tick - 1, cut]; the expected fee is then
# the rules' fee for the truth with exactly that outage.
#
# Checked, per run:
#   - one session row per car (station, plug-in instant); no other rows
#   - its statuses and milestones (plug-in, first charging, charge complete,
#     unplug) equal the ground truth's to the second
#   - fee == the ground truth's fee == the bridge's re-priced fee_bridge,
#     fee_verified = 1 with no verify_reason
#   - every event and session message a stall published is in the audit ledger
#   - no quarantine rows; no rejects except stale states (a duplicated or
#     replayed state message whose n is not above the stored one)
#   - every stall: powered, outbox empty, no closed session waiting, no open
#     session; no firmware exception; no PowerCut escaped as a crash
import json

from host_tools.bridge import db as dbmod
from protocol import fee, wire

SESSION_COLS = "station, n, session_id, plug_in, first_charging, charge_complete, unplug, fee, fee_bridge, fee_verified, verify_reason, timeline"


def _rows(db_url, sql, params=()):
    db = dbmod.connect(db_url)
    try:
        with db.tx():
            return [tuple(r) for r in db.all(sql, params)]
    finally:
        db.close()


def outages_of(timeline):
    """[(t_down, t_up)]: each Unavailable entry to the next status."""
    sts = [e for e in timeline if "status" in e]
    return [(e["t"], sts[i + 1]["t"]) for i, e in enumerate(sts) if e["status"] == "Unavailable" and i + 1 < len(sts)]


def check(world, db_url):
    """Problems found (strings); [] when the run is clean."""
    problems = []
    sc = world.sc
    truth = world.truth
    tariff = fee.parse_tariff(sc.tariff)
    k = world.plan.knobs
    slack = k["heartbeat_s"] + -(-k["coarse_ms"] // 1000) + 1
    if world.timed_out:
        problems.append("run: " + world.timed_out)
    rows = _rows(db_url, "SELECT " + SESSION_COLS + " FROM sessions")
    by_key = {}
    for r in rows:
        by_key.setdefault((r[0], r[3]), []).append(r)
    matched = set()
    for v in sc.vehicles:
        st = world.stalls[v.stall - 1]
        m = truth.milestones(v)
        got = by_key.get((st.station, m["plug_in"]), [])
        label = "%s car %d (plug-in %+ds)" % (st.station, v.index, v.arrive_s)
        if len(got) != 1:
            problems.append("%s: %d session rows, want 1" % (label, len(got)))
            if not got:
                continue
        r = got[0]
        matched.add((r[0], r[1]))
        station, n, sid, plug_in, first_ch, complete, unplug, fee_st, fee_br, verified, reason, tl = r
        tl = json.loads(tl)
        # Outages: each must be a real power cut of this stall, placed as allowed.
        outs = outages_of(tl)
        world.counts["sessions_across_cuts"] += 1 if outs else 0
        for d, u in outs:
            ok = False
            for cut_w, up_w in st.outages:
                cut = sc.start + cut_w // 1000
                if u == sc.start + up_w // 1000 and cut - slack <= d <= cut:
                    ok = True
            if not ok:
                problems.append("%s: Unavailable %d..%d matches no power cut %s" % (label, d, u, [(sc.start + a // 1000, sc.start + b // 1000) for a, b in st.outages]))
        cuts_inside = [(a, b) for a, b in st.outages if m["plug_in"] < sc.start + a // 1000 < m["unplug"]]
        if len(cuts_inside) != len(outs):
            problems.append("%s: %d power cut(s) during the visit, %d Unavailable entries" % (label, len(cuts_inside), len(outs)))
        want = truth.statuses(v, outs)
        have = [{"t": e["t"], "status": e["status"]} for e in tl if "status" in e]
        if have != want:
            problems.append("%s: statuses %s, truth %s" % (label, _short(have), _short(want)))
        for name, val in (("first_charging", first_ch), ("charge_complete", complete), ("unplug", unplug)):
            if val != m[name]:
                problems.append("%s: %s %s, truth %s" % (label, name, val, m[name]))
        expect = fee.quote(tariff, want)["fee"]
        if fee_st != expect or fee_br != expect or verified != 1 or reason is not None:
            problems.append("%s: fee %s (bridge %s, verified %s %s), truth %d" % (label, fee_st, fee_br, verified, reason, expect))
    for r in rows:
        if (r[0], r[1]) not in matched:
            problems.append("%s: session %s (plug-in %d) is no car of the scenario" % (r[0], r[2], r[3]))
    # Everything the stalls sent is stored.
    audit = set(_rows(db_url, "SELECT station, n FROM audit WHERE kind <> 'state'"))
    for st in world.stalls:
        missing = sorted(n for n in st.published if (st.station, n) not in audit)
        if missing:
            problems.append("%s: %d published message(s) not in the audit ledger, e.g. n=%d (%s)" % (st.station, len(missing), missing[0], st.published[missing[0]]))
    q = _rows(db_url, "SELECT station, n, kind, reason FROM quarantine")
    if q:
        problems.append("quarantine: %s" % q[:5])
    rej = _rows(db_url, "SELECT station, n, kind, reason, detail FROM rejects WHERE NOT (kind = ? AND reason = ?)", (wire.STATE, wire.ERR_REPLAY))
    if rej:
        problems.append("rejects: %s" % rej[:5])
    # Nothing held back.
    for st in world.stalls:
        c = st.core
        if c is None:
            problems.append("%s: not running at the end" % st.station)
            continue
        if len(c.outbox) or c.closing or c.tab is not None:
            problems.append("%s: holds %d unacked message(s), %d closed session(s) waiting, open session %s" % (
                st.station, len(c.outbox), len(c.closing), c.tab.sid if c.tab is not None else None))
        late = [(b, w) for b, w in st.first_polls if w > b + 500]
        if late:
            problems.append("%s: harness: a boot sampled late %s" % (st.station, late[:3]))
        for w, e in st.crashes:
            problems.append("%s: firmware exception at %d s: %s" % (st.station, w // 1000, e))
    return problems


def _short(tl):
    return "[" + ", ".join("%s@%d" % (e["status"], e["t"]) for e in tl) + "]"
