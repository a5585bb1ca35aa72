# Device type check: mypy over protocol/ and firmware/ against each port's MicroPython stubs.
#
# The stubs (micropython-<port>-stubs plus the MicroPython-trimmed stdlib they
# pull in) are installed by `make setup` into build/stubs/<port>/. Each port is
# checked in its own mypy run, with that folder as the typeshed, so code that
# uses something only CPython has (datetime, hmac.compare_digest, ...) fails.
# Extra arguments go to mypy as they are, e.g. `-- --check-untyped-defs`.
import argparse
import os
import subprocess
import sys

from host_tools.build import DEVICE_ROOTS, REPO, device_sources

PORTS = ("esp32", "rp2")
STUBS = os.path.join("build", "stubs")
CONFIG = "mypy.ini"

# contributing.md's shim `try: from micropython import const / except
# ImportError: def const(x): return x` cannot match the stub's generic,
# positional-only signature without typing imports, which device code may not
# have. That one message, on a line defining const, is dropped; nothing else is.
_SHIM_MSG = "All conditional function variants must have identical signatures"


def files_for_port(port, files):
    # A file under a folder named after another port (firmware/rp2/...) is that port's alone.
    others = [p for p in PORTS if p != port]
    return [f for f in files if not any(seg in others for seg in f.split("/")[:-1])]


def _is_const_shim(path, lineno):
    try:
        with open(os.path.join(REPO, path)) as fh:
            lines = fh.read().splitlines()
        return lines[lineno - 1].strip().startswith("def const(")
    except (OSError, IndexError):
        return False


def filter_output(text, stubs_dir):
    """Keep mypy's messages about our files; drop stub-internal noise and the const shim.

    Returns a list of (message, notes) with notes the indented lines that follow it.
    """
    kept = []
    drop_notes_at = None
    for line in text.splitlines():
        parts = line.split(":", 3)
        if len(parts) < 4 or not parts[1].strip().isdigit():
            continue  # summary lines: we count for ourselves
        path, lineno, kind = parts[0], int(parts[1]), parts[2].strip()
        norm = path.replace("\\", "/")
        if norm.startswith(stubs_dir.replace(os.sep, "/")):
            continue  # the stubs' own type errors are not ours to fix
        if kind == "note":
            if drop_notes_at == (path, lineno):
                continue
            if kept:
                kept[-1][1].append(line)
            continue
        drop_notes_at = None
        if _SHIM_MSG in parts[3] and _is_const_shim(path, lineno):
            drop_notes_at = (path, lineno)
            continue
        kept.append((line, []))
    return kept


def check_port(port, files, extra=(), stubs_root=STUBS):
    """Run mypy for one port; returns (errors, problem) where problem explains a missing set-up."""
    stubs = os.path.join(stubs_root, port)
    if not os.path.isfile(os.path.join(REPO, stubs, "stdlib", "VERSIONS")):
        return [], "MicroPython stubs for %s missing in %s: run `make setup`" % (port, stubs)
    env = dict(os.environ)
    env["MYPYPATH"] = stubs
    cmd = [
        sys.executable, "-m", "mypy",
        "--config-file", CONFIG,
        "--custom-typeshed-dir", stubs,
        "--cache-dir", os.path.join("build", "mypy_cache", port),
        "--no-error-summary", "--no-pretty", "--no-color-output",
    ] + list(extra) + list(files)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    errors = filter_output(proc.stdout, stubs)
    for line in proc.stderr.strip().splitlines():
        print("typecheck: mypy [%s]: %s" % (port, line), file=sys.stderr)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not proc.stdout.strip()):
        # 2 is mypy's own failure (bad flag, crash): show everything.
        return errors, "mypy failed (exit %d): %s" % (proc.returncode, (proc.stderr or proc.stdout).strip())
    return errors, None


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m host_tools.typecheck", description=__doc__)
    p.add_argument("--port", action="append", choices=PORTS, help="check only this port (repeatable; default all)")
    args, extra = p.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    files = device_sources(DEVICE_ROOTS)
    if not files:
        print("typecheck: no device files under " + ", ".join(DEVICE_ROOTS))
        return 0
    ports = args.port or list(PORTS)
    by_message = {}  # message -> (notes, [ports]); one report for a message every port shares
    order = []
    problems = []
    counted = {}
    for port in ports:
        pf = files_for_port(port, files)
        errors, problem = check_port(port, pf, extra)
        counted[port] = len(pf)
        if problem:
            problems.append(problem)
        for msg, notes in errors:
            if msg not in by_message:
                by_message[msg] = (notes, [])
                order.append(msg)
            by_message[msg][1].append(port)
    n_err = 0
    for msg in order:
        notes, where = by_message[msg]
        tag = "" if len(where) == len(ports) else "  [" + ", ".join(where) + " only]"
        print(msg + tag)
        for note in notes:
            print(note)
        if ": error:" in msg:
            n_err += 1
    for problem in problems:
        print("typecheck: " + problem, file=sys.stderr)
    print(
        "typecheck: %d error(s) in %s against MicroPython stubs (%s)"
        % (n_err, ", ".join(DEVICE_ROOTS), ", ".join("%s: %d files" % (pt, counted[pt]) for pt in ports))
    )
    return 1 if (n_err or problems) else 0


if __name__ == "__main__":
    sys.exit(main())
