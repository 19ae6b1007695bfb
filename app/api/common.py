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
from app.core.settings import Settings, get_settings

FHIR_JSON = "application/fhir+json"
_ACCEPTED_TYPES = {"application/fhir+json", "application/json"}


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


def trial_named(catalog: Catalog, study_id: str) -> LoadedTrial:
    trial = catalog.get(study_id)
    if trial is None:
        known = ", ".join(sorted(catalog.trials))
        raise NotFound(f"No trial {study_id!r} is screened here (known: {known}).")
    return trial
