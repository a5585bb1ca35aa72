# Outbox: exact bytes journaled before the first send, retired only by the bridge's signed ack, resent after a timeout or a reconnect.
from protocol import journal, wire
from tests.fw_helpers import STATION_KEY, UNIX0, Backend, MemFs, Rig, make_cfg

from stall import store  # noqa: I001 (importable once fw_helpers put firmware/ on the path)
from stall.outbox import Outbox


def plug(r):
    r.run(10, pilot="B")
    r.run(60, pilot="C", ma=16000)


def test_only_the_bridge_ack_retires_records_never_sending():
    r = Rig(now=0)
    r.sync(UNIX0)
    plug(r)
    n = len(r.core.outbox)
    first = r.sent()
    assert len(first) == n > 0
    # Sent, PUBACKed by the broker (the core never even hears of PUBACKs): still kept.
    assert len(r.core.outbox) == n
    # After reboot they are all still there, with the same bytes.
    r2 = Rig(fs=r.fs.reboot(), now=0)
    again = [m for m in r2.sent() if m.seq in {x.seq for x in first}]
    assert [m.raw for m in again] == [m.raw for m in first]
    # The ack retires exactly the acked ones.
    half = [m.seq for m in first[: n // 2]]
    assert r2.deliver(*r2.backend.ack(half)) == "ack"
    left = {e[0] for e in r2.core.outbox.entries}
    assert not (left & set(half)) and {m.seq for m in first[n // 2 :]} <= left


def test_ack_with_a_bad_signature_or_for_another_station_retires_nothing():
    r = Rig(now=0)
    plug(r)
    sent = [m.seq for m in r.sent()]
    n = len(r.core.outbox)
    topic = wire.station_topic("lot-a", "st-01", "ack")
    forged = wire.encode(b"0123456789abcdef0123", "ack", "st-01", 1, UNIX0, {"acks": sent})
    assert r.deliver(topic, forged) == "ack_signature"
    other = wire.encode(STATION_KEY, "ack", "st-02", 1, UNIX0, {"acks": sent})
    assert r.deliver(topic, other) == "ack_station"
    assert r.deliver(topic, b"not json") == "ack_malformed"
    assert len(r.core.outbox) == n and r.core.rejected == {"ack_signature": 1, "ack_station": 1, "ack_malformed": 1}


def test_unacked_records_are_resent_after_the_timeout_and_after_a_reconnect():
    r = Rig(now=0, cfg=make_cfg(resend_s=30))
    plug(r)
    first = r.sent()
    assert r.sent() == []  # in flight, not due yet
    r.now += 30000
    again = r.sent()
    assert [m.raw for m in again] == [m.raw for m in first]  # the stored bytes, not a re-encoding
    r.core.link_down()
    r.core.link_up(r.now)
    assert [m.raw for m in r.sent()] == [m.raw for m in first]


def test_window_bounds_messages_awaiting_acks():
    r = Rig(now=0, cfg=make_cfg(outbox_window=3))
    r.run(10, pilot="B")
    for _ in range(5):
        r.run(40, pilot="C", ma=16000)
        r.run(100, pilot="C", ma=0)
    assert len(r.core.outbox) > 6
    got = r.sent()
    assert len(got) == 3 and r.sent() == []
    r.deliver(*r.backend.ack([got[0].seq]))
    assert len(r.sent()) == 1


def test_billing_survives_a_long_outage_telemetry_is_dropped_oldest_first():
    r = Rig(now=0, cfg=make_cfg(journal_soft=16384, journal_hard=262144, session_reserve=65536))
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(100, pilot="C", ma=16000)
    r.run(6 * 3600, step_ms=5000, pilot="C", ma=0)  # six hours idle, offline: 360 idle ticks
    r.run(5, pilot="A")
    assert r.core.outbox.lost_telemetry > 0
    msgs = r.drain()
    kinds = [m.body["type"] for m in msgs if m.kind == "event"]
    assert kinds.count("status") == 4 and kinds.count("charge_complete") == 1 and kinds.count("idle_fee_started") == 1
    ticks = [m.body["billed_min"] for m in msgs if m.kind == "event" and m.body["type"] == "idle_tick"]
    assert ticks and ticks == sorted(ticks) and ticks[-1] == (6 * 3600 - 5 - 300) // 60  # the newest kept
    assert len(ticks) < 300
    (s,) = r.sessions(msgs)
    assert s["fee"] == s["billed_min"] * 50


def test_a_full_journal_refuses_new_sessions_until_acks_make_room():
    cfg = make_cfg(journal_soft=2048, journal_hard=12000, session_reserve=6000)
    r = Rig(now=0, cfg=cfg)
    r.sync(UNIX0)
    for _ in range(8):  # offline: sessions pile up
        r.run(5, pilot="B")
        r.run(5, pilot="A")
    assert r.core.blocked
    r.run(5, pilot="B")
    assert r.core.tab is None and r.core.relay is False
    r.drain()
    r.run(2)
    assert not r.core.blocked and r.core.tab is not None


def test_long_session_records_are_chunked_and_sent_whole():
    cfg = make_cfg(max_timeline=200, resume_hold_ms=1000, complete_hold_ms=1000)
    r = Rig(now=0, cfg=cfg)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    for _ in range(70):
        r.run(5, pilot="C", ma=16000)
        r.run(5, pilot="C", ma=0)
    r.run(5, pilot="A")
    msgs = r.drain()
    (s,) = r.sessions(msgs)
    raw = [m.raw for m in msgs if m.kind == "session"][0]
    assert len(raw) > journal.MAX_PAYLOAD
    assert len(s["timeline"]) == 1 + 140 + 1 and "coalesced" not in s


def test_outbox_rebuilds_from_the_journal_and_drops_half_written_items():
    fs = MemFs()
    j = journal.Journal(fs, "j", 1 << 20, 1 << 20).open()
    rd = store.Reader(fs, "j", j)
    ob = Outbox(j, rd)
    big = b"x" * (3 * store.CHUNK + 5)
    assert ob.put("s", 7, big, "42")
    assert ob.put("e", 8, b"small")
    assert ob.payload(ob.entries[0]) == big
    # A power cut after the head and one continuation of a second big item.
    ids = store.append_chunked(j, journal.BILLING, "Ws9 %d 43\n", big)
    j.ack(*ids[2:])  # as if the last parts never made it (retired = gone)
    assert len(ids) == 4
    r = Rig(fs=fs.reboot(), start=False)
    r.core.j = journal.Journal(r.fs, "j", 1 << 20, 1 << 20)
    r.core.reader = store.Reader(r.fs, "j", r.core.j)
    r.core.outbox = Outbox(r.core.j, r.core.reader)
    r.core.start(0)
    seqs = [e[0] for e in r.core.outbox.entries]
    assert seqs[:2] == [7, 8] and 9 not in seqs
    assert r.core.outbox.payload(r.core.outbox.entries[0]) == big


def test_backend_helper_signs_what_the_core_accepts():
    b = Backend()
    topic, payload = b.ack([1])
    assert wire.decode(payload, lambda s: STATION_KEY).body == {"acks": [1]}


def test_on_real_files_sends_read_the_journal_after_compactions(tmp_path):
    # OsFs replaces the file on compaction: nothing may keep reading an old handle.
    from protocol.journal import OsFs

    from stall.core import StallCore

    cfg = make_cfg(journal_soft=2048, journal_hard=65536, session_reserve=8192)
    core = StallCore(cfg, OsFs(), str(tmp_path) + "/")
    core.start(0)
    core.wall(UNIX0 * 1000, 0)
    b = Backend()
    now = 0
    for cycle in range(30):
        for pilot, ma, secs in (("B", 0, 2), ("C", 16000, 40), ("C", 0, 70), ("A", 0, 2)):
            for _ in range(secs):
                now += 1000
                core.sample(now, pilot, ma, 0, False)
                core.tick(now)
        due = core.outbox.due(now)
        got = [wire.decode(core.outbox.payload(e), lambda s: STATION_KEY) for e in due]
        for e in due:
            core.outbox.mark_sent(e, now)
        assert core.on_message(*b.ack([m.seq for m in got]), now) == "ack"
    assert core.j.compactions > 5 and len(core.outbox) == 0
    assert core.counts["sessions"] == 30
