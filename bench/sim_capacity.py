# How many stalls one simulator process keeps in real time, each stall the firmware's App with its own MQTT connection, journal folder and key.
#
# Per stall count N: a Mosquitto (tests/broker.py), `overstay bridge` on
# SQLite as a subprocess (it acks every record, as in the demo), and one
# Simulation at speed 1 in this process. Every fifth stall gets a car at an
# even spread over the run (plug in, 35 s of charging, leave or linger), so
# the run carries plug-ins, status events, state messages, session records
# and acks on top of the sampling: a car per five stalls a minute is some
# twelve times a busy evening's rate.
# The machine's 2 cores are shared by the simulator, the broker and the
# bridge.
#
# "In real time" is judged by the lag the stalls would feel:
#   sampler lateness  how much later than its period each stall's sampler ran
#                     (real ms; p99 from a histogram), and the largest gap
#                     between two samples of one stall (must stay under a
#                     second: a status change is then stamped in its own second)
#   loop lag          how late a 20 ms asyncio sleep wakes up (p50/p99/max)
#   links             every stall connected, no reconnects (keepalive held)
# A count passes when the sampler p99 lateness is at most 100 ms, the
# largest sample gap under 1000 ms and no link dropped. Timings are printed,
# never asserted.
#
# Usage: python -m bench.sim_capacity [--stalls 1000,2000,3000] [--seconds 45] [--fs os|mem] [--no-bridge]
import argparse
import asyncio
import gc
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARIFF = {"id": "cap", "version": 1, "currency": "USD", "rate": 40, "grace_s": 60}


def scenario_doc(n, seconds, seed=1, every=5):
    """A car on every `every`-th stall, arriving evenly over the run: plug in, 35 s of charging, leave or linger."""
    rng = random.Random(seed)
    vs = []
    span = max(1, seconds - 45)
    for i in range(every, n + 1, every):
        a = rng.randint(0, span)
        vs.append({"stall": i, "arrive_s": a, "charge_s": 35, "amps": rng.choice((16, 32)), "linger_s": rng.choice((0, 5, 10, 120))})
    end = max([seconds] + [v["arrive_s"] + 2 + 35 + v["linger_s"] + 1 for v in vs])
    return {"description": "capacity", "site": "cap", "stalls": n, "start": "2026-11-01T20:00:00Z", "tariff": TARIFF,
            "end_s": end, "vehicles": vs}


def fds():
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def run_one(n, seconds, fs_kind, bridge, timing, work):
    from host_tools import scenario as scenmod
    from host_tools import sim_keys
    from host_tools.sim_engine import Simulation
    from tests.broker import Mosquitto

    broker = Mosquitto(os.path.join(work, "mq-%d" % n), persistence=False, extra="max_connections -1\n").start()
    proc = None
    logf = None
    try:
        sc = scenmod.parse(scenario_doc(n, seconds), "capacity")
        ids = [sc.station(i, n) for i in range(1, n + 1)]
        url = "sqlite:///" + os.path.join(work, "bridge-%d.db" % n)
        t0 = time.monotonic()
        if bridge:
            db = sim_keys.open_db(url)
            keys, _ = sim_keys.from_db(db, sc.site, ids)
            sim_keys.ensure_tariff(db, sc.site, sc.tariff)
            db.close()
            env = dict(os.environ)
            env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
            logf = open(os.path.join(work, "bridge-%d.log" % n), "wb")
            proc = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "bridge", "--broker", broker.url, "--db", url],
                                    stdout=logf, stderr=logf, env=env, cwd=REPO)
        else:
            keys = None
        reg_s = time.monotonic() - t0
        state = None if fs_kind == "mem" else os.path.join(work, "state-%d" % n)
        sim = Simulation(sc, ("127.0.0.1", broker.port), keys=keys, speed=1, state_dir=state, out=None, timing=timing,
                         wait_occupancy=10 if bridge else 0, connect_timeout=120)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        w0 = time.monotonic()
        peak_fds = [0]
        load = [0.0]

        async def main():
            t_boot = time.monotonic()
            await sim.start()
            boot_s = time.monotonic() - t_boot
            peak_fds[0] = fds()
            # Measure from here: the start-up burst (boot, connect) is not steady state.
            sim.loop_lags.clear()
            sim.late_hist = [0] * len(sim.late_hist)
            sim.samples = 0
            sim.max_gap_ms = 0
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            m0 = time.monotonic()
            while sim.world.ms() < seconds * 1000:
                await asyncio.sleep(0.5)
                sim._watch()
                peak_fds[0] = max(peak_fds[0], fds())
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            load[0] = os.getloadavg()[0]
            busy = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / (time.monotonic() - m0)
            connected = sum(1 for st in sim.stalls if st.app.link.connected)
            rep = await sim.stop()
            return rep, boot_s, busy, connected

        rep, boot_s, busy, connected = asyncio.run(main())
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        lag = rep.lag
        acked = sum(st.core.counts["acks"] for st in sim.stalls if st.core is not None)
        out = {
            "stalls": n, "fs": fs_kind, "bridge": bridge, "sample_ms": sim.timing["sample_ms"], "pump_ms": sim.timing["pump_ms"],
            "link_poll_ms": sim.timing["link_poll_ms"], "boot_connect_s": boot_s, "register_s": reg_s,
            "cpu_share": busy, "fds": peak_fds[0], "connected": connected, "reconnects": rep.reconnects,
            "sessions": rep.sessions, "acks": acked, "unacked": sum(rep.unacked.values()),
            "loop_p50": lag.get("loop_p50_ms", 0), "loop_p99": lag.get("loop_p99_ms", 0), "loop_max": lag.get("loop_max_ms", 0),
            "late_p99": lag.get("sample_late_p99_le_ms"), "max_gap": lag.get("max_sample_gap_ms", 0), "samples": lag.get("samples", 0),
            "watchdog_late": rep.watchdog_late, "wall_s": time.monotonic() - w0, "maxrss_mb": ru1.ru_maxrss / 1024.0,
            "load": load[0], "cpu_us_per_stall_s": busy * 1e6 / n,
        }
        late = out["late_p99"]
        out["ok"] = late is not None and late <= 100 and out["max_gap"] < 1000 and out["reconnects"] == 0 and connected == n
        return out
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if logf is not None:
            logf.close()
        broker.kill()
        gc.collect()


def report(r):
    print("  %5d stalls  sample/pump %3d/%3d ms  loop lag p50 %5.1f p99 %6.1f max %7.1f ms  sampler late p99 <= %s ms  max gap %5d ms  "
          "cpu %3.0f%%  fds %5d  rss %4.0f MB  connected %d/%d  reconnects %d  sessions %d  acks %d  -> %s" % (
              r["stalls"], r["sample_ms"], r["pump_ms"], r["loop_p50"], r["loop_p99"], r["loop_max"], r["late_p99"], r["max_gap"],
              100 * r["cpu_share"], r["fds"], r["maxrss_mb"], r["connected"], r["stalls"], r["reconnects"], r["sessions"], r["acks"],
              "real time" if r["ok"] else "falls behind"), flush=True)
    print("         boot+connect %.1f s, key registration %.1f s, %d samples measured, watchdog-late observations %d, "
          "%.0f us of CPU per stall-second, machine load average %.1f at the end" % (
              r["boot_connect_s"], r["register_s"], r["samples"], r["watchdog_late"], r["cpu_us_per_stall_s"], r["load"]), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench.sim_capacity")
    ap.add_argument("--stalls", default="1000,2000,3000")
    ap.add_argument("--seconds", type=int, default=45)
    ap.add_argument("--fs", choices=("os", "mem"), default="os")
    ap.add_argument("--no-bridge", action="store_true")
    ap.add_argument("--sample-ms", type=int)
    args = ap.parse_args(argv if argv is not None else [])
    timing = {}
    if args.sample_ms:
        timing = {"sample_ms": args.sample_ms, "pump_ms": args.sample_ms}
    print("one simulator process at speed 1, %d s per run, journals %s, bridge %s; %d CPUs; fd limit %d" % (
        args.seconds, "on disk (OsFs)" if args.fs == "os" else "in memory", "off" if args.no_bridge else "on (SQLite subprocess)",
        os.cpu_count() or 0, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), flush=True)
    best = 0
    work = tempfile.mkdtemp(prefix="overstay-simcap-")
    try:
        for n in [int(x) for x in args.stalls.split(",")]:
            r = run_one(n, args.seconds, args.fs, not args.no_bridge, timing, work)
            report(r)
            if r["ok"]:
                best = max(best, n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("  largest count kept in real time: %d stalls" % best)


if __name__ == "__main__":
    main(sys.argv[1:])
