# `overstay bridge`: run the billing bridge (MQTT -> verified, exactly-once rows in SQLite or PostgreSQL).
import signal
import sys

from host_tools.bridge import db as dbmod
from host_tools.bridge import mqttconn
from host_tools.bridge.cliutil import duration
from host_tools.bridge.logs import Log
from host_tools.bridge.metrics import Metrics
from host_tools.bridge.service import Bridge, Settings
from host_tools.errors import UserError
from protocol import wire


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise UserError("expected a whole number, got " + repr(text)) from None
    if v <= 0:
        raise UserError("expected a number above 0, got " + repr(text))
    return v


def _ms(text):
    try:
        v = float(text)
    except ValueError:
        raise UserError("expected milliseconds, got " + repr(text)) from None
    if v < 0:
        raise UserError("milliseconds must not be negative")
    return v


def register(sub):
    p = sub.add_parser(
        "bridge",
        help="run the billing bridge",
        description="Subscribe to the stations' state, event and session topics (QoS 1, persistent session), verify "
        "every message, store it exactly once and ack it after the commit. See docs/bridge.md.",
    )
    mqttconn.add_arguments(p, required=True)
    p.add_argument("--db", metavar="URL", required=True, help="sqlite:///PATH or postgresql://...")
    p.add_argument("--client-id", help="MQTT client id (persistent session); default overstay-bridge-INSTANCE")
    p.add_argument("--instance", type=int, default=0, help="0..999, unique per bridge process: part of its ack n (default 0)")
    p.add_argument("--share", metavar="GROUP", help="subscribe through $share/GROUP/... (several bridges, one fleet)")
    p.add_argument("--sites", metavar="S1,S2", help="only these sites' topics (default: all)")
    p.add_argument("--batch-max", type=_positive_int, default=500, help="messages per transaction at most (default 500)")
    p.add_argument("--batch-ms", type=_ms, default=5.0, help="once a message is waiting, wait at most this long for more before committing (default 5)")
    p.add_argument("--ack-window", type=_positive_int, default=1000, help="QoS 1 publishes awaiting PUBACK at most (default 1000)")
    p.add_argument("--key-cache", type=duration, default=5, metavar="DURATION", help="reload station keys this often (default 5s)")
    p.add_argument("--occupancy-interval", type=duration, default=60, metavar="DURATION", help="republish occupancy this often (default 60s)")
    p.add_argument("--occupancy-tolerance", type=duration, default=30, metavar="DURATION", help="publish delay tolerated when cross-checking occupancy (default 30s)")
    p.add_argument("--gap-scan", type=duration, default=5, metavar="DURATION", help="scan for sequence gaps this often (default 5s)")
    p.add_argument("--gap-alert", type=duration, default=300, metavar="DURATION", help="alert on a gap open this long (default 5m)")
    p.add_argument("--gap-expire", type=duration, default=7 * 86400, metavar="DURATION", help="give up on a gap open this long (default 7d)")
    p.add_argument("--gap-settle", type=duration, default=2, metavar="DURATION", help="first gap scan of a new station waits until its first message is this old (default 2s)")
    p.add_argument("--drain", type=duration, default=5, metavar="DURATION", help="on SIGTERM, commit what was received for at most this long (default 5s)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    p.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.set_defaults(func=run)


def settings_from_args(args):
    opts = mqttconn.options_from_args(args)
    if not 0 <= args.instance <= 999:
        raise UserError("--instance must be 0..999")
    sites = None
    if args.sites:
        sites = [s.strip() for s in args.sites.split(",") if s.strip()]
        for s in sites:
            if not wire.valid_id(s):
                raise UserError("--sites: not a site id: " + repr(s))
    if args.share is not None and (not args.share or any(c in args.share for c in "/+#")):
        raise UserError("--share: a group name without / + or #")
    return Settings(
        opts,
        args.db,
        client_id=args.client_id,
        instance=args.instance,
        share=args.share,
        sites=sites,
        batch_max=args.batch_max,
        batch_ms=args.batch_ms,
        ack_window=args.ack_window,
        key_cache_s=args.key_cache,
        occupancy_interval_s=args.occupancy_interval,
        occupancy_tolerance_s=args.occupancy_tolerance,
        gap_scan_s=args.gap_scan,
        gap_alert_s=args.gap_alert,
        gap_expire_s=args.gap_expire,
        gap_settle_s=args.gap_settle,
        drain_s=args.drain,
    )


def run(args):
    settings = settings_from_args(args)
    log = Log(sys.stderr, as_json=args.log_json, level=args.log_level)
    metrics = Metrics()
    bridge = Bridge(settings, log, metrics)
    stop_metrics = None
    if args.metrics_port is not None:
        try:
            stop_metrics = metrics.serve(args.metrics_port, args.metrics_host)
        except OSError as e:
            raise UserError("--metrics-port %d: %s" % (args.metrics_port, e.strerror or e)) from None
        log.info("metrics", url="http://%s:%d/metrics" % (args.metrics_host, args.metrics_port))

    def on_signal(signum, frame):
        log.info("signal", signal=signal.Signals(signum).name)
        bridge.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return bridge.run()
    except dbmod.DatabaseError as e:
        raise UserError(str(e)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if stop_metrics is not None:
            stop_metrics()
