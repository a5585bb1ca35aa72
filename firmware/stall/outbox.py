# Outbox: every signed billing message, journaled as its exact bytes before its first send, until the bridge acks it.
#
# Theory of operation
# -------------------
# StallCore encodes a message once (wire.encode, one seq n) and put()s it:
# the bytes go into the journal first, as BILLING (events, sessions; never
# dropped) or TELEMETRY (idle_tick: superseded by the next tick and by the
# session record, so the journal may drop the oldest when space is short).
# Long messages are split into chunks (stall.store.append_chunked). The RAM
# index keeps, per message: n, its record ids, its topic leaf and when it was
# last sent; the bytes stay on flash until a send reads them back.
#
# Journal record payload: "W" leaf n " " parts " " ref "\n" bytes, where leaf
# is "e" (event) or "s" (session) and ref names what the message settles
# (the session's oid for a session record), so a restart can tell a session
# whose record is already journaled from one still to be encoded.
#
# Sending: due(now) yields messages never sent on this connection, then
# messages sent more than resend_ms ago without an ack, oldest first, with
# at most `window` awaiting acks. A reconnect marks every message unsent.
# Retiring: only ack(ns), from the bridge's signed ack after its database
# commit, retires records; a PUBACK means the broker has it, nothing more.
# Duplicates (resends after a lost ack) are harmless: the bridge is
# idempotent on (station, n) and the bytes are identical.

from protocol import journal
from stall import store

LEAF_EVENT = "e"
LEAF_SESSION = "s"
LEAVES = {"e": "event", "s": "session"}

# Entry fields (a small list per message).
_N = 0
_IDS = 1
_LEAF = 2
_SENT = 3  # ms of the last send on this connection, or -1


class Outbox:
    def __init__(self, j, reader, resend_ms=60000, window=16):
        self.j = j
        self.reader = reader
        self.resend_ms = resend_ms
        self.window = window
        self.entries = []  # oldest (smallest n) first
        self._dropped = j.dropped
        self.acked = 0
        self.sent = 0
        self.resent = 0
        self.lost_telemetry = 0

    def __len__(self):
        return len(self.entries)

    def put(self, leaf, n, data, ref="", telemetry=False, reserve=0):
        """Journal a message (bytes) under seq n; True, or False when
        telemetry had no room. Raises JournalFull for billing without room."""
        head = "W" + leaf + str(n) + " %d " + ref + "\n"
        ids = store.append_chunked(self.j, journal.TELEMETRY if telemetry else journal.BILLING, head, data, reserve)
        self._prune()
        if ids is None:
            self.lost_telemetry += 1
            return False
        self.entries.append([n, ids, leaf, -1])
        return True

    def adopt(self, n, ids, leaf):
        """Re-index a message found in the journal at start-up."""
        e = [n, ids, leaf, -1]
        es = self.entries
        i = len(es)
        while i > 0 and es[i - 1][_N] > n:
            i -= 1
        es.insert(i, e)

    def _prune(self):
        # Compaction may have dropped old telemetry: forget those entries.
        if self.j.dropped == self._dropped:
            return
        self._dropped = self.j.dropped
        ix = self.j.index
        keep = []
        for e in self.entries:
            i = ix.find(e[_IDS][0])
            if i >= 0 and not ix.dead[i]:
                keep.append(e)
            else:
                self.lost_telemetry += 1
        self.entries = keep

    def due(self, now_ms):
        """Messages to send now, oldest first (a new list; may be empty)."""
        self._prune()  # any journal write may have compacted telemetry away
        out = []
        waiting = 0
        for e in self.entries:
            sent = e[_SENT]
            if sent >= 0 and now_ms - sent < self.resend_ms:
                waiting += 1
        room = self.window - waiting
        if room <= 0:
            return out
        for e in self.entries:
            sent = e[_SENT]
            if sent < 0 or now_ms - sent >= self.resend_ms:
                out.append(e)
                if len(out) >= room:
                    break
        return out

    def payload(self, e):
        """The exact bytes journaled for entry e (None if they are gone)."""
        return self.reader.item(e[_IDS])

    @staticmethod
    def leaf(e):
        return LEAVES[e[_LEAF]]

    @staticmethod
    def seq(e):
        return e[_N]

    def mark_sent(self, e, now_ms):
        if e[_SENT] >= 0:
            self.resent += 1
        self.sent += 1
        e[_SENT] = now_ms

    def reconnected(self):
        """A new connection: everything unacked goes again."""
        for e in self.entries:
            e[_SENT] = -1

    def ack(self, ns):
        """Retire the messages whose n the bridge acked; returns how many."""
        es = self.entries
        ids = []
        hit = 0
        for n in ns:
            lo, hi = 0, len(es)
            while lo < hi:
                mid = (lo + hi) // 2
                if es[mid][_N] < n:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < len(es) and es[lo][_N] == n:
                ids.extend(es[lo][_IDS])
                es.pop(lo)
                hit += 1
        if ids:
            self.j.ack(*ids)
            self._prune()
        self.acked += hit
        return hit

    def oldest_age(self, now_ms):
        """ms since the oldest unacked message was first sent on this connection (0 if none)."""
        for e in self.entries:
            if e[_SENT] >= 0:
                return now_ms - e[_SENT]
        return 0
