# Tests for tests/broker.py: the suite's own Mosquitto starts, keeps queued messages across restarts, and stops.
import socket
import threading
import time

import paho.mqtt.client as mqtt


def _connect(port, cid, clean):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=clean, protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", port)
    return c


def test_persistent_queue_survives_graceful_restart(mosquitto):
    got = []
    sub = _connect(mosquitto.port, "sub-1", False)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.loop_start()
    sub.subscribe("t/#", qos=1)
    assert subscribed.wait(5)
    sub.disconnect()
    sub.loop_stop()

    pub = _connect(mosquitto.port, "pub-1", True)
    pub.loop_start()
    for i in range(1500):  # more than Mosquitto's default queue of 1,000
        pub.publish("t/x", b"%d" % i, qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    mosquitto.restart()

    sub = _connect(mosquitto.port, "sub-1", False)
    sub.on_message = lambda c, u, m: got.append(int(m.payload))
    sub.loop_start()
    deadline = time.monotonic() + 20
    while len(got) < 1500 and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.disconnect()
    sub.loop_stop()
    assert sorted(got) == list(range(1500))


def test_kill_closes_the_port(mosquitto):
    mosquitto.kill()
    s = socket.socket()
    try:
        assert s.connect_ex(("127.0.0.1", mosquitto.port)) != 0
    finally:
        s.close()
