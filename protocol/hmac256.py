# HMAC-SHA256 (RFC 2104) over hashlib.sha256, for boards whose MicroPython has no hmac module.
#
# HMAC(K, m) = H((K' ^ opad) || H((K' ^ ipad) || m)) where K' is the key
# hashed if longer than the 64-byte block, then zero-padded to 64 bytes.
# MicroPython's sha256 has no hexdigest() and no copy(), so hex goes
# through binascii.hexlify and each Hmac object is used for one digest.

import hashlib
from binascii import hexlify

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_BLOCK = const(64)
DIGEST_SIZE = const(32)


def pads(key):
    """The inner and outer key blocks (key XOR ipad, key XOR opad), 64 bytes each.

    For callers that hash many messages under one key (PBKDF2 rounds):
    MicroPython's sha256 objects cannot be copied, so they keep the pads."""
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError("key must be bytes")
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    ipad = bytearray(_BLOCK)
    opad = bytearray(_BLOCK)
    for i in range(len(key)):
        ipad[i] = key[i]
        opad[i] = key[i]
    for i in range(_BLOCK):
        ipad[i] ^= 0x36
        opad[i] ^= 0x5C
    return bytes(ipad), bytes(opad)


class Hmac:
    """Incremental HMAC-SHA256: Hmac(key), update(bytes) any number of
    times, then digest() once."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key, msg=None):
        ipad, opad = pads(key)
        self._inner = hashlib.sha256(ipad)
        self._outer = hashlib.sha256(opad)
        if msg is not None:
            self._inner.update(msg)

    def update(self, msg):
        """Feed more message bytes (bytes, bytearray or memoryview)."""
        self._inner.update(msg)

    def digest(self):
        """The 32-byte MAC. Call once: the object is spent afterwards."""
        outer = self._outer
        outer.update(self._inner.digest())
        return outer.digest()


def digest(key, msg):
    """HMAC-SHA256 of msg under key, 32 bytes."""
    return Hmac(key, msg).digest()


def hexdigest(key, msg):
    """HMAC-SHA256 of msg under key as 64 lowercase hex digits (bytes)."""
    return hexlify(Hmac(key, msg).digest())


def equal(a, b):
    """Compare two byte strings in time that depends on their length only.

    Unequal lengths return False at once: MAC lengths are public."""
    if len(a) != len(b):
        return False
    r = 0
    for i in range(len(a)):
        r |= a[i] ^ b[i]
    return r == 0
