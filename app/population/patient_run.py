"""One patient of a population run: their FHIR resources screened against each trial exactly as
``POST /fhir/ResearchStudy/{id}/$screen`` screens a Bundle of the same resources (the same
reader, ``evaluate`` and GuidanceResponse writer, ``app.screening.issued.describe``). Pure apart
from the report's id and time: both population engines (DuckDB, Spark) call it per patient."""

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

from app.catalog.trial import LoadedTrial
from app.core.errors import TrialscreenError
from app.core.settings import Settings, get_settings
from app.ehr.fetch_plan import plan_for
from app.ehr.record_source import FetchedRecord
from app.engine import Eligibility, Result, Screening, Status, evaluate
from app.engine.record import Patient, PatientRecord, Unreadable
from app.engine.sources import MEDICATIONS
from app.fhir_io.bundle_reader import read_bundle, record_digest
from app.fhir_io.report import plausible
from app.population.selection import HistorySelection, history_selections
from app.screening.issued import describe

Json = dict[str, Any]

_MEDICATION_USES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")
TEXT_SAFETY_NET = ("Condition", "Procedure", "AllergyIntolerance")
"""Types whose every resource reaches the engine, coded or not: what codes cannot recognise
(text only, an unknown code) goes to review by its text (issue 10), so none may be left out."""


@dataclass(frozen=True, slots=True)
class PatientResult:
    """One patient's screening against one trial, as a population run keeps it."""

    trial: str
    patient: str
    """``Patient/{id}``."""
    guidance: Json
    """The GuidanceResponse, as ``$screen`` gives it for a Bundle of the same resources."""
    result: str
    """eligible / needs-review / needs-data / ineligible."""
    criteria: dict[str, str]
    """Criterion id -> met / not-met / unknown / not-applicable, in protocol order."""
    data_requests: list[tuple[str, str, str]]
    """(check id, criterion id, what to collect), once each, in protocol order."""
    review: int
    """Number of review items (what only a clinician can judge)."""
    problems: tuple[str, ...] = ()
    """What the run could not read of this patient's data (also in the report's warnings)."""
    prefiltered: str | None = None
    """The check that turned the patient away in the prefilter (``prefilter.py``): then there is
    no full screening (``guidance`` is empty) and ``criteria`` holds the deciding one only."""


def screen_patient(
    trials: Sequence[LoadedTrial],
    resources: list[Json],
    as_of: date,
    *,
    unreadable: Sequence[tuple[str | None, str]] = (),
    settings: Settings | None = None,
    now: datetime | None = None,
) -> list[PatientResult]:
    """Screen one patient's resources (the Patient among them) against each trial.

    ``unreadable``: (record part or None for "any part", problem) of data the run found to be
    this patient's but could not read (an invalid NDJSON line, say): it holds back exactly the
    checks that read that part, as an unreadable resource in a Bundle does. A record that cannot
    be read at all (no Patient, two Patients) gives one ``needs-review`` result per trial whose
    report says why; it is never eligible."""
    settings = settings or get_settings()
    now = now or datetime.now(UTC)
    bundle: Json = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    try:
        record = read_bundle(bundle)
        fetched = FetchedRecord(record, digest=record_digest(bundle))
    except TrialscreenError as exc:
        return [_unscreenable(t, resources, as_of, exc.message, settings, now) for t in trials]
    if unreadable:
        extra = tuple(Unreadable("", source, (), "", problem) for source, problem in unreadable)
        fetched = replace(fetched, record=replace(record, unreadable=record.unreadable + extra))
    out = []
    for trial in trials:
        screening = plausible(evaluate(trial, fetched.record, as_of))
        issued = describe(screening, fetched, settings, now, "population")
        out.append(summarise(screening, issued.guidance))
    return out


def summarise(screening: Screening, guidance: Json) -> PatientResult:
    criteria = {c.result.id: c.result.status.value for c in screening.criteria}
    requests: dict[tuple[str, str, str], None] = {}
    for c in screening.criteria:
        for check, request in _open_requests(c.result):
            requests.setdefault((check, c.criterion.id, request), None)
    review = sum(len(r.review) for c in screening.criteria for r in c.result.walk())
    return PatientResult(
        trial=screening.trial.id,
        patient=screening.patient_ref,
        guidance=guidance,
        result=screening.eligibility.value,
        criteria=criteria,
        data_requests=list(requests),
        review=review,
    )


def _open_requests(result: Result) -> Iterator[tuple[str, str]]:
    """(check id, label) of each request that would settle an unknown result (as
    ``Result.open_requests``, with the check that asks)."""
    if result.status is Status.UNKNOWN:
        for request in result.data_requests:
            yield result.id, request.label
        for child in result.children:
            yield from _open_requests(child)


def _unscreenable(
    trial: LoadedTrial,
    resources: list[Json],
    as_of: date,
    problem: str,
    settings: Settings,
    now: datetime,
) -> PatientResult:
    """A record the reader refuses, screened as an empty record every part of which is
    unreadable: every check that reads data is unknown (never eligible), with the reason in the
    report's warnings."""
    ids = [r.get("id") for r in resources if r.get("resourceType") == "Patient"]
    ref = f"Patient/{ids[0]}" if ids and isinstance(ids[0], str) else ""
    record = PatientRecord(
        patient=Patient(ref, None, None), unreadable=(Unreadable("", None, (), "", problem),)
    )
    fetched = FetchedRecord(record, problems=(problem,))
    screening = plausible(evaluate(trial, record, as_of))
    if screening.eligibility is Eligibility.ELIGIBLE:  # a trial with no data checks at all
        screening = replace(screening, eligibility=Eligibility.NEEDS_REVIEW)
    issued = describe(screening, fetched, settings, now, "population")
    result = summarise(screening, issued.guidance)
    return replace(result, problems=(problem,))


@dataclass(frozen=True, slots=True)
class NeededData:
    """What the loaded criteria read: the resource types a population run loads (and a bulk
    ``$export`` asks for as ``_type``), and the Observation codes among which it selects."""

    resource_types: tuple[str, ...]
    """Patient first; every medication-use type when a criterion reads medications, with
    Medication (what their medicationReference points to)."""
    observation_codes: tuple[tuple[str, str], ...]
    """(system, code) of every Observation a criterion reads (analyte codes and panels)."""
    history: tuple[HistorySelection, ...] = ()
    """History types selected by what their checks know (``selection.py``); every other listed
    type is taken whole (allergies and medications are matched by more than code sets)."""


def needed_data(trials: Iterable[LoadedTrial]) -> NeededData:
    """From the fetch plan the EHR record source uses (app/ehr/fetch_plan.py): one inventory of
    the codes the criteria read, not a second one."""
    trials = list(trials)
    if not trials:
        return NeededData(("Patient",), ())
    plan = plan_for(trials, trials[0].mappings, _MEDICATION_USES, codes_per_search=1000)
    types: dict[str, None] = {"Patient": None}
    if plan.observation_codes:
        types["Observation"] = None
    types.update(dict.fromkeys(plan.resource_types))
    if plan.medication_types:
        types.update(dict.fromkeys(plan.medication_types))
        types["Medication"] = None
    history = history_selections(plan, trials[0].mappings)
    return NeededData(tuple(types), plan.observation_codes, history)


def source_of_type(resource_type: str) -> str:
    """The record part a resource type feeds (medication uses all feed MEDICATIONS)."""
    return MEDICATIONS if resource_type in _MEDICATION_USES else resource_type
