# Broker URLs and paho-mqtt 2.x clients for the bridge and the CLI (TLS, username/password file).
import os
import threading
import urllib.parse

import paho.mqtt.client as mqtt

from host_tools.errors import UserError


class BrokerOptions:
    """Where and how to connect: mqtt://HOST[:PORT] or mqtts://HOST[:PORT], plus TLS and credentials."""

    __slots__ = ("host", "port", "tls", "ca", "cert", "key", "username", "password")

    def __init__(self, url, ca=None, cert=None, key=None, username=None, password_file=None):
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise UserError("--broker: cannot parse " + repr(url)) from None
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise UserError("--broker: give mqtt://HOST:PORT or mqtts://HOST:PORT, not " + repr(url))
        if parts.password is not None:
            raise UserError("--broker: put the password in a file (--password-file), not in the URL")
        self.tls = parts.scheme in ("mqtts", "ssl") or ca is not None
        self.host = parts.hostname
        self.port = port or (8883 if self.tls else 1883)
        self.ca = ca
        self.cert = cert
        self.key = key
        if (cert is None) != (key is None):
            raise UserError("--tls-cert and --tls-key go together")
        for what, path in (("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)):
            if path is not None and not os.path.isfile(path):
                raise UserError(what + ": no such file: " + path)
        self.username = username or parts.username
        self.password = None
        if password_file is not None:
            if self.username is None:
                raise UserError("--password-file needs --username")
            try:
                with open(password_file, "r", encoding="utf-8") as f:
                    self.password = f.readline().rstrip("\r\n")
            except OSError as e:
                raise UserError("--password-file: cannot read " + password_file + ": " + (e.strerror or str(e))) from None

    @property
    def url(self):
        return "%s://%s:%d" % ("mqtts" if self.tls else "mqtt", self.host, self.port)


def add_arguments(p, required=True):
    p.add_argument("--broker", metavar="URL", required=required, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--tls-ca", metavar="FILE", help="CA certificate(s) to verify the broker (turns TLS on)")
    p.add_argument("--tls-cert", metavar="FILE", help="client certificate for TLS client authentication")
    p.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert")
    p.add_argument("--username", metavar="NAME", help="MQTT username")
    p.add_argument("--password-file", metavar="FILE", help="file whose first line is the MQTT password")


def options_from_args(args):
    return BrokerOptions(args.broker, args.tls_ca, args.tls_cert, args.tls_key, args.username, args.password_file)


def make_client(opts, client_id, clean_session=True, manual_ack=False):
    """A paho client (callback API version 2, MQTT 3.1.1) configured from opts; not yet connected."""
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    if opts.username is not None:
        c.username_pw_set(opts.username, opts.password)
    if opts.tls:
        c.tls_set(ca_certs=opts.ca, certfile=opts.cert, keyfile=opts.key)
    return c


def publish_once(opts, client_id, messages, timeout=10.0):
    """Connect, publish [(topic, payload, retain)] at QoS 1, wait for every
    PUBACK, disconnect. Raises UserError when the broker cannot be reached
    or does not confirm in time."""
    c = make_client(opts, client_id, clean_session=True)
    connected = threading.Event()
    result = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        connected.set()

    c.on_connect = on_connect
    try:
        c.connect(opts.host, opts.port, keepalive=30)
    except (OSError, ValueError) as e:
        raise UserError("--broker: cannot connect to %s: %s" % (opts.url, e)) from None
    c.loop_start()
    try:
        if not connected.wait(timeout):
            raise UserError("--broker: no answer from %s within %gs" % (opts.url, timeout))
        if result["rc"].is_failure:
            raise UserError("--broker: %s refused the connection: %s" % (opts.url, result["rc"]))
        infos = [c.publish(topic, payload, qos=1, retain=retain) for topic, payload, retain in messages]
        for info in infos:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise UserError("--broker: %s did not confirm the publish within %gs" % (opts.url, timeout))
    finally:
        c.disconnect()
        c.loop_stop()
