# Backend commands: signed and replay-protected per topic; unsigned, replayed, stale or other-station ones are refused and counted.
import pytest

from protocol import wire
from tests.fw_helpers import SITE_KEY, STATION_KEY, T0, UNIX0, Rig, make_cfg


def rig():
    r = Rig(now=0)
    r.sync(UNIX0)
    return r


def test_pause_then_replay_is_refused_and_counted():
    r = rig()
    topic, payload = r.backend.cmd({"op": "pause"}, t=UNIX0)
    assert r.deliver(topic, payload) == "ok" and r.core.paused
    assert r.deliver(*r.backend.cmd({"op": "resume"}, t=UNIX0)) == "ok" and not r.core.paused
    # The old pause again: same seq as an accepted one, but not the latest: a replay.
    assert r.deliver(topic, payload) == "replay"
    assert not r.core.paused
    assert r.core.rejected == {"replay": 1}
    assert r.core.counts["accepted"] == 2


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda b: b.cmd({"op": "pause"}, key=b"an-attacker-key-0123456789"), "signature"),
        (lambda b: b.cmd({"op": "pause"}, sender="st-02"), "station"),
        (lambda b: (wire.station_topic("lot-a", "st-01", "cmd"), b"pause please"), "malformed"),
        (lambda b: (wire.site_topic("lot-a", "occupancy"), wire.encode(STATION_KEY, "cmd", "st-01", 5, UNIX0, {"op": "occupancy", "occupancy": 5})), "station"),
        (lambda b: (wire.site_topic("lot-a", "occupancy"), wire.encode(SITE_KEY, "cmd", "lot-a", 5, UNIX0, {"op": "tariff", "tariff": T0})), "kind"),
        (lambda b: (wire.site_topic("lot-b", "tariff"), wire.encode(SITE_KEY, "cmd", "lot-b", 5, UNIX0, {"op": "tariff", "tariff": T0})), "topic"),
        (lambda b: (wire.station_topic("lot-a", "st-01", "cmd"), wire.encode(STATION_KEY, "ack", "st-01", 5, UNIX0, {"acks": [1]})), "kind"),
        (lambda b: b.cmd({"op": "pause", "connector": 2}), "connector"),
        (lambda b: b.occupancy(101), "schema"),
        (lambda b: b.cmd({"op": "pause"}, t=UNIX0 - 7200), "stale"),
        (lambda b: b.occupancy(50, t=UNIX0 - 3600), "stale"),
        (lambda b: b.cmd({"op": "config", "config": {"station_key": "00" * 32}}), "config"),
        (lambda b: b.cmd({"op": "config", "config": {"sample_ms": 1}}), "config"),
        (lambda b: b.tariff({"id": "bad", "version": 9, "rate": -1}), "tariff"),
    ],
)
def test_refused_commands(make, code):
    r = rig()
    assert r.deliver(*make(r.backend)) == code
    assert r.core.rejected == {code: 1}
    assert not r.core.paused and r.core.counts["accepted"] == 0


def test_older_tariff_versions_are_refused_newer_ones_apply_to_the_next_session():
    r = rig()
    assert r.deliver(*r.backend.tariff(dict(T0, version=3, rate=70))) == "ok"
    assert r.deliver(*r.backend.tariff(dict(T0, version=2, rate=1))) == "tariff_version"
    assert r.deliver(*r.backend.tariff(dict(T0, version=3, rate=1))) == "tariff_version"  # same version, other content
    assert r.deliver(*r.backend.tariff(dict(T0, version=3, rate=70))) == "ok"  # the same one again: harmless
    # Station-specific tariff on the station's cmd topic.
    assert r.deliver(*r.backend.cmd({"op": "tariff", "tariff": dict(T0, id="T-st01", version=4, rate=90)})) == "ok"
    assert r.core.tariff["rate"] == 90
    # Persisted: a reboot keeps it.
    r2 = Rig(fs=r.fs.reboot(), now=0)
    assert r2.core.tariff["id"] == "T-st01"


def test_replay_guards_survive_a_reboot():
    r = rig()
    old = r.backend.cmd({"op": "pause"})
    assert r.deliver(*old) == "ok"
    assert r.deliver(*r.backend.cmd({"op": "resume"})) == "ok"
    r2 = Rig(fs=r.fs.reboot(), now=0)
    r2.sync(UNIX0)
    assert r2.deliver(*old) == "replay" and not r2.core.paused


def test_retained_redelivery_is_a_duplicate_not_an_attack():
    r = Rig(now=0, cfg=make_cfg(occupancy_ttl_s=600))
    r.sync(UNIX0)
    occ = r.backend.occupancy(70, t=UNIX0)
    assert r.deliver(*occ) == "ok" and r.core.occ == 70
    r.run(700)
    assert r.core.occ is None  # expired
    # The broker hands the retained report out again on reconnect: a duplicate, and stale.
    assert r.deliver(*occ) == "dup" and r.core.occ is None
    assert r.core.rejected == {} and r.core.counts["dup"] == 1
    # A retained report that is still fresh is read again (after a reboot it is the only one there is).
    fresh = r.backend.occupancy(40, t=UNIX0 + 650)
    assert r.deliver(*fresh) == "ok"
    r.run(61)  # occupancy guards are saved lazily (every heartbeat_s)
    r2 = Rig(fs=r.fs.reboot(), now=0)
    r2.sync(UNIX0 + 720)
    assert r2.core.occ is None
    assert r2.deliver(*fresh) == "dup" and r2.core.occ == 40


def test_config_change_applies_and_persists_connector_thresholds_wait_for_the_next_session():
    r = rig()
    r.run(10, pilot="B")
    assert r.deliver(*r.backend.cmd({"op": "config", "config": {"resume_hold_ms": 5000, "heartbeat_s": 30}})) == "ok"
    assert r.core.cfg["heartbeat_s"] == 30
    assert r.core.conn.config["resume_hold_ms"] == 30000  # the open session keeps its thresholds
    r.run(5, pilot="A")
    assert r.core.conn.config["resume_hold_ms"] == 5000
    from stall import config as configmod

    saved = configmod.load(r.fs, "config.json")
    assert saved["resume_hold_ms"] == 5000 and saved["station_key"] == STATION_KEY.hex()


def test_unknown_topics_are_counted():
    r = rig()
    assert r.deliver("overstay/v1/lot-a/st-01/state", b"x") == "topic"
    assert r.deliver(b"elsewhere", b"x") == "topic"
    assert r.core.rejected == {"topic": 2}
