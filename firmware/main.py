# Stall entry point on the board: load the config, run the app; a crash is recorded by the app and the board resets.
import asyncio
import sys

import machine

from protocol.journal import OsFs
from stall import board, config
from stall.app import App
from stall.clock import BoardTicks, MonoClock
from stall.ntp import NtpWall

CONFIG = "config.json"


def main():
    fs = OsFs()
    try:
        cfg = config.load(fs, CONFIG)
    except config.ConfigError as e:
        print("overstay: bad config, running the console only:", e)
        cfg = config.defaults()  # unprovisioned: no keys, so no metering
    clock = MonoClock(BoardTicks())
    hw = board.BoardHardware(cfg) if cfg["hardware"] == "board" else None
    app = App(
        cfg,
        fs,
        hw=hw,
        clock=clock,
        wall=NtpWall(cfg["ntp_host"]),
        wdt=board.BoardWdt(cfg["wdt_ms"]),
        reset=board.reset_cause(),
        console=(asyncio.StreamReader(sys.stdin), sys.stdout.write),
    )
    app.extra_tasks.append(board.wifi(cfg, clock))
    try:
        asyncio.run(app.run())
    except Exception as e:  # the app has recorded the crash in its boot log
        sys.print_exception(e)
    machine.reset()


main()
