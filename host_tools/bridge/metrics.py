# Prometheus metrics of one bridge process (prometheus-client, own registry; served on --metrics-port).
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LAT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, registry=None):
        r = self.registry = registry or CollectorRegistry()
        p = "overstay_bridge_"
        self.messages = Counter(p + "messages_total", "Station messages handled, by kind and outcome (stored, duplicate)", ["kind", "outcome"], registry=r)
        self.rejects = Counter(p + "rejects_total", "Messages rejected, by reason", ["reason"], registry=r)
        self.quarantined = Counter(p + "quarantined_total", "Messages quarantined: same (station, n), different content", registry=r)
        self.fee_checks = Counter(p + "fee_checks_total", "Closed sessions verified, by result (match, mismatch, unverified)", ["result"], registry=r)
        self.fee_mismatches = Counter(p + "fee_mismatches_total", "Sessions whose fee or occupancy did not verify, by reason", ["reason"], registry=r)
        self.ingest_rate = Gauge(p + "ingest_rate", "Messages committed per second (moving average over about 10 s)", registry=r)
        self.batch_size = Histogram(p + "batch_size", "Messages per committed batch", buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000), registry=r)
        self.commit_seconds = Histogram(p + "commit_seconds", "Time to verify, store and commit one batch", buckets=_LAT_BUCKETS, registry=r)
        self.receive_to_commit = Histogram(p + "receive_to_commit_seconds", "From receipt of a batch's oldest message to its commit", buckets=_LAT_BUCKETS, registry=r)
        self.commit_to_ack = Histogram(p + "commit_to_ack_seconds", "From commit to the broker's PUBACK of the station ack", buckets=_LAT_BUCKETS, registry=r)
        self.acks_sent = Counter(p + "acks_published_total", "Signed application acks published to stations", registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Messages received and waiting for the writer", registry=r)
        self.inflight = Gauge(p + "publish_inflight", "QoS 1 publishes awaiting PUBACK (application window)", registry=r)
        self.open_gaps = Gauge(p + "open_gaps", "Open per-station sequence gaps", registry=r)
        self.gap_alerts = Counter(p + "gap_alerts_total", "Gaps that stayed open beyond --gap-alert", registry=r)
        self.last_seen = Gauge(p + "station_last_seen_seconds", "Unix time the station's latest message was committed", ["station"], registry=r)
        self.occupancy = Gauge(p + "site_occupancy_percent", "Site occupancy as last published", ["site"], registry=r)
        self.db_errors = Counter(p + "db_errors_total", "Batches that failed to commit (retried)", registry=r)
        self.connected = Gauge(p + "broker_connected", "1 while connected to the broker", registry=r)
        self._rate_t = time.monotonic()
        self._rate_n = 0

    def count_committed(self, n):
        # A 10-second exponential moving average of messages per second.
        self._rate_n += n
        now = time.monotonic()
        dt = now - self._rate_t
        if dt >= 1.0:
            inst = self._rate_n / dt
            old = self.ingest_rate._value.get()
            self.ingest_rate.set(inst if old == 0 else old + (inst - old) * min(1.0, dt / 10.0))
            self._rate_t = now
            self._rate_n = 0

    def serve(self, port, host="127.0.0.1"):
        """Start the HTTP endpoint; returns a callable that stops it."""
        res = start_http_server(port, addr=host, registry=self.registry)
        if isinstance(res, tuple):
            server, thread = res

            def stop():
                server.shutdown()
                server.server_close()

            return stop
        return lambda: None
