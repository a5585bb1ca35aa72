# Power cuts at any instant, including inside journal writes and compactions: no closed session or plug-in is lost,
# the same session continues after a reboot, and the time the controller was down is Unavailable and never billed.
import random

import pytest

from protocol import fee, journal
from tests.fw_helpers import T0, UNIX0, MemFs, PowerCut, Rig, make_cfg

# The car (world seconds since UNIX0 -> pilot, mA): example 1 of the idle-fee rules.
SCRIPT = [(0, "B", 0), (10, "C", 16000), (3610, "C", 0), (4530, "A", 0)]
END_S = 4600


def car(ws):
    cur = SCRIPT[0]
    for s in SCRIPT:
        if s[0] <= ws:
            cur = s
    return cur[1], cur[2]


def world(fs, down_s=120, step=1000, sync=True, ack_every=1):
    """Run the script on `fs`; each PowerCut reboots the stall down_s later.

    Returns (every message the bridge saw, world ms of each cut, last rig)."""
    w = boot_w = 0
    cuts, seen = [], []
    k = 0
    while True:
        r = Rig(fs=fs, now=0, start=False)
        try:
            r.core.start(0)
            if sync:
                r.core.wall(UNIX0 * 1000 + boot_w, 0)
            while w < max(END_S * 1000, boot_w + 60000):
                w += step
                r.now = w - boot_w
                p, ma = car(w // 1000)
                r.core.sample(r.now, p, ma, w // 1000, False)
                r.core.tick(r.now)
                k += 1
                if k % ack_every == 0:
                    seen.extend(r.sent(ack=True))
            break
        except PowerCut:
            cuts.append(w)
            fs = fs.reboot()
            w += down_s * 1000
            boot_w = w
    seen.extend(r.drain())
    return seen, cuts, r


def budget_of_uncut_run(fat=False):
    fs = MemFs(fat=fat)
    world(fs)
    return fs.written + fs.steps


def check(seen, cuts, r):
    sess = [m.body for m in seen if m.kind == "session"]
    ids = {s["session_id"] for s in sess}
    assert len(ids) == 1, "one plug-in, one session: %r" % ids
    s = sess[-1]
    assert s["fee"] == fee.quote(T0, s["timeline"])["fee"]
    assert s["fee"] <= 500 and s["idle_s"] <= 920
    if not cuts:
        assert s["fee"] == 500
    # A session referenced before a cut is the one that closes.
    before = {m.body.get("session") for m in seen if m.kind == "event" and m.body.get("session")}
    assert before <= ids
    # Never two different messages under one seq, across every boot.
    by_n = {}
    for m in seen:
        assert by_n.setdefault(m.seq, m.digest) == m.digest, "seq %d reused" % m.seq
    # Everything acked, nothing billing left in the journal.
    assert len(r.core.outbox) == 0
    assert r.core.j.pending(journal.BILLING) == []
    return s


def test_uncut_run_bills_example_1():
    seen, cuts, r = world(MemFs())
    assert check(seen, cuts, r)["fee"] == 500


@pytest.mark.parametrize("fat", [False, True], ids=["atomic-rename", "fat-rename"])
def test_power_cut_at_random_instants_loses_nothing(fat):
    total = budget_of_uncut_run(fat)
    rng = random.Random(20240531 + fat)
    budgets = sorted(set(rng.randrange(total) for _ in range(250)) | {0, 1, 13, total - 1})
    unavailable = 0
    for b in budgets:
        seen, cuts, r = world(MemFs(budget=b, fat=fat))
        assert cuts, "budget %d below the run's %d writes must cut" % (b, total)
        s = check(seen, cuts, r)
        statuses = [e["status"] for e in s["timeline"] if "status" in e]
        if "Unavailable" in statuses:
            unavailable += 1
            i = statuses.index("Unavailable")
            # Downtime is a gap the fee engine never bills: the next status is the restored one.
            assert statuses[i + 1] in ("Preparing", "Charging", "SuspendedEV")
    assert unavailable > len(budgets) // 3  # most cuts fall inside the session


def test_cut_in_every_byte_of_the_plug_in_record():
    # Find the writes of the plug-in: cut at each byte of that window.
    fs = MemFs(budget=10**9)
    r = Rig(fs=fs, now=0)
    r.sync(UNIX0)
    before = fs.written + fs.steps
    r.run(2, pilot="B")
    after = fs.written + fs.steps
    assert after > before
    for b in range(before, after + 1):
        seen, cuts, rr = world(MemFs(budget=b), step=5000, ack_every=10**9)
        check(seen, cuts, rr)


def test_reboot_with_car_plugged_in_continues_the_session_downtime_unavailable():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(3600, pilot="C", ma=16000)
    r.run(400, pilot="C", ma=0)  # idle since 3611; last heartbeat at most 60 s ago
    sid = r.core.tab.sid
    hb_t = r.core._hb  # noqa: SLF001 (not yet loaded: the heartbeat is in the journal)
    assert hb_t is None
    seen = r.sent(ack=True)
    # Power cut now (r.now = 4010 s); the stall comes back 300 s later.
    down_at = r.now
    r2 = Rig(fs=r.fs.reboot(), now=0)
    r2.sync(UNIX0 + down_at // 1000 + 300)
    r2.seen = seen
    r2.run(120, pilot="C", ma=0)  # the car is still there, still idle
    r2.run(2, pilot="A")
    s = r2.sessions(r2.drain())[0]
    assert s["session_id"] == sid
    tl = s["timeline"]
    assert [e["status"] for e in tl] == ["Preparing", "Charging", "SuspendedEV", "Unavailable", "SuspendedEV", "Available"]
    t_down, t_up = tl[3]["t"], tl[4]["t"]
    assert UNIX0 + down_at // 1000 - 60 <= t_down <= UNIX0 + down_at // 1000  # the last heartbeat
    assert t_up == UNIX0 + down_at // 1000 + 300  # boot
    assert s["idle_s"] == (t_down - tl[2]["t"]) + (tl[5]["t"] - t_up)
    assert s["fee"] == fee.quote(T0, tl)["fee"]
    assert s["synced"] is True


def test_car_gone_during_downtime_closes_right_after_boot():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(100, pilot="C", ma=16000)
    r2 = Rig(fs=r.fs.reboot(), now=0)
    r2.sync(UNIX0 + 600)
    r2.run(3, pilot="A")
    s = r2.sessions(r2.drain())[0]
    assert [e["status"] for e in s["timeline"]] == ["Preparing", "Charging", "Unavailable", "Charging", "Available"]
    assert s["fee"] == 0


def test_unsynced_boots_are_estimated_then_anchored_at_the_first_sync():
    # Boot 1 never learns the wall time; the car plugs in and idles; power cut;
    # boot 2 learns it later. Boot 2's part is exact, boot 1's an estimate
    # placed right before it (zero downtime): the record says synced=False.
    r = Rig(now=0)
    r.run(10, pilot="B")
    r.run(600, pilot="C", ma=16000)
    r.run(500, pilot="C", ma=0)
    r2 = Rig(fs=r.fs.reboot(), now=0)
    r2.run(100, pilot="C", ma=0)
    r2.sync(UNIX0 + 100)  # boot 2 started at UNIX0
    r2.run(50)
    r2.run(2, pilot="A")
    s = r2.sessions(r2.drain())[0]
    tl = s["timeline"]
    assert [e["status"] for e in tl] == ["Preparing", "Charging", "SuspendedEV", "Unavailable", "SuspendedEV", "Available"]
    assert s["synced"] is False
    assert tl[4]["t"] == UNIX0  # boot 2: exact
    assert tl[3]["t"] == UNIX0  # boot 1's last instant placed at boot 2 (zero downtime)
    assert 500 - 60 <= tl[3]["t"] - tl[2]["t"] <= 500  # idle up to the last heartbeat of boot 1
    assert tl[2]["t"] - tl[1]["t"] == 600  # durations inside boot 1 unchanged
    assert s["fee"] == fee.quote(T0, tl)["fee"]


def test_journal_loss_of_the_seq_store_never_reuses_a_seq():
    r = Rig(now=0)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    r.run(2, pilot="A")
    first = r.drain()
    top = max(m.seq for m in first)
    # The journal file is lost (flash corruption); the seq file survives.
    fs = r.fs.reboot()
    del fs.files["journal.log"]
    r2 = Rig(fs=fs, now=0)
    assert r2.core.seq >= top
    # Both lost, but the wall clock is known: the Unix-ms floor is above.
    fs = r2.fs.reboot()
    fs.files.clear()
    r3 = Rig(fs=fs, now=0)
    r3.sync(UNIX0 + 60)
    r3.run(10, pilot="B")
    assert min(m.seq for m in r3.drain() if m.t >= UNIX0) > top


def test_long_sessions_fold_their_parts_into_snapshots_and_survive_reboots():
    cfg = make_cfg(max_timeline=16, resume_hold_ms=1000, complete_hold_ms=1000)
    r = Rig(now=0, cfg=cfg)
    r.sync(UNIX0)
    r.run(10, pilot="B")
    for _ in range(40):
        r.run(10, pilot="C", ma=16000)
        r.run(400, pilot="C", ma=0)
    tab = r.core.tab
    assert len(tab.parts) <= 2 * 16 + 16 + 3  # folded: a snapshot plus the parts since
    assert len(tab.s.timeline) <= 16 and tab.coalesced > 0
    # Replaying the journal (snapshot + later parts) rebuilds exactly the same books.
    replay = Rig(fs=r.fs.reboot(), cfg=cfg, now=0, start=False)
    replay.core._continue = lambda now, t: setattr(replay.core, "tab", t)  # noqa: SLF001 (stop before the reboot boundary)
    replay.core.start(0)
    assert replay.core.tab.record() == tab.record() and replay.core.tab.segs == tab.segs
    r2 = Rig(fs=r.fs.reboot(), cfg=cfg, now=0)
    assert r2.core.tab.sid == tab.sid
    r2.sync(UNIX0 + r.now // 1000 + 30)
    r2.run(3, pilot="A")
    (s,) = r2.sessions(r2.drain())
    assert s["session_id"] == tab.sid and s["fee"] == fee.quote(T0, s["timeline"])["fee"]
    assert len(s["timeline"]) <= 16 and s["coalesced"] >= tab.coalesced
    assert r2.core.j.pending(journal.BILLING) == []
