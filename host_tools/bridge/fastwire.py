# CPython fast path of protocol.wire.decode for the bridge: C hmac and json, same verdicts, falls back to wire.decode.
#
# wire.decode is written for MicroPython (HMAC pads built byte by byte, a
# constant-time compare in a Python loop, a walk over the parsed JSON); on
# the bridge it costs about 60 us per session record. decode() here accepts
# a payload only when every check wire.decode makes also passes, using
# CPython's C implementations (hmac, hmac.compare_digest, json); on ANY
# doubt (a failed check, a surrogate escape, deep nesting, a float, an
# exception) it calls wire.decode itself, so every rejection and its error
# code come from the reference implementation. tests/test_bridge_fastwire.py
# checks the two agree on valid, mutated and forged payloads.
import hashlib
import hmac
import json
import re

from protocol import wire

# The header wire.decode reads backwards from the sig (steps 2 to 4), as one
# anchored pattern: a payload matching it is parsed identically by both.
_TAIL_RE = re.compile(
    rb',"k":"([A-Za-z]{1,16})","n":(0|[1-9][0-9]{0,15}),"s":"([A-Za-z0-9_-]{1,32})",'
    rb'"t":(0|[1-9][0-9]{0,15}),"v":1,"sig":"([0-9a-f]{64})"\}\Z'
)


def _no_float(text):
    raise ValueError("float")


_MAX_TAIL = 260  # longest possible match of _TAIL_RE
_SHA256 = hashlib.sha256
# A number json would read as a float ("." or a digit then e/E), or a run of
# 19+ digits (orjson turns integers beyond 64 bits into floats; so no
# integer on the fast path is beyond the 64-bit range). Strings can trigger
# it too (a hex id, a version "1.2"): that only means the slow path. (One
# regular expression for all of it costs 6x more: Python's re retries each
# alternative at every byte.)
_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")


def _floatish(data):
    if b"." in data:
        return True
    z = data.translate(_TO_ZERO)
    return b"0e" in z or b"0E" in z or b"0000000000000000000" in z


def _doubtful(data, end):
    """True when data[:end] (the signed part) holds a float, a huge integer or
    a surrogate (escaped \\ud800.. or raw UTF-8 ED A0..ED BF), which
    canonjson.loads repairs or refuses: wire.decode decides those."""
    if _floatish(data[:end]):
        return True
    if b"\\u" in data and (b"\\ud" in data or b"\\uD" in data):
        return True
    return b"\xed" in data


class FastMessage(wire.Message):
    """A wire.Message from the fast path; body_end is where the body's JSON
    text ends in raw (it starts at 5), and every integer in it has at most
    18 digits (so fits a 64-bit column)."""

    __slots__ = ("body_end",)

    def __init__(self, kind, sender, seq, t, body, raw, digest, key_index, body_end):
        wire.Message.__init__(self, kind, sender, seq, t, body, raw, digest, key_index)
        self.body_end = body_end


try:  # orjson parses a session record about 5x faster than json
    import orjson

    def _loads(data):
        return orjson.loads(data)

    def dumps(obj):
        """Compact JSON text (for the database's JSON columns)."""
        return orjson.dumps(obj).decode()

except ImportError:  # pragma: no cover - orjson is a dependency, json is the fallback

    def _loads(data):
        return json.loads(data.decode("utf-8"), parse_float=_no_float, parse_constant=_no_float)

    def dumps(obj):
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# HMAC objects keyed and ready per key: copy() skips the pad computation.
_BASES = {}
_MAX_BASES = 100000


def decode(data, key_for, expect_sender=None, leaf=None, max_size=wire.MAX_SIZE):
    """Same contract as wire.decode (without a guard): a wire.Message or WireError."""
    msg = _fast(data, key_for, expect_sender, leaf, max_size)
    if msg is None:
        return wire.decode(data, key_for, expect_sender=expect_sender, max_size=max_size, leaf=leaf)
    return msg


def _fast(data, key_for, expect_sender, leaf, max_size):
    try:
        n = len(data)
        if n > max_size or type(data) is not bytes or data[:5] != b'{"b":':
            return None
        m = _TAIL_RE.search(data, n - _MAX_TAIL if n > _MAX_TAIL else 0)
        if m is None or m.start() < 5:
            return None
        kind_b, n_b, s_b, t_b, sig_b = m.groups()
        seq = int(n_b)
        t = int(t_b)
        if seq > wire.MAX_UINT or t > wire.MAX_UINT:
            return None
        sender = s_b.decode()
        if expect_sender is not None and sender != expect_sender:
            return None
        keys = key_for(sender)
        if isinstance(keys, (bytes, bytearray)):
            keys = (keys,)
        if not keys:
            return None
        end = n - 74  # the signed bytes are data[:end] + b"}"
        sig = bytes.fromhex(sig_b.decode())
        key_index = -1
        view = memoryview(data)[:end]
        for idx, key in enumerate(keys):
            base = _BASES.get(key)
            if base is None:
                if not isinstance(key, (bytes, bytearray)) or len(key) < wire.MIN_KEY_BYTES:
                    return None
                if len(_BASES) >= _MAX_BASES:
                    _BASES.clear()
                base = _BASES[bytes(key)] = hmac.new(key, digestmod=_SHA256)
            h = base.copy()
            h.update(view)
            h.update(b"}")
            if hmac.compare_digest(h.digest(), sig):
                key_index = idx
                break
        view.release()
        if key_index < 0:
            return None
        # Floats, huge integers and surrogates go to the reference decoder;
        # the bracket count bounds the nesting depth.
        if _doubtful(data, end):
            return None
        if data.count(b"{") + data.count(b"[") > wire.canonjson.MAX_DEPTH:
            return None
        env = _loads(data)
        kind = kind_b.decode()
        if (
            type(env) is not dict
            or len(env) != 7
            or "b" not in env
            or env.get("k") != kind
            or env.get("n") != seq
            or env.get("s") != sender
            or env.get("t") != t
            or env.get("v") != wire.VERSION
            or env.get("sig") != sig_b.decode()
        ):
            return None
        if kind not in wire.KINDS or (leaf is not None and wire.LEAF_KIND[leaf] != kind):
            return None
        body = env["b"]
        if wire._schema_problem(kind, body) is not None:
            return None
        if leaf in wire.LEAF_OP and body["op"] != wire.LEAF_OP[leaf]:
            return None
        return FastMessage(kind, sender, seq, t, body, data, _SHA256(data).digest(), key_index, m.start())
    except Exception:  # any doubt: the reference implementation decides
        return None


def encode_ack(key, station, seq, t, acks):
    """wire.encode(key, "ack", station, seq, t, {"acks": acks}) with C HMAC:
    the canonical bytes of this one shape are written directly (ids and
    integers need no escaping). tests/test_bridge_fastwire.py checks it is
    byte for byte wire.encode's output."""
    if not wire.valid_id(station) or not isinstance(key, (bytes, bytearray)) or len(key) < wire.MIN_KEY_BYTES:
        return wire.encode(key, wire.ACK, station, seq, t, {"acks": acks})
    for x in (seq, t):
        if type(x) is not int or not 0 <= x <= wire.MAX_UINT:
            return wire.encode(key, wire.ACK, station, seq, t, {"acks": acks})
    parts = []
    for x in acks:
        if type(x) is not int or x < 0:
            return wire.encode(key, wire.ACK, station, seq, t, {"acks": acks})
        parts.append("%d" % x)
    signed = ('{"b":{"acks":[%s]},"k":"ack","n":%d,"s":"%s","t":%d,"v":1}' % (",".join(parts), seq, station, t)).encode()
    if len(signed) - 1 + 74 > wire.MAX_SIZE:
        return wire.encode(key, wire.ACK, station, seq, t, {"acks": acks})  # raises ValueError like wire.encode
    return signed[:-1] + b',"sig":"' + hmac.new(key, signed, _SHA256).hexdigest().encode() + b'"}'


class Header:
    """kind, sender and seq read from a payload's header (not verified by itself)."""

    __slots__ = ("kind", "sender", "seq")

    def __init__(self, kind, sender, seq):
        self.kind = kind
        self.sender = sender
        self.seq = seq


def header(raw):
    """The header of a well-framed payload, or None. Only meaningful once the
    signature has verified (wire raised a code from after that step)."""
    try:
        m = _TAIL_RE.search(raw, len(raw) - _MAX_TAIL if len(raw) > _MAX_TAIL else 0)
    except TypeError:
        return None
    if m is None:
        return None
    return Header(m.group(1).decode(), m.group(3).decode(), int(m.group(2)))


def body_bytes(raw):
    """The body's JSON text exactly as signed (raw minus the envelope), for content digests."""
    m = _TAIL_RE.search(raw, len(raw) - _MAX_TAIL if len(raw) > _MAX_TAIL else 0)
    return raw[5 : m.start()] if m else raw


def msg_body_bytes(msg):
    """body_bytes(msg.raw), without searching again for a fast-path message."""
    end = getattr(msg, "body_end", None)
    return msg.raw[5:end] if end is not None else body_bytes(msg.raw)
