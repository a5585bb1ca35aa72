# MicroPython heap cost of importing protocol/: gc.mem_alloc() before and after each import, in the WebAssembly VM.
#
# The VM is 32-bit like the ESP32 and RP2040, so object sizes match a stall's.
# Three figures per module (tests/mpvm/run.mjs --heap does the measuring,
# tests/portable/run_vectors.py says how):
#   .py     imported from source, compiled on the device
#   .mpy    imported as mpy-cross output (host_tools.build): a stall without
#           frozen modules; bytecode, constants and qstrs are on the heap
#   frozen  what the module costs frozen into the firmware image
#           (firmware/manifest.py): its bytecode, constants and qstrs stay in
#           flash, only what its top-level code creates is on the heap. This
#           VM cannot freeze, so the source is compiled first and only
#           executing it into a fresh module is measured.
# gc.collect() runs in its own VM call before each reading, so the numbers
# are what stays resident, not the parse or load peak. measure(entry=...)
# takes what a path such as the firmware core loads instead of all of
# protocol/ (bench/firmware_heap.py uses it).
import json
import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_MJS = os.path.join(REPO, "tests", "mpvm", "run.mjs")
# The target for the frozen figure of all of protocol/.
TARGET = 16 * 1024


def measure(mpy_dir=None, frozen=False, entry=None, path=None):
    """run.mjs --heap's result; entry (comma-separated modules) measures what importing them loads, with the
    repository folders in path (comma-separated) on the VM's sys.path, rather than all of protocol/."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: run `make setup`")
    argv = [node, RUN_MJS, "--heap"] + (["--mpy", mpy_dir] if mpy_dir else []) + (["--frozen"] if frozen else [])
    argv += (["--entry", entry] if entry else []) + (["--path", path] if path else [])
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError("%s exited %d: %s" % (" ".join(argv[1:]), proc.returncode, proc.stderr.strip()))
    return json.loads(proc.stdout)


def _cell(v):
    return "%10s" % ("{:,}".format(v) if isinstance(v, int) else v)


def report(columns, total_label="all of protocol/"):
    """columns: [(title, run.mjs result)]; one row per module, in the order measured."""
    order = columns[0][1]["order"]
    print("  %-22s %s" % ("bytes", " ".join("%10s" % t for t, _ in columns)))
    for name in order:
        print("  %-22s %s" % (name, " ".join(_cell(h["modules"].get(name, "-")) for _, h in columns)))
    print("  %-22s %s" % (total_label, " ".join(_cell(h["total"]) for _, h in columns)))


def main():
    from host_tools.build import compile_tree

    out = os.path.join(REPO, "build", "mpy-bench")
    compile_tree(out)
    py, mpy, frozen = measure(), measure(out), measure(frozen=True)
    print("MicroPython 1.27 (wasm) heap taken by importing protocol/, per module in dependency order:")
    report([(".py", py), (".mpy", mpy), ("frozen", frozen)])
    print("  .py: compiled from source on the device; .mpy: mpy-cross output, as a stall without frozen modules loads it;")
    print("  frozen: only what the top-level code creates (bytecode, constants and qstrs in flash).")
    cal = frozen["calibration"]
    print(
        "  frozen method check: an empty module %s bytes, 50 empty functions %s bytes (50 function objects of 16 bytes + dict)"
        % ("{:,}".format(cal["empty_module"]), "{:,}".format(cal["50_functions"]))
    )
    verdict = "within" if frozen["total"] <= TARGET else "OVER"
    print("  frozen total %s bytes: %s the %s-byte target" % ("{:,}".format(frozen["total"]), verdict, "{:,}".format(TARGET)))


if __name__ == "__main__":
    main()
