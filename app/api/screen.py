"""``$screen``: one patient's record screened against one trial or every trial."""

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.access.inbound import Principal, confine
from app.api.common import (
    FHIR_JSON,
    CatalogDep,
    FhirResponse,
    Screener,
    SettingsDep,
    read_screen_body,
    trial_named,
)
from app.api.screen_request import parse_screen_request
from app.catalog.loader import Catalog
from app.core import limits
from app.core.base_url import public_base
from app.core.errors import InvalidInput, TrialscreenError
from app.core.settings import Settings, zone_of
from app.ehr.record_source import RecordSource
from app.screening.jobs import JobResult, completed, read_posted, screen_received, screen_record
from app.screening.pool import ScreenPool, WorkerEnv
from app.screening.spool import Body, Spool, body_bytes
from app.store import audit
from app.store.database import Store

router = APIRouter(prefix="/fhir")

_FHIR_OBJECT = {"type": "object", "additionalProperties": True}
_OUTCOME = {"description": "OperationOutcome saying what is wrong", "content": {FHIR_JSON: {}}}
_SCREEN_BODY = (
    "FHIR Parameters: 'bundle' (resource: the patient's record as a Bundle, exactly one "
    "Patient) or 'patient' (valueReference Patient/{id} or valueString id: fetched from the "
    "EHR), optional 'asOf' (valueDate, default today)"
)
_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "return=representation (default: the result), return=minimal (empty body; "
    "Content-Location names the stored GuidanceResponse) or return=OperationOutcome",
    "schema": {"type": "string"},
}
SCREEN_OPENAPI: dict[str, Any] = {
    "parameters": [_PREFER],
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
        "503": _OUTCOME,
        "502": _OUTCOME,
        "415": _OUTCOME,
        "422": _OUTCOME,
    },
}


def screen_posted(
    env: WorkerEnv,
    received: Body,
    study_id: str | None,
    today: date,
    now: datetime,
    requested_by: str,
    evaluate_now: bool,
) -> JobResult:
    """Runs in a screening worker: count the body's resources (413 above the limit, before it
    is parsed), parse it, read the record, and (unless the terminology server must see the
    record first) evaluate it against each trial."""
    catalog = env.catalog
    body = body_bytes(received)
    # Counted here, not on the event loop: a scan of a large body holds the GIL for milliseconds.
    limits.resource_count(body, env.settings.max_resources)
    parsed = parse_screen_request(body)
    if study_id is not None and parsed.studies:
        raise InvalidInput("'study' belongs to the all-trials $screen, not to one study's.")
    names = [study_id] if study_id else list(dict.fromkeys(parsed.studies)) or list(catalog.trials)
    ids = [trial_named(catalog, name).id for name in names]
    as_of = parsed.as_of or today
    if parsed.bundle is None:
        return JobResult(ids, as_of, patient_id=parsed.patient_id)
    fetched = read_posted(env, parsed.bundle, body)
    return screen_record(env, fetched, ids, as_of, now, requested_by, evaluate_now)


async def _screen(
    study_id: str | None, body: bytes | Spool, settings: Settings, request: Request, who: Principal
) -> list[Any]:
    """One GuidanceResponse per trial (one study, else every trial or those named by 'study'),
    from one reading (or one fetch) of the record; each is stored, and the screening audited,
    before it is returned. Reading and evaluating run in the screening pool."""
    catalog: Catalog = request.app.state.catalog
    pool: ScreenPool = request.app.state.screen_pool
    terminology = getattr(request.app.state, "terminology", None)
    patient = None
    try:
        now = datetime.now(UTC)
        today = now.astimezone(zone_of(settings)).date()
        posted = await pool.run(
            screen_posted, body, study_id, today, now, who.client_id, terminology is None
        )
        if posted.fetched is None:
            assert posted.patient_id is not None  # parse_screen_request: bundle or patient
            patient = f"Patient/{posted.patient_id}"
            confine(who, patient)  # before anything is fetched
            source: RecordSource = request.app.state.record_source
            received = await source.receive(posted.patient_id, posted.as_of)
            posted = await pool.run(
                screen_received,
                received,
                posted.trials,
                posted.as_of,
                now,
                who.client_id,
                terminology is None,
            )
        assert posted.fetched is not None
        patient = posted.fetched.record.patient.ref or patient
        if patient:  # stored and indexed: bounded, no control characters
            limits.text_value(patient, "the Patient's id or fullUrl", limits.MAX_REFERENCE)
        confine(who, patient)
        screenings = await completed(pool, catalog, terminology, posted, now, who.client_id)
        for s in screenings:  # kept once, never updated: version 1 for good
            s.guidance["meta"] = {
                "versionId": "1",
                "lastUpdated": now.isoformat(timespec="milliseconds"),
            }
        screenings = [replace(s, tenant=who.tenant) for s in screenings]  # the caller's tenant
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
    "parameters": [_PREFER],
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
) -> Response:
    """Screen one patient's record (a Bundle in a Parameters) against one trial; answer with a
    GuidanceResponse."""
    trial_named(catalog, study_id)  # an unknown trial is a 404 before the body is read
    body = await read_screen_body(request, settings.max_body_bytes, _spools(request))
    (response,) = await _screen(study_id, body, settings, request, who)
    return _answer(request, settings, [response], response)


@router.post(
    "/ResearchStudy/$screen",
    response_class=FhirResponse,
    openapi_extra=SCREEN_ALL_OPENAPI,
)
async def screen_all(
    request: Request, settings: SettingsDep, catalog: CatalogDep, who: Screener
) -> Response:
    """Screen one patient's record against every trial (or those named by 'study' parameters);
    answer with a collection Bundle of GuidanceResponses, one per trial."""
    body = await read_screen_body(request, settings.max_body_bytes, _spools(request))
    responses = await _screen(None, body, settings, request, who)
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in responses],
    }
    return _answer(request, settings, responses, bundle)


def _spools(request: Request) -> bool:
    pool: ScreenPool = request.app.state.screen_pool
    return pool.spools


def _answer(
    request: Request, settings: Settings, stored: list[Any], representation: dict[str, Any]
) -> Response:
    """The answer as ``Prefer: return=`` asks: the resource (default), nothing but the stored
    screenings' locations (minimal), or an OperationOutcome naming them."""
    wanted = _preferred_return(request.headers.get("prefer", ""))
    reports = [f"{public_base(request, settings)}/fhir/GuidanceResponse/{r['id']}" for r in stored]
    headers = {"Content-Location": reports[0]} if len(reports) == 1 else {}
    if wanted == "minimal":
        headers["Preference-Applied"] = "return=minimal"
        return Response(status_code=200, headers=headers)
    if wanted == "OperationOutcome":
        headers["Preference-Applied"] = "return=OperationOutcome"
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"Screened and kept as {url}.",
                }
                for url in reports
            ],
        }
        return FhirResponse(outcome, headers=headers)
    return FhirResponse(representation, headers=headers)


def _preferred_return(prefer: str) -> str:
    for part in prefer.split(","):
        for item in part.split(";"):
            key, _, value = item.strip().partition("=")
            if key.strip().lower() == "return":
                return value.strip().strip('"')
    return "representation"
