# Tests for protocol/journal.py: codec, recovery after torn writes and corruption, compaction under power cuts, the space policy.
import binascii
import importlib.util
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from protocol import journal
from protocol.journal import (
    ACK,
    BILLING,
    HDR,
    MARK,
    META,
    OVERHEAD,
    TELEMETRY,
    Journal,
    JournalError,
    JournalFull,
    OsFs,
    crc32,
    crc32_py,
    encode,
    parse,
    recover,
    scan,
)

HERE = os.path.dirname(os.path.abspath(__file__))


# --- an in-memory file system that can lose power ------------------------------


class PowerCut(Exception):
    pass


class MemFile:
    def __init__(self, fs, path, mode):
        self.fs = fs
        self.path = path
        self.mode = mode
        self.pos = 0
        self.closed = False

    def _data(self):
        return self.fs.files[self.path]

    def write(self, data):
        self.fs._alive()
        data = bytes(data)
        room = len(data) if self.fs.budget is None else min(len(data), self.fs.budget)
        self._data().extend(data[:room])  # modes "wb" and "ab" both write at the end
        if self.fs.budget is not None:
            self.fs.budget -= room
        self.fs.used += room
        if room < len(data):
            self.fs.dead = True
            raise PowerCut()
        return room

    def readinto(self, mv):
        self.fs._alive()
        d = self._data()
        chunk = d[self.pos : self.pos + len(mv)]
        mv[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def read(self, n=-1):
        d = self._data()
        end = len(d) if n < 0 else self.pos + n
        chunk = bytes(d[self.pos : end])
        self.pos += len(chunk)
        return chunk

    def seek(self, pos):
        self.pos = pos

    def flush(self):
        self.fs._alive()

    def close(self):
        self.closed = True


class MemFs:
    """Files in a dict. Each byte written and each remove or rename step
    costs one unit of `budget`; when it runs out the power is cut: the
    operation stops half done and raises PowerCut, and so does every later
    call. `fat=True` renames over an existing file as remove then rename,
    as MicroPython's FAT driver does."""

    def __init__(self, files=None, budget=None, fat=False):
        self.files = {} if files is None else files
        self.budget = budget
        self.fat = fat
        self.dead = False
        self.used = 0
        self.opened = []

    def clone(self, budget=None, fat=None):
        files = {k: bytearray(v) for k, v in self.files.items()}
        return MemFs(files, budget, self.fat if fat is None else fat)

    def reboot(self):
        return self.clone()

    def _alive(self):
        if self.dead:
            raise PowerCut()

    def _step(self):
        self._alive()
        if self.budget is not None:
            if self.budget == 0:
                self.dead = True
                raise PowerCut()
            self.budget -= 1
        self.used += 1

    def open(self, path, mode):
        self._alive()
        if mode == "rb":
            if path not in self.files:
                raise OSError(2, "no such file")
        elif mode == "wb":
            self.files[path] = bytearray()
        elif mode == "ab":
            self.files.setdefault(path, bytearray())
        else:
            raise ValueError(mode)
        f = MemFile(self, path, mode)
        self.opened.append(f)
        return f

    def size(self, path):
        self._alive()
        return len(self.files[path]) if path in self.files else None

    def remove(self, path):
        if path not in self.files:
            raise OSError(2, "no such file")
        self._step()
        del self.files[path]

    def rename(self, src, dst):
        if src not in self.files:
            raise OSError(2, "no such file")
        if self.fat and dst in self.files:
            self.remove(dst)
        self._step()
        self.files[dst] = self.files.pop(src)

    def commit(self, f):
        f.flush()
        f.close()


def state(j):
    """What a journal means: its pending records, META values and next id."""
    metas = {k: j.meta(k) for k in range(4) if j.meta(k) is not None}
    return j.pending(), metas, j.next_id


def do(j, op):
    kind = op[0]
    if kind == "b":
        return j.append(BILLING, op[1])
    if kind == "t":
        return j.append(TELEMETRY, op[1])
    if kind == "m":
        return j.put_meta(op[1], op[2])
    if kind == "a":
        ids = [r[0] for r in j.pending()]
        if ids:
            rid = ids[op[1] % len(ids)]
            assert j.ack(rid) == 1
            return rid
        return None
    if kind == "c":
        return j.compact()
    raise AssertionError(kind)


payloads = st.binary(max_size=24)
ops_st = st.one_of(
    st.tuples(st.just("b"), payloads),
    st.tuples(st.just("t"), payloads),
    st.tuples(st.just("m"), st.integers(0, 3), payloads),
    st.tuples(st.just("a"), st.integers(0, 50)),
)
BIG = dict(soft_limit=1 << 20, hard_limit=1 << 20)


# --- codec ---------------------------------------------------------------------


def test_crc_fallback_matches_binascii_check_value():
    assert crc32(b"123456789") == crc32_py(b"123456789") == 0xCBF43926


@given(st.binary(max_size=300), st.integers(0, 0xFFFFFFFF))
def test_crc_fallback_matches_binascii(data, start):
    assert crc32_py(data, start) == binascii.crc32(data, start) == crc32(data, start)


def test_encode_layout():
    rec = encode(BILLING, 0x01020304, b"hi")
    assert rec[:HDR] == bytes([0xA7, BILLING, 2, 0, 4, 3, 2, 1])
    assert rec[HDR:-4] == b"hi"
    assert int.from_bytes(rec[-4:], "little") == binascii.crc32(rec[:-4])
    assert parse(rec) == len(rec) == OVERHEAD + 2


@pytest.mark.parametrize("bad", [(0, 1, b""), (255, 1, b""), (1, 0, b""), (1, 1 << 32, b""), (1, 1, bytes(4097))])
def test_encode_rejects_misuse(bad):
    with pytest.raises(ValueError):
        encode(*bad)


def test_scan_stops_at_erased_or_zeroed_flash():
    good = encode(BILLING, 1, b"a")
    for tail in (b"\xff" * 20, b"\x00" * 20, b"\xa7\xff"):
        assert scan(good + tail)[1:] == (len(good), "corrupt")


def test_scan_rejects_ids_that_do_not_increase():
    img = encode(BILLING, 5, b"a") + encode(BILLING, 5, b"b") + encode(BILLING, 6, b"c")
    recs, valid, stop = scan(img)
    assert [r[0] for r in recs] == [5] and stop == "corrupt"


# --- round trip ------------------------------------------------------------------


def test_round_trip_on_real_files(tmp_path):
    path = str(tmp_path / "j.log")
    j = Journal(OsFs(), path).open()
    assert j.next_id == 1 and j.pending() == []
    a = j.append(BILLING, b'{"session":1}')
    b = j.append(TELEMETRY, b"t1")
    m = j.put_meta(1, b"open-session")
    assert (a, b, m) == (1, 2, 3)
    assert j.ack(b) == 1
    j2 = Journal(OsFs(), path).open()
    assert j2.pending() == [(1, BILLING, b'{"session":1}')]
    assert j2.meta(1) == b"open-session" and j2.meta(2) is None
    assert j2.next_id == 5  # the ACK took id 4
    assert j2.append(BILLING, b"x") == 5
    with open(path, "rb") as f:
        assert [r[0] for r in scan(f.read())[0]] == [1, 2, 3, 4, 5]


def test_real_files_compaction_and_leftover_tmp(tmp_path):
    path = str(tmp_path / "j.log")
    j = Journal(OsFs(), path).open()
    for i in range(5):
        j.append(BILLING, b"r%d" % i)
    j.ack(1, 2, 3)
    j.compact()
    assert not os.path.exists(path + ".tmp")
    with open(path, "rb") as f:
        assert [r[0] for r in scan(f.read())[0]] == [4, 5, 6]  # 6: MARK keeping the ACK's id
    with open(path + ".tmp", "wb") as f:
        f.write(b"half a compaction")
    j2 = Journal(OsFs(), path).open()
    assert not os.path.exists(path + ".tmp")
    assert [r[0] for r in j2.pending()] == [4, 5] and j2.next_id == 7


def test_meta_newest_wins_and_clears():
    j = Journal(MemFs(), "j").open()
    j.put_meta(1, b"a")
    j.put_meta(2, b"x")
    j.put_meta(1, b"b")
    assert (j.meta(1), j.meta(2)) == (b"b", b"x")
    j.put_meta(2, b"")
    assert j.meta(2) is None
    j.compact()
    assert [r[1] for r in scan(j._fs.files["j"])[0]] == [META, MARK]
    j2 = Journal(j._fs.reboot(), "j").open()
    assert (j2.meta(1), j2.meta(2), j2.next_id) == (b"b", None, 5)


def test_ack_is_idempotent_and_ignores_strangers():
    j = Journal(MemFs(), "j").open()
    a = j.append(BILLING, b"a")
    m = j.put_meta(0, b"m")
    assert j.ack(a, a, 999, m) == 1
    assert j.ack(a) == 0
    assert j.meta(0) == b"m" and j.pending() == []
    size = j.size
    assert j.ack(12345) == 0 and j.size == size  # nothing retired: nothing written


def test_misuse():
    with pytest.raises(ValueError):
        Journal(MemFs(), "j", soft_limit=10, hard_limit=5)
    j = Journal(MemFs(), "j")
    with pytest.raises(ValueError):
        j.append(BILLING, b"")  # not opened
    j.open()
    for rtype in (ACK, META, MARK, 9):
        with pytest.raises(ValueError):
            j.append(rtype, b"")
    with pytest.raises(ValueError):
        j.append(BILLING, bytes(journal.MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        j.put_meta(256, b"x")


# --- torn writes and corruption ---------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(ops_st, min_size=1, max_size=8))
def test_cut_at_every_byte_of_the_last_write(ops):
    fs = MemFs()
    j = Journal(fs, "j", **BIG).open()
    for op in ops[:-1]:
        do(j, op)
    before = state(j)
    ref = Journal(fs.clone(), "j", **BIG).open()
    do(ref, ops[-1])
    after = state(ref)
    units = ref._fs.used
    for k in range(units + 1):
        cut = fs.clone(budget=k)
        jc = Journal(cut, "j", **BIG).open()
        try:
            do(jc, ops[-1])
        except PowerCut:
            pass
        rebooted = cut.reboot()
        got = state(Journal(rebooted, "j", **BIG).open())
        assert got == (after if k == units else before), k
        # What remains on flash is exactly the intact records: scan agrees with the journal.
        image = rebooted.files.get("j", b"")
        recs, valid, stop = scan(image)
        assert valid == len(image) and stop == "end"


@settings(max_examples=30, deadline=None)
@given(st.lists(ops_st, min_size=1, max_size=6), st.binary(min_size=1, max_size=30))
def test_power_cut_while_repairing_a_torn_tail(ops, torn):
    fs = MemFs()
    j = Journal(fs, "j", **BIG).open()
    for op in ops:
        do(j, op)
    want = state(j)
    fs.files.setdefault("j", bytearray()).extend(encode(BILLING, j.next_id, torn)[: len(torn) + 6])
    for fat in (False, True):
        ref = fs.clone(fat=fat)
        Journal(ref, "j", **BIG).open()
        assert ref.used > 0  # the cut tail was rewritten away
        for k in range(ref.used + 1):
            cut = fs.clone(budget=k, fat=fat)
            try:
                Journal(cut, "j", **BIG).open()
            except PowerCut:
                pass
            assert state(Journal(cut.reboot(), "j", **BIG).open()) == want


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([BILLING, TELEMETRY]), st.binary(max_size=20)), min_size=1, max_size=6),
    st.data(),
)
def test_flipped_byte_cuts_that_record_and_all_after(recs, data):
    fs = MemFs()
    j = Journal(fs, "j", **BIG).open()
    starts = []
    for t, p in recs:
        starts.append(j.size)
        j.append(t, p)
    img = bytearray(fs.files["j"])
    victim = data.draw(st.integers(0, len(recs) - 1))
    end = starts[victim + 1] if victim + 1 < len(recs) else len(img)
    pos = data.draw(st.integers(starts[victim], end - 1))
    img[pos] ^= data.draw(st.integers(1, 255))
    got, valid, stop = scan(img)
    assert valid == starts[victim] and stop in ("corrupt", "torn")
    assert [(r[1], r[2]) for r in got] == recs[:victim]
    fs.files["j"] = img
    j2 = Journal(fs.reboot(), "j", **BIG).open()
    assert [(r[1], r[2]) for r in j2.pending()] == recs[:victim]
    assert j2.cut == (stop, len(img) - starts[victim])
    if stop == "corrupt":
        assert bytes(j2._fs.files["j.bad"]) == bytes(img[starts[victim] :])


def test_bit_rot_after_open_is_reported_not_sent():
    fs = MemFs()
    j = Journal(fs, "j").open()
    j.append(BILLING, b"hello")
    fs.files["j"][HDR + 1] ^= 0x20
    with pytest.raises(JournalError) as e:
        j.pending()
    assert e.value.code == "corrupt"
    with pytest.raises(JournalError):
        j.compact()
    assert Journal(fs, "j").open().pending() == []


class FlakyFs(MemFs):
    """Writes fail with OSError (as on a full volume) while `fail` is set."""

    fail = False

    def open(self, path, mode):
        f = MemFs.open(self, path, mode)
        if self.fail and mode != "rb":
            w = f.write

            def write(data):
                w(bytes(data)[:3])
                raise OSError(28, "no space")

            f.write = write
        return f


def test_failed_write_is_healed_before_the_next_append():
    fs = FlakyFs()
    j = Journal(fs, "j").open()
    j.append(BILLING, b"one")
    fs.fail = True
    with pytest.raises(OSError):
        j.append(BILLING, b"two")
    fs.fail = False
    assert j.append(BILLING, b"three") == 2
    assert [r[2] for r in Journal(fs, "j").open().pending()] == [b"one", b"three"]


# --- compaction -------------------------------------------------------------------


def test_compaction_drops_acked_keeps_unacked_billing_ids_keep_increasing():
    fs = MemFs()
    j = Journal(fs, "j").open()
    ids = [j.append(BILLING if i % 2 else TELEMETRY, b"p%d" % i) for i in range(6)]
    j.ack(ids[0], ids[1], ids[5])
    size = j.size
    j.compact()
    assert j.size < size
    assert [r[0] for r in j.pending()] == [3, 4, 5]
    assert j.append(BILLING, b"n") == 8  # 7 was the ACK
    j.ack(3, 4, 5, 8)
    j.compact()
    assert [r[1] for r in scan(fs.files["j"])[0]] == [MARK]
    j2 = Journal(fs.reboot(), "j").open()
    assert j2.pending() == [] and j2.next_id == 10
    assert j2.append(BILLING, b"z") == 10


def test_tmp_alone_is_promoted():
    # FAT rename removed the old file and lost power before renaming the .tmp.
    fs = MemFs()
    j = Journal(fs, "j").open()
    j.append(BILLING, b"a")
    fs.files["j.tmp"] = fs.files.pop("j")
    assert Journal(fs, "j").open().pending() == [(1, BILLING, b"a")]
    assert "j.tmp" not in fs.files


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops_st, min_size=1, max_size=12), st.booleans(), st.integers(0, 3))
def test_power_cut_at_every_step_of_compaction(ops, fat, drop):
    fs = MemFs(fat=fat)
    j = Journal(fs, "j", **BIG).open()
    for op in ops:
        do(j, op)
    if j.size == 0:
        return
    old_image = bytes(fs.files["j"])
    ref = fs.clone()
    jr = Journal(ref, "j", **BIG).open()
    jr.compact(drop)
    new_state = state(jr)
    new_image = bytes(ref.files["j"])
    billing = [r for r in state(j)[0] if r[1] == BILLING]
    for k in range(ref.used + 1):
        cut = fs.clone(budget=k)
        jc = Journal(cut, "j", **BIG).open()
        try:
            jc.compact(drop)
        except PowerCut:
            pass
        jn = Journal(cut.reboot(), "j", **BIG).open()
        image = bytes(jn._fs.files["j"])
        assert image in (old_image, new_image), k
        got = state(jn)
        assert got == (state(j) if image == old_image else new_state)
        assert [r for r in got[0] if r[1] == BILLING] == billing  # never loses unacked billing


# --- space policy -------------------------------------------------------------------


def test_telemetry_dropped_oldest_first_under_soft_limit():
    j = Journal(MemFs(), "j", soft_limit=400, hard_limit=800).open()
    ids = [j.append(TELEMETRY, bytes(20)) for _ in range(40)]
    assert all(i is not None for i in ids)
    live = [r[0] for r in j.pending()]
    assert live == ids[-len(live) :]  # a suffix: the oldest went first
    assert j.dropped == 40 - len(live) > 0
    assert j.size <= 400
    assert j.compactions <= 40 // 3  # dropped in batches, not one rewrite per append


def test_billing_is_never_dropped_and_hits_the_hard_limit():
    j = Journal(MemFs(), "j", soft_limit=400, hard_limit=800).open()
    billing = []
    tel = []
    with pytest.raises(JournalFull) as e:
        while True:
            billing.append(j.append(BILLING, bytes(30)))
            tel.append(j.append(TELEMETRY, bytes(10)))
    assert e.value.code == "full"
    assert [r[0] for r in j.pending(BILLING)] == billing
    assert j.size + OVERHEAD + 30 > 800 >= j.size
    # Telemetry is refused now, without an error.
    assert j.append(TELEMETRY, b"x") is None
    # Acks always fit, and they make room.
    assert j.ack(*billing[:5]) == 5
    assert j.append(BILLING, bytes(30)) is not None


def test_reserve_keeps_room_for_open_sessions():
    j = Journal(MemFs(), "j", soft_limit=300, hard_limit=600).open()
    while j.size + OVERHEAD + 20 + 200 <= 600:
        j.append(BILLING, bytes(20), reserve=200)
    with pytest.raises(JournalFull):
        j.append(BILLING, bytes(20), reserve=200)  # a new session: refused
    j.append(BILLING, bytes(20))  # the open session's events still go in
    j.put_meta(1, bytes(20))


def test_ack_never_raises_when_full():
    j = Journal(MemFs(), "j", soft_limit=100, hard_limit=200).open()
    ids = []
    while j.size + OVERHEAD + 10 <= 200:
        ids.append(j.append(BILLING, bytes(10)))
    for i in ids:
        assert j.ack(i) == 1
    assert j.pending() == [] and j.size <= 200


@settings(max_examples=150, deadline=None)
@given(st.lists(ops_st, max_size=60), st.integers(120, 500), st.integers(0, 400))
def test_policy_against_a_model(ops, soft, extra):
    hard = soft + extra
    fs = MemFs()
    j = Journal(fs, "j", soft_limit=soft, hard_limit=hard).open()
    billing = {}  # unacked billing: id -> payload
    dropped = set()
    telemetry = {}
    for op in ops:
        try:
            rid = do(j, op)
        except JournalFull:
            assert op[0] in "bm"
            continue
        if op[0] == "b":
            billing[rid] = op[1]
        elif op[0] == "t" and rid is not None:
            telemetry[rid] = op[1]
        elif op[0] == "a":
            billing.pop(rid, None)
            telemetry.pop(rid, None)
        assert j.size <= hard
        pend = j.pending()
        assert {r[0]: r[2] for r in pend if r[1] == BILLING} == billing
        live_t = [r[0] for r in pend if r[1] == TELEMETRY]
        for k in list(telemetry):
            if k not in live_t:
                del telemetry[k]
                dropped.add(k)
        assert not dropped or not live_t or max(dropped) < min(live_t)
    assert state(Journal(fs.reboot(), "j", soft_limit=soft, hard_limit=hard).open()) == state(j)


# --- golden vectors -------------------------------------------------------------------


def _vec_module():
    spec = importlib.util.spec_from_file_location("vec_journal", os.path.join(HERE, "portable", "vec_journal.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


with open(os.path.join(HERE, "vectors", "journal.json")) as _f:
    VECTORS = json.load(_f)


def test_vectors_file_shape():
    assert VECTORS["module"] == "journal" and len(VECTORS["cases"]) >= 8
    names = [c["name"] for c in VECTORS["cases"]]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vectors(case):
    assert _vec_module().run(case["input"]) == case["expect"]


def test_journal_files_equal_encode_vectors():
    # The Journal writes exactly what the codec encodes.
    fs = MemFs()
    j = Journal(fs, "j").open()
    j.append(BILLING, b"hi")
    j.put_meta(7, b"v")
    j.ack(1)
    assert bytes(fs.files["j"]) == encode(BILLING, 1, b"hi") + encode(META, 2, b"\x07v") + encode(ACK, 3, (1).to_bytes(4, "little"))
    ix, stop = recover(fs.files["j"])
    assert (ix.next_id, stop, ix.live(), ix.meta) == (4, "end", [1], {7: 1})


def test_small_reclaims_do_not_rewrite_the_file_on_every_append():
    # Billing above the soft limit with a few dead bytes: compaction would win
    # almost nothing, so appends go on without rewriting the file each time.
    j = Journal(MemFs(), "j", soft_limit=200, hard_limit=2000).open()
    for _ in range(30):
        j.append(BILLING, bytes(20))
    j.put_meta(1, b"a")
    j.put_meta(1, b"b")
    for _ in range(20):
        j.append(BILLING, bytes(20))
    assert j.compactions == 0
