"""Kept screenings as FHIR: read one as issued, search a patient's newest first, and the audit
trail for auditors. Every access is itself audited."""

import asyncio
from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from app.access.inbound import (
    confine,
    confined_search,
    reaches,
    same_tenant,
    tenant_filter,
)
from app.api.common import FHIR_JSON, Auditor, FhirResponse, Reader, SettingsDep
from app.core import limits
from app.core.errors import InvalidInput, NotFound
from app.core.settings import Settings
from app.store import audit
from app.store.database import Store

router = APIRouter(prefix="/fhir")


@router.get("/GuidanceResponse/{screening_id}", response_class=FhirResponse)
async def read_screening(screening_id: str, request: Request, who: Reader) -> Response:
    """A stored screening, exactly as it was issued."""
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
    return Response(row.guidance, media_type=FHIR_JSON)


@router.get("/GuidanceResponse", response_class=FhirResponse)
async def search_screenings(
    request: Request,
    settings: SettingsDep,
    who: Reader,
    subject: str | None = None,
    module: str | None = None,
    sort: Annotated[str, Query(alias="_sort")] = "-date",
    count: Annotated[int, Query(alias="_count", ge=1, le=100)] = 20,
    offset: Annotated[int, Query(alias="_offset", ge=0, le=1_000_000)] = 0,
) -> FhirResponse:
    """A patient's screenings, newest first: ``subject=Patient/{id}``, optionally
    ``module={PlanDefinition canonical}`` (with or without ``|version``)."""
    if sort != "-date":
        raise InvalidInput("Only _sort=-date (newest first) is supported.", expression="_sort")
    subject = confined_search(who, subject)
    if subject is None or not subject.startswith("Patient/"):
        raise InvalidInput("Search by subject=Patient/{id}.", expression="subject")
    limits.patient_reference(subject, "subject")
    trial_id = None
    if module is not None:
        limits.text_value(module, "module")
        trial_id = module.split("|")[0].rstrip("/").rsplit("/", 1)[-1]
    store: Store = request.app.state.store
    total, rows = await asyncio.to_thread(
        store.screenings_for, subject, trial_id, offset, count, tenant_filter(who)
    )
    await audit.record(
        request,
        action="E",
        interaction="search",
        outcome="0",
        agent=who.client_id,
        description=f"searched screenings: {len(rows)} of {total}",
        patient_ref=subject,
    )
    return FhirResponse(
        _searchset(
            [orjson.loads(r) for r in rows],
            total,
            offset,
            count,
            "GuidanceResponse",
            {"subject": subject, "module": module, "_sort": sort},
            settings,
        )
    )


@router.get("/AuditEvent", response_class=FhirResponse)
async def search_audit(
    request: Request,
    settings: SettingsDep,
    who: Auditor,
    patient: str | None = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=200)] = 50,
    offset: Annotated[int, Query(alias="_offset", ge=0, le=1_000_000)] = 0,
) -> FhirResponse:
    """The audit trail, newest first (auditor scope: system/AuditEvent.read)."""
    patient = confined_search(who, patient)
    if patient is not None:
        limits.patient_reference(patient, "patient")
    store: Store = request.app.state.store
    total, rows = await asyncio.to_thread(store.audit_events, patient, offset, count)
    await audit.record(
        request,
        action="E",
        interaction="audit-search",
        outcome="0",
        agent=who.client_id,
        description=f"read {len(rows)} audit event(s)",
        patient_ref=patient,
    )
    events = [audit.as_fhir(r, settings.canonical_base) for r in rows]
    return FhirResponse(
        _searchset(events, total, offset, count, "AuditEvent", {"patient": patient}, settings)
    )


def _searchset(
    resources: list[dict[str, Any]],
    total: int,
    offset: int,
    count: int,
    kind: str,
    params: dict[str, str | None],
    settings: Settings,
) -> dict[str, Any]:
    base = f"{settings.public_base_url.rstrip('/')}/fhir/{kind}"
    query = {k: v for k, v in params.items() if v is not None}

    def page(at: int) -> str:
        return f"{base}?{urlencode(query | {'_count': count, '_offset': at})}"

    links = [{"relation": "self", "url": page(offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": page(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": page(max(0, offset - count))})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }
