# Golden vectors on both interpreters: CPython must give `expect`, MicroPython (WebAssembly VM) must give CPython's output.
#
# Every tests/vectors/<m>.json is picked up on its own; each case is its own
# test, so one module's broken vectors do not hide another's. Outputs are
# compared as canonical JSON (sorted keys, no spaces): MicroPython dicts have
# no order. node and the npm package come from `make setup`; their absence is
# a failure, never a skip.
import json
import os
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


def test_every_protocol_module_imports_under_micropython():
    # Heap mode imports each protocol module in a fresh VM: a CPython-only
    # import anywhere in protocol/ fails here even without vectors.
    heap = run_node("--heap")
    errors = {m: v for m, v in heap["modules"].items() if not isinstance(v, int)}
    assert not errors, errors
    assert heap["total"] > 0
