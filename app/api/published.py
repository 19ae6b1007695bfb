"""The published resources: ResearchStudy (read and search), PlanDefinition, ValueSet,
CodeSystem, the ``$screen`` OperationDefinition, the CapabilityStatement and SMART discovery.
Public: no token needed. Each read carries its version (ETag, Last-Modified, meta)."""

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.capability import rest_resources, security, smart_configuration
from app.api.common import CatalogDep, FhirResponse, SettingsDep, trial_named
from app.api.search import openapi_parameters, parse_search, searchset
from app.api.study_search import STUDY, find_studies
from app.api.versioning import conditional_read, content_version, with_meta
from app.catalog import publication
from app.core.base_url import public_base
from app.core.errors import NotFound

router = APIRouter(prefix="/fhir")


def _published(request: Request, resource: dict[str, Any]) -> Response:
    """A resource built from the catalog: its version is its content, its lastUpdated the
    moment the catalog was loaded."""
    loaded = datetime.fromisoformat(request.app.state.started)
    return conditional_read(request, with_meta(resource, content_version(resource), loaded))


@router.get(
    "/ResearchStudy",
    response_class=FhirResponse,
    openapi_extra={"parameters": openapi_parameters(STUDY)},
)
async def search_studies(
    request: Request, settings: SettingsDep, catalog: CatalogDep
) -> FhirResponse:
    """The screened trials: _id, identifier, status, title; _count, _offset, _sort, _summary,
    _elements."""
    search = parse_search(request, STUDY)
    loaded = datetime.fromisoformat(request.app.state.started)
    studies = [
        with_meta(s, content_version(s), loaded)
        for s in (
            publication.research_study(t, settings.canonical_base) for t in catalog.trials.values()
        )
    ]
    total, page = find_studies(studies, search)
    return FhirResponse(searchset(public_base(request, settings), STUDY, search, page, total))


@router.get("/ResearchStudy/{study_id}", response_class=FhirResponse)
async def read_study(
    study_id: str, request: Request, settings: SettingsDep, catalog: CatalogDep
) -> Response:
    trial = trial_named(catalog, study_id)
    return _published(request, publication.research_study(trial, settings.canonical_base))


@router.get("/PlanDefinition/{plan_id}", response_class=FhirResponse)
async def read_plan(
    plan_id: str, request: Request, settings: SettingsDep, catalog: CatalogDep
) -> Response:
    trial = trial_named(catalog, plan_id)
    return _published(request, publication.plan_definition(trial, settings.canonical_base))


@router.get("/ValueSet/{name}", response_class=FhirResponse)
async def read_value_set(
    name: str, request: Request, settings: SettingsDep, catalog: CatalogDep
) -> Response:
    code_set = catalog.mappings.code_sets.get(name.replace("-", "_"))
    if code_set is None:
        raise NotFound(f"No value set {name!r}.")
    return _published(
        request, publication.value_set(code_set, catalog.mappings, settings.canonical_base)
    )


@router.get("/CodeSystem/sle-activity", response_class=FhirResponse)
async def read_sle_activity(request: Request, settings: SettingsDep) -> Response:
    return _published(request, publication.sle_activity_code_system(settings.canonical_base))


@router.get(f"/OperationDefinition/{publication.SCREEN_ID}", response_class=FhirResponse)
async def read_screen_definition(request: Request, settings: SettingsDep) -> Response:
    """The ``$screen`` operation: its levels and every in and out parameter."""
    return _published(request, publication.screen_operation_definition(settings.canonical_base))


@router.get("/metadata", response_class=FhirResponse)
async def metadata(request: Request, settings: SettingsDep) -> Response:
    statement = publication.capability_statement(
        settings.canonical_base,
        request.app.version,
        request.app.state.started,
        url=f"{public_base(request, settings)}/fhir",
        resources=rest_resources(settings.canonical_base),
        security=security(settings),
    )
    return _published(request, statement)


@router.get("/.well-known/smart-configuration", include_in_schema=False)
async def smart_discovery(settings: SettingsDep) -> Response:
    """SMART discovery (plain JSON, as SMART App Launch 2.0 asks); 404 when no token endpoint
    is configured."""
    document = smart_configuration(settings)
    if document is None:
        raise NotFound("No OAuth2 token endpoint is configured (TRIALSCREEN_AUTH_TOKEN_URL).")
    return Response(FhirResponse(document).body, media_type="application/json")
