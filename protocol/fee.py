# Idle-fee engine: validates tariffs and prices a session timeline to the minor unit.
#
# Theory of operation
# -------------------
# A timeline is a time-ordered list of status and occupancy events. From the
# status events we derive the half-open intervals [a, b) during which the
# idle clock runs. The billing clock B is the idle clock less the grace
# period; minute k begins at the instant tau_k where B reaches 60*k inside a
# running interval, so within one interval tau_k = a + 60*k - B(a).
#
# The rate of a minute only changes at a few instants: occupancy events (when
# the tariff has tiers) and window edges (when it has windows). So instead of
# visiting every minute we walk "chunks": from the current minute up to the
# next such instant (or the end of the running interval) all minutes share
# one rate and are counted arithmetically. Cost is O(events + rate changes),
# never O(seconds), and only integers touch money.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_DAY = const(86400)
_WEEK = const(604800)
# 1970-01-01 was a Thursday; with Monday = 0 that is weekday 3.
_EPOCH_WEEKDAY = const(3)

STATUSES = (
    "Available",
    "Preparing",
    "Charging",
    "SuspendedEV",
    "SuspendedEVSE",
    "Finishing",
    "Reserved",
    "Unavailable",
    "Faulted",
)
# Statuses that mean a car is plugged in: the first one starts the session.
PLUGGED = ("Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing")
# Statuses during which the idle clock runs unconditionally.
IDLE = ("SuspendedEV", "Finishing")

_TARIFF_FIELDS = (
    "id",
    "version",
    "currency",
    "grace_s",
    "rate",
    "tiers",
    "rounding",
    "cap",
    "start_timeout_s",
    "windows",
    "utc_offset_min",
)


class TariffError(ValueError):
    """A tariff does not follow the rules; `field` names the offending field."""

    def __init__(self, field, problem):
        super().__init__("tariff." + field + ": " + problem)
        self.field = field
        self.problem = problem


class TimelineError(ValueError):
    """A timeline (or the as-of instant) cannot be priced; `field` names where."""

    def __init__(self, field, problem):
        super().__init__(field + ": " + problem)
        self.field = field
        self.problem = problem


def _is_int(x):
    # bool is a subclass of int on both interpreters; a tariff never means True as 1.
    return type(x) is int


def _nonneg_int(d, field, default=None, required=False, nullable=False):
    if field not in d:
        if required:
            raise TariffError(field, "required")
        return default
    v = d[field]
    if v is None and nullable:
        return None
    if not _is_int(v) or v < 0:
        raise TariffError(field, "must be an integer >= 0" + (" or null" if nullable else ""))
    return v


def _parse_hhmm(field, s, allow_24):
    if type(s) is not str or len(s) != 5 or s[2] != ":":
        raise TariffError(field, "must be a string HH:MM")
    hh, mm = s[:2], s[3:]
    if not (hh.isdigit() and mm.isdigit()):
        raise TariffError(field, "must be a string HH:MM")
    h, m = int(hh), int(mm)
    if allow_24 and h == 24 and m == 0:
        return _DAY
    if h > 23 or m > 59:
        raise TariffError(field, "must be a time from 00:00 to " + ("24:00" if allow_24 else "23:59"))
    return h * 3600 + m * 60


class Tariff:
    """A validated tariff. Build with parse_tariff(); treat as read-only."""

    __slots__ = (
        "id",
        "version",
        "currency",
        "grace_s",
        "rate",
        "tiers",
        "rounding_ceil",
        "cap",
        "start_timeout_s",
        "week",
        "utc_offset_s",
        "source",
    )

    def rate_for_occupancy(self, pct):
        # Tier with the largest threshold not above pct; 0 when none qualifies.
        r = 0
        for threshold, rate in self.tiers:
            if threshold <= pct:
                r = rate
            else:
                break
        return r


# A few recently parsed tariffs, so quoting many sessions under the same
# tariff dict does not validate it again each time. Each entry keeps a copy of
# the source: a hit needs an equal dict, so a caller mutating its dict after a
# quote gets it validated afresh.
_CACHE_SIZE = const(4)
_cache = []  # type: list  # [(source copy, Tariff)], newest last


def _copy(x):
    if type(x) is dict:
        c = {}
        for k in x:
            c[k] = _copy(x[k])
        return c
    if type(x) is list:
        return [_copy(v) for v in x]
    return x


def parse_tariff(d):
    """Validate a tariff dict; return a Tariff. Raises TariffError naming the field."""
    if isinstance(d, Tariff):
        return d
    if not isinstance(d, dict):
        raise TariffError("(root)", "must be a JSON object")
    for src, parsed in _cache:
        if src == d:
            return parsed
    t = _parse_tariff(d)
    if len(_cache) >= _CACHE_SIZE:
        _cache.pop(0)
    _cache.append((_copy(d), t))
    return t


def _parse_tariff(d):
    for k in d:
        if k not in _TARIFF_FIELDS:
            raise TariffError(str(k), "unknown field")
    t = Tariff()
    tid = d.get("id")
    if "id" not in d:
        raise TariffError("id", "required")
    if type(tid) is not str or not tid:
        raise TariffError("id", "must be a non-empty string")
    t.id = tid
    v = d.get("version")
    if "version" not in d:
        raise TariffError("version", "required")
    if not _is_int(v) or v < 0:
        raise TariffError("version", "must be an integer >= 0")
    t.version = v
    cur = d.get("currency", "USD")
    if type(cur) is not str or len(cur) != 3 or not cur.isalpha() or cur.upper() != cur:
        raise TariffError("currency", "must be a three-letter ISO 4217 code such as USD")
    t.currency = cur
    t.grace_s = _nonneg_int(d, "grace_s", 300)
    t.rate = _nonneg_int(d, "rate", required=True)
    t.cap = _nonneg_int(d, "cap", None, nullable=True)
    t.start_timeout_s = _nonneg_int(d, "start_timeout_s", 600, nullable=True)

    rounding = d.get("rounding", "floor")
    if rounding != "floor" and rounding != "ceil":
        raise TariffError("rounding", 'must be "floor" or "ceil"')
    t.rounding_ceil = rounding == "ceil"

    off = d.get("utc_offset_min", 0)
    if not _is_int(off) or off <= -1440 or off >= 1440:
        raise TariffError("utc_offset_min", "must be an integer between -1439 and 1439")
    t.utc_offset_s = off * 60

    t.tiers = None
    if "tiers" in d and d["tiers"] is not None:
        tiers = d["tiers"]
        if not isinstance(tiers, list):
            raise TariffError("tiers", "must be a list")
        out = []
        last = -1
        for i, tier in enumerate(tiers):
            f = "tiers[" + str(i) + "]"
            if not isinstance(tier, dict):
                raise TariffError(f, "must be an object")
            for k in tier:
                if k != "min_occupancy_pct" and k != "rate":
                    raise TariffError(f + "." + str(k), "unknown field")
            if "min_occupancy_pct" not in tier:
                raise TariffError(f + ".min_occupancy_pct", "required")
            pct = tier["min_occupancy_pct"]
            if not _is_int(pct) or pct < 0 or pct > 100:
                raise TariffError(f + ".min_occupancy_pct", "must be an integer from 0 to 100")
            if "rate" not in tier:
                raise TariffError(f + ".rate", "required")
            r = tier["rate"]
            if not _is_int(r) or r < 0:
                raise TariffError(f + ".rate", "must be an integer >= 0")
            if pct == last:
                raise TariffError(f + ".min_occupancy_pct", "duplicate tier threshold")
            if pct < last:
                raise TariffError(f + ".min_occupancy_pct", "tiers must be sorted by min_occupancy_pct")
            last = pct
            out.append((pct, r))
        t.tiers = tuple(out)

    t.week = None
    if "windows" in d and d["windows"] is not None:
        t.week = _parse_windows(d["windows"])
    t.source = _copy(d)
    return t


def _parse_windows(windows):
    if not isinstance(windows, list):
        raise TariffError("windows", "must be a list")
    if not windows:
        raise TariffError("windows", "must not be empty (omit it for a tariff that is always active)")
    spans = []  # (week second start, week second end) of each active span
    for i, w in enumerate(windows):
        f = "windows[" + str(i) + "]"
        if not isinstance(w, dict):
            raise TariffError(f, "must be an object")
        for k in w:
            if k != "days" and k != "start" and k != "end":
                raise TariffError(f + "." + str(k), "unknown field")
        for k in ("days", "start", "end"):
            if k not in w:
                raise TariffError(f + "." + k, "required")
        days = w["days"]
        if not isinstance(days, list) or not days:
            raise TariffError(f + ".days", "must be a non-empty list of weekdays 0..6 (Monday = 0)")
        seen = []
        for j, day in enumerate(days):
            if not _is_int(day) or day < 0 or day > 6:
                raise TariffError(f + ".days[" + str(j) + "]", "must be a weekday 0..6 (Monday = 0)")
            if day in seen:
                raise TariffError(f + ".days[" + str(j) + "]", "duplicate weekday")
            seen.append(day)
        start = _parse_hhmm(f + ".start", w["start"], False)
        end = _parse_hhmm(f + ".end", w["end"], True)
        if start >= end:
            raise TariffError(f + ".start", "must be before end")
        for day in days:
            spans.append((day * _DAY + start, day * _DAY + end))
    # Flatten to sorted, merged, disjoint spans of the week: [(start, end), ...].
    spans.sort()
    merged = []
    for s, e in spans:
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return tuple(merged)


def _window_state(week, utc_offset_s, tau):
    """Return (active, next_change) for instant tau: whether a window covers it,
    and the first instant after tau at which that answer can change."""
    ws = (tau + utc_offset_s + _EPOCH_WEEKDAY * _DAY) % _WEEK
    for s, e in week:
        if ws < s:
            return False, tau + (s - ws)
        if ws < e:
            return True, tau + (e - ws)
    # After the last span of the week: inactive until the first span next week.
    return False, tau + (_WEEK - ws) + week[0][0]


_STATUS_SET = {}
for _s in STATUSES:
    _STATUS_SET[_s] = True


def _check_timeline(timeline):
    # Fast pass: pricing calls this on every quote, so it builds no strings;
    # only when something is wrong does _diagnose walk again to name the field.
    if type(timeline) is not list:
        raise TimelineError("timeline", "must be a list of events")
    prev = None
    for ev in timeline:
        if type(ev) is not dict or len(ev) != 2:
            _diagnose(timeline)
        t = ev.get("t")
        if type(t) is not int or (prev is not None and t < prev):
            _diagnose(timeline)
        prev = t
        s = ev.get("status")
        if s is not None:
            if s not in _STATUS_SET:
                _diagnose(timeline)
        else:
            o = ev.get("occupancy")
            if type(o) is not int or o < 0 or o > 100:
                _diagnose(timeline)


def _diagnose(timeline):
    """Raise the TimelineError that names the first bad event."""
    prev = None
    for i, ev in enumerate(timeline):
        f = "timeline[" + str(i) + "]"
        if not isinstance(ev, dict):
            raise TimelineError(f, "must be an object")
        t = ev.get("t")
        if not _is_int(t):
            raise TimelineError(f + ".t", "must be an integer instant (Unix seconds)")
        if prev is not None and t < prev:
            raise TimelineError(f + ".t", "events must be in time order")
        prev = t
        has_s = "status" in ev
        has_o = "occupancy" in ev
        if has_s == has_o:
            raise TimelineError(f, "must have exactly one of status or occupancy")
        for k in ev:
            if k != "t" and k != "status" and k != "occupancy":
                raise TimelineError(f + "." + str(k), "unknown field")
        if has_s:
            if ev["status"] not in _STATUS_SET:
                raise TimelineError(f + ".status", "unknown connector status " + repr(ev["status"]))
        else:
            o = ev["occupancy"]
            if not _is_int(o) or o < 0 or o > 100:
                raise TimelineError(f + ".occupancy", "must be an integer percentage 0..100")
    raise TimelineError("timeline", "invalid")  # unreachable: the fast pass found a problem


def running_intervals(tariff, timeline, at=None):
    """Find the session and the intervals where its idle clock runs.

    Returns (start, end, closed, intervals) where intervals is a list of
    half-open (a, b) pairs in time order. `tariff` must be a parsed Tariff.
    """
    n = len(timeline)
    i = 0
    while i < n:
        s = timeline[i].get("status")
        if s is not None and s in PLUGGED:
            break
        i += 1
    if i == n:
        raise TimelineError("timeline", "no session starts (no Preparing, Charging, SuspendedEV, SuspendedEVSE or Finishing status)")
    start = timeline[i]["t"]
    closed = False
    j = i + 1
    while j < n:
        if timeline[j].get("status") == "Available":
            closed = True
            break
        j += 1
    if closed:
        end = timeline[j]["t"]
        last = j
    else:
        if at is None:
            end = timeline[n - 1]["t"]
        else:
            if not _is_int(at):
                raise TimelineError("at", "must be an integer instant (Unix seconds)")
            if at < start:
                raise TimelineError("at", "is before the session starts")
            end = at
        last = n

    timeout_at = None if tariff.start_timeout_s is None else start + tariff.start_timeout_s
    intervals = []
    status = timeline[i]["status"]
    since = start
    k = i + 1
    while True:
        if k < last:
            ev = timeline[k]
            s = ev.get("status")
            if s is None:
                k += 1
                continue
            until = ev["t"]
            if until > end:
                until = end
        else:
            until = end
        if until > since:
            a = -1
            if status in IDLE:
                a = since
            elif status == "Preparing" and timeout_at is not None and until > timeout_at:
                a = since if since > timeout_at else timeout_at
            if a >= 0:
                if intervals and intervals[-1][1] == a:
                    intervals[-1] = (intervals[-1][0], until)  # contiguous idle statuses
                else:
                    intervals.append((a, until))
        if k >= last or until >= end:
            break
        status = s
        since = until
        k += 1
    return start, end, closed, intervals


def quote(tariff, timeline, at=None):
    """Price a session timeline under a tariff (raw dict or parsed Tariff).

    Returns the result dict of the idle-fee rules: session_start,
    session_end (None while open), idle_s, billable_s, billed_min, fee,
    currency, capped and the run-length encoded minutes.
    """
    t = parse_tariff(tariff)
    _check_timeline(timeline)
    start, end, closed, intervals = running_intervals(t, timeline, at)

    idle = 0
    for a, b in intervals:
        idle += b - a
    billable = idle - t.grace_s
    if billable < 0:
        billable = 0
    if t.rounding_ceil:
        billed = (billable + 59) // 60
    else:
        billed = billable // 60

    # Occupancy events in time order (equal instants: the later in the list wins).
    occ = None
    if t.tiers is not None:
        occ = [(ev["t"], ev["occupancy"]) for ev in timeline if "occupancy" in ev]
    minutes = []
    fee = 0
    if billed:
        fee = _price_minutes(t, intervals, billed, occ, minutes)

    capped = False
    if t.cap is not None and fee > t.cap:
        fee = t.cap
        capped = True
    return {
        "session_start": start,
        "session_end": end if closed else None,
        "idle_s": idle,
        "billable_s": billable,
        "billed_min": billed,
        "fee": fee,
        "currency": t.currency,
        "capped": capped,
        "minutes": minutes,
    }


def _price_minutes(t, intervals, billed, occ, minutes):
    grace = t.grace_s
    week = t.week
    tiers = t.tiers
    n_occ = len(occ) if occ else 0
    oi = 0  # occ[:oi] are at or before the current minute
    fee = 0
    k = 0  # next minute to price
    idle_before = 0  # idle seconds before the current interval
    for a, b in intervals:
        if k >= billed:
            break
        ba = idle_before - grace  # billing clock at a (may be negative)
        idle_before += b - a
        bb = ba + (b - a)  # billing clock at b
        # Minutes beginning in [a, b): 60*k in [ba, bb), k < billed.
        k_end = -((-bb) // 60)  # ceil(bb / 60)
        if k_end > billed:
            k_end = billed
        if k_end <= k:
            continue
        while k < k_end:
            tau = a + 60 * k - ba
            change = b
            active = True
            if week is not None:
                active, nxt = _window_state(week, t.utc_offset_s, tau)
                if nxt < change:
                    change = nxt
            rate = t.rate
            if tiers is not None and n_occ:
                while oi < n_occ and occ[oi][0] <= tau:
                    oi += 1
                if oi < n_occ and occ[oi][0] < change:
                    change = occ[oi][0]
                if oi:
                    rate = t.rate_for_occupancy(occ[oi - 1][1])
            if not active:
                rate = 0
            # Minutes from k whose tau is before `change` share this rate.
            k_lim = -((a - ba - change) // 60)  # ceil((change - a + ba) / 60)
            if k_lim > k_end:
                k_lim = k_end
            count = k_lim - k
            if minutes and minutes[-1]["rate"] == rate:
                minutes[-1]["count"] += count
            else:
                minutes.append({"start": tau, "count": count, "rate": rate})
            fee += count * rate
            k = k_lim
    return fee
