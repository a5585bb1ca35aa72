# Tests for protocol/hmac256.py against CPython's hmac module and RFC 4231.

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import hmac256


@given(st.binary(max_size=200), st.binary(max_size=300))
def test_matches_cpython_hmac(key, msg):
    want = hmac.new(key, msg, hashlib.sha256).digest()
    assert hmac256.digest(key, msg) == want
    assert hmac256.hexdigest(key, msg) == hmac.new(key, msg, hashlib.sha256).hexdigest().encode()


@given(st.binary(min_size=65, max_size=300), st.lists(st.binary(max_size=50), max_size=5))
def test_incremental_and_long_keys(key, chunks):
    h = hmac256.Hmac(bytearray(key))
    for c in chunks:
        h.update(memoryview(c))
    assert h.digest() == hmac.new(key, b"".join(chunks), hashlib.sha256).digest()


@pytest.mark.parametrize(
    "key, msg, mac",
    [  # RFC 4231 test cases 1, 2 and 6
        (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (
            b"\xaa" * 131,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        ),
    ],
)
def test_rfc4231(key, msg, mac):
    assert hmac256.hexdigest(key, msg) == mac.encode()


def test_key_must_be_bytes():
    with pytest.raises(TypeError):
        hmac256.digest("text key", b"m")


@given(st.binary(max_size=40), st.binary(max_size=40))
def test_equal(a, b):
    assert hmac256.equal(a, b) == (a == b)
    assert hmac256.equal(a, bytearray(a))


def test_equal_lengths_differ():
    assert not hmac256.equal(b"abc", b"abcd")
    assert hmac256.equal(b"", b"")
