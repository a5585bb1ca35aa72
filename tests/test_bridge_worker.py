# Tests for host_tools/bridge/worker.py: held and merged acks, the pipe protocol (commit, then `done`), drain, a dead worker.
import multiprocessing
import os
import signal

import paho.mqtt.client as mqtt

from host_tools.bridge import db as dbmod
from host_tools.bridge import tariffs, worker
from host_tools.bridge.service import Settings
from host_tools.bridge.mqttconn import BrokerOptions
from protocol import wire
from tests.bridge_helpers import TARIFF, T0, InProcessBridge, Station, count, register, session_record, sqlite_url, wait_for


# -- AckHold: which acks go at once, which wait to be merged ---------------------


def test_a_station_sending_now_and_then_is_acked_at_once():
    h = worker.AckHold(hold_s=1.0, stream_s=0.5)
    assert h.add({"st-01": ["lot-a", b"k", [5]]}, now=10.0) == [("st-01", "lot-a", b"k", [5])]
    assert h.add({"st-01": ["lot-a", b"k", [6]]}, now=10.6) == [("st-01", "lot-a", b"k", [6])]
    assert h.next_due() is None and h.take_due(99.0) == []


def test_a_streaming_station_is_held_and_merged_until_due():
    h = worker.AckHold(hold_s=1.0, stream_s=0.5)
    h.add({"st-01": ["lot-a", b"k", [1]]}, now=10.0)
    assert h.add({"st-01": ["lot-a", b"k", [2]], "st-02": ["lot-a", b"j", [7]]}, now=10.1) == [("st-02", "lot-a", b"j", [7])]
    assert h.add({"st-01": ["lot-a", b"k2", [4, 3]]}, now=10.2) == []
    assert h.next_due() == 11.1
    assert h.take_due(11.0) == []
    # The key that verified the latest message signs the merged ack.
    assert h.take_due(11.1) == [("st-01", "lot-a", b"k2", [2, 3, 4])]
    assert h.next_due() is None


def test_a_busy_worker_holds_everyone_and_a_full_ack_goes_at_once():
    h = worker.AckHold(hold_s=1.0, stream_s=0.5)
    assert h.add({"st-01": ["lot-a", b"k", [1]]}, now=10.0, busy=True) == []
    out = h.add({"st-01": ["lot-a", b"k", list(range(2, worker.MAX_ACKS_PER_MESSAGE + 1))]}, now=10.2)
    assert out == [("st-01", "lot-a", b"k", list(range(1, worker.MAX_ACKS_PER_MESSAGE + 1)))]
    h.add({"st-02": ["lot-a", b"j", [9]]}, now=10.3, busy=True)
    h.add({"st-03": ["lot-b", b"i", [4]]}, now=10.4, busy=True)
    assert [e[0] for e in h.take_due(0.0, force=True)] == ["st-02", "st-03"]  # shutdown sends everything


def test_hold_zero_never_holds():
    h = worker.AckHold(hold_s=0, stream_s=0.5)
    h.add({"st-01": ["lot-a", b"k", [1]]}, now=10.0)
    assert h.add({"st-01": ["lot-a", b"k", [2]]}, now=10.01, busy=True) == [("st-01", "lot-a", b"k", [2])]


# -- the worker process over its pipes, no broker ------------------------------------


class _Worker:
    """worker.main in a spawned process, driven like service.Bridge drives it."""

    def __init__(self, url, **kw):
        ctx = multiprocessing.get_context("spawn")
        rx, self.tx = ctx.Pipe(duplex=False)
        self.rx, tx = ctx.Pipe(duplex=False)
        kw.setdefault("batch_ms", 0)
        ws = worker.WorkerSettings(Settings(BrokerOptions("mqtt://127.0.0.1:1"), url, **kw))
        self.proc = ctx.Process(target=worker.main, args=(rx, tx, ws), daemon=True)
        self.proc.start()
        rx.close()
        tx.close()
        assert self.rx.poll(30) and self.rx.recv()[0] == "ready"

    def send(self, items):
        self.tx.send(("msgs", items, 0))

    def recv(self, timeout=10):
        assert self.rx.poll(timeout), "no answer from the worker"
        return self.rx.recv()

    def outs_until(self, done, timeout=10):
        """Reports until the worker says `done` messages are handled."""
        got = []
        while not got or got[-1][1] < done:
            msg = self.recv(timeout)
            assert msg[0] == "out", msg
            got.append(msg)
        return got


def _setup(tmp_path):
    url = sqlite_url(tmp_path / "w.db")
    db = dbmod.open_db(url)
    key = register(db, "st-01", "lot-a")
    tariffs.set_tariff(db, "lot-a", TARIFF)
    db.close()
    return url, key


def _session(key, n):
    body = session_record("st-01", sid="s-%d" % n, plug_in=T0 + n * 7200)
    return ("overstay/v1/lot-a/st-01/session", wire.encode(key, "session", "st-01", n, T0, body), 0.0)


def test_worker_reports_done_after_the_commit_and_signs_the_acks(tmp_path):
    url, key = _setup(tmp_path)
    w = _Worker(url, ack_hold_s=0)
    try:
        w.send([_session(key, 1), _session(key, 2), ("overstay/v1/lot-a/st-01/session", b"{junk", 0.0)])
        outs = w.outs_until(3)
        # Everything reported done is on disk (the reject too), in receive order.
        assert count(url, "SELECT COUNT(*) FROM sessions") == 2 and count(url, "SELECT COUNT(*) FROM rejects") == 1
        acked = set()
        for _, done, pubs, rep in outs:
            for topic, payload, k in pubs:
                assert topic == "overstay/v1/lot-a/st-01/ack"
                m = wire.decode(payload, lambda s: key, expect_sender="st-01", leaf="ack")
                assert len(m.body["acks"]) == k
                acked.update(m.body["acks"])
        assert acked == {1, 2}
        reps = [o[3] for o in outs if o[3] is not None]
        assert sum(r.size for r in reps) == 3 and sum(r.stored.get("session", 0) for r in reps) == 2
        assert sum(r.fee_checks.get("match", 0) for r in reps) == 2 and sum(r.rejects.get("malformed", 0) for r in reps) == 1
        # The same records again: duplicates, acked again, stored once.
        w.send([_session(key, 1), _session(key, 2)])
        outs = w.outs_until(5)
        assert sum(r.duplicates.get("session", 0) for r in (o[3] for o in outs) if r) == 2
        assert count(url, "SELECT COUNT(*) FROM sessions") == 2
        # Drain: the worker answers "stopped" and exits.
        w.tx.send(("drain", 5.0))
        assert w.recv() == ("stopped", 0)
        w.proc.join(10)
        assert w.proc.exitcode == 0
    finally:
        if w.proc.is_alive():
            w.proc.kill()


def test_held_acks_are_sent_when_due_and_at_drain(tmp_path):
    url, key = _setup(tmp_path)
    w = _Worker(url, ack_hold_s=0.3, ack_stream_s=60)
    try:
        w.send([_session(key, 1)])
        first = w.outs_until(1)
        assert [p for o in first for p in o[2]]  # not streaming yet: acked at once
        w.send([_session(key, 2)])
        assert w.outs_until(2)[-1][2] == []  # streaming now: held...
        due = w.recv(5)  # ...and sent on its own, without new messages
        assert due[0] == "out" and due[1] == 2 and due[3] is None and len(due[2]) == 1
        w.send([_session(key, 3)])
        w.outs_until(3)
        w.tx.send(("drain", 5.0))
        last = w.recv(5)
        assert last[0] == "out" and wire.decode(last[2][0][1], lambda s: key, leaf="ack").body["acks"] == [3]
        assert w.recv() == ("stopped", 0)
    finally:
        w.proc.join(10)
        if w.proc.is_alive():
            w.proc.kill()


def test_worker_exits_when_the_paho_process_goes_away(tmp_path):
    url, _ = _setup(tmp_path)
    w = _Worker(url)
    w.tx.close()  # end of file, as when the paho process dies
    w.proc.join(10)
    assert w.proc.exitcode == 0


# -- the bridge around it ---------------------------------------------------------------


def test_acks_of_a_streaming_station_are_merged_end_to_end(tmp_path, mosquitto):
    url = sqlite_url(tmp_path / "b.db")
    db = dbmod.open_db(url)
    key = register(db, "st-01", "lot-a")
    db.close()
    br = InProcessBridge(mosquitto.url, url, ack_hold_s=0.5, ack_stream_s=5).start()
    s = Station(mosquitto.port, "st-01", "lot-a", key)
    try:
        ns = [s.event("status")[0] for _ in range(40)]
        s.wait_acked(ns)
        assert len(s.ack_msgs) < len(ns) and not s.bad_acks
        assert br.metric("overstay_bridge_acks_published_total") == len(s.ack_msgs)
    finally:
        s.close()
        br.stop()


def test_a_dead_worker_stops_the_bridge_without_acking(tmp_path, mosquitto):
    url = sqlite_url(tmp_path / "b.db")
    db = dbmod.open_db(url)
    key = register(db, "st-01", "lot-a")
    db.close()
    br = InProcessBridge(mosquitto.url, url).start()
    b = br.bridge
    s = Station(mosquitto.port, "st-01", "lot-a", key)
    try:
        n, _ = s.event("status")
        s.wait_acked([n])
        os.kill(b.proc.pid, signal.SIGKILL)
        wait_for(lambda: b.stop_event.is_set(), 10, what="bridge stopping after its worker died")
        assert b.error and '"event":"worker_crashed"' in br.logs()
        s.event("status")  # not received any more, never acked
    finally:
        s.close()
        br.stop()
    assert b.stopped.is_set() and count(url, "SELECT COUNT(*) FROM events") == 1
    # The broker kept the unacked message for the bridge's session.
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=b.s.client_id, clean_session=False, protocol=mqtt.MQTTv311)
    got = []
    c.on_message = lambda cl, u, m: got.append(m.topic)
    c.connect("127.0.0.1", mosquitto.port)
    c.loop_start()
    try:
        wait_for(lambda: got, 10, what="redelivery of the unacked message")
    finally:
        c.disconnect()
        c.loop_stop()


def test_a_race_on_a_unique_key_reruns_the_batch():
    # PostgreSQL: another bridge stored the same session id meanwhile (db.is_race).
    from host_tools.bridge import ingest

    class Raced(Exception):
        pass

    class DB:
        errors = (Raced,)

        def is_race(self, e):
            return True

        def is_permanent(self, e):
            return True

    class Ing:
        calls = 0

        def process(self, batch):
            Ing.calls += 1
            if Ing.calls == 1:
                raise Raced("duplicate key value violates unique constraint")
            return ingest.Result()

    w = worker.Worker(worker.WorkerSettings(Settings(BrokerOptions("mqtt://127.0.0.1:1"), "sqlite:///x.db")), None, None)
    w.db, w.ingestor = DB(), Ing()
    rep = worker.Report()
    assert w._handle([ingest.Inbound("t", b"p")], rep)
    assert Ing.calls == 2 and [e[1] for e in rep.events] == ["commit_raced"] and rep.size == 1
