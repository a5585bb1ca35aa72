# Tests for host_tools/bridge/fastwire.py: the bridge's fast decoder gives exactly wire.decode's verdicts.
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from host_tools.bridge import fastwire
from protocol import canonjson, hmac256, wire
from tests.bridge_helpers import session_record

KEY = b"demo-station-key"
OLD = b"old-station-key-0"
SITE_KEY = b"demo-site-key-01"


def key_for(sender):
    return {"st-01": [KEY, OLD], "lot-a": SITE_KEY}.get(sender)


def outcome(fn, data, sender="st-01", leaf=None):
    try:
        m = fn(data, key_for, expect_sender=sender, leaf=leaf)
    except wire.WireError as e:
        return ("error", e.code)
    except (ValueError, TypeError) as e:
        return ("misuse", type(e).__name__)
    return ("ok", m.kind, m.sender, m.seq, m.t, json.dumps(m.body, sort_keys=True), m.raw, m.digest, m.key_index)


def same(data, sender="st-01", leaf=None):
    a = outcome(wire.decode, data, sender, leaf)
    b = outcome(fastwire.decode, data, sender, leaf)
    assert a == b, (data, a, b)
    return b


def signed(key, unsigned):
    return unsigned[:-1] + b',"sig":"' + hmac256.hexdigest(key, unsigned) + b'"}'


BODIES = [
    ("state", {"connector": 1, "status": "Charging"}, "state"),
    ("event", {"connector": 1, "type": "status", "status": "SuspendedEV", "from": "Charging"}, "event"),
    ("event", {"connector": 0, "type": "note", "text": "Caf\u00e9 \u20ac5 \U0001f697"}, "event"),
    ("event", {"connector": 0, "type": "boot", "fw": "1.2.3"}, "event"),
    ("session", session_record("st-01"), "session"),
    ("ack", {"acks": [1, 2, 3]}, "ack"),
]


def test_valid_messages_agree_and_take_the_fast_path():
    for kind, body, leaf in BODIES:
        for key in (KEY, OLD):
            data = wire.encode(key, kind, "st-01", 46, 1763835330, body)
            got = same(data, leaf=leaf)
            assert got[0] == "ok"
    # The common case really is fast: no fallback for a plain session record.
    data = wire.encode(KEY, "session", "st-01", 7, 1763835330, session_record("st-01"))
    assert fastwire._fast(data, key_for, "st-01", "session", wire.MAX_SIZE) is not None


def test_every_error_code_agrees():
    good = wire.encode(KEY, "event", "st-01", 5, 1763835330, {"connector": 1, "type": "status"})
    cases = [
        (b"{not json", "st-01", None),
        (b"x" * (wire.MAX_SIZE + 1), "st-01", None),
        (good.replace(b'"v":1', b'"v":2'), "st-01", None),
        (good[:-3] + (b"1" if good[-3:-2] == b"0" else b"0") + b'"}', "st-01", None),  # signature
        (good, "st-02", None),  # station
        (wire.encode(KEY, "event", "st-09", 5, 1, {"connector": 1, "type": "x"}), "st-09", None),  # unknown station
        (good, "st-01", "session"),  # kind
        (signed(KEY, canonjson.dumps({"b": {"connector": 1}, "k": "event", "n": 5, "s": "st-01", "t": 1, "v": 1})), "st-01", None),
        (signed(KEY, b'{"b":{"connector":1.5,"type":"x"},"k":"event","n":5,"s":"st-01","t":1,"v":1}'), "st-01", None),
        (signed(KEY, b'{"b":{"connector":1,"type":"x","big":123456789012345678901234},"k":"event","n":5,"s":"st-01","t":1,"v":1}'), "st-01", None),
        (signed(KEY, b'{"b":{"connector":1,"type":"\\ud800"},"k":"event","n":5,"s":"st-01","t":1,"v":1}'), "st-01", None),
        (signed(KEY, b'{"b":{"connector":1,"type":"x","e":1e5},"k":"event","n":5,"s":"st-01","t":1,"v":1}'), "st-01", None),
        (signed(KEY, b'{"b":' + b'[' * 40 + b']' * 40 + b',"k":"event","n":5,"s":"st-01","t":1,"v":1}'), "st-01", None),
        (signed(KEY, b'{"b":{"connector":1,"type":"x"},"k":"event","n":6,"s":"st-01","t":1,"v":1,"n":5}'), "st-01", None),
        (signed(KEY, b'{"b":{"connector":1,"type":"x"},"k":"event","n":05,"s":"st-01","t":1,"v":1}'), "st-01", None),
        (signed(KEY, b'{"b": {"connector": 1, "type": "x"},"k":"event","n":5,"s":"st-01","t":1,"v":1}'), "st-01", None),
        (signed(SITE_KEY, canonjson.dumps({"b": {"op": "tariff", "tariff": {}}, "k": "cmd", "n": 1, "s": "lot-a", "t": 1, "v": 1})), "lot-a", "occupancy"),
    ]
    codes = set()
    for data, sender, leaf in cases:
        got = same(data, sender, leaf)
        codes.add(got[1] if got[0] == "error" else got[0])
    assert {"malformed", "oversized", "version", "signature", "station", "unknown_station", "kind", "schema"} <= codes


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(range(len(BODIES))), st.integers(0, 10000), st.integers(0, 255), st.sampled_from(["flip", "cut", "insert"]))
def test_mutated_payloads_agree(which, pos, byte, how):
    kind, body, leaf = BODIES[which]
    data = wire.encode(KEY, kind, "st-01", 46, 1763835330, body)
    pos %= len(data)
    if how == "flip":
        data = data[:pos] + bytes([byte]) + data[pos + 1 :]
    elif how == "cut":
        data = data[:pos] + data[pos + 1 :]
    else:
        data = data[:pos] + bytes([byte]) + data[pos:]
    same(data, leaf=leaf)
    same(data)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
        max_leaves=12,
    )
)
def test_arbitrary_signed_bodies_agree(extra):
    # Authentic payloads with any JSON inside (what a buggy station might sign).
    body = {"connector": 1, "type": "x", "extra": extra}
    try:
        data = wire.encode(KEY, "event", "st-01", 3, 9, body)
    except (ValueError, TypeError):
        return
    same(data, leaf="event")


def test_header_and_body_bytes():
    data = wire.encode(KEY, "event", "st-01", 5, 17, {"connector": 1, "type": "status"})
    h = fastwire.header(data)
    assert (h.kind, h.sender, h.seq) == ("event", "st-01", 5)
    assert fastwire.body_bytes(data) == b'{"connector":1,"type":"status"}'
    assert fastwire.header(b"junk") is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**60), max_size=40), st.integers(0, wire.MAX_UINT), st.integers(0, wire.MAX_UINT), st.sampled_from(["st-01", "A_b-9", "x" * 32]))
def test_encode_ack_is_wire_encode(acks, seq, t, station):
    assert fastwire.encode_ack(KEY, station, seq, t, acks) == wire.encode(KEY, "ack", station, seq, t, {"acks": acks})
