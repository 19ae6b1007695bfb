"""``evaluate(trial, record, as_of)``: the pure screening function.

No I/O, no clock: everything it needs is passed in. Data dated after the as-of date is dropped
before any check runs.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from enum import StrEnum
from typing import Any

from app.catalog.schema import (
    AgeCheck,
    AllergyCheck,
    Check,
    ConditionCheck,
    CreatinineClearanceCheck,
    Criterion,
    DistinctDrugsCheck,
    GroupCheck,
    ImmunizationCheck,
    JudgementCheck,
    LabFindingCheck,
    MeasurementCheck,
    MedicationCheck,
    PrednisoneDoseCheck,
    ProcedureCheck,
)
from app.catalog.trial import LoadedTrial
from app.engine import history, measurements, medications
from app.engine.context import Context
from app.engine.record import PatientRecord
from app.engine.results import DataRequest, Result, Status, Value, kleene_all, kleene_any
from app.engine.sources import MEDICATIONS, bears_on, source_of


class Eligibility(StrEnum):
    ELIGIBLE = "eligible"
    INELIGIBLE = "ineligible"
    NEEDS_DATA = "needs-data"
    NEEDS_REVIEW = "needs-review"


@dataclass(frozen=True, slots=True)
class CriterionResult:
    criterion: Criterion
    result: Result


@dataclass(frozen=True, slots=True)
class Screening:
    trial: LoadedTrial
    patient_ref: str
    as_of: date
    criteria: tuple[CriterionResult, ...]
    eligibility: Eligibility

    @property
    def data_requests(self) -> tuple[DataRequest, ...]:
        """What to collect, once each, in criterion order."""
        seen: dict[tuple[str, tuple[Any, ...]], DataRequest] = {}
        for c in self.criteria:
            for req in c.result.open_requests():
                seen.setdefault((req.resource_type, req.codes), req)
        return tuple(seen.values())


def evaluate(trial: LoadedTrial, record: PatientRecord, as_of: date) -> Screening:
    ctx = Context(trial, record.as_of(as_of), as_of)
    results = tuple(CriterionResult(c, _criterion(c, ctx)) for c in trial.spec.criteria)
    return Screening(trial, record.patient.ref, as_of, results, _overall(results))


def _overall(results: tuple[CriterionResult, ...]) -> Eligibility:
    def decisive(c: CriterionResult) -> bool:
        wanted = Status.NOT_MET if c.criterion.kind == "inclusion" else Status.MET
        return c.result.status is wanted

    if any(decisive(c) for c in results):
        return Eligibility.INELIGIBLE
    if any(c.result.lacks_data for c in results):
        return Eligibility.NEEDS_DATA
    if any(
        c.result.status is Status.UNKNOWN or any(r.review for r in c.result.walk()) for c in results
    ):
        return Eligibility.NEEDS_REVIEW
    return Eligibility.ELIGIBLE


def _criterion(criterion: Criterion, ctx: Context) -> Result:
    children = tuple(_check(c, ctx) for c in criterion.checks)
    combined = _combine(criterion.match, children)
    reason = _group_reason(criterion.match, combined, children)
    if combined is Status.NOT_APPLICABLE and criterion.review:
        # What a clinician must judge applies to every patient (KN5501 I8: "Male or Female
        # participants ... contraceptive measures"): the criterion is not void because its
        # computable parts do not apply.
        combined = Status.UNKNOWN
        reason = "Its recorded parts do not apply to this patient; a clinician must still judge: "
        reason += "; ".join(criterion.review) + "."
    return Result(
        criterion.id,
        criterion.text,
        combined,
        reason,
        review=criterion.review,
        children=children,
    )


def _check(check: Check, ctx: Context) -> Result:
    sex = ctx.record.patient.gender
    if check.applies_to is not None and sex in {"female", "male"} and sex != check.applies_to:
        return Result(
            check.id,
            check.label,
            Status.NOT_APPLICABLE,
            f"Applies to {check.applies_to} patients only; the patient is recorded as {sex}.",
            evidence=(ctx.record.patient.ref,),
        )
    source = source_of(check)
    if source is not None and source in ctx.record.incomplete:
        return _unfetched(check, source, ctx.record.incomplete[source])
    if isinstance(check, GroupCheck):
        children = tuple(_check(c, ctx) for c in check.checks)
        status = _combine(check.check, children)
        result = Result(
            check.id,
            check.label,
            status,
            _group_reason(check.check, status, children),
            review=_failing_alternatives(check, status, children),
            children=children,
        )
    else:
        result = _held_back(check, _LEAVES[type(check)](check, ctx), ctx)
    if check.expect == "absent":
        result = _negated(result)
    review = check.review
    if check.applies_to is not None and sex not in {"female", "male"}:
        review += (f"Applies to {check.applies_to} patients only; sex is not recorded.",)
    if review:
        result = _add_review(result, review)
    return result


def _failing_alternatives(
    check: GroupCheck, status: Status, children: tuple[Result, ...]
) -> tuple[str, ...]:
    """For an ``any`` group met by one child: the children that fail, for a clinician to weigh."""
    if not check.review_not_met or status is not Status.MET:
        return ()
    return tuple(
        f"{c.label}: not met ({c.reason}) although {check.label} is met by another test"
        for c in children
        if c.status is Status.NOT_MET
    )


def _unfetched(check: Check, source: str, problem: str) -> Result:
    """Unknown, whatever the partial data says: a missing page could hold the deciding record."""
    request_type = "MedicationRequest" if source == MEDICATIONS else source
    return Result(
        check.id,
        check.label,
        Status.UNKNOWN,
        f"The EHR did not deliver the patient's complete {source} data ({problem}), so this "
        "cannot be decided.",
        review=check.review,
        data_requests=(DataRequest(request_type, (), f"complete {source} data from the EHR"),),
    )


# Coded history only grows: a record that was found stays found whatever else the record holds.
_FOUND_STANDS = (
    ConditionCheck,
    ProcedureCheck,
    ImmunizationCheck,
    AllergyCheck,
    MedicationCheck,
    DistinctDrugsCheck,
)


def _held_back(check: Check, result: Result, ctx: Context) -> Result:
    """Unknown instead of a definite answer that an unreadable resource could overturn: one that
    may be the missing record, a newer measurement, or another dose to add."""
    if result.status not in {Status.MET, Status.NOT_MET}:
        return result
    if result.status is Status.MET and isinstance(check, _FOUND_STANDS):
        return result
    source = source_of(check)
    blocking = [
        u
        for u in ctx.record.unreadable
        if u.source in {None, source} and bears_on(check, u.codes, ctx.mappings)
    ]
    if not blocking:
        return result
    listed = "; ".join(u.describe() for u in blocking[:3])
    more = f" and {len(blocking) - 3} more" if len(blocking) > 3 else ""
    return replace(
        result,
        status=Status.UNKNOWN,
        reason=f"{result.reason} Not decided: the record also holds a resource that could not be "
        f"read and may bear on this: {listed}{more}.",
        evidence=result.evidence + tuple(u.ref for u in blocking if u.ref),
        review=(*result.review, f"{check.label}: check the unreadable resource {listed}{more}"),
    )


_NEGATION = {Status.MET: Status.NOT_MET, Status.NOT_MET: Status.MET}


def _negated(result: Result) -> Result:
    return replace(result, status=_NEGATION.get(result.status, result.status))


def _add_review(result: Result, review: tuple[str, ...]) -> Result:
    return replace(result, review=result.review + review)


def _combine(match: str, children: tuple[Result, ...]) -> Status:
    statuses = [c.status for c in children]
    if match == "any":
        return kleene_any(statuses)
    if match == "all_available":
        known = [c.status for c in children if not c.lacks_data]
        if known:
            return kleene_all(known)
    return kleene_all(statuses)


def _group_reason(match: str, status: Status, children: tuple[Result, ...]) -> str:
    decisive = [c for c in children if c.status is status]
    if status is Status.NOT_APPLICABLE:
        return "Not applicable to this patient."
    summary = " ".join(c.reason if c.children else f"[{c.id}] {c.reason}" for c in decisive)
    if status is Status.MET and match == "all":
        return f"All sub-checks met. {summary}"
    return summary


def _age(check: AgeCheck, ctx: Context) -> Result:
    patient = ctx.record.patient
    ages = patient.age_range_on(ctx.as_of)
    low = check.min if check.min is not None else 0
    bounds = f"{low}-{check.max if check.max is not None else '∞'} years"
    if ages is None:
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            "The record has no birth date.",
            evidence=(patient.ref,),
            data_requests=(DataRequest("Patient", (), "birth date"),),
            threshold=bounds,
        )

    def inside(age: int) -> bool:
        return (check.min is None or age >= check.min) and (check.max is None or age <= check.max)

    youngest, oldest = ages
    if youngest != oldest and inside(youngest) != inside(oldest):
        # A partial birthDate ("1956", "2008-03"): decided only when every possible age agrees.
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            f"The birth date is recorded only as {patient.birth_date} to {patient.birth_latest}: "
            f"on {ctx.as_of} the patient is {youngest} or {oldest}, on both sides of {bounds} "
            "inclusive.",
            evidence=(patient.ref,),
            data_requests=(DataRequest("Patient", (), "exact birth date"),),
            threshold=f"{bounds} inclusive",
        )
    ok = inside(oldest)
    shown = f"{oldest}" if youngest == oldest else f"{youngest}-{oldest}"
    born = (
        f"born {patient.birth_date}"
        if patient.birth_latest is None
        else f"born between {patient.birth_date} and {patient.birth_latest}"
    )
    return Result(
        check.id,
        check.label,
        Status.MET if ok else Status.NOT_MET,
        f"Age {shown} on {ctx.as_of} ({born}) is "
        f"{'within' if ok else 'outside'} {bounds} inclusive.",
        evidence=(patient.ref,),
        values=(Value("age", oldest, "a"),),
        threshold=f"{bounds} inclusive",
    )


def _judgement(check: JudgementCheck, ctx: Context) -> Result:
    return Result(
        check.id, check.label, Status.UNKNOWN, "Only a clinician can judge this criterion."
    )


_LEAVES: dict[type[Any], Callable[[Any, Context], Result]] = {
    AgeCheck: _age,
    JudgementCheck: _judgement,
    ConditionCheck: history.condition,
    ProcedureCheck: history.procedure,
    ImmunizationCheck: history.immunization,
    AllergyCheck: history.allergy,
    MedicationCheck: medications.medication,
    DistinctDrugsCheck: medications.distinct_drugs,
    PrednisoneDoseCheck: medications.prednisone_dose,
    MeasurementCheck: measurements.measurement,
    LabFindingCheck: measurements.lab_finding,
    CreatinineClearanceCheck: measurements.creatinine_clearance,
}
