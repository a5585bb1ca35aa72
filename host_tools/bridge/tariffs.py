# Tariff versions per site: validate, store, sign the retained site-wide tariff command, look up by id and version.
import json
import time

from host_tools.errors import UserError
from protocol import fee, wire


def next_site_n(last_n, now_ms=None):
    """n for a site-wide stream: Unix milliseconds, made strictly above the last one used."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return max(int(last_n or 0) + 1, ms)


def set_tariff(db, site, tariff, now=None):
    """Validate `tariff` (a dict), store it as the site's next version and
    build the signed retained command. The version must be above the site's
    latest. Returns (version, topic, payload)."""
    if not wire.valid_id(site):
        raise UserError("--site must be 1..32 characters of A-Z a-z 0-9 _ -, not " + repr(site))
    try:
        parsed = fee.parse_tariff(tariff)
    except fee.TariffError as e:
        raise UserError(str(e)) from None
    now = int(time.time()) if now is None else int(now)
    body = {"op": wire.OP_TARIFF, "tariff": tariff}
    with db.tx():
        row = db.one("SELECT site_key, tariff_n FROM sites WHERE site = ?", (site,))
        if row is None:
            raise UserError("site %s is unknown: register a station on it first (`overstay keys add STATION --site %s`)" % (site, site))
        site_key, last_n = bytes(row[0]), row[1]
        if db.is_pg:
            db.execute("SELECT site FROM sites WHERE site = ? FOR UPDATE", (site,))
        latest = db.one("SELECT MAX(version) FROM tariffs WHERE site = ?", (site,))[0]
        if latest is not None and parsed.version <= latest:
            raise UserError("tariff version %d is not above site %s's latest version %d" % (parsed.version, site, latest))
        n = next_site_n(last_n)
        try:
            payload = wire.encode(site_key, wire.CMD, site, n, now, body)
        except (ValueError, TypeError) as e:
            raise UserError("tariff cannot be sent: " + str(e)) from None
        db.execute(
            "INSERT INTO tariffs (site, version, tariff_id, body, created_at, n, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (site, parsed.version, parsed.id, json.dumps(tariff, sort_keys=True), now, n, payload),
        )
        db.execute("UPDATE sites SET tariff_n = ? WHERE site = ?", (n, site))
    return parsed.version, wire.site_topic(site, "tariff"), payload


def mark_published(db, site, version, now=None):
    now = int(time.time()) if now is None else int(now)
    with db.tx():
        db.execute("UPDATE tariffs SET published_at = ? WHERE site = ? AND version = ?", (now, site, version))


def history(db, site):
    """The site's tariff versions, oldest first: dicts with version, tariff_id, tariff, created_at, published_at, n."""
    with db.tx():
        rows = db.all(
            "SELECT version, tariff_id, body, created_at, published_at, n FROM tariffs WHERE site = ? ORDER BY version",
            (site,),
        )
    return [
        {"version": v, "tariff_id": tid, "tariff": json.loads(body), "created_at": c, "published_at": p, "n": n}
        for v, tid, body, c, p, n in rows
    ]


def latest(db, site):
    """(version, payload) of the site's newest tariff, or None."""
    with db.tx():
        row = db.one("SELECT version, payload FROM tariffs WHERE site = ? ORDER BY version DESC LIMIT 1", (site,))
    return None if row is None else (row[0], bytes(row[1]))


def lookup(db, wanted):
    """{(site, tariff_id, version): fee.Tariff} for those the database holds.
    Call inside a transaction."""
    out = {}
    for site, tid, version in wanted:
        row = db.one("SELECT body FROM tariffs WHERE site = ? AND tariff_id = ? AND version = ?", (site, tid, version))
        if row is not None:
            out[(site, tid, version)] = fee.parse_tariff(json.loads(row[0]))
    return out
