# Fee verification of closed session records: re-price with the shared fee engine, cross-check occupancy.
#
# The bridge never corrects a fee: it stores the station's fee, its own
# result and a verdict. fee_verified is 1 (same fee), 0 (a mismatch) or
# None (cannot verify); reason names every finding, comma-separated:
#   tariff_unknown       the record names a tariff version the bridge does not hold
#   timeline_invalid     the fee engine refuses the record's timeline
#   currency_mismatch    the record's currency is not the tariff's
#   fee_mismatch         the bridge's fee differs from the station's
#   occupancy_mismatch   an occupancy in the timeline is not what the bridge
#                        published around that instant (see occupancy_ok)
#   occupancy_unknown    the bridge has no occupancy history covering an
#                        occupancy event of the timeline
# Occupancy findings change fee_verified only when the tariff prices
# occupancy (has tiers): a mismatch makes it 0, an unknown makes a matching
# fee None; without tiers they are reported but cannot change the fee.
import bisect

from protocol import fee

DEFAULT_TOLERANCE_S = 30


class Verdict:
    __slots__ = ("fee_bridge", "fee_verified", "reason", "occupancy_ok")

    def __init__(self, fee_bridge, fee_verified, reason, occupancy_ok):
        self.fee_bridge = fee_bridge
        self.fee_verified = fee_verified
        self.reason = reason
        self.occupancy_ok = occupancy_ok


class History:
    """A site's occupancy as the bridge published it: sorted (t, pct) pairs."""

    __slots__ = ("ts", "pcts")

    def __init__(self, rows):
        rows = sorted(rows)
        self.ts = [r[0] for r in rows]
        self.pcts = [r[1] for r in rows]

    def acceptable(self, t, tolerance_s):
        """The values the bridge had in force at some instant of [t - tol, t + tol],
        or None when its history starts after t + tol (nothing to compare)."""
        lo = t - tolerance_s
        hi = t + tolerance_s
        i = bisect.bisect_right(self.ts, lo)  # rows at or before lo: ts[:i]
        out = set()
        if i > 0:
            out.add(self.pcts[i - 1])
        j = bisect.bisect_right(self.ts, hi)
        for k in range(i, j):
            out.add(self.pcts[k])
        return out or None


def occupancy_events(timeline):
    out = []
    if isinstance(timeline, list):
        for ev in timeline:
            if isinstance(ev, dict) and "occupancy" in ev and type(ev.get("t")) is int:
                out.append((ev["t"], ev["occupancy"]))
    return out


def check_occupancy(timeline, history, tolerance_s, evs=None):
    """1 all occupancy events agree with the bridge's history, 0 one does
    not, None nothing to check against (no events or no history)."""
    if evs is None:
        evs = occupancy_events(timeline)
    if not evs:
        return None
    if history is None:
        return None
    unknown = False
    for t, pct in evs:
        ok = history.acceptable(t, tolerance_s)
        if ok is None:
            unknown = True
        elif pct not in ok:
            return 0
    return None if unknown else 1


def verify(record, tariff, history, tolerance_s=DEFAULT_TOLERANCE_S, evs=None):
    """Verdict for a session record (dict) priced under tariff (a parsed
    fee.Tariff, or None when unknown); history: the site's History or None;
    evs: occupancy_events(record's timeline) when the caller has them."""
    reasons = []
    timeline = record.get("timeline")
    if evs is None:
        evs = occupancy_events(timeline)
    occ = check_occupancy(timeline, history, tolerance_s, evs)
    if evs:
        if occ == 0:
            reasons.append("occupancy_mismatch")
        elif occ is None:
            reasons.append("occupancy_unknown")
    if tariff is None:
        return Verdict(None, None, ",".join(["tariff_unknown"] + reasons), occ)
    try:
        q = fee.quote(tariff, timeline)
    except Exception as e:  # TimelineError, or anything odd in an authentic record: report, never crash the batch
        return Verdict(None, None, ",".join(["timeline_invalid: " + str(e)] + reasons), occ)
    verified = 1
    if record.get("currency") != tariff.currency:
        reasons.insert(0, "currency_mismatch")
        verified = 0
    if q["fee"] != record.get("fee"):
        reasons.insert(0, "fee_mismatch")
        verified = 0
    if tariff.tiers is not None and evs:
        if occ == 0:
            verified = 0
        elif occ is None and verified == 1:
            verified = None  # the fee rests on occupancy the bridge cannot confirm
    return Verdict(q["fee"], verified, ",".join(reasons) or None, occ)
