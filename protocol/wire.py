# Wire messages: signed, versioned JSON envelopes and the MQTT topic map (docs/protocol.md).
#
# Theory of operation
# -------------------
# A message is one JSON object. encode() writes the canonical JSON of
#   {"b": body, "k": kind, "n": seq, "s": sender, "t": instant, "v": 1}
# (keys sorted, so the body comes first and the small header fields after
# it), signs those exact bytes with HMAC-SHA256 under the sender's key, and
# splices ,"sig":"<64 hex>" in before the final "}". The signed bytes are
# therefore the payload with the sig member cut out, and the payload stays
# plain JSON for any consumer.
#
# decode() never re-serialises. Checks run cheapest and least trusting first;
# nothing in the payload is believed before the signature verifies, except
# what is needed to reject early or to pick the key:
#   1. size                 len > max_size                  -> oversized
#   2. framing              starts {"b":, ends ,"sig":"<64 lowercase hex>"}
#                                                            -> malformed
#   3. version              ,"v":<int> just before sig; != 1 -> version
#      (every version keeps v as the last member before sig, so any decoder
#      can tell a newer envelope from a broken one)
#   4. header               ,"k":"..","n":..,"s":"..","t":.. read backwards
#                           from v with a strict grammar     -> malformed
#   5. routing              s != expect_sender               -> station
#   6. key                  key_for(s) is None               -> unknown_station
#   7. signature            HMAC over payload-minus-sig, each key in turn,
#                           compared in constant time        -> signature
#   8. JSON                 full parse (canonjson.loads: no floats) and the
#                           parsed envelope must match the header -> malformed
#   9. kind                 unknown kind, or not the one `leaf` carries -> kind
#  10. schema               body an object with its required fields -> schema
#  11. replay               guard given and seq <= last seq  -> replay
# Steps 1-6 read unauthenticated bytes and can only reject; errors from step
# 8 on describe what an authenticated peer really sent.

import hashlib
from binascii import hexlify, unhexlify

from protocol import canonjson, hmac256

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


VERSION = 1
MAX_SIZE = 16384
MAX_UINT = 9007199254740991  # 2**53 - 1: largest integer every JSON consumer reads exactly
MIN_KEY_BYTES = 16

# Kinds (the "k" member).
STATE = "state"  # station -> bridge: connector state snapshot (retained)
EVENT = "event"  # station -> bridge: status change, charge_complete, idle_tick, ...
SESSION = "session"  # station -> bridge: closed session record
ACK = "ack"  # bridge -> station: seqs committed to the database
CMD = "cmd"  # backend -> station or site: body["op"] says what to do

# Command ops (body["op"] of a cmd).
OP_TARIFF = "tariff"
OP_OCCUPANCY = "occupancy"
OP_CONFIG = "config"
OP_PAUSE = "pause"
OP_RESUME = "resume"

# Error codes (WireError.code).
ERR_MALFORMED = "malformed"  # not a well-formed envelope, or not JSON
ERR_OVERSIZED = "oversized"  # longer than max_size
ERR_VERSION = "version"  # an envelope version this code does not speak
ERR_SIGNATURE = "signature"  # no key of the sender verifies the HMAC
ERR_STATION = "station"  # s differs from expect_sender (the topic's station or site)
ERR_UNKNOWN_STATION = "unknown_station"  # key_for has no key for s
ERR_REPLAY = "replay"  # seq not above the last accepted from this sender
ERR_KIND = "kind"  # unknown kind, or a kind/op this topic does not carry
ERR_SCHEMA = "schema"  # body misses a required field or has the wrong type

# JSON types a required body field may need.
_STR = const(0)
_INT = const(1)  # integer >= 0 (never a bool)
_OBJ = const(2)
_LIST = const(3)
_UINTS = const(4)  # list of integers >= 0

# Required body fields per kind, and per op for cmd. Other fields may appear
# and are passed through unchecked.
_KIND_FIELDS = {
    STATE: (("connector", _INT), ("status", _STR)),
    EVENT: (("connector", _INT), ("type", _STR)),
    # The session record of protocol/session.py (Session.record()).
    SESSION: (
        ("session_id", _STR),
        ("connector", _INT),
        ("plug_in", _INT),
        ("unplug", _INT),
        ("fee", _INT),
        ("currency", _STR),
        ("tariff_id", _STR),
        ("tariff_version", _INT),
        ("timeline", _LIST),
    ),
    ACK: (("acks", _UINTS),),
    CMD: (("op", _STR),),
}
_OP_FIELDS = {
    OP_TARIFF: (("tariff", _OBJ),),
    OP_OCCUPANCY: (("occupancy", _INT),),
    OP_CONFIG: (("config", _OBJ),),
    OP_PAUSE: (),
    OP_RESUME: (),
}
KINDS = (STATE, EVENT, SESSION, ACK, CMD)
OPS = (OP_TARIFF, OP_OCCUPANCY, OP_CONFIG, OP_PAUSE, OP_RESUME)

# Topic map: overstay/v1/{site}/{station}/{leaf} and overstay/v1/{site}/{leaf}.
PREFIX = "overstay/v1"
STATION_LEAVES = ("state", "event", "session", "avail", "ack", "cmd")
SITE_LEAVES = ("occupancy", "tariff")
RETAINED = ("state", "avail", "occupancy", "tariff")
QOS = 1  # every topic
# The kind each signed topic carries; "avail" is absent: it is unsigned text.
LEAF_KIND = {
    "state": STATE,
    "event": EVENT,
    "session": SESSION,
    "ack": ACK,
    "cmd": CMD,
    "occupancy": CMD,
    "tariff": CMD,
}
# Site-wide topics carry exactly one op each.
LEAF_OP = {"occupancy": OP_OCCUPANCY, "tariff": OP_TARIFF}
AVAIL_ONLINE = b"online"
AVAIL_OFFLINE = b"offline"  # also the last will

_HEAD = b'{"b":'
_SIG_OPEN = b',"sig":"'
_TAIL = const(74)  # len(',"sig":"') + 64 hex digits + len('"}')


class WireError(Exception):
    """A peer sent something we refuse; `code` is one of the ERR_* constants."""

    def __init__(self, code, detail):
        super().__init__(code + ": " + detail)
        self.code = code
        self.detail = detail


class Message:
    """A decoded, verified message. Treat as read-only.

    raw is the payload exactly as received; digest is sha256(raw), for
    idempotency checks; key_index says which of key_for's keys verified it
    (0 unless a rotation list was given)."""

    __slots__ = ("kind", "sender", "seq", "t", "body", "raw", "digest", "key_index")

    def __init__(self, kind, sender, seq, t, body, raw, digest, key_index):
        self.kind = kind
        self.sender = sender
        self.seq = seq
        self.t = t
        self.body = body
        self.raw = raw
        self.digest = digest
        self.key_index = key_index

    def __repr__(self):
        return "<Message %s from %s seq %d t %d>" % (self.kind, self.sender, self.seq, self.t)


class SeqGuard:
    """Replay guard: per sender, only a sequence number above the last
    accepted one passes. `last` (sender -> seq) may be restored from storage.

    Keep one guard per topic you guard: a site's retained occupancy and
    tariff broadcasts share a sender but arrive in either order."""

    __slots__ = ("last",)

    def __init__(self, last=None):
        self.last = {} if last is None else last

    def check(self, msg):
        """Raise WireError(replay) unless msg.seq is above the sender's last."""
        prev = self.last.get(msg.sender)
        if prev is not None and msg.seq <= prev:
            raise WireError(ERR_REPLAY, "seq %d from %s is not above %d" % (msg.seq, msg.sender, prev))

    def accept(self, msg):
        """Record msg.seq as the sender's last (checks first: never goes back)."""
        self.check(msg)
        self.last[msg.sender] = msg.seq


def valid_id(s):
    """True for a site or station id: 1..32 of A-Z a-z 0-9 _ -."""
    if not isinstance(s, str) or not 1 <= len(s) <= 32:
        return False
    for c in s:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c == "_" or c == "-"):
            return False
    return True


def _id_bytes(b):
    # The byte-level twin of valid_id, for the header before decoding anything.
    if not 1 <= len(b) <= 32:
        return False
    for x in b:
        if not (0x61 <= x <= 0x7A or 0x41 <= x <= 0x5A or 0x30 <= x <= 0x39 or x == 0x5F or x == 0x2D):
            return False
    return True


def _check_id(s, what):
    if not valid_id(s):
        raise ValueError(what + " must be 1..32 characters of A-Z a-z 0-9 _ -, not " + repr(s))


def _check_uint(v, what):
    if type(v) is not int or v < 0 or v > MAX_UINT:
        raise ValueError(what + " must be an integer from 0 to 2**53-1")


def _check_key(key):
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError("key must be bytes")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError("key must be at least %d bytes" % MIN_KEY_BYTES)


def _field_problem(body, fields):
    for name, typ in fields:
        if name not in body:
            return name + " is required"
        v = body[name]
        if typ == _STR:
            ok = isinstance(v, str)
        elif typ == _INT:
            ok = type(v) is int and v >= 0
        elif typ == _OBJ:
            ok = isinstance(v, dict)
        elif typ == _LIST:
            ok = isinstance(v, list)
        else:  # _UINTS
            ok = isinstance(v, list)
            if ok:
                for x in v:
                    if type(x) is not int or x < 0:
                        ok = False
                        break
        if not ok:
            return name + " must be " + ("a string", "an integer >= 0", "an object", "a list", "a list of integers >= 0")[typ]
    return None


def _schema_problem(kind, body):
    # None when body suits kind, else a short description. kind must be known.
    if not isinstance(body, dict):
        return "body must be an object"
    p = _field_problem(body, _KIND_FIELDS[kind])
    if p is not None or kind != CMD:
        return p
    fields = _OP_FIELDS.get(body["op"])
    if fields is None:
        return "unknown op " + repr(body["op"])
    return _field_problem(body, fields)


def encode(key, kind, sender, seq, t, body, max_size=MAX_SIZE):
    """Build a signed payload (bytes). Raises ValueError/TypeError on misuse:
    unknown kind, bad id, seq or t, a body that fails its kind's schema or
    holds a float, or a payload over max_size."""
    _check_key(key)
    if kind not in _KIND_FIELDS:
        raise ValueError("unknown kind " + repr(kind))
    _check_id(sender, "sender")
    _check_uint(seq, "seq")
    _check_uint(t, "t")
    p = _schema_problem(kind, body)
    if p is not None:
        raise ValueError(kind + " body: " + p)
    signed = canonjson.dumps({"b": body, "k": kind, "n": seq, "s": sender, "t": t, "v": VERSION})
    size = len(signed) - 1 + _TAIL
    if size > max_size:
        raise ValueError("payload would be %d bytes, over %d" % (size, max_size))
    return signed[:-1] + _SIG_OPEN + hmac256.hexdigest(key, signed) + b'"}'


def _uint_at(data, a, b):
    # Canonical decimal integer in data[a:b] (no sign, no leading zero), or -1.
    s = data[a:b]
    if not 1 <= len(s) <= 16 or not s.isdigit() or (len(s) > 1 and s[0] == 0x30):
        return -1
    v = int(s)
    return v if v <= MAX_UINT else -1


def _malformed(detail):
    return WireError(ERR_MALFORMED, detail)


def decode(data, key_for, expect_sender=None, guard=None, max_size=MAX_SIZE, leaf=None):
    """Verify and parse a payload; return a Message or raise WireError.

    key_for(sender) returns the sender's key (bytes), a list/tuple of keys
    to try (rotation), or None for an unknown sender. expect_sender is the
    id the topic names (station, or site for site-wide topics); leaf, the
    topic's last segment, restricts the kind (and op) to what that topic
    carries; guard, a SeqGuard, refuses replays and records the seq."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("data must be bytes")
    if leaf is not None and leaf not in LEAF_KIND:
        raise ValueError("leaf " + repr(leaf) + " carries no signed messages")
    n = len(data)
    if n > max_size:
        raise WireError(ERR_OVERSIZED, "%d bytes, limit %d" % (n, max_size))
    if not isinstance(data, bytes):
        data = bytes(data)

    # 2. Framing.
    end = n - _TAIL  # where ,"sig":" starts
    if end < 7 or data[:5] != _HEAD or data[end : end + 8] != _SIG_OPEN or data[n - 2 :] != b'"}':
        raise _malformed('not an envelope {"b":...,"sig":"..."}')
    sighex = data[end + 8 : n - 2]
    try:
        sig = unhexlify(sighex)
    except ValueError:
        sig = b""
    if hexlify(sig) != sighex:
        raise _malformed("sig must be 64 lowercase hex digits")

    # 3. Version: ,"v":N right before the sig.
    i = data.rfind(b',"v":', 0, end)
    v = _uint_at(data, i + 5, end) if i >= 0 else -1
    if v < 0:
        raise _malformed("no version before sig")
    if v != VERSION:
        raise WireError(ERR_VERSION, "envelope version %d, this code speaks %d" % (v, VERSION))

    # 4. The rest of the header, backwards: ,"k":"K","n":N,"s":"S","t":T
    j = data.rfind(b',"t":', 0, i)
    t = _uint_at(data, j + 5, i) if j >= 0 else -1
    k = data.rfind(b',"s":"', 0, j) if j > 0 else -1
    if t < 0 or k < 0 or data[j - 1] != 0x22 or not _id_bytes(data[k + 6 : j - 1]):
        raise _malformed("bad t or s")
    sender = data[k + 6 : j - 1].decode()
    m = data.rfind(b',"n":', 0, k)
    seq = _uint_at(data, m + 5, k) if m >= 0 else -1
    p = data.rfind(b',"k":"', 0, m) if m > 0 else -1
    kind_b = data[p + 6 : m - 1] if p >= 0 else b""
    if seq < 0 or p < 5 or data[m - 1] != 0x22 or not 1 <= len(kind_b) <= 16 or not kind_b.isalpha():
        raise _malformed("bad n or k")
    kind = kind_b.decode()

    # 5, 6. Routing and key.
    if expect_sender is not None and sender != expect_sender:
        raise WireError(ERR_STATION, "sender %s on a topic of %s" % (sender, expect_sender))
    keys = key_for(sender)
    if isinstance(keys, (bytes, bytearray)):
        keys = (keys,)
    if not keys:
        raise WireError(ERR_UNKNOWN_STATION, "no key for " + sender)

    # 7. Signature over the payload without ,"sig":"...", i.e. data[:end] + "}".
    head = memoryview(data)[:end]
    key_index = -1
    for idx in range(len(keys)):
        key = keys[idx]
        _check_key(key)
        h = hmac256.Hmac(key, head)
        h.update(b"}")
        if hmac256.equal(h.digest(), sig):
            key_index = idx
            break
    if key_index < 0:
        raise WireError(ERR_SIGNATURE, "no key of %s verifies the payload" % sender)

    # 8. Now the content is authentic: parse it and cross-check the header.
    try:
        env = canonjson.loads(data)
    except ValueError as e:
        raise _malformed(str(e))
    if (
        not isinstance(env, dict)
        or len(env) != 7
        or "b" not in env
        or env.get("k") != kind
        or env.get("n") != seq
        or env.get("s") != sender
        or env.get("t") != t
        or env.get("v") != VERSION
        or env.get("sig") != sighex.decode()
    ):
        raise _malformed("envelope members disagree with the header")
    body = env["b"]

    # 9, 10. Kind and schema.
    if kind not in _KIND_FIELDS:
        raise WireError(ERR_KIND, "unknown kind " + kind)
    if leaf is not None and LEAF_KIND[leaf] != kind:
        raise WireError(ERR_KIND, "%s on the %s topic" % (kind, leaf))
    problem = _schema_problem(kind, body)
    if problem is not None:
        raise WireError(ERR_SCHEMA, kind + ": " + problem)
    if leaf in LEAF_OP and body["op"] != LEAF_OP[leaf]:
        raise WireError(ERR_KIND, "op %s on the %s topic" % (body["op"], leaf))

    msg = Message(kind, sender, seq, t, body, data, hashlib.sha256(data).digest(), key_index)
    # 11. Replay.
    if guard is not None:
        guard.accept(msg)
    return msg


# Topics ---------------------------------------------------------------------


def station_topic(site, station, leaf):
    """overstay/v1/{site}/{station}/{leaf}; leaf one of STATION_LEAVES."""
    _check_id(site, "site")
    _check_id(station, "station")
    if leaf not in STATION_LEAVES:
        raise ValueError("unknown station topic leaf " + repr(leaf))
    return PREFIX + "/" + site + "/" + station + "/" + leaf


def site_topic(site, leaf):
    """overstay/v1/{site}/{leaf}; leaf one of SITE_LEAVES."""
    _check_id(site, "site")
    if leaf not in SITE_LEAVES:
        raise ValueError("unknown site topic leaf " + repr(leaf))
    return PREFIX + "/" + site + "/" + leaf


def topic_filter(leaf, site=None):
    """Subscription filter for a leaf across all stations (and sites, unless
    site is given): overstay/v1/+/+/state, overstay/v1/s1/occupancy, ..."""
    if site is None:
        site = "+"
    else:
        _check_id(site, "site")
    if leaf in STATION_LEAVES:
        return PREFIX + "/" + site + "/+/" + leaf
    if leaf in SITE_LEAVES:
        return PREFIX + "/" + site + "/" + leaf
    raise ValueError("unknown topic leaf " + repr(leaf))


def parse_topic(topic):
    """(site, station, leaf) for a station topic, (site, None, leaf) for a
    site-wide one, None for anything else. topic may be str or bytes."""
    if isinstance(topic, (bytes, bytearray)):
        try:
            topic = bytes(topic).decode()
        except ValueError:
            return None
    if not topic.startswith(PREFIX + "/"):
        return None
    parts = topic[len(PREFIX) + 1 :].split("/")
    if len(parts) == 3 and parts[2] in STATION_LEAVES and valid_id(parts[0]) and valid_id(parts[1]):
        return parts[0], parts[1], parts[2]
    if len(parts) == 2 and parts[1] in SITE_LEAVES and valid_id(parts[0]):
        return parts[0], None, parts[1]
    return None
