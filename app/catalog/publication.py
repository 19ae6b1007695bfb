"""What the service publishes about itself and its trials.

ResearchStudy, PlanDefinition (the criteria, one action per criterion), ValueSet (each code set),
CodeSystem (SLE activity scores) and CapabilityStatement.
"""

from collections.abc import Iterable, Iterator
from typing import Any

from app.catalog.mappings import CodeRow, CodeSet, Mappings, ValueSet
from app.catalog.schema import (
    AllergyCheck,
    Check,
    ConditionCheck,
    CreatinineClearanceCheck,
    Criterion,
    GroupCheck,
    ImmunizationCheck,
    LabFindingCheck,
    MeasurementCheck,
    MedicationCheck,
    PrednisoneDoseCheck,
    ProcedureCheck,
)
from app.catalog.trial import LoadedTrial

Json = dict[str, Any]
SLE_ACTIVITY_CONCEPTS = (
    (
        "sledai-2k",
        "SLEDAI-2K total score",
        "Systemic Lupus Erythematosus Disease Activity Index 2000, total of the 24 weighted "
        "descriptors (0-105); Observation.valueInteger.",
    ),
    (
        "sledai-2k-clinical",
        "SLEDAI-2K clinical score",
        "SLEDAI-2K total without the low-complement and increased-DNA-binding items; an "
        "Observation.component of the sledai-2k Observation (valueInteger) or an Observation of "
        "its own.",
    ),
    (
        "pga",
        "Physician Global Assessment of SLE activity",
        "Physician Global Assessment on a 0-3 visual analogue scale; Observation.valueQuantity "
        "with unit {score}.",
    ),
)


def research_study(trial: LoadedTrial, base: str) -> Json:
    spec = trial.spec
    return {
        "resourceType": "ResearchStudy",
        "id": spec.id,
        "identifier": [{"system": "https://clinicaltrials.gov", "value": spec.id}],
        "title": spec.title,
        "protocol": [{"reference": f"PlanDefinition/{spec.id}"}],
        "status": spec.status,
        "condition": [{"text": c} for c in spec.conditions],
        "keyword": [{"text": spec.acronym}],
        "sponsor": {"display": spec.sponsor},
        "description": f"Eligibility criteria encoded from: {spec.source}.",
    }


def plan_definition(trial: LoadedTrial, base: str) -> Json:
    spec = trial.spec
    return {
        "resourceType": "PlanDefinition",
        "id": spec.id,
        "url": f"{base}/PlanDefinition/{spec.id}",
        "identifier": [{"system": "https://clinicaltrials.gov", "value": spec.id}],
        "version": spec.version,
        "name": f"{spec.acronym.replace('-', '')}Eligibility",
        "title": f"{spec.acronym} ({spec.id}) eligibility criteria",
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/plan-definition-type",
                    "code": "eca-rule",
                }
            ]
        },
        "status": "active",
        "description": f"Inclusion and exclusion criteria of {spec.id}, verbatim, with the data "
        f"each needs. Screening window for measurements: {spec.screening_window}.",
        "action": [_criterion_action(c, trial.mappings, base) for c in spec.criteria],
    }


def _criterion_action(criterion: Criterion, m: Mappings, base: str) -> Json:
    action: Json = {
        "prefix": criterion.id,
        "title": f"{criterion.kind.capitalize()} criterion {criterion.id}",
        "description": criterion.text,
        "code": [
            {"coding": [{"system": f"{base}/CodeSystem/criterion-kind", "code": criterion.kind}]}
        ],
        "action": [_check_action(c, m, base) for c in criterion.checks],
    }
    if criterion.review:
        action["textEquivalent"] = "Review: " + "; ".join(criterion.review)
    inputs = [r for c in criterion.checks for r in _requirements(c, m, base)]
    if inputs:
        action["input"] = inputs
    return action


def _check_action(check: Check, m: Mappings, base: str) -> Json:
    action: Json = {"prefix": check.id, "title": check.label}
    if check.review:
        action["textEquivalent"] = "Review: " + "; ".join(check.review)
    if isinstance(check, GroupCheck):
        action["action"] = [_check_action(c, m, base) for c in check.checks]
        action["groupingBehavior"] = "logical-group"
        action["selectionBehavior"] = {"all": "all", "any": "any"}.get(check.check, "all")
    return action


def _requirements(check: Check, m: Mappings, base: str) -> Iterator[Json]:
    if isinstance(check, GroupCheck):
        for child in check.checks:
            yield from _requirements(child, m, base)
    elif isinstance(check, MeasurementCheck | LabFindingCheck):
        names = (check.analyte,) if isinstance(check, MeasurementCheck) else check.analytes
        codes = [
            {"system": m.systems[r.system], "code": r.code, "display": r.display}
            for n in names
            for r in m.analytes[n].rows
        ]
        yield {"type": "Observation", "codeFilter": [{"path": "code", "code": codes}]}
    elif isinstance(check, CreatinineClearanceCheck):
        for name in ("creatinine_clearance_cg", "creatinine", "body_weight"):
            codes = [{"system": m.systems[r.system], "code": r.code} for r in m.analytes[name].rows]
            yield {"type": "Observation", "codeFilter": [{"path": "code", "code": codes}]}
    elif isinstance(check, ConditionCheck | ProcedureCheck | ImmunizationCheck):
        kind = {ConditionCheck: "Condition", ProcedureCheck: "Procedure"}.get(
            type(check), "Immunization"
        )
        path = "vaccineCode" if kind == "Immunization" else "code"
        for name in check.codes:
            yield {
                "type": kind,
                "codeFilter": [{"path": path, "valueSet": f"{base}/ValueSet/{name}"}],
            }
    elif isinstance(check, MedicationCheck | PrednisoneDoseCheck):
        yield {"type": "MedicationRequest"}
    elif isinstance(check, AllergyCheck):
        yield {"type": "AllergyIntolerance"}


def value_set(code_set: CodeSet, m: Mappings, base: str) -> Json:
    """A code set as an R4 ValueSet. ``compose`` says what it is made of: the published value sets
    it includes (by canonical URL; checked-in expansions, fhir_mappings/valuesets/), hand-listed
    exact codes as concepts, ICD-10 prefixes as regex filters, and what it excludes. A set built
    on published value sets also carries its ``expansion``: every enumerable code (the included
    expansions and exact codes, exclusions applied); prefix rows stay filters in ``compose``."""
    compose: Json = {"include": _compose(code_set.rows, code_set.value_sets, m)}
    excluded = _compose(code_set.excluded_rows, code_set.excluded_value_sets, m)
    if excluded:
        compose["exclude"] = excluded
    resource: Json = {
        "resourceType": "ValueSet",
        "id": code_set.name.replace("_", "-"),
        "url": f"{base}/ValueSet/{code_set.name}",
        "name": code_set.name,
        "status": "active",
        "description": code_set.description,
        "compose": compose,
    }
    if code_set.value_sets:
        contains = _expansion(code_set, m)
        resource["expansion"] = {
            # the newest of the published expansions it is built from
            "timestamp": max(vs.spec.expansion_timestamp for vs in code_set.value_sets),
            "total": len(contains),
            "parameter": [
                {"name": "used-valueset", "valueUri": f"{vs.spec.url}|{vs.spec.version}"}
                for vs in code_set.value_sets
            ],
            "contains": contains,
        }
    return resource


def _compose(rows: Iterable[CodeRow], value_sets: Iterable[ValueSet], m: Mappings) -> list[Json]:
    by_system: dict[str, list[Json]] = {}
    filters: list[Json] = []
    for row in rows:
        system = m.systems[row.system]
        if row.match == "prefix":
            filters.append(
                {
                    "system": system,
                    "filter": [
                        {"property": "code", "op": "regex", "value": _regex_prefix(row.code)}
                    ],
                }
            )
        else:
            concept: Json = {"code": row.code}
            if row.display:
                concept["display"] = row.display
            by_system.setdefault(system, []).append(concept)
    sets: list[Json] = [{"valueSet": [vs.spec.url]} for vs in value_sets]
    return sets + [{"system": s, "concept": c} for s, c in by_system.items()] + filters


def _expansion(code_set: CodeSet, m: Mappings) -> list[Json]:
    seen: dict[tuple[str, str], str] = {}
    for vs in code_set.value_sets:
        for system, code, display in vs.codes:
            seen.setdefault((system, code), display)
    for row in code_set.rows:
        if row.match == "exact":
            seen.setdefault((m.systems[row.system], row.code), row.display)
    out = []
    for (system, code), display in sorted(seen.items()):
        if code_set.matcher.matches(system, code):
            entry: Json = {"system": system, "code": code}
            if display:
                entry["display"] = display
            out.append(entry)
    return out


def _regex_prefix(code: str) -> str:
    escaped = "".join(f"\\{ch}" if ch in ".^$*+?()[]{}|\\" else ch for ch in code)
    return f"{escaped}.*"


def sle_activity_code_system(base: str) -> Json:
    return {
        "resourceType": "CodeSystem",
        "id": "sle-activity",
        "url": f"{base}/CodeSystem/sle-activity",
        "version": "1.0.0",
        "name": "SleActivity",
        "title": "SLE disease activity instruments",
        "status": "active",
        "description": "Codes for SLE activity scores that have no LOINC code (none was found "
        "for SLEDAI-2K or the SLE Physician Global Assessment). Send each as an Observation "
        "with category survey.",
        "caseSensitive": True,
        "content": "complete",
        "concept": [
            {"code": code, "display": display, "definition": definition}
            for code, display, definition in SLE_ACTIVITY_CONCEPTS
        ],
    }


def capability_statement(base: str, software_version: str, date: str) -> Json:
    read = [{"code": "read"}]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "kind": "instance",
        "software": {"name": "trialscreen", "version": software_version},
        "implementation": {"description": "Clinical-trial eligibility screening"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": "ResearchStudy",
                        "interaction": [*read, {"code": "search-type"}],
                        "operation": [
                            {
                                "name": "screen",
                                "definition": f"{base}/OperationDefinition/ResearchStudy-screen",
                            }
                        ],
                    },
                    {"type": "PlanDefinition", "interaction": read},
                    {"type": "ValueSet", "interaction": read},
                    {"type": "CodeSystem", "interaction": read},
                ],
            }
        ],
    }
