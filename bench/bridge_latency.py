# Bridge latency: 1,000 stations each publish one signed session record per second; publish -> signed application ack, p50/p95/p99/max.
#
# `overstay bridge` runs as a subprocess with its default settings against
# its own Mosquitto (tests/broker.py, persistence on) and SQLite or a
# throwaway PostgreSQL database. The stations are paho-mqtt clients, one
# connection each (clean session, subscribed to their own ack topic at QoS
# 1), driven by a few load processes with one selector loop each (one file
# descriptor per client). Each station publishes at its own random phase
# within the second. Latency of a record: from just before publish() to the
# arrival of a correctly signed ack (HMAC with the station key) listing its
# n, on the same process's monotonic clock. The first seconds are warm-up
# and not counted.
# Usage: python -m bench.bridge_latency [--stations 1000] [--seconds 30] [--db sqlite,postgresql]
import argparse
import hashlib
import hmac
import multiprocessing
import os
import random
import selectors
import sys
import tempfile
import time

import orjson
import paho.mqtt.client as mqtt

from bench import bridge_ingest as bi
from protocol import wire
from tests.broker import Mosquitto

WARMUP_S = 3


def _load_process(port, names, keys_, start_wall, seconds, seed, conn):
    """One load process: connect its stations, publish on schedule, time the acks; send the latencies back."""
    rng = random.Random(seed)
    sel = selectors.DefaultSelector()
    want_write = set()
    sent = {}  # (station, n) -> monotonic publish time
    lat = []  # seconds, for records published after the warm-up
    bad = [0]
    ready = [0]
    mono_start = time.monotonic() + (start_wall - time.time())
    counted_from = mono_start + WARMUP_S

    def on_connect(c, st, flags, rc, props):
        c.subscribe(wire.station_topic(st[1], st[0], "ack"), qos=1)

    def on_subscribe(c, st, mid, rcs, props):
        ready[0] += 1

    def on_message(c, st, m):
        now = time.monotonic()
        p = m.payload
        try:
            env = orjson.loads(p)
            unsigned = p[: len(p) - 74] + b"}"
            if env["s"] != st[0] or not hmac.compare_digest(hmac.new(keys_[st[0]], unsigned, hashlib.sha256).hexdigest(), env["sig"]):
                raise ValueError("bad ack")
        except Exception:  # noqa: BLE001 - counted and reported
            bad[0] += 1
            return
        for n in env["b"]["acks"]:
            t = sent.pop((st[0], n), None)
            if t is not None and t >= counted_from:
                lat.append(now - t)

    clients = []
    for st, site in names:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lat-" + st, clean_session=True, protocol=mqtt.MQTTv311, userdata=(st, site))
        c.on_connect = on_connect
        c.on_subscribe = on_subscribe
        c.on_message = on_message
        c.on_socket_register_write = lambda cl, u, s: want_write.add(cl)
        c.on_socket_unregister_write = lambda cl, u, s: want_write.discard(cl)
        c.connect("127.0.0.1", port, keepalive=120)
        sel.register(c.socket(), selectors.EVENT_READ, c)
        clients.append(c)

    def pump(timeout):
        for c in list(want_write):  # publishes and PUBACKs first: select() may block
            c.loop_write()
        for key, _ in sel.select(timeout):
            key.data.loop_read()
        for c in list(want_write):
            c.loop_write()

    deadline = time.monotonic() + 60
    while ready[0] < len(clients) and time.monotonic() < deadline:
        pump(0.05)
    conn.send(("ready", ready[0]))
    # Build the signed records before the clock starts.
    sign = {st: bi.signer(keys_[st]) for st, _ in names}
    plan = []  # (due monotonic, client index, topic, payload, n)
    per = seconds + WARMUP_S
    for i, (st, site) in enumerate(names):
        phase = rng.random()
        topic = wire.station_topic(site, st, "session")
        for k in range(per):
            body = bi.session_body(st, k, rng)
            plan.append((mono_start + phase + k, i, topic, sign[st](wire.SESSION, st, k + 1, body["unplug"], body), k + 1))
    plan.sort()
    j = 0
    misc_at = time.monotonic()
    while j < len(plan):
        now = time.monotonic()
        while j < len(plan) and plan[j][0] <= now:
            _, i, topic, payload, n = plan[j]
            sent[(names[i][0], n)] = time.monotonic()
            clients[i].publish(topic, payload, qos=1)
            j += 1
        if now >= misc_at:
            for c in clients:
                c.loop_misc()
            misc_at = now + 1.0
        nxt = plan[j][0] if j < len(plan) else now
        pump(max(0.0, min(nxt - time.monotonic(), 0.05)))
    end = time.monotonic() + 3.0
    while time.monotonic() < end and any(t >= counted_from for t in sent.values()):
        pump(0.05)
    missing = sum(1 for t in sent.values() if t >= counted_from)
    for c in clients:
        c.disconnect()
        c.loop_write()
    conn.send(("done", lat, missing, bad[0]))
    conn.close()


def measure(port, stations, keys_, seconds, procs):
    ctx = multiprocessing.get_context("fork")
    start_wall = time.time() + 5 + len(stations) / 200.0  # time for every client to connect
    chunks = [stations[i::procs] for i in range(procs)]
    pipes = []
    workers = []
    for i, chunk in enumerate(chunks):
        a, b = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_load_process, args=(port, chunk, {s: keys_[s] for s, _ in chunk}, start_wall, seconds, 100 + i, b), daemon=True)
        p.start()
        pipes.append(a)
        workers.append(p)
    connected = 0
    for a in pipes:
        tag, k = a.recv()
        connected += k
    if time.time() > start_wall:
        raise RuntimeError("stations connected too slowly for the schedule")
    lat, missing, bad = [], 0, 0
    for a in pipes:
        tag, l_, m, b_ = a.recv()
        lat += l_
        missing += m
        bad += b_
    for p in workers:
        p.join(10)
    return connected, lat, missing, bad


def pct(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def run(stations=1000, seconds=30, sites=20, dbs=("sqlite", "postgresql"), procs=2, extra=(), out=print):
    out(bi.machine_line())
    rng = random.Random(11)
    sts = bi.station_names(stations, sites)
    keys_ = {st: rng.randbytes(32) for st, _ in sts}
    pg_skip = bi.pg_available() if "postgresql" in dbs else None
    results = {}
    with tempfile.TemporaryDirectory(prefix="overstay-bench-") as tmp:
        broker = Mosquitto(os.path.join(tmp, "mosquitto"), persistence=True, extra=bi.BROKER_EXTRA).start()
        try:
            for label in dbs:
                if label == "postgresql" and pg_skip is not None:
                    out("postgresql: skipped (no server at %s: %s)" % (bi.PG_SERVER, pg_skip))
                    continue
                pg = None
                if label == "sqlite":
                    url = "sqlite:///" + os.path.join(tmp, "latency.db")
                else:
                    pg = bi.PgScratch()
                    url = pg.url
                try:
                    bi.prepare_db(url, sts, keys_)
                    load = os.getloadavg()
                    b = bi.BridgeRun(tmp, broker.url, url, "bench-latency-" + label, *extra).start()
                    try:
                        deadline = time.monotonic() + 30
                        while b.t_connected is None and time.monotonic() < deadline:
                            time.sleep(0.05)
                            b.poll_log()
                        connected, lat, missing, bad = measure(broker.port, sts, keys_, seconds, procs)
                    finally:
                        rc = b.stop()
                finally:
                    if pg is not None:
                        pg.close()
                lat.sort()
                ms = [1000 * pct(lat, q) for q in (0.5, 0.95, 0.99)] + [1000 * (lat[-1] if lat else float("nan"))]
                results[label] = {"n": len(lat), "p50": ms[0], "p95": ms[1], "p99": ms[2], "max": ms[3], "missing": missing, "bad": bad}
                out("%-10s %d stations x 1 record/s, %d s: %d acked records; publish -> signed ack  p50 %.1f ms  p95 %.1f ms  p99 %.1f ms  max %.1f ms  (load average before %.2f)"
                    % (label, connected, seconds, len(lat), ms[0], ms[1], ms[2], ms[3], load[0]))
                if missing or bad or rc != 0 or b.errors:
                    out("    PROBLEM: %d records without an ack, %d bad acks, bridge exit %s, %d error lines" % (missing, bad, rc, len(b.errors)))
        finally:
            broker.kill()
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bridge_latency")
    p.add_argument("--stations", type=int, default=1000)
    p.add_argument("--seconds", type=int, default=int(os.environ.get("OVERSTAY_BENCH_SECONDS", 30)))
    p.add_argument("--db", default="sqlite,postgresql")
    p.add_argument("--procs", type=int, default=2, help="load processes (stations are split among them)")
    p.add_argument("bridge_args", nargs="*", help="extra `overstay bridge` flags (after --)")
    a = p.parse_args([] if argv is None else argv)
    run(a.stations, a.seconds, dbs=tuple(a.db.split(",")), procs=a.procs, extra=a.bridge_args)


if __name__ == "__main__":
    main(sys.argv[1:])
