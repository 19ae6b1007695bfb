"""A screening rendered as an R4 GuidanceResponse with its results in a contained Parameters.

Built as plain JSON-ready dicts (the hot path); tests validate the output with
``fhir.resources.R4B``. Nothing here emits an empty string, list or object.
"""

import re
from datetime import datetime
from html import escape
from typing import Any

from app.engine import DataRequest, Eligibility, Result, Screening, Value

Json = dict[str, Any]
_UCUM = "http://unitsofmeasure.org"
_NOT_UCUM = {"× ULN"}
_RELATIVE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")


def plan_definition_canonical(base: str, screening: Screening) -> str:
    spec = screening.trial.spec
    return f"{base}/PlanDefinition/{spec.id}|{spec.version}"


def guidance_response(
    screening: Screening,
    *,
    response_id: str,
    canonical_base: str,
    issued: datetime,
    warnings: tuple[str, ...] = (),
    evidence_base: str | None = None,
) -> Json:
    """``evidence_base``: the FHIR base the record was read from; evidence references become
    absolute against it, so a client resolves them at the EHR, not here."""
    needs_data = screening.eligibility is Eligibility.NEEDS_DATA
    parameters: Json = {
        "resourceType": "Parameters",
        "id": "result",
        "parameter": [
            {"name": "eligibility", "valueCode": screening.eligibility.value},
            {"name": "asOf", "valueDate": screening.as_of.isoformat()},
            *(_criterion(c.result, c.criterion.kind, evidence_base) for c in screening.criteria),
        ],
    }
    contained: list[Json] = [parameters]
    response: Json = {
        "resourceType": "GuidanceResponse",
        "id": response_id,
        "text": narrative(screening, warnings),
        "contained": contained,
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{response_id}"}],
        "moduleCanonical": plan_definition_canonical(canonical_base, screening),
        "status": "data-required" if needs_data else "success",
        "subject": (
            {"reference": screening.patient_ref}
            if screening.patient_ref
            else {"display": "the Patient of the posted Bundle (it has no id)"}
        ),
        "occurrenceDateTime": issued.isoformat(timespec="seconds"),
        "outputParameters": {"reference": "#result"},
    }
    if warnings:
        contained.append(
            {
                "resourceType": "OperationOutcome",
                "id": "messages",
                "issue": [
                    {"severity": "warning", "code": "informational", "diagnostics": w}
                    for w in warnings
                ],
            }
        )
        response["evaluationMessage"] = [{"reference": "#messages"}]
    if needs_data:
        response["dataRequirement"] = [_data_requirement(r) for r in screening.data_requests]
    return response


def _criterion(result: Result, kind: str, evidence_base: str | None = None) -> Json:
    parts: list[Json] = [
        {"name": "id", "valueString": result.id},
        {"name": "kind", "valueCode": kind},
        {"name": "result", "valueCode": result.status.value},
        {"name": "text", "valueString": result.label},
        {"name": "reason", "valueString": result.reason or result.status.value},
    ]
    parts += [
        {"name": "evidence", "valueReference": {"reference": _at(evidence_base, ref)}}
        for ref in result.evidence
        if ref
    ]
    parts += [_value(v) for v in result.values]
    if result.threshold:
        parts.append({"name": "threshold", "valueString": result.threshold})
    parts += [{"name": "review", "valueString": item} for item in result.review]
    parts += [_criterion(child, kind, evidence_base) for child in result.children]
    return {"name": "criterion", "part": parts}


def _at(base: str | None, ref: str) -> str:
    """``ref`` absolute against ``base`` when it is a relative ``Type/id`` (urn:uuid and
    absolute references already say where they are)."""
    if base is None or not _RELATIVE.fullmatch(ref):
        return ref
    return f"{base.rstrip('/')}/{ref}"


def _value(value: Value) -> Json:
    quantity: Json = {"value": _number(value.value), "unit": value.unit}
    if value.unit not in _NOT_UCUM:
        quantity |= {"system": _UCUM, "code": value.unit}
    return {
        "name": "value",
        "part": [
            {"name": "name", "valueString": value.name},
            {"name": "quantity", "valueQuantity": quantity},
        ],
    }


def _number(value: float) -> float | int:
    rounded = round(value, 4)
    return int(rounded) if rounded == int(rounded) else rounded


def _data_requirement(request: DataRequest) -> Json:
    requirement: Json = {"type": request.resource_type}
    if request.codes:
        path = "medication" if request.resource_type.startswith("Medication") else "code"
        requirement["codeFilter"] = [
            {"path": path, "code": [{"system": s, "code": c} for s, c in request.codes]}
        ]
    elif request.resource_type == "Patient":
        requirement["mustSupport"] = ["birthDate"]
    if request.since is not None:
        path = "effective" if request.resource_type == "Observation" else "authoredOn"
        requirement["dateFilter"] = [
            {"path": path, "valuePeriod": {"start": request.since.isoformat()}}
        ]
    return requirement


def narrative(screening: Screening, warnings: tuple[str, ...] = ()) -> Json:
    """The screening for people: the overall answer and one row per criterion (result and
    reason), as generated XHTML. Every text is escaped: reasons quote record content."""
    spec = screening.trial.spec
    rows = "".join(
        f"<tr><td>{escape(c.result.id)}</td><td>{escape(c.criterion.kind)}</td>"
        f"<td>{escape(c.result.status.value)}</td>"
        f"<td>{escape(c.result.reason or c.result.status.value)}</td></tr>"
        for c in screening.criteria
    )
    notes = "".join(f"<li>{escape(w)}</li>" for w in warnings)
    return {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">'
        f"<p><b>{escape(spec.acronym)} ({escape(spec.id)})</b>: "
        f"{escape(screening.eligibility.value)} as of {screening.as_of.isoformat()}.</p>"
        "<table><tr><th>Criterion</th><th>Kind</th><th>Result</th><th>Reason</th></tr>"
        f"{rows}</table>{f'<ul>{notes}</ul>' if notes else ''}</div>",
    }
