# Session accounting: turns one connector's status changes into session records priced by the fee engine.
#
# The accountant is told what happened (status changes, occupancy reports,
# the charge-complete instant, energy readings), always with the instant, in
# whole Unix seconds. It keeps the open session's timeline and asks the fee
# engine for the price; it never computes a fee itself, so the stall and the
# bridge cannot disagree. Nothing here reads a clock.

from protocol import fee

RECORD_VERSION = 1


class Session:
    """One plug-in to unplug of one connector."""

    __slots__ = (
        "session_id",
        "station",
        "connector",
        "tariff",
        "timeline",
        "plug_in",
        "first_charging",
        "charge_complete",
        "unplug",
        "energy_wh",
        "synced",
        "_last_occ",
    )

    def __init__(self, session_id, station, connector, tariff, plug_in, status, occupancy=None, occupancy_t=None):
        self.session_id = session_id
        self.station = station
        self.connector = connector
        self.tariff = fee.parse_tariff(tariff)
        self.plug_in = plug_in
        self.first_charging = None
        self.charge_complete = None
        self.unplug = None
        self.energy_wh = None
        self.synced = True
        self._last_occ = None
        self.timeline = []
        # The occupancy in force at plug-in prices the first minutes too.
        if occupancy is not None:
            self.add_occupancy(plug_in if occupancy_t is None else occupancy_t, occupancy)
        self.add_status(plug_in, status)

    @property
    def closed(self):
        return self.unplug is not None

    def add_status(self, t, status):
        if self.unplug is not None:
            raise ValueError("session " + str(self.session_id) + " is closed")
        if status not in fee.STATUSES:
            raise ValueError("unknown status " + repr(status))
        self._check_time(t)
        self.timeline.append({"t": t, "status": status})
        if status == "Charging" and self.first_charging is None:
            self.first_charging = t
        if status == "Available":
            self.unplug = t

    def add_occupancy(self, t, pct):
        if self.unplug is not None:
            return
        if pct == self._last_occ:
            return  # an unchanged report changes no rate
        self._check_time(t)
        self._last_occ = pct
        self.timeline.append({"t": t, "occupancy": pct})

    def mark_charge_complete(self, t):
        if self.charge_complete is None:
            self.charge_complete = t

    def set_energy(self, wh):
        self.energy_wh = wh

    def _check_time(self, t):
        if type(t) is not int:
            raise TypeError("instants are whole Unix seconds")
        if self.timeline and t < self.timeline[-1]["t"]:
            raise ValueError("event at " + str(t) + " is before the last one at " + str(self.timeline[-1]["t"]))

    def quote(self, at=None):
        """The fee engine's result for this session, as of `at` while open."""
        if at is not None and self.timeline and at < self.timeline[-1]["t"]:
            at = self.timeline[-1]["t"]
        return fee.quote(self.tariff, self.timeline, at)

    def accrued(self, at):
        """Live accrued fee (minor units) of the session as of `at`."""
        return self.quote(at)["fee"]

    def idle_running(self):
        """Whether the idle clock runs right now (ignoring the start timeout)."""
        for ev in reversed(self.timeline):
            s = ev.get("status")
            if s is not None:
                return s in fee.IDLE
        return False

    def grace_end(self, at):
        """Instant the grace period ends if the car stays idle from `at`, else None."""
        if not self.idle_running():
            return None
        q = self.quote(at)
        left = self.tariff.grace_s - q["idle_s"]
        return at + left if left > 0 else None

    def record(self, at=None):
        """The session record: identity, milestones, and the fee engine's result."""
        q = self.quote(at)
        t = self.tariff
        return {
            "v": RECORD_VERSION,
            "session_id": self.session_id,
            "station": self.station,
            "connector": self.connector,
            "plug_in": self.plug_in,
            "first_charging": self.first_charging,
            "charge_complete": self.charge_complete,
            "unplug": self.unplug,
            "energy_wh": self.energy_wh,
            "idle_s": q["idle_s"],
            "billable_s": q["billable_s"],
            "billed_min": q["billed_min"],
            "fee": q["fee"],
            "capped": q["capped"],
            "currency": q["currency"],
            "tariff_id": t.id,
            "tariff_version": t.version,
            "minutes": q["minutes"],
            "timeline": self.timeline,
            "synced": self.synced,
        }


class Accountant:
    """Sessions of one connector: opens one at plug-in, closes it at Available.

    `new_session_id()` is called once per session; it gives the id.
    Tariff changes reach only sessions that start after them.
    """

    def __init__(self, station, connector, tariff, new_session_id):
        self.station = station
        self.connector = connector
        self.tariff = fee.parse_tariff(tariff)
        self.new_session_id = new_session_id
        self.session = None
        self.occupancy = None
        self.occupancy_t = None
        self.status = "Available"

    def set_tariff(self, tariff):
        self.tariff = fee.parse_tariff(tariff)

    def on_occupancy(self, t, pct):
        self.occupancy = pct
        self.occupancy_t = t
        if self.session is not None:
            self.session.add_occupancy(t, pct)

    def on_status(self, t, status):
        """Feed a status change. Returns the closed Session at unplug, else None."""
        self.status = status
        s = self.session
        if s is None:
            if status in fee.PLUGGED:
                self.session = Session(
                    self.new_session_id(),
                    self.station,
                    self.connector,
                    self.tariff,
                    t,
                    status,
                    self.occupancy,
                    self.occupancy_t,
                )
            return None
        s.add_status(t, status)
        if s.closed:
            self.session = None
            return s
        return None

    def on_charge_complete(self, t):
        if self.session is not None:
            self.session.mark_charge_complete(t)
