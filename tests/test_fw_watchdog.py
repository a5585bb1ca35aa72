# Task health, the watchdog stub, and the crash-loop guard that boots into safe mode.
from tests.fw_helpers import MemFs

from stall.watchdog import BootGuard, Health, StubWdt  # noqa: I001


def test_health_names_the_late_task():
    h = Health()
    h.register("sampler", 1000, 0)
    h.register("outbox", 5000, 0)
    h.beat("sampler", 900)
    assert h.late(1500) is None
    assert h.late(2000) == "sampler"
    h.beat("sampler", 5000)
    assert h.late(5001) == "outbox"


def test_stub_watchdog_says_when_a_board_would_reset():
    w = StubWdt(8000)
    w.feed(0)
    assert not w.expired(8000) and w.expired(8001) and w.feeds == 1


def boot(fs, reset="power", up=1000, crash=False, n=3, window=600):
    g = BootGuard(fs, "boots.json", n, window)
    b = g.begin(reset)
    g.alive(up)
    if crash:
        g.crashed(up)
    return b


def test_boot_counter_persists_and_power_cuts_are_not_crashes():
    fs = MemFs()
    for i in range(1, 6):
        assert boot(fs, "power", up=500)[:2] == (i, False)


def test_n_quick_crashes_mean_safe_mode_and_a_long_run_ends_it():
    fs = MemFs()
    assert boot(fs, crash=True)[1] is False
    assert boot(fs, crash=True)[1] is False
    assert boot(fs, reset="wdt")[1] is False  # run 3 hangs; the watchdog resets it
    b, safe, reason = boot(fs, reset="wdt", up=700000)  # the 4th boot sees 3 crashes
    assert safe and "3 crashes" in reason
    # The safe run stayed up past the window: the next boot is normal again.
    assert boot(fs)[1] is False


def test_crashes_spread_over_more_than_the_window_are_not_a_loop():
    fs = MemFs()
    for _ in range(3):
        boot(fs, crash=True, up=300000)  # 5 minutes each: 15 > 10 minutes
    assert boot(fs)[1] is False


def test_a_broken_boot_log_starts_over():
    fs = MemFs({"boots.json": bytearray(b"garbage")})
    assert boot(fs)[:2] == (1, False)
