"""The ``$screen`` operation's input: a FHIR Parameters resource, read strictly.

Parameters: either ``bundle`` (resource: one patient's record as a Bundle) or ``patient``
(valueReference ``Patient/{id}`` or valueString id: the record is fetched from the EHR), ``asOf``
(valueDate, optional; defaults to today), ``study`` (valueString, repeating; all-trials call only).
"""

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from app.core import limits
from app.core.errors import InvalidInput
from app.core.fhir_dates import parse_fhir_date


@dataclass(frozen=True, slots=True)
class ScreenRequest:
    bundle: dict[str, Any] | None
    patient_id: str | None
    as_of: date | None
    studies: tuple[str, ...]


def parse_screen_request(body: bytes) -> ScreenRequest:
    try:
        parameters = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(parameters, dict):
        raise InvalidInput("The request body must be a FHIR Parameters resource (a JSON object).")
    kind = parameters.get("resourceType")
    if kind != "Parameters":
        raise InvalidInput(
            f"The request body must be a FHIR Parameters resource, not {kind or 'untyped JSON'}.",
            expression="resourceType",
        )
    items = parameters.get("parameter", [])
    if not isinstance(items, list):
        raise InvalidInput(
            "Parameters.parameter must be an array.", expression="Parameters.parameter"
        )
    bundle: dict[str, Any] | None = None
    patient_id: str | None = None
    as_of: date | None = None
    studies: list[str] = []
    for i, item in enumerate(items):
        where = f"Parameters.parameter[{i}]"
        name = item.get("name") if isinstance(item, dict) else None
        if name == "bundle" and bundle is None:
            resource = item.get("resource")
            if not isinstance(resource, dict) or resource.get("resourceType") != "Bundle":
                raise InvalidInput(
                    "The 'bundle' parameter must carry a Bundle in 'resource'.", expression=where
                )
            bundle = resource
        elif name == "patient" and patient_id is None:
            patient_id = _patient_id(item, where)
        elif name == "asOf" and as_of is None:
            as_of = _as_of(item, where)
        elif name == "study" and isinstance(item.get("valueString"), str):
            studies.append(item["valueString"])
        elif name in {"bundle", "patient", "asOf"}:
            raise InvalidInput(f"The '{name}' parameter is given more than once.", expression=where)
        else:
            raise InvalidInput(
                f"Unknown or malformed parameter {name!r}: $screen takes 'bundle' or "
                "'patient', 'asOf' and 'study'.",
                expression=where,
            )
    if (bundle is None) == (patient_id is None):
        raise InvalidInput(
            "Give either 'bundle' (the patient's record) or 'patient' (a Patient id to fetch "
            "from the EHR), not both and not neither."
        )
    return ScreenRequest(bundle, patient_id, as_of, tuple(studies))


_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
"""FHIR id syntax: it goes into an EHR URL, so nothing else is accepted."""


def _patient_id(item: dict[str, Any], where: str) -> str:
    reference = item.get("valueReference")
    text = reference.get("reference") if isinstance(reference, dict) else item.get("valueString")
    pid = ""
    if isinstance(reference, dict) and isinstance(text, str):
        kind, _, found = text.rpartition("/")
        pid = found if kind.rsplit("/", 1)[-1] == "Patient" else ""
    elif isinstance(text, str):
        pid = text
    if not _ID.fullmatch(pid):
        raise InvalidInput(
            "'patient' must be a valueReference 'Patient/{id}' or a valueString id "
            "(letters, digits, '-' and '.', at most 64).",
            expression=where,
        )
    return pid


def _as_of(item: dict[str, Any], where: str) -> date:
    value = item.get("valueDate")
    if not isinstance(value, str) or len(value) != 10:
        raise InvalidInput("'asOf' must be a valueDate of the form YYYY-MM-DD.", expression=where)
    try:
        parsed = parse_fhir_date(value)
    except ValueError:
        raise InvalidInput(f"'asOf' {value!r} is not a calendar date.", expression=where) from None
    return limits.as_of_date(parsed, where)
