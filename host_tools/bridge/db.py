# Bridge database: one URL for SQLite or PostgreSQL, a thin dialect layer, and the versioned schema migrations.
#
# Other tools open the bridge database through here: `connect(url)` gives a
# Database (a DB-API connection plus its dialect), `open_db(url)` also runs
# the migrations. SQL in this package is written once with `?` placeholders;
# Database.sql() turns them into `%s` for psycopg. Instants are integer Unix
# seconds, money integer minor units, booleans 0/1 integers, JSON as text.
import os
import sqlite3
import time
import urllib.parse

from host_tools.errors import UserError

SQLITE = "sqlite"
POSTGRES = "postgresql"

# A fixed key for pg_advisory_xact_lock while migrating (several bridges may start at once).
_MIGRATE_LOCK = 0x6F767273  # "ovrs"


class DatabaseError(Exception):
    """The database refused or failed (not the user's mistake)."""


def redact(url):
    """The URL with any password replaced, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc[0].split(":", 1)[0] + ":***@" + netloc[1]))


def sqlite_path(url):
    """sqlite:///rel/path -> rel/path, sqlite:////abs/path -> /abs/path (the SQLAlchemy convention)."""
    if not url.startswith("sqlite:///"):
        raise UserError("--db: give a database file, sqlite:///PATH (relative) or sqlite:////PATH (absolute)")
    path = urllib.parse.unquote(url[len("sqlite:///") :].split("?", 1)[0])
    if not path:
        raise UserError("--db: sqlite URL without a file path")
    return path


class Database:
    """A DB-API connection and its dialect ("sqlite" or "postgresql").

    One Database per thread. `tx()` is the unit of work: a context manager
    that begins a transaction (SQLite: BEGIN IMMEDIATE, so the writer owns
    the file for the batch), commits on success and rolls back on error."""

    def __init__(self, conn, dialect, url, timeout=10.0):
        self.conn = conn
        self.dialect = dialect
        self.url = url
        self.timeout = timeout  # SQLite: how long tx() waits for another writer
        self.errors = (sqlite3.Error,) if dialect == SQLITE else _pg_errors()

    def is_permanent(self, err):
        """True when retrying cannot help: the data itself is refused (a value
        out of range, a constraint), as opposed to a lost connection or a lock."""
        if self.dialect == SQLITE:
            return isinstance(err, (sqlite3.IntegrityError, sqlite3.DataError))
        import psycopg

        return isinstance(err, (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError))

    @property
    def is_pg(self):
        return self.dialect == POSTGRES

    def sql(self, text):
        return text if self.dialect == SQLITE else text.replace("?", "%s")

    def execute(self, text, params=()):
        cur = self.conn.cursor()
        cur.execute(self.sql(text), params)
        return cur

    def executemany(self, text, rows):
        if not rows:
            return
        cur = self.conn.cursor()
        cur.executemany(self.sql(text), rows)

    def insert_many(self, table, columns, pg_types, rows, tail="ON CONFLICT DO NOTHING", returning=None):
        """Insert rows (tuples in `columns` order) in one statement per call.

        SQLite: executemany. PostgreSQL: one INSERT ... SELECT FROM
        unnest(%b::type1[], ...) with binary parameters (psycopg's text escaping of
        large bytea arrays costs more than the insert itself). `tail` is the
        ON CONFLICT clause; `returning` (PostgreSQL only) names columns to
        return, and the returned rows are the result (else [])."""
        if not rows:
            return []
        cols = ", ".join(columns)
        if self.dialect == SQLITE:
            self.conn.executemany(
                "INSERT INTO %s (%s) VALUES (%s) %s" % (table, cols, ", ".join("?" * len(columns)), tail), rows
            )
            return []
        arrays = [list(c) for c in zip(*rows)]
        sql = "INSERT INTO %s (%s) SELECT * FROM unnest(%s) %s" % (
            table, cols, ", ".join("%%b::%s[]" % t for t in pg_types), tail,
        )
        if returning:
            sql += " RETURNING " + returning
        cur = self.conn.cursor()
        cur.execute(sql, arrays)
        return cur.fetchall() if returning else []

    def append_many(self, table, columns, pg_types, rows):
        """Insert rows that no other writer can hold: rows keyed by a
        (station, n) this transaction has just inserted into the audit
        ledger. SQLite: insert_many. PostgreSQL: COPY ... FROM STDIN in
        binary, the cheapest bulk path (a third of the server's and half of
        the client's time of the unnest INSERT for session rows). Without ON
        CONFLICT, a unique key another bridge filled meanwhile (a session id
        resent under another n) raises UniqueViolation: is_race() says so, and
        the batch is retried, which then classifies the row properly."""
        if not rows:
            return
        if self.dialect == SQLITE:
            self.insert_many(table, columns, pg_types, rows)
            return
        cur = self.conn.cursor()
        with cur.copy("COPY %s (%s) FROM STDIN (FORMAT BINARY)" % (table, ", ".join(columns))) as copy:
            copy.set_types([_COPY_TYPES.get(t, t) for t in pg_types])
            for r in rows:
                copy.write_row(r)

    def is_race(self, err):
        """True for a unique key filled by another writer since our lookup (PostgreSQL)."""
        if self.dialect == SQLITE:
            return False
        import psycopg

        return isinstance(err, psycopg.errors.UniqueViolation)

    def all(self, text, params=()):
        return self.execute(text, params).fetchall()

    def one(self, text, params=()):
        return self.execute(text, params).fetchone()

    def tx(self):
        return _Tx(self)

    def read_tx(self):
        """A transaction for reads only: one consistent snapshot without
        taking SQLite's write lock (a deferred BEGIN), so a writer is never
        held up by it. On PostgreSQL the same as tx()."""
        return _Tx(self, write=False)

    def close(self):
        try:
            self.conn.close()
        except Exception:  # closing a broken connection must not mask the real error
            pass


# SQL type names as psycopg's type registry knows them (COPY ... set_types).
_COPY_TYPES = {"bigint": "int8", "int": "int4", "integer": "int4"}


class _Tx:
    __slots__ = ("db", "write")

    def __init__(self, db, write=True):
        self.db = db
        self.write = write

    def __enter__(self):
        if self.db.dialect == SQLITE:
            if self.write:
                _begin_immediate(self.db)
            else:
                self.db.conn.execute("BEGIN")
        return self.db

    def __exit__(self, typ, exc, tb):
        conn = self.db.conn
        if typ is None:
            if self.db.dialect == SQLITE:
                conn.execute("COMMIT")
            else:
                conn.commit()
            return False
        try:
            if self.db.dialect == SQLITE:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            else:
                conn.rollback()
        except Exception:  # the connection may be gone; the original error matters
            pass
        return False


def _begin_immediate(db):
    # In WAL mode readers never wait and writers wait only for each other,
    # here. SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25,
    # 50, 50, 100 ms between tries, so a writer held off for 20 ms gets the
    # lock after 33 ms: the bridge's writer and its housekeeping would add
    # those steps to the ack latency. So: no busy handler for BEGIN, and a
    # retry every 0.2 to 2 ms until the connection's timeout.
    conn = db.conn
    conn.execute("PRAGMA busy_timeout=0")
    try:
        deadline = None
        pause = 0.0002
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + db.timeout
                elif now >= deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
    finally:
        conn.execute("PRAGMA busy_timeout=%d" % int(db.timeout * 1000))


def _pg_errors():
    import psycopg

    return (psycopg.Error,)


def connect(url, timeout=10.0):
    """Open the bridge database named by url, without migrating. Raises UserError."""
    if not isinstance(url, str) or not url:
        raise UserError("--db: give sqlite:///PATH or postgresql://...")
    if url.startswith("sqlite:"):
        path = sqlite_path(url)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UserError("--db: folder does not exist: " + parent)
        try:
            conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
            # WAL lets readers (exports, the CLI) work beside the writer;
            # synchronous=FULL makes a commit durable before the bridge acks.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=%d" % int(timeout * 1000))
        except sqlite3.Error as e:
            raise UserError("--db: cannot open " + path + ": " + str(e)) from None
        return Database(conn, SQLITE, url, timeout)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg
        except ImportError:
            raise UserError("--db: PostgreSQL needs the psycopg package (make setup installs it)") from None
        try:
            conn = psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=False)
        except psycopg.Error as e:
            raise UserError("--db: cannot connect to " + redact(url) + ": " + " ".join(str(e).split())) from None
        return Database(conn, POSTGRES, url)
    raise UserError("--db: unsupported URL " + repr(redact(url)) + " (use sqlite:///PATH or postgresql://...)")


def open_db(url, timeout=10.0):
    """connect() and bring the schema up to date."""
    db = connect(url, timeout)
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


# Schema ---------------------------------------------------------------------
#
# Each migration is (version, name, statements). Statements use these
# placeholders, filled per dialect: {ID} an auto-increment primary key,
# {BIG} a 64-bit integer, {BLOB} bytes.
_TYPES = {
    SQLITE: {"ID": "INTEGER PRIMARY KEY AUTOINCREMENT", "BIG": "INTEGER", "BLOB": "BLOB"},
    POSTGRES: {"ID": "BIGSERIAL PRIMARY KEY", "BIG": "BIGINT", "BLOB": "BYTEA"},
}

MIGRATIONS = (
    (
        1,
        "initial schema",
        (
            # Sites and their site key (signs occupancy and tariff broadcasts).
            # occupancy_n / tariff_n: the last n used on each site-wide stream.
            """CREATE TABLE sites (
                site TEXT PRIMARY KEY,
                site_key {BLOB} NOT NULL,
                created_at {BIG} NOT NULL,
                occupancy_n {BIG} NOT NULL DEFAULT 0,
                tariff_n {BIG} NOT NULL DEFAULT 0
            )""",
            # Stations: ids are unique fleet-wide. connectors = registered stalls.
            # scan_n / floor_n: the gap scanner's progress and the contiguous
            # low-water mark (every n up to it is accounted for).
            """CREATE TABLE stations (
                station TEXT PRIMARY KEY,
                site TEXT NOT NULL REFERENCES sites(site),
                connectors INTEGER NOT NULL DEFAULT 1,
                created_at {BIG} NOT NULL,
                scan_n {BIG},
                floor_n {BIG},
                last_seen {BIG}
            )""",
            "CREATE INDEX stations_site ON stations(site)",
            """CREATE TABLE station_keys (
                id {ID},
                station TEXT NOT NULL REFERENCES stations(station),
                secret {BLOB} NOT NULL,
                fingerprint TEXT NOT NULL,
                created_at {BIG} NOT NULL,
                expires_at {BIG},
                revoked_at {BIG}
            )""",
            "CREATE INDEX station_keys_station ON station_keys(station)",
            # Append-only audit log of every accepted station message, and the
            # dedupe ledger: one row per (station, n), with the payload's digest.
            """CREATE TABLE audit (
                station TEXT NOT NULL,
                n {BIG} NOT NULL,
                kind TEXT NOT NULL,
                site TEXT NOT NULL,
                t {BIG} NOT NULL,
                digest {BLOB} NOT NULL,
                raw {BLOB} NOT NULL,
                key_index INTEGER NOT NULL,
                received_at {BIG} NOT NULL,
                PRIMARY KEY (station, n)
            )""",
            "CREATE INDEX audit_received ON audit(received_at)",
            """CREATE TABLE events (
                station TEXT NOT NULL,
                n {BIG} NOT NULL,
                connector {BIG} NOT NULL,
                type TEXT NOT NULL,
                t {BIG} NOT NULL,
                body TEXT NOT NULL,
                received_at {BIG} NOT NULL,
                PRIMARY KEY (station, n)
            )""",
            "CREATE INDEX events_station_t ON events(station, t)",
            # One row per closed session. fee is the station's fee; fee_bridge
            # the bridge's recomputation; fee_verified 1 match, 0 mismatch,
            # NULL cannot verify; verify_reason says why.
            """CREATE TABLE sessions (
                station TEXT NOT NULL,
                n {BIG} NOT NULL,
                site TEXT NOT NULL,
                connector {BIG} NOT NULL,
                session_id TEXT NOT NULL,
                plug_in {BIG} NOT NULL,
                first_charging {BIG},
                charge_complete {BIG},
                unplug {BIG} NOT NULL,
                energy_wh {BIG},
                idle_s {BIG},
                billable_s {BIG},
                billed_min {BIG},
                fee {BIG} NOT NULL,
                capped INTEGER,
                fee_bridge {BIG},
                fee_verified INTEGER,
                verify_reason TEXT,
                occupancy_verified INTEGER,
                currency TEXT NOT NULL,
                tariff_id TEXT NOT NULL,
                tariff_version {BIG} NOT NULL,
                synced INTEGER,
                minutes TEXT NOT NULL,
                timeline TEXT NOT NULL,
                body_digest {BLOB} NOT NULL,
                received_at {BIG} NOT NULL,
                PRIMARY KEY (station, n),
                UNIQUE (station, session_id)
            )""",
            "CREATE INDEX sessions_unplug ON sessions(unplug)",
            "CREATE INDEX sessions_received ON sessions(received_at)",
            # Latest state per connector (retained telemetry: latest n wins).
            # occupied: 1 from plug-in to unplug (docs/bridge.md, Occupancy).
            """CREATE TABLE connector_states (
                station TEXT NOT NULL,
                connector {BIG} NOT NULL,
                site TEXT NOT NULL,
                n {BIG} NOT NULL,
                status TEXT NOT NULL,
                t {BIG} NOT NULL,
                plugged_since {BIG},
                occupied INTEGER NOT NULL,
                body TEXT NOT NULL,
                received_at {BIG} NOT NULL,
                PRIMARY KEY (station, connector)
            )""",
            "CREATE INDEX connector_states_site ON connector_states(site)",
            # Every refused message with its reason. authentic = 1 when the
            # signature verified (the n was really used by the station).
            """CREATE TABLE rejects (
                id {ID},
                received_at {BIG} NOT NULL,
                topic TEXT NOT NULL,
                site TEXT,
                station TEXT,
                sender TEXT,
                n {BIG},
                kind TEXT,
                reason TEXT NOT NULL,
                detail TEXT NOT NULL,
                authentic INTEGER NOT NULL,
                size INTEGER NOT NULL,
                raw {BLOB} NOT NULL
            )""",
            "CREATE INDEX rejects_station_n ON rejects(station, n)",
            "CREATE INDEX rejects_received ON rejects(received_at)",
            # Same (station, n), different content: both payloads, never acked.
            """CREATE TABLE quarantine (
                id {ID},
                received_at {BIG} NOT NULL,
                station TEXT NOT NULL,
                site TEXT NOT NULL,
                n {BIG} NOT NULL,
                kind TEXT NOT NULL,
                reason TEXT NOT NULL,
                stored_digest {BLOB} NOT NULL,
                stored_raw {BLOB} NOT NULL,
                new_digest {BLOB} NOT NULL,
                new_raw {BLOB} NOT NULL,
                UNIQUE (station, n, new_digest)
            )""",
            # Missing n ranges per station; closed when filled or expired.
            """CREATE TABLE seq_gaps (
                id {ID},
                station TEXT NOT NULL,
                start_n {BIG} NOT NULL,
                end_n {BIG} NOT NULL,
                opened_at {BIG} NOT NULL,
                alerted_at {BIG},
                closed_at {BIG},
                close_reason TEXT
            )""",
            "CREATE INDEX seq_gaps_open ON seq_gaps(station, closed_at)",
            # Tariff versions per site; payload = the signed retained cmd as published.
            """CREATE TABLE tariffs (
                site TEXT NOT NULL REFERENCES sites(site),
                version {BIG} NOT NULL,
                tariff_id TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at {BIG} NOT NULL,
                n {BIG} NOT NULL,
                payload {BLOB} NOT NULL,
                published_at {BIG},
                PRIMARY KEY (site, version)
            )""",
            "CREATE INDEX tariffs_id ON tariffs(site, tariff_id, version)",
            # Every change of a site's occupancy as the bridge published it.
            """CREATE TABLE occupancy_history (
                id {ID},
                site TEXT NOT NULL,
                t {BIG} NOT NULL,
                pct INTEGER NOT NULL,
                occupied INTEGER NOT NULL,
                total INTEGER NOT NULL,
                n {BIG} NOT NULL
            )""",
            "CREATE INDEX occupancy_history_site_t ON occupancy_history(site, t)",
        ),
    ),
)

LATEST = MIGRATIONS[-1][0]


def _render(stmt, dialect):
    t = _TYPES[dialect]
    return stmt.replace("{ID}", t["ID"]).replace("{BIG}", t["BIG"]).replace("{BLOB}", t["BLOB"])


def schema_version(db):
    """The applied schema version, 0 for an empty database."""
    try:
        with db.tx():
            if db.is_pg:
                row = db.one("SELECT to_regclass('schema_migrations')")
                if row[0] is None:
                    return 0
            else:
                row = db.one("SELECT name FROM sqlite_master WHERE type='table' AND name='schema_migrations'")
                if row is None:
                    return 0
            row = db.one("SELECT MAX(version) FROM schema_migrations")
            return row[0] or 0
    except db.errors as e:
        raise DatabaseError("cannot read the schema version: " + str(e)) from None


def migrate(db, target=None):
    """Apply pending migrations in order, each in its own transaction. Returns
    the list of versions applied. Safe to run from several processes at once."""
    target = LATEST if target is None else target
    applied = []
    try:
        with db.tx():
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at %s NOT NULL)"
                % _TYPES[db.dialect]["BIG"]
            )
        with db.tx():
            current = db.one("SELECT MAX(version) FROM schema_migrations")[0] or 0
        if current > LATEST:
            raise UserError("--db: the database schema is version %d, newer than this overstay (%d); upgrade overstay" % (current, LATEST))
        for version, name, stmts in MIGRATIONS:
            if version > target:
                break
            with db.tx():
                if db.is_pg:
                    db.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATE_LOCK,))
                row = db.one("SELECT MAX(version) FROM schema_migrations")
                if version <= (row[0] or 0):
                    continue
                for stmt in stmts:
                    db.execute(_render(stmt, db.dialect))
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, int(time.time())),
                )
                applied.append(version)
    except db.errors as e:
        raise DatabaseError("migration failed: " + " ".join(str(e).split())) from None
    return applied
