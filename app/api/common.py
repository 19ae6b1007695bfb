"""What every FHIR route shares: the response type, the dependencies (settings, catalog, the
caller's grant), reading a bounded body, looking up a trial."""

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from app.access.inbound import Principal, require
from app.catalog.loader import Catalog
from app.catalog.trial import LoadedTrial
from app.core.errors import NotFound, PayloadTooLarge, UnsupportedMediaType
from app.core.settings import Settings
from app.screening.spool import Spool, collect

FHIR_JSON = "application/fhir+json"
_ACCEPTED_TYPES = {"application/fhir+json", "application/json"}


# Dependencies are ``async def`` although they only read app.state: FastAPI runs a plain ``def``
# dependency on its thread pool, a thread hop per dependency per request.
async def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


async def settings_of(request: Request) -> Settings:
    """The settings the app was created with (create_app puts them in app.state)."""
    settings: Settings = request.app.state.settings
    return settings


# Read from app.state rather than by overriding get_settings: with any dependency override in
# place, FastAPI rebuilds every dependency (inspect.signature and all) on every request.
SettingsDep = Annotated[Settings, Depends(settings_of)]
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
    body = await read_screen_body(request, limit, spool=False)
    assert isinstance(body, bytes)  # never spooled when not asked to
    return body


async def read_screen_body(request: Request, limit: int, spool: bool) -> bytes | Spool:
    """:func:`read_body` for a screening pool: with ``spool`` (a pool of processes) a large body
    comes as a :class:`Spool` (see app/screening/spool.py)."""
    content_type = request.headers.get("content-type", FHIR_JSON).split(";")[0].strip().lower()
    if content_type not in _ACCEPTED_TYPES:
        raise UnsupportedMediaType(
            f"Send the Parameters as application/fhir+json (got {content_type!r})."
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
    return await collect(request.stream(), limit, spool)


def trial_named(catalog: Catalog, study_id: str) -> LoadedTrial:
    trial = catalog.get(study_id)
    if trial is None:
        known = ", ".join(sorted(catalog.trials))
        raise NotFound(f"No trial {study_id!r} is screened here (known: {known}).")
    return trial
