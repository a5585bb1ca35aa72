# In-memory file system with power-cut injection: the journal's fs interface for tests, the VM vectors and the simulator.
#
# Files live in a dict of bytearrays. With a `budget`, every byte written and
# every remove/rename step costs one unit; when it runs out the power is cut:
# the operation stops half done, PowerCut is raised, and every later call
# raises too, until reboot() returns the surviving state as a fresh fs. That
# is how tests cut power at every instant, including inside a journal write.
# `fat=True` renames over an existing file as remove-then-rename, like
# MicroPython's FAT driver. Portable: runs under MicroPython too.


class PowerCut(Exception):
    """The simulated supply died; nothing more happens on this fs."""


class MemFile:
    def __init__(self, fs, path):
        self.fs = fs
        self.path = path
        self.pos = 0

    def write(self, data):
        fs = self.fs
        fs._alive()
        n = len(data)
        room = n if fs.budget is None else min(n, fs.budget)
        fs.files[self.path].extend(bytes(data[:room]) if room < n else bytes(data))
        fs.written += room
        if fs.budget is not None:
            fs.budget -= room
            if room < n:
                fs.dead = True
                raise PowerCut()
        return room

    def readinto(self, mv):
        self.fs._alive()
        d = self.fs.files[self.path]
        k = min(len(mv), len(d) - self.pos)
        if k <= 0:
            return 0
        mv[:k] = d[self.pos : self.pos + k]
        self.pos += k
        return k

    def read(self, n=-1):
        self.fs._alive()
        d = self.fs.files[self.path]
        end = len(d) if n < 0 else min(len(d), self.pos + n)
        out = bytes(d[self.pos : end])
        self.pos = end
        return out

    def seek(self, pos):
        self.pos = pos

    def flush(self):
        self.fs._alive()

    def close(self):
        pass


class MemFs:
    """Dict-backed files with the journal's five methods (open, size, remove,
    rename, commit); see the module comment for budget and fat."""

    def __init__(self, files=None, budget=None, fat=False):
        self.files = {} if files is None else files
        self.budget = budget
        self.fat = fat
        self.dead = False
        self.written = 0  # bytes written (a flash-wear gauge)
        self.steps = 0  # remove/rename steps

    def _alive(self):
        if self.dead:
            raise PowerCut()

    def _step(self):
        self._alive()
        if self.budget is not None:
            if self.budget <= 0:
                self.dead = True
                raise PowerCut()
            self.budget -= 1
        self.steps += 1

    def reboot(self, budget=None):
        """The files as they survived, on a fresh fs (optionally with a new budget)."""
        files = {}
        for k in self.files:
            files[k] = bytearray(self.files[k])
        return MemFs(files, budget, self.fat)

    def open(self, path, mode):
        self._alive()
        if mode == "rb":
            if path not in self.files:
                raise OSError(2)
        elif mode == "wb":
            self.files[path] = bytearray()
        elif mode == "ab":
            if path not in self.files:
                self.files[path] = bytearray()
        else:
            raise ValueError("mode " + mode)
        f = MemFile(self, path)
        if mode == "ab":
            f.pos = len(self.files[path])
        return f

    def size(self, path):
        self._alive()
        d = self.files.get(path)
        return None if d is None else len(d)

    def remove(self, path):
        if path not in self.files:
            raise OSError(2)
        self._step()
        del self.files[path]

    def rename(self, src, dst):
        if src not in self.files:
            raise OSError(2)
        if self.fat and dst in self.files:
            self.remove(dst)
        self._step()
        self.files[dst] = self.files.pop(src)

    def commit(self, f):
        f.flush()
        f.close()
