# `overstay sim` as a subprocess: one-line errors for bad flags and files (exit 2), a run against a broker and the bridge (exit 0), unacked records (exit 1).
import json
import os
import subprocess
import sys

import pytest

from host_tools import sim_keys
from tests.bridge_helpers import InProcessBridge, rows, sqlite_url
from tests.broker import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "description": "two cars, two minutes",
    "site": "cli-lot",
    "stalls": 2,
    "start": "2026-11-02T08:00:00Z",
    "tariff": {"id": "cli", "version": 1, "currency": "USD", "rate": 60, "grace_s": 20},
    "end_s": 130,
    "vehicles": [
        {"stall": 1, "arrive_s": 0, "charge_s": 35, "amps": 32, "linger_s": 85},
        {"stall": 2, "arrive_s": 10, "charge_s": 35, "amps": 16, "linger_s": 70, "stop": "C"},
    ],
}


def sim(*args, timeout=90):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "host_tools.cli", "sim"] + list(args), capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def one_line_error(p, *fragments):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = [x for x in p.stderr.strip().splitlines() if not x.startswith("overstay: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("overstay") and ": error: " in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps(TINY))
    return str(p)


def test_bad_flags_and_files_are_one_line(tmp_path, tiny):
    # As a process: the error path through the real entry point.
    one_line_error(sim("--scenario", str(tmp_path / "none.json"), "--broker", "mqtt://127.0.0.1:1"), "--scenario: no such file")
    one_line_error(sim("--scenario", tiny, "--speed", "fast"), "argument --speed: invalid float value: 'fast'")
    one_line_error(sim("--scenario", tiny, "--broker", "mqtt://127.0.0.1:%d" % free_port(), "--connect-timeout", "1"), "could not connect to the broker")


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--broker", "mqtt://127.0.0.1:1", "--speed", "0"], "--speed must be above 0"),
        (["--power-cut", "9@10", "--check"], "--power-cut: unknown stall 9 (the simulation runs stalls 1..2)"),
        (["--net-drop", "1@60", "--check"], "--net-drop 1@60: give STALL@SECONDS+DURATION"),
        (["--db", "sqlite:///x.db", "--keys", "k.txt"], "not allowed with argument"),
        ([], "give --broker mqtt://HOST:PORT"),
        (["--broker", "http://x"], "--broker: give mqtt://HOST:PORT"),
        (["--keys", "/nonexistent/keys.txt", "--broker", "mqtt://127.0.0.1:1"], "--keys: no such file"),
        (["--sample-ms", "2000", "--broker", "mqtt://127.0.0.1:1"], "--sample-ms must be from 10 to 900"),
    ],
)
def test_more_bad_flags_in_process(tiny, capsys, args, fragment):
    from host_tools import cli

    assert cli.main(["sim", "--scenario", tiny] + args) == 2
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("overstay: warning: ")]
    assert len(err) == 1 and err[0].startswith("overstay") and ": error: " in err[0] and fragment in err[0], err


def test_a_scenario_in_the_future_is_refused_at_speed(tmp_path, capsys):
    from host_tools import cli

    f = tmp_path / "future.json"
    f.write_text(json.dumps(dict(TINY, start="2099-01-01T00:00:00Z")))
    assert cli.main(["sim", "--scenario", str(f), "--broker", "mqtt://127.0.0.1:1", "--speed", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "move start into the past" in err[0]


def test_a_broken_scenario_lists_every_problem(tmp_path):
    bad = dict(TINY, tariff={"id": "x", "version": 1, "rate": -1})
    del bad["end_s"]
    bad["vehicles"] = [
        {"stall": 1, "arrive_s": 0, "charge_s": 35, "amps": 32, "linger_s": 85},
        {"stall": 1, "arrive_s": 60, "charge_s": 35, "amps": 32, "linger_s": 85},
        {"stall": 7, "arrive_s": 0, "charge_s": 35, "amps": 32, "linger_s": 85},
        {"stall": 2, "arrive_s": -1, "charge_s": 35, "amps": 32, "linger_s": 85},
    ]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))
    p = sim("--scenario", str(f), "--check")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert all(line.startswith("overstay: error: bad.json: ") for line in lines), lines
    assert len(lines) == 4, lines
    text = p.stderr
    assert "tariff.rate" in text and "overlaps vehicles[0] on stall 1" in text and "unknown stall 7" in text and "arrive_s: must be a whole number of seconds >= 0, not -1" in text


def test_check_prints_the_ground_truth():
    p = sim("--scenario", os.path.join(ROOT, "scenarios", "busy-evening.json"), "--check", "--seed", "5", "--power-cut", "random")
    assert p.returncode == 0, p.stderr
    assert "20 car(s)" in p.stdout and "total fee USD 56.50; peak occupancy 100%" in p.stdout
    assert "fault power_cut stall" in p.stdout and "seed 5" in p.stdout


def test_run_against_the_bridge_exits_0_when_every_record_is_acked(mosquitto, tmp_path, tiny):
    url = sqlite_url(tmp_path / "bridge.db")
    bridge = InProcessBridge(mosquitto.url, url).start()
    try:
        p = sim("--broker", mosquitto.url, "--db", url, "--scenario", tiny, "--speed", "60", "--state-dir", str(tmp_path / "state"),
                "--seed", "1", "--pilot-glitch", "1@100", "--drain-timeout", "20", "--console-pty", "2")
    finally:
        bridge.stop()
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "registered 2 new station(s) on site cli-lot" in out and "stored tariff cli version 1" in out
    assert out.count(" session cli-lot-00") == 2 and out.count("= truth") == 2, out
    assert "sim: 2 of 2 cars' sessions closed, fees USD 0.60 (truth USD 0.60), 0 unacked record(s), 0 fee mismatch(es)" in out
    assert "sim: done:" in out
    assert "cli-lot-002 console on /dev/pts/" in out and "cli-lot-001 console on" not in out
    got = rows(url, "SELECT station, fee, fee_verified FROM sessions ORDER BY station")
    assert got == [("cli-lot-001", 60, 1), ("cli-lot-002", 0, 1)]
    assert os.path.isdir(tmp_path / "state" / "cli-lot-001")


def test_unacked_records_exit_1_and_are_listed(mosquitto, tmp_path, tiny):
    # Keys from a file as `overstay keys add` prints them; no bridge runs.
    db = sim_keys.open_db(sqlite_url(tmp_path / "k.db"))
    keys, _ = sim_keys.from_db(db, "cli-lot", ["cli-lot-001", "cli-lot-002"])
    db.close()
    kf = tmp_path / "keys.txt"
    kf.write_text("site cli-lot secret %s\n" % keys.site_key.hex() + "".join("station %s secret %s\n" % (s, k.hex()) for s, k in keys.stations.items()))
    p = sim("--broker", mosquitto.url, "--keys", str(kf), "--scenario", tiny, "--speed", "100", "--memfs", "--drain-timeout", "0.5", "--quiet")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "sim: unacked: cli-lot-001 holds" in p.stdout and "sim: unacked: cli-lot-002 holds" in p.stdout
    assert "session cli-lot" not in p.stdout  # --quiet: the summary only
