# Storage helpers over a journal fs object: small atomic files, chunked journal records, reading records back by index.
#
# The journal (protocol/journal.py) caps a record at MAX_PAYLOAD bytes and
# reads back only through pending(), which loads every payload at once.
# The stall needs messages up to wire.MAX_SIZE and must read one record at a
# time with bounded RAM, so:
#   - a long item is journaled as a head record plus continuation records
#     (tag "C"), written back to back by one call, so their ids are
#     consecutive; a reader that finds fewer parts than the head declares
#     knows power was cut mid-write and that the item never existed;
#   - records are read through the journal's public index (offsets, lengths)
#     with the codec's parse() re-checking each CRC.
# Small state files (the boot log, the sequence high-water mark, the config)
# are replaced atomically: write path.tmp, commit, rename over path; a
# reader falls back to path.tmp when a FAT-style rename was cut in half.

from protocol import journal

CHUNK = journal.MAX_PAYLOAD - 64  # data bytes per record, leaving room for a head


def read_file(fs, path):
    """Bytes of a small file, or None when missing (tries path.tmp after a cut rename)."""
    for p in (path, path + ".tmp"):
        if fs.size(p) is None:
            continue
        f = fs.open(p, "rb")
        try:
            return f.read()
        finally:
            f.close()
    return None


def write_file(fs, path, data):
    """Replace a small file atomically (tmp + commit + rename)."""
    tmp = path + ".tmp"
    f = fs.open(tmp, "wb")
    try:
        n = f.write(data)
        if n is not None and n != len(data):
            raise OSError(28)
    except Exception:
        try:
            f.close()
        except Exception:
            pass
        raise
    fs.commit(f)
    fs.rename(tmp, path)


def append_chunked(j, rtype, head, data, reserve=0):
    """Journal head + data as one record, or as a head record and "C"
    continuations when longer than CHUNK. `head` is a str ending in "\\n"
    with one "%d" for the part count (filled in here). Returns the
    list of record ids, or None when a TELEMETRY item was dropped."""
    n = len(data)
    parts = 1 if n <= CHUNK else (n + CHUNK - 1) // CHUNK
    h = (head % parts).encode()
    if parts == 1:
        rid = j.append(rtype, h + data, reserve)
        return None if rid is None else [rid]
    mv = memoryview(data)
    ids = []
    # The head carries the whole reserve: once it is in, the rest must fit.
    rid = j.append(rtype, h + bytes(mv[:CHUNK]), reserve)
    if rid is None:
        return None
    ids.append(rid)
    off = CHUNK
    while off < n:
        rid = j.append(rtype, b"C" + bytes(mv[off : off + CHUNK]))
        if rid is None:  # telemetry squeezed out mid-item: retire what was written
            j.ack(*ids)
            return None
        ids.append(rid)
        off += CHUNK
    return ids


class Reader:
    """Reads live records of an open Journal one at a time.

    payload()/by_id() keep one file handle open for a batch of reads: close()
    before the journal writes again (a compaction replaces the file, and an
    old handle would read the old one). item() opens and closes its own."""

    def __init__(self, fs, path, j):
        self._fs = fs
        self._path = path
        self._j = j
        self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def _file(self):
        if self._f is None:
            self._f = self._fs.open(self._path, "rb")
        return self._f

    def payload(self, i, prefix=0):
        """Payload of index slot i; with prefix > 0 only its first bytes
        (unchecked: open() verified the CRC). Full reads re-check the CRC."""
        ix = self._j.index
        n = ix.length(i)
        f = self._file()
        if prefix:
            f.seek(ix.offs[i] + journal.HDR)
            k = n - journal.OVERHEAD
            return f.read(prefix if prefix < k else k)
        f.seek(ix.offs[i])
        buf = f.read(n)
        if len(buf) != n or journal.parse(buf, 0, n, ix.ids[i] - 1) != n:
            raise journal.JournalError("corrupt", "record %d no longer checks" % ix.ids[i])
        return buf[journal.HDR : n - 4]

    def by_id(self, rid, prefix=0):
        i = self._j.index.find(rid)
        if i < 0 or self._j.index.dead[i]:
            return None
        return self.payload(i, prefix)

    def item(self, ids):
        """The data of a chunked item: the head's bytes after its b"\\n" plus each continuation."""
        try:
            head = self.by_id(ids[0])
            if head is None:
                return None
            cut = head.find(b"\n") + 1
            if len(ids) == 1:
                return head[cut:]
            out = bytearray(head[cut:])
            for rid in ids[1:]:
                p = self.by_id(rid)
                if p is None:
                    return None
                out += p[1:]
            return bytes(out)
        finally:
            self.close()


def live(j):
    """Index slots of live BILLING and TELEMETRY records, oldest first."""
    ix = j.index
    out = []
    for i in range(len(ix.ids)):
        t = ix.types[i]
        if not ix.dead[i] and (t == journal.BILLING or t == journal.TELEMETRY):
            out.append(i)
    return out
