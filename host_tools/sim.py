# `overstay sim`: run N stall firmware instances in one process against a real broker, driven by a scenario file (docs/simulator.md).
#
#   overstay sim --broker mqtt://HOST:PORT --scenario FILE [--site S] [--stalls N] [--speed X]
#                [--db URL | --keys FILE] [--state-dir DIR | --memfs] [--seed N]
#                [--power-cut SPEC] [--net-drop SPEC] [--pilot-glitch SPEC] [--meter-error SPEC]
#                [--drain-timeout S] [--console-pty [STALLS]] [--check]
#
# The engine is host_tools/sim_engine.py (class Simulation, also the Python
# API tests and the demo drive); scenarios and their ground truth are
# host_tools/scenario.py; fault flags host_tools/sim_faults.py; keys
# host_tools/sim_keys.py. Exit status: 0 when the scenario is complete and
# every stall's records are acked by a bridge, 1 when records remain
# unacked after --drain-timeout, 2 for a user error (one line each).
import asyncio
import importlib
import os
import random
import shutil
import sys
import tempfile
import time

from host_tools import scenario as scenmod
from host_tools import sim_faults, sim_keys
from host_tools.errors import UserError
from protocol import wire


def _engine():
    from host_tools import sim_engine

    return sim_engine


def __getattr__(name):
    # host_tools.sim.Simulation: the Python API, imported lazily (it loads the firmware).
    if name in ("Simulation", "World", "Report", "defaults"):
        return getattr(_engine(), name)
    raise AttributeError(name)


def register(sub):
    from host_tools.bridge import mqttconn

    p = sub.add_parser(
        "sim",
        help="run N stall firmware instances against a broker from a scenario",
        description="Run N stalls of the stall firmware (the same App, connector machine, journal and MQTT client as a board, "
        "with simulated hardware) in one process, each with its own broker connection, key and journal, and drive them with "
        "the cars of a scenario file. See docs/simulator.md and docs/scenarios.md.",
    )
    mqttconn.add_arguments(p, required=False)
    p.add_argument("--scenario", metavar="FILE", required=True, help="scenario JSON (docs/scenarios.md)")
    p.add_argument("--site", help="site id (default: the scenario's)")
    p.add_argument("--stalls", type=int, metavar="N", help="stalls to run (default: the scenario's; extra ones stay empty)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X", help="simulated seconds per real second (default 1)")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--db", metavar="URL", help="bridge database: register the stalls' keys and the tariff there")
    keys.add_argument("--keys", metavar="FILE", help="keys as `overstay keys add` prints them (station/site ID secret HEX)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--state-dir", metavar="DIR", help="one journal folder per stall under DIR (default: a temporary folder)")
    where.add_argument("--memfs", action="store_true", help="journals in memory (power cuts then land inside a journal write)")
    p.add_argument("--seed", type=int, help="seed for random faults (default: random, printed)")
    p.add_argument("--power-cut", action="append", default=[], metavar="STALL@T[+DOWN]|random", help="cut a stall's power at T for DOWN (30 s)")
    p.add_argument("--net-drop", action="append", default=[], metavar="STALL@T+DUR|all@T+DUR|random", help="cut a stall (or all) off the network")
    p.add_argument("--pilot-glitch", action="append", default=[], metavar="STALL@T[:PILOT]|random", help="one sample reads PILOT (A)")
    p.add_argument("--meter-error", action="append", default=[], metavar="STALL@T+DUR|random", help="meter reads fail for DUR")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S", help="real seconds to wait for acks after the scenario ends (30)")
    p.add_argument("--connect-timeout", type=float, default=30.0, metavar="S", help="real seconds for every stall to connect (30)")
    p.add_argument("--wait-occupancy", type=float, metavar="S", help="real seconds to wait for the bridge's occupancy report, and within that for the acks of the stalls' start-up records, before the world starts (5 with --db, else 0)")
    p.add_argument("--sample-ms", type=int, metavar="MS", help="sampling period in simulated ms (default: scaled to stalls x speed)")
    p.add_argument("--pump-ms", type=int, metavar="MS", help="outbox pump period in simulated ms (default: twice the sampling period, at most 1000)")
    p.add_argument("--console-pty", nargs="?", const="1", metavar="STALLS", help="serve the consoles of these stalls (1; 1,3; all) on pseudo-terminals")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--check", action="store_true", help="validate the scenario and the flags, print the ground truth, run nothing")
    p.set_defaults(func=run)


def load_scenario(path, site=None, stalls=None):
    sc = scenmod.load(path, stalls)
    if site is not None and site != sc.site:
        if not wire.valid_id(site):
            raise UserError("--site must be 1..32 characters of A-Z a-z 0-9 _ -, not " + repr(site))
        doc = dict(sc.doc)
        doc["site"] = site
        sc = scenmod.parse(doc, sc.name, stalls)
    return sc


def faults_from_args(args, sc, stalls, seed):
    out = []
    for kind, specs in (("power_cut", args.power_cut), ("net_drop", args.net_drop), ("pilot_glitch", args.pilot_glitch), ("meter_error", args.meter_error)):
        for spec in specs:
            out.append(sim_faults.parse(kind, spec))
    return sim_faults.place(out, sc, stalls, seed)


def _check_flags(args):
    if args.stalls is not None and not 1 <= args.stalls <= scenmod.MAX_STALLS:
        raise UserError("--stalls must be from 1 to %d" % scenmod.MAX_STALLS)
    if not 0 < args.speed <= 100000:
        raise UserError("--speed must be above 0 and at most 100000")
    if args.drain_timeout < 0 or args.connect_timeout <= 0:
        raise UserError("--drain-timeout must be >= 0 and --connect-timeout > 0")
    if args.sample_ms is not None and not 10 <= args.sample_ms <= 900:
        raise UserError("--sample-ms must be from 10 to 900 (simulated ms; every second must see a sample)")
    if args.pump_ms is not None and not 10 <= args.pump_ms <= 5000:
        raise UserError("--pump-ms must be from 10 to 5000 (simulated ms)")


def _print_truth(sc, stalls, faults, seed):
    truth = scenmod.GroundTruth(sc, stalls)
    cur = truth.tariff.currency
    from host_tools.sim_engine import duration_text, money

    print("scenario %s: site %s, %d stall(s) (%d in the scenario), %d car(s), %s from %s" % (
        sc.name, sc.site, stalls, sc.stalls, len(sc.vehicles), duration_text(sc.end_s), scenmod.iso(sc.start)))
    total = 0
    for v, q in truth.summary():
        m = truth.milestones(v)
        total += q["fee"]
        print("  stall %-3d %-14s plug %s  charge end %s  unplug %s  idle %-8s billed %3d min  fee %s" % (
            v.stall, v.label(), scenmod.hms(m["plug_in"]), scenmod.hms(sc.start + v.charge_end_s) if v.charge_s else "   -    ", scenmod.hms(m["unplug"]),
            duration_text(q["idle_s"]), q["billed_min"], money(q["fee"], cur)))
    peak = max(p for _t, _o, p in truth.occupancy())
    print("total fee %s; peak occupancy %d%%" % (money(total, cur), peak))
    for f in faults:
        print("fault %s stall %s at %s%s" % (f.kind, f.stall or "all", scenmod.hms(sc.start + f.at_s), (" for " + duration_text(f.dur_s)) if f.dur_s else (" pilot " + f.pilot if f.pilot else "")))
    print("seed %d" % seed)


def _console_factory(spec, stalls):
    try:
        mod = importlib.import_module("host_tools.console_pty")
    except ImportError:
        raise UserError("--console-pty: this build has no pseudo-terminal console yet (host_tools/console_pty.py, issue 5)") from None
    fn = getattr(mod, "open_pty", None)
    if fn is None:
        raise UserError("--console-pty: host_tools.console_pty has no open_pty(name)")
    if spec == "all":
        chosen = set(range(1, stalls + 1))
    else:
        try:
            chosen = {int(x) for x in spec.split(",")}
        except ValueError:
            raise UserError("--console-pty: give stall numbers (1,3) or all, not " + repr(spec)) from None
        bad = [c for c in chosen if not 1 <= c <= stalls]
        if bad:
            raise UserError("--console-pty: unknown stall %d (the simulation runs stalls 1..%d)" % (bad[0], stalls))
    return lambda st: fn(st.station) if st.number in chosen else None


def run(args):
    from host_tools.bridge import mqttconn

    _check_flags(args)
    sc = load_scenario(args.scenario, args.site, args.stalls)
    stalls = args.stalls or sc.stalls
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    faults = faults_from_args(args, sc, stalls, seed)
    if args.check:
        _print_truth(sc, stalls, faults, seed)
        return 0
    if args.broker is None:
        raise UserError("sim: give --broker mqtt://HOST:PORT (or --check to validate only)")
    opts = mqttconn.options_from_args(args)
    eng = _engine()
    timing = eng.defaults(stalls, args.speed)
    if args.sample_ms:
        timing["sample_ms"] = args.sample_ms
        timing["pump_ms"] = min(1000, 2 * args.sample_ms)
    if args.pump_ms:
        timing["pump_ms"] = args.pump_ms
    # The stalls' clocks must not run ahead of the bridge's by an occupancy TTL:
    # its reports carry real time and a stall refuses a report older than the TTL.
    now = time.time()
    ahead = sc.start + sc.end_s - (now + sc.end_s / args.speed)
    if ahead > timing["occupancy_ttl_s"] // 2:
        raise UserError("%s: start %s: at %gx the simulated clock would run %d s ahead of real time, and the stalls would refuse "
                        "the bridge's occupancy reports as stale: move start into the past" % (sc.name, scenmod.iso(sc.start), args.speed, ahead))
    ids = [sc.station(i, stalls) for i in range(1, stalls + 1)]
    out = (lambda line: None) if args.quiet else (lambda line: print(line, flush=True))
    tariff_payload = None
    if args.db:
        db = sim_keys.open_db(args.db)
        try:
            keys, new = sim_keys.from_db(db, sc.site, ids)
            tariff_payload, stored = sim_keys.ensure_tariff(db, sc.site, sc.tariff)
            counted = sim_keys.site_stations(db, sc.site)
        finally:
            db.close()
        out("registered %d new station(s) on site %s in the bridge database (%d already there)%s" % (
            new, sc.site, stalls - new, "; stored tariff %s version %d" % (sc.tariff["id"], sc.tariff["version"]) if stored else ""))
        if counted != stalls:
            print("overstay: warning: the bridge counts %d stall(s) on site %s, the simulation runs %d: occupancy percentages will differ from the ground truth" % (counted, sc.site, stalls), file=sys.stderr)
    elif args.keys:
        keys = sim_keys.from_file(args.keys, sc.site, ids)
    else:
        keys = None
        print("overstay: warning: no --db or --keys: the stalls use random keys, no bridge can verify or ack them", file=sys.stderr)
    if tariff_payload is not None:
        mqttconn.publish_once(opts, "overstay-sim-tariff-%d" % os.getpid(), [(wire.site_topic(sc.site, "tariff"), tariff_payload, True)])
    console = _console_factory(args.console_pty, stalls) if args.console_pty else None
    tmp = None
    state_dir = args.state_dir
    if state_dir is None and not args.memfs:
        tmp = state_dir = tempfile.mkdtemp(prefix="overstay-sim-")
    elif state_dir is not None:
        try:
            os.makedirs(state_dir, exist_ok=True)
        except OSError as e:
            raise UserError("--state-dir: cannot create %s: %s" % (state_dir, e.strerror or e)) from None
    wait_occ = args.wait_occupancy if args.wait_occupancy is not None else (5.0 if args.db else 0.0)
    sim = eng.Simulation(sc, opts, keys=keys, stalls=stalls, speed=args.speed, state_dir=state_dir, seed=seed, faults=faults,
                         timing=timing, out=out, console=console, wait_occupancy=wait_occ, connect_timeout=args.connect_timeout)
    print("sim: seed %d; %d stall(s) of site %s; journals %s" % (seed, stalls, sc.site, "in memory" if state_dir is None else "under " + state_dir), flush=True)
    try:
        rep = asyncio.run(sim.run(drain_timeout=args.drain_timeout))
    except KeyboardInterrupt:
        print("overstay: interrupted", file=sys.stderr)
        if tmp is not None:
            print("sim: journals kept under %s" % tmp, file=sys.stderr)
        return 130
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing ran (e.g. no broker): nothing to keep
        raise
    for line in sim.summary_lines(rep):
        print(line, flush=True)
    if tmp is not None:
        if rep.exit_code == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("sim: journals kept under %s" % tmp, flush=True)
    return rep.exit_code
