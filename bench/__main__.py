# Runs every benchmark in BENCHMARKS in turn; one that crashes is reported and the rest still run.
#
#   python -m bench                     everything, full size (make bench)
#   python -m bench --quick             everything, small sizes (a few minutes; numbers only indicative)
#   python -m bench recovery fee_engine only these (the last part of the module name)
import importlib
import os
import sys
import time
import traceback

# Each module defines main() that prints its own numbers.
BENCHMARKS = (
    "bench.fee_engine",
    "bench.mp_heap",
    "bench.bridge_ingest",
    "bench.bridge_latency",
    "bench.mpy_size",
    "bench.firmware_heap",
    "bench.sim_capacity",
    "bench.recovery",
)

# --quick: (args, kwargs) for main() of the benchmarks that take a size; the rest run as they are.
QUICK = {
    "bench.bridge_ingest": ((["--messages", "5000", "--db", "sqlite"],), {}),
    "bench.bridge_latency": ((["--seconds", "10", "--db", "sqlite"],), {}),
    "bench.firmware_heap": ((), {"sessions": 1000}),
    "bench.sim_capacity": ((["--stalls", "300", "--seconds", "15"],), {}),
    "bench.recovery": ((["--quick"],), {}),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv or os.environ.get("OVERSTAY_BENCH_QUICK") == "1"
    argv = [a for a in argv if a != "--quick"]
    chosen = [b for b in BENCHMARKS if not argv or b.rsplit(".", 1)[1] in argv]
    failed = []
    for name in chosen:
        print("== %s%s" % (name, " (quick)" if quick and name in QUICK else ""), flush=True)
        t0 = time.perf_counter()
        try:
            args, kwargs = QUICK.get(name, ((), {})) if quick else ((), {})
            importlib.import_module(name).main(*args, **kwargs)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print("   (%.1f s)" % (time.perf_counter() - t0), flush=True)
    if failed:
        print("bench: failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
