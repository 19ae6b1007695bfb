"""Optional SQL prefilter (``--prefilter``): patients who cannot meet a trial's diagnosis
criterion (its first ``all`` inclusion with a condition check, e.g. SLE) because no record of
theirs mentions the diagnosis are screened on a partial record: the Patient, every Condition and
whatever the criteria up to that one read (KN5501 reads age and weight before SLE), not the rest.

It is sound by construction, not by the SQL alone. The query (a substring search of each
patient's raw Condition lines, and of their unreadable lines, for every code and the longest word
of every term of the diagnosis' code sets) only picks the patients worth trying. For each of
them the engine then evaluates the criteria on that partial record and everything of theirs that
could not be read: each of those criteria reads nothing else, so its answer is the one the whole
record gives. Only when the condition check is ``not-met`` (so its ``all`` inclusion is not met:
ineligible) for every trial of the run is the patient recorded ``ineligible`` without a full
screening, with the results of the criteria up to that one (the funnel turns them away where a
full screening would); any other answer (a text-only "lupus", an unreadable Condition, a code the
search missed) sends them to the full screening. A prefiltered patient has a candidates row and
counts in the funnel's outcomes and attrition, but has no GuidanceResponse in screenings.ndjson,
and the per-criterion counts of later criteria cover the fully screened patients only.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any

from app.catalog.schema import Check, ConditionCheck, GroupCheck
from app.catalog.trial import LoadedTrial
from app.core.errors import TrialscreenError
from app.engine import Status, evaluate
from app.engine.record import Unreadable
from app.engine.sources import MEDICATIONS, source_of
from app.fhir_io.bundle_reader import read_bundle
from app.population.outputs import protocol_order
from app.population.patient_run import PatientResult

Json = dict[str, Any]
_MEDICATION_USES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")


@dataclass(frozen=True, slots=True)
class Prefilter:
    trial: str
    criterion: str
    check: str
    needles: tuple[str, ...]
    """Lower-case strings one of which a Condition line must hold to possibly meet the check."""
    upto: tuple[str, ...]
    """The criteria in protocol order up to and including ``criterion``: all decided exactly
    on the partial record (so the funnel turns the patient away where a full screening would)."""
    types: tuple[str, ...]
    """Resource types those criteria read: the partial record."""


def prefilters(trials: Sequence[LoadedTrial]) -> list[Prefilter] | None:
    """One per trial (its first ``all`` inclusion with a condition check, in protocol order),
    or None when a trial has none (then no patient can be spared the full screening)."""
    out = []
    for trial in trials:
        order = protocol_order(trial)
        at = next(
            (
                i
                for i, c in enumerate(order)
                if c.kind == "inclusion"
                and c.match == "all"
                and any(isinstance(k, ConditionCheck) for k in c.checks)
            ),
            None,
        )
        if at is None:
            return None
        first = order[at]
        check = next(c for c in first.checks if isinstance(c, ConditionCheck))
        types = {"Patient", "Condition"}
        for criterion in order[: at + 1]:
            for leaf in _leaves(criterion.checks):
                source = source_of(leaf)
                if source == MEDICATIONS:
                    types |= {*_MEDICATION_USES, "Medication"}
                elif source is not None:
                    types.add(source)
        m = trial.mappings
        systems = m.systems
        needles: set[str] = set()
        for name in check.codes:
            code_set = m.code_sets[name]
            needles |= {code.lower() for _, code, _ in code_set.entries(systems)}
            for term in code_set.terms.terms:
                words = [w for w in term.replace("-", " ").split() if len(w) >= 3] or [term]
                needles.add(max(words, key=len).lower())
        upto = tuple(c.id for c in order[: at + 1])
        out.append(
            Prefilter(trial.id, first.id, check.id, tuple(sorted(needles)), upto, tuple(types))
        )
    return out


def _leaves(checks: Sequence[Check]) -> Iterator[Check]:
    for check in checks:
        if isinstance(check, GroupCheck):
            yield from _leaves(check.checks)
        else:
            yield check


def needles_of(filters: Sequence[Prefilter]) -> tuple[str, ...]:
    return tuple(sorted({n for f in filters for n in f.needles}))


def turned_away(
    trials: Sequence[LoadedTrial],
    filters: Sequence[Prefilter],
    resources: list[Json],
    unreadable: Sequence[tuple[str | None, str]],
    as_of: date,
) -> list[PatientResult] | None:
    """The patient's results when the engine confirms, on their Patient and Conditions, that
    every trial's first criterion is not met; None otherwise (screen the whole record)."""
    types = {t for f in filters for t in f.types}
    partial = [r for r in resources if r.get("resourceType") in types]
    bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in partial]}
    try:
        record = read_bundle(bundle)
    except TrialscreenError:
        return None
    if unreadable:
        extra = tuple(Unreadable("", part, (), "", problem) for part, problem in unreadable)
        record = replace(record, unreadable=record.unreadable + extra)
    out = []
    by_trial = {f.trial: f for f in filters}
    for trial in trials:
        f = by_trial[trial.id]
        screening = evaluate(trial, record, as_of)
        criterion = next(c for c in screening.criteria if c.criterion.id == f.criterion)
        check = next((r for r in criterion.result.walk() if r.id == f.check), None)
        if check is None or check.status is not Status.NOT_MET:
            return None
        if criterion.result.status is not Status.NOT_MET:
            return None
        out.append(
            PatientResult(
                trial=trial.id,
                patient=record.patient.ref,
                guidance={},
                result="ineligible",
                criteria={
                    c.criterion.id: c.result.status.value
                    for c in screening.criteria
                    if c.criterion.id in f.upto
                },
                data_requests=[],
                review=0,
                prefiltered=f.check,
            )
        )
    return out
