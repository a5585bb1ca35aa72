# overstay host tools: the CPython side (bridge, simulator, console, flashing, fee quotes).
