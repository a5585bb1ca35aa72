# Small argument helpers shared by the bridge, keys and tariff commands.
import time

from host_tools.errors import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text):
    """'90', '90s', '15m', '24h', '7d' -> seconds (int). Raises UserError."""
    t = str(text).strip().lower()
    mult = 1
    if t and t[-1] in _UNITS:
        mult = _UNITS[t[-1]]
        t = t[:-1]
    try:
        v = float(t)
    except ValueError:
        raise UserError("expected a duration such as 90s, 15m, 24h or 7d, got " + repr(text)) from None
    if v < 0:
        raise UserError("a duration must not be negative: " + repr(text))
    return int(v * mult)


def db_call(db, fn, *args, **kw):
    """Run fn(db, ...) and turn a database failure into a one-line UserError."""
    try:
        return fn(db, *args, **kw)
    except db.errors as e:
        raise UserError("database error: " + " ".join(str(e).split())) from None


def iso(t):
    if t is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))
