# Tests for host_tools/export.py: `overstay export` as CSV and OCPI 2.2.1 CDRs, its filters, exact money and one-line errors.
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import urllib.parse
import uuid
from decimal import Decimal

import pytest

from host_tools import export
from host_tools.bridge import db as bridge_db
from host_tools.cli import main
from protocol.session import Session

T = 1795366800  # 2026-11-22T17:00:00Z
NOV1 = 1793491200  # 2026-11-01T00:00:00Z
DEC1 = 1796083200  # 2026-12-01T00:00:00Z

def record(station, connector, sid, tariff, events, occupancy=None, energy=None, charge_complete=None):
    """A session record made by the real accountant and fee engine, as the stall would send it."""
    (t0, status), rest = events[0], events[1:]
    s = Session(sid, station, connector, tariff, t0, status, occupancy)
    for t, what in rest:
        if isinstance(what, int):
            s.add_occupancy(t, what)
        else:
            s.add_status(t, what)
    if charge_complete is not None:
        s.mark_charge_complete(charge_complete)
    if energy is not None:
        s.set_energy(energy)
    return s.record()


_N = [0]


def row(rec, verified, reason=None, fee_bridge=None, received_at=None, site="lot-a"):
    """The sessions-table row the bridge stores for a record."""
    _N[0] += 1
    r = {k: rec[k] for k in export.DB_COLUMNS if k in rec}
    r["site"] = site
    r["n"] = _N[0]
    r["capped"] = int(rec["capped"])
    r["body_digest"] = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).digest()
    r["fee_bridge"] = rec["fee"] if fee_bridge is None else fee_bridge
    r["fee_verified"] = verified
    r["verify_reason"] = reason
    r["synced"] = 1
    r["minutes"] = json.dumps(rec["minutes"])
    r["timeline"] = json.dumps(rec["timeline"])
    r["received_at"] = rec["unplug"] + 2 if received_at is None else received_at
    return r


USD = {"id": "T-USD", "version": 3, "currency": "USD", "rate": 50, "grace_s": 300}
JPY = {"id": "J,1", "version": 1, "currency": "JPY", "rate": 12345, "grace_s": 0}
BHD = {
    "id": "B",
    "version": 2,
    "currency": "BHD",
    "rate": 0,
    "grace_s": 0,
    "tiers": [{"min_occupancy_pct": 0, "rate": 400}, {"min_occupancy_pct": 50, "rate": 417}],
}
USD_MIN = {"id": "T-USD", "version": 4, "currency": "USD", "rate": 12345, "grace_s": 0}

# A: 55 billed minutes at 50 cents; unplug at T.
A = row(
    record(
        "st-01", 1, "st-01-1795352400", USD,
        [(T - 14400, "Preparing"), (T - 14390, "Charging"), (T - 3600, "SuspendedEV"), (T, "Available")],
        energy=21450, charge_complete=T - 3600,
    ),
    1,
)  # fmt: skip
# B: 12345 JPY (no minor unit), same unplug as A, fee disagreement with quotes and commas in the reason.
B = row(
    record("st-00", 2, "st-00-1795365000", JPY, [(T - 1800, "Charging"), (T - 90, "SuspendedEV"), (T, "Available")], energy=5000),
    0,
    reason='bridge priced 12000, stall 12345; "check"',
    fee_bridge=12000,
)
# C: three one-minute runs at alternating tier rates in BHD (3 decimals), idle from plug-in, not yet verified.
C = row(
    record(
        "st-02", 1, "st-02-1795370400", BHD,
        [(T + 3600, "SuspendedEV"), (T + 3660, 60), (T + 3720, 10), (T + 3780, "Available")],
        occupancy=10,
    ),
    None,
    site="lot-b",
)  # fmt: skip
# D: 12345 US cents, unplugged exactly at 2026-12-01T00:00:00Z.
D = row(record("st-01", 2, "st-01-1796083080", USD_MIN, [(DEC1 - 120, "Preparing"), (DEC1 - 60, "SuspendedEV"), (DEC1, "Available")]), 1)
# E: no idle fee at all, one second before November.
E = row(record("st-03", 1, "st-03-1793487600", USD, [(NOV1 - 3600, "Charging"), (NOV1 - 1, "Available")], energy=7), 1)
ALL = [A, B, C, D, E]


def make_db(url, rows):
    """A bridge database made by the bridge's own migrations, holding rows."""
    db = bridge_db.open_db(url)
    try:
        with db.tx():
            for r in rows:
                cols = list(r)
                db.execute("INSERT INTO sessions (" + ", ".join(cols) + ") VALUES (" + ", ".join(["?"] * len(cols)) + ")", [r[c] for c in cols])
    finally:
        db.close()
    return url


def make_sqlite(path, rows):
    return make_db("sqlite:///" + str(path), rows)


@pytest.fixture
def db(tmp_path):
    return make_sqlite(tmp_path / "bridge.db", ALL)


def run(*args, capsys):
    code = main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *args):
    code, out, err = run(*args, capsys=capsys)
    assert code == 0, err
    assert err == ""
    return out


def fail(capsys, *args):
    code, out, err = run(*args, capsys=capsys)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("overstay: error: ")
    return lines[0]


def cdrs(text):
    return json.loads(text, parse_float=Decimal)


OCPI = ("--format", "ocpi", "--party-id", "ovs", "--country-code", "nl")

# ---------------------------------------------------------------- CSV

HEADER = (
    "station,connector,session_id,plug_in,charge_complete,unplug,idle_s,billed_min,fee,fee_major,currency,"
    "tariff_id,tariff_version,fee_verified,first_charging,energy_wh,billable_s,fee_bridge,verify_reason,site,capped\r\n"
)
CSV_E = "st-03,1,st-03-1793487600,2026-10-31T23:00:00Z,,2026-10-31T23:59:59Z,0,0,0,0.00,USD,T-USD,3,1,2026-10-31T23:00:00Z,7,0,0,,lot-a,0\r\n"
CSV_B = (
    'st-00,2,st-00-1795365000,2026-11-22T16:30:00Z,,2026-11-22T17:00:00Z,90,1,12345,12345,JPY,"J,1",1,0,'
    '2026-11-22T16:30:00Z,5000,90,12000,"bridge priced 12000, stall 12345; ""check""",lot-a,0\r\n'
)
CSV_A = (
    "st-01,1,st-01-1795352400,2026-11-22T13:00:00Z,2026-11-22T16:00:00Z,2026-11-22T17:00:00Z,3600,55,2750,27.50,USD,"
    "T-USD,3,1,2026-11-22T13:00:10Z,21450,3300,2750,,lot-a,0\r\n"
)
CSV_C = "st-02,1,st-02-1795370400,2026-11-22T18:00:00Z,,2026-11-22T18:03:00Z,180,3,1217,1.217,BHD,B,2,,,,180,1217,,lot-b,0\r\n"
CSV_D = (
    "st-01,2,st-01-1796083080,2026-11-30T23:58:00Z,,2026-12-01T00:00:00Z,60,1,12345,123.45,USD,T-USD,4,1,,,60,12345,,lot-a,0\r\n"
)


def test_csv_exact_content_open_range(db, capsys):
    assert ok(capsys, "--db", db, "--format", "csv") == HEADER + CSV_E + CSV_B + CSV_A + CSV_C + CSV_D


def test_csv_parses_back_with_quoting(db, capsys):
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(ok(capsys, "--db", db, "--format", "csv"), newline="")))
    b = rows[1]
    assert b["tariff_id"] == "J,1"
    assert b["verify_reason"] == 'bridge priced 12000, stall 12345; "check"'
    assert [r["fee_major"] for r in rows] == ["0.00", "12345", "27.50", "1.217", "123.45"]


def test_csv_empty_range_is_header_only(db, capsys):
    assert ok(capsys, "--db", db, "--format", "csv", "--since", "2030-01-01") == HEADER


# ---------------------------------------------------------------- time filters


def _ids(text):
    return [line.split(",")[2] for line in text.splitlines()[1:]]


@pytest.mark.parametrize(
    "flags, expect",
    [
        (("--since", "2026-11-01", "--until", "2026-12-01"), ["st-00-1795365000", "st-01-1795352400", "st-02-1795370400"]),
        (("--since", str(NOV1), "--until", str(DEC1)), ["st-00-1795365000", "st-01-1795352400", "st-02-1795370400"]),
        (("--since", "2026-12-01T00:00:00Z",), ["st-01-1796083080"]),  # since is inclusive
        (("--until", "2026-11-01T00:00:00+00:00",), ["st-03-1793487600"]),  # until is exclusive
        (("--until", "2026-11-01T01:00:00+01:00",), ["st-03-1793487600"]),  # offsets are honoured
        (("--since", "2026-11-22T17:00:00", "--until", "2026-11-22T17:00:01"), ["st-00-1795365000", "st-01-1795352400"]),
        (("--since", "2026-11-22T16:59:59.500Z", "--until", str(T)), []),  # fractions round up
        (("--since", str(T), "--until", str(T)), []),
    ],
)  # fmt: skip
def test_time_filters(db, capsys, flags, expect):
    assert _ids(ok(capsys, "--db", db, "--format", "csv", *flags)) == expect


def test_parse_instant_forms():
    p = export.parse_instant
    assert p("1795366800", "--since") == T
    assert p("2026-11-22T17:00:00Z", "--since") == T
    assert p("2026-11-22T17:00:00z", "--since") == T
    assert p("2026-11-22T18:00:00+01:00", "--since") == T
    assert p("2026-11-22 17:00", "--since") == T
    assert p("2026-11-22", "--since") == T - 17 * 3600
    assert p("2026-11-22T16:59:59.001Z", "--since") == T


# ---------------------------------------------------------------- money


@pytest.mark.parametrize(
    "minor, cur, text",
    [
        (12345, "JPY", "12345"),
        (12345, "USD", "123.45"),
        (12345, "BHD", "12.345"),
        (12345, "CLF", "1.2345"),
        (500, "USD", "5.00"),
        (5, "EUR", "0.05"),
        (0, "USD", "0.00"),
        (0, "KRW", "0"),
        (7, "KWD", "0.007"),
        (-150, "USD", "-1.50"),
        (10**20 + 1, "USD", "1000000000000000000.01"),
    ],
)
def test_major_units_exact(minor, cur, text):
    assert export.major_text(minor, cur) == text
    assert export.major(minor, cur) == Decimal(text)
    assert export.major(minor, cur).scaleb(export.minor_exponent(cur)) == minor


# ---------------------------------------------------------------- OCPI

REQUIRED = (
    "country_code", "party_id", "id", "start_date_time", "end_date_time", "cdr_token", "auth_method",
    "cdr_location", "currency", "charging_periods", "total_cost", "total_energy", "total_time", "last_updated",
)  # fmt: skip
TOKEN = ("country_code", "party_id", "uid", "type", "contract_id")
LOCATION = (
    "id", "address", "city", "country", "coordinates", "evse_uid", "evse_id", "connector_id",
    "connector_standard", "connector_format", "connector_power_type",
)  # fmt: skip


def test_ocpi_structure(db, capsys):
    text = ok(capsys, "--db", db, *OCPI)
    assert text.startswith("[\n") and text.endswith("\n]\n")
    out = cdrs(text)
    assert [c["id"] for c in out] == ["st-03-1793487600", "st-00-1795365000", "st-01-1795352400", "st-02-1795370400", "st-01-1796083080"]
    for c, r in zip(out, [E, B, A, C, D]):
        for k in REQUIRED:
            assert k in c, k
        for k in TOKEN:
            assert isinstance(c["cdr_token"][k], str) and c["cdr_token"][k], k
        for k in LOCATION:
            assert k in c["cdr_location"], k
        assert (c["country_code"], c["party_id"]) == ("NL", "OVS")
        assert c["cdr_token"]["type"] in ("AD_HOC_USER", "APP_USER", "OTHER", "RFID")
        assert c["auth_method"] in ("AUTH_REQUEST", "COMMAND", "WHITELIST")
        assert c["session_id"] == r["session_id"]
        assert c["currency"] == r["currency"]
        assert c["start_date_time"] == export.iso(r["plug_in"])
        assert c["end_date_time"] == export.iso(r["unplug"])
        assert c["last_updated"] == export.iso(r["unplug"] + 2)
        assert c["cdr_location"]["id"] == c["cdr_location"]["name"] == r["site"]
        assert c["cdr_location"]["evse_uid"] == r["station"] + "-" + str(r["connector"])
        assert c["cdr_location"]["connector_id"] == str(r["connector"])
        assert c["cdr_location"]["evse_id"].startswith("NL*OVS*E")
        assert set(c["cdr_location"]["coordinates"]) == {"latitude", "longitude"}

        periods = c["charging_periods"]
        assert periods, "OCPI requires at least one charging period"
        assert periods[0]["start_date_time"] == c["start_date_time"]
        starts = [p["start_date_time"] for p in periods]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)
        want_tariff = r["tariff_id"] + ":v" + str(r["tariff_version"])
        assert all(p["tariff_id"] == want_tariff for p in periods)
        dims = [d for p in periods for d in p["dimensions"]]
        assert all(d["type"] in ("ENERGY", "TIME", "PARKING_TIME") for d in dims)
        parking = [(p["start_date_time"], d["volume"]) for p in periods for d in p["dimensions"] if d["type"] == "PARKING_TIME"]
        runs = json.loads(r["minutes"])
        # One PARKING_TIME dimension per run of billed minutes, starting at the run's start.
        assert [s for s, _ in parking] == [export.iso(m["start"]) for m in runs]
        assert sum((v for _, v in parking), Decimal(0)) == c["total_parking_time"]
        assert c["total_parking_time"] == (Decimal(r["billed_min"]) / 60).quantize(Decimal("0.000001"))
        energy = [d["volume"] for d in dims if d["type"] == "ENERGY"]
        assert sum(energy, Decimal(0)) == c["total_energy"] == Decimal(r["energy_wh"] or 0) / 1000
        assert c["total_time"] == (Decimal(r["unplug"] - r["plug_in"]) / 3600).quantize(Decimal("0.000001"))

        fee = Decimal(r["fee"]).scaleb(-export.minor_exponent(r["currency"]))
        assert c["total_parking_cost"] == c["total_cost"] == {"excl_vat": fee}


def test_ocpi_money_is_exact_text(db, capsys):
    out = cdrs(ok(capsys, "--db", db, *OCPI))
    by_id = {c["id"]: c for c in out}
    assert by_id["st-00-1795365000"]["total_cost"]["excl_vat"] == 12345 and isinstance(by_id["st-00-1795365000"]["total_cost"]["excl_vat"], int)
    assert by_id["st-01-1796083080"]["total_parking_cost"]["excl_vat"] == Decimal("123.45")
    assert by_id["st-02-1795370400"]["total_cost"]["excl_vat"] == Decimal("1.217")
    assert by_id["st-01-1795352400"]["total_cost"]["excl_vat"] == Decimal("27.50")
    assert by_id["st-03-1793487600"]["total_cost"]["excl_vat"] == Decimal("0.00")
    # On the wire: numbers written from the integers, never through a float.
    text = ok(capsys, "--db", db, *OCPI)
    assert '"total_parking_cost":{"excl_vat":12345}' in text
    assert '"total_parking_cost":{"excl_vat":123.45}' in text
    assert '"total_parking_cost":{"excl_vat":1.217}' in text
    assert '"total_parking_cost":{"excl_vat":27.50}' in text


def test_ocpi_parking_periods_add_up_exactly(db, capsys):
    c = cdrs(ok(capsys, "--db", db, "--since", str(T + 1), "--until", str(DEC1), *OCPI))
    assert len(c) == 1
    c = c[0]
    # The first run starts at plug-in, so its PARKING_TIME joins the energy period.
    assert c["charging_periods"] == [
        {
            "start_date_time": "2026-11-22T18:00:00Z",
            "dimensions": [
                {"type": "ENERGY", "volume": 0},
                {"type": "TIME", "volume": 0},
                {"type": "PARKING_TIME", "volume": Decimal("0.016667")},
            ],
            "tariff_id": "B:v2",
        },
        {"start_date_time": "2026-11-22T18:01:00Z", "dimensions": [{"type": "PARKING_TIME", "volume": Decimal("0.016666")}], "tariff_id": "B:v2"},
        {"start_date_time": "2026-11-22T18:02:00Z", "dimensions": [{"type": "PARKING_TIME", "volume": Decimal("0.016667")}], "tariff_id": "B:v2"},
    ]
    assert c["total_parking_time"] == Decimal("0.05")
    assert c["remark"] == "idle fee not yet verified by the bridge"


def test_ocpi_session_a_values(db, capsys):
    c = [x for x in cdrs(ok(capsys, "--db", db, *OCPI)) if x["id"] == "st-01-1795352400"][0]
    assert c["total_energy"] == Decimal("21.45")
    assert c["total_time"] == 4
    assert c["total_parking_time"] == Decimal("0.916667")  # 55 min
    assert c["charging_periods"][0]["dimensions"] == [{"type": "ENERGY", "volume": Decimal("21.45")}, {"type": "TIME", "volume": Decimal("2.997222")}]
    assert c["charging_periods"][1] == {
        "start_date_time": "2026-11-22T16:05:00Z",
        "dimensions": [{"type": "PARKING_TIME", "volume": Decimal("0.916667")}],
        "tariff_id": "T-USD:v3",
    }
    assert "remark" not in c


def test_ocpi_unverified_fee_has_remark(db, capsys):
    c = [x for x in cdrs(ok(capsys, "--db", db, *OCPI)) if x["id"] == "st-00-1795365000"][0]
    assert c["remark"] == 'idle fee not verified by the bridge: bridge priced 12000, stall 12345; "check"'
    assert c["charging_periods"][-1]["tariff_id"] == "J,1:v1"


def test_ocpi_empty_is_empty_array(db, capsys):
    assert ok(capsys, "--db", db, "--since", "2030-01-01", *OCPI) == "[]\n"


def test_output_is_deterministic(db, tmp_path, capsys):
    # Same rows inserted in another order give the same bytes.
    other = make_sqlite(tmp_path / "other.db", list(reversed(ALL)))
    for fmt in (("--format", "csv"), OCPI):
        assert ok(capsys, "--db", db, *fmt) == ok(capsys, "--db", other, *fmt)


def test_cdr_id_is_unique_fleet_wide():
    assert export.cdr_id("st-01", "st-01-1795352400") == "st-01-1795352400"
    # The bridge keeps session ids unique per station only: other forms get the station in front.
    assert export.cdr_id("st-01", "42") == "st-01/42"
    assert export.cdr_id("st-02", "42") == "st-02/42"


def test_long_ids_fit_ocpi_cistring():
    long = "s" * 32 + "-1795352400"
    assert len(long) > 36
    got = export.ci36(long)
    assert len(got) == 36 and got == "x" + hashlib.sha256(long.encode()).hexdigest()[:35]
    assert export.ci36("st-01-1") == "st-01-1"
    assert len(export.ocpi_tariff_id("t" * 40, 1)) == 36


def test_out_file_matches_stdout(db, tmp_path, capsys):
    target = tmp_path / "cdrs.json"
    assert ok(capsys, "--db", db, *OCPI, "--out", str(target)) == ""
    assert target.read_text() == ok(capsys, "--db", db, *OCPI)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".overstay-export-")] == []


# ---------------------------------------------------------------- the database is only read


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_database_is_not_modified(db, tmp_path, capsys):
    path = tmp_path / "bridge.db"
    before = (_digest(path), os.stat(path).st_mtime_ns)
    ok(capsys, "--db", db, "--format", "csv")
    ok(capsys, "--db", db, *OCPI)
    assert (_digest(path), os.stat(path).st_mtime_ns) == before
    # A read-only reader of a WAL database may leave SQLite's (empty) companion files, nothing else.
    extra = {p.name for p in tmp_path.iterdir()} - {"bridge.db"}
    assert extra <= {"bridge.db-wal", "bridge.db-shm"}
    if (tmp_path / "bridge.db-wal").exists():
        assert (tmp_path / "bridge.db-wal").stat().st_size == 0


def test_sqlite_connection_refuses_writes(db):
    conn = export.open_readonly(db)
    with pytest.raises(conn.errors):
        conn.execute("DELETE FROM sessions")
    conn.close()
    assert len(export.read_sessions(db)) == len(ALL)


def test_reads_beside_a_live_writer(db, capsys):
    # The bridge keeps its connection open (WAL); an export sees every committed session.
    writer = bridge_db.connect(db)
    try:
        with writer.tx():
            writer.execute("UPDATE sessions SET verify_reason = ? WHERE session_id = ?", ("rechecked", A["session_id"]))
        out = ok(capsys, "--db", db, "--format", "csv")
    finally:
        writer.close()
    assert ",2750,rechecked,lot-a,0\r\n" in out


# ---------------------------------------------------------------- errors


def test_missing_database_file(tmp_path, capsys):
    line = fail(capsys, "--db", "sqlite:///" + str(tmp_path / "nope.db"), "--format", "csv")
    assert "no such database file" in line
    assert not (tmp_path / "nope.db").exists()


def test_not_a_database(tmp_path, capsys):
    bad = tmp_path / "junk.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    assert "cannot" in fail(capsys, "--db", "sqlite:///" + str(bad), "--format", "csv")


def test_no_sessions_table(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    sqlite3.connect(str(empty)).execute("CREATE TABLE other (x)").connection.close()
    assert "no sessions table" in fail(capsys, "--db", "sqlite:///" + str(empty), "--format", "csv")


def test_unreachable_postgres(capsys):
    line = fail(capsys, "--db", "postgresql://user:secret@127.0.0.1:1/overstay", "--format", "csv")
    assert "cannot connect" in line and "secret" not in line


@pytest.mark.parametrize(
    "args, words",
    [
        (("--format", "xml"), "--format"),
        (("--format", "csv", "--since", "yesterday"), "--since"),
        (("--format", "csv", "--until", "2026-13-01"), "--until"),
        (("--format", "csv", "--since", "-5"), "--since"),
        (("--format", "csv", "--since", "2026-12-01", "--until", "2026-11-01"), "after --until"),
        (("--format", "ocpi",), "--party-id"),
        (("--format", "ocpi", "--party-id", "TOOLONG", "--country-code", "NL"), "--party-id"),
        (("--format", "ocpi", "--party-id", "OVS", "--country-code", "NLD"), "--country-code"),
        (("--format", "csv", "--party-id", "OVS"), "only"),
        (("--format", "csv", "--bogus"), "unrecognized"),
    ],
)  # fmt: skip
def test_flag_errors(db, capsys, args, words):
    assert words in fail(capsys, "--db", db, *args)


def test_bad_db_url(capsys):
    assert "unsupported URL" in fail(capsys, "--db", "mysql://x/y", "--format", "csv")
    assert "sqlite:///PATH" in fail(capsys, "--db", "sqlite://", "--format", "csv")


def test_unwritable_out(db, tmp_path, capsys):
    assert "no such directory" in fail(capsys, "--db", db, "--format", "csv", "--out", str(tmp_path / "missing" / "x.csv"))
    assert "is a directory" in fail(capsys, "--db", db, "--format", "csv", "--out", str(tmp_path))
    blocker = tmp_path / "file"
    blocker.write_text("")
    fail(capsys, "--db", db, "--format", "csv", "--out", str(blocker / "x.csv"))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"minutes": "[not json"}, "minutes is not valid JSON"),
        ({"minutes": '[{"start": 1, "count": -1, "rate": 5}]'}, "minutes[0]"),
        ({"unplug": A["unplug"] * 1000}, "unplug is"),  # milliseconds by mistake
        ({"plug_in": A["unplug"] + 1}, "before plug_in"),
    ],
)
def test_corrupt_row_is_one_line(tmp_path, capsys, change, words):
    url = make_sqlite(tmp_path / "bad.db", [dict(A, **change)])
    assert words in fail(capsys, "--db", url, *OCPI)


def test_cli_error_has_no_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "host_tools.cli", "export", "--db", "sqlite:///" + str(tmp_path / "x.db"), "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


# ---------------------------------------------------------------- PostgreSQL


def _pg_admin():
    try:
        import psycopg
    except ImportError:
        return None, "psycopg is not installed"
    url = os.environ.get("OVERSTAY_TEST_PG", "postgresql://localhost/")
    try:
        conn = psycopg.connect(url, connect_timeout=3, autocommit=True)
    except psycopg.Error as e:
        return None, "no PostgreSQL server at " + url + ": " + str(e).strip().splitlines()[0]
    return conn, url


@pytest.fixture
def pg_url():
    admin, info = _pg_admin()
    if admin is None:
        pytest.skip(info)
    import psycopg
    from psycopg import sql

    name = "overstay_export_" + uuid.uuid4().hex[:12]
    try:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as e:
        admin.close()
        pytest.skip("cannot create a test database on " + info + ": " + str(e).strip().splitlines()[0])
    url = urllib.parse.urlunsplit(urllib.parse.urlsplit(info)._replace(path="/" + name))
    try:
        yield url
    finally:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def test_postgres_matches_sqlite(pg_url, db, capsys):
    make_db(pg_url, ALL)
    for fmt in (("--format", "csv"), OCPI):
        assert ok(capsys, "--db", pg_url, *fmt) == ok(capsys, "--db", db, *fmt)
    assert ok(capsys, "--db", pg_url, "--format", "csv", "--since", "2026-11-01", "--until", "2026-12-01") == HEADER + CSV_B + CSV_A + CSV_C


def test_postgres_connection_refuses_writes(pg_url):
    make_db(pg_url, ALL)
    db = export.open_readonly(pg_url)
    with pytest.raises(db.errors):
        db.execute("DELETE FROM sessions")
    db.close()
    assert len(export.read_sessions(pg_url)) == len(ALL)
