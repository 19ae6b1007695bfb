"""The ``$screen`` operation's input: a FHIR Parameters resource, read strictly.

Parameters: ``bundle`` (resource: one patient's record as a Bundle, required), ``asOf``
(valueDate, optional; defaults to today), ``study`` (valueString, repeating; all-trials call only).
"""

from dataclasses import dataclass
from datetime import date
from typing import Any

import orjson

from app.errors import InvalidInput
from app.fhir_dates import parse_fhir_date


@dataclass(frozen=True, slots=True)
class ScreenRequest:
    bundle: dict[str, Any]
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
        elif name == "asOf" and as_of is None:
            as_of = _as_of(item, where)
        elif name == "study" and isinstance(item.get("valueString"), str):
            studies.append(item["valueString"])
        elif name in {"bundle", "asOf"}:
            raise InvalidInput(f"The '{name}' parameter is given more than once.", expression=where)
        else:
            raise InvalidInput(
                f"Unknown or malformed parameter {name!r}: $screen takes 'bundle', 'asOf' "
                "and 'study'.",
                expression=where,
            )
    if bundle is None:
        raise InvalidInput("The 'bundle' parameter (the patient's record) is required.")
    return ScreenRequest(bundle, as_of, tuple(studies))


def _as_of(item: dict[str, Any], where: str) -> date:
    value = item.get("valueDate")
    if not isinstance(value, str) or len(value) != 10:
        raise InvalidInput("'asOf' must be a valueDate of the form YYYY-MM-DD.", expression=where)
    try:
        return parse_fhir_date(value)
    except ValueError:
        raise InvalidInput(f"'asOf' {value!r} is not a calendar date.", expression=where) from None
