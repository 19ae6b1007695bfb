"""The FHIR REST surface: ``$screen`` and the published resources."""

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app import audit, publication
from app.bundle_reader import read_bundle
from app.catalog import Catalog
from app.engine import LoadedTrial, evaluate
from app.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    TrialscreenError,
    UnsupportedMediaType,
)
from app.inbound_auth import Principal, require
from app.record_source import FetchedRecord, RecordSource
from app.screen_request import parse_screen_request
from app.screening import describe
from app.settings import Settings, get_settings, zone_of
from app.storage import Store, record_digest

FHIR_JSON = "application/fhir+json"
_ACCEPTED_TYPES = {"application/fhir+json", "application/json"}

router = APIRouter(prefix="/fhir")


def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
Screener = Annotated[Principal, Depends(require("GuidanceResponse", "create"))]
Reader = Annotated[Principal, Depends(require("GuidanceResponse", "read"))]
Auditor = Annotated[Principal, Depends(require("AuditEvent", "read"))]


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing anything over ``limit`` bytes before it is all read."""
    content_type = request.headers.get("content-type", FHIR_JSON).split(";")[0].strip().lower()
    if content_type not in _ACCEPTED_TYPES:
        raise UnsupportedMediaType(
            f"Send the Parameters as application/fhir+json (got {content_type!r})."
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _trial(catalog: Catalog, study_id: str) -> LoadedTrial:
    trial = catalog.get(study_id)
    if trial is None:
        known = ", ".join(sorted(catalog.trials))
        raise NotFound(f"No trial {study_id!r} is screened here (known: {known}).")
    return trial


_FHIR_OBJECT = {"type": "object", "additionalProperties": True}
_OUTCOME = {"description": "OperationOutcome saying what is wrong", "content": {FHIR_JSON: {}}}
_SCREEN_BODY = (
    "FHIR Parameters: 'bundle' (resource: the patient's record as a Bundle, exactly one "
    "Patient) or 'patient' (valueReference Patient/{id} or valueString id: fetched from the "
    "EHR), optional 'asOf' (valueDate, default today)"
)
SCREEN_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": _SCREEN_BODY + ".",
        "content": {
            FHIR_JSON: {"schema": _FHIR_OBJECT},
            "application/json": {"schema": _FHIR_OBJECT},
        },
    },
    "responses": {
        "200": {
            "description": "GuidanceResponse; per-criterion results in the contained Parameters",
            "content": {FHIR_JSON: {"schema": _FHIR_OBJECT}},
        },
        "400": _OUTCOME,
        "404": _OUTCOME,
        "413": _OUTCOME,
        "502": _OUTCOME,
        "415": _OUTCOME,
        "422": _OUTCOME,
    },
}


async def _screen(
    study_id: str | None, body: bytes, settings: Settings, request: Request, who: Principal
) -> list[Any]:
    """One GuidanceResponse per trial (one study, else every trial or those named by 'study'),
    from one reading (or one fetch) of the record; each is stored, and the screening audited,
    before it is returned."""
    catalog: Catalog = request.app.state.catalog
    patient = None
    try:
        parsed = parse_screen_request(body)
        if study_id is not None and parsed.studies:
            raise InvalidInput("'study' belongs to the all-trials $screen, not to one study's.")
        names = [study_id] if study_id else list(dict.fromkeys(parsed.studies)) or catalog.trials
        trials = [_trial(catalog, name) for name in names]
        now = datetime.now(UTC)
        as_of = parsed.as_of or now.astimezone(zone_of(settings)).date()
        if parsed.bundle is not None:
            fetched = FetchedRecord(read_bundle(parsed.bundle), digest=record_digest(parsed.bundle))
        else:
            assert parsed.patient_id is not None  # parse_screen_request: bundle or patient
            patient = f"Patient/{parsed.patient_id}"
            source: RecordSource = request.app.state.record_source
            fetched = await source.fetch(parsed.patient_id, as_of)
        patient = fetched.record.patient.ref or patient
        screenings = [
            describe(evaluate(trial, fetched.record, as_of), fetched, settings, now, who.client_id)
            for trial in trials
        ]
        done = audit.event(
            action="E",
            interaction="screen",
            outcome="0",
            agent=who.client_id,
            description=f"screened against {len(screenings)} trial(s)",
            patient_ref=patient,
            entities=tuple(f"GuidanceResponse/{s.guidance['id']}" for s in screenings),
        )
        store: Store = request.app.state.store
        await asyncio.to_thread(store.save, screenings, done)
    except TrialscreenError as exc:
        await audit.record(
            request,
            action="E",
            interaction="screen",
            outcome="4",
            agent=who.client_id,
            description=f"screening refused: {exc.status_code}",
            patient_ref=patient,
        )
        raise
    return [s.guidance for s in screenings]


SCREEN_ALL_OPENAPI: dict[str, Any] = {
    "requestBody": {
        **SCREEN_OPENAPI["requestBody"],
        "description": _SCREEN_BODY + ", and 'study' (valueString, repeating) to restrict the "
        "trials.",
    },
    "responses": {
        **SCREEN_OPENAPI["responses"],
        "200": {
            "description": "collection Bundle: one GuidanceResponse per trial",
            "content": {FHIR_JSON: {"schema": _FHIR_OBJECT}},
        },
    },
}


@router.post(
    "/ResearchStudy/{study_id}/$screen",
    response_class=FhirResponse,
    openapi_extra=SCREEN_OPENAPI,
)
async def screen(
    study_id: str, request: Request, settings: SettingsDep, catalog: CatalogDep, who: Screener
) -> FhirResponse:
    """Screen one patient's record (a Bundle in a Parameters) against one trial; answer with a
    GuidanceResponse."""
    _trial(catalog, study_id)  # an unknown trial is a 404 before the body is read
    body = await read_body(request, settings.max_body_bytes)
    (response,) = await _screen(study_id, body, settings, request, who)
    return FhirResponse(response)


@router.post(
    "/ResearchStudy/$screen",
    response_class=FhirResponse,
    openapi_extra=SCREEN_ALL_OPENAPI,
)
async def screen_all(
    request: Request, settings: SettingsDep, catalog: CatalogDep, who: Screener
) -> FhirResponse:
    """Screen one patient's record against every trial (or those named by 'study' parameters);
    answer with a collection Bundle of GuidanceResponses, one per trial."""
    body = await read_body(request, settings.max_body_bytes)
    responses = await _screen(None, body, settings, request, who)
    return FhirResponse(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in responses],
        }
    )


@router.get("/ResearchStudy", response_class=FhirResponse)
async def list_studies(settings: SettingsDep, catalog: CatalogDep) -> FhirResponse:
    studies = [
        publication.research_study(t, settings.canonical_base) for t in catalog.trials.values()
    ]
    return FhirResponse(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(studies),
            "entry": [
                {"fullUrl": f"ResearchStudy/{s['id']}", "resource": s, "search": {"mode": "match"}}
                for s in studies
            ],
        }
    )


@router.get("/ResearchStudy/{study_id}", response_class=FhirResponse)
async def read_study(study_id: str, settings: SettingsDep, catalog: CatalogDep) -> FhirResponse:
    return FhirResponse(
        publication.research_study(_trial(catalog, study_id), settings.canonical_base)
    )


@router.get("/PlanDefinition/{plan_id}", response_class=FhirResponse)
async def read_plan(plan_id: str, settings: SettingsDep, catalog: CatalogDep) -> FhirResponse:
    return FhirResponse(
        publication.plan_definition(_trial(catalog, plan_id), settings.canonical_base)
    )


@router.get("/ValueSet/{name}", response_class=FhirResponse)
async def read_value_set(name: str, settings: SettingsDep, catalog: CatalogDep) -> FhirResponse:
    code_set = catalog.mappings.code_sets.get(name.replace("-", "_"))
    if code_set is None:
        raise NotFound(f"No value set {name!r}.")
    return FhirResponse(publication.value_set(code_set, catalog.mappings, settings.canonical_base))


@router.get("/CodeSystem/sle-activity", response_class=FhirResponse)
async def read_sle_activity(settings: SettingsDep) -> FhirResponse:
    return FhirResponse(publication.sle_activity_code_system(settings.canonical_base))


@router.get("/metadata", response_class=FhirResponse)
async def metadata(request: Request, settings: SettingsDep) -> FhirResponse:
    return FhirResponse(
        publication.capability_statement(
            settings.canonical_base, request.app.version, request.app.state.started
        )
    )
