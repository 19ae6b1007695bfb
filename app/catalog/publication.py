"""What the service publishes about itself and its trials.

ResearchStudy, PlanDefinition (the criteria, one action per criterion), ValueSet (each code set),
CodeSystem (SLE activity scores), OperationDefinition (``$screen``, ``$prescreen``) and
CapabilityStatement.
"""

from collections.abc import Iterable, Iterator
from html import escape
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
        "text": plan_narrative(trial),
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
                "codeFilter": [{"path": path, "valueSet": value_set_url(base, name)}],
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
        "id": value_set_id(code_set.name),
        "url": value_set_url(base, code_set.name),
        "name": value_set_name(code_set.name),
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


def capability_statement(
    base: str,
    software_version: str,
    date: str,
    *,
    url: str,
    resources: list[Json],
    security: Json,
) -> Json:
    """What the server at ``url`` (the FHIR base the client used) serves: ``resources`` (each
    with its interactions, search parameters and operations) under ``security``."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "trialscreen",
        "kind": "instance",
        "software": {"name": "trialscreen", "version": software_version},
        "implementation": {"description": "Clinical-trial eligibility screening", "url": url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "JSON only (XML is answered 406). Reads carry ETag and "
                "Last-Modified and honour If-None-Match and If-Modified-Since; HEAD is served "
                "wherever GET is. Unknown search parameters are ignored (and named in an "
                "OperationOutcome entry) unless Prefer: handling=strict.",
                "security": security,
                "resource": resources,
                "operation": [
                    {"name": "screen", "definition": f"{base}/OperationDefinition/{SCREEN_ID}"}
                ],
            }
        ],
    }


SCREEN_ID = "ResearchStudy-screen"


PRESCREEN_ID = "ResearchStudy-prescreen"


def _parameter(name: str, use: str, low: int, high: str, kind: str, doc: str, **more: Any) -> Json:
    return {
        "name": name,
        "use": use,
        "min": low,
        "max": high,
        "documentation": doc,
        "type": kind,
        **more,
    }


_STUDY = _parameter(
    "study",
    "in",
    0,
    "*",
    "string",
    "Type level only: a ResearchStudy id to screen against (repeat for several; "
    "default every trial).",
)


def _operation(
    base: str, id_: str, name: str, title: str, code: str, description: str, parameters: list[Json]
) -> Json:
    """An operation on ResearchStudy at type level (every trial, or those named by 'study')
    and instance level (one trial); it keeps what it does and audits it, so it affects state."""
    return {
        "resourceType": "OperationDefinition",
        "id": id_,
        "url": f"{base}/OperationDefinition/{id_}",
        "version": "1.0.0",
        "name": name,
        "title": title,
        "status": "active",
        "kind": "operation",
        "affectsState": True,
        "description": description,
        "code": code,
        "resource": ["ResearchStudy"],
        "system": False,
        "type": True,
        "instance": True,
        "parameter": parameters,
    }


def screen_operation_definition(base: str) -> Json:
    """``$screen`` on ResearchStudy."""
    return _operation(
        base,
        SCREEN_ID,
        "ScreenResearchStudy",
        "Screen a patient against clinical-trial eligibility criteria",
        "screen",
        "Evaluates one patient's record against the eligibility criteria of one "
        "trial (instance level: POST ResearchStudy/{id}/$screen) or of every trial (type "
        "level: POST ResearchStudy/$screen). Each screening is kept and audited, so the "
        "operation changes state and is called with POST only. Give the record either as "
        "'bundle' or as 'patient' (then it is read from the EHR).",
        [
            _parameter(
                "bundle",
                "in",
                0,
                "1",
                "Bundle",
                "The patient's record: a Bundle holding exactly one Patient and the resources "
                "to screen. Either bundle or patient, not both.",
            ),
            _parameter(
                "patient",
                "in",
                0,
                "1",
                "Reference",
                "The patient to fetch from the EHR: valueReference Patient/{id} (a valueString "
                "holding the id is accepted too). Either bundle or patient, not both.",
                targetProfile=["http://hl7.org/fhir/StructureDefinition/Patient"],
            ),
            _parameter(
                "asOf",
                "in",
                0,
                "1",
                "date",
                "The date to screen as of (default: today in the service's time zone). Data "
                "dated after it is ignored.",
            ),
            _STUDY,
            _parameter(
                "return",
                "out",
                1,
                "1",
                "Resource",
                "Instance level: the GuidanceResponse (per-criterion results in its contained "
                "Parameters 'result'). Type level: a collection Bundle with one GuidanceResponse "
                "per trial. With Prefer: return=minimal the body is empty (Content-Location "
                "names the GuidanceResponse); with Prefer: return=OperationOutcome it is an "
                "OperationOutcome naming what was stored.",
            ),
        ],
    )


def prescreen_operation_definition(base: str) -> Json:
    """``$prescreen`` on ResearchStudy; asynchronous only."""
    return _operation(
        base,
        PRESCREEN_ID,
        "PrescreenResearchStudy",
        "Pre-screen a population against clinical-trial eligibility criteria",
        "prescreen",
        "Screens every patient of a population (the bundled demo cohort, a "
        "folder of FHIR Bulk Data NDJSON under a configured root, or the configured EHR's "
        "Bulk Data export of a Group or of every Patient) against one trial (instance level) "
        "or every trial (type level), with the same engine as $screen. Asynchronous only "
        "(Prefer: respond-async): the answer is 202 with Content-Location, the run's status "
        "URL; polling it gives 202 with X-Progress, then 200 with a Parameters naming the "
        "outputs (a Group of candidates per trial, the attrition funnel, the ranked candidate "
        "list, the GuidanceResponses as NDJSON). DELETE on the status URL cancels.",
        [
            _parameter(
                "source",
                "in",
                1,
                "1",
                "string",
                "demo, an absolute folder path under a configured population root, or the "
                "configured EHR's [base]/Group/{id} or [base]/Patient.",
            ),
            _parameter("asOf", "in", 0, "1", "date", "The date to screen as of (default: today)."),
            _STUDY,
            _parameter(
                "return",
                "out",
                1,
                "1",
                "Parameters",
                "At the status URL once the run is done: run, status, asOf, patients, the "
                "outputs' URLs (screenings, candidates, funnel, funnelParameters, errors) and "
                "per trial its Group and outcome counts.",
            ),
        ],
    )


def value_set_id(code_set: str) -> str:
    """The ValueSet's id, and the last segment of its url (FHIR ids have no underscores)."""
    return code_set.replace("_", "-")


def value_set_url(base: str, code_set: str) -> str:
    return f"{base}/ValueSet/{value_set_id(code_set)}"


def value_set_name(code_set: str) -> str:
    """A computer-friendly name as vsd-0 asks: ``[A-Z]([A-Za-z0-9_]){0,254}``."""
    name = "".join(word[:1].upper() + word[1:] for word in code_set.split("_") if word)
    return name if name[:1].isalpha() else f"ValueSet{name}"


def plan_narrative(trial: LoadedTrial) -> Json:
    """A generated XHTML summary of the criteria, for people reading the PlanDefinition."""
    spec = trial.spec
    rows = "".join(
        f"<tr><td>{escape(c.id)}</td><td>{escape(c.kind)}</td><td>{escape(c.text)}</td></tr>"
        for c in spec.criteria
    )
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p><b>{escape(spec.acronym)} '
        f"({escape(spec.id)}) eligibility criteria</b>, version {escape(spec.version)}.</p>"
        f"<table><tr><th>Criterion</th><th>Kind</th><th>Text</th></tr>{rows}</table></div>",
    }
