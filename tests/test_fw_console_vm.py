# The console core under MicroPython 1.27 (WebAssembly VM): the same session, lines and PIN checks give byte-identical output to CPython.
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PKG = os.path.join(HERE, "mpvm", "node_modules", "@micropython", "micropython-webassembly-pyscript", "micropython.mjs")

# Runs on both interpreters: a provisioned App (not started), a scripted
# session driven by hand, then every console line through feed()/step()/take().
SCENARIO = r'''
from binascii import hexlify
import json
from stall import config, console_pin
from stall.app import App
from stall.clock import MonoClock, VirtualTicks
from stall.hw import SimHardware
from stall.memfs import MemFs

ticks = VirtualTicks()
clock = MonoClock(ticks)
cfg = config.validate({
    "site": "lot-a", "station": "st-01",
    "station_key": hexlify(b"demo-station-key-0123456789abcdef").decode(),
    "site_key": hexlify(b"demo-site-key-01-0123456789abcdef").decode(),
    "pin_hash": console_pin.hash_pin("246810", b"0123456789abcdef", 1000),
    "tariff": {"id": "T0", "version": 1, "rate": 50, "grace_s": 300},
})
hw = SimHardware()
app = App(cfg, MemFs(), hw=hw, clock=clock, link=False)
app.boot()
core = app.core
for pilot, ma, secs in (("B", 0, 5), ("C", 16000, 600), ("C", 0, 900)):
    hw.pilot = pilot
    hw.draw_ma = ma
    for _ in range(secs):
        ticks.advance(1000)
        now = clock.now_ms()
        hw.poll(now)
        core.sample(now, hw.pilot, hw.current_ma, hw.energy_wh, hw.fault)
        hw.set_relay(core.relay)
        core.tick(now)
        app.console.watch(now)
con = app.console
con.board = False
con.start()
out = [con.take()]
for line in LINES:
    data = (line + "\r").encode()
    while data:
        k = con.feed(data)
        data = data[k:]
        while con.busy:
            con.step()
    out.append(con.take())
print("RESULT " + json.dumps({"out": out, "fails": con.lock.fails, "unlocked": con.unlocked()}))
'''

LINES = [
    "help", "status", "session", "events 5", "outbox", "net", "time", "config list", "config get sample_ms",
    "tariff", "selftest", "log", "-j status", "-j session", "reboot", "pin 000000", "pin 246810",
    "config set heartbeat_s 30", 'config set wifi_ssid "My Net"', "config get wifi_ssid", "pause x", "resume",
    "lock", "x" * 300, "pin 1", "pin 1111", "pin 2222", "pin 3333", "pin 4444", "-j reboot --pin 246810", "pin",
]

RUNNER = r"""
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { pathToFileURL } from "node:url";
const [repo, pkg, script] = process.argv.slice(2);
const { loadMicroPython } = await import(pathToFileURL(pkg).href);
const mp = await loadMicroPython({
  stdout: (l) => process.stdout.write(l + "\n"),
  stderr: (l) => process.stderr.write(l + "\n"),
  linebuffer: true,
});
function walk(dir) {
  let out = [];
  for (const n of readdirSync(dir).sort()) {
    if (n.startsWith(".") || n === "__pycache__") continue;
    const f = join(dir, n);
    if (statSync(f).isDirectory()) out = out.concat(walk(f));
    else if (n.endsWith(".py")) out.push(relative(repo, f).split(sep).join("/"));
  }
  return out;
}
const made = new Set();
for (const rel of [...walk(join(repo, "protocol")), ...walk(join(repo, "firmware"))]) {
  let cur = "";
  for (const p of rel.split("/").slice(0, -1)) {
    cur += "/" + p;
    if (!made.has(cur)) { try { mp.FS.mkdir(cur); } catch {} made.add(cur); }
  }
  mp.FS.writeFile("/" + rel, readFileSync(join(repo, rel)));
}
try {
  mp.runPython("import sys, os\nsys.path.insert(0, '/firmware')\nsys.path.insert(0, '/')\nos.chdir('/')\n" + readFileSync(script, "utf8"));
} catch (e) {
  process.stderr.write("MicroPython raised: " + (e && e.message ? e.message : String(e)) + "\n");
  process.exit(1);
}
"""


def _result(text):
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise AssertionError("no RESULT line in:\n" + text[-2000:])


def test_console_core_gives_the_same_bytes_under_micropython(tmp_path):
    node = shutil.which("node")
    if node is None or not os.path.exists(PKG):
        pytest.fail("node or the MicroPython VM package is missing: run `make setup`")
    script = tmp_path / "scenario.py"
    script.write_text("LINES = " + json.dumps(LINES) + "\n" + SCENARIO)
    runner = tmp_path / "run.mjs"
    runner.write_text(RUNNER)
    mp = subprocess.run([node, str(runner), REPO, PKG, str(script)], capture_output=True, text=True, timeout=120)
    assert mp.returncode == 0, mp.stderr[-3000:]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "firmware")]))
    cp = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert cp.returncode == 0, cp.stderr[-3000:]
    got_mp, got_cp = _result(mp.stdout), _result(cp.stdout)
    assert got_mp == got_cp
    out = got_mp["out"]
    assert len(out) == len(LINES) + 1
    text = "".join(out)
    assert "Traceback" not in text and "error internal" not in text
    # The PIN hash made on a PC verifies on MicroPython; the wrong ones count.
    assert "unlocked for 5 minutes" in out[LINES.index("pin 246810") + 1]
    assert "error pin_wrong" in out[LINES.index("pin 000000") + 1]
    assert '"action":"reboot"' in out[LINES.index("-j reboot --pin 246810") + 1]  # 4 wrong: no lockout yet
    assert got_mp["fails"] == 0 and got_mp["unlocked"] is False
