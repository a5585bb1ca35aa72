# `overstay keys add|rotate|revoke|list`: station keys in the bridge database; a secret is shown once, never logged.
import sys

from host_tools.bridge import db as dbmod
from host_tools.bridge import keys
from host_tools.bridge.cliutil import db_call, duration, iso
from host_tools.errors import UserError


def register(sub):
    p = sub.add_parser("keys", help="station keys in the bridge database")
    ksub = p.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", parser_class=type(p))
    ksub.required = True

    a = ksub.add_parser(
        "add",
        help="register a station on a site and create its key",
        description="Register STATION on SITE (creating the site and its site key when new) and print the "
        "station's secret once, as hex. For a new site the site key is printed too. Keep them: they are not shown again.",
    )
    a.add_argument("station")
    a.add_argument("--site", required=True, help="the site the station belongs to")
    a.add_argument("--connectors", type=int, default=1, help="stalls (connectors) of the station, for occupancy (default 1)")
    a.add_argument("--db", metavar="URL", required=True, help="sqlite:///PATH or postgresql://...")
    a.set_defaults(func=run_add)

    r = ksub.add_parser(
        "rotate",
        help="give a station a new key; the old one stays valid for a grace window",
        description="Create a new key for STATION and print it once. Keys valid now stay valid for --grace "
        "so records the station signed before switching still verify.",
    )
    r.add_argument("station")
    r.add_argument("--grace", type=duration, default=keys.DEFAULT_GRACE_S, metavar="DURATION", help="how long old keys stay valid (default 24h)")
    r.add_argument("--site", help="check the station is on this site")
    r.add_argument("--db", metavar="URL", required=True)
    r.set_defaults(func=run_rotate)

    v = ksub.add_parser("revoke", help="end a station's keys now", description="Revoke STATION's keys (all, or --key-id N) at once.")
    v.add_argument("station")
    v.add_argument("--key-id", type=int, help="revoke only this key (see `keys list`)")
    v.add_argument("--site", help="check the station is on this site")
    v.add_argument("--db", metavar="URL", required=True)
    v.set_defaults(func=run_revoke)

    ls = ksub.add_parser("list", help="list keys (fingerprints, never secrets)")
    ls.add_argument("station", nargs="?")
    ls.add_argument("--site", help="only this site's stations")
    ls.add_argument("--db", metavar="URL", required=True)
    ls.set_defaults(func=run_list)

    acl = ksub.add_parser(
        "acl",
        help="print a strict Mosquitto ACL file for the registered stations",
        description="Print a complete Mosquitto ACL: the bridge user's block and one block per registered station "
        "(publish only under its own topics on its own site, read its ack, cmd and its site's occupancy and tariff).",
    )
    acl.add_argument("--db", metavar="URL", required=True)
    acl.add_argument("--bridge-user", default="overstay-bridge", help="MQTT username of the bridge (default overstay-bridge)")
    acl.set_defaults(func=run_acl)


def _open(args):
    try:
        return dbmod.open_db(args.db)
    except dbmod.DatabaseError as e:
        raise UserError("--db: " + str(e)) from None


def _check_site(db, station, site):
    if site is None:
        return
    rows = keys.list_keys(db, station=station)
    if rows and rows[0]["site"] != site:
        raise UserError("station %s is on site %s, not %s" % (station, rows[0]["site"], site))


def run_add(args):
    db = _open(args)
    try:
        out = db_call(db, keys.register_station, args.station, args.site, connectors=args.connectors)
    finally:
        db.close()
    print("station %s secret %s" % (out["station"], out["secret"].hex()))
    if out["site_created"]:
        print("site %s secret %s" % (out["site"], out["site_secret"].hex()))
    print(
        "overstay: registered station %s on site %s (key %d, fingerprint %s)%s; secrets are shown once"
        % (out["station"], out["site"], out["key_id"], out["fingerprint"], ", new site" if out["site_created"] else ""),
        file=sys.stderr,
    )
    return 0


def run_rotate(args):
    db = _open(args)
    try:
        _check_site(db, args.station, args.site)
        out = db_call(db, keys.rotate_key, args.station, grace_s=int(args.grace))
    finally:
        db.close()
    print("station %s secret %s" % (out["station"], out["secret"].hex()))
    print(
        "overstay: new key %d (fingerprint %s) for %s; older keys stay valid for %ds"
        % (out["key_id"], out["fingerprint"], out["station"], out["grace_s"]),
        file=sys.stderr,
    )
    return 0


def run_revoke(args):
    db = _open(args)
    try:
        _check_site(db, args.station, args.site)
        k = db_call(db, keys.revoke, args.station, args.key_id)
    finally:
        db.close()
    if k == 0:
        raise UserError("no valid key to revoke for station %s%s" % (args.station, "" if args.key_id is None else " with id %d" % args.key_id))
    print("overstay: revoked %d key(s) of %s" % (k, args.station), file=sys.stderr)
    return 0


def run_list(args):
    db = _open(args)
    try:
        rows = db_call(db, keys.list_keys, station=args.station, site=args.site)
    finally:
        db.close()
    if args.station is not None and not rows:
        raise UserError("station %s is not registered" % args.station)
    print("%-12s %-16s %4s  %-12s  %-20s  %-20s  %s" % ("SITE", "STATION", "KEY", "FINGERPRINT", "CREATED", "EXPIRES", "STATUS"))
    for r in rows:
        exp = r["revoked_at"] if r["status"] == "revoked" else r["expires_at"]
        print(
            "%-12s %-16s %4d  %-12s  %-20s  %-20s  %s"
            % (r["site"], r["station"], r["key_id"], r["fingerprint"], iso(r["created_at"]), iso(exp), r["status"])
        )
    return 0


def acl_text(stations, bridge_user="overstay-bridge"):
    """A Mosquitto ACL file for [(station, site)]: the bridge's block, then one block per station."""
    out = [
        "# Generated by `overstay keys acl`: strict per-station, per-site access (see deploy/mosquitto/README.md).",
        "user " + bridge_user,
    ]
    for leaf in ("state", "event", "session", "avail"):
        out.append("topic read overstay/v1/+/+/" + leaf)
    for t in ("+/+/ack", "+/+/cmd", "+/occupancy", "+/tariff"):
        out.append("topic write overstay/v1/" + t)
    for station, site in stations:
        out.append("")
        out.append("user " + station)
        for leaf in ("state", "event", "session", "avail"):
            out.append("topic write overstay/v1/%s/%s/%s" % (site, station, leaf))
        for leaf in ("ack", "cmd"):
            out.append("topic read overstay/v1/%s/%s/%s" % (site, station, leaf))
        out.append("topic read overstay/v1/%s/occupancy" % site)
        out.append("topic read overstay/v1/%s/tariff" % site)
    return "\n".join(out) + "\n"


def run_acl(args):
    if not args.bridge_user or any(c in args.bridge_user for c in " \t\n"):
        raise UserError("--bridge-user: a username without spaces")
    db = _open(args)
    try:
        def stations(db):
            with db.tx():
                return [tuple(r) for r in db.all("SELECT station, site FROM stations ORDER BY site, station")]

        rows = db_call(db, stations)
    finally:
        db.close()
    sys.stdout.write(acl_text(rows, args.bridge_user))
    return 0
