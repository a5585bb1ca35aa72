# Canonical JSON: one byte string per value, identical on MicroPython and CPython.
#
# What gets signed must serialise to the same bytes everywhere, and the two
# interpreters' json.dumps disagree (separators, escaping, and MicroPython
# dicts are unordered), so we encode by hand:
#
# - objects with str keys, sorted by code point (MicroPython compares str by
#   UTF-8 bytes, which orders the same way); lists (tuples encode as lists);
#   str; int; true, false, null. Nothing else: a float raises TypeError,
#   because nothing signed, billed or compared may hold one.
# - no whitespace: separators are "," and ":".
# - strings: printable ASCII (U+0020..U+007E) passes through except '"' and
#   '\'; \b \f \n \r \t use their short escapes; every other character is
#   \u followed by 4 lowercase hex digits, characters above U+FFFF as a
#   surrogate pair. The output is therefore pure ASCII.
# - nesting deeper than MAX_DEPTH containers is refused, in both directions,
#   so the recursion stays small on a microcontroller's stack.
#
# loads() is the matching reader: json.loads, then a walk that refuses floats
# and excess depth and repairs one MicroPython quirk: its json.loads turns an
# escaped surrogate pair into two separate (invalid) characters; we join them.

import json

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


MAX_DEPTH = const(32)

_SHORT = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "\\": "\\\\"}


def dumps(obj):
    """Encode obj as canonical JSON; returns ASCII bytes.

    Raises TypeError for a value of another type (float included) or a
    non-str key, ValueError for a lone surrogate or nesting deeper than
    MAX_DEPTH."""
    parts = []  # type: list[str]
    _enc(obj, parts, 0)
    return "".join(parts).encode()


def _enc(v, out, depth):
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, str):
        _str(v, out)
    elif isinstance(v, int):
        out.append("%d" % v)  # "%d", not str(): an int subclass could override __str__
    elif isinstance(v, dict):
        if depth >= MAX_DEPTH:
            raise ValueError("nested deeper than %d" % MAX_DEPTH)
        for k in v:
            if not isinstance(k, str):
                raise TypeError("object keys must be str, not " + type(k).__name__)
        sep = "{"
        for k in sorted(v):
            out.append(sep)
            sep = ","
            _str(k, out)
            out.append(":")
            _enc(v[k], out, depth + 1)
        out.append("{}" if sep == "{" else "}")
    elif isinstance(v, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise ValueError("nested deeper than %d" % MAX_DEPTH)
        sep = "["
        for x in v:
            out.append(sep)
            sep = ","
            _enc(x, out, depth + 1)
        out.append("[]" if sep == "[" else "]")
    elif isinstance(v, float):
        raise TypeError("floats are not allowed in canonical JSON (use integer units)")
    else:
        raise TypeError("cannot encode " + type(v).__name__ + " as canonical JSON")


def _str(s, out):
    # Fast path: most strings (ids, statuses, ops) need no escaping at all.
    for c in s:
        if c < " " or c > "~" or c == '"' or c == "\\":
            break
    else:
        out.append('"')
        out.append(s)
        out.append('"')
        return
    out.append('"')
    for c in s:
        o = ord(c)
        if 0x20 <= o < 0x7F and c != '"' and c != "\\":
            out.append(c)
        elif c in _SHORT:
            out.append(_SHORT[c])
        elif o < 0x10000:
            if 0xD800 <= o < 0xE000:
                raise ValueError("lone surrogate U+%04X in string" % o)
            out.append("\\u%04x" % o)
        else:
            o -= 0x10000
            out.append("\\u%04x\\u%04x" % (0xD800 + (o >> 10), 0xDC00 + (o & 0x3FF)))
    out.append('"')


def loads(data):
    """Parse JSON text (bytes in UTF-8, or str) into dict/list/str/int/bool/None.

    Accepts any valid JSON layout, not only canonical bytes. Raises
    ValueError for invalid JSON or UTF-8, a float anywhere, a lone
    surrogate, or nesting deeper than MAX_DEPTH."""
    if isinstance(data, str):
        data = data.encode()  # CPython: a str holding a lone surrogate fails here
    try:
        text = str(data, "utf-8")
        obj = json.loads(text)
    except (ValueError, RuntimeError) as e:  # RuntimeError: CPython's RecursionError
        raise ValueError("not JSON: " + str(e))
    # Surrogates can only come from a \ud... escape, or (MicroPython) from raw
    # UTF-8 bytes 0xED..; only then is every string scanned.
    fix = "\\ud" in text or "\\uD" in text or b"\xed" in data
    return _walk(obj, 0, fix)


def _walk(v, depth, fix):
    if isinstance(v, str):
        return _join_surrogates(v) if fix else v
    if isinstance(v, dict):
        if depth >= MAX_DEPTH:
            raise ValueError("nested deeper than %d" % MAX_DEPTH)
        if fix:
            d = {}
            for k in v:
                d[_join_surrogates(k)] = _walk(v[k], depth + 1, True)
            return d
        for k in v:
            _walk(v[k], depth + 1, False)
        return v
    if isinstance(v, list):
        if depth >= MAX_DEPTH:
            raise ValueError("nested deeper than %d" % MAX_DEPTH)
        for i in range(len(v)):
            v[i] = _walk(v[i], depth + 1, fix)
        return v
    if isinstance(v, float):
        raise ValueError("floats are not allowed (use integer units)")
    return v  # int, bool, None


def _join_surrogates(s):
    # CPython has already joined pairs, so only lone surrogates remain to refuse;
    # MicroPython hands us each half of a pair as its own character.
    for c in s:
        if 0xD800 <= ord(c) < 0xE000:
            break
    else:
        return s
    out = []
    hi = 0
    for c in s:
        o = ord(c)
        if 0xD800 <= o < 0xDC00 and not hi:
            hi = o
        elif 0xDC00 <= o < 0xE000 and hi:
            out.append(chr(0x10000 + ((hi - 0xD800) << 10) + (o - 0xDC00)))
            hi = 0
        elif hi or 0xD800 <= o < 0xE000:
            raise ValueError("lone surrogate in string")
        else:
            out.append(c)
    if hi:
        raise ValueError("lone surrogate in string")
    return "".join(out)
