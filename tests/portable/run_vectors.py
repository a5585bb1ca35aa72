# Golden-vector runner: runs tests/vectors/<m>.json through vec_<m>.run() under whichever interpreter imports it.
#
# Portable on purpose (CPython and MicroPython): no os.path, no typing, no
# reliance on dict order. Results map "<module>/<case name>" to the output;
# the host compares them as canonical JSON, so key order never matters.
#
#   run_all(vec_dir)  -> {"fee/example 1": {...}, ...}
#   heap(names)       -> bytes of GC heap each import costs (MicroPython only)
#
# A case that raises does not stop the run: its output becomes
# {"__exception__": "ValueError: ..."} so the comparison shows it. A vec module
# that fails to import is reported once under "<module>/*".
import json
import os
import sys

EXC_KEY = "__exception__"


def _dirname(path):
    i = path.rfind("/")
    if i < 0:
        return "."
    return path[:i] if i else "/"


def _join(a, b):
    return a + b if a.endswith("/") else a + "/" + b


_HERE = _dirname(__file__.replace("\\", "/"))
DEFAULT_VECTORS = _join(_dirname(_HERE), "vectors")

if _HERE not in sys.path:
    sys.path.insert(0, _HERE)  # vec_<m> modules live beside this file


def _describe(e):
    msg = str(e)
    return type(e).__name__ + (": " + msg if msg else "")


def vector_modules(vec_dir=None):
    """Module names that have a vectors file, sorted."""
    names = [n[:-5] for n in os.listdir(vec_dir or DEFAULT_VECTORS) if n.endswith(".json") and not n.startswith(".")]
    names.sort()
    return names


def load(module, vec_dir=None):
    with open(_join(vec_dir or DEFAULT_VECTORS, module + ".json")) as f:
        return json.load(f)


def run_module(module, doc, results):
    """Run one vectors document; add its outputs to results."""
    try:
        vec = __import__("vec_" + module)
    except Exception as e:  # a missing or broken vec module is a result, not a crash
        results[module + "/*"] = {EXC_KEY: _describe(e)}
        return
    for case in doc["cases"]:
        key = module + "/" + case["name"]
        while key in results:  # duplicate names stay visible instead of overwriting
            key += "#dup"
        try:
            results[key] = vec.run(case["input"])
        except Exception as e:
            results[key] = {EXC_KEY: _describe(e)}


def run_all(vec_dir=None, only=None):
    """Outputs of every case of every vectors file (or only the named modules)."""
    results = {}
    for module in vector_modules(vec_dir):
        if only and module not in only:
            continue
        try:
            doc = load(module, vec_dir)
        except Exception as e:
            results[module + "/*"] = {EXC_KEY: "cannot load vectors: " + _describe(e)}
            continue
        run_module(module, doc, results)
    return results


def run_json(vec_dir=None, only=""):
    """run_all() as one JSON string; `only` is a comma-separated module list (easy to pass from JS)."""
    names = [n for n in only.split(",") if n] if only else None
    return json.dumps(run_all(vec_dir, names))


STDLIB_PRELOAD = ("array", "binascii", "hashlib", "json", "micropython", "os", "struct", "time")


def heap(names):
    """GC heap bytes held after importing each module in turn (gc.collect() around each).

    Returns None where gc.mem_alloc() does not exist (CPython). A module that
    fails to import is reported as the string "error: ...".
    """
    import gc

    if not hasattr(gc, "mem_alloc"):
        return None
    # The standard modules protocol/ uses are C built-ins in a board's flash,
    # but this VM builds some on first import (binascii takes ~7 KB): import
    # them first so the figures are protocol/'s own.
    for std in STDLIB_PRELOAD:
        try:
            __import__(std)
        except ImportError:
            pass
    gc.collect()
    before = gc.mem_alloc()
    modules = {}
    for name in names:
        gc.collect()
        a = gc.mem_alloc()
        try:
            __import__(name)
        except Exception as e:
            modules[name] = "error: " + _describe(e)
            continue
        gc.collect()
        modules[name] = gc.mem_alloc() - a
    gc.collect()
    after = gc.mem_alloc()
    return {"before": before, "after": after, "total": after - before, "modules": modules}


def heap_json(names_csv):
    return json.dumps(heap([n for n in names_csv.split(",") if n]))


def main(argv):
    if len(argv) > 1 and argv[1] == "--heap":
        print(heap_json(",".join(argv[2:])))
    else:
        print(run_json(argv[1] if len(argv) > 1 else None))


if __name__ == "__main__":
    main(sys.argv)
