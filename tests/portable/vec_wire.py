# Golden-vector runner for protocol/wire.py (and its helpers canonjson, hmac256): run(input) -> output.
#
# Inputs carry bytes as hex (keys, HMAC messages) or as text (payloads, which
# are UTF-8). Ops:
#   encode  {key, kind, sender, seq, t, body}             -> {payload}
#   decode  {payload, keys: {sender: [hex, ...]},
#            expect_sender?, leaf?}                        -> {kind, sender, seq, t, body, digest, key_index} | {error}
#   canon   {value}                                       -> {json}
#   hmac    {key, msg}                                    -> {mac}

from binascii import hexlify, unhexlify

from protocol import canonjson, hmac256, wire


def _hex(b):
    return hexlify(b).decode()


def run(inp):
    op = inp["op"]
    if op == "encode":
        payload = wire.encode(
            unhexlify(inp["key"]), inp["kind"], inp["sender"], inp["seq"], inp["t"], inp["body"]
        )
        return {"payload": payload.decode()}
    if op == "decode":
        keys = {}
        for sender in inp["keys"]:
            keys[sender] = [unhexlify(k) for k in inp["keys"][sender]]
        try:
            m = wire.decode(
                inp["payload"].encode(),
                keys.get,
                expect_sender=inp.get("expect_sender"),
                leaf=inp.get("leaf"),
            )
        except wire.WireError as e:
            return {"error": e.code}
        return {
            "kind": m.kind,
            "sender": m.sender,
            "seq": m.seq,
            "t": m.t,
            "body": m.body,
            "digest": _hex(m.digest),
            "key_index": m.key_index,
        }
    if op == "canon":
        return {"json": canonjson.dumps(inp["value"]).decode()}
    if op == "hmac":
        return {"mac": _hex(hmac256.digest(unhexlify(inp["key"]), unhexlify(inp["msg"])))}
    raise ValueError("unknown op " + repr(op))
