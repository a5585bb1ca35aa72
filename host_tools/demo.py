# `overstay demo` (`make demo`): one simulated site end to end: a broker, the billing bridge on SQLite, the stalls' real firmware, a live view, the billing summary and the exports.
#
#   overstay demo [--scenario FILE] [--speed X] [--broker auto|mosquitto|amqtt] [--dir DIR] [--plain]
#
# Orchestration (docs/demo.md):
#   1. a broker on a free loopback port: Mosquitto with a generated config
#      in a temporary folder (persistence on, outage-sized queues), or, when
#      Mosquitto is not installed (or --broker amqtt / OVERSTAY_DEMO_BROKER=amqtt),
#      amqtt, a broker from PyPI (installed with pip on demand);
#   2. the bridge database DIR/demo.db (SQLite, fresh each run): the site's
#      stalls registered with keys, the scenario's tariff stored, signed and
#      published retained, as `overstay keys add` and `overstay tariff set` do;
#   3. the bridge, a subprocess (`overstay bridge`, whose occupancy clock is the
#      simulated one: host_tools/demo_bridge.py says why), log in DIR/bridge.log;
#   4. the simulator in this process (host_tools.sim_engine.Simulation: every
#      stall runs the firmware's App), accelerated so the scenario takes
#      about a minute, under a live view (host_tools/demo_view.py);
#   5. once every record is acked: the bridge stopped, the summary read back
#      from its database, the CSV and OCPI exports written by host_tools.export.
# The broker and the bridge are stopped on every exit path (Ctrl-C included:
# exit status 130), and die with the demo even when it is killed.
import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time

from host_tools import demo_procs, demo_view, sim_keys
from host_tools import scenario as scenmod
from host_tools.errors import UserError

DEFAULT_SCENARIO = os.path.join(demo_procs.REPO, "scenarios", "busy-evening.json")
TARGET_S = 60.0  # real seconds the default speed aims at
BROKERS = ("auto", "mosquitto", "amqtt")
CSV_NAME = "sessions.csv"
OCPI_NAME = "cdrs.json"
OCPI_OWNER = ("US", "OVS")  # country code and party id of the demo's CPO in the CDRs


def register(sub):
    p = sub.add_parser(
        "demo",
        help="run a simulated site end to end: broker, bridge, stalls, live view, billing summary",
        description="Start a broker, the billing bridge on SQLite and a simulated site (the stall firmware) driven by a "
        "scenario, show the stalls live, then print the billing summary read back from the bridge's database and write "
        "CSV and OCPI exports. See docs/demo.md.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p):
    p.add_argument("--scenario", metavar="FILE", default=None, help="scenario JSON (default: scenarios/busy-evening.json)")
    p.add_argument("--speed", type=float, metavar="X", help="simulated seconds per real second (default: the scenario in about a minute)")
    p.add_argument("--broker", choices=BROKERS, default=os.environ.get("OVERSTAY_DEMO_BROKER") or "auto",
                   help="mosquitto, amqtt (the embedded Python broker) or auto: Mosquitto when installed (env OVERSTAY_DEMO_BROKER)")
    p.add_argument("--dir", metavar="DIR", default=os.path.join("build", "demo"),
                   help="where the bridge database, its log, the stalls' journals and the exports go (default build/demo; emptied of a previous demo's files)")
    p.add_argument("--plain", action="store_true", help="progress lines instead of the live view (the default when not on a terminal)")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S", help="real seconds to wait for the last acks after the scenario ends (30)")
    p.add_argument("--seed", type=int, default=1, help="the simulator's seed (default 1)")


def _say(text):
    print(text, flush=True)


def choose_broker(want):
    if want == "mosquitto":
        if demo_procs.mosquitto_binary() is None:
            raise UserError("demo: --broker mosquitto: mosquitto is not installed (`make setup` installs it; or use --broker amqtt)")
        return "mosquitto"
    if want == "auto" and demo_procs.mosquitto_binary() is not None:
        return "mosquitto"
    if not demo_procs.amqtt_available():
        demo_procs.install_amqtt(_say)
    return "amqtt"


def _prepare_dir(d):
    """DIR, emptied of what an earlier demo left there (only the demo's own files)."""
    try:
        os.makedirs(d, exist_ok=True)
    except OSError as e:
        raise UserError("--dir: cannot create %s: %s" % (d, e.strerror or e)) from None
    for name in ("demo.db", "demo.db-wal", "demo.db-shm", "bridge.log", "world.json", CSV_NAME, OCPI_NAME):
        p = os.path.join(d, name)
        if os.path.exists(p):
            os.remove(p)
    shutil.rmtree(os.path.join(d, "stalls"), ignore_errors=True)


def _shown(path):
    """A path as the user should read it: relative when under the current folder."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


class Demo:
    def __init__(self, args):
        self.args = args
        path = args.scenario or DEFAULT_SCENARIO
        if args.scenario and not os.path.exists(path) and os.path.exists(os.path.join(demo_procs.REPO, path)):
            path = os.path.join(demo_procs.REPO, path)
        self.sc = scenmod.load(path)
        self.scenario_path = path
        if args.speed is None:
            self.speed = float(max(1, round(self.sc.end_s / TARGET_S)))
        else:
            if not 0 < args.speed <= 100000:
                raise UserError("--speed must be above 0 and at most 100000")
            self.speed = args.speed
        self.dir = os.path.abspath(args.dir)
        self.db_path = os.path.join(self.dir, "demo.db")
        self.db_url = "sqlite:///" + self.db_path
        self.world_file = os.path.join(self.dir, "world.json")
        self.children = demo_procs.Children()
        self.tmp = None
        self.sim = None
        self.report = None
        self.live = (not args.plain) and sys.stdout.isatty()

    # -- steps ----------------------------------------------------------------------------

    def start_broker(self):
        kind = choose_broker(self.args.broker)
        self.tmp = tempfile.mkdtemp(prefix="overstay-demo-")
        url, child, what = demo_procs.start_broker(kind, self.tmp, self.children, _say)
        self.broker_url = url
        self.broker_kind = kind
        _say("demo: broker %s on %s (pid %d)" % (what, url, child.pid))

    def register(self):
        from host_tools.bridge import mqttconn
        from protocol import wire

        sc = self.sc
        ids = [sc.station(i) for i in range(1, sc.stalls + 1)]
        db = sim_keys.open_db(self.db_url)
        try:
            self.keys, new = sim_keys.from_db(db, sc.site, ids)
            payload, _stored = sim_keys.ensure_tariff(db, sc.site, sc.tariff)
        finally:
            db.close()
        mqttconn.publish_once(mqttconn.BrokerOptions(self.broker_url), "overstay-demo-tariff-%d" % os.getpid(),
                              [(wire.site_topic(sc.site, "tariff"), payload, True)])
        _say("demo: bridge database %s: %d stalls of site %s registered with their keys; tariff %s v%d stored, signed and published" % (
            _shown(self.db_path), new, sc.site, sc.tariff["id"], sc.tariff["version"]))

    def start_bridge(self):
        # Occupancy entries may be up to about a real second late at this speed (sim_engine.occupancy_delay_s).
        self.tolerance_s = max(30, int(self.speed + 0.999))
        demo_procs.write_world(self.world_file, self.sc.start, self.speed, None)
        log = os.path.join(self.dir, "bridge.log")
        self.bridge = demo_procs.start_bridge(self.broker_url, self.db_url, self.world_file, log, self.tolerance_s, self.children)
        demo_procs.wait_bridge_subscribed(self.bridge)
        _say("demo: bridge running (pid %d), log %s" % (self.bridge.pid, _shown(log)))

    async def simulate(self):
        from host_tools.bridge.mqttconn import BrokerOptions
        from host_tools.sim_engine import Simulation

        sc = self.sc
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, me.cancel)
        if self.live:
            view = demo_view.ScreenView("%s: %d stalls, %s at %gx" % (sc.site, sc.stalls, os.path.basename(self.scenario_path), self.speed), self.children)
        else:
            view = demo_view.PlainView(_say)
        self.sim = sim = Simulation(sc, BrokerOptions(self.broker_url), keys=self.keys, speed=self.speed,
                                    state_dir=os.path.join(self.dir, "stalls"), seed=self.args.seed, out=view.line,
                                    wait_occupancy=10.0, connect_timeout=30.0)
        db = demo_view.BridgeDb(self.db_path)
        expected = len(sc.vehicles)
        runner = None
        try:
            with view:
                await sim.start()
                # The bridge's occupancy clock follows the world from here (demo_bridge.py).
                demo_procs.write_world(self.world_file, sc.start, self.speed, time.monotonic() - sim.world.ms() / 1000.0 / self.speed)
                runner = asyncio.create_task(sim.run(drain_timeout=self.args.drain_timeout))
                period = 0.25
                while not runner.done():
                    if not self.bridge.alive():
                        raise UserError("demo: the bridge stopped (code %s): %s" % (self.bridge.proc.returncode, self.bridge.log_tail(5)))
                    if view.due():
                        view.show(demo_view.snapshot(sim, db, expected))
                    await asyncio.wait([runner], timeout=period)
                self.report = runner.result()
                view.show(demo_view.snapshot(sim, db, expected, final=True), force=True)
        finally:
            db.close()
            # Interrupted: Simulation.run stops every stall (DISCONNECT) when cancelled.
            if runner is not None and not runner.done():
                runner.cancel()
                await asyncio.wait([runner], timeout=15)
            elif runner is None:
                await sim.stop()
        for line in sim.summary_lines(self.report):
            _say(line)

    def finish(self):
        from host_tools import export

        code = self.bridge.stop(15.0)
        if code not in (0, None):
            _say("demo: the bridge exited with code %s: %s" % (code, self.bridge.log_tail(5)))
        sessions = demo_view.read_sessions(self.db_path, self.sc.site)
        lines = demo_view.summary_lines(self.sim, sessions, _shown(self.db_path), self.report)
        rows = export.read_sessions(self.db_url)
        csv_path = os.path.join(self.dir, CSV_NAME)
        ocpi_path = os.path.join(self.dir, OCPI_NAME)
        export.write_output(export.csv_text(rows), csv_path)
        export.write_output(export.ocpi_text(rows, *OCPI_OWNER), ocpi_path)
        lines += [
            "exports (overstay export):",
            "  CSV            %s  (%d sessions)" % (_shown(csv_path), len(rows)),
            "  OCPI 2.2.1     %s  (%d CDRs)" % (_shown(ocpi_path), len(rows)),
        ]
        _say("")
        for line in lines:
            _say(line)
        return 0 if demo_view.result_ok(self.sim, sessions, self.report) else 1

    def cleanup(self):
        self.children.stop()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def run(args):
    demo = Demo(args)
    _prepare_dir(demo.dir)
    t0 = time.monotonic()
    _say("demo: %s: site %s, %d stalls, %d cars, %s simulated at %gx (about %d s)" % (
        os.path.basename(demo.scenario_path), demo.sc.site, demo.sc.stalls, len(demo.sc.vehicles),
        demo_view.duration_text(demo.sc.end_s), demo.speed, demo.sc.end_s / demo.speed))
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, _raise_interrupt)
    try:
        demo.start_broker()
        demo.register()
        demo.start_bridge()
        asyncio.run(demo.simulate())
        for sig in previous:  # closing the loop reset them to the default
            signal.signal(sig, _raise_interrupt)
        code = demo.finish()
        _say("demo: done in %.0f s%s" % (time.monotonic() - t0, "" if code == 0 else "; FAILED: not every car was billed once with a fee the bridge verified (see above)"))
        return code
    except (KeyboardInterrupt, asyncio.CancelledError):
        _stop_quietly(demo)
        print("\ndemo: interrupted: stopped the stalls, the bridge and the broker; nothing is left running (database kept in %s)" % _shown(demo.dir),
              file=sys.stderr, flush=True)
        return 130
    finally:
        _stop_quietly(demo)
        for sig, h in previous.items():
            signal.signal(sig, h)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop_quietly(demo):
    # A second Ctrl-C while stopping must not leave anything behind either.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        demo.cleanup()
    finally:
        signal.signal(signal.SIGINT, old)


def main(argv=None):
    from host_tools import cli

    return cli.main(["demo"] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
