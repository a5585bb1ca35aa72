# Tests for protocol/mqtt.py: encoders against a reference, the incremental decoder (chunking, limits, malformed input), the session.

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import mqtt
from protocol.mqtt import ConnAck, MqttError, PingResp, PubAck, Publish, SubAck, UnsubAck

# ---------------------------------------------------------------- a reference encoder
# Written from the MQTT 3.1.1 text with struct, independently of the module's
# buffer arithmetic, so both have to agree byte for byte.


def ref_varint(n):
    out = b""
    while True:
        n, digit = divmod(n, 128)
        if n:
            out += bytes([digit | 0x80])
        else:
            return out + bytes([digit])


def ref_str(b):
    return struct.pack(">H", len(b)) + b


def ref_packet(first, body):
    return bytes([first]) + ref_varint(len(body)) + body


def ref_connect(cid, ka, clean, will, user, pw):
    flags = (0x02 if clean else 0) | (0x80 if user is not None else 0) | (0x40 if pw is not None else 0)
    payload = ref_str(cid.encode())
    if will:
        t, p, q, r = will
        flags |= 0x04 | (q << 3) | (0x20 if r else 0)
        payload += ref_str(t.encode()) + ref_str(p)
    if user is not None:
        payload += ref_str(user.encode())
    if pw is not None:
        payload += ref_str(pw)
    return ref_packet(0x10, b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack(">H", ka) + payload)


def ref_publish(topic, payload, qos, retain, dup, pid):
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    return ref_packet(first, ref_str(topic.encode()) + (struct.pack(">H", pid) if qos else b"") + payload)


# ---------------------------------------------------------------- strategies

level = st.text(
    alphabet=st.characters(blacklist_characters="+#/\x00", blacklist_categories=("Cs",)), min_size=0, max_size=8
)
topics = st.lists(level, min_size=1, max_size=4).map("/".join).filter(lambda t: 0 < len(t.encode()) <= 200)
pids = st.integers(1, 65535)
payloads = st.binary(max_size=300)


@st.composite
def publishes(draw):
    qos = draw(st.integers(0, 2))
    return Publish(
        draw(topics),
        draw(payloads),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(pids) if qos else 0,
    )


server_events = st.one_of(
    publishes(),
    st.builds(PubAck, pids),
    st.builds(SubAck, pids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=5).map(tuple)),
    st.builds(UnsubAck, pids),
    st.builds(lambda sp, rc: ConnAck(sp and rc == 0, rc), st.booleans(), st.integers(0, 5)),
    st.just(PingResp()),
)


def encode_event(ev):
    if isinstance(ev, Publish):
        return bytes(mqtt.publish(ev.topic, ev.payload, ev.qos, ev.retain, ev.dup, ev.pid))
    if isinstance(ev, PubAck):
        return mqtt.puback(ev.pid)
    if isinstance(ev, SubAck):
        return mqtt.suback(ev.pid, ev.granted)
    if isinstance(ev, UnsubAck):
        return mqtt.unsuback(ev.pid)
    if isinstance(ev, ConnAck):
        return mqtt.connack(ev.session_present, ev.rc)
    return mqtt.pingresp()


def split(data, cuts):
    cuts = sorted(set(c % (len(data) + 1) for c in cuts))
    out, prev = [], 0
    for c in cuts:
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out


def decode_all(chunks, max_packet=mqtt.MAX_PACKET):
    d = mqtt.Decoder(max_packet)
    events = []
    for c in chunks:
        d.receive_data(c)
        while True:
            ev = d.next_event()
            if ev is None:
                break
            events.append(ev)
    return events, d


# ---------------------------------------------------------------- encoders


@given(
    cid=st.text(alphabet="abcdefghij-_0123456789", min_size=1, max_size=23),
    ka=st.integers(0, 65535),
    clean=st.booleans(),
    will=st.none() | st.tuples(topics, st.binary(max_size=50), st.integers(0, 2), st.booleans()),
    user=st.none() | st.text(alphabet="abcxyz", max_size=10),
    pw=st.binary(max_size=20),
)
def test_connect_matches_reference(cid, ka, clean, will, user, pw):
    pw = pw if user is not None else None
    w = will or (None, b"", 0, False)
    got = mqtt.connect(cid, ka, clean, w[0], w[1], w[2], w[3], user, pw)
    assert got == ref_connect(cid, ka, clean, will, user, pw)


@given(ev=publishes())
def test_publish_matches_reference(ev):
    got = mqtt.publish(ev.topic, ev.payload, ev.qos, ev.retain, ev.dup, ev.pid)
    assert isinstance(got, bytearray)
    assert bytes(got) == ref_publish(ev.topic, ev.payload, ev.qos, ev.retain, ev.dup, ev.pid)


@given(pid=pids, subs=st.lists(st.tuples(topics, st.integers(0, 2)), min_size=1, max_size=4))
def test_subscribe_and_unsubscribe_match_reference(pid, subs):
    body = struct.pack(">H", pid) + b"".join(ref_str(f.encode()) + bytes([q]) for f, q in subs)
    assert mqtt.subscribe(pid, subs) == ref_packet(0x82, body)
    body = struct.pack(">H", pid) + b"".join(ref_str(f.encode()) for f, _ in subs)
    assert mqtt.unsubscribe(pid, [f for f, _ in subs]) == ref_packet(0xA2, body)


def test_fixed_packets():
    assert mqtt.pingreq() == b"\xc0\x00"
    assert mqtt.disconnect() == b"\xe0\x00"
    assert mqtt.pingresp() == b"\xd0\x00"
    assert mqtt.puback(0x1234) == b"\x40\x02\x12\x34"
    assert mqtt.connack(True, 0) == b"\x20\x02\x01\x00"


@pytest.mark.parametrize(
    "n,enc",
    [
        (0, "00"),
        (127, "7f"),
        (128, "8001"),
        (16383, "ff7f"),
        (16384, "808001"),
        (2097151, "ffff7f"),
        (2097152, "80808001"),
        (268435455, "ffffff7f"),
    ],
)
def test_varint_boundaries(n, enc):
    assert mqtt.encode_varint(n).hex() == enc
    assert mqtt.varint_size(n) == len(enc) // 2
    assert ref_varint(n).hex() == enc


@pytest.mark.parametrize("n", [-1, 268435456, 1.5, "3"])
def test_varint_out_of_range(n):
    with pytest.raises(ValueError):
        mqtt.encode_varint(n)


@pytest.mark.parametrize(
    "call",
    [
        lambda: mqtt.publish("a/+", b"x"),
        lambda: mqtt.publish("a/#", b"x"),
        lambda: mqtt.publish("", b"x"),
        lambda: mqtt.publish("a\x00b", b"x"),
        lambda: mqtt.publish("a", b"x", qos=1),
        lambda: mqtt.publish("a", b"x", qos=3, pid=1),
        lambda: mqtt.publish("a", b"x", dup=True),
        lambda: mqtt.publish("a", b"x", pid=5),
        lambda: mqtt.publish("a", b"x", qos=1, pid=65536),
        lambda: mqtt.publish("t" * 65536, b"x"),
        lambda: mqtt.publish(b"\xff", b"x"),
        lambda: mqtt.subscribe(1, []),
        lambda: mqtt.subscribe(1, [("a/#/b", 0)]),
        lambda: mqtt.subscribe(1, [("a+", 0)]),
        lambda: mqtt.subscribe(1, [("#a", 0)]),
        lambda: mqtt.subscribe(0, [("a", 0)]),
        lambda: mqtt.connect("", clean_session=False),
        lambda: mqtt.connect("x", password=b"p"),
        lambda: mqtt.connect("x", keepalive_s=-1),
        lambda: mqtt.connect("x", will_qos=1),
        lambda: mqtt.connect("x", will_topic="w/+"),
        lambda: mqtt.suback(1, [3]),
    ],
)
def test_encoder_misuse_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_encoder_type_errors():
    with pytest.raises(TypeError):
        mqtt.publish("a", 12)
    with pytest.raises(TypeError):
        mqtt.publish(5, b"x")


def test_valid_filters():
    for f in ("#", "+", "a/+/b", "a/#", "+/+/#", "a//b", "/"):
        mqtt.subscribe(1, [(f, 1)])


# ---------------------------------------------------------------- decoder


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(server_events, min_size=1, max_size=12), cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_any_packets_any_split_decode_identically(events, cuts):
    data = b"".join(encode_event(ev) for ev in events)
    got, d = decode_all(split(data, cuts))
    assert got == events
    assert d.buffered() == 0


@pytest.mark.parametrize("rl", [0, 2, 3, 127, 128, 16383, 16384, 2097151, 2097152])
def test_remaining_length_boundaries_decode(rl):
    # A PUBLISH whose remaining length is exactly rl, split in awkward places
    # (inside the varint, right after it, one byte before the end).
    if rl < 3:
        pkt = mqtt.pingresp() if rl == 0 else mqtt.puback(7)
        expect = PingResp() if rl == 0 else PubAck(7)
    else:
        payload = bytes(range(256)) * (rl // 256 + 1)
        payload = payload[: rl - 3]
        pkt = bytes(mqtt.publish("t", payload))
        expect = Publish("t", payload)
    assert pkt[1 : 1 + mqtt.varint_size(rl)] == mqtt.encode_varint(rl)
    for cuts in ([], [1], [2], [len(pkt) - 1], list(range(0, len(pkt), 4096)) + [2, 3]):
        got, _ = decode_all(split(pkt, cuts), max_packet=3 * 1024 * 1024)
        assert got == [expect]


def test_several_packets_in_one_chunk_and_a_partial_tail():
    a = mqtt.connack(False, 0)
    b = bytes(mqtt.publish("x/y", b"hello", 1, pid=3))
    c = mqtt.pingresp()
    d = mqtt.Decoder()
    d.receive_data(a + b + c + b[:4])
    assert [d.next_event(), d.next_event(), d.next_event(), d.next_event()] == [
        ConnAck(False, 0),
        Publish("x/y", b"hello", 1, False, False, 3),
        PingResp(),
        None,
    ]
    assert d.buffered() == 4
    d.receive_data(b[4:])
    assert d.next_event() == Publish("x/y", b"hello", 1, False, False, 3)
    assert d.next_event() is None


def test_oversized_packet_refused_from_its_header():
    d = mqtt.Decoder(max_packet=1000)
    d.receive_data(b"\x30" + mqtt.encode_varint(5000))  # nothing of the body yet
    with pytest.raises(MqttError) as e:
        d.next_event()
    assert e.value.code == mqtt.ERR_TOO_LARGE
    # Sticky until reset.
    with pytest.raises(MqttError):
        d.receive_data(b"\xd0\x00")
    d.reset()
    d.receive_data(b"\xd0\x00")
    assert d.next_event() == PingResp()


def test_exactly_max_packet_is_accepted():
    pkt = bytes(mqtt.publish("t", b"x" * 100))
    got, _ = decode_all([pkt], max_packet=len(pkt))
    assert len(got) == 1
    with pytest.raises(MqttError):
        decode_all([pkt], max_packet=len(pkt) - 1)


def test_five_byte_varint_is_malformed():
    d = mqtt.Decoder(max_packet=1 << 30)
    d.receive_data(b"\x30\x80\x80\x80\x80\x01")
    with pytest.raises(MqttError) as e:
        d.next_event()
    assert e.value.code == mqtt.ERR_MALFORMED


@settings(max_examples=400)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 1000), max_size=8), limit=st.integers(5, 300))
def test_random_bytes_decode_or_raise_mqtt_error(data, cuts, limit):
    # Never hangs, never raises anything but MqttError, never buffers past the limit plus one read.
    d = mqtt.Decoder(limit)
    try:
        for c in split(data, cuts):
            d.receive_data(c)
            for _ in range(len(data) + 2):
                if d.next_event() is None:
                    break
            else:
                pytest.fail("next_event kept returning events past the input size")
            assert d.buffered() <= limit + len(c)
    except MqttError as e:
        assert e.code in (mqtt.ERR_MALFORMED, mqtt.ERR_TOO_LARGE, mqtt.ERR_PROTOCOL)


@settings(max_examples=300)
@given(events=st.lists(server_events, min_size=1, max_size=6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=3))
def test_corrupted_streams_decode_or_raise_mqtt_error(events, flips):
    data = bytearray(b"".join(encode_event(ev) for ev in events))
    for pos, x in flips:
        data[pos % len(data)] ^= x
    try:
        decode_all([bytes(data)])
    except MqttError:
        pass


@pytest.mark.parametrize(
    "hexdata,code",
    [
        ("20020105", "malformed"),  # session present on a refusal
        ("36050001740001", "malformed"),  # QoS 3
        ("300400012b78", "malformed"),  # wildcard topic
        ("30040001ff78", "malformed"),  # topic not UTF-8
        ("320500017400" + "00", "malformed"),  # packet id 0
        ("41020001", "malformed"),  # reserved flags on PUBACK
        ("9003000103", "malformed"),  # SUBACK code 3
        ("d00100", "malformed"),  # PINGRESP with a body
        ("c000", "protocol"),  # PINGREQ goes to the broker, not to us
        ("101100044d5154540402003c000573742d3031", "protocol"),  # CONNECT
        ("50020001", "protocol"),  # PUBREC: QoS 2 is not spoken
    ],
)
def test_malformed_packets(hexdata, code):
    with pytest.raises(MqttError) as e:
        decode_all([bytes.fromhex(hexdata)])
    assert e.value.code == code


# ---------------------------------------------------------------- session

CONNACK = mqtt.connack(False, 0)


def connected(**kw):
    s = mqtt.Session("st-01", **kw)
    s.connect(0)
    s.data_to_send(0)
    s.receive_data(CONNACK, 0)
    assert s.next_event() == ConnAck(False, 0)
    s.data_to_send(0)
    return s


def events(s):
    out = []
    while True:
        ev = s.next_event()
        if ev is None:
            return out
        out.append(ev)


def test_packet_ids_wrap_through_65535_and_skip_ids_in_flight():
    s = connected(max_inflight=3)
    held = s.publish("t", b"held", 1)  # never acked: must be skipped every time round
    assert held == 1
    seen = []
    for i in range(70000):
        pid = s.publish("t", b"x", 1)
        seen.append(pid)
        s.receive_data(mqtt.puback(pid), i)
        assert events(s) == [PubAck(pid)]
        s.data_to_send(i)
    assert held not in seen
    assert min(seen) == 2 and max(seen) == 65535
    assert seen[65533] == 65535 and seen[65534] == 2  # after 65535 the next id is 2: 1 is still in flight
    assert s.inflight() == [held]


@settings(max_examples=200)
@given(ops=st.lists(st.one_of(st.just("pub"), st.integers(0, 20), st.just("lost"), st.just("reconnect")), max_size=80), window=st.integers(1, 5))
def test_window_never_exceeded_and_resend_keeps_order(ops, window):
    s = connected(max_inflight=window)
    sent = {}  # pid -> payload, for every publish not yet acked
    order = []
    n = 0
    for op in ops:
        if op == "pub":
            if s.can_publish(1):
                n += 1
                payload = b"%d" % n
                pid = s.publish("t", payload, 1)
                assert pid not in sent
                sent[pid] = payload
                order.append(pid)
            else:
                with pytest.raises(ValueError):
                    s.publish("t", b"late", 1)
        elif op == "lost":
            s.connection_lost()
        elif op == "reconnect":
            if s.state != mqtt.CLOSED:
                s.connection_lost()
            s.connect(0)
            s.data_to_send(0)
            s.receive_data(mqtt.connack(True, 0), 0)
            events(s)
            resent = s.data_to_send(0)
            # Every unacked publish again, oldest first, with DUP and its own id.
            assert [bytes(p) for p in resent] == [
                ref_publish("t", sent[pid], 1, False, True, pid) for pid in order
            ]
        elif s.connected and order:
            pid = order[op % len(order)]
            s.receive_data(mqtt.puback(pid), 0)
            events(s)
            del sent[pid]
            order.remove(pid)
        assert len(s.inflight()) <= window
        assert s.inflight() == order


def test_publish_misuse():
    s = mqtt.Session("st-01")
    with pytest.raises(ValueError):
        s.publish("t", b"x", 1)  # not connected
    s = connected(max_inflight=1)
    s.publish("t", b"x", 1)
    assert not s.can_publish(1) and s.can_publish(0)
    with pytest.raises(ValueError):
        s.publish("t", b"x", 1)  # window full
    with pytest.raises(ValueError):
        s.publish("t", b"x", 2)
    with pytest.raises(ValueError):
        s.publish("t", b"x" * mqtt.MAX_PACKET, 0)  # over max_packet
    with pytest.raises(ValueError):
        s.connect(0)  # already connected
    for bad in (0, mqtt.MAX_INFLIGHT + 1):
        with pytest.raises(ValueError):
            mqtt.Session("x", max_inflight=bad)
    with pytest.raises(ValueError):
        mqtt.Session("x", subscriptions=[("a", 2)])
    with pytest.raises(ValueError):
        mqtt.Session("x", will=("w/#", b"", 0, False))


def test_clean_start_resends_too_and_resubscribes():
    s = connected(subscriptions=[("c/#", 1)])
    s.receive_data(mqtt.suback(1, [1]), 0)
    events(s)
    assert s.subscribed()
    pid = s.publish("t", b"a", 1)
    s.data_to_send(0)
    s.connection_lost()
    s.connect(10)
    s.data_to_send(10)
    s.receive_data(mqtt.connack(False, 0), 10)
    events(s)
    out = [bytes(p) for p in s.data_to_send(10)]
    assert out[0] == ref_publish("t", b"a", 1, False, True, pid)
    assert out[1][0] == 0x82  # SUBSCRIBE again: the broker has no session
    assert not s.subscribed()


def test_refused_subscription_is_retried_next_connection():
    s = connected(subscriptions=[("c/#", 1)])
    s.receive_data(mqtt.suback(1, [0x80]), 0)
    assert events(s) == [SubAck(1, (0x80,))]
    assert not s.subscribed()
    s.connection_lost()
    s.connect(0)
    s.receive_data(mqtt.connack(True, 0), 0)
    events(s)
    assert any(bytes(p)[0] == 0x82 for p in s.data_to_send(0))


@given(base=st.integers(0, (1 << 30) - 1), ka=st.integers(1, 600))
def test_keepalive_across_tick_wrap(base, ka):
    mask = (1 << 30) - 1
    s = mqtt.Session("st-01", keepalive_s=ka)
    s.connect(base)
    s.data_to_send(base)
    s.receive_data(CONNACK, base)
    events(s)
    ms = ka * 1000
    assert not s.ping_due((base + ms // 2 - 1) & mask)
    assert s.ping_due((base + ms // 2) & mask)
    assert not s.dead((base + ms * 3 // 2) & mask)
    assert s.dead((base + ms * 3 // 2 + 1) & mask)
    s.ping((base + ms // 2) & mask)
    assert not s.ping_due((base + ms) & mask)  # one outstanding ping at a time
    s.receive_data(mqtt.pingresp(), (base + ms) & mask)
    events(s)
    assert not s.dead((base + ms * 2) & mask)


def test_traffic_resets_the_silence_clock():
    s = connected(keepalive_s=10)
    s.receive_data(bytes(mqtt.publish("t", b"x")), 9000)
    events(s)
    assert not s.dead(15001) and not s.dead(24000)
    assert s.dead(24001)


def test_ack_while_closed_is_dropped():
    s = connected()
    s.connection_lost()
    s.ack(5)  # the broker will deliver again
    s.connect(0)
    assert [bytes(p) for p in s.data_to_send(0)] == [mqtt.connect("st-01", 30, False)]


def test_unknown_puback_is_counted_not_fatal():
    s = connected()
    s.receive_data(mqtt.puback(77), 0)
    assert events(s) == [PubAck(77)]
    assert s.unknown_acks == 1


def test_misbehaving_broker_breaks_session_until_reconnect():
    s = mqtt.Session("st-01")
    s.connect(0)
    s.receive_data(mqtt.pingresp(), 0)  # before CONNACK
    with pytest.raises(MqttError) as e:
        s.next_event()
    assert e.value.code == mqtt.ERR_PROTOCOL
    with pytest.raises(MqttError):
        s.next_event()
    s.connection_lost()
    s.connect(1)
    s.receive_data(CONNACK, 1)
    assert s.next_event() == ConnAck(False, 0)


def test_connack_reason_words():
    assert mqtt.connack_reason(0) == "accepted"
    assert mqtt.connack_reason(4) == "bad user name or password"
    assert mqtt.connack_reason(5) == "not authorized"
    assert "77" in mqtt.connack_reason(77)
