# Site occupancy: aggregate the connectors' latest states, keep the history, sign the retained occupancy command.
#
# A stall is one connector (1, 2, ...) of a registered station; connector 0
# (the station as a whole) is not a stall. A site's stalls are, per station,
# the larger of its registered connector count and the highest connector it
# has reported. A stall is occupied from plug-in to unplug (see ingest.py's
# _occupied and docs/bridge.md). pct = occupied * 100 // stalls (0 without
# stalls). The history table gets a row whenever a site's pct changes; the
# retained command is published on every change and every interval_s.
import time

from host_tools.bridge import tariffs
from protocol import wire


def compute(db):
    """{site: (occupied, stalls)} for every site with stations. Call inside a transaction.

    All in SQL: the housekeeping thread shares the paho process, and a loop
    over every station in Python each second grows with the fleet."""
    stalls = dict(
        db.all(
            "SELECT s.site, SUM(CASE WHEN c.top > COALESCE(s.connectors, 0) THEN c.top ELSE COALESCE(s.connectors, 0) END)"
            " FROM stations s LEFT JOIN (SELECT station, MAX(connector) AS top FROM connector_states"
            " WHERE connector >= 1 GROUP BY station) c ON c.station = s.station GROUP BY s.site"
        )
    )
    occupied = dict(
        db.all(
            "SELECT st.site, COUNT(*) FROM connector_states c JOIN stations st ON st.station = c.station"
            " WHERE c.occupied = 1 AND c.connector >= 1 GROUP BY st.site"
        )
    )
    return {site: (occupied.get(site, 0), int(total or 0)) for site, total in stalls.items()}


def pct(occupied, total):
    return occupied * 100 // total if total else 0


class Publisher:
    """Publishes each site's occupancy through `publish(topic, payload, retain)`.

    tick() recomputes from the database; a changed value is written to the
    history and published at once; an unchanged one is republished every
    interval_s so a late subscriber and the retained copy stay fresh."""

    def __init__(self, db, publish, interval_s=60.0, clock=time.time, log=None, metrics=None):
        self.db = db
        self.publish = publish
        self.interval_s = interval_s
        self.clock = clock
        self.log = log
        self.metrics = metrics
        self._last = None  # site -> pct last published
        self._published = {}  # site -> monotonic time of the last publish

    def _load_last(self):
        rows = self.db.all(
            "SELECT h.site, h.pct FROM occupancy_history h JOIN"
            " (SELECT site, MAX(id) AS id FROM occupancy_history GROUP BY site) m ON m.id = h.id"
        )
        return dict(rows)

    def tick(self, mono=None):
        """Returns the list of (site, pct, changed) published."""
        mono = time.monotonic() if mono is None else mono
        now = int(self.clock())
        out = []
        signed = []
        # Counting reads a snapshot without the write lock (SQLite has one
        # for the whole file, and the ingest worker needs it); only a site
        # whose value is due takes it, to draw its n and write the history.
        with self.db.read_tx():
            if self._last is None:
                self._last = self._load_last()
            counts = compute(self.db)
        due = []
        for site in sorted(counts):
            occ, total = counts[site]
            p = pct(occ, total)
            changed = self._last.get(site) != p
            if changed or mono - self._published.get(site, -1e18) >= self.interval_s:
                due.append((site, occ, total, p, changed))
        if not due:
            return out
        with self.db.tx():
            keys = dict(self.db.all("SELECT site, site_key FROM sites"))
            ns = dict(self.db.all("SELECT site, occupancy_n FROM sites"))
            for site, occ, total, p, changed in due:
                if site not in keys:
                    continue
                n = tariffs.next_site_n(ns.get(site))
                body = {"op": wire.OP_OCCUPANCY, "occupancy": p}
                payload = wire.encode(bytes(keys[site]), wire.CMD, site, n, now, body)
                self.db.execute("UPDATE sites SET occupancy_n = ? WHERE site = ?", (n, site))
                if changed:
                    self.db.execute(
                        "INSERT INTO occupancy_history (site, t, pct, occupied, total, n) VALUES (?, ?, ?, ?, ?, ?)",
                        (site, now, p, occ, total, n),
                    )
                signed.append((site, p, changed, payload, occ, total))
        # Published after the commit: the history is never behind what stations saw.
        for site, p, changed, payload, occ, total in signed:
            self.publish(wire.site_topic(site, "occupancy"), payload, True)
            self._last[site] = p
            self._published[site] = mono
            out.append((site, p, changed))
            if self.metrics is not None:
                self.metrics.occupancy.labels(site).set(p)
            if changed and self.log is not None:
                self.log.info("occupancy", site=site, pct=p, occupied=occ, stalls=total)
        return out
