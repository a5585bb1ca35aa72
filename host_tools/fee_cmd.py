# `overstay fee quote`: price one session, or re-price a JSON-lines batch, with the shared fee engine.
import json
import sys

from host_tools.errors import UserError
from protocol import fee


def register(sub):
    p = sub.add_parser("fee", help="idle-fee tools")
    fsub = p.add_subparsers(dest="fee_command", metavar="SUBCOMMAND", parser_class=type(p))
    fsub.required = True
    q = fsub.add_parser(
        "quote",
        help="price a session timeline under a tariff",
        description=(
            "Price a session with the idle-fee rules. Either --tariff and --timeline "
            "(one result object), or --batch FILE.jsonl with one "
            '{"tariff": ..., "timeline": ..., "at": N} per line (one result line per input line).'
        ),
    )
    q.add_argument("--tariff", metavar="T.json", help="tariff JSON file")
    q.add_argument("--timeline", metavar="L.json", help="timeline JSON file (a list of events)")
    q.add_argument("--at", metavar="EPOCH", type=_epoch, help="price an open session as of this Unix instant")
    q.add_argument("--batch", metavar="FILE.jsonl", help="JSON-lines file of quotes ('-' for standard input)")
    q.set_defaults(func=run_quote)


def _epoch(text):
    try:
        v = int(text)
    except ValueError:
        raise UserError("--at: expected a whole number of Unix seconds, got " + repr(text)) from None
    if v < 0:
        raise UserError("--at: must not be negative")
    return v


def _load_json(path, what):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(what + ": no such file: " + path) from None
    except IsADirectoryError:
        raise UserError(what + ": is a directory: " + path) from None
    except PermissionError:
        raise UserError(what + ": permission denied: " + path) from None
    except OSError as e:
        raise UserError(what + ": cannot read " + path + ": " + (e.strerror or str(e))) from None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(what + ": " + path + " is not valid JSON: " + str(e)) from None


def _dump(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=False)


def run_quote(args):
    if args.batch is not None:
        if args.tariff or args.timeline or args.at is not None:
            raise UserError("fee quote: --batch cannot be combined with --tariff, --timeline or --at")
        return _run_batch(args.batch)
    if not args.tariff or not args.timeline:
        raise UserError("fee quote: give --tariff and --timeline, or --batch FILE.jsonl")
    tariff = _load_json(args.tariff, "--tariff")
    timeline = _load_json(args.timeline, "--timeline")
    try:
        result = fee.quote(tariff, timeline, args.at)
    except (fee.TariffError, fee.TimelineError) as e:
        raise UserError(str(e)) from None
    print(_dump(result))
    return 0


def quote_line(line):
    """Price one batch line; return the output object (a result or {"error": ...})."""
    try:
        req = json.loads(line)
    except ValueError as e:
        return {"error": "not valid JSON: " + str(e)}
    if not isinstance(req, dict):
        return {"error": "line must be a JSON object"}
    for k in req:
        if k not in ("tariff", "timeline", "at"):
            return {"error": k + ": unknown field"}
    if "tariff" not in req:
        return {"error": "tariff: required"}
    if "timeline" not in req:
        return {"error": "timeline: required"}
    try:
        return fee.quote(req["tariff"], req["timeline"], req.get("at"))
    except (fee.TariffError, fee.TimelineError) as e:
        return {"error": str(e)}


def _run_batch(path):
    if path == "-":
        src = sys.stdin.buffer
        close = False
    else:
        try:
            src = open(path, "rb")
        except FileNotFoundError:
            raise UserError("--batch: no such file: " + path) from None
        except IsADirectoryError:
            raise UserError("--batch: is a directory: " + path) from None
        except PermissionError:
            raise UserError("--batch: permission denied: " + path) from None
        except OSError as e:
            raise UserError("--batch: cannot read " + path + ": " + (e.strerror or str(e))) from None
        close = True
    out = sys.stdout
    errors = 0
    try:
        for raw in src:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                res = {"error": "line is not UTF-8"}
            else:
                line = line.strip()
                res = {"error": "empty line"} if not line else quote_line(line)
            if "error" in res:
                errors += 1
            out.write(_dump(res) + "\n")
    finally:
        if close:
            src.close()
    out.flush()
    # Bad lines are reported in place and the rest still price, so the batch
    # succeeds; the count on stderr keeps a human from missing them.
    if errors:
        print("overstay: fee quote: %d line(s) had errors" % errors, file=sys.stderr)
    return 0
