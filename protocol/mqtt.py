# MQTT 3.1.1 client core, sans-IO: packet encoders, an incremental decoder and the client session (docs/mqtt.md).
#
# Theory of operation
# -------------------
# Nothing here touches a socket or a clock. Three layers, each usable alone:
#
#   encoders   connect(), publish(), puback(), subscribe(), unsubscribe(),
#              pingreq(), disconnect() build client packets; connack(),
#              suback(), unsuback(), pingresp() build the broker's few
#              replies, for tests and in-memory peers. Bytes in, bytes out.
#   Decoder    receive_data(bytes) buffers whatever the transport delivered
#              (half a packet, or several); next_event() returns one event
#              (ConnAck, Publish, PubAck, SubAck, UnsubAck, PingResp) or None
#              for "need more bytes". It decodes what a broker sends a client
#              and nothing else.
#   Session    the client's state across connections: the CONNECT packet,
#              packet ids, the in-flight window of QoS 1 publishes, the
#              subscriptions to restore, keepalive bookkeeping. Its inputs
#              are calls (connect, publish, ack, ping, connection_lost) and
#              received bytes; its outputs are events and data_to_send().
#
# Session states and what may arrive in each (anything else raises
# MqttError(protocol) and the driver drops the connection):
#
#     CLOSED      --connect()-->        CONNECTING   (CONNECT queued)
#     CONNECTING  --ConnAck rc 0-->     CONNECTED    (resends + SUBSCRIBE queued)
#     CONNECTING  --ConnAck rc>0-->     CLOSED       (refused: the event says why)
#     CONNECTED   --Publish, PubAck, SubAck, UnsubAck, PingResp--> CONNECTED
#     any         --connection_lost()/disconnect()--> CLOSED
#
# In-flight window. A QoS 1 publish is kept (as its encoded packet) from
# publish() until its PUBACK, at most max_inflight of them; can_publish()
# says whether another fits, and publish() refuses (ValueError) rather than
# exceed it. After a reconnect every kept packet is sent again, in its
# original order, with its original packet id and the DUP flag set. That
# is what MQTT 3.1.1 asks when the broker kept the session (session_present
# 1). When it did not (a clean session, or a broker that lost its state),
# the broker has forgotten those ids, but nobody has acknowledged the
# messages either: they are sent again all the same, as new messages of the
# new session (still flagged DUP, since the receiver may have seen them).
# At-least-once survives both cases; receivers drop duplicates by content
# (wire.SeqGuard). Subscriptions are sent again whenever the broker has no
# session or did not confirm them all in the last one.
#
# Time. Every now_ms is a millisecond tick count that wraps at 2**30, like
# time.ticks_ms() on the 32-bit boards; differences are taken modulo 2**30,
# so keepalive arithmetic survives the wrap (and any interval longer than
# 2**29 ms, about 6 days, is beyond what keepalive needs).
#
# Errors. The peer misbehaving (a malformed or oversized packet, a packet the
# state does not allow) raises MqttError with a short code; the decoder and
# the session then stay broken until connection_lost()/connect(). Misuse
# (a bad topic, publishing while not connected or past the window) raises
# ValueError or TypeError.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# Packet types (high nibble of the first byte).
_CONNECT = const(1)
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_SUBSCRIBE = const(8)
_SUBACK = const(9)
_UNSUBSCRIBE = const(10)
_UNSUBACK = const(11)
_PINGREQ = const(12)
_PINGRESP = const(13)
_DISCONNECT = const(14)

_DUP = const(0x08)  # PUBLISH first-byte flag: this may be a re-delivery
_MAX_VARINT = const(268435455)  # largest remaining length (4 varint bytes)
_MAX_U16 = const(65535)
_TICKS_MASK = const(0x3FFFFFFF)  # ticks wrap at 2**30
_TICKS_HALF = const(0x20000000)

# The default limit on one packet, either way: a wire.MAX_SIZE payload plus
# topic and header, with room to spare. The broker's max_packet_size should
# be at least this.
MAX_PACKET = const(17408)
MAX_INFLIGHT = const(1024)  # upper bound for Session(max_inflight=...)

# Session states.
CLOSED = const(0)
CONNECTING = const(1)
CONNECTED = const(2)

# Error codes (MqttError.code).
ERR_MALFORMED = "malformed"  # bytes that are not a valid MQTT 3.1.1 packet
ERR_TOO_LARGE = "too_large"  # a packet longer than max_packet
ERR_PROTOCOL = "protocol"  # a valid packet a broker may not send now

# CONNACK return codes 1..5, as MQTT 3.1.1 names them (section 3.2.2.3).
_REFUSALS = (
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)

_PINGREQ_PKT = b"\xc0\x00"
_PINGRESP_PKT = b"\xd0\x00"
_DISCONNECT_PKT = b"\xe0\x00"
_PROTOCOL = b"\x00\x04MQTT\x04"  # protocol name and level 4 (3.1.1)


class MqttError(Exception):
    """The broker sent something MQTT 3.1.1 forbids; `code` is an ERR_* constant."""

    def __init__(self, code, detail=""):
        super().__init__(code + ": " + detail if detail else code)
        self.code = code
        self.detail = detail


def connack_reason(rc):
    """Words for a CONNACK return code."""
    if rc == 0:
        return "accepted"
    if 1 <= rc <= 5:
        return _REFUSALS[rc - 1]
    return "return code %d" % rc


# ---------------------------------------------------------------- events


class ConnAck:
    __slots__ = ("session_present", "rc")

    def __init__(self, session_present, rc):
        self.session_present = session_present
        self.rc = rc

    def _key(self):
        return ("ConnAck", self.session_present, self.rc)

    def __eq__(self, other):
        return isinstance(other, ConnAck) and self._key() == other._key()

    def __repr__(self):
        return "ConnAck(session_present=%r, rc=%d)" % (self.session_present, self.rc)


class Publish:
    """An application message from the broker; pid is 0 for QoS 0. topic is
    str, payload bytes. A QoS 1 message needs Session.ack(pid) once handled."""

    __slots__ = ("topic", "payload", "qos", "retain", "dup", "pid")

    def __init__(self, topic, payload, qos=0, retain=False, dup=False, pid=0):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.pid = pid

    def _key(self):
        return ("Publish", self.topic, bytes(self.payload), self.qos, self.retain, self.dup, self.pid)

    def __eq__(self, other):
        return isinstance(other, Publish) and self._key() == other._key()

    def __repr__(self):
        return "Publish(%r, %d bytes, qos=%d, retain=%r, dup=%r, pid=%d)" % (
            self.topic,
            len(self.payload),
            self.qos,
            self.retain,
            self.dup,
            self.pid,
        )


class PubAck:
    __slots__ = ("pid",)

    def __init__(self, pid):
        self.pid = pid

    def __eq__(self, other):
        return isinstance(other, PubAck) and self.pid == other.pid

    def __repr__(self):
        return "PubAck(%d)" % self.pid


class SubAck:
    """granted: one code per filter, in order: 0, 1 or 2 (the QoS granted) or 0x80 (refused)."""

    __slots__ = ("pid", "granted")

    def __init__(self, pid, granted):
        self.pid = pid
        self.granted = granted

    def __eq__(self, other):
        return isinstance(other, SubAck) and self.pid == other.pid and tuple(self.granted) == tuple(other.granted)

    def __repr__(self):
        return "SubAck(%d, %r)" % (self.pid, tuple(self.granted))


class UnsubAck:
    __slots__ = ("pid",)

    def __init__(self, pid):
        self.pid = pid

    def __eq__(self, other):
        return isinstance(other, UnsubAck) and self.pid == other.pid

    def __repr__(self):
        return "UnsubAck(%d)" % self.pid


class PingResp:
    __slots__ = ()

    def __eq__(self, other):
        return isinstance(other, PingResp)

    def __repr__(self):
        return "PingResp()"


_PING_RESP = PingResp()  # stateless: one instance serves every PINGRESP


# ---------------------------------------------------------------- encoders


def varint_size(n):
    """Bytes the remaining length n takes (1..4)."""
    if n < 128:
        return 1
    if n < 16384:
        return 2
    if n < 2097152:
        return 3
    return 4


def _put_varint(buf, i, n):
    # Write remaining length n at buf[i]; return the index after it.
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[i] = b | 0x80
            i += 1
        else:
            buf[i] = b
            return i + 1


def encode_varint(n):
    """The remaining-length encoding of n (0..268435455)."""
    if type(n) is not int or not 0 <= n <= _MAX_VARINT:
        raise ValueError("remaining length must be 0..268435455")
    buf = bytearray(varint_size(n))
    _put_varint(buf, 0, n)
    return bytes(buf)


def _text(s, what, empty_ok=False):
    # An MQTT UTF-8 string field as bytes (without its length prefix).
    if isinstance(s, str):
        b = s.encode()
    elif isinstance(s, (bytes, bytearray)):
        b = bytes(s)
        try:
            b.decode()
        except UnicodeError:
            raise ValueError(what + " must be UTF-8")
    else:
        raise TypeError(what + " must be str or bytes")
    if len(b) > _MAX_U16:
        raise ValueError(what + " is over 65535 bytes")
    if not b and not empty_ok:
        raise ValueError(what + " must not be empty")
    if b"\x00" in b:
        raise ValueError(what + " must not contain NUL")
    return b


def _data(b, what):
    # Binary payload: bytes-like, or str (sent as UTF-8).
    if isinstance(b, str):
        return b.encode()
    if isinstance(b, (bytes, bytearray, memoryview)):
        return b
    raise TypeError(what + " must be bytes or str")


def _topic(t):
    b = _text(t, "topic")
    if b"+" in b or b"#" in b:
        raise ValueError("topic must not contain + or #: " + repr(t))
    return b


def _filter(f):
    # A topic filter: + and # only as whole levels, # only last.
    b = _text(f, "topic filter")
    levels = b.split(b"/")
    last = len(levels) - 1
    for i in range(len(levels)):
        lv = levels[i]
        if (b"+" in lv and lv != b"+") or (b"#" in lv and (lv != b"#" or i != last)):
            raise ValueError("bad topic filter " + repr(f))
    return b


def _pid(pid):
    if type(pid) is not int or not 1 <= pid <= _MAX_U16:
        raise ValueError("packet id must be 1..65535")
    return pid


def _qos(qos, top):
    if type(qos) is not int or not 0 <= qos <= top:
        raise ValueError("qos must be 0..%d" % top)
    return qos


def _packet(first, rl):
    # A bytearray for one packet: fixed header written; returns (buf, body index).
    if rl > _MAX_VARINT:
        raise ValueError("packet too large for MQTT")
    n = 1 + varint_size(rl)
    buf = bytearray(n + rl)
    buf[0] = first
    _put_varint(buf, 1, rl)
    return buf, n


def _put_u16(buf, i, v):
    buf[i] = v >> 8
    buf[i + 1] = v & 0xFF
    return i + 2


def _put_str(mv, i, b):
    # Length-prefixed field b (bytes) at index i of memoryview mv.
    n = len(b)
    mv[i] = n >> 8
    mv[i + 1] = n & 0xFF
    mv[i + 2 : i + 2 + n] = b
    return i + 2 + n


def connect(
    client_id,
    keepalive_s=60,
    clean_session=True,
    will_topic=None,
    will_payload=b"",
    will_qos=0,
    will_retain=False,
    username=None,
    password=None,
):
    """CONNECT. An empty client_id needs clean_session (the broker picks an id)."""
    cid = _text(client_id, "client_id", empty_ok=True)
    if not cid and not clean_session:
        raise ValueError("an empty client_id needs clean_session=True")
    if type(keepalive_s) is not int or not 0 <= keepalive_s <= _MAX_U16:
        raise ValueError("keepalive_s must be 0..65535")
    flags = 0x02 if clean_session else 0
    fields = [cid]
    if will_topic is not None:
        _qos(will_qos, 2)
        fields.append(_topic(will_topic))
        wp = _data(will_payload, "will payload")
        if len(wp) > _MAX_U16:
            raise ValueError("will payload is over 65535 bytes")
        fields.append(wp)
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)
    elif will_qos or will_retain or will_payload:
        raise ValueError("will_qos, will_retain and will_payload need a will_topic")
    if username is not None:
        fields.append(_text(username, "username", empty_ok=True))
        flags |= 0x80
    if password is not None:
        if username is None:
            raise ValueError("MQTT 3.1.1 sends a password only with a username")
        pw = _data(password, "password")
        if len(pw) > _MAX_U16:
            raise ValueError("password is over 65535 bytes")
        fields.append(pw)
        flags |= 0x40
    rl = len(_PROTOCOL) + 3
    for f in fields:
        rl += 2 + len(f)
    buf, i = _packet(_CONNECT << 4, rl)
    mv = memoryview(buf)
    mv[i : i + 7] = _PROTOCOL
    i += 7
    buf[i] = flags
    i = _put_u16(buf, i + 1, keepalive_s)
    for f in fields:
        i = _put_str(mv, i, f)
    return bytes(buf)


def publish(topic, payload, qos=0, retain=False, dup=False, pid=0):
    """PUBLISH, as a bytearray (the session flips DUP in place on a resend).
    QoS 1 needs a packet id; QoS 0 must have none and no DUP."""
    t = _topic(topic)
    p = _data(payload, "payload")
    _qos(qos, 2)
    if qos:
        _pid(pid)
    elif pid or dup:
        raise ValueError("a QoS 0 publish has no packet id and no DUP")
    rl = 2 + len(t) + (2 if qos else 0) + len(p)
    first = (_PUBLISH << 4) | (qos << 1) | (_DUP if dup else 0) | (1 if retain else 0)
    buf, i = _packet(first, rl)
    mv = memoryview(buf)
    i = _put_str(mv, i, t)
    if qos:
        i = _put_u16(buf, i, pid)
    mv[i:] = p
    return buf


def _pid_packet(first, pid):
    buf = bytearray(4)
    buf[0] = first
    buf[1] = 2
    _put_u16(buf, 2, _pid(pid))
    return bytes(buf)


def puback(pid):
    """PUBACK for a QoS 1 publish (either direction)."""
    return _pid_packet(_PUBACK << 4, pid)


def subscribe(pid, filters):
    """SUBSCRIBE to [(filter, qos), ...] (qos 0..2)."""
    _pid(pid)
    if not filters:
        raise ValueError("subscribe needs at least one filter")
    encoded = []
    rl = 2
    for item in filters:
        f, q = item
        b = _filter(f)
        encoded.append((b, _qos(q, 2)))
        rl += 3 + len(b)
    buf, i = _packet((_SUBSCRIBE << 4) | 0x02, rl)
    mv = memoryview(buf)
    i = _put_u16(buf, i, pid)
    for b, q in encoded:
        i = _put_str(mv, i, b)
        buf[i] = q
        i += 1
    return bytes(buf)


def unsubscribe(pid, filters):
    """UNSUBSCRIBE from [filter, ...]."""
    _pid(pid)
    if not filters:
        raise ValueError("unsubscribe needs at least one filter")
    encoded = [_filter(f) for f in filters]
    rl = 2
    for b in encoded:
        rl += 2 + len(b)
    buf, i = _packet((_UNSUBSCRIBE << 4) | 0x02, rl)
    mv = memoryview(buf)
    i = _put_u16(buf, i, pid)
    for b in encoded:
        i = _put_str(mv, i, b)
    return bytes(buf)


def pingreq():
    return _PINGREQ_PKT


def disconnect():
    return _DISCONNECT_PKT


# The broker's side, for tests and in-memory peers.


def connack(session_present, rc):
    if type(rc) is not int or not 0 <= rc <= 255:
        raise ValueError("rc must be 0..255")
    return bytes((_CONNACK << 4, 2, 1 if session_present else 0, rc))


def suback(pid, granted):
    _pid(pid)
    body = bytearray(2)
    _put_u16(body, 0, pid)
    for g in granted:
        if g not in (0, 1, 2, 0x80):
            raise ValueError("granted codes are 0, 1, 2 or 0x80")
        body.append(g)
    buf, i = _packet(_SUBACK << 4, len(body))
    memoryview(buf)[i:] = body
    return bytes(buf)


def unsuback(pid):
    return _pid_packet(_UNSUBACK << 4, pid)


def pingresp():
    return _PINGRESP_PKT


# ---------------------------------------------------------------- decoder


def _malformed(detail):
    return MqttError(ERR_MALFORMED, detail)


class Decoder:
    """Incremental decoder of broker-to-client packets.

    receive_data() buffers; next_event() returns one event or None when the
    buffer holds no complete packet. A packet whose remaining length says it
    is over max_packet bytes is refused as soon as its header arrives, so the
    buffer never grows past max_packet plus one read. After an MqttError the
    decoder stays broken (every call raises it again) until reset()."""

    def __init__(self, max_packet=MAX_PACKET):
        if type(max_packet) is not int or max_packet < 5:
            raise ValueError("max_packet must be an integer of at least 5")
        self.max_packet = max_packet
        self.reset()

    def reset(self):
        """Forget buffered bytes and any error: a new connection starts."""
        self._buf = bytearray()
        self._pos = 0  # first byte not yet consumed
        self._error = None

    def buffered(self):
        """Bytes received and not yet returned as events."""
        return len(self._buf) - self._pos

    def receive_data(self, data):
        if self._error is not None:
            raise self._error
        if self._pos:
            # Drop what is consumed; a fresh buffer, so no memoryview taken
            # on the old one can block a resize.
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf.extend(data)

    def next_event(self):
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except MqttError as e:
            self._error = e
            raise

    def _next(self):
        buf = self._buf
        p = self._pos
        n = len(buf)
        if n - p < 2:
            return None
        rl = 0
        shift = 0
        i = p + 1
        while True:
            if i >= n:
                return None
            b = buf[i]
            rl |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
            if shift == 28:
                raise _malformed("remaining length longer than 4 bytes")
        if i - p + rl > self.max_packet:
            raise MqttError(ERR_TOO_LARGE, "%d-byte packet, limit %d" % (i - p + rl, self.max_packet))
        if n - i < rl:
            return None
        self._pos = i + rl  # consumed even if it turns out malformed: the error is sticky
        return _parse(buf[p], memoryview(buf)[i : i + rl])


def _parse(first, body):
    kind = first >> 4
    flags = first & 0x0F
    rl = len(body)
    if kind == _PUBLISH:
        return _parse_publish(flags, body)
    if flags:
        raise _malformed("reserved flags set in packet type %d" % kind)
    if kind == _CONNACK:
        if rl != 2:
            raise _malformed("CONNACK length %d" % rl)
        ack, rc = body[0], body[1]
        if ack > 1:
            raise _malformed("CONNACK reserved flags set")
        if ack and rc:
            raise _malformed("session present on a refused CONNACK")
        return ConnAck(ack == 1, rc)
    if kind == _PUBACK or kind == _UNSUBACK:
        if rl != 2:
            raise _malformed("ack length %d" % rl)
        pid = (body[0] << 8) | body[1]
        if not pid:
            raise _malformed("packet id 0")
        return PubAck(pid) if kind == _PUBACK else UnsubAck(pid)
    if kind == _SUBACK:
        if rl < 3:
            raise _malformed("SUBACK length %d" % rl)
        pid = (body[0] << 8) | body[1]
        if not pid:
            raise _malformed("packet id 0")
        granted = []
        for k in range(2, rl):
            g = body[k]
            if g > 2 and g != 0x80:
                raise _malformed("SUBACK return code %d" % g)
            granted.append(g)
        return SubAck(pid, tuple(granted))
    if kind == _PINGRESP:
        if rl:
            raise _malformed("PINGRESP with a body")
        return _PING_RESP
    raise MqttError(ERR_PROTOCOL, "packet type %d is not sent to a client" % kind)


def _parse_publish(flags, body):
    qos = (flags >> 1) & 3
    dup = flags & _DUP != 0
    if qos == 3:
        raise _malformed("PUBLISH with QoS 3")
    if dup and not qos:
        raise _malformed("DUP on a QoS 0 PUBLISH")
    rl = len(body)
    if rl < 2:
        raise _malformed("PUBLISH too short")
    tl = (body[0] << 8) | body[1]
    end = 2 + tl
    if not tl or end + (2 if qos else 0) > rl:
        raise _malformed("PUBLISH topic length")
    tb = bytes(body[2:end])
    if b"+" in tb or b"#" in tb or b"\x00" in tb:
        raise _malformed("wildcard or NUL in a PUBLISH topic")
    try:
        topic = tb.decode()
    except UnicodeError:
        raise _malformed("topic is not UTF-8")
    pid = 0
    if qos:
        pid = (body[end] << 8) | body[end + 1]
        end += 2
        if not pid:
            raise _malformed("packet id 0")
    return Publish(topic, bytes(body[end:]), qos, flags & 1 == 1, dup, pid)


# ---------------------------------------------------------------- session


def ticks_diff(a, b):
    """a - b for millisecond ticks that wrap at 2**30."""
    return ((a - b + _TICKS_HALF) & _TICKS_MASK) - _TICKS_HALF


class Session:
    """One MQTT client's protocol state; see the theory of operation above.

    will is (topic, payload, qos, retain) or None; subscriptions is
    [(filter, qos)] with qos 0 or 1, subscribed after every connect that
    needs it. keepalive_s 0 turns keepalive off. Construction validates
    everything and encodes the CONNECT once; bad arguments raise ValueError
    or TypeError here, not later."""

    def __init__(
        self,
        client_id,
        keepalive_s=30,
        clean_session=False,
        will=None,
        username=None,
        password=None,
        subscriptions=(),
        max_inflight=16,
        max_packet=MAX_PACKET,
    ):
        if type(max_inflight) is not int or not 1 <= max_inflight <= MAX_INFLIGHT:
            raise ValueError("max_inflight must be 1..%d" % MAX_INFLIGHT)
        if will is None:
            will = (None, b"", 0, False)
        wt, wp, wq, wr = will
        self._connect = connect(client_id, keepalive_s, clean_session, wt, wp, wq, wr, username, password)
        self.client_id = client_id
        self.clean_session = clean_session
        self.keepalive_ms = keepalive_s * 1000
        self.max_inflight = max_inflight
        self.max_packet = max_packet
        self._subs = []  # [(filter bytes, qos)] in the order given
        self._add_subs(subscriptions)
        self._dec = Decoder(max_packet)
        self._inflight = {}  # pid -> encoded PUBLISH (bytearray)
        self._order = []  # in-flight pids, oldest first (dicts have no order on MicroPython)
        self._sub_pending = {}  # pid of a SUBSCRIBE awaiting SUBACK -> True
        self._subscribed = False  # the broker confirmed every subscription in this broker session
        self._last_pid = 0
        self._out = []
        self._spare = []
        self.state = CLOSED
        self.session_present = False
        self._last_rx = 0
        self._last_tx = 0
        self._ping_out = False
        self.unknown_acks = 0  # PUBACKs for ids not in flight (late duplicates)

    # -- queries

    @property
    def connected(self):
        return self.state == CONNECTED

    def can_publish(self, qos=1):
        """True when publish(qos=qos) would be accepted now."""
        return self.state == CONNECTED and (qos == 0 or len(self._order) < self.max_inflight)

    def inflight(self):
        """Packet ids of unacknowledged QoS 1 publishes, oldest first (a new list)."""
        return list(self._order)

    def subscribed(self):
        """True once the broker has confirmed every subscription."""
        return self._subscribed or not self._subs

    # -- commands

    def connect(self, now_ms):
        """Start a connection: the CONNECT goes out with the next data_to_send()."""
        if self.state != CLOSED:
            raise ValueError("connect() while not closed: call connection_lost() first")
        self._dec.reset()
        self._clear_out()
        self._out.append(self._connect)
        self.state = CONNECTING
        self.session_present = False
        self._last_rx = now_ms
        self._last_tx = now_ms
        self._ping_out = False

    def connection_lost(self):
        """The transport is gone (or is being dropped). In-flight publishes stay for the resend."""
        self.state = CLOSED
        self._dec.reset()
        self._clear_out()
        if self._sub_pending:
            self._subscribed = False
            self._sub_pending = {}
        self._ping_out = False

    def disconnect(self):
        """Queue DISCONNECT (the broker then drops the will) and close."""
        if self.state != CLOSED:
            self._out.append(_DISCONNECT_PKT)
        self.state = CLOSED

    def publish(self, topic, payload, qos=0, retain=False):
        """Queue a publish; returns its packet id (0 for QoS 0).

        Raises ValueError when not connected, when the in-flight window is
        full (check can_publish() first) or the packet would exceed max_packet."""
        _qos(qos, 1)
        if self.state != CONNECTED:
            raise ValueError("not connected")
        pid = 0
        if qos:
            if len(self._order) >= self.max_inflight:
                raise ValueError("in-flight window full (%d)" % self.max_inflight)
            pid = self._alloc()
        pkt = publish(topic, payload, qos, retain, False, pid)
        if len(pkt) > self.max_packet:
            raise ValueError("%d-byte publish, limit %d" % (len(pkt), self.max_packet))
        if qos:
            self._inflight[pid] = pkt
            self._order.append(pid)
        self._out.append(pkt)
        return pid

    def ack(self, pid):
        """Acknowledge a received QoS 1 publish once it has been handled.
        Ignored when not connected: the broker will deliver it again."""
        _pid(pid)
        if self.state == CONNECTED:
            self._out.append(puback(pid))

    def subscribe(self, filters):
        """Add [(filter, qos)] to the subscriptions; sends SUBSCRIBE now when
        connected (returns its packet id), else at the next connect (returns 0)."""
        new = self._add_subs(filters)
        if not new:
            return 0
        self._subscribed = False
        if self.state != CONNECTED:
            return 0
        return self._send_subscribe(new)

    def ping_due(self, now_ms):
        """True when a PINGREQ should go out: nothing sent for a keepalive,
        or nothing received for half of one, and no ping is outstanding."""
        if self.state != CONNECTED or not self.keepalive_ms or self._ping_out:
            return False
        return (
            ticks_diff(now_ms, self._last_tx) >= self.keepalive_ms
            or ticks_diff(now_ms, self._last_rx) >= self.keepalive_ms // 2
        )

    def ping(self, now_ms):
        """Queue a PINGREQ."""
        if self.state != CONNECTED:
            raise ValueError("not connected")
        self._out.append(_PINGREQ_PKT)
        self._ping_out = True

    def dead(self, now_ms):
        """True when the broker has been silent for 1.5 keepalives (while
        connecting too): the connection is hung and should be dropped."""
        if self.state == CLOSED or not self.keepalive_ms:
            return False
        return ticks_diff(now_ms, self._last_rx) > self.keepalive_ms * 3 // 2

    def data_to_send(self, now_ms):
        """Packets to write, in order, as a list that stays valid until the next call."""
        out = self._out
        self._out = self._spare
        self._spare = out
        self._out.clear()
        if out:
            self._last_tx = now_ms
        return out

    # -- input

    def receive_data(self, data, now_ms):
        if self.state == CLOSED:
            raise ValueError("receive_data() on a closed session")
        if data:
            self._last_rx = now_ms
            self._dec.receive_data(data)

    def next_event(self):
        """The next event from the broker, or None. The session has already
        acted on it (window, subscriptions, keepalive); the caller handles
        Publish (and acks it if qos 1) and reports refusals and SUBACK failures."""
        ev = self._dec.next_event()
        if ev is None:
            return None
        if self.state == CONNECTING:
            if not isinstance(ev, ConnAck):
                raise self._broken(MqttError(ERR_PROTOCOL, "%r before CONNACK" % ev))
            self._on_connack(ev)
            return ev
        if self.state != CONNECTED:
            return None  # closed since the bytes arrived: they no longer matter
        if isinstance(ev, PubAck):
            if ev.pid in self._inflight:
                del self._inflight[ev.pid]
                self._order.remove(ev.pid)
            else:
                self.unknown_acks += 1
        elif isinstance(ev, Publish):
            if ev.qos > 1:
                raise self._broken(MqttError(ERR_PROTOCOL, "QoS 2 delivery; subscriptions ask at most QoS 1"))
        elif isinstance(ev, SubAck):
            if ev.pid in self._sub_pending:
                del self._sub_pending[ev.pid]
                if 0x80 in ev.granted:
                    self._subscribed = False
                elif not self._sub_pending:
                    self._subscribed = True
        elif isinstance(ev, PingResp):
            self._ping_out = False
        elif isinstance(ev, ConnAck):
            raise self._broken(MqttError(ERR_PROTOCOL, "second CONNACK"))
        return ev

    # -- internals

    def _broken(self, err):
        self._dec._error = err  # sticky, like a decoding error
        return err

    def _on_connack(self, ev):
        if ev.rc:
            self.state = CLOSED
            return
        self.state = CONNECTED
        self.session_present = ev.session_present
        if not ev.session_present:
            self._subscribed = False
        for pid in self._order:
            pkt = self._inflight[pid]
            pkt[0] |= _DUP
            self._out.append(pkt)
        if self._subs and not self._subscribed:
            self._send_subscribe(self._subs)

    def _send_subscribe(self, subs):
        pid = self._alloc()
        self._out.append(subscribe(pid, subs))
        self._sub_pending[pid] = True
        return pid

    def _add_subs(self, filters):
        new = []
        for item in filters:
            f, q = item
            b = _filter(f)
            _qos(q, 1)
            for k in range(len(self._subs)):
                if self._subs[k][0] == b:
                    del self._subs[k]
                    break
            self._subs.append((b, q))
            new.append((b, q))
        return new

    def _alloc(self):
        # Next packet id after the last, 1..65535 wrapping, skipping ids in use.
        pid = self._last_pid
        while True:
            pid = pid + 1 if pid < _MAX_U16 else 1
            if pid not in self._inflight and pid not in self._sub_pending:
                self._last_pid = pid
                return pid

    def _clear_out(self):
        self._out.clear()
