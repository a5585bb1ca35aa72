// Virtual board: the MicroPython 1.27 WebAssembly REPL spoken over this process's stdin/stdout as raw serial bytes.
//
//   node tests/mpvm/vboard.mjs [--heap BYTES] [--no-boot]
//
// host_tools/vboard.py puts a pseudo-terminal in front of it, so mpremote
// (or a person with a terminal program) talks to it like a USB serial board.
// The file system is the VM's in-memory one: it lives as long as the process.
//
// What a real board does that the VM's event-driven REPL does not, done here:
//   - soft reset (Ctrl-D on an empty raw or friendly line, sys.exit()): the
//     VM only reports "forced exit"; we print "MPY: soft reboot", forget the
//     imported modules and globals, run /boot.py, and re-enter the REPL in the
//     same mode (a board keeps its files across a soft reset; so do we);
//   - raw-paste mode (Ctrl-E A Ctrl-A in the raw REPL): the VM's reader would
//     block on stdin, so the flow-controlled transfer is handled here and the
//     finished code is handed to the raw REPL as if typed;
//   - errno numbers: the VM's file system raises Emscripten's (ENOENT is 44)
//     and prints "OSError: 44"; a board prints "OSError: [Errno 2] ENOENT",
//     which is what mpremote parses, so the common ones are rewritten;
//   - machine.reset(): a tiny JS `machine` module; a "hard" reset here is a
//     soft reboot that lands in the friendly REPL. main.py is never run: this
//     is a target for copying files and running snippets, not a stall.
// Bytes typed while code runs wait in the queue (no Ctrl-C interruption).
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const PKG = "@micropython/micropython-webassembly-pyscript";

// Control bytes of the MicroPython REPL protocol.
const CTRL_A = 0x01; // enter raw REPL; in raw-paste negotiation, the request's last byte
const CTRL_B = 0x02; // leave raw REPL for the friendly REPL
const CTRL_C = 0x03; // interrupt / clear the raw line
const CTRL_D = 0x04; // end of raw input: run it (empty line: soft reset); raw-paste end/ack
const CTRL_E = 0x05; // first byte of the raw-paste request "\x05A\x01"
const PASTE_WINDOW = 512; // raw-paste flow-control window (bytes the host may send per \x01)

function usage(msg) {
  process.stderr.write("vboard.mjs: " + msg + "\nusage: node tests/mpvm/vboard.mjs [--heap BYTES] [--no-boot]\n");
  process.exit(2);
}

const args = process.argv.slice(2);
let heapsize = 512 * 1024;
let runBoot = true;
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--heap" && i + 1 < args.length) heapsize = parseInt(args[++i], 10);
  else if (args[i] === "--no-boot") runBoot = false;
  else usage("unknown argument " + args[i]);
}
if (!(heapsize > 0)) usage("--heap must be a positive number of bytes");

let loadMicroPython;
try {
  ({ loadMicroPython } = await import(PKG));
} catch (e) {
  process.stderr.write("vboard.mjs: cannot load " + PKG + " (" + e.code + "): run `make setup` (npm install in " + HERE + ")\n");
  process.exit(2);
}

// Output: collected per input chunk and written in one go.
let out = [];
let swallow = null; // bytes to drop from the VM's next output (the raw REPL's "OK" after a raw paste)
function emit(bytes) {
  for (const b of bytes) {
    if (swallow !== null && swallow.length && b === swallow[0]) {
      swallow = swallow.slice(1);
      continue;
    }
    swallow = null;
    out.push(b);
  }
}
function say(text) {
  for (let i = 0; i < text.length; i++) out.push(text.charCodeAt(i) & 0xff);
}
// Emscripten errno -> [Linux errno, name] for what file operations raise.
// (Emscripten 2 and 8 stay as printed: MicroPython raises its own ENOENT as 2, so they are ambiguous.)
const ERRNO = {
  44: [2, "ENOENT"],
  20: [17, "EEXIST"],
  54: [20, "ENOTDIR"],
  31: [21, "EISDIR"],
  55: [39, "ENOTEMPTY"],
  28: [22, "EINVAL"],
  51: [28, "ENOSPC"],
  63: [1, "EPERM"],
};
function flush() {
  if (out.length) {
    let buf = Buffer.from(out);
    out = [];
    if (buf.includes("OSError: ")) {
      const text = buf.toString("latin1").replace(/OSError: (\d+)\r\n/g, (all, n) =>
        ERRNO[n] ? "OSError: [Errno " + ERRNO[n][0] + "] " + ERRNO[n][1] + "\r\n" : all,
      );
      buf = Buffer.from(text, "latin1");
    }
    process.stdout.write(buf);
  }
}

const mp = await loadMicroPython({ heapsize, stdout: emit, stderr: emit, linebuffer: false });

let hardReset = false;
mp.registerJsModule("machine", {
  reset: () => {
    hardReset = true;
  },
  soft_reset: () => {
    hardReset = true;
  },
  unique_id: () => "vboard",
});

// What a soft reset clears on a board: imported modules and the REPL's globals.
const FORGET = [
  "import sys",
  "for _k in list(sys.modules):",
  "    del sys.modules[_k]",
  "_g = globals()",
  "for _k in list(_g):",
  "    if _k not in ('__name__', '__builtins__'):",
  "        del _g[_k]",
].join("\n");
const BOOT = [
  "def _vboard_boot():",
  "    import os",
  "    try:",
  "        os.stat('boot.py')",
  "    except OSError:",
  "        return",
  "    try:",
  "        exec(open('boot.py').read(), {'__name__': '__main__'})",
  "    except BaseException as e:",
  "        import sys",
  "        sys.print_exception(e)",
  "_vboard_boot()",
  "del _vboard_boot",
].join("\n");

let raw = false; // our view of the REPL mode (the VM keeps its own)
let rawLineEmpty = true; // nothing typed on the current raw line yet
let paste = null; // raw-paste transfer in progress: {buf: [], remain: n}
let pending = []; // bytes of a possible raw-paste request being matched

function reboot(toFriendly) {
  say("MPY: soft reboot\r\n");
  try {
    mp.runPython(FORGET);
    if (runBoot) mp.runPython(BOOT);
  } catch (e) {
    say(String(e && e.message ? e.message : e) + "\r\n");
  }
  if (toFriendly && raw) {
    feed(CTRL_B); // the VM prints the friendly banner
    raw = false;
  } else {
    mp.replInit(); // prints the banner of the current mode
  }
  rawLineEmpty = true;
}

// One byte into the VM's REPL, with the bookkeeping a real board would do.
function feed(c) {
  const ret = mp.replProcessChar(c);
  if (ret) {
    reboot(false);
    return;
  }
  if (hardReset) {
    hardReset = false;
    reboot(true);
  }
}

function toRepl(c) {
  if (raw) {
    if (c === CTRL_B) raw = false;
    rawLineEmpty = c === CTRL_A || c === CTRL_C || c === CTRL_D;
  } else if (c === CTRL_A) {
    raw = true;
    rawLineEmpty = true;
  }
  feed(c);
}

function onByte(c) {
  if (paste !== null) {
    if (c === CTRL_D) {
      // End of the pasted code: acknowledge, then run it as a raw REPL line
      // (the raw REPL answers "OK", which raw-paste mode does not send).
      const code = paste.buf;
      paste = null;
      say("\x04");
      for (const b of code) feed(b);
      swallow = [0x4f, 0x4b]; // "OK"
      toRepl(CTRL_D);
      return;
    }
    paste.buf.push(c);
    if (--paste.remain === 0) {
      paste.remain = PASTE_WINDOW;
      say("\x01"); // room for another window
    }
    return;
  }
  if (pending.length || (raw && rawLineEmpty && c === CTRL_E)) {
    pending.push(c);
    const want = [CTRL_E, 0x41, CTRL_A];
    if (c === want[pending.length - 1]) {
      if (pending.length === 3) {
        pending = [];
        paste = { buf: [], remain: PASTE_WINDOW };
        say("R\x01" + String.fromCharCode(PASTE_WINDOW & 0xff, PASTE_WINDOW >> 8));
      }
      return;
    }
    const held = pending;
    pending = [];
    for (const b of held) toRepl(b);
    return;
  }
  toRepl(c);
}

process.stdin.on("data", (chunk) => {
  for (const c of chunk) onByte(c);
  flush();
});
process.stdin.on("end", () => {
  flush();
  process.exit(0);
});
process.on("SIGTERM", () => process.exit(0));

mp.replInit(); // the friendly banner, as a board prints at power-up
flush();
