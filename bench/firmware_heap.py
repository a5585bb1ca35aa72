# Heap of the stall firmware core under MicroPython 1.27 (WebAssembly, 32-bit like the ESP32 and RP2040): after boot, and after 10,000 simulated sessions.
#
# The core is StallCore (connector machine, session books, journal, outbox,
# commands) on an in-memory fs (stall.memfs.MemFs) with an in-memory
# transport: every message the outbox would send is taken, and the bridge's
# signed ack for it is handed back, as over MQTT. Each session: the stall is
# empty 20 s, a car plugs in, charges 60 s at 16 A, lingers 7 minutes (idle
# fee, ticks), leaves; a signed site occupancy report arrives once per
# session. The core is driven every 10 to 15 s of its clock (sample + tick).
#
# Measuring: gc in this VM frees memory only between runPython calls (the
# call's own C stack keeps everything it touched alive), so the work runs in
# one call, gc.collect() in the next, and gc.mem_alloc() is read in a third.
# Modules are loaded as .mpy (host_tools.build): the heap they take is shown
# apart, because a stall image freezes them (manifest.py) and their bytecode
# then stays in flash. The MemFs files stand in for flash and are shown apart
# too. "core" = what the firmware itself keeps on the heap.
#
# Frozen build: what the modules still take when frozen (module objects,
# dicts, function and class objects, tables built at import) is measured
# the frozen-equivalent way of bench/mp_heap.py, for exactly the modules
# importing stall.core loads, and added to the core's after-boot figure:
# that sum is the issue's "after boot" figure for a stall image.
import json
import os
import shutil
import subprocess
import tempfile

from bench import mp_heap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPVM = os.path.join(REPO, "tests", "mpvm")
SESSIONS = 10000
BATCH = 250
# The firmware issue's target: heap in use after boot, and no growth.
TARGET = 40 * 1024
# What the core loads: the driver below also imports stall.config (which
# stall.core imports anyway), protocol.wire and canonjson (likewise) and
# stall.memfs, the in-memory stand-in for the board's flash fs (a stall
# uses protocol.journal.OsFs), so it is not counted.
CORE_ENTRY = "stall.core"
# For context, not the target's figure: what a board loads by the end of
# boot. main.py's imports, stall.board's (stall.modbus and stall.pilot,
# named because only board imports them), the MQTT link App.boot imports,
# the command table Console() imports and console_io, which the console
# task imports when it starts. main and stall.board import `machine` and
# cannot load in the VM: run.mjs reports them under "left_out".
APP_ENTRY = "boot,main,stall.app,stall.board,stall.modbus,stall.pilot,stall.console_cmds,stall.console_io,stall.mqtt_link,stall.ntp"

DRIVER = r'''
import gc
import sys
sys.path.insert(0, "/firmware")
from protocol import wire, canonjson
from stall import config
from stall.core import StallCore
from stall.memfs import MemFs

KEY = b"demo-station-key-0123456789abcdef"
SITE_KEY = b"demo-site-key-01-0123456789abcdef"
UNIX0 = 1763830800
S = {}


def files():
    fs = S.get("fs")
    if fs is None:
        return 0
    n = 0
    for k in fs.files:
        n += len(fs.files[k])
    return n


def boot():
    cfg = config.validate({"site": "lot-a", "station": "st-01", "station_key": "%s" % KEY.hex(), "site_key": SITE_KEY.hex(),
                           "tariff": {"id": "T1", "version": 1, "rate": 50, "grace_s": 300,
                                      "tiers": [{"min_occupancy_pct": 50, "rate": 50}, {"min_occupancy_pct": 100, "rate": 100}]}})
    fs = MemFs()
    core = StallCore(cfg, fs, "")
    core.start(0)
    core.wall(UNIX0 * 1000, 0)
    S["fs"] = fs
    S["core"] = core
    S["now"] = 0
    S["wh"] = 0
    S["mj"] = 0
    S["ackn"] = 0
    S["occn"] = 0
    S["sessions"] = 0
    S["sent"] = 0
    pump()


def pump():
    core = S["core"]
    now = S["now"]
    ob = core.outbox
    ns = []
    for e in ob.due(now):
        if ob.payload(e) is not None:
            ns.append(ob.seq(e))
        ob.mark_sent(e, now)
    core.state_dirty = False  # published (retained state)
    if ns:
        S["sent"] += len(ns)
        S["ackn"] += 1
        ack = wire.encode(KEY, "ack", "st-01", S["ackn"], UNIX0 + now // 1000, {"acks": ns})
        core.on_message(core.t_ack, ack, now)


def run(seconds, step_s, pilot, ma):
    core = S["core"]
    end = S["now"] + seconds * 1000
    while S["now"] < end:
        S["now"] += step_s * 1000
        S["mj"] += ma * 230 * step_s
        S["wh"] += S["mj"] // 3600000
        S["mj"] %= 3600000
        core.sample(S["now"], pilot, ma, S["wh"], False)
        core.tick(S["now"])
        pump()


def occupancy(pct):
    core = S["core"]
    S["occn"] += 1
    msg = wire.encode(SITE_KEY, "cmd", "lot-a", S["occn"], UNIX0 + S["now"] // 1000, {"op": "occupancy", "occupancy": pct})
    core.on_message(core.t_occupancy, msg, S["now"])


def sessions(n):
    for i in range(n):
        run(20, 10, "A", 0)
        occupancy((S["sessions"] * 37) % 101)
        run(2, 1, "B", 0)
        run(60, 10, "C", 16000)
        run(420, 15, "C", 0)
        run(15, 1, "A", 0)
        S["sessions"] += 1
    return S["sessions"]


def state():
    core = S["core"]
    return canonjson.dumps({"sessions": S["sessions"], "outbox": len(core.outbox), "journal": core.j.size, "files": files(),
                            "messages": S["sent"], "rejected": core.rejected, "counts": core.counts}).decode()
'''

JS = r'''
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
const [mpyDir, driverPath, total, batch] = [process.argv[1], process.argv[2], +process.argv[3], +process.argv[4]];
function list(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const full = join(dir, name);
    if (statSync(full).isDirectory()) out.push(...list(full));
    else if (name.endsWith(".mpy")) out.push(relative(mpyDir, full).split(sep).join("/"));
  }
  return out;
}
const mp = await loadMicroPython({ heapsize: 4 * 1024 * 1024, stdout: (l) => process.stderr.write(l + "\n"), stderr: (l) => process.stderr.write(l + "\n"), linebuffer: true });
const made = new Set(["/"]);
function mkdirs(p) { let cur = ""; for (const part of p.split("/").filter(Boolean)) { cur += "/" + part; if (!made.has(cur)) { try { mp.FS.mkdir(cur); } catch {} made.add(cur); } } }
for (const rel of list(mpyDir)) { const vm = "/" + rel; mkdirs(vm.slice(0, vm.lastIndexOf("/"))); mp.FS.writeFile(vm, readFileSync(join(mpyDir, rel))); }
mp.FS.writeFile("/heapbench.py", readFileSync(driverPath));
function mem() { mp.runPython("import gc\ngc.collect()"); mp.runPython("import gc\ngc.collect()"); return mp.pyimport("gc").mem_alloc(); }
const out = {};
out.empty = mem();
mp.runPython("import os\nos.chdir('/')\nimport sys\nsys.path.insert(0, '/firmware')\nimport heapbench");
out.imported = mem();
const hb = mp.pyimport("heapbench");
hb.boot();
out.boot = mem();
out.boot_files = hb.files();
out.series = [];
let t0 = Date.now();
let done = 0;
while (done < total) { done = hb.sessions(Math.min(batch, total - done)); out.series.push([done, mem(), hb.files()]); }
out.seconds = (Date.now() - t0) / 1000;
out.state = JSON.parse(hb.state());
process.stdout.write(JSON.stringify(out) + "\n");
'''


def measure(sessions=SESSIONS, batch=BATCH):
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: run `make setup`")
    from host_tools.build import compile_tree

    out = os.path.join(REPO, "build", "mpy-heap")
    compile_tree(out)
    with tempfile.TemporaryDirectory() as tmp:
        drv = os.path.join(tmp, "heapbench.py")
        with open(drv, "w") as f:
            f.write(DRIVER)
        # ESM code on the command line resolves packages from the working
        # directory: tests/mpvm holds the VM's node_modules.
        proc = subprocess.run([node, "--input-type=module", "-e", JS, out, drv, str(sessions), str(batch)], cwd=MPVM, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError("the MicroPython VM failed (%d): %s" % (proc.returncode, proc.stderr.strip()[-2000:]))
    return json.loads(proc.stdout)


def measure_frozen():
    """Frozen-equivalent module heap: (the core's modules, all of protocol/, the application's as far as they load here)."""
    res = (
        mp_heap.measure(frozen=True, entry=CORE_ENTRY, path="firmware"),
        mp_heap.measure(frozen=True),
        mp_heap.measure(frozen=True, entry=APP_ENTRY, path="firmware"),
    )
    for r in res:
        bad = {m: v for m, v in r["modules"].items() if not isinstance(v, int)}
        if bad:
            raise RuntimeError("frozen-equivalent import failed: %s" % bad)
    return res


def _n(v):
    return "{:,}".format(v)


def report_frozen(core_state, fz):
    """The after-boot figure of a frozen build: the core's modules (frozen-equivalent) + the core's own state."""
    core, proto, app = fz
    p_part = sum(v for m, v in core["modules"].items() if m.split(".")[0] == "protocol")
    s_part = core["total"] - p_part
    n_proto = len([m for m in core["order"] if m.split(".")[0] == "protocol"])
    missing = sorted(set(proto["order"]) - set(core["order"]))
    print("Frozen build (firmware/manifest.py): frozen-equivalent heap of the modules importing %s loads, in dependency order:" % CORE_ENTRY)
    mp_heap.report([("frozen", core)], "the core's modules")
    print("  protocol/ part %s bytes (%d of its %d modules; not on the core's path: %s), stall/ part %s bytes"
          % (_n(p_part), n_proto, len(proto["order"]), ", ".join(missing) or "none", _n(s_part)))
    total = core["total"] + core_state
    verdict = "within" if total <= TARGET else "OVER"
    print("  after boot on a frozen build: modules %s + core %s = %s bytes: %s the %s-byte (40 KB) target"
          % (_n(core["total"]), _n(core_state), _n(total), verdict, _n(TARGET)))
    print("  with all of protocol/ frozen (%s bytes) instead of the core's part: %s + %s + %s = %s bytes"
          % (_n(proto["total"]), _n(proto["total"]), _n(s_part), _n(core_state), _n(proto["total"] + s_part + core_state)))
    left = "; ".join("%s (%s)" % (m, why) for m, why in sorted(app["left_out"].items())) or "none"
    print("  context, not the target's figure: the whole application's modules at the end of a board's boot, as far as")
    print("  they load here, %s bytes frozen (%d modules); left out: %s; the app's own state is not measured"
          % (_n(app["total"]), len(app["order"]), left))


def main(sessions=SESSIONS):
    fz = measure_frozen()
    r = measure(sessions)
    mods = r["imported"] - r["empty"]
    core_boot = r["boot"] - r["imported"]
    print("MicroPython 1.27 (wasm, 32-bit) GC heap, modules loaded as .mpy, gc.collect() between runPython calls:")
    print("  interpreter alone           %7d bytes" % r["empty"])
    print("  + protocol/ and stall/ code %7d bytes (frozen into an image with manifest.py: 0, the bytecode stays in flash)" % mods)
    print("  + StallCore booted          %7d bytes  <- heap after boot (of which %d bytes are the MemFs journal files, flash on a board)" % (core_boot, r["boot_files"]))
    first = None
    for done, mem, files in r["series"]:
        core = mem - r["imported"]
        if first is None:
            first = core
        if done in (r["series"][0][0], 1000, 2500, 5000, 7500) or done == r["series"][-1][0]:
            print("  after %6d sessions       %7d bytes  (MemFs files %d bytes, core without them %d)" % (done, core, files, core - files))
    last = r["series"][-1]
    tail = [m - r["imported"] - f for _d, m, f in r["series"][len(r["series"]) // 2:]]
    print("  core without the MemFs files: boot %d, after %d sessions %d, min..max over the second half %d..%d bytes"
          % (core_boot - r["boot_files"], last[0], last[1] - r["imported"] - last[2], min(tail), max(tail)))
    st = r["state"]
    print("  %d sessions, %d messages sent and acked, outbox %d, journal %d bytes, refused %s; %.1f s in the VM (%.0f sessions/s)"
          % (st["sessions"], st["messages"], st["outbox"], st["journal"], st["rejected"] or "none", r["seconds"], st["sessions"] / max(r["seconds"], 1e-9)))
    report_frozen(core_boot - r["boot_files"], fz)


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]) if len(sys.argv) > 1 else SESSIONS)
