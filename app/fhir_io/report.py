"""A screening rendered as an R4 GuidanceResponse with its results in a contained Parameters.

Built as plain JSON-ready dicts (the hot path); tests validate the output with
``fhir.resources.R4B``. Nothing here emits an empty string, list or object.
"""

import math
import re
from dataclasses import replace
from datetime import datetime
from html import escape
from typing import Any

from app.engine import CriterionResult, DataRequest, Eligibility, Result, Screening, Status, Value

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
    screening = plausible(screening)
    warnings += implausible_values(screening)
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
    if not plausible_number(value):  # plausible() keeps these out; never let one break JSON
        return 0
    rounded = round(value, 4)
    return int(rounded) if rounded == int(rounded) else rounded


# --- numbers outside any plausible range --------------------------------------------------------

IMPLAUSIBLE = 1e12
"""No quantity the criteria compare, once normalised to the criterion's unit (mg/dL, 10*9/L,
/uL, mL/min, kg, mm[Hg], ...), comes near this; a record holding one (1e20, 1e300, a 30-digit
integer) is damaged, and JSON cannot even carry some of them (infinity, integers past 64 bits)."""


def plausible_number(value: float) -> bool:
    return math.isfinite(value) and abs(value) < IMPLAUSIBLE


def plausible(screening: Screening) -> Screening:
    """The screening with every check that compared an implausible number turned ``unknown``
    with a review item naming the value (a data problem, never a definite answer), and the
    overall eligibility recomputed by the engine's rule. Unchanged when every number is sane."""
    criteria = tuple(
        CriterionResult(c.criterion, _without_implausible(c.result)) for c in screening.criteria
    )
    if criteria == screening.criteria:
        return screening
    return replace(screening, criteria=criteria, eligibility=_eligibility(criteria))


def implausible_values(screening: Screening) -> tuple[str, ...]:
    """Words for the evaluationMessage: each check whose input was set aside as implausible."""
    return tuple(
        f"Check {r.id} set aside a value outside any plausible range; the check is unknown "
        "until the source record is corrected."
        for c in screening.criteria
        for r in c.result.walk()
        if any(item.startswith(_IMPLAUSIBLE_REVIEW) for item in r.review)
        and not any(_flagged(child) for child in r.children)
    )


_IMPLAUSIBLE_REVIEW = "Implausible value"


def _flagged(result: Result) -> bool:
    return any(item.startswith(_IMPLAUSIBLE_REVIEW) for r in result.walk() for item in r.review)


def _without_implausible(result: Result) -> Result:
    children = tuple(_without_implausible(child) for child in result.children)
    bad = [v for v in result.values if not plausible_number(v.value)]
    if not bad and children == result.children:
        return result
    if not bad:
        # A group over a child set aside: unknown. (Another child might still decide it, but the
        # result does not say how its group combines; unknown is the side that cannot harm.)
        status = result.status
        if status is not Status.NOT_APPLICABLE and any(_flagged(c) for c in children):
            status = Status.UNKNOWN
        return replace(result, children=children, status=status)
    review = tuple(
        f"{_IMPLAUSIBLE_REVIEW}: {v.name} = {v.value:.3g} {v.unit}, outside any plausible "
        "range (a damaged or mis-keyed record); check the source."
        for v in bad
    )
    return replace(
        result,
        status=Status.UNKNOWN,
        reason=f"{result.reason} But a value it compared is implausible, so it stays unknown.",
        values=tuple(v for v in result.values if plausible_number(v.value)),
        review=result.review + review,
        children=children,
    )


def _eligibility(criteria: tuple[CriterionResult, ...]) -> Eligibility:
    """The engine's overall rule (app/engine/evaluate._overall), over the guarded results."""

    def decisive(c: CriterionResult) -> bool:
        wanted = Status.NOT_MET if c.criterion.kind == "inclusion" else Status.MET
        return c.result.status is wanted

    if any(decisive(c) for c in criteria):
        return Eligibility.INELIGIBLE
    if any(c.result.lacks_data for c in criteria):
        return Eligibility.NEEDS_DATA
    if any(
        c.result.status is Status.UNKNOWN or any(r.review for r in c.result.walk())
        for c in criteria
    ):
        return Eligibility.NEEDS_REVIEW
    return Eligibility.ELIGIBLE


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
