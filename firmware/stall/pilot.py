# Control pilot: ADC counts through the divider to pilot millivolts, and millivolts to the IEC 61851 state letter.
#
# The pilot is a +-12 V, 1 kHz PWM (or a steady level). The state is read
# from its HIGH level: the board samples a burst spanning at least one PWM
# period and passes the largest reading here. The divider/level shifter maps
# pilot volts into the ADC range linearly:
#     pilot_mv = (adc_mv - offset_mv) * div_num // div_den
# with offset_mv the ADC voltage at 0 V pilot (config: pilot_offset_mv,
# pilot_div_num, pilot_div_den, pilot_vref_mv). Integers only.

# Nominal high levels: A 12 V, B 9 V, C 6 V, D 3 V, E 0 V, F -12 V. A reading
# maps to the nearest nominal level: thresholds halfway between them.
_LEVELS = ((10500, "A"), (7500, "B"), (4500, "C"), (1500, "D"), (-6000, "E"))


def adc_mv(raw_u16, vref_mv):
    """ADC millivolts of a read_u16() value (0..65535 spans 0..vref_mv)."""
    return raw_u16 * vref_mv // 65535


def pilot_mv(raw_u16, cfg):
    """Pilot millivolts for one read_u16() value under the divider in cfg."""
    v = adc_mv(raw_u16, cfg["pilot_vref_mv"]) - cfg["pilot_offset_mv"]
    return v * cfg["pilot_div_num"] // cfg["pilot_div_den"]


def letter(mv):
    """IEC 61851 state letter of a pilot high level in millivolts."""
    for threshold, name in _LEVELS:
        if mv >= threshold:
            return name
    return "F"


def state_of_burst(samples, cfg):
    """State letter from a burst of read_u16() values: the max is the high level."""
    hi = 0
    for s in samples:
        if s > hi:
            hi = s
    return letter(pilot_mv(hi, cfg))
