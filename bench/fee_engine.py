# Fee engine throughput on CPython: quotes per second for a typical session, ms per quote for a 3-week one.
#
# One core, one process. The typical session is what the billing bridge prices
# all day long: a dozen events, an hour of idle, a tariff with occupancy tiers.
# The long one is the worst case a stall can send: three weeks plugged in with
# thousands of status changes and occupancy updates under tiers and windows.
import random
import time

from protocol import fee

TYPICAL_TARIFF = {
    "id": "city-garage",
    "version": 7,
    "currency": "USD",
    "grace_s": 600,
    "rate": 40,
    "rounding": "ceil",
    "cap": 5000,
    "tiers": [
        {"min_occupancy_pct": 0, "rate": 20},
        {"min_occupancy_pct": 60, "rate": 40},
        {"min_occupancy_pct": 90, "rate": 100},
    ],
}

T0 = 1763830800  # 2025-11-22 17:00 UTC


def typical_timeline():
    s = lambda t, st: {"t": T0 + t, "status": st}  # noqa: E731
    o = lambda t, p: {"t": T0 + t, "occupancy": p}  # noqa: E731
    return [
        o(0, 55),
        s(0, "Preparing"),
        s(40, "Charging"),
        s(1800, "SuspendedEVSE"),
        s(1900, "Charging"),
        o(2400, 72),
        s(5400, "SuspendedEV"),
        o(6000, 88),
        s(6600, "Finishing"),
        o(7200, 93),
        o(8400, 64),
        s(9000, "Available"),  # 3600 s idle from 5400
    ]


LONG_TARIFF = {
    "id": "fleet-depot",
    "version": 2,
    "grace_s": 900,
    "rate": 30,
    "cap": None,
    "tiers": [
        {"min_occupancy_pct": 0, "rate": 10},
        {"min_occupancy_pct": 50, "rate": 30},
        {"min_occupancy_pct": 80, "rate": 75},
    ],
    "windows": [
        {"days": [0, 1, 2, 3, 4], "start": "07:00", "end": "20:00"},
        {"days": [5], "start": "09:00", "end": "24:00"},
    ],
    "utc_offset_min": -300,
}


def long_timeline(days=21, seed=7):
    """Status changes every ~10 min and occupancy every 15 min for `days` days."""
    rng = random.Random(seed)
    statuses = ("Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Faulted", "Unavailable", "Preparing")
    weights = (30, 30, 15, 15, 3, 3, 4)
    end = T0 + days * 86400
    events = [{"t": T0, "status": "Preparing"}]
    t = T0
    next_occ = T0
    while True:
        t += rng.randint(60, 1140)
        while next_occ <= t and next_occ < end:
            events.append({"t": next_occ, "occupancy": rng.randint(20, 100)})
            next_occ += 900
        if t >= end:
            break
        events.append({"t": t, "status": rng.choices(statuses, weights)[0]})
    events.append({"t": end, "status": "Available"})
    return events


def per_second(fn, seconds=1.5):
    # Batches keep the clock out of the measurement; the first batch warms up.
    fn()
    n = 0
    batch = 100
    t0 = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        n += batch
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt


def ms_per_call(fn, repeat=15):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    return times[len(times) // 2], times[0]


def main():
    tl = typical_timeline()
    parsed = fee.parse_tariff(TYPICAL_TARIFF)
    q = fee.quote(TYPICAL_TARIFF, tl)
    print("typical session: %d events, idle %d s, %d billed min, fee %d (%d run-length entries)"
          % (len(tl), q["idle_s"], q["billed_min"], q["fee"], len(q["minutes"])))
    print("  quote(raw tariff dict):   %9.0f quotes/s" % per_second(lambda: fee.quote(TYPICAL_TARIFF, tl)))
    print("  quote(parsed Tariff):     %9.0f quotes/s" % per_second(lambda: fee.quote(parsed, tl)))

    lt = long_timeline()
    n_status = sum(1 for e in lt if "status" in e)
    lparsed = fee.parse_tariff(LONG_TARIFF)
    q = fee.quote(lparsed, lt)
    print("3-week session: %d status changes + %d occupancy events, idle %d s, %d billed min, fee %d (%d entries)"
          % (n_status, len(lt) - n_status, q["idle_s"], q["billed_min"], q["fee"], len(q["minutes"])))
    med, best = ms_per_call(lambda: fee.quote(lparsed, lt))
    print("  quote:                    %9.2f ms median (%.2f ms best)" % (med, best))


if __name__ == "__main__":
    main()
