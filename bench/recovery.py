# Recovery after an outage: how long until a backlog of 100,000 queued records is committed by the bridge and acked to the stations.
#
# Both outages use 1,000 stations with 100 records each (every record signed
# with its station's key, as a stall signs it), against a Mosquitto from
# tests/broker.py and `overstay bridge` on SQLite as a subprocess with its
# default settings.
#
#   bridge outage   The bridge is down and the broker up. The bridge's
#                   persistent session (clean_session=False, QoS 1) queues
#                   everything the stations publish meanwhile: 100,000
#                   signed session records, in Mosquitto. Recovery: from
#                   starting `overstay bridge` (the process spawn) to the
#                   last record committed and listed in a published station
#                   ack (the bridge's own log timestamps). Checked after:
#                   every record in the database once, fee verified, every
#                   n in a validly signed ack (bench.bridge_ingest helpers).
#   broker outage   The broker is down, so nothing leaves the stalls: the
#                   records wait in each stall's outbox, on its flash
#                   journal (the firmware's StallCore on MemFs, the bytes a
#                   board keeps), 86 status events and 14 session records per
#                   stall. The broker comes back empty (no persistence). The
#                   stalls' links (the firmware's MqttLink, one TCP
#                   connection each, production back-off: up to
#                   mqtt_backoff_max_ms = 60 s, full jitter) and the bridge
#                   (paho: 1 s doubling to 30 s) reconnect by themselves.
#                   Recovery: from the broker listening again to the last
#                   stall outbox empty, i.e. every record retired by the
#                   bridge's signed ack after its commit. Also shown: when
#                   the bridge and the last stall were back, and the drain
#                   after that. The stalls run in this process (one asyncio
#                   loop pumping every outbox every 20 ms, as the App's
#                   outbox task does), so they compete with the bridge and
#                   the broker for the machine's cores.
#
# The records are put into the outboxes with the core's own journal and
# sequence counter (Outbox.put, as StallCore does once it has encoded a
# message), signed with a C-JSON signer that bench.bridge_ingest checks
# against wire.encode: building 100,000 records through the portable
# encoder would take minutes.
#
# Usage: python -m bench.recovery [--records 100000] [--stations 1000] [--outage 120] [--only bridge|broker] [--quick]
import argparse
import asyncio
import os
import random
import sys
import tempfile
import time

from bench import bridge_ingest as bi
from host_tools.bridge import db as dbmod
from host_tools.bridge import keys as bkeys
from host_tools.bridge import tariffs
from protocol import wire
from tests.broker import Mosquitto

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(REPO, "firmware") not in sys.path:
    sys.path.insert(0, os.path.join(REPO, "firmware"))

from stall import config as configmod  # noqa: E402
from stall.core import StallCore  # noqa: E402
from stall.memfs import MemFs  # noqa: E402
from stall.mqtt_link import MqttLink  # noqa: E402
from stall.outbox import LEAF_EVENT, LEAF_SESSION  # noqa: E402
from stall.uplink import Uplink  # noqa: E402

SITE = "rec"
SESSIONS_PER_STALL = 14


def _wait(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for " + what)


def _log_has(path, needle, count=1):
    try:
        with open(path, "r", errors="replace") as f:
            return f.read().count(needle) >= count
    except OSError:
        return False


# -- bridge outage -------------------------------------------------------------------------


def bridge_outage(records, stations, out=print):
    rng = random.Random(11)
    sts = bi.station_names(stations, 20)
    keys_ = {st: rng.randbytes(32) for st, _ in sts}
    backlog = bi.make_backlog(sts, keys_, records)
    n = len(backlog)
    with tempfile.TemporaryDirectory(prefix="overstay-recovery-") as tmp:
        broker = Mosquitto(os.path.join(tmp, "mosquitto"), persistence=True, extra=bi.BROKER_EXTRA).start()
        try:
            url = "sqlite:///" + os.path.join(tmp, "bridge.db")
            bi.prepare_db(url, sts, keys_)
            bi.make_session(broker.port, "recovery-bridge", bi.STATION_FILTERS)  # the bridge's session, then it goes away
            bi.make_session(broker.port, "recovery-acks", [wire.topic_filter("ack")])
            rate = bi.publish_all(broker.port, backlog)
            out("bridge outage: %d signed session records from %d stations queued in the bridge's persistent session (published at %.0f msg/s)"
                % (n, stations, rate))
            t0 = time.time()
            b = bi.BridgeRun(tmp, broker.url, url, "recovery-bridge").start()
            try:
                b.wait_stored(n, timeout=max(300, n / 200))
            finally:
                rc = b.stop()
            done = max(b.t_stored, b.t_acked)
            stored = bi.scalar(url, "SELECT COUNT(*) FROM sessions")
            verified = bi.scalar(url, "SELECT COUNT(*) FROM sessions WHERE fee_verified = 1")
            acks, bad, ack_msgs = bi.collect_acks(broker.port, "recovery-acks", keys_)
        finally:
            broker.kill()
    want = {}
    for _, _, st, k in backlog:
        want.setdefault(st, set()).add(k)
    missing = sum(len(ns - acks.get(st, set())) for st, ns in want.items())
    out("  recovery %.1f s from starting the bridge to the last record committed and acked (%.0f records/s);"
        " the bridge was connected after %.1f s" % (done - t0, n / (done - t0), b.t_connected - t0))
    problems = []
    if rc != 0 or stored != n or verified != n or missing or bad:
        problems.append("exit %s, %d stored, %d verified, %d without a signed ack, %d bad acks" % (rc, stored, verified, missing, bad))
    for p in problems:
        out("  PROBLEM: " + p)
    out("  checked: %d rows, every fee verified, every n in a signed ack (%d ack messages)" % (stored, ack_msgs))
    return {"records": n, "seconds": done - t0, "connected_s": b.t_connected - t0, "problems": problems}


# -- broker outage -------------------------------------------------------------------------


class Clock:
    """A stall's monotonic ms: base_ms, then real time."""

    def __init__(self, base_ms):
        self.base = base_ms
        self.t0 = time.monotonic()

    def now_ms(self):
        return self.base + int((time.monotonic() - self.t0) * 1000)


def new_stall(station, key, site_key, port):
    """A booted, synced StallCore (its boot event and state made) and its clock."""
    cfg = configmod.validate({"site": SITE, "station": station, "station_key": key.hex(), "site_key": site_key.hex(),
                              "mqtt_host": "127.0.0.1", "mqtt_port": port, "tariff": bi.TARIFF})
    core = StallCore(cfg, MemFs())
    core.start(0)
    core.wall(bi.T0 * 1000, 0)
    return core


def fill_outbox(core, records, rng, sign, now):
    """Put `records` signed messages into the outbox: status events and SESSIONS_PER_STALL session records."""
    station = core.station
    sessions = min(SESSIONS_PER_STALL, records)
    every = max(1, records // max(1, sessions))
    k = 0
    goal = len(core.outbox) + records
    while len(core.outbox) < goal:
        now += 1000
        n = core._next_seq(now)  # the core's own counter: n never repeats, and its high-water mark is journaled
        t = core.unix(now)
        if k < sessions and len(core.outbox) % every == every - 1:
            body = bi.session_body(station, k, rng)
            body["connector"] = 1
            core.outbox.put(LEAF_SESSION, n, sign(wire.SESSION, station, n, t, body), "")
            k += 1
        else:
            body = {"at": t, "connector": 1, "from": "Charging", "session": "%s-%d" % (station, n), "status": "SuspendedEV", "synced": True, "type": "status"}
            core.outbox.put(LEAF_EVENT, n, sign(wire.EVENT, station, n, t, body), "")


async def _run_broker_outage(cores, keys_, per, rng, port, outage_s, broker, db_url, bridge_log, out):
    links = []
    ups = []
    for core in cores:
        link = MqttLink("127.0.0.1", port, core.station, keepalive_s=core.cfg["mqtt_keepalive_s"],
                        backoff_max_ms=core.cfg["mqtt_backoff_max_ms"], will=(core.t_avail, wire.AVAIL_OFFLINE, 1, True),
                        clean_session=False, subscriptions=[(core.t_ack, 1), (core.t_cmd, 1), (core.t_occupancy, 1), (core.t_tariff, 1)])
        up = Uplink(core, Clock(0))
        up.attach(link)
        links.append(link)
        ups.append(up)
        link.start()

    async def pump_until(done, timeout, what):
        end = time.monotonic() + timeout
        while not done():
            if time.monotonic() > end:
                raise RuntimeError("timed out: " + what)
            for up in ups:
                up.pump(up.clock.now_ms())
            await asyncio.sleep(0.02)

    # In service before the outage: every stall connected, its boot event acked,
    # the bridge's gap scanner has seen it (docs/bridge.md: the low-water mark).
    def in_service():
        return all(link.connected for link in links) and not any(len(c.outbox) for c in cores)

    await pump_until(in_service, 120, "stalls in service")
    t_scan = time.monotonic()
    await pump_until(lambda: time.monotonic() - t_scan > 1 and bi.scalar(db_url, "SELECT COUNT(*) FROM stations WHERE scan_n IS NULL") == 0, 60, "gap scanner")
    before = bi.scalar(db_url, "SELECT COUNT(*) FROM audit WHERE kind <> 'state'")  # the boot events
    broker.kill()  # the outage starts
    t_out = time.monotonic()
    t = time.perf_counter()
    for core in cores:
        fill_outbox(core, per, rng, bi.signer(keys_[core.station]), ups[0].clock.now_ms())
    total = sum(len(c.outbox) for c in cores)
    out("broker outage: %d records (%d per stall: events and %d session records) in %d stalls' journaled outboxes, built in %.1f s;"
        " links retrying for %.0f s before the broker comes back empty" % (total, per, SESSIONS_PER_STALL, len(cores), time.perf_counter() - t, outage_s))
    await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - t_out)))
    subs_before = open(bridge_log, errors="replace").read().count('"event":"subscribed"')
    broker.start()
    t0 = time.time()
    t_bridge = t_all = None
    left_then = None
    while True:
        for up in ups:
            up.pump(up.clock.now_ms())
        if t_all is None and all(link.connected for link in links):
            t_all = time.time()
            left_then = sum(len(c.outbox) for c in cores)
        if t_bridge is None and _log_has(bridge_log, '"event":"subscribed"', subs_before + 1):
            t_bridge = time.time()
        left = sum(len(c.outbox) for c in cores)
        if left == 0:
            t_done = time.time()
            break
        if time.time() - t0 > 900:
            raise RuntimeError("%d of %d records still unacked after 900 s" % (left, total))
        await asyncio.sleep(0.02)
    for link in links:
        link.stop()
    await asyncio.sleep(0.2)
    resent = sum(c.outbox.resent for c in cores)
    return total, before, t0, t_bridge, t_all, t_done, resent, left_then


def broker_outage(records, stations, outage_s, out=print):
    rng = random.Random(12)
    per = records // stations
    names = ["rec-%05d" % i for i in range(stations)]
    keys_ = {st: rng.randbytes(32) for st in names}
    with tempfile.TemporaryDirectory(prefix="overstay-recovery-") as tmp:
        broker = Mosquitto(os.path.join(tmp, "mosquitto"), persistence=False).start()
        bridge = None
        try:
            url = "sqlite:///" + os.path.join(tmp, "bridge.db")
            db = dbmod.open_db(url)
            site_key, _ = bkeys.ensure_site(db, SITE)
            for st in names:
                bkeys.register_station(db, st, SITE, keys_[st])
            tariffs.set_tariff(db, SITE, bi.TARIFF)
            db.close()
            bridge = bi.BridgeRun(tmp, broker.url, url, "recovery-bridge-b").start()
            _wait(lambda: _log_has(bridge.log_path, '"event":"subscribed"'), 60, "the bridge to subscribe")
            cores = [new_stall(st, keys_[st], site_key, broker.port) for st in names]
            total, before, t0, t_bridge, t_all, t_done, resent, left_then = asyncio.run(
                _run_broker_outage(cores, keys_, per, rng, broker.port, outage_s, broker, url, bridge.log_path, out))
        finally:
            if bridge is not None:
                bridge.stop()
            broker.kill()
        audit = bi.scalar(url, "SELECT COUNT(*) FROM audit WHERE kind <> 'state'") - before
        sessions = bi.scalar(url, "SELECT COUNT(*) FROM sessions")
    t_back = max(t_all or t0, t_bridge or t0)
    out("  recovery %.1f s from the broker back to every outbox empty (%.0f records/s overall): bridge subscribed again after %.1f s,"
        " last stall connected after %.1f s with %s records still unacked, drained %.1f s later; %d resends"
        % (t_done - t0, total / max(1e-9, t_done - t0), (t_bridge or t_done) - t0, (t_all or t_done) - t0,
           left_then if left_then is not None else "?", t_done - t_back, resent))
    problems = []
    if audit != total or sessions != stations * SESSIONS_PER_STALL:
        problems.append("the database holds %d records (%d sessions), want %d (%d)" % (audit, sessions, total, stations * SESSIONS_PER_STALL))
    for p in problems:
        out("  PROBLEM: " + p)
    out("  checked: %d records in the audit ledger exactly once, %d session rows" % (audit, sessions))
    return {"records": total, "seconds": t_done - t0, "bridge_s": (t_bridge or t_done) - t0, "stalls_s": (t_all or t_done) - t0, "problems": problems}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.recovery")
    p.add_argument("--records", type=int, default=100000)
    p.add_argument("--stations", type=int, default=1000)
    p.add_argument("--outage", type=float, default=120.0, help="seconds the broker stays down while the stalls retry (default 120)")
    p.add_argument("--only", choices=("bridge", "broker"))
    p.add_argument("--quick", action="store_true", help="10,000 records from 100 stations, a 15 s outage")
    a = p.parse_args([] if argv is None else argv)
    if a.quick:
        a.records, a.stations, a.outage = 10000, 100, 15.0
    print("load average %.2f %.2f %.2f on %d CPUs (other work on this machine competes)" % (os.getloadavg() + (os.cpu_count() or 0,)), flush=True)
    res = {}
    if a.only in (None, "bridge"):
        res["bridge"] = bridge_outage(a.records, a.stations, out=lambda s: print(s, flush=True))
    if a.only in (None, "broker"):
        res["broker"] = broker_outage(a.records, a.stations, a.outage, out=lambda s: print(s, flush=True))
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
