# overstay protocol core: sans-IO code shared by the stall firmware (MicroPython) and the host tools (CPython).
#
# Modules, one concept each:
#   fee        idle-fee rules: tariff validation and quote()
#   connector  control pilot + current samples -> OCPP connector statuses
#   session    session accounting on top of connector statuses and the fee engine
#   wire       signed, versioned JSON envelopes for MQTT
#   journal    append-only, CRC-checked record log for flash
#
# Nothing here reads a clock, opens a socket or touches a file by itself:
# time and bytes go in, events and bytes come out.

VERSION = "0.1.0"
