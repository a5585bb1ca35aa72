// MicroPython VM harness: runs the portable vector runner under MicroPython 1.27 (WebAssembly) in node.
//
//   node tests/mpvm/run.mjs                 all vectors: {"<module>/<case>": output} on stdout
//   node tests/mpvm/run.mjs --only fee,wire only these vector modules
//   node tests/mpvm/run.mjs --heap          GC heap bytes taken by importing each protocol module
//   node tests/mpvm/run.mjs --heap --mpy D  the same, loading protocol/ as .mpy files from D/protocol
//                                           (what a stall without frozen modules runs)
//   node tests/mpvm/run.mjs --heap --frozen the heap a frozen import would take: only what each
//                                           module's top-level code creates (run_vectors.py says how)
//
// Heap mode: {"how", "order", "modules": {name: bytes or "error: ..."},
// "total", ...} on stdout. Modules are measured in dependency order (each
// one's `from protocol import ...` loaded before it), so a figure is the
// module's own. The VM's gc frees nothing the running call touched, so every
// step, gc.collect() and gc.mem_alloc() reading is a runPython call of its
// own; measuring in one call counted the parser's and loader's garbage too
// (103 KB instead of 66 KB for .py).
//
// The VM's file system mirrors the repository: /protocol (every .py under
// protocol/), /firmware (every .py under firmware/; vec_firmware puts it on
// sys.path so `from stall import core` works as on a stall),
// /tests/portable/*.py and /tests/vectors/*.json, with "/" as the current
// directory, so `from protocol import fee` works as on a stall. Only
// the JSON result goes to stdout; anything Python prints goes to stderr.
// Exit codes: 0 ok, 1 Python raised, 2 set-up problem (run `make setup`).
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = join(HERE, "..", "..");
const PKG = "@micropython/micropython-webassembly-pyscript";

function usage(msg) {
  process.stderr.write("run.mjs: " + msg + "\nusage: node tests/mpvm/run.mjs [--heap [--mpy D | --frozen]] [--only m1,m2]\n");
  process.exit(2);
}

const args = process.argv.slice(2);
let mode = "vectors";
let only = "";
let mpyDir = "";
let frozen = false;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--heap") mode = "heap";
  else if (args[i] === "--mpy" && i + 1 < args.length) mpyDir = args[++i];
  else if (args[i] === "--frozen") frozen = true;
  else if (args[i] === "--only" && i + 1 < args.length) only = args[++i];
  else usage("unknown argument " + args[i]);
}
if (frozen && (mode !== "heap" || mpyDir)) usage("--frozen goes with --heap and compiles the .py sources, not with --mpy");

let loadMicroPython;
try {
  ({ loadMicroPython } = await import(PKG));
} catch (e) {
  process.stderr.write("run.mjs: cannot load " + PKG + " (" + e.code + "): run `make setup` (npm install in tests/mpvm)\n");
  process.exit(2);
}

// Relative paths (with "/") of files under dir whose names end with ext, recursively.
function listFiles(dir, ext) {
  const out = [];
  let names;
  try {
    names = readdirSync(dir).sort();
  } catch {
    return out;
  }
  for (const name of names) {
    if (name.startsWith(".") || name === "__pycache__") continue;
    const full = join(dir, name);
    if (statSync(full).isDirectory()) out.push(...listFiles(full, ext));
    else if (name.endsWith(ext)) out.push(relative(REPO, full).split(sep).join("/"));
  }
  return out;
}

const mp = await loadMicroPython({
  stdout: (line) => process.stderr.write("[micropython] " + line + "\n"),
  stderr: (line) => process.stderr.write("[micropython] " + line + "\n"),
  linebuffer: true,
});

const made = new Set(["/"]);
function mkdirs(path) {
  const parts = path.split("/").filter(Boolean);
  let cur = "";
  for (const p of parts) {
    cur += "/" + p;
    if (!made.has(cur)) {
      try {
        mp.FS.mkdir(cur);
      } catch {
        // already there
      }
      made.add(cur);
    }
  }
}

const files = [
  ...listFiles(join(REPO, "protocol"), ".py"),
  ...listFiles(join(REPO, "firmware"), ".py"),
  ...listFiles(join(REPO, "tests", "portable"), ".py"),
  ...listFiles(join(REPO, "tests", "vectors"), ".json"),
];
for (const rel of files) {
  let vmPath = "/" + rel;
  let src = join(REPO, rel);
  if (mpyDir && rel.startsWith("protocol/")) {
    vmPath = vmPath.slice(0, -3) + ".mpy";
    src = join(mpyDir, rel.slice(0, -3) + ".mpy");
  }
  mkdirs(vmPath.slice(0, vmPath.lastIndexOf("/")));
  mp.FS.writeFile(vmPath, readFileSync(src));
}

// Module names of the given protocol/ files, the package first, then each
// module after the protocol modules it imports (`from protocol import a, b`,
// `from protocol.a import ...`, `import protocol.a`), otherwise alphabetical.
function dependencyOrder(rels) {
  const deps = new Map();
  for (const rel of rels) {
    const name = rel.slice(0, -3).split("/").join(".").replace(/\.__init__$/, "");
    const text = readFileSync(join(REPO, rel), "utf8");
    const uses = new Set();
    for (const m of text.matchAll(/^[ \t]*from[ \t]+protocol[ \t]+import[ \t]+\(?([\w \t,]+)/gm)) {
      for (const part of m[1].split(",")) {
        const word = part.trim().split(/\s+/)[0];
        if (word) uses.add("protocol." + word);
      }
    }
    for (const m of text.matchAll(/^[ \t]*(?:from|import)[ \t]+protocol\.(\w+)/gm)) uses.add("protocol." + m[1]);
    if (name !== "protocol") uses.add("protocol");
    uses.delete(name);
    deps.set(name, uses);
  }
  const order = [];
  const pending = [...deps.keys()].sort();
  while (pending.length) {
    const i = pending.findIndex((n) => [...deps.get(n)].every((d) => order.includes(d) || !deps.has(d)));
    if (i < 0) throw new Error("import cycle among " + pending.join(", "));
    order.push(...pending.splice(i, 1));
  }
  return order;
}

// One runPython call per step and per gc.collect() / gc.mem_alloc(): see the
// header. The snippets read and write globals that exist before the first
// reading, so __main__'s dict does not grow between two readings.
function measureHeap(names) {
  const how = frozen ? "frozen" : "import";
  const py = (code) => mp.runPython(code);
  const str = (s) => JSON.stringify(s); // a JSON string of plain ASCII is a Python literal too
  py("import gc\nimport run_vectors\n_heap_now = 0\n_heap_err = None\n_heap_order = ''");
  py("_heap_order = run_vectors.heap_setup(" + str(how) + ", " + str(names.join(",")) + ", '/')");
  const order = mp.globals.get("_heap_order").split(",");
  const reading = () => {
    py("gc.collect()");
    py("_heap_now = gc.mem_alloc()");
    return mp.globals.get("_heap_now");
  };
  reading(); // first use of each snippet and proxy path
  const before = reading();
  const modules = {};
  const calibration = {};
  let total = 0;
  for (const name of order) {
    py("run_vectors.heap_prepare(" + str(name) + ")");
    const a = reading();
    py("_heap_err = run_vectors.heap_load(" + str(name) + ")");
    const b = reading();
    const err = mp.globals.get("_heap_err");
    py("run_vectors.heap_release()\n_heap_err = None");
    const v = err === null ? b - a : err;
    if (name.startsWith("_calib_")) calibration[name.slice(7)] = v;
    else {
      modules[name] = v;
      if (typeof v === "number") total += v;
    }
  }
  const res = { how, order: order.filter((n) => !n.startsWith("_calib_")), modules, total };
  if (frozen) res.calibration = calibration;
  else {
    // Nothing is kept between windows when importing, so after - before = total.
    res.before = before;
    res.after = reading();
  }
  return res;
}

try {
  mp.runPython("import sys\nsys.path.insert(0, '/tests/portable')\nimport os\nos.chdir('/')");
  let out;
  if (mode === "heap") {
    out = JSON.stringify(measureHeap(dependencyOrder(files.filter((rel) => rel.startsWith("protocol/") && rel.endsWith(".py")))));
  } else {
    out = mp.pyimport("run_vectors").run_json("/tests/vectors", only);
  }
  process.stdout.write(out + "\n");
} catch (e) {
  process.stderr.write("run.mjs: MicroPython raised:\n" + (e && e.message ? e.message : String(e)) + "\n");
  process.exit(1);
}
