# Append-only, CRC-checked record journal for flash: a sans-IO record codec and a Journal that drives a file-system object.
#
# Theory of operation
# -------------------
# A journal file is a run of records, little-endian:
#
#   magic u8 | type u8 | payload length u16 | id u32 | payload | crc32 u32
#
# The CRC covers header and payload. Ids strictly increase through the file.
# Reading stops at the first record that is cut short ("torn": the data ends
# inside it) or does not check ("corrupt": bad magic, type, length, CRC, or
# an id not above the one before); that record and everything after it is
# cut. A writer only ever appends whole records, so after a power cut the
# file is a valid prefix plus at most one torn record.
#
# The file is never rewritten in place. Compaction, and the repair of a cut
# tail at open, write the live records to path + ".tmp", commit it, then
# rename it over path. Until the rename the old file is the truth: at open a
# .tmp next to the file is a compaction that never finished and is deleted.
# A .tmp alone means the rename ran as remove-then-rename (MicroPython's FAT
# driver does that) and was cut between the two steps; the .tmp was committed
# before the rename began, so it is complete and is promoted.
#
# What is live: unacknowledged BILLING and TELEMETRY records, the newest META
# record of each key (unless it clears the key), and a MARK that ends the
# file. An ACK retires the records it names; ACKs, retired records, older
# META records and MARKs with records after them are dead, and compaction
# drops them. A MARK exists to carry the highest id: when compaction drops the
# record that held it, the new file ends with a MARK of that id, so ids keep
# increasing across compactions and reboots.
#
# Space (docs/journal.md): TELEMETRY lives below soft_limit and is dropped
# oldest first to make room; BILLING and META may grow the file to
# hard_limit and are never dropped; beyond that append raises JournalFull.

import struct
from array import array

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


try:
    import binascii

    _crc32_native = getattr(binascii, "crc32", None)  # absent on ports built without it
except ImportError:
    _crc32_native = None

MAGIC = const(0xA7)  # also the format version: a new layout takes a new magic
HDR = const(8)  # magic, type, payload length, id
OVERHEAD = const(12)  # header + CRC: a record is OVERHEAD + len(payload) bytes
MAX_PAYLOAD = const(4096)  # longer lengths are corruption, not records
MAX_ID = const(0xFFFFFFFF)

# Record types: the priority classes of the space policy.
BILLING = const(1)  # session events and closed session records: kept until acked
TELEMETRY = const(2)  # best effort: dropped oldest first when space runs short
ACK = const(3)  # payload: u32 ids the backend has stored
META = const(4)  # payload: key u8 + value; the newest per key wins, empty value clears
MARK = const(5)  # empty; keeps the highest id when compaction drops its record

# parse() results below zero.
TORN = const(-1)
CORRUPT = const(-2)

_ACK_MAX = const(64)  # ids per ACK record
_FMT = "<BBHI"


class JournalError(Exception):
    """The stored data or the storage misbehaved; `code` says how."""

    def __init__(self, code, detail=""):
        super().__init__(code + (": " + detail if detail else ""))
        self.code = code


class JournalFull(JournalError):
    """No room under hard_limit (code "full") or no ids left (code "ids")."""


# --- CRC-32 (IEEE, as zlib and binascii) -------------------------------------

# Nibble table for the reflected polynomial 0xEDB88320: 16 entries instead of
# 256 keeps the fallback small; it only runs where binascii.crc32 is missing.
_NIBBLES = array("I", [0] * 16)
for _i in range(16):
    _c = _i
    for _k in range(4):
        _c = (_c >> 1) ^ 0xEDB88320 if _c & 1 else _c >> 1
    _NIBBLES[_i] = _c
del _i, _c, _k


def crc32_py(data, crc=0):
    """CRC-32 in pure Python; same value as binascii.crc32(data, crc)."""
    t = _NIBBLES
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = (crc >> 4) ^ t[(crc ^ b) & 15]
        crc = (crc >> 4) ^ t[(crc ^ (b >> 4)) & 15]
    return crc ^ 0xFFFFFFFF


def crc32(data, crc=0):
    """CRC-32 of data, continuing from crc."""
    if _crc32_native is None:
        return crc32_py(data, crc)
    return _crc32_native(data, crc) & 0xFFFFFFFF


# --- sans-IO codec -------------------------------------------------------------


def _check_record(rtype, rid, plen):
    if type(rtype) is not int or rtype < 1 or rtype > 254:
        raise ValueError("record type must be 1..254")
    if type(rid) is not int or rid < 1 or rid > MAX_ID:
        raise ValueError("record id must be 1..2**32-1")
    if plen > MAX_PAYLOAD:
        raise ValueError("payload longer than %d bytes" % MAX_PAYLOAD)


def encode(rtype, rid, payload):
    """The bytes of one record."""
    _check_record(rtype, rid, len(payload))
    hdr = struct.pack(_FMT, MAGIC, rtype, len(payload), rid)
    return hdr + bytes(payload) + struct.pack("<I", crc32(payload, crc32(hdr)))


def parse(buf, off=0, end=-1, last_id=0):
    """Check the record that starts at buf[off] (buf ends at `end`).

    Returns its size in bytes when it is intact and its id is above last_id,
    TORN when buf ends inside a record that looks right so far, CORRUPT
    otherwise. Reads at most the record's own bytes."""
    if end < 0:
        end = len(buf)
    avail = end - off
    if avail <= 0:
        return TORN
    if buf[off] != MAGIC:
        return CORRUPT
    # 0x00 and 0xFF are what zeroed and erased flash read as: never a type.
    if avail > 1 and (buf[off + 1] == 0 or buf[off + 1] == 0xFF):
        return CORRUPT
    if avail > 3 and buf[off + 2] | buf[off + 3] << 8 > MAX_PAYLOAD:
        return CORRUPT
    if avail < HDR:
        return TORN
    rid = struct.unpack_from("<I", buf, off + 4)[0]
    if rid <= last_id:
        return CORRUPT
    n = OVERHEAD + (buf[off + 2] | buf[off + 3] << 8)
    if avail < n:
        return TORN
    c = crc32(memoryview(buf)[off : off + n - 4])
    if c != struct.unpack_from("<I", buf, off + n - 4)[0]:
        return CORRUPT
    return n


def _stop(r):
    return "torn" if r == TORN else "corrupt"


def scan(buf):
    """Decode a journal image.

    Returns (records, valid, stop): records is a list of (id, type, payload
    bytes) for the intact prefix, valid the length of that prefix, and stop
    "end", "torn" or "corrupt" for why reading ended."""
    records = []  # type: list
    off = 0
    end = len(buf)
    last = 0
    while off < end:
        n = parse(buf, off, end, last)
        if n < 0:
            return records, off, _stop(n)
        last = struct.unpack_from("<I", buf, off + 4)[0]
        records.append((last, buf[off + 1], bytes(buf[off + HDR : off + n - 4])))
        off += n
    return records, off, "end"


class Index:
    """What a journal knows about its file without reading it again.

    One entry per record in parallel arrays (id, offset, type, dead flag),
    about 10 bytes a record, plus the newest META record of each key.
    Sans-IO: whoever reads or writes records feeds them to add()."""

    def __init__(self):
        self.ids = array("I")
        self.offs = array("I")
        self.types = bytearray()
        self.dead = bytearray()
        self.size = 0  # bytes of intact records
        self.dead_bytes = 0  # of which compaction would drop
        self.next_id = 1
        self.meta = {}  # key -> index of its newest record

    def __len__(self):
        return len(self.ids)

    def length(self, i):
        """Size in bytes of record i."""
        nxt = self.offs[i + 1] if i + 1 < len(self.offs) else self.size
        return nxt - self.offs[i]

    def find(self, rid):
        """Index of the record with id rid, or -1."""
        ids = self.ids
        lo = 0
        hi = len(ids)
        while lo < hi:
            mid = (lo + hi) >> 1
            if ids[mid] < rid:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(ids) and ids[lo] == rid:
            return lo
        return -1

    def _kill(self, i):
        if not self.dead[i]:
            self.dead[i] = 1
            self.dead_bytes += self.length(i)

    def retire(self, rid):
        """Mark a live BILLING or TELEMETRY record acknowledged; True if it was."""
        i = self.find(rid)
        if i < 0 or self.dead[i]:
            return False
        t = self.types[i]
        if t != BILLING and t != TELEMETRY:
            return False
        self._kill(i)
        return True

    def add(self, rtype, rid, payload):
        """Account for an intact record appended at offset self.size."""
        if rid < self.next_id:
            raise ValueError("ids must increase")
        i = len(self.ids)
        if i and self.types[i - 1] == MARK:
            self._kill(i - 1)  # no longer the last record: its id is no longer needed
        self.ids.append(rid)
        self.offs.append(self.size)
        self.types.append(rtype)
        self.dead.append(0)
        self.size += OVERHEAD + len(payload)
        self.next_id = rid + 1
        if rtype == ACK:
            self._kill(i)
            k = 0
            while k + 4 <= len(payload):
                self.retire(struct.unpack_from("<I", payload, k)[0])
                k += 4
        elif rtype == META:
            if len(payload):
                old = self.meta.pop(payload[0], -1)
                if old >= 0:
                    self._kill(old)
            if len(payload) > 1:
                self.meta[payload[0]] = i
            else:
                self._kill(i)  # a clear (or malformed) META only hides older values
        # MARK stays live while it is last; unknown types stay live (opaque).

    def live(self, rtype=0):
        """Indexes of live records, oldest first (of one type if rtype)."""
        out = []
        for i in range(len(self.ids)):
            if not self.dead[i] and (not rtype or self.types[i] == rtype):
                out.append(i)
        return out

    def plan(self, n, rtype, soft, hard, reserve=0):
        """How to make room for a new record of n bytes of type rtype.

        Returns (compact, drop): whether to compact first, and how many of
        the oldest live TELEMETRY records that compaction drops. Compaction
        runs only when it wins soft // 8 bytes or more, or when a record
        other than TELEMETRY would not fit otherwise, so a full journal is
        not rewritten on every append. Telemetry is dropped down to the low
        water mark, soft - soft // 4, so drops come in batches."""
        limit = soft if rtype == TELEMETRY else hard - reserve
        total = self.size + n
        if total <= soft and total <= limit:
            return False, 0
        low = soft - soft // 4
        keep = self.size - self.dead_bytes
        drop = 0
        if keep + n > low:
            for i in range(len(self.ids)):
                if self.types[i] == TELEMETRY and not self.dead[i]:
                    keep -= self.length(i)
                    drop += 1
                    if keep + n <= low:
                        break
        reclaim = self.size - keep
        if reclaim > 0 and (reclaim >= soft // 8 or (rtype != TELEMETRY and total > limit)):
            return True, drop
        return False, 0


def recover(buf):
    """Rebuild the Index of a journal image as Journal.open() would.

    Returns (index, stop); index.size is the length of the valid prefix."""
    ix = Index()
    off = 0
    end = len(buf)
    mv = memoryview(buf)
    while off < end:
        n = parse(buf, off, end, ix.next_id - 1)
        if n < 0:
            return ix, _stop(n)
        ix.add(buf[off + 1], struct.unpack_from("<I", buf, off + 4)[0], mv[off + HDR : off + n - 4])
        off += n
    return ix, "end"


# --- storage -------------------------------------------------------------------


class OsFs:
    """The journal's view of a file system: open() and os on either interpreter.

    A test or a port may pass any object with these five methods instead."""

    def __init__(self):
        import os

        self._os = os

    def open(self, path, mode):
        # Modes used: "rb", "wb", "ab".
        return open(path, mode)

    def size(self, path):
        """Size of the file in bytes, or None when it does not exist."""
        try:
            return self._os.stat(path)[6]
        except OSError:
            return None

    def remove(self, path):
        self._os.remove(path)

    def rename(self, src, dst):
        """Move src over dst. Atomic on CPython (os.replace) and littlefs;
        MicroPython's FAT driver removes dst first, which open() tolerates."""
        os = self._os
        replace = getattr(os, "replace", None)
        if replace is not None:
            replace(src, dst)
        else:
            try:
                os.rename(src, dst)
            except OSError:
                if self.size(dst) is None:
                    raise
                os.remove(dst)
                os.rename(src, dst)
        opener = getattr(os, "open", None)  # CPython: make the rename itself durable
        if opener is not None:
            d = dst.rsplit("/", 1)[0] if "/" in dst else "."
            try:
                fd = opener(d or "/", os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                pass  # e.g. Windows cannot open a directory

    def commit(self, f):
        """Make what was written to f durable, then close it."""
        f.flush()
        os = self._os
        fsync = getattr(os, "fsync", None)
        if fsync is not None:
            fsync(f.fileno())
        f.close()
        sync = getattr(os, "sync", None)
        if fsync is None and sync is not None:
            sync()  # MicroPython ports that have it: flush the block device cache


def _readfull(f, mv):
    got = 0
    n = len(mv)
    while got < n:
        k = f.readinto(mv[got:])
        if not k:
            break
        got += k
    return got


def _put(f, data):
    k = f.write(data)
    if k is not None and k != len(data):
        raise OSError(28)  # ENOSPC: a short write on a file means the volume is full


def _close_quietly(f):
    try:
        f.close()
    except Exception:
        pass


class Journal:
    """An append-only journal in one file of `fs` (see OsFs for the methods).

    Call open() before anything else. Each append, ack and put_meta is
    durable when it returns: the file is opened, written and committed."""

    def __init__(self, fs, path, soft_limit=16384, hard_limit=32768):
        if type(soft_limit) is not int or type(hard_limit) is not int:
            raise TypeError("limits must be integers")
        if not 0 < soft_limit <= hard_limit:
            raise ValueError("need 0 < soft_limit <= hard_limit")
        self._fs = fs
        self._path = path
        self._tmp = path + ".tmp"
        self.soft_limit = soft_limit
        self.hard_limit = hard_limit
        self._hdr = bytearray(HDR)
        self._crc = bytearray(4)
        self._win = bytearray(OVERHEAD + MAX_PAYLOAD)  # one record: scans and copies
        self._ix = Index()
        self._opened = False
        self._broken = False  # a write failed: the file may hold a torn tail
        self.dropped = 0  # TELEMETRY records dropped for space since open()
        self.compactions = 0
        self.cut = None  # after open(): (stop, bytes cut) when a tail was cut

    # -- state ---------------------------------------------------------------

    @property
    def size(self):
        """Bytes in the journal file."""
        return self._ready().size

    @property
    def next_id(self):
        """The id the next record will get."""
        return self._ready().next_id

    @property
    def index(self):
        return self._ready()

    def _ready(self):
        if not self._opened:
            raise ValueError("call open() first")
        return self._ix

    # -- open ----------------------------------------------------------------

    def open(self):
        """Recover the journal from storage; returns self.

        Finishes or discards an interrupted compaction, reads the intact
        prefix and, when a tail was cut, rewrites the file without it (the
        cut bytes of a corrupt tail are kept in path + ".bad" for forensics)."""
        fs = self._fs
        size = fs.size(self._path)
        if fs.size(self._tmp) is not None:
            if size is None:
                fs.rename(self._tmp, self._path)
                size = fs.size(self._path)
            else:
                fs.remove(self._tmp)
        ix = Index()
        stop = "end"
        if size:
            stop = self._load(ix)
        self._ix = ix
        self._opened = True
        self._broken = False
        self.cut = None
        if size and ix.size < size:
            self.cut = (stop, size - ix.size)
            if stop == "corrupt":
                self._keep_bad(ix.size, size)
            self.compact()
        return self

    def _load(self, ix):
        win = self._win
        mv = memoryview(win)
        f = self._fs.open(self._path, "rb")
        try:
            while True:
                got = _readfull(f, mv[:HDR])
                if not got:
                    return "end"
                r = parse(win, 0, got, ix.next_id - 1)
                if r != TORN or got < HDR:
                    return _stop(r)
                n = OVERHEAD + (win[2] | win[3] << 8)
                got += _readfull(f, mv[HDR:n])
                r = parse(win, 0, got, ix.next_id - 1)
                if r < 0:
                    return _stop(r)
                ix.add(win[1], struct.unpack_from("<I", win, 4)[0], mv[HDR : n - 4])
        finally:
            f.close()

    def _keep_bad(self, start, end):
        # Best effort: a failure here must not stop the journal from opening.
        if end - start > self.hard_limit:
            end = start + self.hard_limit
        mv = memoryview(self._win)
        try:
            src = self._fs.open(self._path, "rb")
            try:
                dst = self._fs.open(self._path + ".bad", "wb")
                src.seek(start)
                while start < end:
                    k = min(len(mv), end - start)
                    k = _readfull(src, mv[:k])
                    if not k:
                        break
                    _put(dst, mv[:k])
                    start += k
                self._fs.commit(dst)
            finally:
                src.close()
        except OSError:
            pass

    # -- writing -------------------------------------------------------------

    def _heal(self):
        ix = self._ready()
        if self._broken:
            self.compact()
            ix = self._ix
        return ix

    def _write(self, rtype, payload):
        ix = self._ix
        rid = ix.next_id
        if rid > MAX_ID:
            raise JournalFull("ids", "record ids exhausted")
        hdr = self._hdr
        struct.pack_into(_FMT, hdr, 0, MAGIC, rtype, len(payload), rid)
        struct.pack_into("<I", self._crc, 0, crc32(payload, crc32(hdr)))
        f = self._fs.open(self._path, "ab")
        try:
            _put(f, hdr)
            _put(f, payload)
            _put(f, self._crc)
            self._fs.commit(f)
        except Exception:
            self._broken = True  # heal before the next write: never append after a torn record
            _close_quietly(f)
            raise
        ix.add(rtype, rid, payload)
        return rid

    def _room(self, n, rtype, reserve):
        # True when a record of n bytes may be written now; False drops TELEMETRY.
        comp, drop = self._ix.plan(n, rtype, self.soft_limit, self.hard_limit, reserve)
        if comp:
            self.compact(drop)
        limit = self.soft_limit if rtype == TELEMETRY else self.hard_limit - reserve
        if self._ix.size + n <= limit:
            return True
        if rtype == TELEMETRY:
            return False
        raise JournalFull("full", "%d + %d bytes > %d" % (self._ix.size, n, limit))

    def append(self, rtype, payload, reserve=0):
        """Append a BILLING or TELEMETRY record; returns its id.

        Returns None when a TELEMETRY record does not fit under soft_limit
        even after dropping older telemetry (it is counted in `dropped`).
        Raises JournalFull when a BILLING record would leave fewer than
        `reserve` bytes under hard_limit: pass a reserve when the record
        opens a session, so sessions already open can still close."""
        if rtype != BILLING and rtype != TELEMETRY:
            raise ValueError("append takes BILLING or TELEMETRY; use ack() and put_meta()")
        if len(payload) > MAX_PAYLOAD:
            raise ValueError("payload longer than %d bytes" % MAX_PAYLOAD)
        if type(reserve) is not int or reserve < 0:
            raise ValueError("reserve must be an integer >= 0")
        self._heal()
        if not self._room(OVERHEAD + len(payload), rtype, reserve):
            self.dropped += 1
            return None
        return self._write(rtype, payload)

    def put_meta(self, key, value, reserve=0):
        """Store value (bytes) under key 0..255, superseding older values;
        an empty value clears the key. Returns the record id."""
        if type(key) is not int or key < 0 or key > 255:
            raise ValueError("meta key must be 0..255")
        if len(value) + 1 > MAX_PAYLOAD:
            raise ValueError("meta value longer than %d bytes" % (MAX_PAYLOAD - 1))
        self._heal()
        payload = bytes((key,)) + bytes(value)
        self._room(OVERHEAD + len(payload), META, reserve)
        return self._write(META, payload)

    def ack(self, *rids):
        """Retire BILLING/TELEMETRY records the backend has stored.

        Unknown, already retired and other ids are ignored: after a reboot
        the backend may ack again. Never raises JournalFull: when an ACK
        record does not fit, compaction drops the retired records instead.
        Returns how many records this call retired."""
        ix = self._heal()
        hit = []
        for rid in rids:
            if type(rid) is not int:
                raise TypeError("record ids are integers")
            if ix.retire(rid):
                hit.append(rid)
        k = 0
        while k < len(hit):
            ids = hit[k : k + _ACK_MAX]
            k += _ACK_MAX
            payload = struct.pack("<%dI" % len(ids), *ids)
            n = OVERHEAD + len(payload)
            comp, drop = self._ix.plan(n, ACK, self.soft_limit, self.hard_limit)
            if comp or self._ix.size + n > self.hard_limit:
                # Retired records are already dead in the index: the new file
                # simply lacks them, which needs no ACK record.
                self.compact(drop)
                break
            self._write(ACK, payload)
        return len(hit)

    def compact(self, drop_telemetry=0):
        """Rewrite the file with only its live records (less the oldest
        drop_telemetry TELEMETRY records) via path + ".tmp" and a rename."""
        ix = self._ready()
        fs = self._fs
        new = Index()
        win = self._win
        mv = memoryview(win)
        dropped = 0
        src = fs.open(self._path, "rb") if ix.size else None
        try:
            dst = fs.open(self._tmp, "wb")
            try:
                for i in range(len(ix.ids)):
                    if ix.dead[i] or src is None:
                        continue
                    rtype = ix.types[i]
                    if rtype == TELEMETRY and dropped < drop_telemetry:
                        dropped += 1
                        continue
                    n = ix.length(i)
                    src.seek(ix.offs[i])
                    # Re-check on the way: never carry a record that rotted since open().
                    if _readfull(src, mv[:n]) != n or parse(win, 0, n, new.next_id - 1) != n:
                        raise JournalError("corrupt", "record %d no longer checks" % ix.ids[i])
                    _put(dst, mv[:n])
                    new.add(rtype, ix.ids[i], mv[HDR : n - 4])
                if new.next_id < ix.next_id:
                    rid = ix.next_id - 1
                    struct.pack_into(_FMT, win, 0, MAGIC, MARK, 0, rid)
                    struct.pack_into("<I", win, HDR, crc32(mv[:HDR]))
                    _put(dst, mv[:OVERHEAD])
                    new.add(MARK, rid, b"")
                fs.commit(dst)
            except Exception:
                _close_quietly(dst)
                try:
                    fs.remove(self._tmp)
                except Exception:
                    pass
                raise
        finally:
            if src is not None:
                _close_quietly(src)
        try:
            fs.rename(self._tmp, self._path)
        except Exception:
            self._broken = True  # the next write retries the whole compaction
            raise
        self._ix = new
        self._broken = False
        self.dropped += dropped
        self.compactions += 1

    # -- reading -------------------------------------------------------------

    def _payload(self, f, i):
        ix = self._ix
        n = ix.length(i)
        mv = memoryview(self._win)
        f.seek(ix.offs[i])
        if _readfull(f, mv[:n]) != n or parse(self._win, 0, n, ix.ids[i] - 1) != n:
            raise JournalError("corrupt", "record %d no longer checks; open() again" % ix.ids[i])
        return bytes(mv[HDR : n - 4])

    def pending(self, rtype=0, limit=0):
        """Unacknowledged BILLING and TELEMETRY records (only rtype if
        given, at most limit if given), oldest first, as (id, type, payload)."""
        ix = self._ready()
        out = []
        f = None
        try:
            for i in range(len(ix.ids)):
                t = ix.types[i]
                if ix.dead[i] or (t != BILLING and t != TELEMETRY) or (rtype and t != rtype):
                    continue
                if f is None:
                    f = self._fs.open(self._path, "rb")
                out.append((ix.ids[i], t, self._payload(f, i)))
                if limit and len(out) >= limit:
                    break
        finally:
            if f is not None:
                f.close()
        return out

    def meta(self, key):
        """The newest value stored under key, or None."""
        i = self._ready().meta.get(key, -1)
        if i < 0:
            return None
        f = self._fs.open(self._path, "rb")
        try:
            return self._payload(f, i)[1:]
        finally:
            f.close()
