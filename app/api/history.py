"""Kept screenings as FHIR: read one as issued, search a patient's newest first, and the audit
trail for auditors. Every access is itself audited.

A request confined to one patient (a patient/ scope, app/access/inbound.py) reads and searches
that patient's screenings and audit events only; a caller reads only its tenant's screenings
(another tenant's read as absent)."""

import asyncio

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.access.inbound import (
    Principal,
    confine,
    confined_search,
    reaches,
    same_tenant,
    tenant_filter,
)
from app.api.common import Auditor, FhirResponse, Reader, SettingsDep
from app.api.history_search import (
    AUDIT,
    GUIDANCE,
    find_audit_events,
    find_screenings,
    searched_patient,
)
from app.api.search import (
    Search,
    SearchSpec,
    openapi_parameters,
    parse_search,
    reference,
    searchset,
)
from app.api.versioning import conditional_read, with_meta
from app.core import limits
from app.core.base_url import public_base
from app.core.errors import NotFound
from app.store import audit
from app.store.database import Store

router = APIRouter(prefix="/fhir")


@router.get("/GuidanceResponse/{screening_id}", response_class=FhirResponse)
async def read_screening(screening_id: str, request: Request, who: Reader) -> Response:
    """A stored screening, exactly as it was issued (with meta.versionId 1 and lastUpdated
    the moment it was kept, if it was issued without them)."""
    limits.fhir_id(screening_id, "GuidanceResponse.id")
    store: Store = request.app.state.store
    row = await asyncio.to_thread(store.screening, screening_id)
    if row is not None and not same_tenant(who, row.tenant):
        row = None  # another tenant's screening does not exist for this caller
    refused = row is not None and not reaches(who, row.patient_ref)
    await audit.record(
        request,
        action="R",
        interaction="read",
        outcome="0" if row and not refused else "4",
        agent=who.client_id,
        description=(
            "refused: another patient's screening"
            if refused
            else "read a stored screening"
            if row
            else "not found"
        ),
        patient_ref=row.patient_ref if row else None,
        entities=(f"GuidanceResponse/{screening_id}",) if row else (),
    )
    if row is None:
        raise NotFound(f"No screening {screening_id!r} is stored here.")
    confine(who, row.patient_ref)
    return conditional_read(request, with_meta(orjson.loads(row.guidance), "1", row.created))


@router.get(
    "/GuidanceResponse",
    response_class=FhirResponse,
    openapi_extra={"parameters": openapi_parameters(GUIDANCE)},
)
async def search_screenings(request: Request, settings: SettingsDep, who: Reader) -> FhirResponse:
    """A patient's screenings, newest first: patient (or subject), _id, identifier, request,
    status, module (the trial's PlanDefinition canonical, with or without ``|version``)."""
    search = parse_search(request, GUIDANCE)
    confined = _confined(who, search, GUIDANCE, ("patient", "subject"))
    store: Store = request.app.state.store
    total, rows = await asyncio.to_thread(
        find_screenings, store, search, confined, tenant_filter(who)
    )
    await audit.record(
        request,
        action="E",
        interaction="search",
        outcome="0",
        agent=who.client_id,
        description=f"searched screenings: {len(rows)} of {total}",
        patient_ref=confined or searched_patient(search, GUIDANCE),
    )
    found = [orjson.loads(r) for r in rows]
    return FhirResponse(searchset(public_base(request, settings), GUIDANCE, search, found, total))


@router.get(
    "/AuditEvent",
    response_class=FhirResponse,
    openapi_extra={"parameters": openapi_parameters(AUDIT)},
)
async def search_audit(request: Request, settings: SettingsDep, who: Auditor) -> FhirResponse:
    """The audit trail, newest first (auditor scope: system/AuditEvent.read): patient, date,
    type, agent, entity."""
    search = parse_search(request, AUDIT)
    confined = _confined(who, search, AUDIT, ("patient",))
    store: Store = request.app.state.store
    client_system = f"{settings.canonical_base}/client"
    total, rows = await asyncio.to_thread(find_audit_events, store, search, client_system, confined)
    await audit.record(
        request,
        action="E",
        interaction="audit-search",
        outcome="0",
        agent=who.client_id,
        description=f"read {len(rows)} audit event(s)",
        patient_ref=confined or searched_patient(search, AUDIT),
    )
    events = [audit.as_fhir(r, settings.canonical_base) for r in rows]
    return FhirResponse(searchset(public_base(request, settings), AUDIT, search, events, total))


def _confined(
    who: Principal, search: Search, spec: SearchSpec, patient_params: tuple[str, ...]
) -> str | None:
    """Every search value bounded (issue 12's limits); the patient a confined caller's search
    is limited to (its own: naming another patient is 403), or None for an unconfined one."""
    for name, _, value in search.filters:
        limits.text_value(value, name)
    for name in patient_params:
        param = spec.param(name)
        assert param is not None
        for _, alternatives in search.values(name):
            for value in alternatives:
                confined_search(who, reference(value, param))
    return who.confined_to
