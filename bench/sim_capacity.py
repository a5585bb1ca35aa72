# How many stalls one simulator process keeps in real time, each stall the firmware's App with its own MQTT connection, journal folder and key.
#
# Per stall count N: a Mosquitto (tests/broker.py), `overstay bridge` on
# SQLite as a subprocess (it acks every record and publishes every site's
# occupancy, as in the demo), and the stalls at speed 1 in this process,
# one Simulation per site of --site-size stalls (20; a fleet, not one
# 2,000-stall car park: every occupancy change is a signed message to every
# stall of its site), all on one asyncio loop. Every fifth stall gets a car
# at an even spread over the run (plug in, 35 s of charging, leave or
# linger), so the run carries plug-ins, status events, state messages,
# occupancy reports, session records and acks on top of the sampling: a car
# per five stalls a minute is some twelve times a busy evening's rate.
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
#   watchdog          whether any stall's Health table ever had a task past
#                     its deadline (the board's watchdog would have reset it)
# A count is "real time" when the sampler p99 lateness is at most 100 ms, the
# largest sample gap under 1000 ms and no link dropped; "healthy" when the
# p99 lateness is at most one sample period, no watchdog deadline was missed
# and no link dropped (status instants may then be a second late, rarely).
# Timings are printed, never asserted. The machine's CPU pressure
# (/proc/pressure/cpu) is printed with each run: the broker, the bridge and
# anything else on the machine compete with the simulator for the 2 cores.
#
# Usage: python -m bench.sim_capacity [--stalls 1000,2000,3000] [--seconds 60] [--fs os|mem] [--no-bridge]
#                                    [--site-size 20 (0: one site)] [--sample-ms MS]
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

from host_tools.sim_engine import LATE_EDGES_MS, defaults

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


def pressure():
    """The kernel's CPU pressure (share of the last 60 s that runnable tasks waited for a CPU), or None."""
    try:
        with open("/proc/pressure/cpu") as f:
            return float(f.readline().split()[2].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


def run_one(n, seconds, fs_kind, bridge, timing, work, site_size):
    from host_tools import scenario as scenmod
    from host_tools import sim_keys
    from host_tools.sim_engine import Simulation
    from tests.broker import Mosquitto

    broker = Mosquitto(os.path.join(work, "mq-%d" % n), persistence=False, extra="max_connections -1\n").start()
    proc = None
    logf = None
    try:
        sizes = [site_size] * (n // site_size) + ([n % site_size] if n % site_size else [])
        scs = []
        for k, size in enumerate(sizes):
            doc = scenario_doc(size, seconds, seed=k + 1)
            doc["site"] = "cap-%03d" % k if len(sizes) > 1 else "cap"
            scs.append(scenmod.parse(doc, "capacity"))
        url = "sqlite:///" + os.path.join(work, "bridge-%d.db" % n)
        t0 = time.monotonic()
        keys = [None] * len(scs)
        if bridge:
            db = sim_keys.open_db(url)
            for k, sc in enumerate(scs):
                keys[k], _ = sim_keys.from_db(db, sc.site, [sc.station(i) for i in range(1, sc.stalls + 1)])
                sim_keys.ensure_tariff(db, sc.site, sc.tariff)
            db.close()
            env = dict(os.environ)
            env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
            logf = open(os.path.join(work, "bridge-%d.log" % n), "wb")
            proc = subprocess.Popen([sys.executable, "-m", "host_tools.cli", "bridge", "--broker", broker.url, "--db", url],
                                    stdout=logf, stderr=logf, env=env, cwd=REPO)
        reg_s = time.monotonic() - t0
        state = None if fs_kind == "mem" else os.path.join(work, "state-%d" % n)
        # Timing for the whole process (defaults() scales with every stall it runs), not per site.
        tm = defaults(n, 1)
        tm.update(timing)
        sims = [Simulation(sc, ("127.0.0.1", broker.port), keys=keys[k], speed=1, state_dir=state, out=None, timing=tm,
                           wait_occupancy=10 if bridge else 0, connect_timeout=120, probe=(k == 0), seed=k)
                for k, sc in enumerate(scs)]
        w0 = time.monotonic()
        peak_fds = [0]
        load = [0.0]

        async def main():
            t_boot = time.monotonic()
            await asyncio.gather(*[sim.start() for sim in sims])
            boot_s = time.monotonic() - t_boot
            peak_fds[0] = fds()
            # Measure from here: the start-up burst (boot, connect) is not steady state.
            for sim in sims:
                sim.loop_lags.clear()
                sim.late_hist = [0] * len(sim.late_hist)
                sim.samples = 0
                sim.max_gap_ms = 0
            c0 = resource.getrusage(resource.RUSAGE_SELF)
            m0 = time.monotonic()
            while time.monotonic() - m0 < seconds:
                await asyncio.sleep(0.5)
                for sim in sims:
                    sim._watch()
                peak_fds[0] = max(peak_fds[0], fds())
            c1 = resource.getrusage(resource.RUSAGE_SELF)
            load[0] = os.getloadavg()[0]
            busy = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) / (time.monotonic() - m0)
            connected = sum(1 for sim in sims for st in sim.stalls if st.app.link.connected)
            lag = sims[0].lag_stats()
            hist = [sum(h) for h in zip(*[sim.late_hist for sim in sims])]
            reps = [await sim.stop() for sim in sims]
            return reps, lag, hist, boot_s, busy, connected

        reps, lag, hist, boot_s, busy, connected = asyncio.run(main())
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        total = sum(hist)
        late_p99 = None
        acc = 0
        for i, c in enumerate(hist):
            acc += c
            if acc >= total * 0.99:
                late_p99 = LATE_EDGES_MS[i] if i < len(LATE_EDGES_MS) else float("inf")
                break
        acked = sum(st.core.counts["acks"] for sim in sims for st in sim.stalls if st.core is not None)
        out = {
            "stalls": n, "sites": len(sims), "fs": fs_kind, "bridge": bridge, "sample_ms": sims[0].timing["sample_ms"],
            "pump_ms": sims[0].timing["pump_ms"], "link_poll_ms": sims[0].timing["link_poll_ms"], "boot_connect_s": boot_s,
            "register_s": reg_s, "cpu_share": busy, "fds": peak_fds[0], "connected": connected,
            "reconnects": sum(r.reconnects for r in reps), "sessions": sum(r.sessions for r in reps), "acks": acked,
            "loop_p50": lag.get("loop_p50_ms", 0), "loop_p99": lag.get("loop_p99_ms", 0), "loop_max": lag.get("loop_max_ms", 0),
            "late_p99": late_p99, "max_gap": max(sim.max_gap_ms for sim in sims), "samples": total,
            "watchdog_late": sum(r.watchdog_late for r in reps), "wall_s": time.monotonic() - w0, "maxrss_mb": ru1.ru_maxrss / 1024.0,
            "load": load[0], "cpu_us_per_stall_s": busy * 1e6 / n, "psi": pressure(),
        }
        links = out["reconnects"] == 0 and connected == n
        out["ok"] = late_p99 is not None and late_p99 <= 100 and out["max_gap"] < 1000 and links
        out["healthy"] = late_p99 is not None and late_p99 <= out["sample_ms"] and out["watchdog_late"] == 0 and links
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
    print("  %5d stalls in %3d site(s)  sample/pump %3d/%3d ms  loop lag p50 %5.1f p99 %6.1f max %7.1f ms  sampler late p99 <= %s ms  max gap %5d ms  "
          "cpu %3.0f%%  fds %5d  rss %4.0f MB  connected %d/%d  reconnects %d  sessions %d  acks %d  -> %s" % (
              r["stalls"], r["sites"], r["sample_ms"], r["pump_ms"], r["loop_p50"], r["loop_p99"], r["loop_max"], r["late_p99"], r["max_gap"],
              100 * r["cpu_share"], r["fds"], r["maxrss_mb"], r["connected"], r["stalls"], r["reconnects"], r["sessions"], r["acks"],
              "real time" if r["ok"] else "healthy" if r["healthy"] else "falls behind"), flush=True)
    print("         boot+connect %.1f s, key registration %.1f s, %d samples measured, watchdog-late observations %d, "
          "%.0f us of CPU per stall-second; machine load average %.1f, CPU pressure %s%% (60 s) at the end" % (
              r["boot_connect_s"], r["register_s"], r["samples"], r["watchdog_late"], r["cpu_us_per_stall_s"], r["load"],
              "?" if r["psi"] is None else "%.0f" % r["psi"]), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="bench.sim_capacity")
    ap.add_argument("--stalls", default="1000,2000,3000")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--fs", choices=("os", "mem"), default="os")
    ap.add_argument("--no-bridge", action="store_true")
    ap.add_argument("--sample-ms", type=int)
    ap.add_argument("--site-size", type=int, default=20, help="stalls per site (one Simulation each, all in this process; 0: one site)")
    args = ap.parse_args(argv if argv is not None else [])
    timing = {}
    if args.sample_ms:
        timing = {"sample_ms": args.sample_ms, "pump_ms": args.sample_ms}
    print("one simulator process at speed 1, %d s per run, journals %s, bridge %s; %d CPUs; fd limit %d" % (
        args.seconds, "on disk (OsFs)" if args.fs == "os" else "in memory", "off" if args.no_bridge else "on (SQLite subprocess)",
        os.cpu_count() or 0, resource.getrlimit(resource.RLIMIT_NOFILE)[0]), flush=True)
    best = healthy = 0
    work = tempfile.mkdtemp(prefix="overstay-simcap-")
    try:
        for n in [int(x) for x in args.stalls.split(",")]:
            r = run_one(n, args.seconds, args.fs, not args.no_bridge, timing, work, args.site_size or n)
            report(r)
            if r["ok"]:
                best = max(best, n)
            if r["healthy"]:
                healthy = max(healthy, n)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("  largest count kept in real time (sampler p99 <= 100 ms late, every gap < 1 s): %d stalls" % best)
    print("  largest count kept healthy (sampler p99 late <= one period, no watchdog deadline missed, no link lost): %d stalls" % healthy)


if __name__ == "__main__":
    main(sys.argv[1:])
