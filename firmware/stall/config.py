# Stall configuration: one flat JSON object on flash, validated against a versioned schema with defaults and secrets.
#
# load(fs, path) reads config.json, fills defaults and validates every key;
# a missing file gives the defaults (an unprovisioned stall), a broken one
# raises ConfigError with the key at fault. Unknown keys are errors: a typo
# must not silently leave a default in charge. `schema` is the file's format
# version: older ones are migrated on load, newer ones refused.
#
# Secrets (station_key, site_key, mqtt_password, wifi_password, pin_hash) are
# kept here, never logged: public(cfg) masks them. Keys are hex strings of at
# least 16 bytes (wire.MIN_KEY_BYTES); empty means not provisioned.
#
# The backend may change only keys marked remote (timings and thresholds),
# via a signed config command: apply_remote() validates the merged result.
# Integers only (canonical JSON, and so signed commands, has no floats).

from protocol import canonjson, connector, fee, wire
from stall import store

SCHEMA = 1

# Types.
_STR = 0  # non-empty string
_INT = 1  # integer >= 0
_BOOL = 2
_KEY = 3  # hex secret key ("" = not provisioned)
_OBJ = 4  # object (the default tariff)
_OPT_STR = 5  # string or null
_OPT_INT = 6  # integer >= 0 or null
_ID = 7  # site/station id

DEFAULT_TARIFF = {"id": "unset", "version": 0, "rate": 0}

# name: (type, default, remote, secret)
FIELDS = {
    "schema": (_INT, SCHEMA, False, False),
    # identity and keys
    "site": (_ID, "site", False, False),
    "station": (_ID, "stall", False, False),
    "connector": (_INT, 1, False, False),
    "station_key": (_KEY, "", False, True),
    "site_key": (_KEY, "", False, True),
    "pin_hash": (_OPT_STR, None, False, True),  # technician PIN (console, later)
    # Message numbers start above this: the flashing tool writes the Unix ms of
    # enrolment, so a replacement board (or a wiped journal) under the same
    # station id never reuses a number the bridge already holds, even before NTP.
    "seq_floor": (_INT, 0, False, False),
    # network
    "wifi_ssid": (_OPT_STR, None, False, False),
    "wifi_password": (_OPT_STR, None, False, True),
    "mqtt_host": (_STR, "127.0.0.1", False, False),
    "mqtt_port": (_INT, 1883, False, False),
    "mqtt_user": (_OPT_STR, None, False, False),
    "mqtt_password": (_OPT_STR, None, False, True),
    "mqtt_tls": (_BOOL, False, False, False),
    "mqtt_keepalive_s": (_INT, 30, False, False),
    "mqtt_backoff_max_ms": (_INT, 60000, False, False),  # reconnect delay cap (full jitter)
    "ntp_host": (_STR, "pool.ntp.org", False, False),
    "ntp_period_s": (_INT, 3600, True, False),
    # billing and its timings
    "tariff": (_OBJ, DEFAULT_TARIFF, False, False),
    "sample_ms": (_INT, 100, True, False),
    "tick_ms": (_INT, 1000, True, False),
    "pump_ms": (_INT, 100, True, False),  # outbox/state publishing period
    "heartbeat_s": (_INT, 60, True, False),
    "occupancy_ttl_s": (_INT, 900, True, False),
    "unsynced_hold_s": (_INT, 600, True, False),
    "resend_s": (_INT, 60, True, False),
    "outbox_window": (_INT, 16, True, False),
    "cmd_max_age_s": (_INT, 3600, True, False),
    "max_timeline": (_INT, 240, False, False),
    "journal_soft": (_INT, 16384, False, False),
    "journal_hard": (_INT, 131072, False, False),
    "session_reserve": (_INT, 49152, False, False),
    # safety
    "crash_n": (_INT, 5, False, False),
    "crash_window_s": (_INT, 600, False, False),
    "wdt_ms": (_INT, 8000, False, False),
    # hardware (docs/hardware.md)
    "hardware": (_STR, "sim", False, False),  # "sim" or "board"
    "pilot_adc_pin": (_INT, 34, False, False),
    "pilot_vref_mv": (_INT, 3300, False, False),
    "pilot_offset_mv": (_INT, 1650, False, False),
    "pilot_div_num": (_INT, 80, False, False),
    "pilot_div_den": (_INT, 11, False, False),
    "pilot_burst": (_INT, 48, False, False),
    "relay_pin": (_INT, 26, False, False),
    "relay_active_high": (_BOOL, True, False, False),
    "fault_pin": (_OPT_INT, None, False, False),
    "meter": (_STR, "sdm120", False, False),  # "sdm120", "sdm630" or "none"
    "meter_uart": (_INT, 1, False, False),
    "meter_tx": (_INT, 17, False, False),
    "meter_rx": (_INT, 16, False, False),
    "meter_baud": (_INT, 2400, False, False),
    "meter_addr": (_INT, 1, False, False),
    "meter_de_pin": (_OPT_INT, None, False, False),
    "meter_period_ms": (_INT, 1000, True, False),
    "meter_timeout_ms": (_INT, 300, True, False),
    "meter_stale_ms": (_INT, 5000, True, False),
}
# The connector state machine's own settings (protocol.connector), all remote.
for _k in connector.DEFAULT_CONFIG:
    FIELDS[_k] = (_INT, connector.DEFAULT_CONFIG[_k], True, False)

# Smallest sane values of some timings: a config must not stall the loop.
_MIN = {"sample_ms": 10, "tick_ms": 50, "pump_ms": 10, "heartbeat_s": 5, "resend_s": 1, "outbox_window": 1, "max_timeline": 16, "wdt_ms": 1000, "meter_period_ms": 100, "mqtt_backoff_max_ms": 500}


class ConfigError(ValueError):
    """The configuration is unusable; `key` names the offending key."""

    def __init__(self, key, problem):
        super().__init__("config." + key + ": " + problem)
        self.key = key
        self.problem = problem


def defaults():
    out = {}
    for k in FIELDS:
        v = FIELDS[k][1]
        out[k] = dict(v) if isinstance(v, dict) else v
    return out


def _check(k, v):
    typ = FIELDS[k][0]
    if typ == _STR:
        ok = isinstance(v, str) and len(v) > 0
    elif typ == _INT:
        ok = type(v) is int and v >= 0
    elif typ == _BOOL:
        ok = v is True or v is False
    elif typ == _KEY:
        ok = isinstance(v, str) and (v == "" or (len(v) % 2 == 0 and len(v) >= 2 * wire.MIN_KEY_BYTES and _hex(v)))
    elif typ == _OBJ:
        ok = isinstance(v, dict)
    elif typ == _OPT_STR:
        ok = v is None or isinstance(v, str)
    elif typ == _OPT_INT:
        ok = v is None or (type(v) is int and v >= 0)
    else:  # _ID
        ok = wire.valid_id(v)
    if not ok:
        raise ConfigError(k, ("a non-empty string", "an integer >= 0", "true or false", "hex of at least %d bytes" % wire.MIN_KEY_BYTES, "an object", "a string or null", "an integer >= 0 or null", "an id (1..32 of A-Z a-z 0-9 _ -)")[typ])
    lo = _MIN.get(k)
    if lo is not None and v < lo:
        raise ConfigError(k, "must be at least %d" % lo)


def _hex(s):
    for c in s:
        if not ("0" <= c <= "9" or "a" <= c <= "f" or "A" <= c <= "F"):
            return False
    return True


def validate(d):
    """Defaults merged with d, every key checked; returns a new dict."""
    if not isinstance(d, dict):
        raise ConfigError("(root)", "must be a JSON object")
    ver = d.get("schema", SCHEMA)
    if type(ver) is not int or ver > SCHEMA:
        raise ConfigError("schema", "version %r is newer than this firmware's %d" % (ver, SCHEMA))
    out = defaults()
    for k in d:
        if k not in FIELDS:
            raise ConfigError(str(k), "unknown key")
        _check(k, d[k])
        out[k] = d[k]
    out["schema"] = SCHEMA  # migrations from older schemas go here
    try:
        fee.parse_tariff(out["tariff"])
    except ValueError as e:
        raise ConfigError("tariff", str(e))
    try:
        connector.parse_config(connector_config(out))
    except ValueError as e:
        raise ConfigError("connector", str(e))
    if out["hardware"] not in ("sim", "board"):
        raise ConfigError("hardware", 'must be "sim" or "board"')
    if out["meter"] not in ("sdm120", "sdm630", "none"):
        raise ConfigError("meter", 'must be "sdm120", "sdm630" or "none"')
    if out["journal_soft"] > out["journal_hard"] or out["session_reserve"] >= out["journal_hard"]:
        raise ConfigError("journal_hard", "must exceed journal_soft and session_reserve")
    if out["pilot_div_den"] == 0:
        raise ConfigError("pilot_div_den", "must not be 0")
    return out


def connector_config(cfg):
    out = {}
    for k in connector.DEFAULT_CONFIG:
        out[k] = cfg[k]
    return out


def provisioned(cfg):
    """True when the stall has the keys it needs to sign and verify."""
    return bool(cfg["station_key"]) and bool(cfg["site_key"])


def apply_remote(cfg, changes):
    """The config with a backend's changes applied; only remote keys."""
    if not isinstance(changes, dict) or not changes:
        raise ConfigError("(root)", "changes must be a non-empty object")
    d = {}
    for k in cfg:
        d[k] = cfg[k]
    for k in changes:
        f = FIELDS.get(k)
        if f is None:
            raise ConfigError(str(k), "unknown key")
        if not f[2]:
            raise ConfigError(k, "not changeable remotely")
        d[k] = changes[k]
    return validate(d)


def public(cfg):
    """A copy safe to show or log: secrets masked."""
    out = {}
    for k in cfg:
        v = cfg[k]
        if FIELDS.get(k, (0, 0, 0, False))[3] and v:
            v = "***"
        out[k] = v
    return out


def dumps(cfg):
    return canonjson.dumps(cfg)


def load(fs, path):
    """The validated config in `path` (defaults when the file is missing)."""
    data = store.read_file(fs, path)
    if data is None:
        return defaults()
    try:
        d = canonjson.loads(data)
    except ValueError as e:
        raise ConfigError("(file)", "not JSON: " + str(e))
    return validate(d)


def save(fs, path, cfg):
    store.write_file(fs, path, dumps(cfg))
