# Tests for host_tools/fee_cmd.py: `overstay fee quote`, single and batch, and its one-line errors.
import json
import os
import subprocess
import sys

import pytest

from tests.fee_examples import EX1, T0


def overstay(*args, stdin=None):
    return subprocess.run(
        [sys.executable, "-m", "host_tools.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def files(tmp_path):
    t = tmp_path / "tariff.json"
    t.write_text(json.dumps(T0))
    tl = tmp_path / "timeline.json"
    tl.write_text(json.dumps(EX1))
    return t, tl


def test_quote_prints_one_json_object(files):
    r = overstay("fee", "quote", "--tariff", str(files[0]), "--timeline", str(files[1]))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["fee"] == 500


def test_quote_at_prices_open_session(files, tmp_path):
    open_tl = tmp_path / "open.json"
    open_tl.write_text(json.dumps(EX1[:3]))
    r = overstay("fee", "quote", "--tariff", str(files[0]), "--timeline", str(open_tl), "--at", "4530")
    assert r.returncode == 0
    out = json.loads(r.stdout)
    assert out["session_end"] is None and out["fee"] == 500


def test_installed_console_script(files):
    exe = os.path.join(os.path.dirname(sys.executable), "overstay")
    if not os.path.exists(exe):
        pytest.fail("the overstay console script is not installed next to the interpreter; run make setup")
    r = subprocess.run([exe, "fee", "quote", "--tariff", str(files[0]), "--timeline", str(files[1])], capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)["fee"] == 500


def test_batch_keeps_order_and_reports_bad_lines_in_place(tmp_path):
    lines = [
        json.dumps({"tariff": T0, "timeline": EX1}),
        "not json",
        json.dumps({"tariff": dict(T0, rate=-1), "timeline": EX1}),
        json.dumps({"tariff": T0, "timeline": EX1[:3], "at": 4530}),
        json.dumps({"tariff": T0}),
        json.dumps([1, 2]),
        json.dumps({"tariff": T0, "timeline": [{"t": 0, "status": "Available"}]}),
    ]
    f = tmp_path / "batch.jsonl"
    f.write_text("\n".join(lines) + "\n")
    r = overstay("fee", "quote", "--batch", str(f))
    assert r.returncode == 0
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(out) == len(lines)
    assert out[0]["fee"] == 500
    assert "error" in out[1]
    assert out[2] == {"error": "tariff.rate: must be an integer >= 0"}
    assert out[3]["fee"] == 500 and out[3]["session_end"] is None
    assert out[4] == {"error": "timeline: required"}
    assert "error" in out[5]
    assert "no session starts" in out[6]["error"]
    assert "5 line(s) had errors" in r.stderr


def test_batch_from_stdin():
    r = overstay("fee", "quote", "--batch", "-", stdin=json.dumps({"tariff": T0, "timeline": EX1}) + "\n")
    assert r.returncode == 0 and json.loads(r.stdout)["fee"] == 500


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["fee", "quote", "--tariff", "/nonexistent/t.json", "--timeline", "x.json"], "no such file"),
        (["fee", "quote", "--batch", "/nonexistent/b.jsonl"], "no such file"),
        (["fee", "quote", "--bogus"], "unrecognized arguments"),
        (["fee", "quote"], "give --tariff and --timeline"),
        (["fee", "quote", "--batch", "-", "--at", "5"], "cannot be combined"),
        (["fee", "quote", "--tariff", "T", "--timeline", "L", "--at", "soon"], "--at"),
        (["fee"], "required"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, needle):
    r = overstay(*argv)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr


def test_bad_json_and_bad_tariff_files(tmp_path, files):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = overstay("fee", "quote", "--tariff", str(bad), "--timeline", str(files[1]))
    assert r.returncode == 2 and "not valid JSON" in r.stderr and len(r.stderr.splitlines()) == 1
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(dict(T0, rounding="up")))
    r = overstay("fee", "quote", "--tariff", str(wrong), "--timeline", str(files[1]))
    assert r.returncode == 2 and "tariff.rounding" in r.stderr
    r = overstay("fee", "quote", "--tariff", str(tmp_path), "--timeline", str(files[1]))
    assert r.returncode == 2 and "is a directory" in r.stderr
