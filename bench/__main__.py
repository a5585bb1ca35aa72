# Runs every benchmark in BENCHMARKS in turn; one that crashes is reported and the rest still run.
import importlib
import sys
import time
import traceback

# Each module defines main() that prints its own numbers.
BENCHMARKS = (
    "bench.fee_engine",
    "bench.mp_heap",
)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    chosen = [b for b in BENCHMARKS if not argv or b.rsplit(".", 1)[1] in argv]
    failed = []
    for name in chosen:
        print("== %s" % name, flush=True)
        t0 = time.perf_counter()
        try:
            importlib.import_module(name).main()
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
