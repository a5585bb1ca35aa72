# Tests for host_tools/bridge/db.py: URLs, the dialect layer and versioned migrations on SQLite and PostgreSQL.
import sqlite3

import pytest

from host_tools.bridge import db as dbmod
from host_tools.errors import UserError
from tests.bridge_helpers import pg_database, pg_url, sqlite_url  # noqa: F401 - fixtures

# Columns the exports engineer reads (host_tools/export.py): names are a contract.
EXPORT_COLUMNS = {
    "station", "connector", "session_id", "plug_in", "first_charging", "charge_complete", "unplug", "energy_wh",
    "idle_s", "billable_s", "billed_min", "fee", "fee_bridge", "fee_verified", "verify_reason", "currency",
    "tariff_id", "tariff_version", "synced", "minutes", "timeline", "received_at",
}
TABLES = {
    "sites", "stations", "station_keys", "audit", "events", "sessions", "connector_states", "rejects",
    "quarantine", "seq_gaps", "tariffs", "occupancy_history", "schema_migrations",
}


def _columns(db, table):
    with db.tx():
        if db.is_pg:
            return {r[0] for r in db.all("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))}
        return {r[1] for r in db.all("PRAGMA table_info(%s)" % table)}


def _tables(db):
    with db.tx():
        if db.is_pg:
            return {r[0] for r in db.all("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        return {r[0] for r in db.all("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_sqlite_url_convention(tmp_path):
    assert dbmod.sqlite_path("sqlite:///rel/x.db") == "rel/x.db"
    assert dbmod.sqlite_path("sqlite:////abs/x.db") == "/abs/x.db"
    with pytest.raises(UserError):
        dbmod.connect("mysql://x")
    with pytest.raises(UserError, match="folder does not exist"):
        dbmod.connect(sqlite_url(tmp_path / "nope" / "x.db"))
    assert dbmod.redact("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


def test_sqlite_migrations_are_versioned_and_idempotent(tmp_path):
    url = sqlite_url(tmp_path / "b.db")
    db = dbmod.connect(url)
    assert dbmod.schema_version(db) == 0
    assert dbmod.migrate(db) == [dbmod.LATEST]
    assert dbmod.migrate(db) == []
    assert dbmod.schema_version(db) == dbmod.LATEST
    assert TABLES <= _tables(db)
    assert EXPORT_COLUMNS <= _columns(db, "sessions")
    db.close()
    # Another tool opens it with open_db: nothing to do, same version.
    db = dbmod.open_db(url)
    assert dbmod.schema_version(db) == dbmod.LATEST
    db.close()
    # A newer schema than this code knows is refused, not "migrated".
    c = sqlite3.connect(str(tmp_path / "b.db"))
    c.execute("INSERT INTO schema_migrations VALUES (999, 'future', 0)")
    c.commit()
    c.close()
    with pytest.raises(UserError, match="newer than this overstay"):
        dbmod.open_db(url)


def test_postgres_migrations(pg_url):  # noqa: F811
    db = dbmod.open_db(pg_url)
    try:
        assert dbmod.schema_version(db) == dbmod.LATEST
        assert dbmod.migrate(db) == []
        assert TABLES <= _tables(db)
        assert EXPORT_COLUMNS <= _columns(db, "sessions")
    finally:
        db.close()


def test_transactions_roll_back_on_error(tmp_path):
    db = dbmod.open_db(sqlite_url(tmp_path / "b.db"))
    with pytest.raises(RuntimeError):
        with db.tx():
            db.execute("INSERT INTO sites (site, site_key, created_at) VALUES (?, ?, ?)", ("s1", b"k" * 32, 1))
            raise RuntimeError("boom")
    with db.tx():
        assert db.one("SELECT COUNT(*) FROM sites")[0] == 0
    db.close()


def test_sqlite_writer_waits_for_another_writer_then_times_out(tmp_path):
    # tx() polls for the write lock itself (every 0.2 to 2 ms: SQLite's own
    # busy handler sleeps up to 100 ms between tries) until the timeout.
    import threading
    import time

    url = sqlite_url(tmp_path / "w.db")
    a, b = dbmod.open_db(url), dbmod.connect(url, timeout=0.5)
    try:
        a.conn.execute("BEGIN IMMEDIATE")
        threading.Timer(0.03, lambda: a.conn.execute("COMMIT")).start()
        t0 = time.monotonic()
        with b.tx():
            pass
        assert 0.025 < time.monotonic() - t0 < 0.4
        a.conn.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        with pytest.raises(sqlite3.OperationalError):
            with b.tx():
                pass
        assert time.monotonic() - t0 >= 0.45
        a.conn.execute("COMMIT")
        assert b.one("PRAGMA busy_timeout")[0] == 500  # restored for everything else
        # A read transaction never takes the write lock.
        a.conn.execute("BEGIN IMMEDIATE")
        with b.read_tx():
            assert b.one("SELECT COUNT(*) FROM stations")[0] == 0
        a.conn.execute("COMMIT")
    finally:
        a.close()
        b.close()
