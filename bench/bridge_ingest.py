# Bridge ingest throughput: a QoS 1 backlog of signed session records drained by a bare paho subscriber, then by `overstay bridge` (SQLite, PostgreSQL).
#
# One Mosquitto (tests/broker.py, persistence on, autosave every 30 s as in
# deploy/mosquitto/production.conf) holds one backlog of N signed session
# records from many stations. Every consumer has its own persistent session
# subscribed before the records were published, so each drains the same
# queue of the same bytes, in the same run:
#
#   bare      a paho-mqtt 2.x client in this process: clean_session=False,
#             manual_ack=True, PUBACKs sent in batches of 500 from on_message
#             (the bridge acks after each commit, so the baseline acks per
#             batch too); nothing else. Clock: CONNACK to the N-th message.
#   bridge    `overstay bridge` as a subprocess with its default settings:
#             verify (signature, schema, sequence), classify, re-price the
#             fee, commit, MQTT ack, signed application ack. Clock: its
#             `connected` log line to the debug log line after which every
#             record is stored and listed in a published station ack (the
#             bridge's own timestamps, so this process does not compete for
#             CPU while it runs). Afterwards the rows, the fee verdicts and
#             every signed ack (collected by a persistent session that was
#             offline meanwhile) are checked, and the CPU time each process
#             used (from /proc) is printed per record.
#
# Records are interleaved across stations (station 1..S, then again), like a
# fleet's outboxes after an outage: a batch of 500 holds ~500 stations.
# The ratio divides by the mean of two bare drains, one before and one after
# the bridges, so both see about the same machine load. --baseline DIR also
# runs another checkout's bridge on the same backlog (before/after numbers).
# Usage: python -m bench.bridge_ingest [--messages N] [--stations S] [--db sqlite,postgresql]
#            [--baseline DIR] [--broker-conf LINES] [-- BRIDGE FLAGS]
import argparse
import calendar
import hashlib
import hmac
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time

import orjson
import paho.mqtt.client as mqtt

from host_tools.bridge import db as dbmod
from host_tools.bridge import keys, tariffs
from protocol import session as sessmod
from protocol import wire
from tests.broker import Mosquitto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The bridge under test runs from this tree; point OVERSTAY_BENCH_BRIDGE_ROOT
# at another checkout (e.g. an export of the previous commit) to compare
# two versions on the same machine under the same load.
BRIDGE_ROOT = os.environ.get("OVERSTAY_BENCH_BRIDGE_ROOT") or ROOT
T0 = 1763830800  # 2025-11-22 17:00 UTC
TARIFF = {"id": "bench", "version": 1, "currency": "USD", "grace_s": 600, "rate": 40, "rounding": "ceil", "cap": 5000}
PG_SERVER = os.environ.get("OVERSTAY_TEST_PG", "postgresql://localhost/postgres")
# Mosquitto as in production for what matters here: snapshots every 30 s
# (tests/broker.py saves every second, which would stall a broker holding a
# big backlog). Later lines of a Mosquitto config override earlier ones.
BROKER_EXTRA = "autosave_interval 30\n"
STATION_FILTERS = [wire.topic_filter(leaf) for leaf in ("state", "event", "session")]


# -- stations and records -----------------------------------------------------


def station_names(count, sites):
    """[(station, site)]: `count` stations spread over `sites` sites."""
    return [("st-%05d" % i, "site-%03d" % (i % sites)) for i in range(count)]


def session_body(station, k, rng):
    """A realistic closed session record (protocol/session.py): plug in, charge, pauses, idle, unplug."""
    plug_in = T0 + k * 14400 + rng.randint(0, 3600)
    s = sessmod.Session("%s-%d" % (station, plug_in), station, 1 + k % 2, TARIFF, plug_in, "Preparing")
    t = plug_in + rng.randint(5, 60)
    s.add_status(t, "Charging")
    t += rng.randint(600, 2400)
    s.add_status(t, "SuspendedEVSE")
    t += rng.randint(60, 600)
    s.add_status(t, "Charging")
    t += rng.randint(600, 3600)
    s.add_status(t, "SuspendedEV")
    s.mark_charge_complete(t)
    s.set_energy(rng.randint(5000, 60000))
    t += rng.randint(60, 5400)
    s.add_status(t, "Finishing")
    t += rng.randint(30, 300)
    s.add_status(t, "Available")
    return s.record()


def signer(key):
    """sign(kind, sender, n, t, body) -> the bytes wire.encode makes, with C json and hmac.

    For these bodies (ASCII strings, ints, bools, sorted keys) compact
    json.dumps is canonical JSON; check_signer() proves it on samples."""
    base = hmac.new(key, digestmod=hashlib.sha256)

    def sign(kind, sender, n, t, body):
        env = {"b": body, "k": kind, "n": n, "s": sender, "t": t, "v": wire.VERSION}
        unsigned = json.dumps(env, sort_keys=True, separators=(",", ":")).encode()
        h = base.copy()
        h.update(unsigned)
        return unsigned[:-1] + b',"sig":"' + h.hexdigest().encode() + b'"}'

    return sign


def check_signer(samples):
    for key, kind, sender, n, t, body in samples:
        if signer(key)(kind, sender, n, t, body) != wire.encode(key, kind, sender, n, t, body):
            raise RuntimeError("bench signer disagrees with wire.encode")


def make_backlog(stations, keys_, count, seed=1):
    """[(topic, payload, station, n)] interleaved across stations, n = 1, 2, ... per station."""
    rng = random.Random(seed)
    signs = {st: signer(keys_[st]) for st, _ in stations}
    out = []
    samples = []
    k = 0
    while len(out) < count:
        for st, site in stations:
            if len(out) >= count:
                break
            body = session_body(st, k, rng)
            n = k + 1
            out.append((wire.station_topic(site, st, "session"), signs[st](wire.SESSION, st, n, body["unplug"], body), st, n))
            if len(samples) < 20:
                samples.append((keys_[st], wire.SESSION, st, n, body["unplug"], body))
        k += 1
    check_signer(samples)
    return out


# -- databases ---------------------------------------------------------------


class PgScratch:
    """A throwaway database on the machine's PostgreSQL (dropped on close)."""

    def __init__(self, server=PG_SERVER):
        import psycopg

        self.server = server
        self.name = "overstay_bench_%d_%s" % (os.getpid(), secrets.token_hex(3))
        with psycopg.connect(server, autocommit=True, connect_timeout=3) as c:
            c.execute("CREATE DATABASE " + self.name)
        self.url = server.rsplit("/", 1)[0] + "/" + self.name

    def close(self):
        import psycopg

        with psycopg.connect(self.server, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS " + self.name + " WITH (FORCE)")


def pg_available():
    try:
        import psycopg

        with psycopg.connect(PG_SERVER, connect_timeout=3, autocommit=True):
            return None
    except Exception as e:  # noqa: BLE001 - any failure means: no server here
        return " ".join(str(e).split())[:160]


def prepare_db(url, stations, keys_):
    """Migrate, register every station with its key, store the sites' tariff."""
    db = dbmod.open_db(url)
    try:
        for st, site in stations:
            keys.register_station(db, st, site, keys_[st], connectors=2)
        for site in sorted({s for _, s in stations}):
            tariffs.set_tariff(db, site, TARIFF)
    finally:
        db.close()


def scalar(url, sql):
    db = dbmod.connect(url)
    try:
        with db.tx():
            return db.one(sql)[0]
    finally:
        db.close()


# -- MQTT ----------------------------------------------------------------------


def client(port, client_id, clean=False, manual_ack=False):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311, manual_ack=manual_ack)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    return c


def make_session(port, client_id, filters):
    """Create a persistent session subscribed to filters (QoS 1), then go offline."""
    c = client(port, client_id)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe([(f, 1) for f in filters])
    if not done.wait(10):
        raise RuntimeError("subscribe timed out for " + client_id)
    c.disconnect()
    c.loop_stop()


def publish_all(port, items, client_id="bench-publisher"):
    """Publish (topic, payload, ...) at QoS 1 and wait for every PUBACK. Returns msg/s."""
    c = client(port, client_id, clean=True)
    c.max_inflight_messages_set(0)  # the semaphore below is the window (paho's own walks its queue per PUBACK)
    window = threading.BoundedSemaphore(1000)
    left = [len(items)]
    done = threading.Event()

    def on_publish(cl, u, mid, rc, props):
        window.release()
        left[0] -= 1
        if left[0] == 0:
            done.set()

    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for it in items:
        window.acquire()
        c.publish(it[0], it[1], qos=1)
    if not done.wait(300):
        raise RuntimeError("publisher: %d PUBACKs missing" % left[0])
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return len(items) / dt


def bare_drain(port, client_id, expect, ack_every=500, timeout=300):
    """A bare paho subscriber drains its queued backlog; returns (messages, seconds from CONNACK to the last)."""
    c = client(port, client_id, manual_ack=True)
    st = {"n": 0, "t0": None, "t1": None}
    mids = []

    def on_connect(cl, u, flags, rc, props):
        st["t0"] = time.perf_counter()

    def on_message(cl, u, m):
        mids.append(m.mid)
        st["n"] += 1
        if len(mids) >= ack_every or st["n"] >= expect:
            for mid in mids:
                cl.ack(mid, 1)
            mids.clear()
        if st["n"] >= expect:
            st["t1"] = time.perf_counter()
            cl.disconnect()

    c.on_connect = on_connect
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    deadline = time.monotonic() + timeout
    while st["t1"] is None and time.monotonic() < deadline:
        c.loop(0.5)
    if st["t1"] is None:
        raise RuntimeError("bare subscriber got %d of %d" % (st["n"], expect))
    return st["n"], st["t1"] - st["t0"]


def collect_acks(port, client_id, keys_, quiet_s=1.0, timeout=120):
    """Drain a persistent session's queued acks; verify each signature; {station: set(n)}."""
    c = client(port, client_id)
    got = {}
    bad = [0]
    msgs = [0]
    last = [time.monotonic()]

    def on_message(cl, u, m):
        last[0] = time.monotonic()
        msgs[0] += 1
        p = m.payload
        try:
            env = orjson.loads(p)
            st = env["s"]
            unsigned = p[: len(p) - 74] + b"}"
            if not hmac.compare_digest(hmac.new(keys_[st], unsigned, hashlib.sha256).hexdigest(), env["sig"]):
                raise ValueError("signature")
            got.setdefault(st, set()).update(env["b"]["acks"])
        except Exception:  # noqa: BLE001 - counted and reported
            bad[0] += 1

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + timeout
    while time.monotonic() - last[0] < quiet_s and time.monotonic() < deadline:
        time.sleep(0.1)
    c.disconnect()
    c.loop_stop()
    return got, bad[0], msgs[0]


# -- the bridge process --------------------------------------------------------


def _proc_stat(pid):
    # (comm, ppid, CPU seconds) from /proc; None once the process is gone.
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode()
    except OSError:
        return None
    comm = data[data.index("(") + 1 : data.rindex(")")]
    fields = data[data.rindex(")") + 2 :].split()
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot():
    """{pid: (comm, ppid, CPU seconds)} of every process (Linux /proc)."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def cpu_split(before, after, bridge_pid, broker_pid):
    """CPU seconds spent between two snapshots by: the bridge's paho process, its
    worker process(es), the broker, PostgreSQL's processes."""
    def used(pid):
        a = after.get(pid)
        b = before.get(pid)
        return (a[2] if a else 0.0) - (b[2] if b else 0.0)

    out = {"paho": used(bridge_pid), "worker": 0.0, "broker": used(broker_pid), "postgres": 0.0}
    for pid, (comm, ppid, _) in after.items():
        if ppid == bridge_pid:
            out["worker"] += used(pid)
        elif comm == "postgres":
            out["postgres"] += used(pid)
    return out


def _log_time(ts):
    # "2025-11-22T17:00:00.123Z" -> Unix seconds (the bridge logs UTC with ms).
    base, ms = ts[:-1].split(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + int(ms) / 1000.0


class BridgeRun:
    """`overstay bridge` as a subprocess with JSON debug logs in a file; reads its batch lines."""

    def __init__(self, workdir, broker_url, db_url, client_id, *extra, env=None, root=None):
        self.log_path = os.path.join(workdir, client_id + ".log")
        self.args = [
            sys.executable, "-m", "host_tools.cli", "bridge", "--broker", broker_url, "--db", db_url,
            "--client-id", client_id, "--log-json", "--log-level", "debug",
        ] + list(extra)
        self.env = dict(os.environ)
        self.root = root or BRIDGE_ROOT
        self.env["PYTHONPATH"] = self.root + os.pathsep + self.env.get("PYTHONPATH", "")
        if env:
            self.env.update(env)
        self.proc = None
        self._pos = 0
        self.t_connected = None
        self.stored = 0
        self.t_stored = None
        self.acked = 0  # n listed in the station acks published
        self.t_acked = None
        self.batches = 0
        self.errors = []

    def start(self):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self.logf, stderr=self.logf, env=self.env, cwd=self.root)
        return self

    def poll_log(self):
        with open(self.log_path, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._pos += end
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                self.errors.append(line[:200])
                continue
            ev = rec.get("event")
            if ev == "connected" and self.t_connected is None:
                self.t_connected = _log_time(rec["ts"])
            elif ev == "batch":
                self.batches += 1
                self.stored += rec.get("stored", 0)
                self.t_stored = _log_time(rec["ts"])
                self.acked += rec.get("acked", rec.get("stored", 0))  # a bridge without held acks acks in the batch
                self.t_acked = self.t_stored
            elif ev == "acks":
                self.acked += rec.get("acked", 0)
                self.t_acked = _log_time(rec["ts"])
            elif rec.get("level") == "error":
                self.errors.append(line[:300])

    def wait_stored(self, n, timeout):
        """Until n records are stored and their n are in published station acks."""
        deadline = time.monotonic() + timeout
        while self.stored < n or self.acked < n:
            if self.proc.poll() is not None:
                self.poll_log()
                raise RuntimeError("bridge exited (%s): %s" % (self.proc.returncode, self.errors[-3:]))
            if time.monotonic() > deadline:
                raise RuntimeError("bridge stored %d of %d in %ds" % (self.stored, n, timeout))
            time.sleep(0.1)
            self.poll_log()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.poll_log()
        self.logf.close()
        return self.proc.returncode


def bridge_drain(broker, workdir, label, db_url, backlog, keys_, extra=(), root=None):
    n = len(backlog)
    # Collects this run's signed acks while offline (created now: none of an earlier run's).
    make_session(broker.port, "bench-acks-" + label, [wire.topic_filter("ack")])
    cpu0 = cpu_snapshot()
    b = BridgeRun(workdir, broker.url, db_url, "bench-bridge-" + label, *extra, root=root).start()
    try:
        b.wait_stored(n, timeout=max(120, n / 500))
        cpu = cpu_split(cpu0, cpu_snapshot(), b.proc.pid, broker.proc.pid)
    finally:
        rc = b.stop()
    if b.t_connected is None:
        raise RuntimeError("no connected line in the bridge log")
    dt = max(b.t_stored, b.t_acked) - b.t_connected
    # Checks: every record stored once with a matching fee, every n acked by a valid signature.
    stored = scalar(db_url, "SELECT COUNT(*) FROM sessions")
    audit = scalar(db_url, "SELECT COUNT(*) FROM audit")
    matched = scalar(db_url, "SELECT COUNT(*) FROM sessions WHERE fee_verified = 1")
    acks, bad, ack_msgs = collect_acks(broker.port, "bench-acks-" + label, keys_)
    want = {}
    for _, _, st, k in backlog:
        want.setdefault(st, set()).add(k)
    missing = sum(len(ns - acks.get(st, set())) for st, ns in want.items())
    problems = []
    if rc != 0:
        problems.append("exit code %s" % rc)
    if stored != n or audit != n:
        problems.append("stored %d sessions / %d audit rows of %d" % (stored, audit, n))
    if matched != n:
        problems.append("%d of %d fees verified" % (matched, n))
    if missing or bad:
        problems.append("%d records without a signed ack, %d bad acks" % (missing, bad))
    if b.errors:
        problems.append("%d error log lines, e.g. %s" % (len(b.errors), b.errors[0]))
    return {"n": n, "seconds": dt, "rate": n / dt, "batches": b.batches,
            "ack_messages": ack_msgs, "problems": problems, "cpu": cpu}


# -- the benchmark ------------------------------------------------------------------


def _version(dist):
    try:
        import importlib.metadata

        return importlib.metadata.version(dist)
    except Exception:  # noqa: BLE001 - informational only
        return "?"


def machine_line():
    """nproc, CPU model, Python, Mosquitto, date: what docs/benchmarks.md records with each result."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "machine: %d CPUs (nproc), %s, Python %s, paho-mqtt %s, %s" % (
        os.cpu_count() or 0, model, sys.version.split()[0], _version("paho-mqtt"), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )



def run(messages=40000, stations=1000, sites=20, dbs=("sqlite", "postgresql"), extra=(), baseline=None, broker_extra="", out=print):
    """Drain one backlog with a bare subscriber and with the bridge on each database;
    with `baseline` (another checkout), also with that tree's bridge, in the same run."""
    out(machine_line())
    rng = random.Random(7)
    sts = station_names(stations, sites)
    keys_ = {st: rng.randbytes(32) for st, _ in sts}
    t = time.perf_counter()
    backlog = make_backlog(sts, keys_, messages)
    sizes = sorted(len(p) for _, p, _, _ in backlog)
    out("backlog: %d signed session records from %d stations on %d sites, %d..%d bytes (median %d); built in %.1f s"
        % (len(backlog), stations, sites, sizes[0], sizes[-1], sizes[len(sizes) // 2], time.perf_counter() - t))
    pg_skip = pg_available() if "postgresql" in dbs else None
    dbs = [d for d in dbs if d == "sqlite" or (d == "postgresql" and pg_skip is None)]
    runs = []  # (name, database, root)
    for d in dbs:
        if baseline:
            runs.append((d + "-baseline", d, baseline))
        runs.append((d, d, BRIDGE_ROOT))
    results = {}
    scratch = []
    with tempfile.TemporaryDirectory(prefix="overstay-bench-") as tmp:
        broker = Mosquitto(os.path.join(tmp, "mosquitto"), persistence=True, extra=BROKER_EXTRA + broker_extra).start()
        try:
            for i in (1, 2):
                make_session(broker.port, "bench-bare-%d" % i, STATION_FILTERS)
            urls = {}
            t = time.perf_counter()
            for name, d, _ in runs:
                make_session(broker.port, "bench-bridge-" + name, STATION_FILTERS)
                if d == "sqlite":
                    urls[name] = "sqlite:///" + os.path.join(tmp, name + ".db")
                else:
                    scratch.append(PgScratch())
                    urls[name] = scratch[-1].url
                prepare_db(urls[name], sts, keys_)
            out("databases: %d stations registered in %s (%.1f s)" % (stations, ", ".join(n for n, _, _ in runs), time.perf_counter() - t))
            rate = publish_all(broker.port, backlog)
            out("preload: published at %.0f msg/s (QoS 1) into %d persistent sessions" % (rate, 2 + len(runs)))

            out("load average before the drains: %.2f %.2f %.2f (other work on this machine competes)" % os.getloadavg())
            # The bare subscriber drains before and after the bridges; the
            # ratio uses the mean, so both see about the same machine load.
            cpu0 = cpu_snapshot()
            c0 = time.process_time()
            n, dt = bare_drain(broker.port, "bench-bare-1", len(backlog))
            bare_cpu = (time.process_time() - c0) / n * 1e6
            broker_cpu = cpu_split(cpu0, cpu_snapshot(), 0, broker.proc.pid)["broker"] / n * 1e6
            bare_runs = [n / dt]
            out("bare paho subscriber (manual PUBACKs per 500): %6.0f msg/s  (%.2f s)" % (n / dt, dt))
            out("    CPU per record: subscriber %.0f us, mosquitto %.0f us" % (bare_cpu, broker_cpu))
            for name, d, root in runs:
                r = bridge_drain(broker, tmp, name, urls[name], backlog, keys_, extra, root)
                results[name] = r
                out("bridge %-19s end to end:         %6.0f msg/s  (%.2f s, %d batches)" % (name, r["rate"], r["seconds"], r["batches"]))
                out("    %s: %d signed ack messages (%.2f per record)"
                    % ("checked: every record stored once, fee verified, acked" if not r["problems"] else "acks",
                       r["ack_messages"], r["ack_messages"] / r["n"]))
                cpu = r["cpu"]
                out("    CPU per record (includes start-up): bridge paho process %.0f us, worker %.0f us, mosquitto %.0f us%s"
                    % (cpu["paho"] / r["n"] * 1e6, cpu["worker"] / r["n"] * 1e6, cpu["broker"] / r["n"] * 1e6,
                       ", postgres %.0f us" % (cpu["postgres"] / r["n"] * 1e6) if d == "postgresql" else ""))
                for p in r["problems"]:
                    out("    PROBLEM: " + p)
            n, dt = bare_drain(broker.port, "bench-bare-2", len(backlog))
            bare_runs.append(n / dt)
            out("bare paho subscriber again:                    %6.0f msg/s  (%.2f s)" % (n / dt, dt))
            bare = sum(bare_runs) / len(bare_runs)
            results["bare"] = bare
            for name, _, _ in runs:
                out("ratio %-19s to the bare subscriber (mean %.0f msg/s): %.2f" % (name, bare, results[name]["rate"] / bare))
            if pg_skip is not None:
                out("bridge postgresql: skipped (no server at %s: %s)" % (PG_SERVER, pg_skip))
        finally:
            broker.kill()
            for pg in scratch:
                pg.close()
    return results


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.bridge_ingest")
    p.add_argument("--messages", type=int, default=int(os.environ.get("OVERSTAY_BENCH_MESSAGES", 40000)))
    p.add_argument("--stations", type=int, default=1000)
    p.add_argument("--sites", type=int, default=20)
    p.add_argument("--db", default="sqlite,postgresql")
    p.add_argument("--baseline", metavar="DIR", help="also run the bridge of another checkout (e.g. `git archive HEAD` unpacked)")
    p.add_argument("--broker-conf", default="", metavar="LINES", help="Mosquitto config lines to add, e.g. 'max_inflight_messages 1000'")
    p.add_argument("bridge_args", nargs="*", help="extra `overstay bridge` flags (after --)")
    a = p.parse_args([] if argv is None else argv)
    run(a.messages, a.stations, a.sites, tuple(a.db.split(",")), a.bridge_args, a.baseline, a.broker_conf.replace("\\n", "\n") + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
