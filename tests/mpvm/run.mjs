// MicroPython VM harness: runs the portable vector runner under MicroPython 1.27 (WebAssembly) in node.
//
//   node tests/mpvm/run.mjs                 all vectors: {"<module>/<case>": output} on stdout
//   node tests/mpvm/run.mjs --only fee,wire only these vector modules
//   node tests/mpvm/run.mjs --heap          GC heap bytes taken by importing each protocol module
//   node tests/mpvm/run.mjs --heap --mpy D  the same, loading protocol/ as .mpy files from D/protocol
//                                           (what a stall without frozen modules runs)
//   node tests/mpvm/run.mjs --heap --frozen the heap a frozen import would take: only what each
//                                           module's top-level code creates (run_vectors.py says how)
//   node tests/mpvm/run.mjs --heap --frozen --path firmware --entry stall.core
//                                           the same for the modules importing stall.core loads
//                                           (protocol/ and stall/ ones), not all of protocol/
//   node tests/mpvm/run.mjs --loads stall.core --path firmware
//                                           which modules importing stall.core loads, in a fresh VM:
//                                           {"modules", "other", "failed"} (run_vectors.heap_loads)
//
// --path D1,D2: repository folders put on the VM's sys.path (as a stall's
// root folder is) and searched for module sources after the repository
// root; `--path firmware` makes `from stall import core` work. --entry
// M1,M2: measure what importing these loads rather than all of protocol/;
// the list comes from --loads run in a VM process of its own (one VM per
// process, and importing the modules first would leave them and their
// garbage in the VM being measured), so only modules that really load on
// that path are measured, and an entry that cannot load here (a board
// module needing `machine`) is reported under "left_out" with the reason.
//
// Heap mode: {"how", "order", "modules": {name: bytes or "error: ..."},
// "total", ...} on stdout (with --entry also "entries", "left_out" and
// "preloaded"). Modules are measured in dependency order (each one's
// `from protocol import ...` or `from stall import ...` loaded before it), so
// a figure is the module's own. The VM's gc frees nothing the running call touched, so every
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
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = join(HERE, "..", "..");
const PKG = "@micropython/micropython-webassembly-pyscript";

function usage(msg) {
  process.stderr.write(
    "run.mjs: " + msg + "\nusage: node tests/mpvm/run.mjs [--heap [--mpy D | --frozen] [--entry m1,m2]] [--loads m1,m2] [--path d1,d2] [--only m1,m2]\n",
  );
  process.exit(2);
}

const args = process.argv.slice(2);
let mode = "vectors";
let only = "";
let mpyDir = "";
let frozen = false;
let entries = "";
let paths = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--heap") mode = "heap";
  else if (args[i] === "--mpy" && i + 1 < args.length) mpyDir = args[++i];
  else if (args[i] === "--frozen") frozen = true;
  else if (args[i] === "--only" && i + 1 < args.length) only = args[++i];
  else if (args[i] === "--entry" && i + 1 < args.length) entries = args[++i];
  else if (args[i] === "--loads" && i + 1 < args.length) (mode = "loads"), (entries = args[++i]);
  else if (args[i] === "--path" && i + 1 < args.length) paths = args[++i].split(",").filter(Boolean);
  else usage("unknown argument " + args[i]);
}
if (frozen && (mode !== "heap" || mpyDir)) usage("--frozen goes with --heap and compiles the .py sources, not with --mpy");
// --mpy replaces protocol/ only; a firmware module would still load from source.
if (entries && mode === "heap" && !frozen) usage("--entry goes with --heap --frozen");
for (const p of paths) if (!/^[\w-]+(\/[\w-]+)*$/.test(p)) usage("--path takes repository folders such as firmware, got " + p);
// Where module sources are, in the VM and as the import system searches: the
// repository root (the current directory) first, then the --path folders.
const ROOTS = ["/", ...paths.map((p) => "/" + p)];

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

// The repository-relative source of module `name`: the first root that holds
// it as a package or a module (run_vectors._module_path does the same in the VM).
function sourceOf(name) {
  const rel = name.split(".").join("/");
  for (const root of ROOTS) {
    for (const cand of [join(root, rel, "__init__.py"), join(root, rel + ".py")]) {
      const r = cand.replace(/^\/+/, "");
      try {
        if (statSync(join(REPO, r)).isFile()) return r;
      } catch {
        // not under this root
      }
    }
  }
  throw new Error("no source for module " + name + " under " + ROOTS.join(", "));
}

// The source without the lines inside a def: an import there runs when the
// function is called, not at import, and may point back at a module that
// imports this one at its top (stall.console's Console() imports
// stall.console_cmds, which imports stall.console), which is no cycle.
// Indentation decides; a line inside a multi-line string could fool it, which
// costs at most an order constraint or a reported cycle, never a figure.
function topLevel(text) {
  const kept = [];
  let defIndent = -1;
  for (const line of text.split("\n")) {
    const body = line.trimStart();
    const indent = line.length - body.length;
    if (body && !body.startsWith("#") && defIndent >= 0 && indent <= defIndent) defIndent = -1;
    if (defIndent >= 0) continue;
    if (/^(async[ \t]+)?def[ \t]/.test(body)) defIndent = indent;
    kept.push(line);
  }
  return kept.join("\n");
}

// The given modules (name -> repository-relative source), each after its
// parent packages and the modules of those packages it imports at import
// time (`from protocol import a, b`, `from stall.a import ...`, `import
// protocol.a`, also inside a module-level try), otherwise alphabetical. A
// module named that is not measured is ignored.
function dependencyOrder(sources) {
  const packages = new Set([...sources.keys()].map((n) => n.split(".")[0]));
  const deps = new Map();
  for (const [name, rel] of sources) {
    const text = topLevel(readFileSync(join(REPO, rel), "utf8"));
    const uses = new Set();
    for (const pkg of packages) {
      const fromRe = new RegExp("^[ \\t]*from[ \\t]+" + pkg + "[ \\t]+import[ \\t]+\\(?([\\w \\t,]+)", "gm");
      for (const m of text.matchAll(fromRe)) {
        for (const part of m[1].split(",")) {
          const word = part.trim().split(/\s+/)[0];
          if (word) uses.add(pkg + "." + word);
        }
      }
      const dotRe = new RegExp("^[ \\t]*(?:from|import)[ \\t]+" + pkg + "\\.(\\w+)", "gm");
      for (const m of text.matchAll(dotRe)) uses.add(pkg + "." + m[1]);
    }
    const parts = name.split(".");
    for (let i = 1; i < parts.length; i++) uses.add(parts.slice(0, i).join("."));
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
function measureHeap(names, preload = []) {
  const how = frozen ? "frozen" : "import";
  const py = (code) => mp.runPython(code);
  const str = (s) => JSON.stringify(s); // a JSON string of plain ASCII is a Python literal too
  py("import gc\nimport run_vectors\n_heap_now = 0\n_heap_err = None\n_heap_order = ''");
  py("_heap_order = run_vectors.heap_setup(" + [how, names.join(","), ROOTS.join(","), preload.join(",")].map(str).join(", ") + ")");
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

// --loads run in a node process of its own: its fresh VM imports the entries.
function loadsOf(entryList) {
  const argv = [fileURLToPath(import.meta.url), "--loads", entryList].concat(paths.length ? ["--path", paths.join(",")] : []);
  const proc = spawnSync(process.execPath, argv, { encoding: "utf8", timeout: 120000 });
  if (proc.status !== 0) throw new Error("run.mjs --loads " + entryList + " exited " + proc.status + ": " + (proc.stderr || "").slice(-2000));
  return JSON.parse(proc.stdout);
}

try {
  mp.runPython("import sys\nsys.path.insert(0, '/tests/portable')\nimport os\nos.chdir('/')");
  for (const p of paths) mp.runPython("import sys\nsys.path.append(" + JSON.stringify("/" + p) + ")");
  let out;
  if (mode === "loads") {
    out = mp.pyimport("run_vectors").heap_loads(entries, ROOTS.join(","));
  } else if (mode === "heap" && entries) {
    const loads = loadsOf(entries);
    const res = measureHeap(dependencyOrder(new Map(loads.modules.map((n) => [n, sourceOf(n)]))), loads.other);
    res.entries = entries.split(",").filter(Boolean);
    res.left_out = loads.failed;
    res.preloaded = loads.other;
    out = JSON.stringify(res);
  } else if (mode === "heap") {
    const rels = files.filter((rel) => rel.startsWith("protocol/") && rel.endsWith(".py"));
    out = JSON.stringify(measureHeap(dependencyOrder(new Map(rels.map((rel) => [rel.slice(0, -3).split("/").join(".").replace(/\.__init__$/, ""), rel])))));
  } else {
    out = mp.pyimport("run_vectors").run_json("/tests/vectors", only);
  }
  process.stdout.write(out + "\n");
} catch (e) {
  process.stderr.write("run.mjs: MicroPython raised:\n" + (e && e.message ? e.message : String(e)) + "\n");
  process.exit(1);
}
