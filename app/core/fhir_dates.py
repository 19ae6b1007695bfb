"""FHIR date and dateTime values as calendar dates.

A dateTime is placed on the calendar day written in it (the source's local day), which is the day a
coordinator reads in the chart. Partial dates ("2024", "2024-05") stand for their first day.
"""

import re
from datetime import date

_DATE = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<m>0[1-9]|1[0-2])(?:-(?P<d>0[1-9]|[12][0-9]|3[01]))?)?"
    r"(?:T[0-9:.]+(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
)


def parse_fhir_date(text: str) -> date:
    """The calendar day of a FHIR date/dateTime; ValueError if it is not one."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a FHIR date or dateTime")
    return date(int(match["y"]), int(match["m"] or 1), int(match["d"] or 1))
