# Chaos suite runner: `python -m tests.chaos --seed N` replays one run; `--runs N [--jobs J]` runs seeds in parallel and sums up.
#
#   python -m tests.chaos --seed 123                 one run, its plan, its log when it fails
#   python -m tests.chaos --runs 1000 --jobs 2       seeds 1..1000 (--first S to start elsewhere)
#   python -m tests.chaos --runs 50 --mode mem       force a transport mode (default: by seed)
#   make chaos [SEED=123 | RUNS=1000 JOBS=2 FIRST=1 MODE=mem]
#
# Each seed's plan is tests/chaos_plan.make(seed); the run is
# tests/chaos_world.World over tests/chaos_mem.MemNet or
# tests/chaos_broker.RealNet; the verdict is tests/chaos_check.check. A run
# lives in its own temporary folder (the bridge's SQLite database, the
# broker's and the bridge's logs), removed when the run passes and kept
# (and printed) when it fails. Exit status 1 when any seed failed.
import argparse
import asyncio
import collections
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback

from host_tools import sim_keys
from tests import chaos_plan
from tests.chaos_check import check


def tmp_base():
    # Memory-backed when the machine has it (SQLite's fsyncs cost nothing there), unless TMPDIR says otherwise.
    shm = "/dev/shm"
    if os.environ.get("TMPDIR"):
        return None
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def setup_db(db_url, plan):
    sc = plan.scenario
    db = sim_keys.open_db(db_url)
    try:
        keys, _new = sim_keys.from_db(db, sc.site, [sc.station(i) for i in range(1, sc.stalls + 1)])
        sim_keys.ensure_tariff(db, sc.site, sc.tariff)
    finally:
        db.close()
    return keys


def make_net(plan, workdir, db_url):
    if plan.mode == "mem":
        from tests.chaos_mem import MemNet

        return MemNet(db_url, plan.knobs)
    from tests.chaos_broker import RealNet

    return RealNet(workdir, db_url, plan.knobs)


async def _run(world, net, real_limit_s):
    try:
        await world.run(real_limit_s=real_limit_s)
    finally:
        await net.close()


def execute(seed, mode=None, real_limit_s=None):
    """Carry out one run. Returns (plan, world or None, db_url, workdir, problems); the caller removes workdir."""
    plan = chaos_plan.make(seed, mode)
    workdir = tempfile.mkdtemp(prefix="overstay-chaos-%d-" % seed, dir=tmp_base())
    db_url = "sqlite:///" + os.path.join(workdir, "bridge.db")
    world = None
    try:
        from tests.chaos_world import World

        keys = setup_db(db_url, plan)
        net = make_net(plan, workdir, db_url)
        world = World(plan, net, keys)
        limit = real_limit_s or (240.0 if plan.mode == "broker" else 120.0)
        asyncio.run(_run(world, net, limit))
        problems = check(world, db_url) + list(getattr(net, "problems", []))
    except Exception:
        problems = ["harness: " + traceback.format_exc()]
    return plan, world, db_url, workdir, problems


def run_seed(seed, mode=None, keep=False, real_limit_s=None):
    """One run. Returns a dict: seed, mode, ok, problems, real_s, desc, stats, workdir (kept on failure), log."""
    t0 = time.monotonic()
    plan, world, db_url, workdir, problems = execute(seed, mode, real_limit_s)
    out = {"seed": seed, "mode": plan.mode, "desc": chaos_plan.describe(plan), "faults": [f["kind"] for f in plan.faults], "knobs": plan.knobs}
    if world is not None:
        out["stats"] = {"steps": world.steps, "simulated_s": world.ticks.ms // 1000, "boots": sum(st.boots for st in world.stalls),
                        "outages": sum(len(st.outages) for st in world.stalls), "net": dict(getattr(world.net, "counts", {})),
                        "world": dict(world.counts)}
    out["problems"] = problems
    out["ok"] = not problems
    out["real_s"] = round(time.monotonic() - t0, 2)
    out["log"] = world.log if world is not None and (problems or keep) else []
    if problems or keep:
        out["workdir"] = workdir
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def _one(args):
    seed, mode, keep = args
    return run_seed(seed, mode, keep)


def line(r):
    s = "seed %d %-6s %-4s %6.1fs  %s" % (r["seed"], r["mode"], "ok" if r["ok"] else "FAIL", r["real_s"], r["desc"])
    for p in r["problems"][:12]:
        s += "\n    " + p.rstrip().replace("\n", "\n    ")
    if not r["ok"]:
        s += "\n    replay: python -m tests.chaos --seed %d%s; files kept in %s" % (r["seed"], " --mode " + r["mode"] if r["mode"] != chaos_plan.mode_for(r["seed"]) else "", r.get("workdir"))
    return s


def summary(results, wall_s, jobs):
    modes = collections.Counter(r["mode"] for r in results)
    faults = collections.Counter(f for r in results for f in r["faults"])
    knobs = collections.Counter(k for r in results for k in ("dup", "reorder_ms", "replay_s") if r["knobs"][k])
    failed = [r for r in results if not r["ok"]]
    cars = sum(int(r["desc"].split(" car(s)")[0].rsplit(" ", 1)[1]) for r in results)
    sim = sum(r.get("stats", {}).get("simulated_s", 0) for r in results)
    per_mode = {m: sum(r["real_s"] for r in results if r["mode"] == m) for m in modes}
    lines = [
        "chaos: %d seed(s) in %.0f s wall (%d job(s)): %s" % (len(results), wall_s, jobs, ", ".join("%s %d (%.0f s of run time)" % (m, modes[m], per_mode[m]) for m in sorted(modes))),
        "chaos: %d cars, %.1f simulated hours; faults: %s; network: %s" % (
            cars, sim / 3600.0, ", ".join("%s %d" % kv for kv in sorted(faults.items())), ", ".join("%s %d" % kv for kv in sorted(knobs.items()))),
    ]
    if failed:
        lines.append("chaos: %d FAILED: seeds %s" % (len(failed), " ".join(str(r["seed"]) for r in failed)))
    else:
        lines.append("chaos: all passed: every car's session stored exactly once with the ground truth's fee, every stall's outbox empty")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.chaos", description="Seeded fault-injection runs of stalls, broker and bridge (docs/testing.md).")
    p.add_argument("--seed", type=int, help="run this one seed and print its plan and log")
    p.add_argument("--runs", type=int, default=20, help="how many seeds (default 20)")
    p.add_argument("--first", type=int, default=1, help="first seed (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (default 1)")
    p.add_argument("--mode", choices=chaos_plan.MODES, help="force the transport mode (default: broker for seeds divisible by 5)")
    p.add_argument("--keep", action="store_true", help="keep every run's folder")
    p.add_argument("--json", metavar="FILE", help="write every run's result to FILE (JSON lines)")
    a = p.parse_args(argv)
    if a.seed is not None:
        plan = chaos_plan.make(a.seed, a.mode)
        print("seed %d: %s" % (a.seed, chaos_plan.describe(plan)), flush=True)
        print(chaos_plan.dump(plan), flush=True)
        r = run_seed(a.seed, a.mode, a.keep)
        print(line(r), flush=True)
        for entry in r["log"]:
            print("  | " + entry)
        if r.get("stats"):
            print("stats: " + json.dumps(r["stats"], sort_keys=True))
        return 0 if r["ok"] else 1
    seeds = list(range(a.first, a.first + a.runs))
    t0 = time.monotonic()
    results = []
    jf = open(a.json, "w") if a.json else None
    try:
        work = [(s, a.mode, a.keep) for s in seeds]
        if a.jobs <= 1:
            it = map(_one, work)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(a.jobs, maxtasksperchild=100)
            it = pool.imap_unordered(_one, work)
        for r in it:
            results.append(r)
            print(line(r), flush=True)
            if jf is not None:
                jf.write(json.dumps({k: v for k, v in r.items() if k != "log"}, sort_keys=True) + "\n")
                jf.flush()
            if len(results) % 50 == 0:
                print("chaos: %d/%d done, %d failed, %.0f s" % (len(results), len(seeds), sum(1 for x in results if not x["ok"]), time.monotonic() - t0), flush=True)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        if jf is not None:
            jf.close()
    for s in summary(results, time.monotonic() - t0, a.jobs):
        print(s, flush=True)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
