# `overstay tariff set|show|history|publish`: tariff versions per site, published as a signed retained site-wide command.
import json
import os
import sys

from host_tools.bridge import db as dbmod
from host_tools.bridge import mqttconn, tariffs
from host_tools.bridge.cliutil import db_call, iso
from host_tools.errors import UserError
from protocol import wire


def register(sub):
    p = sub.add_parser("tariff", help="site tariffs: set, show, history, publish")
    tsub = p.add_subparsers(dest="tariff_command", metavar="SUBCOMMAND", parser_class=type(p))
    tsub.required = True

    s = tsub.add_parser(
        "set",
        help="validate and store a new tariff version and publish it to the site's stalls",
        description="Validate FILE.json with the fee engine, store it as the site's next version (its version must be "
        "above the latest) and publish the signed, retained tariff command on overstay/v1/SITE/tariff.",
    )
    s.add_argument("file", metavar="FILE.json")
    s.add_argument("--site", required=True)
    s.add_argument("--db", metavar="URL", required=True)
    mqttconn.add_arguments(s, required=False)
    s.add_argument("--no-publish", action="store_true", help="store only (publish later with `tariff publish`)")
    s.set_defaults(func=run_set)

    sh = tsub.add_parser("show", help="print the site's latest tariff (JSON)")
    sh.add_argument("--site", required=True)
    sh.add_argument("--db", metavar="URL", required=True)
    sh.set_defaults(func=run_show)

    h = tsub.add_parser("history", help="list the site's tariff versions")
    h.add_argument("--site", required=True)
    h.add_argument("--db", metavar="URL", required=True)
    h.add_argument("--json", action="store_true", help="one JSON object per line")
    h.set_defaults(func=run_history)

    pb = tsub.add_parser("publish", help="publish the site's latest tariff again (same signed bytes)")
    pb.add_argument("--site", required=True)
    pb.add_argument("--db", metavar="URL", required=True)
    mqttconn.add_arguments(pb, required=True)
    pb.set_defaults(func=run_publish)


def _open(url):
    try:
        return dbmod.open_db(url)
    except dbmod.DatabaseError as e:
        raise UserError("--db: " + str(e)) from None


def _load(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError("cannot read %s: %s" % (path, e.strerror or e)) from None
    try:
        return json.loads(data, parse_float=_no_float)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError("%s is not valid JSON: %s" % (path, e)) from None


def _no_float(text):
    raise ValueError("numbers must be integers (minor units, seconds), not " + text)


def _publish(args, db, site, version, payload):
    opts = mqttconn.options_from_args(args)
    mqttconn.publish_once(opts, "overstay-tariff-%s-%d" % (site, os.getpid()), [(wire.site_topic(site, "tariff"), payload, True)])
    db_call(db, tariffs.mark_published, site, version)


def run_set(args):
    tariff = _load(args.file)
    if args.broker is None and not args.no_publish:
        raise UserError("tariff set: give --broker URL to publish, or --no-publish to store only")
    db = _open(args.db)
    try:
        version, topic, payload = db_call(db, tariffs.set_tariff, args.site, tariff)
        print("overstay: stored tariff %s version %d for site %s" % (tariff.get("id"), version, args.site), file=sys.stderr)
        if args.no_publish:
            return 0
        try:
            _publish(args, db, args.site, version, payload)
        except UserError as e:
            raise UserError("%s (version %d is stored; retry with `overstay tariff publish --site %s`)" % (e, version, args.site)) from None
        print("overstay: published on %s (retained)" % topic, file=sys.stderr)
    finally:
        db.close()
    return 0


def run_show(args):
    db = _open(args.db)
    try:
        rows = db_call(db, tariffs.history, args.site)
    finally:
        db.close()
    if not rows:
        raise UserError("site %s has no tariff" % args.site)
    print(json.dumps(rows[-1]["tariff"], sort_keys=True, indent=2))
    return 0


def run_history(args):
    db = _open(args.db)
    try:
        rows = db_call(db, tariffs.history, args.site)
    finally:
        db.close()
    if args.json:
        for r in rows:
            print(json.dumps(r, sort_keys=True, separators=(",", ":")))
        return 0
    print("%7s  %-16s  %-20s  %-20s" % ("VERSION", "TARIFF", "CREATED", "PUBLISHED"))
    for r in rows:
        print("%7d  %-16s  %-20s  %-20s" % (r["version"], r["tariff_id"], iso(r["created_at"]), iso(r["published_at"])))
    return 0


def run_publish(args):
    db = _open(args.db)
    try:
        got = db_call(db, tariffs.latest, args.site)
        if got is None:
            raise UserError("site %s has no tariff" % args.site)
        version, payload = got
        _publish(args, db, args.site, version, payload)
    finally:
        db.close()
    print("overstay: published tariff version %d of site %s (retained)" % (version, args.site), file=sys.stderr)
    return 0
