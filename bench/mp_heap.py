# MicroPython heap cost of importing protocol/: gc.mem_alloc() before and after each import, in the WebAssembly VM.
#
# The VM is 32-bit like the ESP32 and RP2040, so object sizes match a stall's;
# modules are compiled from source on import, and gc.collect() runs before
# each reading, so the numbers are what stays resident, not the parse peak.
import json
import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_MJS = os.path.join(REPO, "tests", "mpvm", "run.mjs")


def measure(mpy_dir=None):
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: run `make setup`")
    argv = [node, RUN_MJS, "--heap"] + (["--mpy", mpy_dir] if mpy_dir else [])
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError("run.mjs --heap exited %d: %s" % (proc.returncode, proc.stderr.strip()))
    return json.loads(proc.stdout)


def report(title, h):
    print(title)
    for name in sorted(h["modules"], key=lambda n: (n != "protocol", n)):
        v = h["modules"][name]
        print("  %-24s %s" % (name, ("%8d bytes" % v) if isinstance(v, int) else v))
    print("  %-24s %8d bytes (mem_alloc %d -> %d)" % ("all of protocol/", h["total"], h["before"], h["after"]))


def main():
    report("MicroPython 1.27 (wasm) heap, importing protocol/ from .py source:", measure())
    from host_tools.build import compile_tree

    out = os.path.join(REPO, "build", "mpy-bench")
    compile_tree(out)
    report("MicroPython 1.27 (wasm) heap, importing protocol/ as .mpy (mpy-cross):", measure(out))
    print("  (frozen into the firmware image with manifest.py, bytecode stays in flash and is not counted on the heap)")


if __name__ == "__main__":
    main()
