# Tests for host_tools/bridge/ingest.py (no broker): classification, exactly-once storage, rejects, quarantine, fee checks.
import hashlib
import json

import pytest

from host_tools.bridge import db as dbmod
from host_tools.bridge import fastwire, gaps, ingest, tariffs
from protocol import canonjson, hmac256, wire
from tests.bridge_helpers import TARIFF, TIERED, T0, pg_database, pg_url, register, session_record, sqlite_url  # noqa: F401


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "b.db")
    else:
        url = request.getfixturevalue("pg_url")
    d = dbmod.open_db(url)
    yield d
    d.close()


def _sign(key, env):
    unsigned = canonjson.dumps(env)
    return unsigned[:-1] + b',"sig":"' + hmac256.hexdigest(key, unsigned) + b'"}'


class Rig:
    def __init__(self, db, station="st-01", site="lot-a"):
        self.db = db
        self.ing = ingest.Ingestor(db, ingest.Config(key_cache_s=0))
        self.station = station
        self.site = site
        self.key = register(db, station, site, connectors=2)
        self.mid = 0

    def payload(self, kind, body, n, key=None, sender=None, t=T0):
        return wire.encode(key or self.key, kind, sender or self.station, n, t, body)

    def inbound(self, leaf, payload, station=None, site=None):
        self.mid += 1
        topic = "overstay/v1/%s/%s/%s" % (site or self.site, station or self.station, leaf)
        return ingest.Inbound(topic, payload, self.mid, 1)

    def send(self, *items):
        return self.ing.process(list(items))

    def event(self, n, **kw):
        body = {"connector": 1, "type": "status"}
        body.update(kw)
        return self.inbound("event", self.payload("event", body, n))

    def state(self, n, status, connector=1, **kw):
        body = {"connector": connector, "status": status}
        body.update(kw)
        return self.inbound("state", self.payload("state", body, n))

    def session(self, n, **kw):
        return self.inbound("session", self.payload("session", session_record(self.station, **kw), n))

    def count(self, table, where="1=1", params=()):
        with self.db.tx():
            return self.db.one("SELECT COUNT(*) FROM %s WHERE %s" % (table, where), params)[0]

    def stored(self):
        return {t: self.count(t) for t in ("audit", "events", "sessions", "connector_states", "quarantine")}


@pytest.fixture
def rig(db):
    return Rig(db)


def test_new_messages_are_stored_and_acked(rig):
    tariffs.set_tariff(rig.db, "lot-a", TARIFF)
    res = rig.send(rig.state(1, "Preparing"), rig.event(2), rig.session(3))
    assert res.stored == {"state": 1, "event": 1, "session": 1}
    site, key, ns = res.acks["st-01"]
    assert (site, key, ns) == ("lot-a", rig.key, [2, 3])  # states are not acked
    assert len(res.mids) == 3
    assert rig.stored() == {"audit": 3, "events": 1, "sessions": 1, "connector_states": 1, "quarantine": 0}
    with rig.db.tx():
        row = rig.db.one("SELECT fee, fee_bridge, fee_verified, verify_reason, timeline, minutes, plug_in, unplug, synced FROM sessions")
    assert row[0] == row[1] == 750 and row[2] == 1 and row[3] is None
    assert json.loads(row[4])[0] == {"status": "Preparing", "t": T0}
    assert json.loads(row[5]) == [{"count": 15, "rate": 50, "start": T0 + 3600 + 300}]
    assert row[6] == T0 and row[7] == T0 + 3600 + 1200 and row[8] == 1


def test_duplicate_is_stored_once_and_acked_again(rig):
    e = rig.event(5)
    rig.send(e)
    again = ingest.Inbound(e.topic, e.payload, 99, 1)
    res = rig.send(again, rig.inbound("event", e.payload))  # twice more, one in the same batch
    assert res.duplicates == {"event": 2} and res.stored == {}
    assert res.acks["st-01"][2] == [5]
    assert rig.stored()["audit"] == 1 and rig.stored()["events"] == 1


def test_same_n_other_content_is_quarantined_not_acked(rig):
    rig.send(rig.event(5, status="Charging"))
    res = rig.send(rig.event(5, status="Faulted"))
    assert res.quarantined == 1 and "st-01" not in res.acks
    assert res.events[0][:2] == ("error", "quarantined")
    with rig.db.tx():
        q = rig.db.one("SELECT station, n, reason, stored_raw, new_raw FROM quarantine")
    assert q[:3] == ("st-01", 5, "conflict")
    assert b"Charging" in bytes(q[3]) and b"Faulted" in bytes(q[4])
    with rig.db.tx():
        assert json.loads(rig.db.one("SELECT body FROM events")[0])["status"] == "Charging"  # never overwritten
    # The station resends it: quarantined once, alerted once.
    res = rig.send(rig.event(5, status="Faulted"))
    assert res.quarantined == 0 and res.events[0][1] == "quarantined_again"
    assert rig.count("quarantine") == 1
    # In one batch: the first wins, the second is quarantined.
    res = rig.send(rig.event(6, status="A"), rig.event(6, status="B"))
    assert res.stored == {"event": 1} and res.quarantined == 1 and res.acks["st-01"][2] == [6]


def test_stale_state_is_a_replay_and_the_latest_wins(rig):
    rig.send(rig.state(10, "Charging"))
    res = rig.send(rig.state(9, "Available"))
    assert res.rejects == {"replay": 1}
    with rig.db.tx():
        assert rig.db.one("SELECT n, status FROM connector_states")[:2] == (10, "Charging")
        assert rig.db.one("SELECT reason, n, authentic FROM rejects") == ("replay", 9, 1)
    # The retained state delivered again (same bytes) is a silent duplicate.
    res = rig.send(rig.state(10, "Charging"))
    assert res.rejects == {} and res.duplicates == {"state": 1}


def test_a_late_event_below_the_low_water_mark_is_stored_not_refused(rig):
    rig.send(rig.event(1), rig.event(3))  # n=2 missing
    r = gaps.scan(rig.db, alert_s=1000, expire_s=0, settle_s=0)  # the gap expires at once
    assert r.opened == [("st-01", 2, 2)] and r.expired == [("st-01", 2, 2)]
    with rig.db.tx():
        assert rig.db.one("SELECT floor_n FROM stations")[0] == 3
    rig.ing.forget()
    # Authentic and unknown: a billing record arriving late is stored and acked.
    res = rig.send(rig.event(2))
    assert res.rejects == {} and res.acks["st-01"][2] == [2]
    # Sent again, it is a duplicate (acked again, stored once).
    res = rig.send(rig.event(2))
    assert res.duplicates == {"event": 1} and res.acks["st-01"][2] == [2]
    with rig.db.tx():
        assert rig.db.one("SELECT COUNT(*) FROM events WHERE n = 2")[0] == 1


def test_session_resent_under_a_new_n_keeps_one_row(rig):
    rig.send(rig.session(3))
    res = rig.send(rig.session(4))
    assert res.duplicates == {"session_resent": 1} and res.acks["st-01"][2] == [4]
    assert rig.count("sessions") == 1 and rig.count("audit") == 2
    res = rig.send(rig.session(5, idle_min=40))  # same session id, other content
    assert res.quarantined == 1 and rig.count("sessions") == 1
    with rig.db.tx():
        assert rig.db.one("SELECT reason FROM quarantine")[0] == "session_conflict"


def test_rejects_store_nothing_else(rig, db):
    other_key = register(db, "st-02", "lot-b")
    good_event = rig.payload("event", {"connector": 1, "type": "status"}, 1)
    cases = {
        "malformed": rig.inbound("event", b'{"b":{nope'),
        "oversized": rig.inbound("event", b"x" * (wire.MAX_SIZE + 10)),
        "version": rig.inbound("event", good_event.replace(b'"v":1,"sig"', b'"v":2,"sig"')),
        "signature": rig.inbound("event", rig.payload("event", {"connector": 1, "type": "status"}, 1, key=b"not-the-right-key-at-all")),
        "station": rig.inbound("event", good_event, station="st-02", site="lot-b"),
        "unknown_station": rig.inbound("event", rig.payload("event", {"connector": 1, "type": "x"}, 1, sender="st-77"), station="st-77"),
        "site": rig.inbound("event", good_event, site="lot-b"),
        "kind": rig.inbound("session", good_event),
        # Authentic but without the required "type": the station signed garbage.
        "schema": rig.inbound("event", _sign(rig.key, {"b": {"connector": 1}, "k": "event", "n": 7, "s": "st-01", "t": T0, "v": 1})),
    }
    for reason, item in cases.items():
        res = rig.send(item)
        assert sum(res.rejects.values()) == 1, reason
        assert res.acks == {} and len(res.mids) == 1
    got = {}
    with db.tx():
        for reason, detail, size in db.all("SELECT reason, detail, size FROM rejects"):
            got[reason] = got.get(reason, 0) + 1
    assert got == {r: 1 for r in cases}
    with db.tx():
        # Authentic rejects keep the n (the gap scanner counts it as used).
        assert db.one("SELECT n, authentic FROM rejects WHERE reason = 'schema'") == (7, 1)
        assert db.one("SELECT n, authentic FROM rejects WHERE reason = 'signature'") == (None, 0)
    assert rig.stored() == {"audit": 0, "events": 0, "sessions": 0, "connector_states": 0, "quarantine": 0}
    assert other_key


def test_fee_verification(rig):
    db = rig.db
    # Unknown tariff version: stored, flagged, not verified.
    rig.send(rig.session(1))
    # Known tariff, station fee altered (but signed): mismatch, never corrected.
    tariffs.set_tariff(db, "lot-a", TARIFF)
    rec = session_record("st-01", sid="s-2")
    rec["fee"] = 999
    rig.send(rig.inbound("session", rig.payload("session", rec, 2)))
    rig.send(rig.session(3, sid="s-3"))
    with db.tx():
        rows = {r[0]: r[1:] for r in db.all("SELECT session_id, fee, fee_bridge, fee_verified, verify_reason FROM sessions")}
    assert rows["st-01-%d" % T0] == (750, None, None, "tariff_unknown")
    assert rows["s-2"] == (999, 750, 0, "fee_mismatch")
    assert rows["s-3"] == (750, 750, 1, None)


def test_occupancy_cross_check(rig):
    db = rig.db
    tariffs.set_tariff(db, "lot-a", TIERED)
    with db.tx():
        db.execute("INSERT INTO occupancy_history (site, t, pct, occupied, total, n) VALUES ('lot-a', ?, 60, 3, 5, 1)", (T0 - 100,))
    # The station says 60 % (what the bridge published): verified.
    rig.send(rig.session(1, sid="ok", tariff=TIERED, occupancy=60))
    # The station says 80 %: the fee follows its own timeline, but occupancy does not check out.
    rig.send(rig.session(2, sid="bad", tariff=TIERED, occupancy=80))
    with db.tx():
        rows = {r[0]: r[1:] for r in db.all("SELECT session_id, fee, fee_bridge, fee_verified, verify_reason, occupancy_verified FROM sessions")}
    assert rows["ok"][2:] == (1, None, 1)
    assert rows["bad"][0] == rows["bad"][1]  # the station priced its own timeline correctly...
    assert rows["bad"][2:] == (0, "occupancy_mismatch", 0)  # ...but not with the bridge's occupancy


def test_occupancy_state_rules():
    occ = ingest._occupied
    assert occ("Preparing", {}, None, 5) == (1, 5)
    assert occ("Charging", {}, 5, 9) == (1, 5)
    assert occ("Faulted", {}, 5, 9) == (1, 5)  # car still plugged in
    assert occ("Faulted", {}, None, 9) == (0, None)
    assert occ("Reserved", {}, None, 9) == (0, None)
    assert occ("Available", {}, 5, 9) == (0, None)
    assert occ("Unavailable", {"session": "s1"}, None, 9) == (1, 9)  # the station says a session is open


def test_values_the_database_cannot_hold_are_rejected_not_retried(rig):
    rec = session_record("st-01")
    rec["plug_in"] = 2**64
    res = rig.send(rig.inbound("session", rig.payload("session", rec, 1)), rig.event(2, connector=2**63))
    assert res.rejects == {"schema": 2} and rig.stored()["audit"] == 0
    with rig.db.tx():
        assert sorted(r[0] for r in rig.db.all("SELECT detail FROM rejects")) == ["connector is out of the 64-bit range", "plug_in is out of the 64-bit range"]


def test_session_id_stored_by_another_bridge_meanwhile_is_a_race_then_a_resend(pg_url):  # noqa: F811
    # Bridge A looks up (station, session_id), finds nothing; bridge B commits
    # the same session under another n; A's COPY then meets B's unique key:
    # a race (db.is_race), and running A's batch again classifies it properly.
    import threading

    a_db, b_db = dbmod.open_db(pg_url), dbmod.connect(pg_url)
    try:
        rig = Rig(a_db)
        mine, theirs = rig.session(2), rig.session(1)  # the same record (same session_id) under n 2 and n 1
        body = session_record("st-01")
        # B's rows, in a transaction it keeps open while A runs into them.
        b_db.execute(
            "INSERT INTO audit (station, n, kind, site, t, digest, raw, key_index, received_at)"
            " VALUES ('st-01', 1, 'session', 'lot-a', ?, ?, ?, 0, 0)",
            (T0, hashlib.sha256(theirs.payload).digest(), theirs.payload),
        )
        b_db.execute(
            "INSERT INTO sessions (station, n, site, connector, session_id, plug_in, unplug, fee, currency, tariff_id,"
            " tariff_version, minutes, timeline, body_digest, received_at)"
            " VALUES ('st-01', 1, 'lot-a', 1, ?, ?, ?, ?, 'USD', 'T0', 1, '[]', '[]', ?, 0)",
            (body["session_id"], body["plug_in"], body["unplug"], body["fee"], hashlib.sha256(fastwire.body_bytes(theirs.payload)).digest()),
        )
        out = {}

        def run_a():
            try:
                rig.send(mine)
            except Exception as e:  # noqa: BLE001 - the race is the point
                out["error"] = e

        t = threading.Thread(target=run_a)
        t.start()
        t.join(1.0)
        assert t.is_alive()  # A waits on B's uncommitted unique key
        b_db.conn.commit()
        t.join(10)
        assert a_db.is_race(out["error"])
        res = rig.send(mine)  # what the worker does: the batch again
        assert res.duplicates == {"session_resent": 1} and res.acks["st-01"][2] == [2]
        assert rig.count("sessions") == 1 and rig.count("audit") == 2
    finally:
        a_db.close()
        b_db.close()
