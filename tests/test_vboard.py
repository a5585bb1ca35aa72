# Tests for host_tools/vboard.py and tests/mpvm/vboard.mjs: the MicroPython WebAssembly REPL behind a pty, driven by mpremote and pyserial.
import os
import signal
import subprocess
import sys
import time

import pytest
import serial

from host_tools.vboard import VirtualBoard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def board():
    with VirtualBoard() as b:
        yield b
    assert not b.alive()


def _read_until(port, marker, timeout=5.0):
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        data += port.read(port.in_waiting or 1)
    return data


def test_mpremote_copies_lists_and_reads_back_a_binary_file(board, tmp_path):
    blob = bytes(range(256)) * 40  # every byte value, 10 KiB: several raw-paste windows
    src = tmp_path / "blob.bin"
    src.write_bytes(blob)
    res = board.mpremote("fs", "mkdir", ":data", "+", "fs", "cp", str(src), ":data/blob.bin")
    assert res.returncode == 0, res.stderr
    listing = board.mpremote("fs", "ls", ":data")
    assert listing.returncode == 0 and "blob.bin" in listing.stdout
    back = tmp_path / "back.bin"
    res = board.mpremote("fs", "cp", ":data/blob.bin", str(back))
    assert res.returncode == 0, res.stderr
    assert back.read_bytes() == blob
    assert board.exec("import os\nprint(os.stat('data/blob.bin')[6])").strip() == str(len(blob))


def test_errors_read_like_a_board_so_mpremote_understands_them(board):
    res = board.mpremote("fs", "cat", ":missing.txt")
    assert res.returncode == 1
    assert "No such file or directory" in res.stdout + res.stderr
    assert board.mpremote("fs", "mkdir", ":d").returncode == 0
    res = board.mpremote("fs", "mkdir", ":d")
    assert "File exists" in res.stdout + res.stderr


def test_soft_reset_forgets_modules_and_runs_boot_py(board, tmp_path):
    boot = tmp_path / "boot.py"
    boot.write_text("import os\nf = open('booted', 'a')\nf.write('x')\nf.close()\n")
    assert board.mpremote("fs", "cp", str(boot), ":boot.py").returncode == 0
    mark = tmp_path / "mark.py"
    mark.write_text("X = 1\n")
    assert board.mpremote("fs", "cp", str(mark), ":mark.py").returncode == 0
    board.exec("import mark\nkept = 1")
    # Every mpremote run starts with a soft reset: modules and globals are gone, boot.py ran again.
    out = board.exec("import sys\nprint('kept' in globals(), 'mark' in sys.modules, open('booted').read())").split()
    assert out[:2] == ["False", "False"] and len(out[2]) >= 3


def test_raw_repl_and_raw_paste_over_pyserial(board):
    # serial_for_url, as the console tool opens ports; the protocol by hand.
    with serial.serial_for_url(board.path, baudrate=115200, timeout=0.1) as port:
        port.write(b"\r\x03\x03")
        port.write(b"\r\x01")  # Ctrl-A: raw REPL
        assert _read_until(port, b"raw REPL; CTRL-B to exit\r\n>").endswith(b">")
        port.write(b"\x05A\x01")  # raw-paste request
        head = _read_until(port, b"R\x01", 2) + port.read(2)
        window = int.from_bytes(head[-2:], "little")
        assert head.startswith(b"R\x01") and window > 0
        port.write(b"print(6 * 7)\x04")
        reply = _read_until(port, b"\x04>", 5)
        assert reply == b"\x0442\n\x04\x04>"  # end-of-data ack, output, EOF, errors, EOF, prompt
        port.write(b"1/0\x04")  # plain raw mode still works after a paste
        reply = _read_until(port, b"\x04>", 5)
        assert reply.startswith(b"OK\x04Traceback") and b"ZeroDivisionError" in reply
        port.write(b"\x02")  # Ctrl-B: friendly REPL
        assert b">>> " in _read_until(port, b">>> ", 5)


def test_machine_reset_lands_in_the_friendly_repl(board):
    res = board.mpremote("reset")
    assert res.returncode == 0, res.stderr
    assert board.exec("print(1 + 1)").strip() == "2"


def test_stop_kills_node_and_frees_the_pty(tmp_path):
    b = VirtualBoard().start()
    path, proc = b.path, b.proc
    b.stop()
    b.stop()  # twice is fine
    assert proc.poll() is not None
    assert b.path == path and not b.alive()


def test_command_line_prints_the_path_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-m", "host_tools.vboard"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        path = proc.stdout.readline().strip()
        assert path.startswith("/dev/")
        res = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "mpremote"), "connect", path, "exec", "print(sum(range(10)))"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.stdout.strip() == "45", res.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
