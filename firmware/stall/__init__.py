# The stall application package: hardware layer, clocks, persistence, the sans-IO StallCore and the asyncio app around it (docs/firmware.md).
