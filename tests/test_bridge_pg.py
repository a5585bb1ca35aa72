# Scale-out on PostgreSQL: two `overstay bridge` processes on one $share group, one SIGKILLed mid-stream: every session once.
import threading
import time

from host_tools.bridge import db as dbmod
from tests.bridge_helpers import BridgeProcess, InProcessBridge, Station, count, pg_database, pg_url, register, rows, wait_for  # noqa: F401


def _resend_until_acked(stations, sent, timeout=40.0):
    """What a station's outbox does: resend (same bytes) what has no ack after a while."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        missing = {s: [p for n, p in sent[s.station].items() if n not in s.acked] for s in stations}
        if not any(missing.values()):
            return
        time.sleep(1.5)
        for s, payloads in missing.items():
            for p in payloads[:300]:
                s.send_raw("overstay/v1/%s/%s/session" % (s.site, s.station), p)
    for s in stations:
        s.wait_acked(sent[s.station].keys(), 1)


def test_shared_subscription_kill_one_bridge_mid_stream(tmp_path, mosquitto, pg_url):  # noqa: F811
    db = dbmod.open_db(pg_url)
    names = ["st-%02d" % i for i in range(4)]
    keys_ = {n: register(db, n, "lot-a" if i % 2 else "lot-b") for i, n in enumerate(names)}
    db.close()
    common = ("--share", "billing", "--key-cache", "1")
    a = BridgeProcess(tmp_path, mosquitto.url, pg_url, "--instance", "1", "--client-id", "bridge-a", *common, name="a").start()
    b = BridgeProcess(tmp_path, mosquitto.url, pg_url, "--instance", "2", "--client-id", "bridge-b", *common, name="b").start()
    stations = [Station(mosquitto.port, n, "lot-a" if i % 2 else "lot-b", keys_[n]) for i, n in enumerate(names)]
    per_station = 150
    sent = {s.station: {} for s in stations}
    try:
        def pump(s):
            for i in range(per_station):
                n, payload = s.session(sid="%s-s%d" % (s.station, i), plug_in=1763830800 + i * 7200)
                sent[s.station][n] = payload

        threads = [threading.Thread(target=pump, args=(s,)) for s in stations]
        for t in threads:
            t.start()
        wait_for(lambda: count(pg_url, "SELECT COUNT(*) FROM sessions") >= 100, 30, what="both bridges ingesting")
        a.kill()
        for t in threads:
            t.join()
        # The killed process comes back under its client id: the broker redelivers
        # what it had sent it without an ack; stations resend what has no ack.
        a2 = BridgeProcess(tmp_path, mosquitto.url, pg_url, "--instance", "1", "--client-id", "bridge-a", *common, name="a2").start()
        try:
            _resend_until_acked(stations, sent)
            total = per_station * len(stations)
            assert count(pg_url, "SELECT COUNT(*) FROM sessions") == total
            assert count(pg_url, "SELECT COUNT(DISTINCT (station, session_id)) FROM sessions") == total
            assert count(pg_url, "SELECT COUNT(*) FROM audit") == total
            assert count(pg_url, "SELECT COUNT(*) FROM quarantine") == 0
            assert count(pg_url, "SELECT COUNT(*) FROM rejects") == 0
            # Both processes did real work.
            assert '"stored":' in b.logs() and '"stored":' in a.logs()
            for s in stations:
                assert not s.bad_acks or set(s.bad_acks) == {"replay"}  # two bridges' acks may cross
        finally:
            a2.close()
    finally:
        for s in stations:
            s.close()
        a.close()
        b.close()


def test_in_process_bridge_on_postgres(tmp_path, mosquitto, pg_url):  # noqa: F811
    db = dbmod.open_db(pg_url)
    key = register(db, "st-01", "lot-a", connectors=2)
    db.close()
    br = InProcessBridge(mosquitto.url, pg_url).start()
    s = Station(mosquitto.port, "st-01", "lot-a", key)
    try:
        s.state("Preparing")
        ns = [s.event("status")[0] for _ in range(20)] + [s.session()[0]]
        s.wait_acked(ns)
        wait_for(lambda: rows(pg_url, "SELECT pct FROM occupancy_history ORDER BY id DESC LIMIT 1") == [(50,)], what="occupancy on PostgreSQL")
        wait_for(lambda: rows(pg_url, "SELECT floor_n FROM stations") == [(ns[-1],)], what="gap scan on PostgreSQL")
    finally:
        s.close()
        br.stop()


def test_data_postgres_refuses_is_set_aside_and_the_bridge_goes_on(tmp_path, mosquitto, pg_url):  # noqa: F811
    db = dbmod.open_db(pg_url)
    key = register(db, "st-01", "lot-a")
    db.close()
    br = InProcessBridge(mosquitto.url, pg_url).start()
    s = Station(mosquitto.port, "st-01", "lot-a", key)
    try:
        s.send("event", {"connector": 1, "type": "note\u0000"})  # PostgreSQL text cannot hold NUL
        n, _ = s.event("status")
        s.wait_acked([n])
        wait_for(lambda: rows(pg_url, "SELECT reason FROM rejects") == [("db_refused",)], what="db_refused reject")
        assert count(pg_url, "SELECT COUNT(*) FROM events") == 1
        assert '"event":"commit_refused"' in br.logs()
    finally:
        s.close()
        br.stop()
