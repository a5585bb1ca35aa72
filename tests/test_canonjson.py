# Tests for protocol/canonjson.py: byte-exact canonical encoding and the strict reader.

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import canonjson

# Any value canonjson accepts. Text excludes lone surrogates (not encodable).
values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=30,
)


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, b"null"),
        (True, b"true"),
        (False, b"false"),
        (0, b"0"),
        (-17, b"-17"),
        (2**70, b"1180591620717411303424"),
        ("", b'""'),
        ("plain ascii ~!", b'"plain ascii ~!"'),
        ('q"b\\s/', b'"q\\"b\\\\s/"'),
        ("\b\f\n\r\t", b'"\\b\\f\\n\\r\\t"'),
        ("\x00\x01\x1f\x7f", b'"\\u0000\\u0001\\u001f\\u007f"'),
        ("é", b'"\\u00e9"'),
        ("€", b'"\\u20ac"'),
        ("\u2028", b'"\\u2028"'),
        ("\uffff", b'"\\uffff"'),
        ("\U0001F600", b'"\\ud83d\\ude00"'),
        ("\U0010FFFF", b'"\\udbff\\udfff"'),
        ([], b"[]"),
        ({}, b"{}"),
        ((1, "a"), b'[1,"a"]'),
        ({"b": 1, "a": [True, None], "A": {}}, b'{"A":{},"a":[true,null],"b":1}'),
        # code point order: "Z" < "a" < "é" < "€" < U+1F600
        ({"\U0001F600": 1, "€": 2, "é": 3, "a": 4, "Z": 5}, b'{"Z":5,"a":4,"\\u00e9":3,"\\u20ac":2,"\\ud83d\\ude00":1}'),
        ({"k": {"n": [1, [2, [3]]]}}, b'{"k":{"n":[1,[2,[3]]]}}'),
    ],
)
def test_dumps_exact_bytes(value, expected):
    assert canonjson.dumps(value) == expected


@pytest.mark.parametrize("bad", [1.0, float("nan"), [0.5], {"a": 1e3}, b"bytes", {1: "int key"}, {("t",): 1}, set()])
def test_dumps_refuses_other_types(bad):
    with pytest.raises(TypeError):
        canonjson.dumps(bad)


def test_dumps_refuses_lone_surrogate():
    with pytest.raises(ValueError):
        canonjson.dumps("a\ud800b")
    with pytest.raises(ValueError):
        canonjson.dumps({"\udc00": 1})


def test_depth_limit_both_ways():
    ok = []
    for _ in range(canonjson.MAX_DEPTH - 1):
        ok = [ok]
    assert canonjson.loads(canonjson.dumps(ok)) == ok
    with pytest.raises(ValueError):
        canonjson.dumps([ok])
    with pytest.raises(ValueError):
        canonjson.loads(b"[" * (canonjson.MAX_DEPTH + 1) + b"]" * (canonjson.MAX_DEPTH + 1))
    with pytest.raises(ValueError):  # CPython's own recursion limit becomes ValueError too
        canonjson.loads(b"[" * 100000 + b"]" * 100000)


@given(values)
def test_matches_cpython_json_up_to_del(value):
    # CPython's ensure_ascii output is the same canonical form, except that it
    # leaves U+007F raw.
    ours = canonjson.dumps(value).decode("ascii")
    theirs = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert ours == theirs.replace("\x7f", "\\u007f")


@given(values)
def test_round_trip(value):
    data = canonjson.dumps(value)
    assert canonjson.loads(data) == json.loads(data)
    assert canonjson.dumps(canonjson.loads(data)) == data


def test_loads_accepts_any_layout_and_utf8():
    assert canonjson.loads(b' { "b" : [ 1 , "\xc3\xa9" ] , "a" : null } ') == {"a": None, "b": [1, "é"]}
    assert canonjson.loads('"\\uD83D\\uDE00"') == "\U0001F600"
    assert canonjson.loads(b'{"\\ud83d\\ude00":"x\\ud83d\\ude00y"}') == {"\U0001F600": "x\U0001F600y"}


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"{",
        b"[1,]",
        b"1.5",
        b"[1e3]",
        b'{"a":-0.0}',
        b"NaN",
        b"[Infinity]",
        b'"\\ud800"',
        b'"\\udc00\\ud800"',
        b'"\\ud83dx"',
        b'"\xed\xa0\x80"',  # a surrogate as raw (CESU-8) bytes
        b'"\xff"',  # not UTF-8
        b'{"a":1} x',
    ],
)
def test_loads_refuses(bad):
    with pytest.raises(ValueError):
        canonjson.loads(bad)
