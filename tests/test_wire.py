# Tests for protocol/wire.py: envelopes, signatures, every error code, topics, golden vectors.

import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import canonjson, hmac256, wire
from protocol.wire import WireError

HERE = Path(__file__).resolve().parent
KEY = b"demo-station-key"
SITE_KEY = b"demo-site-key-01"
T = 1763830800
STATE_BODY = {"connector": 1, "status": "Charging"}


def key_for(sender):
    return {"st-01": KEY, "lot-a": SITE_KEY}.get(sender)


def any_key(sender):
    # Every sender gets the same key: a flipped sender byte must still fail.
    return KEY


def signed(key, unsigned):
    """Sign arbitrary bytes the way encode() does, to forge odd-but-signed payloads."""
    return unsigned[:-1] + b',"sig":"' + hmac256.hexdigest(key, unsigned) + b'"}'


def envelope(body, kind="state", s="st-01", n=1, t=T, v=1):
    return canonjson.dumps({"b": body, "k": kind, "n": n, "s": s, "t": t, "v": v})


def code_of(data, kf=key_for, **kw):
    with pytest.raises(WireError) as e:
        wire.decode(data, kf, **kw)
    return e.value.code


# JSON bodies of every allowed type, added to a kind's required fields.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=20,
)
required = {
    "state": {"connector": 1, "status": "Finishing"},
    "event": {"connector": 0, "type": "charge_complete"},
    "session": {
        "session_id": "s1",
        "connector": 2,
        "plug_in": T,
        "unplug": T + 60,
        "fee": 0,
        "currency": "USD",
        "tariff_id": "T0",
        "tariff_version": 1,
        "timeline": [{"t": T, "status": "Charging"}, {"t": T + 60, "status": "Available"}],
    },
    "ack": {"acks": [1, 2, 3]},
    "cmd": {"op": "config", "config": {"i_idle_ma": 1000}},
}
bodies = st.tuples(st.sampled_from(sorted(required)), st.dictionaries(st.text(max_size=8), json_values, max_size=6)).map(
    lambda kb: (kb[0], dict(kb[1], **required[kb[0]]))
)
ids = st.from_regex(r"\A[A-Za-z0-9_-]{1,32}\Z")
uints = st.integers(min_value=0, max_value=wire.MAX_UINT)


# Round trips ------------------------------------------------------------------


@given(bodies, ids, uints, uints)
def test_round_trip(kind_body, sender, seq, t):
    kind, body = kind_body
    data = wire.encode(KEY, kind, sender, seq, t, body)
    assert data.isascii()
    json.loads(data)  # plain JSON for any consumer
    m = wire.decode(data, any_key, expect_sender=sender, leaf=kind)
    assert (m.kind, m.sender, m.seq, m.t, m.body) == (kind, sender, seq, t, body)
    assert m.raw == data
    assert m.digest == hashlib.sha256(data).digest()
    assert m.key_index == 0


@given(bodies, st.data())
@settings(max_examples=200)
def test_any_flipped_byte_fails(kind_body, data):
    kind, body = kind_body
    payload = wire.encode(KEY, kind, "st-01", 5, T, body)
    pos = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    mask = data.draw(st.integers(min_value=1, max_value=255))
    bad = bytearray(payload)
    bad[pos] ^= mask
    with pytest.raises(WireError):
        wire.decode(bytes(bad), any_key)


def test_every_position_of_one_payload_is_covered():
    payload = wire.encode(KEY, "event", "st-01", 5, T, {"connector": 1, "type": "status", "note": "é"})
    for pos in range(len(payload)):
        for mask in (0x01, 0x20, 0x80):
            bad = bytearray(payload)
            bad[pos] ^= mask
            with pytest.raises(WireError):
                wire.decode(bytes(bad), any_key)


def test_truncated_or_extended_fails():
    payload = wire.encode(KEY, "state", "st-01", 5, T, STATE_BODY)
    for n in range(len(payload)):
        with pytest.raises(WireError):
            wire.decode(payload[:n], any_key)
    for extra in (b" ", b"\n", b"}", b"x"):
        with pytest.raises(WireError):
            wire.decode(payload + extra, any_key)
        with pytest.raises(WireError):
            wire.decode(extra + payload, any_key)


def test_layout():
    payload = wire.encode(KEY, "state", "st-01", 5, T, STATE_BODY)
    head = b'{"b":{"connector":1,"status":"Charging"},"k":"state","n":5,"s":"st-01","t":1763830800,"v":1'
    assert payload.startswith(head + b',"sig":"')
    assert payload[len(head) + 8 : -2] == hmac256.hexdigest(KEY, head + b"}")
    assert payload.endswith(b'"}') and len(payload) == len(head) + 74


def test_accepts_bytearray_and_memoryview():
    payload = wire.encode(KEY, "state", "st-01", 5, T, STATE_BODY)
    assert wire.decode(bytearray(payload), key_for).raw == payload
    assert wire.decode(memoryview(payload), key_for).raw == payload
    with pytest.raises(TypeError):
        wire.decode(payload.decode(), key_for)


def test_key_rotation():
    old, new = b"old-station-key-0", b"new-station-key-1"
    payload = wire.encode(new, "state", "st-01", 5, T, STATE_BODY)
    assert wire.decode(payload, lambda s: [old, new]).key_index == 1
    assert wire.decode(payload, lambda s: (new,)).key_index == 0
    assert code_of(payload, lambda s: [old]) == wire.ERR_SIGNATURE


# One test per error code --------------------------------------------------------


def test_oversized():
    payload = wire.encode(KEY, "state", "st-01", 5, T, STATE_BODY)
    assert wire.decode(payload, key_for, max_size=len(payload)).seq == 5
    assert code_of(payload, max_size=len(payload) - 1) == wire.ERR_OVERSIZED
    assert code_of(b"x" * (wire.MAX_SIZE + 1)) == wire.ERR_OVERSIZED


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"online",
        b"{}",
        b'{"b":{}}',
        b"[" + b"0" * 200 + b"]",
        # sig of the wrong length, in upper case, or not hex
        b'{"b":{},"k":"state","n":1,"s":"st-01","t":1,"v":1,"sig":"' + b"0" * 63 + b'"}',
        b'{"b":{},"k":"state","n":1,"s":"st-01","t":1,"v":1,"sig":"' + b"A" * 64 + b'"}',
        b'{"b":{},"k":"state","n":1,"s":"st-01","t":1,"v":1,"sig":"' + b"g" * 64 + b'"}',
        # header fields out of order, missing, or not canonical
        b'{"b":{},"n":1,"k":"state","s":"st-01","t":1,"v":1,"sig":"' + b"0" * 64 + b'"}',
        b'{"b":{},"k":"state","n":1,"t":1,"v":1,"sig":"' + b"0" * 64 + b'"}',
        b'{"b":{},"k":"state","n":01,"s":"st-01","t":1,"v":1,"sig":"' + b"0" * 64 + b'"}',
        b'{"b":{},"k":"state","n":-1,"s":"st-01","t":1,"v":1,"sig":"' + b"0" * 64 + b'"}',
        b'{"b":{},"k":"state","n":1,"s":"st 01","t":1,"v":1,"sig":"' + b"0" * 64 + b'"}',
        b'{"b":{},"k":"state","n":1,"s":"st-01","t":1.0,"v":1,"sig":"' + b"0" * 64 + b'"}',
        b'{"b":{},"k":"st4te","n":1,"s":"st-01","t":1,"v":1,"sig":"' + b"0" * 64 + b'"}',
        b'{"b":{}, "k":"state","n":1,"s":"st-01","t":1,"v":1, "sig":"' + b"0" * 64 + b'"}',
        b'{"b":{},"k":"state","n":1,"s":"st-01","t":99999999999999999,"v":1,"sig":"' + b"0" * 64 + b'"}',
    ],
)
def test_malformed_framing(data):
    assert code_of(data, any_key) == wire.ERR_MALFORMED


@pytest.mark.parametrize(
    "unsigned",
    [
        b'{"b":{"connector":1,"status":"x","f":1.5},"k":"state","n":1,"s":"st-01","t":1,"v":1}',  # float
        b'{"b":{"connector":1,"status":"x","f":NaN},"k":"state","n":1,"s":"st-01","t":1,"v":1}',
        b'{"b":{"connector":1,"status":"\\ud800"},"k":"state","n":1,"s":"st-01","t":1,"v":1}',  # lone surrogate
        b'{"b":{"connector":1,"status":"x",},"k":"state","n":1,"s":"st-01","t":1,"v":1}',  # not JSON
        b'{"b":{"connector":1,"status":"\xff"},"k":"state","n":1,"s":"st-01","t":1,"v":1}',  # not UTF-8
        # the parsed envelope has other members than the header
        b'{"b":{},"x":"y","k":"state","n":1,"s":"st-01","t":1,"v":1}',
        b'{"b":{"connector":1,"status":"x"},"k":"state","n":1,"s":"st-01","t":1,"v":1,"t":2}',
    ],
)
def test_malformed_content_after_signature(unsigned):
    assert code_of(signed(KEY, unsigned)) == wire.ERR_MALFORMED


def test_header_lookalikes_in_the_body_do_not_confuse_the_reader():
    fake = ',"k":"cmd","n":99,"s":"st-02","t":0,"v":1,"sig":"' + "0" * 64 + '"}'
    body = {"connector": 1, "status": "x", "note": fake, "n": 99, "s": "st-02", "v": 2, "k": "cmd"}
    m = wire.decode(wire.encode(KEY, "state", "st-01", 5, T, body), key_for)
    assert (m.kind, m.sender, m.seq, m.t, m.body) == ("state", "st-01", 5, T, body)


def test_version():
    assert code_of(signed(KEY, envelope(STATE_BODY, v=2))) == wire.ERR_VERSION
    assert code_of(signed(KEY, envelope(STATE_BODY, v=0))) == wire.ERR_VERSION
    # A future envelope may add members (sorting before "v") and sign differently:
    future = b'{"b":{},"k":"state","n":1,"p":"x","s":"st-01","t":1,"v":2,"sig":"' + b"0" * 64 + b'"}'
    assert code_of(future, any_key) == wire.ERR_VERSION


def test_signature():
    payload = wire.encode(KEY, "state", "st-01", 5, T, STATE_BODY)
    assert code_of(payload, lambda s: b"another-station-key") == wire.ERR_SIGNATURE
    tampered = payload.replace(b"Charging", b"Finishin")
    assert code_of(tampered) == wire.ERR_SIGNATURE


def test_station():
    payload = wire.encode(KEY, "state", "st-01", 5, T, STATE_BODY)
    assert code_of(payload, expect_sender="st-02") == wire.ERR_STATION
    assert wire.decode(payload, key_for, expect_sender="st-01").sender == "st-01"


def test_unknown_station():
    payload = wire.encode(KEY, "state", "st-09", 5, T, STATE_BODY)
    assert code_of(payload) == wire.ERR_UNKNOWN_STATION
    assert code_of(payload, lambda s: []) == wire.ERR_UNKNOWN_STATION


def test_replay():
    guard = wire.SeqGuard()
    p5 = wire.encode(KEY, "cmd", "st-01", 5, T, {"op": "pause"})
    p6 = wire.encode(KEY, "cmd", "st-01", 6, T, {"op": "resume"})
    assert wire.decode(p5, key_for, guard=guard).seq == 5
    assert code_of(p5, guard=guard) == wire.ERR_REPLAY
    assert wire.decode(p6, key_for, guard=guard).seq == 6
    assert code_of(p5, guard=guard) == wire.ERR_REPLAY
    assert code_of(p6, guard=guard) == wire.ERR_REPLAY
    assert guard.last == {"st-01": 6}
    # Senders are independent; a restored guard keeps refusing.
    site = wire.encode(SITE_KEY, "cmd", "lot-a", 1, T, {"op": "occupancy", "occupancy": 40})
    assert wire.decode(site, key_for, guard=guard).seq == 1
    assert code_of(p6, guard=wire.SeqGuard(dict(guard.last))) == wire.ERR_REPLAY


def test_seqguard_check_does_not_record():
    guard = wire.SeqGuard()
    m = wire.decode(wire.encode(KEY, "cmd", "st-01", 3, T, {"op": "pause"}), key_for)
    guard.check(m)
    guard.check(m)
    guard.accept(m)
    with pytest.raises(WireError) as e:
        guard.check(m)
    assert e.value.code == wire.ERR_REPLAY
    with pytest.raises(WireError):
        guard.accept(m)


def test_kind():
    assert code_of(signed(KEY, envelope({}, kind="telemetry"))) == wire.ERR_KIND
    state = wire.encode(KEY, "state", "st-01", 5, T, STATE_BODY)
    assert code_of(state, leaf="cmd") == wire.ERR_KIND  # a reflected upstream message
    tariff = wire.encode(SITE_KEY, "cmd", "lot-a", 5, T, {"op": "tariff", "tariff": {"id": "T0"}})
    assert wire.decode(tariff, key_for, expect_sender="lot-a", leaf="tariff").body["op"] == "tariff"
    assert code_of(tariff, leaf="occupancy") == wire.ERR_KIND
    assert wire.decode(tariff, key_for, leaf="cmd").kind == "cmd"  # any op on a station's cmd topic
    with pytest.raises(ValueError):
        wire.decode(state, key_for, leaf="avail")


@pytest.mark.parametrize(
    "kind, body",
    [
        ("state", []),
        ("state", "x"),
        ("state", {"connector": 1}),
        ("state", {"connector": True, "status": "x"}),
        ("state", {"connector": -1, "status": "x"}),
        ("state", {"connector": 1, "status": 5}),
        ("event", {"connector": 1}),
        ("session", {"session_id": "s", "connector": 1, "plug_in": 1, "unplug": 2, "fee": "500", "currency": "USD", "tariff_id": "T", "tariff_version": 1, "timeline": []}),
        ("ack", {"acks": 5}),
        ("ack", {"acks": [1, -2]}),
        ("ack", {"acks": [1, False]}),
        ("cmd", {}),
        ("cmd", {"op": "reboot"}),
        ("cmd", {"op": "tariff"}),
        ("cmd", {"op": "tariff", "tariff": []}),
        ("cmd", {"op": "occupancy", "occupancy": "40"}),
        ("cmd", {"op": "config", "config": None}),
    ],
)
def test_schema(kind, body):
    assert code_of(signed(KEY, envelope(body, kind=kind))) == wire.ERR_SCHEMA
    with pytest.raises((ValueError, TypeError)):
        wire.encode(KEY, kind, "st-01", 1, T, body)


def test_error_codes_are_distinct():
    codes = [getattr(wire, n) for n in dir(wire) if n.startswith("ERR_")]
    assert len(codes) == len(set(codes)) == 9
    e = WireError(wire.ERR_REPLAY, "seq 3")
    assert (e.code, e.detail, str(e)) == ("replay", "seq 3", "replay: seq 3")


# Encoder misuse ---------------------------------------------------------------


@pytest.mark.parametrize(
    "args, exc",
    [
        ((KEY, "state", "st-01", 1, T, dict(STATE_BODY, power=7.5)), TypeError),
        ((KEY, "nope", "st-01", 1, T, STATE_BODY), ValueError),
        ((KEY, "state", "", 1, T, STATE_BODY), ValueError),
        ((KEY, "state", "st/01", 1, T, STATE_BODY), ValueError),
        ((KEY, "state", "x" * 33, 1, T, STATE_BODY), ValueError),
        ((KEY, "state", "st-01", -1, T, STATE_BODY), ValueError),
        ((KEY, "state", "st-01", True, T, STATE_BODY), ValueError),
        ((KEY, "state", "st-01", 1, 1.5, STATE_BODY), ValueError),
        ((KEY, "state", "st-01", wire.MAX_UINT + 1, T, STATE_BODY), ValueError),
        ((b"short", "state", "st-01", 1, T, STATE_BODY), ValueError),
        (("demo-station-key", "state", "st-01", 1, T, STATE_BODY), TypeError),
    ],
)
def test_encode_misuse(args, exc):
    with pytest.raises(exc):
        wire.encode(*args)


def test_encode_refuses_oversized_payload():
    body = dict(STATE_BODY, pad="x" * wire.MAX_SIZE)
    with pytest.raises(ValueError):
        wire.encode(KEY, "state", "st-01", 1, T, body)
    small = wire.encode(KEY, "state", "st-01", 1, T, STATE_BODY)
    assert wire.encode(KEY, "state", "st-01", 1, T, STATE_BODY, max_size=len(small)) == small
    with pytest.raises(ValueError):
        wire.encode(KEY, "state", "st-01", 1, T, STATE_BODY, max_size=len(small) - 1)


# Topics -----------------------------------------------------------------------


def test_topics():
    assert wire.station_topic("lot-a", "st-01", "state") == "overstay/v1/lot-a/st-01/state"
    assert wire.site_topic("lot-a", "tariff") == "overstay/v1/lot-a/tariff"
    assert wire.topic_filter("event") == "overstay/v1/+/+/event"
    assert wire.topic_filter("cmd", site="lot-a") == "overstay/v1/lot-a/+/cmd"
    assert wire.topic_filter("occupancy") == "overstay/v1/+/occupancy"
    for leaf in wire.STATION_LEAVES:
        t = wire.station_topic("lot-a", "st-01", leaf)
        assert wire.parse_topic(t) == ("lot-a", "st-01", leaf)
        assert wire.parse_topic(t.encode()) == ("lot-a", "st-01", leaf)
    for leaf in wire.SITE_LEAVES:
        assert wire.parse_topic(wire.site_topic("lot-a", leaf)) == ("lot-a", None, leaf)
    assert set(wire.LEAF_KIND) == (set(wire.STATION_LEAVES) | set(wire.SITE_LEAVES)) - {"avail"}


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "overstay/v1",
        "overstay/v2/lot-a/st-01/state",
        "overstay/v1/lot-a/st-01/unknown",
        "overstay/v1/lot-a/st-01/state/extra",
        "overstay/v1/lot-a/st-01",
        "overstay/v1/lot-a/state",
        "overstay/v1/lot a/st-01/state",
        "overstay/v1/+/st-01/state",
        "overstay/v1//st-01/state",
        b"overstay/v1/lot-a/\xff/state",
    ],
)
def test_parse_topic_rejects(topic):
    assert wire.parse_topic(topic) is None


@pytest.mark.parametrize("site, station", [("", "st"), ("a/b", "st"), ("lot", "+"), ("lot", "#"), ("x" * 33, "st")])
def test_topic_ids_validated(site, station):
    with pytest.raises(ValueError):
        wire.station_topic(site, station, "state")


@given(ids, ids, st.sampled_from(wire.STATION_LEAVES))
def test_topic_round_trip(site, station, leaf):
    assert wire.parse_topic(wire.station_topic(site, station, leaf)) == (site, station, leaf)


# Golden vectors and documentation ----------------------------------------------


def _load_vec_wire():
    spec = importlib.util.spec_from_file_location("vec_wire", HERE / "portable" / "vec_wire.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


VECTORS = json.loads((HERE / "vectors" / "wire.json").read_text(encoding="utf-8"))


def test_vectors_file_shape():
    assert VECTORS["module"] == "wire"
    names = [c["name"] for c in VECTORS["cases"]]
    assert len(names) == len(set(names)) >= 10
    # MicroPython's json.loads mangles escaped surrogate pairs, so the file
    # carries non-BMP characters as raw UTF-8, never as \ud83d-style escapes.
    raw = (HERE / "vectors" / "wire.json").read_text(encoding="utf-8")
    assert not re.search(r"(?<!\\)\\u[dD][89abAB]", raw)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_vectors(case):
    assert _load_vec_wire().run(case["input"]) == case["expect"]


def test_vector_encodes_decode_back():
    vec = _load_vec_wire()
    for case in VECTORS["cases"]:
        inp = case["input"]
        if inp["op"] != "encode":
            continue
        m = wire.decode(case["expect"]["payload"].encode(), lambda s: bytes.fromhex(inp["key"]))
        assert (m.kind, m.sender, m.seq, m.t, m.body) == (inp["kind"], inp["sender"], inp["seq"], inp["t"], inp["body"])
    assert vec  # loaded


def test_docs_examples_verify():
    # Every envelope shown in docs/protocol.md decodes under the documented demo keys.
    text = (HERE.parent / "docs" / "protocol.md").read_text(encoding="utf-8")
    payloads = re.findall(r'^(\{"b":.*"\})$', text, flags=re.M)
    assert len(payloads) >= 8
    demo = {"st-01": b"demo-station-key", "lot-a": b"demo-site-key-01"}
    for p in payloads:
        wire.decode(p.encode(), demo.get)
