# Technician PIN for the console: the stored pbkdf2-sha256 hash, verified a few iterations at a time, and the persisted lockout.
#
# The hash is what `overstay flash` writes into config.json (host_tools/flash_secrets.py):
#   pin_hash = "pbkdf2-sha256$<iterations>$<salt hex>$<key hex>"
# PBKDF2-HMAC-SHA256 (RFC 8018) with one 32-byte block:
#   U1 = HMAC(pin, salt || 00000001), Ui = HMAC(pin, U(i-1)), key = U1 ^ U2 ^ ... ^ Un
# U1 comes from protocol.hmac256; the later rounds reuse the PIN's padded
# ipad/opad blocks built once (MicroPython's sha256 has no copy()), so each
# round is two sha256 calls, and the XOR runs on one big int. Pbkdf2.step(n)
# does n rounds and returns, so the console never holds the event loop for
# the whole derivation (1000 rounds is about half a second on an ESP32).
#
# Lockout: after MAX_TRIES wrong PINs in a row the console refuses PINs for
# LOCK_BASE_MS, doubling with every further wrong PIN (capped at LOCK_MAX_MS).
# The count and the time left are kept in a small file (console.json,
# replaced atomically) so a power cycle does not reset them: time left is
# re-saved every PERSIST_MS while locked, and a reboot resumes from the last
# saved value (being off never shortens a lockout).

import hashlib
from binascii import hexlify, unhexlify

from protocol import canonjson, hmac256
from stall import store

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


SCHEME = "pbkdf2-sha256"
MAX_TRIES = const(5)  # wrong PINs in a row before the first lockout
LOCK_BASE_MS = const(60000)  # first lockout; doubles with each further wrong PIN
LOCK_MAX_MS = const(3600000)
PERSIST_MS = const(30000)  # how often a running lockout's time left is saved
MAX_ITERATIONS = const(1000000)  # a hash asking for more is refused as unreadable


def parse_hash(stored):
    """(iterations, salt, key) of a pin_hash string, or None when it is not one."""
    if not isinstance(stored, str):
        return None
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        return None
    try:
        n = int(parts[1])
        salt = unhexlify(parts[2])
        key = unhexlify(parts[3])
    except (ValueError, TypeError):
        return None
    if n < 1 or n > MAX_ITERATIONS or not salt or len(key) != hmac256.DIGEST_SIZE:
        return None
    return n, salt, key


def valid_pin(pin):
    """A PIN is 4 to 12 ASCII digits."""
    if not isinstance(pin, str) or not 4 <= len(pin) <= 12:
        return False
    for c in pin:
        if c < "0" or c > "9":
            return False
    return True


class Pbkdf2:
    """PBKDF2-HMAC-SHA256 of one 32-byte block, run in steps: step(n) -> done?"""

    def __init__(self, password, salt, iterations):
        self._ipad, self._opad = hmac256.pads(password)
        u = hmac256.digest(password, salt + b"\x00\x00\x00\x01")
        self._u = u
        self._acc = int.from_bytes(u, "big")
        self.left = iterations - 1

    def step(self, n):
        """Run up to n more rounds; True when the key is ready."""
        sha = hashlib.sha256
        u = self._u
        acc = self._acc
        k = n if n < self.left else self.left
        for _ in range(k):
            h = sha(self._ipad)
            h.update(u)
            o = sha(self._opad)
            o.update(h.digest())
            u = o.digest()
            acc ^= int.from_bytes(u, "big")
        self._u = u
        self._acc = acc
        self.left -= k
        return self.left == 0

    def key(self):
        return self._acc.to_bytes(hmac256.DIGEST_SIZE, "big")


def same(a, b):
    """Constant-time equality of two byte strings of the same length."""
    if len(a) != len(b):
        return False
    d = 0
    for i in range(len(a)):
        d |= a[i] ^ b[i]
    return d == 0


class PinCheck:
    """One verification in progress: PinCheck(pin, parsed hash); step(n) -> done; ok."""

    def __init__(self, pin, parsed):
        n, salt, key = parsed
        self.want = key
        self.job = Pbkdf2(pin.encode(), salt, n)
        self.ok = None

    def step(self, n):
        if self.job.step(n):
            self.ok = same(self.job.key(), self.want)
            return True
        return False


def hash_pin(pin, salt, iterations):
    """The pin_hash string for pin (tests and tools; the stall only verifies)."""
    job = Pbkdf2(pin.encode(), salt, iterations)
    job.step(iterations)
    return "%s$%d$%s$%s" % (SCHEME, iterations, hexlify(salt).decode(), hexlify(job.key()).decode())


class Lockout:
    """Wrong-PIN count and lockout on the console's clock, persisted in `path` on `fs`."""

    def __init__(self, fs, path):
        self.fs = fs
        self.path = path
        self.fails = 0
        self.until = 0  # console-clock ms when the lockout ends (0: none)
        self.loaded = False
        self._saved_at = 0

    def load(self, now_ms):
        if self.loaded:
            return
        self.loaded = True
        try:
            data = store.read_file(self.fs, self.path)
            if data:
                d = canonjson.loads(data)
                self.fails = int(d.get("fails", 0))
                left = int(d.get("lock_ms", 0))
                if left > 0:
                    self.until = now_ms + left
        except Exception:
            # An unreadable file must not open the door: treat it as a lockout.
            self.fails = MAX_TRIES
            self.until = now_ms + LOCK_BASE_MS
        self._saved_at = now_ms

    def left_ms(self, now_ms):
        self.load(now_ms)
        if self.until and now_ms < self.until:
            return self.until - now_ms
        return 0

    def failed(self, now_ms):
        """Count a wrong PIN; returns the lockout it starts in ms (0 for none)."""
        self.load(now_ms)
        self.fails += 1
        lock = 0
        if self.fails >= MAX_TRIES:
            shift = self.fails - MAX_TRIES
            lock = LOCK_BASE_MS << (shift if shift < 16 else 16)
            if lock > LOCK_MAX_MS:
                lock = LOCK_MAX_MS
            self.until = now_ms + lock
        self.save(now_ms)
        return lock

    def tries_left(self):
        n = MAX_TRIES - self.fails
        return n if n > 0 else 0

    def succeeded(self, now_ms):
        self.load(now_ms)
        if self.fails or self.until:
            self.fails = 0
            self.until = 0
            self.save(now_ms)

    def tick(self, now_ms):
        """Re-save the time left now and then while locked (cheap otherwise)."""
        if not self.loaded or not self.until:
            return
        if now_ms >= self.until:
            self.until = 0
            self.save(now_ms)
        elif now_ms - self._saved_at >= PERSIST_MS:
            self.save(now_ms)

    def save(self, now_ms):
        left = self.until - now_ms if self.until and now_ms < self.until else 0
        self._saved_at = now_ms
        try:
            store.write_file(self.fs, self.path, canonjson.dumps({"fails": self.fails, "lock_ms": left}))
        except OSError:
            pass  # a full or broken fs keeps the lockout in RAM at least

    def clear(self):
        """Forget everything (factory reset removes the file itself)."""
        self.fails = 0
        self.until = 0
