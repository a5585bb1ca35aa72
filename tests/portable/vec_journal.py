# Golden-vector runner for protocol/journal.py: the sans-IO codec only (no files), identical on CPython and MicroPython.
#
# Input ops:
#   {"op": "crc32", "hex"}                          -> {"crc32", "crc32_py"}
#   {"op": "encode", "records": [{"type", "id", "payload"}]} -> {"hex"}
#   {"op": "scan", "hex"}                           -> {"records": [{"id", "type", "payload"}], "valid", "stop"}
#   {"op": "recover", "hex", ["plan": {"n", "type", "soft", "hard", "reserve"}]}
#       -> {"valid", "stop", "next_id", "dead_bytes", "live": [[id, type]], "meta": [[key, id]], ["plan": [compact, drop]]}
# Payloads and images are hex strings.

from binascii import hexlify, unhexlify

from protocol import journal


def _hex(b):
    return hexlify(b).decode()


def run(inp):
    op = inp["op"]
    if op == "crc32":
        data = unhexlify(inp["hex"])
        return {"crc32": journal.crc32(data), "crc32_py": journal.crc32_py(data)}
    if op == "encode":
        img = bytearray()
        for r in inp["records"]:
            img += journal.encode(r["type"], r["id"], unhexlify(r["payload"]))
        return {"hex": _hex(img)}
    if op == "scan":
        records, valid, stop = journal.scan(unhexlify(inp["hex"]))
        recs = [{"id": rid, "type": t, "payload": _hex(p)} for rid, t, p in records]
        return {"records": recs, "valid": valid, "stop": stop}
    if op == "recover":
        ix, stop = journal.recover(unhexlify(inp["hex"]))
        meta = sorted([[k, ix.ids[i]] for k, i in ix.meta.items()])
        out = {
            "valid": ix.size,
            "stop": stop,
            "next_id": ix.next_id,
            "dead_bytes": ix.dead_bytes,
            "live": [[ix.ids[i], ix.types[i]] for i in ix.live()],
            "meta": meta,
        }
        p = inp.get("plan")
        if p is not None:
            compact, drop = ix.plan(p["n"], p["type"], p["soft"], p["hard"], p.get("reserve", 0))
            out["plan"] = [compact, drop]
        return out
    raise ValueError("unknown op " + str(op))
