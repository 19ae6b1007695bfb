"""Which searches fetch a patient's record, derived from the loaded criteria.

Only searches US Core guarantees and Epic and Oracle accept: Observation by patient + code (with
date bounds), and Condition, MedicationRequest (with intent and
``_include=MedicationRequest:medication``), Immunization, Procedure, AllergyIntolerance by patient.
Codes are filtered locally where a server cannot search by them (Oracle has no code search on
Condition). All searches go out at once: one round trip, plus paging.
"""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

from app.catalog.mappings import Mappings
from app.catalog.schema import (
    Check,
    ConditionCheck,
    Duration,
    GroupCheck,
    ImmunizationCheck,
    ProcedureCheck,
)
from app.catalog.trial import LoadedTrial
from app.engine.sources import MEDICATIONS, analytes_of, source_of


@dataclass(frozen=True, slots=True)
class Search:
    key: str
    """Stable name (also the CDS Hooks prefetch key)."""
    resource_type: str
    params: dict[str, str]
    source: str
    """The part of the record it feeds (a resource type, or MEDICATIONS)."""

    def query(self) -> str:
        """As a relative FHIR search URL, unencoded (the form of a CDS Hooks prefetch template).
        Without ``_include``: CDS Hooks 2.0 does not list it among the query capabilities a CDS
        client should support in prefetch templates, so a prefetched MedicationRequest may come
        without its Medication (kept if the EHR adds it; otherwise the drug is unknown)."""
        params = {k: v for k, v in self.params.items() if k != "_include"}
        return f"{self.resource_type}?" + "&".join(f"{k}={v}" for k, v in params.items())

    @property
    def included_types(self) -> tuple[str, ...]:
        """Resource types the search brings besides its matches (``_include``)."""
        return ("Medication",) if "_include" in self.params else ()


@dataclass(frozen=True, slots=True)
class FetchPlan:
    observation_codes: tuple[tuple[str, str], ...]
    observation_lookback: tuple[Duration, ...]
    """Every window a measurement check uses; the search reaches back to the longest."""
    resource_types: tuple[str, ...]
    medication_types: tuple[str, ...]
    codes_per_search: int
    history_code_sets: tuple[tuple[str, tuple[str, ...] | None], ...] = ()
    """Per history resource type: the code sets (``codes`` and ``except_codes``) of every check
    reading it, or None when some check reads it otherwise than by code set (allergies)."""

    def searches(self, patient_id: str, as_of: date | None) -> list[Search]:
        """The searches for one patient; Observations from the longest window before ``as_of``
        (no date bound when ``as_of`` is None: CDS Hooks prefetch has no relative dates)."""
        out: list[Search] = []
        if self.observation_codes:
            codes = [f"{s}|{c}" for s, c in self.observation_codes]
            for n, i in enumerate(range(0, len(codes), self.codes_per_search), start=1):
                params = {
                    "patient": patient_id,
                    "code": ",".join(codes[i : i + self.codes_per_search]),
                }
                if as_of is not None:
                    since = min(d.before(as_of) for d in self.observation_lookback)
                    params["date"] = f"ge{since.isoformat()}"
                out.append(Search(f"observations-{n}", "Observation", params, "Observation"))
        for resource_type in self.resource_types:
            key = _key(resource_type)
            out.append(Search(key, resource_type, {"patient": patient_id}, resource_type))
        for resource_type in self.medication_types:
            params = {"patient": patient_id}
            if resource_type == "MedicationRequest":
                params["intent"] = "order,plan"  # US Core: MedicationRequest needs intent
            # The Medication a medicationReference points to (US Core servers support
            # MedicationRequest:medication), so that the product and strength are those a
            # posted Bundle would carry; without it the drug is unknown, not absent.
            params["_include"] = f"{resource_type}:medication"
            out.append(Search(_key(resource_type), resource_type, params, MEDICATIONS))
        return out


def plan_for(
    trials: list[LoadedTrial],
    mappings: Mappings,
    medication_types: tuple[str, ...],
    codes_per_search: int,
) -> FetchPlan:
    codes: dict[tuple[str, str], None] = {}
    lookback: list[Duration] = []
    types: dict[str, None] = {}
    history: dict[str, dict[str, None] | None] = {}
    needs_medications = False
    for trial in trials:
        for check in (c for criterion in trial.spec.criteria for c in _walk(criterion.checks)):
            analytes = analytes_of(check)
            if analytes:
                lookback.append(getattr(check, "within", None) or trial.spec.screening_window)
                for name in analytes:
                    analyte = mappings.analytes[name]
                    codes.update(dict.fromkeys(sorted(analyte.codes)))
                    codes.update(dict.fromkeys(analyte.panel_codes))
            source = source_of(check)
            if source == MEDICATIONS:
                needs_medications = True
            elif source not in {None, "Patient", "Observation"}:
                types[str(source)] = None
                names = history.setdefault(str(source), {})
                if isinstance(check, ConditionCheck | ProcedureCheck | ImmunizationCheck):
                    if names is not None:
                        names.update(dict.fromkeys((*check.codes, *_except_codes(check))))
                else:
                    history[str(source)] = None
    return FetchPlan(
        observation_codes=tuple(codes),
        observation_lookback=tuple(lookback),
        resource_types=tuple(types),
        medication_types=medication_types if needs_medications else (),
        codes_per_search=codes_per_search,
        history_code_sets=tuple(
            (kind, None if names is None else tuple(names)) for kind, names in history.items()
        ),
    )


def _except_codes(check: ConditionCheck | ProcedureCheck | ImmunizationCheck) -> tuple[str, ...]:
    return getattr(check, "except_codes", ())


def _key(resource_type: str) -> str:
    """MedicationRequest -> medication-requests."""
    words = "".join(f"-{c.lower()}" if c.isupper() else c for c in resource_type).strip("-")
    return f"{words}s"


def _walk(checks: tuple[Check, ...]) -> Iterator[Check]:
    for check in checks:
        yield check
        if isinstance(check, GroupCheck):
            yield from _walk(check.checks)
