# A stall's first records must never be refused as replays just because its retained state reached the bridge first (a bridge bug this suite found).
#
# Found by bench/recovery.py (broker outage, stations new to the bridge):
# the broker comes back empty; a stall reconnects before the bridge has
# subscribed again, publishes its retained state and its queued events; the
# broker keeps the retained state and drops the events (nobody subscribed).
# The bridge subscribes, gets the retained state (a high n) alone, and after
# --gap-settle its gap scanner gives the station its first low-water mark
# just below that n (host_tools/bridge/gaps.py, "first pass for new
# stations"). When the stall resends its unacked events (resend_s later),
# each n is at or below the mark and unknown: rejected `replay`, never
# acked. The stall resends them forever and the bridge never stores them:
# billing records lost. Established stations are fine (a later message opens
# a gap that the resend fills); it takes a station the bridge has not
# scanned yet: a new installation, a new database, a fleet enrolled during
# an outage.
#
# Fixed: the bridge stores any authentic event or session it does not hold,
# whatever the station's low-water mark; this test keeps it that way.

from host_tools.bridge import db as dbmod
from host_tools.bridge import gaps, ingest
from protocol import wire
from tests.bridge_helpers import T0, register, sqlite_url


def test_retained_state_first_does_not_make_earlier_records_replays(tmp_path):
    db = dbmod.open_db(sqlite_url(tmp_path / "bridge.db"))
    key = register(db, "st-01", "lot-a")
    now = [T0]
    ing = ingest.Ingestor(db, clock=lambda: now[0])

    def msg(leaf, n, body):
        return ingest.Inbound(wire.station_topic("lot-a", "st-01", leaf), wire.encode(key, wire.LEAF_KIND[leaf], "st-01", n, T0, body))

    boot = msg("event", 1763830800001, {"connector": 1, "type": "boot", "boot": 1, "safe": False})
    state = msg("state", 1763830800002, {"connector": 1, "status": "Available"})
    # The broker kept the retained state and dropped the event: the bridge sees the state alone.
    ing.process([state])
    now[0] += 10
    gaps.scan(db, now=now[0], settle_s=2)
    ing.forget()  # the bridge reloads station records every --key-cache (5 s)
    # resend_s later the stall sends its unacked boot event again.
    now[0] += 60
    res = ing.process([boot])
    assert res.acks.get("st-01", [None, None, []])[2] == [1763830800001], res.rejects
    db.close()
