# Freeze manifest: bakes the protocol core and the stall application into a MicroPython image (docs/firmware.md).
#
# Build from the port folder of a MicroPython checkout, e.g.
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/repo/firmware/manifest.py
# Frozen bytecode runs from flash, so the modules cost no heap to import.
# Without a custom image, copy the same files to the board's filesystem
# (mpremote cp -r ../protocol stall boot.py main.py :) or as .mpy files
# built by `python -m host_tools.build`. config.json stays on the filesystem.
# The build tool defines include/package/module; mypy cannot know them:
# type: ignore
include("$(PORT_DIR)/boards/manifest.py")  # the port's own frozen modules (asyncio, ntptime, ...)
package("protocol", base_path="..")
package("stall")
module("boot.py")
module("main.py")
