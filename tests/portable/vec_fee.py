# Golden-vector adapter for protocol/fee.py: quote() with the tariff and timeline of a case.
#
# input:  {"tariff": {...}, "timeline": [...], "at": T (optional)}
# output: the quote result dict of the idle-fee rules, or for input the
#         engine refuses {"error": "TariffError" | "TimelineError", "field": ...}
from protocol import fee


def run(inp):
    try:
        if "at" in inp:
            return fee.quote(inp["tariff"], inp["timeline"], inp["at"])
        return fee.quote(inp["tariff"], inp["timeline"])
    except fee.TariffError as e:
        return {"error": "TariffError", "field": e.field}
    except fee.TimelineError as e:
        return {"error": "TimelineError", "field": e.field}
