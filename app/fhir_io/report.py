"""A screening rendered as an R4 GuidanceResponse with its results in a contained Parameters.

Built as plain JSON-ready dicts (the hot path); tests validate the output with
``fhir.resources.R4B``. Nothing here emits an empty string, list or object.
"""

import math
import re
from calendar import monthrange
from dataclasses import dataclass, replace
from datetime import date, datetime
from html import escape
from typing import Any

from app.engine import CriterionResult, DataRequest, Eligibility, Result, Screening, Status, Value
from app.engine.record import Observation, PatientRecord, Quantity

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
    record: PatientRecord | None = None,
) -> Json:
    """``evidence_base``: the FHIR base the record was read from; evidence references become
    absolute against it, so a client resolves them at the EHR, not here. ``record``: the record
    screened; each check's evidence is then also summarised from it (see :func:`_details`)."""
    screening = plausible(screening)
    cited = _cited(screening, record)
    warnings += implausible_values(screening)
    needs_data = screening.eligibility is Eligibility.NEEDS_DATA
    parameters: Json = {
        "resourceType": "Parameters",
        "id": "result",
        "parameter": [
            {"name": "eligibility", "valueCode": screening.eligibility.value},
            {"name": "asOf", "valueDate": screening.as_of.isoformat()},
            *(
                _criterion(c.result, c.criterion.kind, evidence_base, cited)
                for c in screening.criteria
            ),
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


def _criterion(
    result: Result,
    kind: str,
    evidence_base: str | None = None,
    cited: "dict[str, list[_Summary]] | None" = None,
) -> Json:
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
    if cited:
        parts += _details(result.evidence, cited, evidence_base)
    parts += [_value(v) for v in result.values]
    if result.threshold:
        parts.append({"name": "threshold", "valueString": result.threshold})
    parts += [{"name": "review", "valueString": item} for item in result.review]
    parts += [_criterion(child, kind, evidence_base, cited) for child in result.children]
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


# --- what each piece of evidence says -------------------------------------------------------

DETAILED = 5
"""Evidence resources summarised per check, newest first: a check may cite hundreds (every
result in a window), so the rest are counted (``evidenceNotDetailed``), never listed twice."""
_PER_RESOURCE = 4
"""Values summarised per cited Observation: a panel cites one resource for several components."""
_LONGEST = 200
_CODE = re.compile(r"[^\s]+( [^\s]+)*")


@dataclass(frozen=True, slots=True)
class _Summary:
    """One cited resource (or one component of it) as the record read it: its type, label, date
    and, for a result, value and reference range, as ``evidenceDetail`` sub-parts."""

    day: date | None
    parts: tuple[Json, ...]
    valued: bool = False


def _cited(screening: Screening, record: PatientRecord | None) -> dict[str, list[_Summary]] | None:
    """A summary of every resource the screening cites, by reference (None without a record).
    Read from the lean record the engine screened, so it says what the checks saw."""
    if record is None:
        return None
    wanted = {ref for c in screening.criteria for r in c.result.walk() for ref in r.evidence if ref}
    found: dict[str, list[_Summary]] = {}

    def add(ref: str, summary: _Summary) -> None:
        if ref in wanted:
            found.setdefault(ref, []).append(summary)

    if not wanted:
        return found
    patient = record.patient
    add(patient.ref, _summary("Patient", "", patient.birth_date, patient.birth_latest, "birth"))
    for o in record.observations:
        if o.ref in wanted:
            add(o.ref, _observation(o))
    # Only the cited resources are summarised: a record holds hundreds a screening never cites.
    for c in record.conditions:
        if c.ref not in wanted:
            continue
        kind = "onset" if c.onset is not None else "recorded"
        add(
            c.ref,
            _summary(
                "Condition",
                _label(c.text, c.displays),
                c.when,
                c.latest,
                kind,
                _status(c.clinical_status),
            ),
        )
    for m in record.medications:
        if m.ref not in wanted:
            continue
        add(m.ref, _summary(m.kind, m.text, m.start, None, "start", _status(m.status)))
    for i in record.immunizations:
        if i.ref not in wanted:
            continue
        add(
            i.ref,
            _summary("Immunization", _label(i.text, i.displays), i.when, i.latest, "occurrence"),
        )
    for p in record.procedures:
        if p.ref not in wanted:
            continue
        add(
            p.ref,
            _summary(
                "Procedure",
                _label(p.text, p.displays),
                p.when,
                p.latest,
                "performed",
                _status(p.status),
            ),
        )
    for a in record.allergies:
        if a.ref not in wanted:
            continue
        add(
            a.ref,
            _summary(
                "AllergyIntolerance",
                _label(a.text, a.displays),
                a.when,
                None,
                None,
                _status(a.clinical_status),
            ),
        )
    for u in record.unreadable:
        if u.ref not in wanted:
            continue
        problem = {"name": "problem", "valueString": _short(f"Not read: {u.problem}")}
        typed = u.ref.split("/", 1)[0] if _RELATIVE.fullmatch(u.ref) else None
        add(u.ref, _summary(typed, u.text, None, None, None, (problem,)))
    for ref, items in found.items():
        valued = [s for s in items if s.valued]
        if valued and len(valued) < len(items):  # a panel: its components carry the values
            found[ref] = valued
    return found


def _details(
    evidence: tuple[str, ...], cited: dict[str, list[_Summary]], base: str | None
) -> list[Json]:
    """The ``evidenceDetail`` parts of one check: its :data:`DETAILED` newest cited resources."""
    refs = [ref for ref in dict.fromkeys(evidence) if ref in cited]
    refs.sort(
        key=lambda ref: max((s.day for s in cited[ref] if s.day), default=date.min), reverse=True
    )
    shown = refs[:DETAILED]
    parts: list[Json] = [
        {
            "name": "evidenceDetail",
            "part": [
                {"name": "reference", "valueReference": {"reference": _at(base, ref)}},
                *s.parts,
            ],
        }
        for ref in shown
        for s in cited[ref][:_PER_RESOURCE]
    ]
    if len(refs) > len(shown):
        parts.append({"name": "evidenceNotDetailed", "valueInteger": len(refs) - len(shown)})
    return parts


def _summary(
    kind: str | None,
    label: str,
    day: date | None,
    latest: date | None,
    day_kind: str | None,
    extra: tuple[Json, ...] = (),
    valued: bool = False,
) -> _Summary:
    parts: list[Json] = []
    if kind:
        parts.append({"name": "type", "valueCode": kind})
    if label.strip():
        parts.append({"name": "label", "valueString": _short(label)})
    if day is not None:
        parts.append({"name": "date", "valueDate": _partial(day, latest)})
        if day_kind:
            parts.append({"name": "dateKind", "valueCode": day_kind})
    return _Summary(day, (*parts, *extra), valued)


def _observation(o: Observation) -> _Summary:
    extra: list[Json] = []
    if o.quantity is not None and plausible_number(o.quantity.value):
        quantity = _simple(o.quantity)
        if o.quantity.comparator in {"<", "<=", ">=", ">"}:
            quantity["comparator"] = o.quantity.comparator
        extra.append({"name": "value", "valueQuantity": quantity})
    elif o.value_text:
        extra.append({"name": "value", "valueString": _short(o.value_text)})
    elif o.value_bool is not None:
        extra.append({"name": "value", "valueBoolean": o.value_bool})
    ends = {
        end: _simple(q)
        for end, q in (("low", o.ref_low), ("high", o.ref_high))
        if q is not None and plausible_number(q.value)
    }
    if ends:
        extra.append({"name": "referenceRange", "valueRange": ends})
    return _summary(
        "Observation",
        o.text,
        o.when,
        o.when_latest,
        "effective",
        tuple(extra),
        any(p["name"] == "value" for p in extra),
    )


def _simple(q: Quantity) -> Json:
    quantity: Json = {"value": _number(q.value)}
    if q.unit.strip():
        quantity["unit"] = q.unit.strip()
    return quantity


def _status(code: str | None) -> tuple[Json, ...]:
    return ({"name": "status", "valueCode": code},) if code and _CODE.fullmatch(code) else ()


def _label(text: str, displays: tuple[str, ...]) -> str:
    return text or next(iter(displays), "")


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _LONGEST else text[: _LONGEST - 1] + "…"


def _partial(first: date, last: date | None) -> str:
    """The date as the record wrote it: a month or a year when that is all it said."""
    if last is None or last == first or first.day != 1 or last.year != first.year:
        return first.isoformat()
    if (first.month, last.month, last.day) == (1, 12, 31):
        return f"{first.year:04d}"
    if last.month == first.month and last.day == monthrange(last.year, last.month)[1]:
        return f"{first.year:04d}-{first.month:02d}"
    return first.isoformat()
