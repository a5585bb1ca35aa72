# Tests for host_tools/bridge/occupancy.py's locking: counting never takes SQLite's write lock; only a due publish does.
import pytest

from host_tools.bridge import db as dbmod
from host_tools.bridge import occupancy
from tests.bridge_helpers import register, sqlite_url


def test_tick_counts_without_the_write_lock(tmp_path):
    url = sqlite_url(tmp_path / "o.db")
    db = dbmod.open_db(url)
    register(db, "st-01", "lot-a", connectors=2)
    hk = dbmod.connect(url, timeout=0.2)
    sent = []
    pub = occupancy.Publisher(hk, lambda topic, payload, retain: sent.append(topic), interval_s=60)
    try:
        assert pub.tick(mono=0.0) == [("lot-a", 0, True)] and sent == ["overstay/v1/lot-a/occupancy"]
        db.conn.execute("BEGIN IMMEDIATE")  # the ingest worker is writing
        assert pub.tick(mono=1.0) == []  # nothing due: no wait, no lock
        with pytest.raises(Exception):
            pub.tick(mono=61.0)  # due again: needs the lock, which stays taken past hk's timeout
        db.conn.execute("COMMIT")
        assert pub.tick(mono=62.0) == [("lot-a", 0, False)]
    finally:
        hk.close()
        db.close()
