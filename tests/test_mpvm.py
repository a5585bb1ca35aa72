# Golden vectors on both interpreters: CPython must give `expect`, MicroPython (WebAssembly VM) must give CPython's output.
#
# Every tests/vectors/<m>.json is picked up on its own; each case is its own
# test, so one module's broken vectors do not hide another's. Outputs are
# compared as canonical JSON (sorted keys, no spaces): MicroPython dicts have
# no order. node and the npm package come from `make setup`; their absence is
# a failure, never a skip.
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PORTABLE = os.path.join(HERE, "portable")
VECTORS = os.path.join(HERE, "vectors")
RUN_MJS = os.path.join(HERE, "mpvm", "run.mjs")
REPO = os.path.dirname(HERE)

if PORTABLE not in sys.path:
    sys.path.insert(0, PORTABLE)
import run_vectors  # noqa: E402  (lives in tests/portable, shared with the VM)


def canon(x):
    return json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _documents():
    docs = []
    for module in run_vectors.vector_modules(VECTORS):
        with open(os.path.join(VECTORS, module + ".json")) as f:
            docs.append((module, json.load(f)))
    return docs


DOCS = _documents()
CASES = [(m, c) for m, doc in DOCS for c in doc.get("cases", [])]
CASE_IDS = [m + "/" + c.get("name", "?") for m, c in CASES]


def run_node(*args, timeout=300):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `make setup`")
    proc = subprocess.run([node, RUN_MJS] + list(args), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail("node tests/mpvm/run.mjs %s exited %d:\n%s" % (" ".join(args), proc.returncode, proc.stderr[-4000:]))
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def cpython_out():
    return run_vectors.run_all(VECTORS)


@pytest.fixture(scope="module")
def micropython_out():
    return run_node()


def _output(results, module, name):
    key = module + "/" + name
    if key in results:
        return results[key]
    if module + "/*" in results:
        pytest.fail("vec_%s did not load: %s" % (module, results[module + "/*"]))
    pytest.fail("no output for " + key)


@pytest.mark.parametrize("module,doc", DOCS, ids=[m for m, _ in DOCS])
def test_vectors_file_shape(module, doc):
    assert doc.get("module") == module, "tests/vectors/%s.json: \"module\" must be %r" % (module, module)
    assert os.path.exists(os.path.join(PORTABLE, "vec_%s.py" % module)), "tests/portable/vec_%s.py is missing" % module
    names = [c.get("name") for c in doc["cases"]]
    assert doc["cases"], "no cases"
    assert len(names) == len(set(names)), "duplicate case names"
    for c in doc["cases"]:
        assert set(c) >= {"name", "input", "expect"}, "case %r lacks name, input or expect" % c.get("name")


@pytest.mark.parametrize("module,case", CASES, ids=CASE_IDS)
def test_cpython_matches_expect(cpython_out, module, case):
    got = _output(cpython_out, module, case["name"])
    assert canon(got) == canon(case["expect"])


@pytest.mark.parametrize("module,case", CASES, ids=CASE_IDS)
def test_micropython_matches_cpython(cpython_out, micropython_out, module, case):
    mp = _output(micropython_out, module, case["name"])
    assert canon(mp) == canon(_output(cpython_out, module, case["name"]))


def test_micropython_runs_every_vector_module(micropython_out):
    loaded = sorted({k.split("/", 1)[0] for k in micropython_out if not k.endswith("/*")})
    broken = {k: v for k, v in micropython_out.items() if k.endswith("/*")}
    assert not broken, broken
    assert loaded == sorted(m for m, _ in DOCS)


@pytest.fixture(scope="module")
def heap_import():
    return run_node("--heap")


@pytest.fixture(scope="module")
def heap_frozen():
    return run_node("--heap", "--frozen")


def _protocol_modules():
    names = {"protocol"}
    for n in os.listdir(os.path.join(REPO, "protocol")):
        if n.endswith(".py") and n != "__init__.py":
            names.add("protocol." + n[:-3])
    return names


def _protocol_imports(name, root=REPO, packages=("protocol",)):
    """The modules of `packages` that `name`'s source (under root) imports, however it spells it."""
    base = os.path.join(root, *name.split("."))
    path = os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"
    with open(path) as f:
        text = f.read()
    found = set()
    for pkg in packages:
        for words in re.findall(r"^[ \t]*from[ \t]+%s[ \t]+import[ \t]+\(?([\w \t,]+)" % pkg, text, re.M):
            found |= {pkg + "." + w.split()[0] for w in words.split(",") if w.strip()}
        found |= {pkg + "." + m for m in re.findall(r"^[ \t]*(?:from|import)[ \t]+%s\.(\w+)" % pkg, text, re.M)}
    return found - {name}


def test_every_protocol_module_imports_under_micropython(heap_import):
    # Heap mode imports each protocol module in a fresh VM: a CPython-only
    # import anywhere in protocol/ fails here even without vectors.
    heap = heap_import
    errors = {m: v for m, v in heap["modules"].items() if not isinstance(v, int)}
    assert not errors, errors
    assert set(heap["modules"]) == _protocol_modules()
    assert heap["total"] > 0
    # Every reading is in a VM call of its own, and nothing outlives a
    # module's window, so the windows add up to the whole.
    assert heap["total"] == sum(heap["modules"].values()) == heap["after"] - heap["before"]


def test_frozen_heap_is_well_formed_and_plausible(heap_import, heap_frozen):
    heap = heap_frozen
    assert heap["how"] == "frozen"
    errors = {m: v for m, v in heap["modules"].items() if not isinstance(v, int)}
    assert not errors, errors
    assert set(heap["modules"]) == set(heap["order"]) == _protocol_modules()
    # Dependency order: a module's protocol imports are measured (executed) before it.
    for i, name in enumerate(heap["order"]):
        assert _protocol_imports(name) <= set(heap["order"][:i]), name
    cal = heap["calibration"]
    empty = cal["empty_module"]
    # A module object and its globals dict (16-byte GC blocks).
    assert 32 <= empty <= 128, cal
    # 50 empty functions: 50 function objects of 16 bytes on 32 bits, and
    # the globals dict's table grown to at least 50 entries of 8 bytes.
    assert 50 * 16 + 50 * 8 <= cal["50_functions"] - empty <= 50 * 16 + 2 * 64 * 8, cal
    for name, v in heap["modules"].items():
        assert v >= 32, (name, v)  # at least a module object and its dict
    assert heap["total"] == sum(heap["modules"].values())
    # Bytecode, constants and qstrs are not counted: well under the import's.
    assert heap["total"] * 3 < heap_import["total"], (heap["total"], heap_import["total"])


FIRMWARE = os.path.join(REPO, "firmware")


@pytest.fixture(scope="module")
def heap_frozen_core():
    return run_node("--heap", "--frozen", "--path", "firmware", "--entry", "stall.core")


def _cpython_loads(entry):
    """The protocol and stall modules importing `entry` loads under CPython (a fresh process: this one has some already)."""
    code = (
        "import json, sys\n"
        "sys.path.insert(0, %r)\n"
        "import %s\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('protocol', 'stall'))))\n" % (FIRMWARE, entry)
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def test_frozen_heap_of_the_core_path_is_well_formed_and_plausible(heap_frozen, heap_frozen_core):
    # --entry measures what importing the firmware core really loads (found by
    # importing it in a VM of its own), the frozen way, for bench/firmware_heap.py.
    heap = heap_frozen_core
    assert heap["how"] == "frozen"
    assert heap["entries"] == ["stall.core"]
    assert heap["left_out"] == {}, heap["left_out"]
    errors = {m: v for m, v in heap["modules"].items() if not isinstance(v, int)}
    assert not errors, errors
    assert set(heap["modules"]) == set(heap["order"])
    # The same modules CPython loads for the same import (sources are shared),
    # so nothing only a function body imports, nothing of the bench's own.
    assert set(heap["order"]) == _cpython_loads("stall.core")
    assert {"protocol", "stall", "stall.core"} <= set(heap["order"])
    # Dependency order: what a module imports (if measured) is measured before it.
    for i, name in enumerate(heap["order"]):
        root = REPO if name.split(".")[0] == "protocol" else FIRMWARE
        uses = _protocol_imports(name, root, ("protocol", "stall")) & set(heap["order"])
        assert uses <= set(heap["order"][:i]), name
    # The method check is the same as in the protocol/ run.
    assert heap["calibration"] == heap_frozen["calibration"]
    for name, v in heap["modules"].items():
        assert v >= 32, (name, v)  # at least a module object and its dict
    assert heap["total"] == sum(heap["modules"].values())
    # The protocol/ modules cost what they cost in the protocol/ run, give or
    # take where a growing dict (sys.modules, a package's) lands.
    proto = [m for m in heap["order"] if m.split(".")[0] == "protocol"]
    mine = sum(heap["modules"][m] for m in proto)
    theirs = sum(heap_frozen["modules"][m] for m in proto)
    assert abs(mine - theirs) <= 512, (mine, theirs)
    # Bytecode, constants and qstrs are not counted: the stall modules take
    # well under a quarter of their source's bytes.
    stall = [m for m in heap["order"] if m.split(".")[0] == "stall"]
    src = 0
    for m in stall:
        base = os.path.join(FIRMWARE, *m.split("."))
        src += os.path.getsize(os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py")
    assert 0 < sum(heap["modules"][m] for m in stall) * 4 < src


def test_loads_reports_board_modules_it_cannot_load():
    # A module needing `machine` cannot load in the VM: reported with the
    # reason, and what it imported before failing is not counted as loaded.
    got = run_node("--loads", "stall.board,stall.core", "--path", "firmware")
    assert set(got["failed"]) == {"stall.board"}
    assert "machine" in got["failed"]["stall.board"]
    assert set(got["modules"]) == _cpython_loads("stall.core")
    assert "binascii" in got["other"]
