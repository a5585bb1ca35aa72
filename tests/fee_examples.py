# The fee spec's example tariff T0 and worked example 1's timeline, shared by the tests.

T0 = {"id": "T0", "version": 1, "rate": 50, "grace_s": 300}

# Plug at 0, Charging at 10, SuspendedEV at 3610, Available at 4530: fee 500 under T0.
EX1 = [
    {"t": 0, "status": "Preparing"},
    {"t": 10, "status": "Charging"},
    {"t": 3610, "status": "SuspendedEV"},
    {"t": 4530, "status": "Available"},
]
