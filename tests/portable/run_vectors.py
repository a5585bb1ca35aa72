# Golden-vector runner: runs tests/vectors/<m>.json through vec_<m>.run() under whichever interpreter imports it.
#
# Portable on purpose (CPython and MicroPython): no os.path, no typing, no
# reliance on dict order. Results map "<module>/<case name>" to the output;
# the host compares them as canonical JSON, so key order never matters.
#
#   run_all(vec_dir)  -> {"fee/example 1": {...}, ...}
#   heap(names)       -> bytes of GC heap each import costs (MicroPython only;
#                        heap_setup/prepare/load/release are its steps,
#                        heap_loads finds which modules a path loads)
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

# Heap measurement (MicroPython only), in steps: heap_setup(), then for each
# module heap_prepare(), a reading, heap_load(), a reading, heap_release(); a
# reading is gc.collect() then gc.mem_alloc(). Each step is a function of its
# own so that a driver can run it in a VM call of its own: the WebAssembly
# VM's gc frees nothing the running call has touched (its stack keeps it
# alive), so tests/mpvm/run.mjs calls every step, gc.collect() and
# gc.mem_alloc() separately. heap() runs the same steps in one call, for ports
# whose gc has no such problem (unix port, a board).
#
# How a module is loaded:
#   "import"  __import__, as on a stall without frozen modules: the .py
#             (compiled on the device) or .mpy the file system holds, so its
#             bytecode, constants and qstrs land on the heap.
#   "frozen"  what importing it costs when it is frozen into the firmware
#             image. Its bytecode, constant objects and qstrs then live in
#             flash; only what its top-level code creates when it runs takes
#             heap: the module and its globals dict, the function objects
#             `def` makes, classes and their dicts, tables built at import.
#             The VM cannot freeze, so heap_prepare() compiles the source
#             with compile() before the first reading (the code object, its
#             bytecode, constants and qstrs stand for the flash part and are
#             never counted), and heap_load() imports an empty stub module of
#             the same name, so the VM's own import makes the module object
#             and dict and puts it in sys.modules and on its package as a
#             frozen import does, then exec()s the code into the stub's
#             globals. The code object stays alive across both readings and
#             heap_release() drops it after the second; the functions exec
#             made keep their own bytecode alive anyway, and it was all there
#             before the first reading.

# Where heap_setup() writes the stubs: a board's frozen modules sit under
# ".frozen" on sys.path, so a package's __path__ string (heap) is as long.
HEAP_STUBS = "/.frozen"

# Known shapes, measured the "frozen" way after protocol/ (heap_setup adds
# them to the order): what a bare module costs, and 50 empty functions (about
# 50 function objects, 16 bytes each on 32 bits, plus the globals dict grown
# to hold them). They show the method counts run-time objects, not bytecode.
HEAP_CALIBRATION = (
    ("_calib_empty_module", ""),
    ("_calib_50_functions", "".join(["def f%d():\n    pass\n" % i for i in range(50)])),
)

_HEAP = {"how": "import", "src": "/", "code": None}
_HEAP_STUB = {}  # module name -> its stub's path (what the VM's import takes as __file__)


def _intern(s):
    # Turning a str into an attribute name makes it a qstr: done before the
    # first reading so the qstr pool does not grow inside the window. Frozen,
    # module names and file names are qstrs in flash.
    getattr(sys, s, None)


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _module_path(roots, name):
    """The source of module `name`: the first of the roots (comma-separated, as on sys.path) that holds it.

    A name no root holds (the calibration modules) gets a path under the first root.
    """
    rel = name.replace(".", "/")
    for root in roots.split(","):
        for path in (_join(_join(root, rel), "__init__.py"), _join(root, rel) + ".py"):
            if _exists(path):
                return path
    return _join(roots.split(",")[0], rel) + ".py"


def _write_stub(name, package):
    path = HEAP_STUBS
    for part in name.split("."):
        try:
            os.mkdir(path)
        except OSError:
            pass  # already there
        path = _join(path, part)
    if package:
        try:
            os.mkdir(path)
        except OSError:
            pass
        path = _join(path, "__init__")
    with open(path + ".py", "w"):
        pass
    return path + ".py"


def heap_setup(how, names_csv, src_root="/", preload_csv=""):
    """Get ready to measure `names` (comma-separated) loaded `how`; returns the order to measure them in (comma-separated).

    src_root: where the sources are, comma-separated roots searched in turn
    (as on sys.path: "/,/firmware" for protocol/ and the stall package).
    Imports the standard modules protocol/ uses first, and those in
    preload_csv (what heap_loads() found the measured modules import): on a
    board they are C built-ins or the port's own frozen modules, but this VM
    builds some on first import (binascii takes ~7 KB), and a module
    imported inside a window would be counted as the measured module's. In
    "frozen" mode, also writes the empty stubs (under HEAP_STUBS, put first
    on sys.path) and appends the calibration modules.
    """
    for std in STDLIB_PRELOAD + tuple(n for n in preload_csv.split(",") if n):
        try:
            __import__(std)
        except ImportError:
            pass
    _HEAP["how"] = how
    _HEAP["src"] = src_root
    _HEAP["code"] = None
    names = [n for n in names_csv.split(",") if n]
    if how != "frozen":
        return ",".join(names)
    names += [n for n, _ in HEAP_CALIBRATION]
    for name in names:
        src = _module_path(src_root, name)
        _HEAP_STUB[name] = _write_stub(name, src.endswith("/__init__.py"))
    if HEAP_STUBS not in sys.path:
        sys.path.insert(0, HEAP_STUBS)
    return ",".join(names)


def heap_prepare(name):
    """Before the first reading: in "frozen" mode, compile the module's source and intern its names."""
    if _HEAP["how"] != "frozen":
        return
    src = None
    for cal, text in HEAP_CALIBRATION:
        if cal == name:
            src = text
    path = _module_path(_HEAP["src"], name)
    if src is None:
        with open(path) as f:
            src = f.read()
    # The name tracebacks show; mpy-cross -s gives the repository-relative one.
    _HEAP["code"] = compile(src, path.lstrip("/"), "exec")
    _intern(name)
    _intern(name[name.rfind(".") + 1 :])
    _intern(_HEAP_STUB[name])


def heap_load(name):
    """The measured step: load one module. Returns None, or "error: ..." if it failed."""
    try:
        if _HEAP["how"] != "frozen":
            __import__(name)
            return None
        had = [k for k in sys.modules]
        __import__(name)  # the empty stub: module object, sys.modules, attribute of its package
        mod = sys.modules[name]
        exec(_HEAP["code"], mod.__dict__)
        extra = [k for k in sys.modules if k not in had and k != name]
        if extra:
            # A dependency imported now would be an empty stub (and its cost
            # would land here): the driver must measure dependencies first.
            raise ImportError("%s imported %s before it was measured" % (name, ",".join(extra)))
        return None
    except Exception as e:
        return "error: " + _describe(e)


def heap_release():
    """After the second reading: drop the compiled code (it stands for flash)."""
    _HEAP["code"] = None


def heap_loads(entries_csv, roots_csv):
    """What importing the entries (comma-separated) loads: JSON {"modules", "other", "failed"}.

    Run in a VM of its own, before measuring (tests/mpvm/run.mjs --loads):
    which modules a path really loads is found by importing it, not by
    reading sources, so an import that only happens inside a function is not
    counted. "modules" are those whose source is under one of the roots
    (comma-separated), sorted; "other" the rest (standard and port
    modules, for heap_setup's preload_csv); "failed" maps an entry that
    cannot be imported here (a board-only module needing `machine`) to why.
    Modules a failed entry loaded before failing are left out of both lists.
    """
    had = set(sys.modules)
    ok = set(had)
    failed = {}
    for entry in [n for n in entries_csv.split(",") if n]:
        try:
            __import__(entry)
            ok = set(sys.modules)
        except Exception as e:
            failed[entry] = _describe(e)
            # A half-imported module is not in sys.modules; what it pulled in
            # before failing is, and is not on the path that really loads.
            for name in [k for k in sys.modules if k not in ok]:
                del sys.modules[name]
    mods = []
    other = []
    roots = roots_csv.split(",")
    for name in sorted(ok - had):
        rel = name.replace(".", "/")
        if any(_exists(_join(_join(r, rel), "__init__.py")) or _exists(_join(r, rel) + ".py") for r in roots):
            mods.append(name)
        else:
            other.append(name)
    return json.dumps({"modules": mods, "other": other, "failed": failed})


def heap(names, how="import"):
    """GC heap bytes held after loading each module in turn, all steps in this one call.

    Returns None where gc.mem_alloc() does not exist (CPython). A module that
    fails to load is reported as the string "error: ...". Only for ports
    whose gc frees within a call (see above); run.mjs drives the steps itself.
    """
    import gc

    if not hasattr(gc, "mem_alloc"):
        return None
    order = [n for n in heap_setup(how, ",".join(names)).split(",") if n]
    gc.collect()
    before = gc.mem_alloc()
    modules = {}
    total = 0
    for name in order:
        heap_prepare(name)
        gc.collect()
        a = gc.mem_alloc()
        err = heap_load(name)
        gc.collect()
        b = gc.mem_alloc()
        heap_release()
        modules[name] = err or (b - a)
        if not err and not name.startswith("_calib_"):
            total += b - a
    gc.collect()
    after = gc.mem_alloc()
    return {"how": how, "before": before, "after": after, "total": total, "modules": modules}


def heap_json(names_csv):
    return json.dumps(heap([n for n in names_csv.split(",") if n]))


def main(argv):
    if len(argv) > 1 and argv[1] == "--heap":
        print(heap_json(",".join(argv[2:])))
    else:
        print(run_json(argv[1] if len(argv) > 1 else None))


if __name__ == "__main__":
    main(sys.argv)
