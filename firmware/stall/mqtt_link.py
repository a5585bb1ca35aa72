# MQTT link: the one asyncio driver around protocol.mqtt, run unchanged on the stall boards and in the desktop simulator.
#
# Theory of operation
# -------------------
# protocol.mqtt.Session holds every protocol decision; this module only moves
# bytes and keeps time. One supervisor task (_run) loops forever:
#
#   open TCP (or TLS)      asyncio.open_connection: the host name is looked up
#                          again on every attempt; bounded by connect_timeout_ms
#   run the connection     three tasks share it: a reader (bytes -> session ->
#                          callbacks), a writer (waits for a kick, drains) and
#                          a ticker (keepalive pings, the CONNACK deadline and
#                          the hung-connection check); the first to fail sets
#                          _down, the supervisor cancels the others and closes
#   back off               a random delay in 0..min(backoff_max, backoff_min *
#                          2**failures) ("full jitter"); failures resets to 0
#                          when a CONNACK accepts us
#
# publish() never awaits: it asks the session for the packet, hands it to the
# stream's write() (which on both interpreters tries a non-blocking send and
# buffers the rest) and kicks the writer task, which does the awaiting. It
# refuses (returns False) when not connected, when the in-flight window is
# full, or when more than max_pending_bytes sit unsent: memory stays bounded
# even when the broker is a black hole. Nothing here stores messages for
# later; the caller's outbox (backed by the journal) keeps them and retries.
#
# Only the asyncio subset MicroPython and CPython share is used:
# open_connection, reader.read(n), writer.write/drain/close, create_task,
# Event, sleep and wait_for; sleep_ms, wait_for_ms and ticks_ms sit behind the
# shims below. On MicroPython, open_connection resolves the host with a
# blocking getaddrinfo: a board should be given a broker address that
# resolves fast (an IP literal or a local name), see docs/mqtt.md.

import asyncio
import random as _random
import time

from protocol import mqtt

_TICKS_MASK = 0x3FFFFFFF  # protocol.mqtt takes ticks that wrap at 2**30


def _host_sleep_ms(ms):
    return asyncio.sleep(ms / 1000)


def _host_wait_for_ms(aw, ms):
    return asyncio.wait_for(aw, ms / 1000)


def _host_ticks_ms():
    return int(time.monotonic() * 1000)


_sleep_ms = getattr(asyncio, "sleep_ms", None) or _host_sleep_ms
_wait_for_ms = getattr(asyncio, "wait_for_ms", None) or _host_wait_for_ms
_ticks_ms = getattr(time, "ticks_ms", None) or _host_ticks_ms


def _now():
    return _ticks_ms() & _TICKS_MASK


def _jitter(n):
    # Default random source: an integer in 0..n.
    return _random.getrandbits(30) % (n + 1) if n > 0 else 0


def _describe(e):
    msg = str(e)
    name = type(e).__name__
    if isinstance(e, LinkError):
        return msg
    return name + ": " + msg if msg else name


class LinkError(Exception):
    """Why a connection ended, in words for the console (refused, timed out, hung)."""


class MqttLink:
    """A self-healing MQTT connection for one stall; see the theory of operation.

    Callbacks (each optional, called from the link's tasks, must not block):
      on_message(msg)        msg is a protocol.mqtt.Publish; a QoS 1 message is
                             acknowledged when the callback returns
      on_connect(session_present)
      on_disconnect(reason)  after a connection that had been accepted ends
      on_puback(pid)         the broker has the QoS 1 publish `pid`

    Misuse (bad topic, qos, oversized payload, bad settings) raises ValueError
    or TypeError; the network never raises out of here: it is reported in
    last_error and retried."""

    def __init__(
        self,
        host,
        port,
        client_id,
        username=None,
        password=None,
        ssl=None,
        keepalive_s=30,
        will=None,
        clean_session=False,
        subscriptions=(),
        on_message=None,
        on_connect=None,
        on_disconnect=None,
        on_puback=None,
        max_inflight=16,
        backoff_min_ms=500,
        backoff_max_ms=60000,
        random=None,
        connect_timeout_ms=10000,
        max_packet=mqtt.MAX_PACKET,
        max_pending_bytes=32768,
        read_size=1024,
        poll_ms=100,
        sleep_ms=None,
    ):
        if not 1 <= backoff_min_ms <= backoff_max_ms:
            raise ValueError("need 1 <= backoff_min_ms <= backoff_max_ms")
        if connect_timeout_ms < 1 or poll_ms < 1 or read_size < 1 or max_pending_bytes < 0:
            raise ValueError("connect_timeout_ms, poll_ms and read_size must be positive")
        self.session = mqtt.Session(
            client_id, keepalive_s, clean_session, will, username, password, subscriptions, max_inflight, max_packet
        )
        self.host = host
        self.port = port
        self._ssl = ssl
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_puback = on_puback
        self._min = backoff_min_ms
        self._max = backoff_max_ms
        self._random = random or _jitter
        self._connect_timeout = connect_timeout_ms
        self._max_pending = max_pending_bytes
        self._read_size = read_size
        self._poll = poll_ms
        self._sleep = sleep_ms or _sleep_ms  # the ticker's and the back-off's sleep (a simulator shares timers)
        # For the console.
        self.connected = False
        self.last_error = None  # str: the latest problem, kept after recovery
        self.attempts = 0  # connection attempts
        self.connects = 0  # accepted connections
        self.reconnects = 0  # accepted connections after the first
        self.last_connect_s = None  # time.time() of the last accepted connection
        self.retry_ms = 0  # the last back-off delay chosen
        self._failures = 0  # failed attempts since the last accepted one
        self._task = None
        self._writer = None
        self._stopping = False
        self._down = None  # asyncio.Event of the current connection: set when it ends
        self._kick = None  # asyncio.Event: bytes were written, the writer task should drain

    # ------------------------------------------------------------ public

    def start(self):
        """Create the link's task (idempotent); returns it."""
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run())
        return self._task

    def stop(self, disconnect=True):
        """Stop for good, from sync or async code. With disconnect, a
        connected link sends DISCONNECT first (so the broker drops the will).
        Returns the task, which a caller may await to see it finish."""
        self._stopping = True
        if disconnect and self.session.connected and self._writer is not None:
            self.session.disconnect()
            self._flush()
        task = self._task
        self._task = None
        if task is not None:
            try:
                task.cancel()
            except RuntimeError:  # MicroPython: a task cannot cancel itself; _stopping ends it
                pass
        return task

    def drop(self, reason="dropped on request"):
        """End the current connection abruptly (no DISCONNECT: the broker
        publishes the will) and let the link reconnect."""
        self._fail(LinkError(reason))

    def publish(self, topic, payload, qos=0, retain=False):
        """Queue a message without waiting for the network.

        Returns False when it cannot be queued now (not connected, in-flight
        window full, too many bytes unsent): keep it and try again later.
        Otherwise True for QoS 0, or the packet id (1..65535) for QoS 1,
        which on_puback(pid) reports once the broker has it."""
        if qos != 0 and qos != 1:
            raise ValueError("qos must be 0 or 1")
        s = self.session
        if self._writer is None or not s.can_publish(qos) or self._pending() > self._max_pending:
            return False
        pid = s.publish(topic, payload, qos, retain)
        self._flush()
        return pid if qos else True

    def subscribe(self, filters):
        """Add [(filter, qos)] subscriptions, now if connected and after every reconnect."""
        self.session.subscribe(filters)
        self._flush()

    def can_publish(self, qos=1):
        return self._writer is not None and self.session.can_publish(qos) and self._pending() <= self._max_pending

    def status(self):
        """A snapshot for the console."""
        return {
            "connected": self.connected,
            "last_error": self.last_error,
            "attempts": self.attempts,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "last_connect_s": self.last_connect_s,
            "retry_ms": self.retry_ms,
            "inflight": len(self.session.inflight()),
            "pending_bytes": self._pending(),
        }

    # ------------------------------------------------------------ supervisor

    async def _run(self):
        while not self._stopping:
            self.attempts += 1
            try:
                await self._connection()
            except Exception as e:  # every network failure ends here and is retried
                self._error(e)
            if self._stopping:
                break
            cap = self._min << (self._failures if self._failures < 24 else 24)
            if cap > self._max:
                cap = self._max
            self.retry_ms = self._random(cap)
            self._failures += 1
            await self._sleep(self.retry_ms)

    def _error(self, e):
        if isinstance(e, asyncio.TimeoutError):
            self.last_error = "timed out connecting to %s:%s after %d ms" % (self.host, self.port, self._connect_timeout)
        else:
            self.last_error = _describe(e)

    async def _connection(self):
        down = self._down = asyncio.Event()
        self._kick = asyncio.Event()
        reader, writer = await _wait_for_ms(
            asyncio.open_connection(self.host, self.port, ssl=self._ssl), self._connect_timeout
        )
        tasks = []
        try:
            self._writer = writer
            self.session.connect(_now())
            self._flush()
            tasks.append(asyncio.create_task(self._guard(self._read_loop(reader))))
            tasks.append(asyncio.create_task(self._guard(self._write_loop(writer, self._kick))))
            tasks.append(asyncio.create_task(self._guard(self._tick_loop())))
            await down.wait()
        finally:
            was = self.connected
            self.connected = False
            down.set()  # _fail() from a late callback now does nothing
            graceful = self._stopping and self._pending() == 0
            self._writer = None
            self.session.connection_lost()
            for t in tasks:
                t.cancel()
            _close(writer, graceful)
            if was:
                self._call(self.on_disconnect, self.last_error)

    async def _guard(self, coro):
        try:
            await coro
        except Exception as e:
            self._fail(e)

    def _fail(self, e):
        # End the current connection (once); the reason becomes last_error.
        down = self._down
        if down is not None and not down.is_set():
            self._error(e)
            down.set()

    # ------------------------------------------------------------ the three connection tasks

    async def _read_loop(self, reader):
        s = self.session
        while True:
            data = await reader.read(self._read_size)
            if s.state == mqtt.CLOSED:
                return  # stop() sent DISCONNECT: this connection is ending
            if not data:
                raise LinkError("connection closed by the broker")
            s.receive_data(data, _now())
            while True:
                ev = s.next_event()
                if ev is None:
                    break
                if isinstance(ev, mqtt.Publish):
                    self._call(self.on_message, ev)
                    if ev.qos:
                        s.ack(ev.pid)
                elif isinstance(ev, mqtt.PubAck):
                    self._call(self.on_puback, ev.pid)
                elif isinstance(ev, mqtt.ConnAck):
                    if ev.rc:
                        raise LinkError("connection refused: " + mqtt.connack_reason(ev.rc))
                    self._accepted(ev)
                elif isinstance(ev, mqtt.SubAck) and 0x80 in ev.granted:
                    self.last_error = "subscription refused by the broker"
                self._flush()

    async def _write_loop(self, writer, kick):
        while True:
            await kick.wait()
            kick.clear()
            await writer.drain()

    async def _tick_loop(self):
        s = self.session
        start = _now()
        while True:
            await self._sleep(self._poll)
            now = _now()
            if s.state == mqtt.CONNECTING and mqtt.ticks_diff(now, start) > self._connect_timeout:
                raise LinkError("no CONNACK from %s:%s within %d ms" % (self.host, self.port, self._connect_timeout))
            if s.dead(now):
                raise LinkError("broker silent for 1.5 keepalive periods: connection hung")
            if s.ping_due(now):
                s.ping(now)
                self._flush()

    # ------------------------------------------------------------ helpers

    def _accepted(self, ev):
        self.connected = True
        self.connects += 1
        if self.connects > 1:
            self.reconnects += 1
        self.last_connect_s = int(time.time())
        self._failures = 0
        self._call(self.on_connect, ev.session_present)

    def _flush(self):
        # Hand queued packets to the stream (never blocks) and wake the writer task.
        w = self._writer
        if w is None:
            return
        pkts = self.session.data_to_send(_now())
        if not pkts:
            return
        try:
            for p in pkts:
                w.write(p)
        except Exception as e:  # MicroPython raises OSError here when the socket died
            self._fail(e)
            return
        # Wake the writer task only when the stream kept bytes back: both
        # interpreters' write() sends at once what the socket takes, and the
        # drain of an empty buffer is a no-op that would cost a task switch.
        if self._kick is not None and self._pending():
            self._kick.set()

    def _pending(self):
        # Bytes written but not yet taken by the kernel.
        w = self._writer
        if w is None:
            return 0
        buf = getattr(w, "out_buf", None)  # MicroPython Stream
        if buf is not None:
            return len(buf)
        t = getattr(w, "transport", None)  # CPython StreamWriter
        return t.get_write_buffer_size() if t is not None else 0

    def _call(self, fn, arg):
        if fn is None:
            return
        try:
            fn(arg)
        except Exception as e:  # a callback's bug must not take the link down
            self.last_error = "callback " + getattr(fn, "__name__", "?") + " raised " + _describe(e)


def _close(writer, graceful):
    # Close now. CPython: abort() unless the bytes already went out, so a
    # black-hole peer cannot keep the socket open. MicroPython: some releases'
    # Stream.close() leaves the socket to wait_closed(), so close it directly.
    try:
        t = getattr(writer, "transport", None)
        if t is not None and not graceful:
            t.abort()
        else:
            writer.close()
        s = getattr(writer, "s", None)
        if s is not None:
            s.close()
    except Exception:  # already closed
        pass
