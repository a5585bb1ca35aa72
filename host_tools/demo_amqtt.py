# The demo's embedded broker when Mosquitto is not installed: amqtt (pure Python, from PyPI) on one loopback port.
#
#   python -m host_tools.demo_amqtt --port PORT
#
# MQTT 3.1.1 with persistent sessions, QoS 1 and retained messages, which is
# all the stalls and the bridge need. amqtt keeps sessions and queues in
# memory (no persistence across its own restart) and does not limit queue
# length, so an offline client's backlog is kept, not dropped. Anonymous
# clients on loopback only; no $SYS topics or packet logging. Stops cleanly
# on SIGTERM or SIGINT.
import argparse
import asyncio
import logging
import signal
import sys


def config(port):
    return {
        "listeners": {"default": {"type": "tcp", "bind": "127.0.0.1:%d" % port, "max_connections": 0}},
        "timeout_disconnect_delay": 0,
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


async def serve(port):
    from amqtt.broker import Broker

    broker = Broker(config(port))
    await broker.start()
    print("amqtt: listening on 127.0.0.1:%d" % port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()
    print("amqtt: stopped", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m host_tools.demo_amqtt")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transitions").setLevel(logging.ERROR)
    try:
        asyncio.run(serve(args.port))
    except OSError as e:
        print("amqtt: cannot listen on 127.0.0.1:%d: %s" % (args.port, e.strerror or e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
