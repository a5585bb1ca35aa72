# Size of the stall's compiled code: every .py of firmware/ and protocol/ through mpy-cross (host_tools.build.compile_tree), per file and in total.
#
# Portable bytecode (no -march), as `overstay flash` copies it to a board
# without frozen modules; frozen into an image with manifest.py the same
# bytecode sits in flash. Board-only files (firmware/stall/board.py, boot.py,
# main.py) are counted too: they are on the board.
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(out="build/mpy-size"):
    from host_tools.build import compile_tree, mpy_cross_version

    sizes = compile_tree(out)
    return sizes, mpy_cross_version()


def main():
    sizes, version = measure()
    groups = {}
    for rel, n in sizes.items():
        top = "protocol/" if rel.startswith("protocol/") else "firmware/"
        groups.setdefault(top, []).append((rel, n))
    print("compiled with %s (portable bytecode)" % version)
    for top in sorted(groups):
        rows = sorted(groups[top], key=lambda r: -r[1])
        print("  %s %d files, %d bytes" % (top, len(rows), sum(n for _r, n in rows)))
        for rel, n in rows:
            print("    %-40s %7d" % (rel, n))
    total = sum(sizes.values())
    src = 0
    for rel in sizes:
        src += os.path.getsize(os.path.join(REPO, rel[:-4] + ".py"))
    print("  total .mpy: %d bytes (%.1f KiB) from %d bytes of source, %d files" % (total, total / 1024.0, src, len(sizes)))


if __name__ == "__main__":
    main()
