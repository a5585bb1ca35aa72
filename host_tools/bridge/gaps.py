# Per-station sequence gaps: n values missing between the ones the bridge has seen, their alerts and the low-water mark.
#
# A station's n is one counter for its state, event and session messages.
# The scanner walks, per station, the n values seen since its last pass
# (accepted ones in the audit ledger, plus authentic rejects: a stale state
# used its n too). A jump opens a gap [a, b]; later messages inside a gap
# shrink or close it ("filled"). A gap open longer than alert_s raises one
# alert; one open longer than expire_s is closed as "expired" (a station
# that dropped telemetry for space never sends those n).
#
# floor_n, the station's low-water mark, is the highest n with every n up
# to it accounted for: (lowest open gap start) - 1, or scan_n without gaps.
# The ingest path rejects an event or session at or below floor_n whose
# (station, n) the database does not hold as a replay (docs/bridge.md).
#
# A station's first pass waits until its first message is settle_s old, so
# messages reordered on arrival do not set the starting point too high.
import time

# pg_try_advisory_xact_lock key: one scanner at a time across bridge processes.
_SCAN_LOCK = 0x6F766770  # "ovgp"


class ScanResult:
    def __init__(self):
        self.opened = []  # (station, start, end)
        self.filled = []  # (station, start, end) fully filled gaps
        self.alerts = []  # (station, start, end, age_s)
        self.expired = []  # (station, start, end)
        self.open_count = 0
        self.skipped = False  # another scanner holds the scan lock (PostgreSQL) or wrote meanwhile (SQLite)


def _seen_since(db, station_filter_sql):
    # (station, n) from the audit ledger and authentic rejects matching a filter on s (stations).
    # CROSS JOIN fixes SQLite's join order: stations first, then an index
    # range per station (never a scan of the audit or rejects table).
    sql = (
        "SELECT a.station, a.n FROM stations s CROSS JOIN audit a WHERE a.station = s.station AND " + station_filter_sql % "a.n"
        + " UNION SELECT r.station, r.n FROM stations s CROSS JOIN rejects r WHERE r.station = s.station"
        " AND r.authentic = 1 AND r.n IS NOT NULL AND " + station_filter_sql % "r.n"
    )
    return sql


def scan(db, now=None, alert_s=300, expire_s=7 * 86400, settle_s=2):
    """One pass over every station.

    Three steps: read what is needed, decide in memory, write the result.
    On SQLite the reads take a snapshot without the write lock and only the
    writes take it (SQLite has one lock for the whole file, and the ingest
    worker must not wait for this pass's Python); the write step checks
    that no other scanner moved the stations or gaps meanwhile, else it
    writes nothing (res.skipped) and the next pass redoes it. On PostgreSQL
    all three run in one transaction under the scan lock."""
    now = int(time.time()) if now is None else int(now)
    res = ScanResult()
    if db.is_pg:
        with db.tx():
            if not db.one("SELECT pg_try_advisory_xact_lock(?)", (_SCAN_LOCK,))[0]:
                res.skipped = True
                res.open_count = db.one("SELECT COUNT(*) FROM seq_gaps WHERE closed_at IS NULL")[0]
                return res
            snap = _read(db)
            ops = _plan(snap, res, now, alert_s, expire_s, settle_s)
            _write(db, ops)
        return res
    with db.read_tx():
        snap = _read(db)
    ops = _plan(snap, res, now, alert_s, expire_s, settle_s)
    if not ops:
        return res
    with db.tx():
        if _state(db) != snap["state"]:
            skipped = ScanResult()
            skipped.skipped = True
            skipped.open_count = res.open_count
            return skipped
        _write(db, ops)
    return res


def _state(db):
    # A fingerprint of what another scanner would change: marks only rise,
    # gap ids only grow, so any pass (or a new station) changes one of these.
    return tuple(db.one("SELECT COUNT(*), SUM(scan_n), SUM(floor_n) FROM stations")) + tuple(
        db.one("SELECT COUNT(*), MAX(id) FROM seq_gaps WHERE closed_at IS NULL")
    )


def _read(db):
    snap = {"state": _state(db)}
    snap["stations"] = {st: [scan_n, floor_n] for st, scan_n, floor_n in db.all("SELECT station, scan_n, floor_n FROM stations")}
    # First pass for new stations: their lowest n and when it arrived.
    snap["fresh"] = [
        tuple(r)
        for r in db.all(
            "SELECT s.station, (SELECT a.n FROM audit a WHERE a.station = s.station ORDER BY a.n LIMIT 1),"
            " (SELECT a.received_at FROM audit a WHERE a.station = s.station ORDER BY a.n LIMIT 1)"
            " FROM stations s WHERE s.scan_n IS NULL"
        )
    ]
    # New n values above each station's scan_n; every n of a new station.
    new = {}
    for st, n in db.all(_seen_since(db, "s.scan_n IS NOT NULL AND %s > s.scan_n")):
        new.setdefault(st, set()).add(n)
    snap["new"] = new
    fresh_ns = {}
    if snap["fresh"]:
        for st, n in db.all(_seen_since(db, "s.scan_n IS NULL AND %s IS NOT NULL")):
            fresh_ns.setdefault(st, set()).add(n)
    snap["fresh_ns"] = fresh_ns
    # Open gaps, and the n values that fall inside them.
    gaps = {}
    for gid, st, a, b, opened, alerted in db.all(
        "SELECT id, station, start_n, end_n, opened_at, alerted_at FROM seq_gaps WHERE closed_at IS NULL"
    ):
        gaps.setdefault(st, []).append([gid, a, b, opened, alerted])
    snap["gaps"] = gaps
    fills = {}
    if gaps:
        for st, n in db.all(
            "SELECT a.station, a.n FROM seq_gaps g CROSS JOIN audit a WHERE g.closed_at IS NULL"
            " AND a.station = g.station AND a.n BETWEEN g.start_n AND g.end_n"
            " UNION SELECT r.station, r.n FROM seq_gaps g CROSS JOIN rejects r WHERE g.closed_at IS NULL"
            " AND r.station = g.station AND r.n BETWEEN g.start_n AND g.end_n AND r.authentic = 1"
        ):
            fills.setdefault(st, set()).add(n)
    snap["fills"] = fills
    return snap


class _GapId:
    """The id of a gap inserted by this pass, known once _write has run its INSERT."""

    __slots__ = ("id",)

    def __init__(self):
        self.id = None


def _plan(snap, res, now, alert_s, expire_s, settle_s):
    """Decide the pass from the snapshot: fills res, returns the writes as
    [(sql, params)] and [("gap", _GapId, params)] in order."""
    ops = []
    stations = snap["stations"]
    new, gaps, fills = snap["new"], snap["gaps"], snap["fills"]
    for st, min_n, first_at in snap["fresh"]:
        if min_n is not None and first_at <= now - settle_s:
            # Its first pass starts below its lowest n; the station's row is
            # written once, below, in station order like every other: the
            # ingest worker updates stations (last_seen) in that order too, so
            # the two never deadlock on PostgreSQL.
            stations[st][0] = min_n - 1
            ns = {n for n in snap["fresh_ns"].get(st, ()) if n >= min_n}
            if ns:
                new[st] = ns

    def insert_gap(st, a, b, opened, alerted):
        gid = _GapId()
        ops.append(("gap", gid, (st, a, b, opened, alerted)))
        return gid

    # Only stations with something to do: new n, open gaps, a mark to move
    # (in station order: see above). The others would write nothing.
    busy = set(new) | set(gaps) | {st for st, (scan_n, floor_n) in stations.items() if scan_n != floor_n}
    for st in sorted(busy):
        scan_n, floor_n = stations[st]
        if scan_n is None:
            continue
        open_ = gaps.get(st, [])
        # Fill or split open gaps.
        got = fills.get(st)
        if got:
            keep = []
            for g in open_:
                gid, a, b, opened, alerted = g
                inside = sorted(n for n in got if a <= n <= b)
                if not inside:
                    keep.append(g)
                    continue
                rest = []
                lo = a
                for n in inside:
                    if n > lo:
                        rest.append((lo, n - 1))
                    lo = n + 1
                if lo <= b:
                    rest.append((lo, b))
                ops.append(("UPDATE seq_gaps SET closed_at = ?, close_reason = ? WHERE id = ?", (now, "filled" if not rest else "split", gid)))
                if not rest:
                    res.filled.append((st, a, b))
                for ra, rb in rest:
                    keep.append([insert_gap(st, ra, rb, opened, alerted), ra, rb, opened, alerted])
            open_ = keep
        # New gaps above scan_n.
        ns = new.get(st)
        if ns:
            prev = scan_n
            for n in sorted(ns):
                if n > prev + 1:
                    open_.append([insert_gap(st, prev + 1, n - 1, now, None), prev + 1, n - 1, now, None])
                    res.opened.append((st, prev + 1, n - 1))
                if n > prev:
                    prev = n
            scan_n = prev
        # Expire, alert.
        keep = []
        for g in open_:
            gid, a, b, opened, alerted = g
            if now - opened >= expire_s:
                ops.append(("UPDATE seq_gaps SET closed_at = ?, close_reason = 'expired' WHERE id = ?", (now, gid)))
                res.expired.append((st, a, b))
                continue
            if alerted is None and now - opened >= alert_s:
                ops.append(("UPDATE seq_gaps SET alerted_at = ? WHERE id = ?", (now, gid)))
                g[4] = now
                res.alerts.append((st, a, b, now - opened))
            keep.append(g)
        res.open_count += len(keep)
        new_floor = (min(g[1] for g in keep) - 1) if keep else scan_n
        if floor_n is not None and new_floor < floor_n:
            new_floor = floor_n  # the mark never goes back
        if [scan_n, new_floor] != stations[st] or ns:
            ops.append(("UPDATE stations SET scan_n = ?, floor_n = ? WHERE station = ?", (scan_n, new_floor, st)))
    return ops


def _write(db, ops):
    for op in ops:
        if op[0] == "gap":
            op[1].id = _insert_gap(db, *op[2])
        else:
            sql, params = op
            db.execute(sql, tuple(p.id if type(p) is _GapId else p for p in params))


def _insert_gap(db, station, a, b, opened, alerted):
    sql = "INSERT INTO seq_gaps (station, start_n, end_n, opened_at, alerted_at) VALUES (?, ?, ?, ?, ?)"
    params = (station, a, b, opened, alerted)
    if db.is_pg:
        return db.one(sql + " RETURNING id", params)[0]
    return db.execute(sql, params).lastrowid


def open_gaps(db, station=None):
    """Open gaps as (station, start_n, end_n, opened_at, alerted_at)."""
    sql = "SELECT station, start_n, end_n, opened_at, alerted_at FROM seq_gaps WHERE closed_at IS NULL"
    params = ()
    if station is not None:
        sql += " AND station = ?"
        params = (station,)
    with db.tx():
        return [tuple(r) for r in db.all(sql + " ORDER BY station, start_n", params)]
