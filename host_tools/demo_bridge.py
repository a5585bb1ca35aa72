# The demo's billing bridge: `overstay bridge` unchanged, except that its occupancy clock is the simulator's accelerated world clock.
#
#   python -m host_tools.demo_bridge --world FILE -- BRIDGE-ARGS...
#
# Why: a simulated stall stamps the occupancy entries of its session
# timeline with its own clock, which is the simulated world's (the demo runs
# a Friday evening in about a minute). The bridge verifies a tiered fee by
# finding each entry's value in its own occupancy history, which it stamps
# with its occupancy publisher's clock (host_tools.bridge.occupancy.Publisher,
# `clock`, time.time by default). On real time that history could never
# line up with simulated instants, and every fee would stay unverified
# (`occupancy_unknown`). Here the publisher reads the same world clock as the
# stalls: FILE holds {"start": Unix s, "speed": x, "t0_monotonic": s or null}
# written by the demo (host_tools.demo_procs.write_world); world time is
# start while t0 is null (the world is frozen while the stalls boot), then
# start + (time.monotonic() - t0) x speed. CLOCK_MONOTONIC is one clock for
# every process of the machine. Everything else (ingest, verification,
# acks, gaps, received_at) is the bridge as shipped.
import json
import sys
import time


class WorldClock:
    def __init__(self, path):
        self.path = path
        self.start = None
        self.speed = None
        self.t0 = None

    def _load(self):
        try:
            with open(self.path, "r") as f:
                d = json.load(f)
        except (OSError, ValueError):
            return
        self.start = d["start"]
        self.speed = float(d["speed"])
        self.t0 = d.get("t0_monotonic")

    def __call__(self):
        if self.t0 is None:
            self._load()
        if self.start is None:
            return time.time()
        if self.t0 is None:
            return float(self.start)
        return self.start + (time.monotonic() - self.t0) * self.speed


def install(clock):
    """Make every occupancy Publisher the bridge builds use `clock`."""
    from host_tools.bridge import occupancy

    base = occupancy.Publisher

    class WorldPublisher(base):
        def __init__(self, *args, **kw):
            kw["clock"] = clock
            super().__init__(*args, **kw)

    occupancy.Publisher = WorldPublisher


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] != "--world" or argv[2] != "--":
        print("usage: python -m host_tools.demo_bridge --world FILE -- BRIDGE-ARGS...", file=sys.stderr)
        return 2
    install(WorldClock(argv[1]))
    from host_tools import cli

    return cli.main(["bridge"] + argv[3:])


if __name__ == "__main__":
    sys.exit(main())
