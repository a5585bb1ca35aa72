# Simulator keys: each stall's station key and the site key, registered in the bridge's database or read from a keys file.
#
# --db URL     stations are registered like the flashing tool does
#              (host_tools.bridge.keys.register_station, one connector each);
#              a station already registered on the site keeps its newest
#              valid key, so a second run reuses the same identities.
# --keys FILE  the lines `overstay keys add` prints:
#                  station ST-ID secret HEX
#                  site SITE-ID secret HEX
#              blank lines and lines starting with # are ignored.
# neither      random keys: the stalls run, but no bridge can verify them.
import secrets

from host_tools.errors import UserError
from protocol import wire


class Keys:
    """site_key (bytes) and stations {station id: key bytes}."""

    def __init__(self, site_key, stations, source="random"):
        self.site_key = site_key
        self.stations = stations
        self.source = source

    def station(self, sid):
        k = self.stations.get(sid)
        if k is None:
            raise UserError("%s has no key for station %s" % (self.source, sid))
        return k


def random_keys(site, station_ids):
    return Keys(secrets.token_bytes(32), {s: secrets.token_bytes(32) for s in station_ids}, "random keys")


def from_file(path, site, station_ids):
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UserError("--keys: no such file: " + path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError("--keys: cannot read %s: %s" % (path, getattr(e, "strerror", None) or e)) from None
    site_key = None
    stations = {}
    for no, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        if len(parts) != 4 or parts[0] not in ("station", "site") or parts[2] != "secret":
            raise UserError("--keys %s:%d: expected `station ID secret HEX` or `site ID secret HEX`" % (path, no))
        try:
            key = bytes.fromhex(parts[3])
        except ValueError:
            raise UserError("--keys %s:%d: the secret is not hex" % (path, no)) from None
        if len(key) < wire.MIN_KEY_BYTES:
            raise UserError("--keys %s:%d: a key needs at least %d bytes" % (path, no, wire.MIN_KEY_BYTES))
        if parts[0] == "site":
            if parts[1] == site:
                site_key = key
        else:
            stations[parts[1]] = key
    if site_key is None:
        raise UserError("--keys %s: no `site %s secret HEX` line" % (path, site))
    missing = [s for s in station_ids if s not in stations]
    if missing:
        more = " (and %d more)" % (len(missing) - 1) if len(missing) > 1 else ""
        raise UserError("--keys %s: no key for station %s%s (register with `overstay keys add %s --site %s`)" % (path, missing[0], more, missing[0], site))
    return Keys(site_key, {s: stations[s] for s in station_ids}, "--keys " + path)


def open_db(url):
    from host_tools.bridge import db as dbmod

    try:
        return dbmod.open_db(url)
    except dbmod.DatabaseError as e:
        raise UserError("--db: " + str(e)) from None


def from_db(db, site, station_ids):
    """Register missing stations (one connector each) on `site`; the keys of all. Returns (Keys, registered count)."""
    from host_tools.bridge import keys as bkeys

    site_key, _created = bkeys.ensure_site(db, site)
    with db.tx():
        recs = bkeys.station_records(db, station_ids)
    stations = {}
    new = 0
    for sid in station_ids:
        rec = recs.get(sid)
        if rec is None:
            out = bkeys.register_station(db, sid, site, connectors=1)
            stations[sid] = out["secret"]
            new += 1
            continue
        if rec[0] != site:
            raise UserError("station %s is registered on site %s, not %s: pick another site or station_prefix" % (sid, rec[0], site))
        if not rec[3]:
            raise UserError("station %s has no valid key (revoked?): `overstay keys rotate %s`" % (sid, sid))
        stations[sid] = rec[3][0]
    return Keys(site_key, stations, "--db"), new


def site_stations(db, site):
    """How many stations (connectors) the bridge counts on the site: occupancy's denominator."""
    with db.tx():
        row = db.one("SELECT COALESCE(SUM(connectors), 0) FROM stations WHERE site = ?", (site,))
    return int(row[0])


def ensure_tariff(db, site, tariff):
    """Make the scenario's tariff the site's latest in the bridge database.

    Returns the signed retained command to publish (the stored bytes) and
    whether a new version was stored. A site whose latest version is newer,
    or the same version with other content, is refused: the stalls would
    obey the bridge, not the scenario."""
    import json

    from host_tools.bridge import tariffs

    hist = tariffs.history(db, site)
    want = json.loads(json.dumps(tariff, sort_keys=True))
    v = tariff["version"]
    if hist:
        last = hist[-1]
        if last["version"] > v:
            raise UserError("the bridge holds tariff version %d for site %s, newer than the scenario's %d: raise the scenario's tariff version" % (last["version"], site, v))
        if last["version"] == v:
            if last["tariff"] != want:
                raise UserError("the bridge holds a different tariff under version %d for site %s: raise the scenario's tariff version" % (v, site))
            return tariffs.latest(db, site)[1], False
    _v, _topic, payload = tariffs.set_tariff(db, site, tariff)
    return payload, True
