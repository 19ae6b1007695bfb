"""The published resources: ResearchStudy, PlanDefinition, ValueSet, CodeSystem and the
CapabilityStatement. Public: no token needed."""

from fastapi import APIRouter, Request

from app.api.common import CatalogDep, FhirResponse, SettingsDep, trial_named
from app.catalog import publication
from app.core.errors import NotFound

router = APIRouter(prefix="/fhir")


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
        publication.research_study(trial_named(catalog, study_id), settings.canonical_base)
    )


@router.get("/PlanDefinition/{plan_id}", response_class=FhirResponse)
async def read_plan(plan_id: str, settings: SettingsDep, catalog: CatalogDep) -> FhirResponse:
    return FhirResponse(
        publication.plan_definition(trial_named(catalog, plan_id), settings.canonical_base)
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
