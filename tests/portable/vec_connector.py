# Golden-vector runner for protocol/connector.py: feeds a case's samples and returns the queued events as JSON lists.
#
# input:  {"config": {...} (optional), "status": "Available" (optional),
#          "samples": [[t_ms, pilot, current_ma, withheld, fault], ...]}
#          (withheld and fault may be left off; they default to false)
# output: {"events": [[kind, at_ms, value], ...]}
#
# A sample the connector rejects (ValueError) shows up as ["rejected", t_ms,
# null] in place, so the vectors pin down that bad input changes nothing.
from protocol.connector import Connector


def run(inp):
    c = Connector(inp.get("config"), inp.get("status", "Available"))
    out = []
    for s in inp["samples"]:
        withheld = s[3] if len(s) > 3 else False
        fault = s[4] if len(s) > 4 else False
        try:
            c.feed(s[0], s[1], s[2], withheld, fault)
        except ValueError:
            out.append(["rejected", s[0], None])
        ev = c.next_event()
        while ev is not None:
            out.append([ev[0], ev[1], ev[2]])
            ev = c.next_event()
    return {"events": out}
