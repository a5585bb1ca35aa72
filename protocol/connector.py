# Connector state machine: control pilot + current samples -> OCPP connector statuses and charge-complete.
#
# Theory of operation
# -------------------
# The caller feeds timestamped samples: the IEC 61851 control pilot letter,
# the measured current in milliamps, and two flags from the station itself
# (it withholds energy; the hardware reports a fault). The caller owns the
# clock: t_ms is an integer millisecond count that never goes backwards.
#
# Each sample is first reduced to one *condition* (the _UNPLUG.._DRAW
# constants below). Faults win over everything, then an unplugged pilot,
# then the station withholding energy, then what the car is doing:
#
#     fault flag, pilot E or F     -> FAULT
#     pilot A                      -> UNPLUG
#     withheld (pilot B, C or D)   -> HELD
#     pilot B, or C/D below i_idle -> IDLE
#     pilot C/D, i_idle..i_resume  -> BAND   (the hysteresis band)
#     pilot C/D, at least i_resume -> DRAW
#
# _TABLE then says, for the current state and the condition, which state the
# connector is heading for and which configured hold time must pass first;
# None means "stay". That table is the whole behaviour: the code around it
# only times candidates and emits events.
#
# States are the OCPP statuses, except that SuspendedEVSE and Faulted come in
# two flavours, "nothing charged yet in this session" (0) and "charged
# before" (1). The flavour is the session's memory: when the station stops
# withholding or the fault clears, an idle car goes back to Preparing if it
# never charged and to SuspendedEV (charge complete) if it did.
#
# Timing. A candidate (the state a sample argues for) must be argued for by
# the samples for its hold time; a run of samples arguing for anything else,
# or for staying, drops it, and the next candidate starts afresh. So a glitch
# (one sample, or a run of samples) shorter than the hold time of the move it
# argues for never changes the status. When a candidate is confirmed the new
# status takes effect at the instant the candidate began (the first sample
# that showed the condition), not at the sample that confirmed it: a car that
# stopped drawing at 12:00:00 is idle from 12:00:00. The confirming sample may
# at once argue for a further move (plugged in while already drawing: Preparing
# and then Charging); that candidate is taken to have begun when the current
# run of its condition began, but never before the state it leaves.
#
# Glitches inside a hold. A single deviating sample must not move that
# instant either (a loose pilot for one sample at 12:00:30 must not make the
# car idle from 12:00:31). So while a candidate is timed, one sample that
# argues for something else is held back instead of dropping it, and the
# next sample decides:
#
#   it argues for the candidate again, less than the candidate's hold
#   after the held sample            -> a glitch: as if it never came
#   anything else (another deviating sample, or a return only after
#   the hold time or more)           -> a real change that began at the
#                                       held sample: drop the candidate
#
# Only an isolated sample is forgiven: the candidate must have been argued
# for by the two samples before it (so a signal flipping every sample never
# confirms anything), and the held sample must not confirm a move at once
# (a zero hold, e.g. the station withholding energy, acts immediately). The
# length test is what keeps sparse sampling honest: one sample that stands
# for as long as the hold itself is a change, not a glitch.
#
# Events are queued in time order and read with next_event(), h11 style.
# The hot path (a sample that changes nothing) does no arithmetic on t_ms and
# allocates nothing; deadlines are computed once when a candidate starts.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# States (internal). _NAMES gives the OCPP status each one reports.
_AVAIL = const(0)  # Available: nothing plugged in, no session
_PREP = const(1)  # Preparing: plugged in, not charged yet this session
_CHRG = const(2)  # Charging
_DONE = const(3)  # SuspendedEV: charged, then the car stopped taking energy
_EVSE0 = const(4)  # SuspendedEVSE, nothing charged yet this session
_EVSE1 = const(5)  # SuspendedEVSE, charged before
_FLT0 = const(6)  # Faulted, nothing charged yet (or no session)
_FLT1 = const(7)  # Faulted, charged before

_NAMES = (
    "Available",
    "Preparing",
    "Charging",
    "SuspendedEV",
    "SuspendedEVSE",
    "SuspendedEVSE",
    "Faulted",
    "Faulted",
)

# Conditions: what one sample shows (see the theory of operation).
_UNPLUG = const(0)
_FAULT = const(1)
_HELD = const(2)
_IDLE = const(3)
_BAND = const(4)
_DRAW = const(5)

# Hold times, as indexes into Connector._holds; HOLD_KEYS names their config keys.
_H_UNPLUG = const(0)
_H_PLUG = const(1)
_H_FAULT = const(2)
_H_RESUME = const(3)
_H_DONE = const(4)
_H_EVSE = const(5)

HOLD_KEYS = (
    "unplug_debounce_ms",
    "plug_debounce_ms",
    "fault_hold_ms",
    "resume_hold_ms",
    "complete_hold_ms",
    "evse_hold_ms",
)

DEFAULT_CONFIG = {
    "unplug_debounce_ms": 500,
    "plug_debounce_ms": 500,
    "fault_hold_ms": 1000,
    "resume_hold_ms": 30000,
    "complete_hold_ms": 60000,
    "evse_hold_ms": 0,
    "i_resume_ma": 6000,
    "i_idle_ma": 1000,
}

# Every (state, condition) pair decides: (next state, hold) or None = stay.
# Rows are states, columns conditions, both in constant order.
_TABLE = (
    # _AVAIL: any plugged pilot opens a session in Preparing.
    (
        None,  # UNPLUG
        (_FLT0, _H_FAULT),  # FAULT
        (_PREP, _H_PLUG),  # HELD
        (_PREP, _H_PLUG),  # IDLE
        (_PREP, _H_PLUG),  # BAND
        (_PREP, _H_PLUG),  # DRAW
    ),
    # _PREP: waits for the first real charge; idle and band keep it.
    (
        (_AVAIL, _H_UNPLUG),  # UNPLUG
        (_FLT0, _H_FAULT),  # FAULT
        (_EVSE0, _H_EVSE),  # HELD
        None,  # IDLE
        None,  # BAND
        (_CHRG, _H_RESUME),  # DRAW
    ),
    # _CHRG: idle for complete_hold means the charge is complete.
    (
        (_AVAIL, _H_UNPLUG),  # UNPLUG
        (_FLT1, _H_FAULT),  # FAULT
        (_EVSE1, _H_EVSE),  # HELD
        (_DONE, _H_DONE),  # IDLE
        None,  # BAND
        None,  # DRAW
    ),
    # _DONE: drawing again for resume_hold resumes the charge.
    (
        (_AVAIL, _H_UNPLUG),  # UNPLUG
        (_FLT1, _H_FAULT),  # FAULT
        (_EVSE1, _H_EVSE),  # HELD
        None,  # IDLE
        None,  # BAND
        (_CHRG, _H_RESUME),  # DRAW
    ),
    # _EVSE0: the station stopped withholding before any charge.
    (
        (_AVAIL, _H_UNPLUG),  # UNPLUG
        (_FLT0, _H_FAULT),  # FAULT
        None,  # HELD
        (_PREP, _H_PLUG),  # IDLE
        (_PREP, _H_PLUG),  # BAND
        (_CHRG, _H_RESUME),  # DRAW
    ),
    # _EVSE1: the station stopped withholding after a charge.
    (
        (_AVAIL, _H_UNPLUG),  # UNPLUG
        (_FLT1, _H_FAULT),  # FAULT
        None,  # HELD
        (_DONE, _H_DONE),  # IDLE
        (_CHRG, _H_RESUME),  # BAND: energy flows, so never billed as idle
        (_CHRG, _H_RESUME),  # DRAW
    ),
    # _FLT0: the fault cleared before any charge (or with no session).
    (
        (_AVAIL, _H_UNPLUG),  # UNPLUG
        None,  # FAULT
        (_EVSE0, _H_EVSE),  # HELD
        (_PREP, _H_PLUG),  # IDLE
        (_PREP, _H_PLUG),  # BAND
        (_CHRG, _H_RESUME),  # DRAW
    ),
    # _FLT1: the fault cleared after a charge.
    (
        (_AVAIL, _H_UNPLUG),  # UNPLUG
        None,  # FAULT
        (_EVSE1, _H_EVSE),  # HELD
        (_DONE, _H_DONE),  # IDLE
        (_CHRG, _H_RESUME),  # BAND: energy flows, so never billed as idle
        (_CHRG, _H_RESUME),  # DRAW
    ),
)

# Pilot letters. E and F are both errors; C and D both request energy.
_P_A = const(0)
_P_B = const(1)
_P_E = const(4)
_PILOTS = {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4, "F": 5}

# Statuses a Connector may start in; see Connector().
_INITIAL = {
    "Available": _AVAIL,
    "Preparing": _PREP,
    "Charging": _CHRG,
    "SuspendedEV": _DONE,
    "SuspendedEVSE": _EVSE0,
    "Faulted": _FLT0,
}

_NO_TARGET = const(-1)


def parse_config(config=None):
    """Merge a config dict over DEFAULT_CONFIG and validate it; return a new dict.

    Unknown keys, non-integers, negatives and i_idle_ma > i_resume_ma raise ValueError.
    """
    out = {}
    for k in DEFAULT_CONFIG:
        out[k] = DEFAULT_CONFIG[k]
    if config is None:
        return out
    if not isinstance(config, dict):
        raise ValueError("config must be a dict")
    for k in config:
        if k not in DEFAULT_CONFIG:
            raise ValueError("config." + str(k) + ": unknown key")
        v = config[k]
        # bool is an int subclass; True never means 1 ms here.
        if type(v) is not int or v < 0:
            raise ValueError("config." + k + ": must be an integer >= 0")
        out[k] = v
    if out["i_idle_ma"] > out["i_resume_ma"]:
        raise ValueError("config.i_idle_ma: must not exceed i_resume_ma")
    return out


class Connector:
    """Derives connector statuses from pilot and current samples.

    Connector(config=None, status="Available", charged=False, completed=False)

    `config` overrides DEFAULT_CONFIG (see parse_config). `status` is the
    status to start in, for a controller restoring its state after a
    restart; `charged` says the open session has already charged (it picks
    where SuspendedEVSE and Faulted go when they clear) and `completed` that
    its charge-complete event was already emitted. Charging implies charged;
    SuspendedEV implies charged and completed.
    """

    def __init__(self, config=None, status="Available", charged=False, completed=False):
        cfg = parse_config(config)
        self._holds = [cfg[k] for k in HOLD_KEYS]
        self._i_resume = cfg["i_resume_ma"]
        self._i_idle = cfg["i_idle_ma"]
        self.config = cfg
        st = _INITIAL.get(status) if type(status) is str else None
        if st is None:
            raise ValueError("unknown initial status " + repr(status))
        if st == _CHRG:
            charged = True
        elif st == _DONE:
            charged = completed = True
        elif st == _EVSE0 or st == _FLT0:
            if charged:
                st += 1  # the "charged before" flavour
        if (st == _AVAIL or st == _PREP) and (charged or completed):
            raise ValueError(status + " cannot have charged or completed")
        if completed and not charged:
            raise ValueError("completed requires charged")
        self._state = st
        self._session = st != _AVAIL and st != _FLT0
        self._completed = bool(completed)
        self._since = None  # instant the current status took effect; first sample if initial
        self._t = None  # last accepted sample instant
        self._cond = _NO_TARGET  # condition of the last sample
        self._cond_since = None  # first sample of the current run of that condition
        self._target = _NO_TARGET  # candidate state, or _NO_TARGET
        self._cand_since = None  # instant the candidate began
        self._due = None  # instant at which the candidate is confirmed
        self._agree = 0  # samples in a row that argued for the candidate (counted up to 2)
        self._held_t = None  # instant of a deviating sample held back as a possible glitch
        self._held_cond = _NO_TARGET  # its condition
        self._events = []

    # -- reading state ------------------------------------------------------

    @property
    def status(self):
        """The current OCPP status string."""
        return _NAMES[self._state]

    @property
    def status_since(self):
        """Instant (ms) the current status took effect; None before the first sample."""
        return self._since

    @property
    def session_active(self):
        """True from plug-in (Preparing or later) until Available; faults keep it."""
        return self._session

    @property
    def pending(self):
        """(status, since_ms, due_ms) of the change being timed, or None."""
        if self._target == _NO_TARGET:
            return None
        return (_NAMES[self._target], self._cand_since, self._due)

    def next_event(self):
        """Return the oldest queued event, or None when there is none.

        Events are (kind, at_ms, value): ("status", at, "Charging") or
        ("charge_complete", at, None), in non-decreasing at_ms order.
        """
        if self._events:
            return self._events.pop(0)
        return None

    # -- input ---------------------------------------------------------------

    def feed(self, t_ms, pilot, current_ma, withheld=False, fault=False):
        """Take one sample; queue any status changes it confirms.

        t_ms: integer ms, never less than the previous sample's. pilot: "A".."F".
        current_ma: integer >= 0. withheld: the station withholds energy.
        fault: the hardware reports a fault. Bad input raises ValueError (or
        TypeError for a wrong type) and changes nothing.
        """
        p = _PILOTS.get(pilot)
        if p is None:
            raise ValueError("unknown pilot state " + repr(pilot))
        if type(t_ms) is not int:
            raise TypeError("t_ms must be an int")
        if self._t is not None and t_ms < self._t:
            raise ValueError("t_ms went backwards")
        if type(current_ma) is not int:
            raise TypeError("current_ma must be an int")
        if current_ma < 0:
            raise ValueError("current_ma must be >= 0")

        if fault or p >= _P_E:
            c = _FAULT
        elif p == _P_A:
            c = _UNPLUG
        elif withheld:
            c = _HELD
        elif p == _P_B or current_ma < self._i_idle:
            c = _IDLE
        elif current_ma >= self._i_resume:
            c = _DRAW
        else:
            c = _BAND

        if self._t is None:
            self._since = t_ms
        self._t = t_ms
        if self._held_t is not None:
            # The previous sample deviated from the candidate; this one decides.
            held = self._held_t
            self._held_t = None
            move = _TABLE[self._state][c]
            if move is not None and move[0] == self._target and t_ms - held < self._due - self._cand_since:
                self._agree = 0  # a glitch: forgotten; two more agreeing samples before the next is forgiven
            else:
                # A real change that began at the held sample.
                self._target = _NO_TARGET
                self._cond = self._held_cond
                self._cond_since = held
        elif self._target != _NO_TARGET and self._agree >= 2:
            move = _TABLE[self._state][c]
            if move is None or (move[0] != self._target and self._holds[move[1]] > 0):
                self._held_t = t_ms
                self._held_cond = c
                return
        if c != self._cond:
            self._cond = c
            self._cond_since = t_ms

        # Follow the table; more than one move only when a confirmed move's
        # successor was already argued for (the table has no cycles).
        while True:
            move = _TABLE[self._state][c]
            if move is None:
                self._target = _NO_TARGET
                return
            target, hold = move
            if target != self._target:
                self._target = target
                since = self._cond_since
                if since < self._since:
                    since = self._since
                self._cand_since = since
                self._due = since + self._holds[hold]
                self._agree = 0
            if self._agree < 2:  # only "at least two" matters; stays a small int
                self._agree += 1
            if t_ms < self._due:
                return
            self._enter(target, self._cand_since)

    def _enter(self, st, at):
        old = self._state
        self._state = st
        self._since = at
        self._target = _NO_TARGET
        if _NAMES[st] != _NAMES[old]:
            self._events.append(("status", at, _NAMES[st]))
        if st == _AVAIL:
            self._session = False
            self._completed = False
        elif st != _FLT0 and st != _FLT1:
            self._session = True
        if st == _DONE and not self._completed:
            self._completed = True
            self._events.append(("charge_complete", at, None))
