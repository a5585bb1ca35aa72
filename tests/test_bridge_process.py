# `overstay bridge` as a real process: SIGKILL between commit and ack, SIGTERM mid-stream, the shipped Mosquitto ACL.
import subprocess
import threading
import time

import paho.mqtt.client as mqtt

from host_tools.bridge import db as dbmod
from tests.bridge_helpers import ROOT, BridgeProcess, Station, count, register, sqlite_url, wait_for
from tests.broker import free_port, mosquitto_binary


def _setup(tmp_path):
    url = sqlite_url(tmp_path / "bridge.db")
    db = dbmod.open_db(url)
    key = register(db, "st-01", "lot-a")
    db.close()
    return url, key


def test_killed_between_commit_and_ack_stores_once_and_acks_after_restart(tmp_path, mosquitto):
    url, key = _setup(tmp_path)
    b = BridgeProcess(tmp_path, mosquitto.url, url, env={"OVERSTAY_FAULT": "after_commit_exit"}).start()
    s = Station(mosquitto.port, "st-01", "lot-a", key)
    try:
        n, _ = s.session()
        wait_for(lambda: b.proc.poll() is not None, 15, what="bridge killed by the fault hook")
        assert b.proc.returncode == -9
        # Committed, but neither the broker nor the station got an ack.
        assert count(url, "SELECT COUNT(*) FROM sessions") == 1
        assert not s.acked
        b.close()
        b2 = BridgeProcess(tmp_path, mosquitto.url, url, name="restarted").start()
        try:
            # The broker redelivers the unacked message: a duplicate, acked this time.
            s.wait_acked([n], 15)
            assert count(url, "SELECT COUNT(*) FROM sessions") == 1
            assert count(url, "SELECT COUNT(*) FROM audit") == 1
            assert "Traceback" not in b2.logs()
        finally:
            b2.close()
    finally:
        s.close()


def test_sigterm_mid_stream_exits_0_and_loses_nothing(tmp_path, mosquitto):
    url, key = _setup(tmp_path)
    b = BridgeProcess(tmp_path, mosquitto.url, url).start()
    s = Station(mosquitto.port, "st-01", "lot-a", key)
    sent = []
    stop = threading.Event()

    def pump():
        while not stop.is_set() and len(sent) < 3000:
            sent.append(s.event("status")[0])

    t = threading.Thread(target=pump)
    t.start()
    try:
        wait_for(lambda: count(url, "SELECT COUNT(*) FROM events") > 100, what="ingest under way")
        assert b.terminate() == 0
        assert '"event":"stopped"' in b.logs()
        stop.set()
        t.join()
        b2 = BridgeProcess(tmp_path, mosquitto.url, url, name="after-term").start()
        try:
            # Whatever was abandoned is redelivered; the station still resends what it has no ack for.
            deadline = time.monotonic() + 30
            while not set(sent) <= s.acked and time.monotonic() < deadline:
                missing = sorted(set(sent) - s.acked)
                time.sleep(1.0)
                for n in [x for x in missing if x not in s.acked][:500]:
                    s.send("event", {"connector": 1, "type": "status"}, n=n)
            s.wait_acked(sent, 5)
            assert count(url, "SELECT COUNT(*) FROM events") == len(sent)
            assert count(url, "SELECT COUNT(DISTINCT n) FROM events") == len(sent)
        finally:
            b2.close()
    finally:
        stop.set()
        s.close()
        b.close()


def _conf_for_test(src, tmp_path, port, extra=""):
    """A shipped config made runnable here: our port, files and user; everything else as shipped."""
    import os
    import pwd

    text = src.read_text()
    out = []
    for line in text.splitlines():
        key = line.split(" ", 1)[0]
        if key in ("listener", "persistence_location", "password_file", "acl_file", "log_dest", "user"):
            continue
        out.append(line)
    out += [
        "listener %d 127.0.0.1" % port,
        "persistence_location %s/" % tmp_path,
        "log_dest file %s/mosquitto.log" % tmp_path,
        "log_type all",
        "user " + pwd.getpwuid(os.getuid()).pw_name,
        extra,
    ]
    return "\n".join(out) + "\n"


def _client(port, user, password, cid=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid or user + "-t", protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    got = []
    c.on_message = lambda cl, u, m: got.append(m.topic)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, got


def test_production_config_and_acl(tmp_path):
    conf_dir = ROOT / "deploy" / "mosquitto"
    pw = tmp_path / "passwd"
    for i, user in enumerate(("overstay-bridge", "st-01", "st-02")):
        args = ["mosquitto_passwd"] + (["-c"] if i == 0 else []) + ["-b", str(pw), user, "pw-" + user]
        subprocess.run(args, check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "prod.conf"
    conf.write_text(_conf_for_test(conf_dir / "production.conf", tmp_path, port, "password_file %s\nacl_file %s\n" % (pw, conf_dir / "acl.conf")))
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _listening(port) or proc.poll() is not None, 10, what="mosquitto with production.conf")
        assert proc.poll() is None, proc.stderr.read().decode()
        bridge, seen = _client(port, "overstay-bridge", "pw-overstay-bridge")
        bridge.subscribe("$share/g/overstay/v1/+/+/event", qos=1)
        st1, st1_got = _client(port, "st-01", "pw-st-01")
        st1.subscribe([("overstay/v1/+/st-01/ack", 1), ("overstay/v1/+/st-02/ack", 1), ("overstay/v1/lot-a/occupancy", 1)])
        time.sleep(0.3)
        st1.publish("overstay/v1/lot-a/st-01/event", b"own", qos=1).wait_for_publish(5)
        # A forged topic is denied (Mosquitto 2.0 answers a v3.1.1 client with a
        # PUBACK paho treats as an error and drops the connection: its own client).
        forger, _ = _client(port, "st-01", "pw-st-01", cid="st-01-forger")
        forger.publish("overstay/v1/lot-a/st-02/event", b"forged", qos=1)
        bridge.publish("overstay/v1/lot-a/st-01/ack", b"a1", qos=1).wait_for_publish(5)
        bridge.publish("overstay/v1/lot-a/st-02/ack", b"a2", qos=1).wait_for_publish(5)
        bridge.publish("overstay/v1/lot-a/occupancy", b"o", qos=1, retain=True).wait_for_publish(5)
        wait_for(lambda: "overstay/v1/lot-a/occupancy" in st1_got and seen, 5, what="allowed traffic (bridge saw %s, station %s)" % (seen, st1_got))
        time.sleep(0.3)
        assert seen == ["overstay/v1/lot-a/st-01/event"]  # the forged topic never reached the bridge
        assert sorted(st1_got) == ["overstay/v1/lot-a/occupancy", "overstay/v1/lot-a/st-01/ack"]
        for c in (bridge, st1, forger):
            c.disconnect()
            c.loop_stop()
        # Anonymous clients are refused.
        anon = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        rc = {}
        done = threading.Event()
        anon.on_connect = lambda c, u, f, r, p: (rc.setdefault("rc", r), done.set())
        anon.connect("127.0.0.1", port)
        anon.loop_start()
        assert done.wait(5) and rc["rc"].is_failure
        anon.loop_stop()
    finally:
        proc.terminate()
        proc.wait(10)


def _listening(port):
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def test_bridge_command_errors_are_one_line(tmp_path, capsys):
    from host_tools import cli

    for argv, needle in (
        (["bridge", "--broker", "http://x", "--db", sqlite_url(tmp_path / "b.db")], "--broker: give mqtt://"),
        (["bridge", "--broker", "mqtt://127.0.0.1:1", "--db", "mysql://x"], "--db: unsupported URL"),
        (["bridge", "--broker", "mqtt://127.0.0.1:1", "--db", sqlite_url(tmp_path / "b.db"), "--instance", "1000"], "--instance must be 0..999"),
        (["bridge", "--broker", "mqtt://u:pw@127.0.0.1:1", "--db", sqlite_url(tmp_path / "b.db")], "password in a file"),
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("overstay: error: ") and needle in err and err.count("\n") == 1, err
