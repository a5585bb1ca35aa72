# Station and site keys in the bridge database: registration, rotation with a grace window, revocation, look-up.
#
# A station key signs everything on the station's topics (both directions);
# a site key signs the site-wide occupancy and tariff broadcasts. Secrets
# are 32 random bytes, stored in the database (protect it like a password
# file) and shown once by the CLI. Nothing here logs or prints a secret:
# listings show a fingerprint (first 12 hex digits of SHA-256(secret)).
import hashlib
import os
import time

from host_tools.errors import UserError
from protocol import wire

SECRET_BYTES = 32
DEFAULT_GRACE_S = 24 * 3600


def new_secret():
    return os.urandom(SECRET_BYTES)


def fingerprint(secret):
    return hashlib.sha256(bytes(secret)).hexdigest()[:12]


def _check_secret(secret):
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError("secret must be bytes")
    if len(secret) < wire.MIN_KEY_BYTES:
        raise UserError("key must be at least %d bytes (provision %d random bytes)" % (wire.MIN_KEY_BYTES, SECRET_BYTES))
    return bytes(secret)


def _check_id(value, what):
    if not wire.valid_id(value):
        raise UserError(what + " must be 1..32 characters of A-Z a-z 0-9 _ -, not " + repr(value))


def _now(now):
    return int(time.time()) if now is None else int(now)


def _ensure_site(db, site, now):
    # Inside the caller's transaction. Returns (site_key, created).
    row = db.one("SELECT site_key FROM sites WHERE site = ?", (site,))
    if row is not None:
        return bytes(row[0]), False
    key = new_secret()
    db.execute("INSERT INTO sites (site, site_key, created_at) VALUES (?, ?, ?)", (site, key, now))
    return key, True


def ensure_site(db, site, now=None):
    """Create the site (and its key) if it is new. Returns (site_key, created)."""
    _check_id(site, "site")
    with db.tx():
        return _ensure_site(db, site, _now(now))


def register_station(db, station, site, secret=None, connectors=1, now=None):
    """Register a new station on a site with its key; create the site and
    its key when the site is new. secret: the station key (bytes) the
    flashing tool generated, or None to generate one here.

    Returns a dict: station, site, key_id, secret, fingerprint,
    site_created (and site_secret when the site was created now, so the
    caller can provision it). Raises UserError if the station exists."""
    _check_id(station, "station")
    _check_id(site, "site")
    if type(connectors) is not int or not 1 <= connectors <= 64:
        raise UserError("connectors must be a whole number from 1 to 64")
    secret = new_secret() if secret is None else _check_secret(secret)
    now = _now(now)
    with db.tx():
        row = db.one("SELECT site FROM stations WHERE station = ?", (station,))
        if row is not None:
            raise UserError(
                "station %s is already registered (site %s); use `overstay keys rotate %s` for a new key" % (station, row[0], station)
            )
        site_key, created = _ensure_site(db, site, now)
        db.execute(
            "INSERT INTO stations (station, site, connectors, created_at) VALUES (?, ?, ?, ?)",
            (station, site, connectors, now),
        )
        key_id = _insert_key(db, station, secret, now)
    out = {
        "station": station,
        "site": site,
        "key_id": key_id,
        "secret": secret,
        "fingerprint": fingerprint(secret),
        "site_created": created,
    }
    if created:
        out["site_secret"] = site_key
    return out


def _insert_key(db, station, secret, now):
    sql = "INSERT INTO station_keys (station, secret, fingerprint, created_at) VALUES (?, ?, ?, ?)"
    params = (station, secret, fingerprint(secret), now)
    if db.is_pg:
        return db.one(sql + " RETURNING id", params)[0]
    return db.execute(sql, params).lastrowid


def _station_row(db, station):
    row = db.one("SELECT site FROM stations WHERE station = ?", (station,))
    if row is None:
        raise UserError("station %s is not registered (`overstay keys add %s --site SITE`)" % (station, station))
    return row


def rotate_key(db, station, grace_s=DEFAULT_GRACE_S, secret=None, now=None):
    """Add a new key for the station; keys valid now stay valid for grace_s
    more seconds (so records signed before the station switched still
    verify). Returns a dict like register_station's."""
    if type(grace_s) is not int or grace_s < 0:
        raise UserError("grace must be a whole number of seconds >= 0")
    secret = new_secret() if secret is None else _check_secret(secret)
    now = _now(now)
    with db.tx():
        site = _station_row(db, station)[0]
        db.execute(
            "UPDATE station_keys SET expires_at = ? WHERE station = ? AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (now + grace_s, station, now + grace_s),
        )
        key_id = _insert_key(db, station, secret, now)
    return {"station": station, "site": site, "key_id": key_id, "secret": secret, "fingerprint": fingerprint(secret), "grace_s": grace_s}


def revoke(db, station, key_id=None, now=None):
    """End the station's keys now (all, or the one key_id). Returns how many."""
    now = _now(now)
    with db.tx():
        _station_row(db, station)
        if key_id is None:
            cur = db.execute("UPDATE station_keys SET revoked_at = ? WHERE station = ? AND revoked_at IS NULL", (now, station))
        else:
            cur = db.execute(
                "UPDATE station_keys SET revoked_at = ? WHERE station = ? AND id = ? AND revoked_at IS NULL",
                (now, station, key_id),
            )
        return cur.rowcount


def list_keys(db, station=None, site=None, now=None):
    """Key rows (no secrets): dicts with station, site, key_id, fingerprint,
    created_at, expires_at, revoked_at, status (valid, expiring, expired, revoked)."""
    now = _now(now)
    sql = (
        "SELECT k.station, s.site, k.id, k.fingerprint, k.created_at, k.expires_at, k.revoked_at"
        " FROM station_keys k JOIN stations s ON s.station = k.station"
    )
    where, params = [], []
    if station is not None:
        where.append("k.station = ?")
        params.append(station)
    if site is not None:
        where.append("s.site = ?")
        params.append(site)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY s.site, k.station, k.id"
    with db.tx():
        rows = db.all(sql, params)
    out = []
    for st, si, kid, fp, created, expires, revoked in rows:
        if revoked is not None:
            status = "revoked"
        elif expires is not None and expires <= now:
            status = "expired"
        elif expires is not None:
            status = "expiring"
        else:
            status = "valid"
        out.append(
            {
                "station": st,
                "site": si,
                "key_id": kid,
                "fingerprint": fp,
                "created_at": created,
                "expires_at": expires,
                "revoked_at": revoked,
                "status": status,
            }
        )
    return out


def station_records(db, stations, now=None):
    """For the given station ids: {station: (site, connectors, floor_n, [keys newest first])}.
    Only keys valid at `now` are listed. Call inside or outside a transaction."""
    now = _now(now)
    stations = list(stations)
    out = {}
    if not stations:
        return out
    for chunk in _chunks(stations, 500):
        marks = ",".join("?" * len(chunk))
        for st, site, connectors, floor_n in db.all(
            "SELECT station, site, connectors, floor_n FROM stations WHERE station IN (%s)" % marks, chunk
        ):
            out[st] = (site, connectors, floor_n, [])
        for st, secret in db.all(
            "SELECT station, secret FROM station_keys WHERE station IN (%s) AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > ?) ORDER BY station, id DESC" % marks,
            list(chunk) + [now],
        ):
            if st in out:
                out[st][3].append(bytes(secret))
    return out


def key_for(db, station, now=None):
    """The station's valid keys, newest first ([] when none): what wire.decode's key_for returns."""
    with db.tx():
        rec = station_records(db, [station], now).get(station)
    return rec[3] if rec else []


def site_key(db, site):
    """The site key (bytes), or None for an unknown site."""
    with db.tx():
        row = db.one("SELECT site_key FROM sites WHERE site = ?", (site,))
    return None if row is None else bytes(row[0])


def _chunks(seq, size):
    for i in range(0, len(seq), size):
        yield seq[i : i + size]
