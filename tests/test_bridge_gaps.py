# Tests for host_tools/bridge/gaps.py: gaps open, shrink, fill, alert and expire; the low-water mark only rises.
from host_tools.bridge import db as dbmod
from host_tools.bridge import gaps, ingest
from protocol import wire
from tests.bridge_helpers import T0, register, sqlite_url


def _rig(tmp_path):
    db = dbmod.open_db(sqlite_url(tmp_path / "b.db"))
    key = register(db, "st-01", "lot-a")
    ing = ingest.Ingestor(db, ingest.Config(key_cache_s=0))

    def send(*ns, leaf="event", status=None):
        items = []
        for n in ns:
            body = {"connector": 1, "type": "status"} if leaf == "event" else {"connector": 1, "status": status}
            items.append(ingest.Inbound("overstay/v1/lot-a/st-01/" + leaf, wire.encode(key, wire.LEAF_KIND[leaf], "st-01", n, T0, body), n, 1))
        return ing.process(items)

    def floor():
        with db.tx():
            return db.one("SELECT floor_n FROM stations WHERE station = 'st-01'")[0]

    return db, send, floor


def test_gap_lifecycle(tmp_path):
    db, send, floor = _rig(tmp_path)
    now = 10_000_000_000
    send(1, 2, 6)
    r = gaps.scan(db, now=now, alert_s=60, expire_s=3600, settle_s=0)
    assert r.opened == [("st-01", 3, 5)] and r.open_count == 1 and floor() == 2
    send(4)
    r = gaps.scan(db, now=now + 10, alert_s=60, settle_s=0)
    assert gaps.open_gaps(db) == [("st-01", 3, 3, now, None), ("st-01", 5, 5, now, None)] and floor() == 2
    r = gaps.scan(db, now=now + 61, alert_s=60, settle_s=0)
    assert sorted(r.alerts) == [("st-01", 3, 3, 61), ("st-01", 5, 5, 61)]
    r = gaps.scan(db, now=now + 62, alert_s=60, settle_s=0)
    assert r.alerts == []  # one alert per gap
    # A stale state uses an n too: it fills the gap although it was rejected.
    send(9, leaf="state", status="Charging")
    send(5, leaf="state", status="Preparing")
    send(3)
    r = gaps.scan(db, now=now + 70, alert_s=60, settle_s=0)
    assert sorted(r.filled) == [("st-01", 3, 3), ("st-01", 5, 5)]
    assert r.opened == [("st-01", 7, 8)] and floor() == 6
    r = gaps.scan(db, now=now + 70 + 3600, alert_s=60, expire_s=3600, settle_s=0)
    assert r.expired == [("st-01", 7, 8)] and r.open_count == 0 and floor() == 9


def test_first_scan_waits_for_reordered_messages(tmp_path):
    db, send, floor = _rig(tmp_path)
    import time

    now = int(time.time())
    send(5)
    gaps.scan(db, now=now, settle_s=30)
    assert floor() is None  # not settled: no low-water mark yet, nothing is a replay
    send(4)
    gaps.scan(db, now=now + 31, settle_s=30)
    assert floor() == 5 and gaps.open_gaps(db) == []


def test_sqlite_scan_decides_without_the_write_lock_and_yields_to_another_scanner(tmp_path, monkeypatch):
    # The pass reads a snapshot and decides with the file unlocked (the ingest
    # worker keeps writing); if another scanner wrote meanwhile, it writes nothing.
    db, send, floor = _rig(tmp_path)
    other = dbmod.connect(sqlite_url(tmp_path / "b.db"), timeout=0.5)
    send(1, 2, 6)
    plan = gaps._plan
    seen = {}

    def plan_then_check_lock(*a, **kw):
        with other.tx():  # would time out if the scan held the write lock here
            seen["free"] = True
            if "meddle" in seen:
                other.execute("UPDATE stations SET floor_n = 1 WHERE station = 'st-01'")
        return plan(*a, **kw)

    monkeypatch.setattr(gaps, "_plan", plan_then_check_lock)
    seen["meddle"] = True
    r = gaps.scan(db, now=10_000_000_000, settle_s=0)
    assert seen["free"] and r.skipped and gaps.open_gaps(db) == [] and floor() == 1
    del seen["meddle"]
    r = gaps.scan(db, now=10_000_000_000, settle_s=0)
    assert not r.skipped and r.opened == [("st-01", 3, 5)] and floor() == 2
    other.close()
