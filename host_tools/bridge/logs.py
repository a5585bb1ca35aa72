# Structured logs for the bridge: one line per event, key=value text or JSON (--log-json); never a secret.
import json
import sys
import threading
import time

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _ts(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def _text_value(v):
    if isinstance(v, str):
        if v and all(c.isalnum() or c in "-_./:@+" for c in v):
            return v
        return json.dumps(v)
    if isinstance(v, (bytes, bytearray)):
        return "<%d bytes>" % len(v)  # payloads and keys are never printed
    return json.dumps(v, default=str)


class Log:
    """log.info("event", key=value, ...) writes one line. Thread-safe.

    Values that are bytes are replaced by their length: a payload, a digest
    or a key can never reach the log by accident."""

    def __init__(self, stream=None, as_json=False, level="info", name="bridge"):
        self.stream = stream if stream is not None else sys.stderr
        self.as_json = as_json
        self.level = LEVELS[level]
        self.name = name
        self._lock = threading.Lock()

    def log(self, level, event, **fields):
        if LEVELS[level] < self.level:
            return
        t = time.time()
        if self.as_json:
            rec = {"ts": _ts(t), "level": level, "logger": self.name, "event": event}
            for k, v in fields.items():
                rec[k] = ("<%d bytes>" % len(v)) if isinstance(v, (bytes, bytearray)) else v
            line = json.dumps(rec, default=str, separators=(",", ":"))
        else:
            parts = [_ts(t), level.upper(), event]
            for k, v in fields.items():
                parts.append(k + "=" + _text_value(v))
            line = " ".join(parts)
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed stderr must not stop the bridge
                pass

    def debug(self, event, **f):
        self.log("debug", event, **f)

    def info(self, event, **f):
        self.log("info", event, **f)

    def warning(self, event, **f):
        self.log("warning", event, **f)

    def error(self, event, **f):
        self.log("error", event, **f)
