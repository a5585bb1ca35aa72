# The demo's live view, drawn in its own process: JSON lines in on stdin (snapshots and event lines from host_tools/demo.py), a rich Live table out on the terminal.
#
#   python -m host_tools.demo_screen TITLE  < {"snap": {...}} / {"event": "..."} lines
#
# It draws the latest snapshot four times a second and the last few events
# below it. End of input (the demo closed the pipe, or died) draws the last
# frame, leaves it on the screen and exits. Ctrl-C is the demo's to handle:
# ignored here, so the frame is never torn mid-draw.
import collections
import json
import signal
import sys
import threading


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    title = argv[0] if argv else "overstay demo"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the demo died (parent-death signal): restore the terminal
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from host_tools import demo_view

    state = {"snap": None}
    events = collections.deque(maxlen=6)
    done = threading.Event()

    def reader():
        try:
            for raw in sys.stdin.buffer:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if "snap" in msg:
                    state["snap"] = msg["snap"]
                elif "event" in msg:
                    events.append(msg["event"])
        finally:
            done.set()

    def frame():
        s = state["snap"]
        if s is None:
            return Text("starting the stalls..." + ("\n" + "\n".join(events) if events else ""), style="dim")
        return demo_view.render(s, title, list(events))

    threading.Thread(target=reader, name="screen-reader", daemon=True).start()
    with Live(console=Console(), get_renderable=frame, refresh_per_second=4, transient=False, redirect_stdout=False, redirect_stderr=False):
        while not done.wait(0.25):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
