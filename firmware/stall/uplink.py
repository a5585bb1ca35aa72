# Uplink: joins the StallCore to the MqttLink. Pumps the outbox and the retained state out; hands acks and commands in.
#
# The link (stall.mqtt_link.MqttLink, or any object with `connected`,
# publish(topic, payload, qos, retain) -> False | pid | True, and the four
# callback attributes) never blocks: publish() returns False when the link
# is down or its window is full, and the message simply stays in the
# outbox for the next pump. Received messages are handled inside
# on_message, before the link acknowledges them to the broker, so a command
# is journaled before the broker forgets it.

from protocol import wire


class Uplink:
    def __init__(self, core, clock, link=None):
        self.core = core
        self.clock = clock
        self.link = link
        self.avail_due = False
        self.pubacks = 0
        self.disconnects = 0
        self.kick = None  # an asyncio.Event set when there is something to send

    def attach(self, link):
        self.link = link
        link.on_connect = self.on_connect
        link.on_disconnect = self.on_disconnect
        link.on_message = self.on_message
        link.on_puback = self.on_puback

    def _wake(self):
        if self.kick is not None:
            self.kick.set()

    # -- link callbacks (called from the link's tasks; never block) -------------

    def on_connect(self, session_present):
        self.core.link_up(self.clock.now_ms())
        self.avail_due = True
        self._wake()

    def on_disconnect(self, reason):
        self.disconnects += 1
        self.core.link_down()

    def on_message(self, msg):
        self.core.on_message(msg.topic, msg.payload, self.clock.now_ms())
        self._wake()  # an ack may have opened the window

    def on_puback(self, pid):
        self.pubacks += 1  # the broker has it; only the bridge's ack retires it

    # -- the pump ---------------------------------------------------------------

    def pump(self, now_ms):
        """Publish what is due; returns how many outbox messages went out."""
        link = self.link
        core = self.core
        if link is None or not link.connected:
            return 0
        if self.avail_due:
            if link.publish(core.t_avail, wire.AVAIL_ONLINE, 1, True) is False:
                return 0
            self.avail_due = False
        if core.state_dirty and core.state_bytes is not None:
            if link.publish(core.t_state, core.state_bytes, 1, True) is False:
                return 0
            core.state_dirty = False
        sent = 0
        ob = core.outbox
        for e in ob.due(now_ms):
            data = ob.payload(e)
            if data is None:
                continue
            topic = core.t_session if ob.leaf(e) == "session" else core.t_event
            if link.publish(topic, data, 1, False) is False:
                break
            ob.mark_sent(e, now_ms)
            sent += 1
        return sent
