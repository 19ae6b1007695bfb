"""What the service accepts from a caller before anything reaches the database or the log: FHIR's
syntax for ids and references, lengths, characters, and the calendar range of an as-of date.

FHIR R4 (datatypes.html#id): an id is 1-64 of ``[A-Za-z0-9\\-.]``. A reference to a patient is
``Patient/{id}``. Every other value a caller sends (a search value, a hook instance, a header) is
bounded and may not carry control characters: PostgreSQL refuses a NUL in text, and a newline in
a log line forges another one.
"""

import re
from datetime import date

from app.core.errors import InvalidInput, PayloadTooLarge

ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
PATIENT_REFERENCE = re.compile(r"Patient/[A-Za-z0-9\-.]{1,64}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_VALUE = 1024
"""Longest search value, canonical URL or header value served (characters)."""
MAX_REFERENCE = 512
"""Longest patient reference stored (a Patient/{id}, or the fullUrl of a Patient without id):
indexed, and PostgreSQL's index rows hold about 2.7 KB."""
MAX_PATH = 2048
MAX_QUERY = 4096
MAX_HEADER = 8192

EARLIEST_AS_OF = date(1900, 1, 1)
LATEST_AS_OF = date(2999, 12, 31)
"""A screening's as-of date: criteria look back years from it (and Python's calendar ends at
9999); no trial screening means anything outside these."""


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID.fullmatch(value) is not None


def fhir_id(value: str, where: str) -> str:
    """``value`` if it is a FHIR id; else 400 (without echoing the value)."""
    if not is_id(value):
        raise InvalidInput(
            f"{where} must be a FHIR id: 1-64 letters, digits, '-' or '.'.", expression=where
        )
    return value


def patient_reference(value: str, where: str) -> str:
    if PATIENT_REFERENCE.fullmatch(value) is None:
        raise InvalidInput(
            f"{where} must be a reference Patient/{{id}} (an id of 1-64 letters, digits, '-' "
            "or '.').",
            expression=where,
        )
    return value


def text_value(value: str, where: str, limit: int = MAX_VALUE) -> str:
    """A free value (a canonical URL, a hook instance): bounded, no control characters."""
    if len(value) > limit or CONTROL.search(value):
        raise InvalidInput(
            f"{where} must be at most {limit} characters, without control characters.",
            expression=where,
        )
    return value


def as_of_date(value: date, where: str) -> date:
    if not EARLIEST_AS_OF <= value <= LATEST_AS_OF:
        raise InvalidInput(
            f"{where} must lie between {EARLIEST_AS_OF.isoformat()} and "
            f"{LATEST_AS_OF.isoformat()}.",
            expression=where,
        )
    return value


def printable(value: str, limit: int = 200) -> str:
    """``value`` made safe for a log line or an audit row: control characters replaced, cut to
    ``limit`` characters (the cut marked)."""
    cleaned = CONTROL.sub("?", value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


_RESOURCE_KEY = b'"resourceType"'


def resource_count(body: bytes, limit: int, where: str = "The request") -> int:
    """How many resources ``body`` (JSON) can hold at most, counted before it is parsed: each
    resource, contained ones included, names its ``"resourceType"``, and the key cannot occur
    inside a JSON string unescaped. Above ``limit``: 413, so an oversized record costs a scan of
    its bytes (memchr speed), not a parse."""
    found = body.count(_RESOURCE_KEY)
    if found > limit:
        raise PayloadTooLarge(
            f"{where} holds {found} resources; at most {limit} are screened per request."
        )
    return found
