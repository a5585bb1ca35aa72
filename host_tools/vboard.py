# Virtual board: a pseudo-terminal in front of the MicroPython WebAssembly REPL, so mpremote and `overstay flash` can rehearse without hardware.
#
#   python -m host_tools.vboard [--heap BYTES] [--no-boot]
#
# prints the pseudo-terminal's path (/dev/pts/N) on the first line of stdout
# and serves until Ctrl-C or SIGTERM. tests/mpvm/vboard.mjs runs the VM's REPL
# over its stdin/stdout as raw bytes; this side opens a pty pair in raw mode
# and relays bytes between the pty master and that node process. We keep the
# slave open ourselves, so a client closing the port (mpremote does after every
# command) is not a hang-up. The VM's files are in memory: read them back with
# mpremote (`fs ls`, `fs cat`, `exec`), e.g. VirtualBoard.exec().
import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import tty

from host_tools.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "mpvm", "vboard.mjs")
BANNER = b'Type "help()" for more information.'


class VirtualBoard:
    """One node process running the VM and a relay thread; use as a context manager.

    `path` is the pty slave to give mpremote. stop() kills node and closes the
    pty; it is safe to call twice and runs on __exit__ whatever happened."""

    def __init__(self, heap=None, boot=True, node=None, script=SCRIPT):
        self.heap = heap
        self.boot = boot
        self.node = node or shutil.which("node")
        self.script = script
        self.proc = None
        self.path = None
        self._master = self._slave = None
        self._wake_r = self._wake_w = None
        self._thread = None
        self._stop = False

    def start(self, timeout=20.0):
        if self.node is None:
            raise UserError("node is not installed: `make setup` installs it (the virtual board runs MicroPython in node)")
        if not os.path.exists(self.script):
            raise UserError("missing " + self.script)
        cmd = [self.node, self.script]
        if self.heap:
            cmd += ["--heap", str(int(self.heap))]
        if not self.boot:
            cmd.append("--no-boot")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            greeting = self._read_banner(timeout)
            self._master, self._slave = os.openpty()
            tty.setraw(self._slave)
            os.set_blocking(self._master, False)
            self.path = os.ttyname(self._slave)
            self._wake_r, self._wake_w = os.pipe()
            # The banner goes to the pty too, as a board prints it at power-up.
            self._thread = threading.Thread(target=self._relay, args=(bytearray(greeting),), name="vboard-relay", daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_banner(self, timeout):
        fd = self.proc.stdout.fileno()
        got = b""
        deadline = time.monotonic() + timeout
        while BANNER not in got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise UserError("the virtual board did not start within %.0f s" % timeout)
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    err = self.proc.stderr.read().decode("utf-8", "replace").strip()
                    raise UserError("the virtual board exited at start: " + (err.splitlines()[-1] if err else "no message"))
                got += chunk
        return got

    def _relay(self, to_pty):
        node_out = self.proc.stdout.fileno()
        node_in = self.proc.stdin.fileno()
        node_err = self.proc.stderr.fileno()
        master = self._master
        readers = [master, node_out, node_err, self._wake_r]
        while not self._stop:
            writers = [master] if to_pty else []
            try:
                r, w, _ = select.select(readers, writers, [], 1.0)
            except (OSError, ValueError):
                return
            if self._wake_r in r:
                return
            if master in w and to_pty:
                try:
                    n = os.write(master, to_pty)
                    del to_pty[:n]
                except BlockingIOError:
                    pass
                except OSError:
                    return
            if master in r:
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    data = None
                except OSError:
                    return
                if data:
                    try:
                        os.write(node_in, data)
                    except OSError:
                        return
            if node_out in r:
                data = os.read(node_out, 65536)
                if not data:
                    return  # node exited
                to_pty.extend(data)
            if node_err in r:
                data = os.read(node_err, 65536)
                if data:
                    sys.stderr.write("[vboard] " + data.decode("utf-8", "replace"))
                else:
                    readers.remove(node_err)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        self._stop = True
        if self._wake_w is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass
        for name in ("_master", "_slave", "_wake_r", "_wake_w"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)

    def __enter__(self):
        return self.start() if self.proc is None else self

    def __exit__(self, *exc):
        self.stop()
        return False

    def mpremote(self, *args, mpremote=None, timeout=60):
        """Run `mpremote connect PATH ARGS...`; returns the CompletedProcess (text)."""
        exe = mpremote or find_mpremote()
        return subprocess.run([exe, "connect", self.path] + list(args), capture_output=True, text=True, timeout=timeout, check=False)

    def exec(self, code, timeout=60):
        """stdout of running code on the board (raises RuntimeError when mpremote fails)."""
        res = self.mpremote("exec", code, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError("mpremote exec failed (%d): %s%s" % (res.returncode, res.stdout, res.stderr))
        return res.stdout


def find_mpremote():
    candidate = os.path.join(os.path.dirname(sys.executable), "mpremote")
    if os.path.exists(candidate):
        return candidate
    found = shutil.which("mpremote")
    if found is None:
        raise UserError("mpremote not found: run `make setup` (it is a dev dependency) or pass --mpremote PATH")
    return found


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m host_tools.vboard",
        description="A virtual MicroPython board (the WebAssembly VM) behind a pseudo-terminal, for mpremote and `overstay flash`.",
    )
    p.add_argument("--heap", type=int, help="initial MicroPython heap in bytes (default 512 KiB)")
    p.add_argument("--no-boot", action="store_true", help="do not run boot.py at a soft reset")
    args = p.parse_args(argv)
    board = VirtualBoard(heap=args.heap, boot=not args.no_boot)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        board.start()
        print(board.path, flush=True)
        print("virtual board (MicroPython 1.27, WebAssembly) on %s; Ctrl-C to stop" % board.path, file=sys.stderr, flush=True)
        while not done.wait(0.5):
            if not board.alive():
                print("vboard: the VM exited", file=sys.stderr)
                return 1
    except UserError as e:
        print("vboard: error: %s" % e, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        board.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
