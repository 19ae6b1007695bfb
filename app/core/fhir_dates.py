"""FHIR date and dateTime values as calendar dates.

A dateTime is placed on the calendar day written in it (the source's local day), which is the day a
coordinator reads in the chart. Partial dates ("2024", "2024-05") stand for their first day in
:func:`parse_fhir_date`; :func:`parse_fhir_date_range` gives the first and last day they may be,
for readers that must not decide on a day the source did not write (an age, a window edge).
"""

import calendar
import re
from datetime import date

DATE_PATTERN = (
    r"(?P<y>[0-9]{4})(?:-(?P<m>0[1-9]|1[0-2])(?:-(?P<d>0[1-9]|[12][0-9]|3[01]))?)?"
    r"(?:T[0-9:.]+(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
)
"""What a FHIR date or dateTime looks like here (the population run's SQL uses it too)."""
_DATE = re.compile(DATE_PATTERN)


def parse_fhir_date(text: str) -> date:
    """The calendar day of a FHIR date/dateTime; ValueError if it is not one."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a FHIR date or dateTime")
    return date(int(match["y"]), int(match["m"] or 1), int(match["d"] or 1))


def parse_fhir_date_range(text: str) -> tuple[date, date]:
    """The earliest and latest calendar day a FHIR date/dateTime may be: the same day when the
    day is written, the whole month for "2024-05", the whole year for "2024"."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a FHIR date or dateTime")
    year = int(match["y"])
    if match["d"]:
        day = date(year, int(match["m"]), int(match["d"]))
        return day, day
    if match["m"]:
        month = int(match["m"])
        return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    return date(year, 1, 1), date(year, 12, 31)
