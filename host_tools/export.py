# `overstay export`: closed sessions from the bridge database as CSV rows or OCPI 2.2.1 CDRs for billing back-ends.
#
# Read-only by construction: SQLite is opened with mode=ro and PostgreSQL in
# a read-only transaction, so an export can never change what it reports.
# Money stays an integer count of minor units until it is printed; major
# units are formatted with divmod / Decimal.scaleb, never with float
# arithmetic. The whole export is built in memory before anything is
# written, so a bad row or a bad --out never leaves half a file behind.
import csv
import datetime
import hashlib
import io
import json
import os
import re
import sqlite3
import sys
import tempfile
import urllib.parse
from decimal import Decimal

from host_tools.bridge import db as bridge_db
from host_tools.errors import UserError

FORMATS = ("csv", "ocpi")

# Columns read from the bridge's sessions table (names kept stable by the bridge).
DB_COLUMNS = (
    "station",
    "site",
    "connector",
    "session_id",
    "plug_in",
    "first_charging",
    "charge_complete",
    "unplug",
    "energy_wh",
    "idle_s",
    "billable_s",
    "billed_min",
    "fee",
    "capped",
    "fee_bridge",
    "fee_verified",
    "verify_reason",
    "currency",
    "tariff_id",
    "tariff_version",
    "minutes",
    "timeline",
    "received_at",
)

# CSV header, in order. The first block is the contract billing back-ends
# rely on; the extras after it only ever grow at the end.
CSV_COLUMNS = (
    "station",
    "connector",
    "session_id",
    "plug_in",
    "charge_complete",
    "unplug",
    "idle_s",
    "billed_min",
    "fee",
    "fee_major",
    "currency",
    "tariff_id",
    "tariff_version",
    "fee_verified",
    "first_charging",
    "energy_wh",
    "billable_s",
    "fee_bridge",
    "verify_reason",
    "site",
    "capped",
)

# ISO 4217 currencies whose minor unit is not 1/100. Every other code has 2.
_EXPONENT = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}  # fmt: skip

# Last instant ISO 8601 can show with four year digits (9999-12-31T23:59:59Z).
_MAX_INSTANT = 253402300799

# Decimal places of hour quantities in CDRs (1e-6 h is 3.6 ms: below the 1 s resolution).
HOUR_PLACES = 6

# OCPI CiString(36): printable ASCII, at most 36 characters.
_CI36 = re.compile(r"[\x20-\x7e]{1,36}\Z")

# Placeholders for CDR fields the bridge database does not know (see docs/export.md).
LOCATION_PLACEHOLDER = {
    "address": "unknown",
    "city": "unknown",
    "country": "ZZZ",
    "coordinates": {"latitude": "0.000000", "longitude": "0.000000"},
    "connector_standard": "IEC_62196_T2",
    "connector_format": "SOCKET",
    "connector_power_type": "AC_3_PHASE",
}
TOKEN_PLACEHOLDER = {"uid": "unknown", "type": "OTHER", "contract_id": "unknown"}
AUTH_METHOD = "WHITELIST"


def register(sub):
    p = sub.add_parser(
        "export",
        help="export closed sessions as CSV or OCPI 2.2.1 CDRs",
        description=(
            "Export the closed sessions of the bridge database whose unplug instant is in "
            "[--since, --until), ordered by unplug, station, session_id. The database is only read."
        ),
    )
    p.add_argument("--db", metavar="URL", required=True, help="sqlite:///PATH or postgresql://...")
    p.add_argument("--format", dest="fmt", metavar="FORMAT", required=True, help="csv or ocpi (a JSON array of CDRs)")
    p.add_argument("--since", metavar="WHEN", help="first unplug instant included: ISO 8601 (UTC if no offset) or Unix seconds")
    p.add_argument("--until", metavar="WHEN", help="first unplug instant excluded: ISO 8601 (UTC if no offset) or Unix seconds")
    p.add_argument("--out", metavar="FILE", help="write here (replaced atomically) instead of standard output")
    p.add_argument("--party-id", metavar="X", help="ocpi: party id of the CPO that owns the CDRs (3 characters)")
    p.add_argument("--country-code", metavar="Y", help="ocpi: ISO 3166-1 alpha-2 country code of that CPO")
    p.set_defaults(func=run)


# ---------------------------------------------------------------- time


def parse_instant(text, flag):
    """--since/--until: Unix seconds, or ISO 8601 (a date, or a date and time; no offset means UTC).

    Returns whole Unix seconds; a fractional instant rounds up, so [since, until)
    keeps its meaning for whole-second instants.
    """
    s = text.strip()
    if re.fullmatch(r"-?\d+", s):
        v = int(s)
        if v < 0:
            raise UserError(flag + ": must not be negative, got " + repr(text))
        return v
    iso = s
    if iso[-1:] in ("Z", "z"):
        iso = iso[:-1] + "+00:00"
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", iso):
            d = datetime.date.fromisoformat(iso)
            dt = datetime.datetime(d.year, d.month, d.day)
        else:
            dt = datetime.datetime.fromisoformat(iso)
    except ValueError:
        raise UserError(
            flag + ": expected ISO 8601 (2026-11-22T17:00:00Z) or Unix seconds, got " + repr(text)
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    delta = dt - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    secs = delta.days * 86400 + delta.seconds + (1 if delta.microseconds else 0)
    if secs < 0:
        raise UserError(flag + ": is before 1970, got " + repr(text))
    return secs


def iso(t):
    """Unix seconds -> 2026-11-22T17:00:00Z; None -> ''."""
    if t is None:
        return ""
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- numbers


def minor_exponent(currency):
    """Digits after the decimal point of the currency's major unit (ISO 4217)."""
    return _EXPONENT.get(currency, 2)


def major_text(minor, currency):
    """Integer minor units -> exact major-unit decimal text: 12345 USD -> '123.45', JPY -> '12345'."""
    e = minor_exponent(currency)
    sign = "-" if minor < 0 else ""
    if e == 0:
        return sign + str(abs(minor))
    whole, frac = divmod(abs(minor), 10**e)
    return sign + str(whole) + "." + str(frac).rjust(e, "0")


def major(minor, currency):
    """The same amount as an exact Decimal (for JSON numbers)."""
    return Decimal(major_text(minor, currency))


def _scaled(num, den, places):
    """round(num / den * 10**places), halves up, in integers (num >= 0, den > 0)."""
    q = num * 10**places
    return (2 * q + den) // (2 * den)


def _dec(units, places):
    """units * 10**-places as a Decimal without trailing zeros (exact)."""
    return Decimal(units).scaleb(-places).normalize()


def hours(seconds):
    return _dec(_scaled(seconds, 3600, HOUR_PLACES), HOUR_PLACES)


def kwh(wh):
    return _dec(wh, 3)


# ---------------------------------------------------------------- database


def _one_line(e):
    return " ".join(str(e).split()) or type(e).__name__


def open_readonly(url):
    """The bridge database named by url as a host_tools.bridge.db.Database that cannot write.

    SQLite: the file must exist and is opened with mode=ro (bridge_db.connect
    would create a missing file and switch it to WAL). PostgreSQL: the
    bridge's connect(), then every transaction is read-only.
    """
    if url.startswith("sqlite:"):
        path = bridge_db.sqlite_path(url)
        if path == ":memory:":
            raise UserError("--db: give a database file, sqlite:///PATH (relative) or sqlite:////PATH (absolute)")
        if not os.path.exists(path):
            raise UserError("--db: no such database file: " + path)
        if os.path.isdir(path):
            raise UserError("--db: is a directory: " + path)
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as e:
            raise UserError("--db: cannot open " + path + ": " + _one_line(e)) from None
        return bridge_db.Database(conn, bridge_db.SQLITE, url)
    if url.startswith(("postgresql://", "postgres://")):
        db = bridge_db.connect(url)
        try:
            db.conn.read_only = True  # the server refuses any write in our transactions
        except db.errors as e:
            db.close()
            raise UserError("--db: cannot use " + bridge_db.redact(url) + ": " + _one_line(e)) from None
        return db
    raise UserError("--db: unsupported URL " + repr(bridge_db.redact(url)) + " (use sqlite:///PATH or postgresql://...)")


def _sid_key(v):
    # Ids are one type per column; ints sort numerically, anything else as text.
    return (0, v, "") if type(v) is int else (1, 0, str(v))


def read_sessions(url, since=None, until=None):
    """Closed sessions with unplug in [since, until), as dicts, ordered by (unplug, station, session_id)."""
    db = open_readonly(url)
    where = ["unplug IS NOT NULL"]
    params = []
    if since is not None:
        where.append("unplug >= ?")
        params.append(since)
    if until is not None:
        where.append("unplug < ?")
        params.append(until)
    sql = "SELECT " + ", ".join(DB_COLUMNS) + " FROM sessions WHERE " + " AND ".join(where)
    try:
        try:
            rows = [dict(zip(DB_COLUMNS, r)) for r in db.all(sql, params)]
        finally:
            if db.is_pg:
                try:
                    db.conn.rollback()
                except db.errors:
                    pass
            db.close()
    except db.errors as e:
        msg = _one_line(e)
        if "sessions" in msg and ("no such table" in msg or "does not exist" in msg):
            raise UserError("--db: " + bridge_db.redact(url) + " has no sessions table (not a bridge database?)") from None
        raise UserError("--db: cannot read sessions from " + bridge_db.redact(url) + ": " + msg) from None
    for r in rows:
        _check_row(r)
    # Sorted here, not in SQL: PostgreSQL's text order depends on the collation.
    rows.sort(key=lambda r: (r["unplug"], str(r["station"]), _sid_key(r["session_id"])))
    return rows


def _label(r):
    return "session " + str(r.get("station")) + "/" + str(r.get("session_id"))


def _check_row(r):
    """Normalise one row's types; a row the bridge could not have written is a one-line error."""
    for k in ("connector", "plug_in", "unplug", "idle_s", "billed_min", "fee", "tariff_version"):
        if type(r[k]) is not int:
            raise UserError(_label(r) + ": " + k + " is " + repr(r[k]) + ", expected an integer")
    for k in ("first_charging", "charge_complete", "energy_wh", "billable_s", "fee_bridge", "received_at"):
        if r[k] is not None and type(r[k]) is not int:
            raise UserError(_label(r) + ": " + k + " is " + repr(r[k]) + ", expected an integer or NULL")
    for k in ("plug_in", "unplug", "first_charging", "charge_complete", "received_at"):
        if r[k] is not None and not 0 <= r[k] <= _MAX_INSTANT:
            raise UserError(_label(r) + ": " + k + " is " + str(r[k]) + ", not an instant in Unix seconds")
    if r["unplug"] < r["plug_in"]:
        raise UserError(_label(r) + ": unplug is before plug_in")
    for k in ("station", "site", "session_id", "currency", "tariff_id"):
        if r[k] is None:
            raise UserError(_label(r) + ": " + k + " is NULL")
    for k in ("fee_verified", "capped"):
        v = r[k]
        if v is not None:
            if v in (0, 1):  # 0/1 integers (a boolean column would do too)
                r[k] = int(v)
            else:
                raise UserError(_label(r) + ": " + k + " is " + repr(v) + ", expected 1, 0 or NULL")
    for k in ("minutes", "timeline"):
        v = r[k]
        if isinstance(v, (bytes, bytearray, memoryview)):
            v = bytes(v).decode("utf-8", "replace")
        if isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                raise UserError(_label(r) + ": " + k + " is not valid JSON") from None
        if v is None:
            v = []
        if not isinstance(v, list):
            raise UserError(_label(r) + ": " + k + " must be a JSON list")
        r[k] = v
    for i, m in enumerate(r["minutes"]):
        if not (isinstance(m, dict) and all(type(m.get(f)) is int and m[f] >= 0 for f in ("start", "count", "rate"))):
            raise UserError(_label(r) + ": minutes[" + str(i) + "] must be {start, count, rate} integers >= 0")
        if m["start"] > _MAX_INSTANT:
            raise UserError(_label(r) + ": minutes[" + str(i) + "].start is not an instant in Unix seconds")


# ---------------------------------------------------------------- CSV


def csv_row(r):
    out = []
    for c in CSV_COLUMNS:
        if c == "fee_major":
            v = major_text(r["fee"], r["currency"])
        elif c in ("plug_in", "charge_complete", "unplug", "first_charging"):
            v = iso(r[c])
        else:
            v = r[c]
        out.append("" if v is None else str(v))
    return out


def csv_text(rows):
    """RFC 4180 CSV: header line, CRLF line ends, quotes only where needed."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow(csv_row(r))
    return buf.getvalue()


# ---------------------------------------------------------------- OCPI


def ci36(text):
    """An OCPI CiString(36) for `text`: itself if it fits, else 'x' + 35 hex digits of its SHA-256."""
    if _CI36.match(text):
        return text
    return "x" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:35]


def ocpi_tariff_id(tariff_id, version):
    return ci36(str(tariff_id) + ":v" + str(version))


def charging_seconds(timeline, end):
    """Seconds in status Charging, from the stored timeline (the charging TIME dimension)."""
    total = 0
    since = None
    for ev in timeline:
        if not isinstance(ev, dict) or "status" not in ev or type(ev.get("t")) is not int:
            continue
        t = min(ev["t"], end)
        if since is not None:
            total += max(0, t - since)
            since = None
        if ev["status"] == "Charging":
            since = t
        if ev["status"] == "Available":
            break
    if since is not None:
        total += max(0, end - since)
    return total


def _evse_part(text):
    # eMI3 EVSE ids allow only letters, digits and '*'.
    return re.sub(r"[^A-Za-z0-9]", "", str(text)).upper() or "0"


def cdr_id(station, session_id):
    """CDR id: the session id when it starts with '<station>-' (the stall's own
    format, unique fleet-wide because station ids are), else '<station>/<session id>'
    (the bridge keeps session ids unique per station only); ci36() either way."""
    station, session_id = str(station), str(session_id)
    if session_id.startswith(station + "-"):
        return ci36(session_id)
    return ci36(station + "/" + session_id)


def cdr(r, country_code, party_id):
    """One session as an OCPI 2.2.1 CDR object (a dict in the spec's field order)."""
    station = str(r["station"])
    site = str(r["site"])
    ident = cdr_id(station, r["session_id"])
    tariff = ocpi_tariff_id(r["tariff_id"], r["tariff_version"])
    energy = kwh(r["energy_wh"] or 0)
    runs = sorted(r["minutes"], key=lambda m: m["start"])

    periods = [
        {
            "start_date_time": iso(r["plug_in"]),
            "dimensions": [
                {"type": "ENERGY", "volume": energy},
                {"type": "TIME", "volume": hours(charging_seconds(r["timeline"], r["unplug"]))},
            ],
            "tariff_id": tariff,
        }
    ]
    # One PARKING_TIME period per run of billed minutes. Volumes are the
    # differences of the rounded running total, so they add up exactly to
    # total_parking_time however many runs there are.
    cum = 0
    done = 0
    for m in runs:
        cum += m["count"]
        units = _scaled(cum, 60, HOUR_PLACES)
        dim = {"type": "PARKING_TIME", "volume": _dec(units - done, HOUR_PLACES)}
        done = units
        start = iso(m["start"])
        if start == periods[-1]["start_date_time"]:
            periods[-1]["dimensions"].append(dim)
        else:
            periods.append({"start_date_time": start, "dimensions": [dim], "tariff_id": tariff})

    fee = {"excl_vat": major(r["fee"], r["currency"])}
    out = {
        "country_code": country_code,
        "party_id": party_id,
        "id": ident,
        "start_date_time": iso(r["plug_in"]),
        "end_date_time": iso(r["unplug"]),
        "session_id": ident,
        "cdr_token": {
            "country_code": country_code,
            "party_id": party_id,
            "uid": TOKEN_PLACEHOLDER["uid"],
            "type": TOKEN_PLACEHOLDER["type"],
            "contract_id": TOKEN_PLACEHOLDER["contract_id"],
        },
        "auth_method": AUTH_METHOD,
        "cdr_location": {
            "id": ci36(site),
            "name": site,
            "address": LOCATION_PLACEHOLDER["address"],
            "city": LOCATION_PLACEHOLDER["city"],
            "country": LOCATION_PLACEHOLDER["country"],
            "coordinates": dict(LOCATION_PLACEHOLDER["coordinates"]),
            "evse_uid": ci36(station + "-" + str(r["connector"])),
            "evse_id": country_code + "*" + party_id + "*E" + _evse_part(station) + "*" + str(r["connector"]),
            "connector_id": str(r["connector"]),
            "connector_standard": LOCATION_PLACEHOLDER["connector_standard"],
            "connector_format": LOCATION_PLACEHOLDER["connector_format"],
            "connector_power_type": LOCATION_PLACEHOLDER["connector_power_type"],
        },
        "currency": r["currency"],
        "charging_periods": periods,
        "total_cost": dict(fee),
        "total_energy": energy,
        "total_time": hours(r["unplug"] - r["plug_in"]),
        "total_parking_time": _dec(done, HOUR_PLACES),
        "total_parking_cost": dict(fee),
    }
    if r["fee_verified"] == 0:
        reason = r["verify_reason"] or "no reason recorded"
        out["remark"] = ("idle fee not verified by the bridge: " + str(reason))[:255]
    elif r["fee_verified"] is None:
        out["remark"] = "idle fee not yet verified by the bridge"
    out["last_updated"] = iso(r["received_at"] if r["received_at"] is not None else r["unplug"])
    return out


def _json(v):
    """Compact JSON with Decimals written as exact numbers (json cannot)."""
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k) + ":" + _json(x) for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_json(x) for x in v) + "]"
    if isinstance(v, Decimal):
        return format(v, "f")
    return json.dumps(v)


def ocpi_text(rows, country_code, party_id):
    """A JSON array of CDRs, one CDR per line."""
    if not rows:
        return "[]\n"
    return "[\n" + ",\n".join(_json(cdr(r, country_code, party_id)) for r in rows) + "\n]\n"


# ---------------------------------------------------------------- output


def write_output(text, out):
    data = text.encode("utf-8")
    if out is None or out == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    if os.path.isdir(out):
        raise UserError("--out: is a directory: " + out)
    folder = os.path.dirname(out) or "."
    if not os.path.isdir(folder):
        raise UserError("--out: no such directory: " + folder)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".overstay-export-", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
        tmp = None
    except PermissionError:
        raise UserError("--out: permission denied: " + out) from None
    except OSError as e:
        raise UserError("--out: cannot write " + out + ": " + (e.strerror or str(e))) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


# ---------------------------------------------------------------- command


def _ocpi_owner(args):
    if args.fmt != "ocpi":
        if args.party_id is not None or args.country_code is not None:
            raise UserError("export: --party-id and --country-code apply only to --format ocpi")
        return None, None
    if args.party_id is None or args.country_code is None:
        raise UserError("export: --format ocpi needs --party-id and --country-code (the CPO that owns the CDRs)")
    cc = args.country_code.upper()
    if not re.fullmatch(r"[A-Z]{2}", cc):
        raise UserError("--country-code: expected two letters (ISO 3166-1 alpha-2), got " + repr(args.country_code))
    pid = args.party_id.upper()
    if not re.fullmatch(r"[A-Z0-9]{3}", pid):
        raise UserError("--party-id: expected three letters or digits, got " + repr(args.party_id))
    return cc, pid


def run(args):
    if args.fmt not in FORMATS:
        raise UserError("--format: expected csv or ocpi, got " + repr(args.fmt))
    cc, pid = _ocpi_owner(args)
    since = None if args.since is None else parse_instant(args.since, "--since")
    until = None if args.until is None else parse_instant(args.until, "--until")
    if since is not None and until is not None and since > until:
        raise UserError("--since is after --until")
    rows = read_sessions(args.db, since, until)
    if args.fmt == "csv":
        text = csv_text(rows)
    else:
        text = ocpi_text(rows, cc, pid)
    write_output(text, args.out)
    return 0
