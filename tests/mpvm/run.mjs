// MicroPython VM harness: runs the portable vector runner under MicroPython 1.27 (WebAssembly) in node.
//
//   node tests/mpvm/run.mjs                 all vectors: {"<module>/<case>": output} on stdout
//   node tests/mpvm/run.mjs --only fee,wire only these vector modules
//   node tests/mpvm/run.mjs --heap          GC heap bytes taken by importing each protocol module
//   node tests/mpvm/run.mjs --heap --mpy D  the same, loading protocol/ as .mpy files from D/protocol
//                                           (what a stall without frozen modules runs)
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
  process.stderr.write("run.mjs: " + msg + "\nusage: node tests/mpvm/run.mjs [--heap] [--only m1,m2]\n");
  process.exit(2);
}

const args = process.argv.slice(2);
let mode = "vectors";
let only = "";
let mpyDir = "";
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--heap") mode = "heap";
  else if (args[i] === "--mpy" && i + 1 < args.length) mpyDir = args[++i];
  else if (args[i] === "--only" && i + 1 < args.length) only = args[++i];
  else usage("unknown argument " + args[i]);
}

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

try {
  mp.runPython("import sys\nsys.path.insert(0, '/tests/portable')\nimport os\nos.chdir('/')");
  const runner = mp.pyimport("run_vectors");
  let out;
  if (mode === "heap") {
    // Package first, then each module: the order a stall's main.py would follow.
    const names = ["protocol"];
    for (const rel of files) {
      if (rel.startsWith("protocol/") && rel.endsWith(".py") && !rel.endsWith("__init__.py")) {
        names.push(rel.slice(0, -3).split("/").join("."));
      }
    }
    out = runner.heap_json(names.join(","));
  } else {
    out = runner.run_json("/tests/vectors", only);
  }
  process.stdout.write(out + "\n");
} catch (e) {
  process.stderr.write("run.mjs: MicroPython raised:\n" + (e && e.message ? e.message : String(e)) + "\n");
  process.exit(1);
}
