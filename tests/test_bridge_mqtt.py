# The bridge against a real Mosquitto: rejects, duplicates, quarantine, acks, occupancy, tariffs, metrics.
import json
import urllib.request

import paho.mqtt.client as mqtt
import pytest

from host_tools import cli
from host_tools.bridge import db as dbmod
from host_tools.bridge import keys
from protocol import wire
from tests.bridge_helpers import TARIFF, InProcessBridge, Station, count, register, rows, sqlite_url, wait_for
from tests.broker import free_port


@pytest.fixture
def env(tmp_path, mosquitto):
    url = sqlite_url(tmp_path / "bridge.db")
    db = dbmod.open_db(url)
    k1 = register(db, "st-01", "lot-a", connectors=2)
    k2 = register(db, "st-02", "lot-a")
    db.close()
    bridge = InProcessBridge(mosquitto.url, url).start()
    stations = []

    def station(name="st-01", key=None, site="lot-a"):
        s = Station(mosquitto.port, name, site, key or {"st-01": k1, "st-02": k2}[name])
        stations.append(s)
        return s

    yield {"url": url, "bridge": bridge, "station": station, "k1": k1, "k2": k2, "broker": mosquitto}
    for s in stations:
        s.close()
    bridge.stop()


def _retained(port, topic, timeout=5.0):
    """The retained message on topic, as a fresh subscriber sees it."""
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    c.on_message = lambda cl, u, m: got.append(m)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic, qos=1)
    try:
        wait_for(lambda: got, timeout, what="retained message on " + topic)
    finally:
        c.disconnect()
        c.loop_stop()
    # The broker hands a new subscriber the retained copy first; anything
    # after it is a live publish that happened to land meanwhile.
    return got[0]


def test_every_kind_of_bad_message_is_rejected_and_the_bridge_keeps_running(env):
    url = env["url"]
    s1 = env["station"]("st-01")
    s2 = env["station"]("st-02")
    topic = wire.station_topic("lot-a", "st-01", "event")
    _, good = s1.encode("event", {"connector": 1, "type": "status"}, n=100)
    s1.send("state", {"connector": 1, "status": "Charging"}, n=50)
    wait_for(lambda: count(url, "SELECT COUNT(*) FROM connector_states") == 1, what="state stored")
    before = count(url, "SELECT COUNT(*) FROM audit")

    stranger = Station(env["broker"].port, "st-77", "lot-a", b"s" * 32)
    try:
        bad = {
            "malformed": (topic, b'{"b":{"connector":1,'),
            "oversized": (topic, b"{" + b" " * (wire.MAX_SIZE + 100) + b"}"),
            "version": (topic, good.replace(b'"v":1,"sig"', b'"v":9,"sig"')),
            "signature": (topic, s1.encode("event", {"connector": 1, "type": "status"}, n=101, key=b"x" * 32)[1]),
            "replay": (wire.station_topic("lot-a", "st-01", "state"), s1.encode("state", {"connector": 1, "status": "Available"}, n=49)[1]),
            "station": (wire.station_topic("lot-a", "st-02", "event"), good),
            "unknown_station": (wire.station_topic("lot-a", "st-77", "event"), stranger.encode("event", {"connector": 1, "type": "x"}, n=1)[1]),
        }
        for reason, (t, payload) in bad.items():
            (stranger if reason == "unknown_station" else s1).send_raw(t, payload, retain=False)
        wait_for(lambda: count(url, "SELECT COUNT(*) FROM rejects") == len(bad), what="all rejects recorded")
        got = dict(rows(url, "SELECT reason, COUNT(*) FROM rejects GROUP BY reason"))
        assert got == {r: 1 for r in bad}
        assert set(rows(url, "SELECT reason, station FROM rejects")) >= {("station", "st-02"), ("unknown_station", "st-77"), ("oversized", "st-01")}
        # Nothing else was stored, nobody was acked, the state did not go back.
        assert count(url, "SELECT COUNT(*) FROM audit") == before
        assert count(url, "SELECT COUNT(*) FROM events") == 0
        assert rows(url, "SELECT n, status FROM connector_states") == [(50, "Charging")]
        # Still running: the next good message is stored and acked.
        n, _ = s1.send("event", {"connector": 1, "type": "status"}, n=101)
        s1.wait_acked([n])
        assert not s1.bad_acks and not s2.acked and not stranger.acked
        b = env["bridge"]
        for reason in bad:
            assert b.metric("overstay_bridge_rejects_total", reason=reason) == 1
    finally:
        stranger.close()


def test_duplicates_are_acked_again_and_conflicts_quarantined(env):
    url = env["url"]
    s = env["station"]("st-01")
    n, payload = s.event("status", status="Charging")
    s.wait_acked([n])
    s.send_raw(wire.station_topic("lot-a", "st-01", "event"), payload)  # the station resends: no ack seen yet
    wait_for(lambda: len(s.ack_msgs) == 2, what="second ack")
    assert s.ack_msgs[1].body["acks"] == [n] and s.ack_msgs[1].seq > s.ack_msgs[0].seq
    s.send("event", {"connector": 1, "type": "status", "status": "Faulted"}, n=n)  # same n, other content
    wait_for(lambda: count(url, "SELECT COUNT(*) FROM quarantine") == 1, what="quarantine")
    n2, _ = s.event("status")
    s.wait_acked([n2])
    assert [m.body["acks"] for m in s.ack_msgs] == [[n], [n], [n2]]  # the conflict got no ack
    assert count(url, "SELECT COUNT(*) FROM events") == 2
    b = env["bridge"]
    assert b.metric("overstay_bridge_quarantined_total") == 1
    assert b.metric("overstay_bridge_messages_total", kind="event", outcome="duplicate") == 1
    assert '"event":"quarantined"' in b.logs()


def test_occupancy_is_published_signed_and_retained(env):
    url = env["url"]
    site_key = keys.site_key(dbmod.open_db(url), "lot-a")
    s = env["station"]("st-01")
    s.state("Preparing", connector=1)
    s.state("Charging", connector=2)
    # 3 stalls on lot-a (st-01 has 2, st-02 has 1): 2 occupied -> 66 %.
    wait_for(lambda: rows(url, "SELECT pct FROM occupancy_history WHERE site = 'lot-a' ORDER BY id DESC LIMIT 1") == [(66,)], what="occupancy 66")
    topic = wire.site_topic("lot-a", "occupancy")

    def retained_66():
        # A fresh subscriber that arrives just before the first retained copy
        # exists sees the live publish (no retain flag): ask again until the
        # broker hands over a retained 66.
        msg = _retained(env["broker"].port, topic)
        body = wire.decode(msg.payload, lambda x: site_key, expect_sender="lot-a", leaf="occupancy").body
        return msg if msg.retain and body["occupancy"] == 66 else None

    m = wait_for(retained_66, what="retained 66")
    assert m.retain
    s.state("Available", connector=1)
    wait_for(lambda: rows(url, "SELECT pct FROM occupancy_history ORDER BY id DESC LIMIT 1") == [(33,)], what="occupancy 33")
    hist = [p for (p,) in rows(url, "SELECT pct FROM occupancy_history ORDER BY id")]
    assert hist[-2:] == [66, 33]


def test_tariff_set_show_history(env, tmp_path, capsys):
    url, broker = env["url"], env["broker"]
    f = tmp_path / "t.json"
    f.write_text(json.dumps(TARIFF))
    assert cli.main(["tariff", "set", "--site", "lot-a", str(f), "--db", url, "--broker", broker.url]) == 0
    msg = _retained(broker.port, wire.site_topic("lot-a", "tariff"))
    site_key = keys.site_key(dbmod.open_db(url), "lot-a")
    m = wire.decode(msg.payload, lambda x: site_key, expect_sender="lot-a", leaf="tariff")
    assert m.body == {"op": "tariff", "tariff": TARIFF} and msg.retain
    # Same version again: refused in one line.
    capsys.readouterr()
    assert cli.main(["tariff", "set", "--site", "lot-a", str(f), "--db", url, "--broker", broker.url]) == 2
    assert "not above site lot-a's latest version 1" in capsys.readouterr().err
    # Invalid tariff: the fee engine's message.
    f.write_text(json.dumps(dict(TARIFF, version=2, rate=-1)))
    assert cli.main(["tariff", "set", "--site", "lot-a", str(f), "--db", url, "--no-publish"]) == 2
    assert "tariff.rate" in capsys.readouterr().err
    f.write_text(json.dumps(dict(TARIFF, version=2, rate=60)))
    assert cli.main(["tariff", "set", "--site", "lot-a", str(f), "--db", url, "--broker", broker.url]) == 0
    capsys.readouterr()
    assert cli.main(["tariff", "show", "--site", "lot-a", "--db", url]) == 0
    assert json.loads(capsys.readouterr().out)["rate"] == 60
    assert cli.main(["tariff", "history", "--site", "lot-a", "--db", url, "--json"]) == 0
    hist = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [h["version"] for h in hist] == [1, 2] and all(h["published_at"] for h in hist)
    n1, n2 = (h["n"] for h in hist)
    assert n2 > n1
    # Unreachable broker: stored, one-line error that says how to retry.
    f.write_text(json.dumps(dict(TARIFF, version=3)))
    assert cli.main(["tariff", "set", "--site", "lot-a", str(f), "--db", url, "--broker", "mqtt://127.0.0.1:%d" % free_port()]) == 2
    assert "tariff publish --site lot-a" in capsys.readouterr().err


def test_fee_is_verified_end_to_end(env, tmp_path):
    url = env["url"]
    db = dbmod.open_db(url)
    from host_tools.bridge import tariffs

    tariffs.set_tariff(db, "lot-a", TARIFF)
    db.close()
    s = env["station"]("st-01")
    n, _ = s.session()
    s.wait_acked([n])
    assert rows(url, "SELECT fee, fee_bridge, fee_verified FROM sessions") == [(750, 750, 1)]
    assert env["bridge"].metric("overstay_bridge_fee_checks_total", result="match") == 1


def test_metrics_endpoint(env):
    b = env["bridge"]
    port = free_port()
    stop = b.metrics.serve(port)
    try:
        s = env["station"]("st-01")
        n, _ = s.event("status")
        s.wait_acked([n])
        wait_for(lambda: b.metric("overstay_bridge_commit_to_ack_seconds_count") >= 1, what="commit-to-ack observed")
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    finally:
        stop()
    for name in (
        "overstay_bridge_messages_total",
        "overstay_bridge_ingest_rate",
        "overstay_bridge_commit_to_ack_seconds_bucket",
        "overstay_bridge_open_gaps",
        "overstay_bridge_fee_mismatches_total",
        'overstay_bridge_station_last_seen_seconds{station="st-01"}',
    ):
        assert name in text, name


def test_logs_are_one_json_object_per_line_without_secrets(env):
    s = env["station"]("st-01")
    n, _ = s.event("status")
    s.wait_acked([n])
    lines = env["bridge"].logs().splitlines()
    assert lines and all(json.loads(x)["event"] for x in lines)
    text = env["bridge"].logs()
    for secret in (env["k1"], env["k2"]):
        assert secret.hex() not in text


def test_broker_restart_with_and_without_persistence(env):
    url, broker = env["url"], env["broker"]
    s = env["station"]("st-01")
    n1, _ = s.event("status")
    s.wait_acked([n1])
    b = env["bridge"].bridge
    for clean in (False, True):
        s.close()
        broker.restart(clean=clean)  # persistent: the bridge's session survives; clean: it must subscribe again
        wait_for(lambda: b.connected.is_set(), 15, what="bridge reconnected")
        s.connect()
        n, _ = s.event("status")
        s.wait_acked([n], 15)
    assert count(url, "SELECT COUNT(*) FROM events") == 3
    logs = env["bridge"].logs()
    assert '"session_present":true' in logs and logs.count('"event":"subscribed"') == 2
