# Golden-vector runner for protocol/mqtt.py: run(input) -> output, on CPython and MicroPython alike.
#
# Bytes travel as hex. Ops:
#   encode   {packet, args}                       -> {hex} | {len, head} (with "summary") | {error: type}
#            args may give "payload" (text), "payload_hex", or "fill"+"payload_len"
#   varint   {n}                                  -> {hex} | {error: type}
#   decode   {hex, chunks?, max_packet?}           -> {events: [...], error: code|null, buffered}
#            chunks: sizes to feed in turn (the rest goes in one last chunk)
#   session  {config, steps}                      -> [one output per step]
#            steps: ["connect", t] ["recv", hex, t] ["events"] ["send", t]
#                   ["publish", topic, payload, qos, retain] ["ack", pid]
#                   ["ping", t] ["ping_due", t] ["dead", t] ["lost"]
#                   ["inflight"] ["can_publish", qos] ["last_pid", n] ["disconnect"]

from binascii import hexlify, unhexlify

from protocol import mqtt


def _hex(b):
    return hexlify(bytes(b)).decode()


def _event(ev):
    if isinstance(ev, mqtt.ConnAck):
        return {"type": "ConnAck", "session_present": ev.session_present, "rc": ev.rc}
    if isinstance(ev, mqtt.Publish):
        return {
            "type": "Publish",
            "topic": ev.topic,
            "payload": _hex(ev.payload),
            "qos": ev.qos,
            "retain": ev.retain,
            "dup": ev.dup,
            "pid": ev.pid,
        }
    if isinstance(ev, mqtt.PubAck):
        return {"type": "PubAck", "pid": ev.pid}
    if isinstance(ev, mqtt.SubAck):
        return {"type": "SubAck", "pid": ev.pid, "granted": list(ev.granted)}
    if isinstance(ev, mqtt.UnsubAck):
        return {"type": "UnsubAck", "pid": ev.pid}
    if isinstance(ev, mqtt.PingResp):
        return {"type": "PingResp"}
    raise ValueError("unknown event " + repr(ev))


def _payload(a):
    if "payload_hex" in a:
        return unhexlify(a["payload_hex"])
    if "payload_len" in a:
        fill = a.get("fill", "x").encode()
        n = a["payload_len"]
        return (fill * (n // len(fill) + 1))[:n]
    return a.get("payload", "").encode()


def _encode(packet, a):
    if packet == "connect":
        will = a.get("will")
        return mqtt.connect(
            a["client_id"],
            a.get("keepalive_s", 60),
            a.get("clean_session", True),
            will[0] if will else None,
            will[1].encode() if will else b"",
            will[2] if will else 0,
            will[3] if will else False,
            a.get("username"),
            a.get("password"),
        )
    if packet == "publish":
        return mqtt.publish(a["topic"], _payload(a), a.get("qos", 0), a.get("retain", False), a.get("dup", False), a.get("pid", 0))
    if packet == "puback":
        return mqtt.puback(a["pid"])
    if packet == "subscribe":
        return mqtt.subscribe(a["pid"], [(f[0], f[1]) for f in a["filters"]])
    if packet == "unsubscribe":
        return mqtt.unsubscribe(a["pid"], a["filters"])
    if packet == "pingreq":
        return mqtt.pingreq()
    if packet == "disconnect":
        return mqtt.disconnect()
    if packet == "connack":
        return mqtt.connack(a["session_present"], a["rc"])
    if packet == "suback":
        return mqtt.suback(a["pid"], a["granted"])
    if packet == "unsuback":
        return mqtt.unsuback(a["pid"])
    if packet == "pingresp":
        return mqtt.pingresp()
    raise ValueError("unknown packet " + packet)


def _drain(s):
    out = []
    try:
        while True:
            ev = s.next_event()
            if ev is None:
                return out
            out.append(_event(ev))
    except mqtt.MqttError as e:
        out.append({"error": e.code})
        return out


def _session(config, steps):
    will = config.get("will")
    s = mqtt.Session(
        config.get("client_id", "st-01"),
        config.get("keepalive_s", 30),
        config.get("clean_session", False),
        (will[0], will[1].encode(), will[2], will[3]) if will else None,
        config.get("username"),
        config.get("password"),
        [(f[0], f[1]) for f in config.get("subscriptions", [])],
        config.get("max_inflight", 16),
    )
    out = []
    for st in steps:
        op = st[0]
        try:
            if op == "connect":
                s.connect(st[1])
                r = None
            elif op == "recv":
                s.receive_data(unhexlify(st[1]), st[2])
                r = None
            elif op == "events":
                r = _drain(s)
            elif op == "send":
                r = [_hex(p) for p in s.data_to_send(st[1])]
            elif op == "publish":
                r = s.publish(st[1], st[2].encode(), st[3], st[4])
            elif op == "ack":
                s.ack(st[1])
                r = None
            elif op == "ping":
                s.ping(st[1])
                r = None
            elif op == "ping_due":
                r = s.ping_due(st[1])
            elif op == "dead":
                r = s.dead(st[1])
            elif op == "lost":
                s.connection_lost()
                r = None
            elif op == "disconnect":
                s.disconnect()
                r = None
            elif op == "inflight":
                r = s.inflight()
            elif op == "can_publish":
                r = s.can_publish(st[1])
            elif op == "last_pid":
                s._last_pid = st[1]  # jump ahead to exercise the wrap without 65535 publishes
                r = None
            else:
                raise ValueError("unknown step " + op)
        except (ValueError, TypeError) as e:
            r = {"error": type(e).__name__}
        out.append(r)
    return out


def run(inp):
    op = inp["op"]
    if op == "encode":
        try:
            pkt = _encode(inp["packet"], inp.get("args", {}))
        except (ValueError, TypeError) as e:
            return {"error": type(e).__name__}
        if inp.get("summary"):
            return {"len": len(pkt), "head": _hex(pkt[: inp["summary"]])}
        return {"hex": _hex(pkt)}
    if op == "varint":
        try:
            return {"hex": _hex(mqtt.encode_varint(inp["n"]))}
        except ValueError as e:
            return {"error": type(e).__name__}
    if op == "decode":
        d = mqtt.Decoder(inp.get("max_packet", mqtt.MAX_PACKET))
        data = unhexlify(inp["hex"])
        chunks = []
        i = 0
        for n in inp.get("chunks", []):
            chunks.append(data[i : i + n])
            i += n
        chunks.append(data[i:])
        events = []
        err = None
        try:
            for c in chunks:
                d.receive_data(c)
                while True:
                    ev = d.next_event()
                    if ev is None:
                        break
                    events.append(_event(ev))
        except mqtt.MqttError as e:
            err = e.code
        return {"events": events, "error": err, "buffered": d.buffered()}
    if op == "session":
        return _session(inp.get("config", {}), inp["steps"])
    raise ValueError("unknown op " + repr(op))
