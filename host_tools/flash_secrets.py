# Secrets `overstay flash` makes for a station: technician PIN and its salted hash, MQTT password, the Mosquitto password-file line and ACL block.
#
# Nothing here prints or logs; the caller shows each secret once on the
# operator's terminal.
#
# Technician PIN hash (the `pin_hash` config key), one string:
#   pbkdf2-sha256$<iterations>$<salt hex>$<derived key hex>
# = PBKDF2-HMAC-SHA256(password = the PIN's ASCII digits, salt, iterations,
# 32-byte key) as in RFC 8018 (hashlib.pbkdf2_hmac on CPython). A board
# verifies it with protocol/hmac256 or plain hashlib.sha256: one key block,
# U1 = HMAC(pin, salt || 00000001), Ui = HMAC(pin, U(i-1)), key = U1 ^ ... ^ Un;
# the ipad/opad-padded PIN can be built once, so each iteration is two sha256
# calls. Compare the hex in constant time.
#
# Mosquitto password line: what `mosquitto_passwd` (2.x) writes,
#   USER:$7$101$<base64 12-byte salt>$<base64 PBKDF2-HMAC-SHA512, 64 bytes>
import base64
import hashlib
import hmac
import secrets

PIN_DIGITS = 6
PIN_ITERATIONS = 1000
PIN_SALT_BYTES = 16
PIN_SCHEME = "pbkdf2-sha256"
MQTT_PASSWORD_BYTES = 24  # 32 URL-safe characters
MOSQUITTO_ITERATIONS = 101
MOSQUITTO_SALT_BYTES = 12


def new_pin(digits=PIN_DIGITS):
    """A random PIN of `digits` digits that is not one repeated digit or a straight run."""
    while True:
        pin = "".join(secrets.choice("0123456789") for _ in range(digits))
        steps = {(int(b) - int(a)) % 10 for a, b in zip(pin, pin[1:])}
        if steps not in ({0}, {1}, {9}):
            return pin


def pin_hash(pin, salt=None, iterations=PIN_ITERATIONS):
    if not isinstance(pin, str) or not pin.isdigit() or not pin.isascii():
        raise ValueError("a PIN is ASCII digits")
    salt = secrets.token_bytes(PIN_SALT_BYTES) if salt is None else bytes(salt)
    dk = hashlib.pbkdf2_hmac("sha256", pin.encode("ascii"), salt, iterations, 32)
    return "%s$%d$%s$%s" % (PIN_SCHEME, iterations, salt.hex(), dk.hex())


def check_pin(pin, stored):
    """True when pin matches a pin_hash() string (the host-side reference the firmware must agree with)."""
    try:
        scheme, iterations, salt, dk = stored.split("$")
        if scheme != PIN_SCHEME:
            return False
        want = bytes.fromhex(dk)
        got = hashlib.pbkdf2_hmac("sha256", pin.encode("ascii"), bytes.fromhex(salt), int(iterations), len(want))
    except (ValueError, AttributeError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(got, want)


def new_mqtt_password():
    return secrets.token_urlsafe(MQTT_PASSWORD_BYTES)


def mosquitto_line(user, password, salt=None, iterations=MOSQUITTO_ITERATIONS):
    """The password-file line mosquitto_passwd would write for user/password."""
    salt = secrets.token_bytes(MOSQUITTO_SALT_BYTES) if salt is None else bytes(salt)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, 64)
    return "%s:$7$%d$%s$%s" % (user, iterations, base64.b64encode(salt).decode(), base64.b64encode(dk).decode())


# What a station publishes (its own topics) and reads, under overstay/v1/ (docs/mqtt.md).
STATION_WRITES = ("state", "event", "session", "avail")
STATION_READS = ("ack", "cmd")
SITE_READS = ("occupancy", "tariff")


def acl_lines(station, site):
    """The strict Mosquitto ACL block for one station (the per-station form `overstay keys acl` prints)."""
    out = ["user " + station]
    for leaf in STATION_WRITES:
        out.append("topic write overstay/v1/%s/%s/%s" % (site, station, leaf))
    for leaf in STATION_READS:
        out.append("topic read overstay/v1/%s/%s/%s" % (site, station, leaf))
    for leaf in SITE_READS:
        out.append("topic read overstay/v1/%s/%s" % (site, leaf))
    return out
