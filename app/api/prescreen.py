"""``$prescreen``: a whole population screened in the background (issue 14), FHIR's asynchronous
request pattern.

``POST /fhir/ResearchStudy/{id}/$prescreen`` (or ``/fhir/ResearchStudy/$prescreen`` for every
trial, or those named by ``study``) with ``Prefer: respond-async`` and a Parameters of ``source``
(valueString: ``demo``, a folder under a configured population root, or the configured EHR's
``[base]/Group/{id}`` / ``[base]/Patient`` for a Bulk Data export) and ``asOf`` (valueDate) answers
``202`` with ``Content-Location``: the run's status URL. Polling it gives ``202`` with
``X-Progress`` while the run goes, then ``200`` with a Parameters naming the outputs (the Group per
trial, the funnel, the candidate list, the GuidanceResponses as NDJSON); ``DELETE`` cancels.
Same access rule as ``$screen`` (create GuidanceResponse, every patient: a token confined to one
patient may not screen a population); a run is read and cancelled only by its tenant. One
AuditEvent per run names its Groups.
"""

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from app.access.inbound import Principal
from app.api.common import (
    FHIR_JSON,
    CatalogDep,
    FhirResponse,
    Screener,
    SettingsDep,
    read_body,
    trial_named,
)
from app.api.screen_request import _as_of
from app.catalog.publication import PRESCREEN_ID, prescreen_operation_definition
from app.core.base_url import public_base
from app.core.errors import Forbidden, InvalidInput, NotFound
from app.core.settings import zone_of
from app.population.outputs import group_id
from app.population.runs import RunService, RunSummary
from app.store import audit

router = APIRouter(prefix="/fhir")
STATUS = "/fhir/$prescreen-status"
FILES = {
    "funnel.json": "application/json",
    "funnel.parameters.json": FHIR_JSON,
    "candidates.csv": "text/csv",
    "screenings.ndjson": "application/fhir+ndjson",
    "errors.json": "application/json",
}
_OBJECT = {"type": "object", "additionalProperties": True}
_OUTCOME = {"description": "OperationOutcome saying what is wrong", "content": {FHIR_JSON: {}}}
PRESCREEN_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": "Prefer",
            "in": "header",
            "required": True,
            "description": "respond-async (required: a population run is asynchronous)",
            "schema": {"type": "string"},
        }
    ],
    "requestBody": {
        "required": True,
        "description": "FHIR Parameters: 'source' (valueString: demo, a folder under a configured "
        "population root, or the configured EHR's [base]/Group/{id} or [base]/Patient), "
        "'asOf' (valueDate, default today); on the all-trials operation, 'study' (valueString, "
        "repeating) to restrict the trials.",
        "content": {FHIR_JSON: {"schema": _OBJECT}, "application/json": {"schema": _OBJECT}},
    },
    "responses": {
        "202": {"description": "Accepted; Content-Location names the run's status URL"},
        "400": _OUTCOME,
        "403": _OUTCOME,
        "404": _OUTCOME,
        "415": _OUTCOME,
    },
}


def _service(request: Request) -> RunService:
    service: RunService = request.app.state.population
    return service


def _parse(body: bytes) -> tuple[str, Any, list[str]]:
    import orjson

    try:
        parameters = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise InvalidInput("The request body must be a FHIR Parameters resource.")
    items = parameters.get("parameter", [])
    if not isinstance(items, list):
        raise InvalidInput("Parameters.parameter must be an array.")
    source: str | None = None
    as_of = None
    studies: list[str] = []
    for i, item in enumerate(items):
        where = f"Parameters.parameter[{i}]"
        name = item.get("name") if isinstance(item, dict) else None
        if name == "source" and source is None and isinstance(item.get("valueString"), str):
            source = item["valueString"]
        elif name == "asOf" and as_of is None:
            as_of = _as_of(item, where)
        elif name == "study" and isinstance(item.get("valueString"), str):
            studies.append(item["valueString"])
        else:
            raise InvalidInput(
                f"Unexpected parameter {name!r} (source, asOf, study).", expression=where
            )
    if not source:
        raise InvalidInput("The 'source' parameter (valueString) is required.")
    return source, as_of, studies


def _async_preferred(request: Request) -> None:
    prefer = request.headers.get("prefer", "")
    if "respond-async" not in [p.strip().lower() for p in prefer.replace(";", ",").split(",")]:
        raise InvalidInput("A population run is asynchronous: send 'Prefer: respond-async'.")


def _everyone(who: Principal) -> None:
    if who.confined_to is not None:
        raise Forbidden("The access token reaches one patient; a population run reaches many.")


async def _start(
    request: Request, who: Principal, trials: list[str], body: bytes, all_trials: bool
) -> Response:
    _async_preferred(request)
    _everyone(who)
    settings = request.app.state.settings
    source, as_of, studies = _parse(body)
    if studies and not all_trials:
        raise InvalidInput("'study' belongs to the all-trials $prescreen, not to one study's.")
    as_of = as_of or datetime.now(UTC).astimezone(zone_of(settings)).date()
    service = _service(request)
    try:
        run = await asyncio.to_thread(
            service.start, trials or studies, as_of, source, who.client_id, who.tenant
        )
    except Forbidden as exc:
        await audit.record(
            request,
            action="E",
            interaction="prescreen",
            outcome="4",
            agent=who.client_id,
            description=f"population run refused: {exc.message[:200]}",
        )
        raise
    url = f"{public_base(request, settings)}{STATUS}/{run.id}"
    return Response(status_code=202, headers={"Content-Location": url})


@router.post(
    "/ResearchStudy/{study_id}/$prescreen",
    status_code=202,
    response_class=Response,
    openapi_extra=PRESCREEN_OPENAPI,
)
async def prescreen(
    study_id: str, request: Request, settings: SettingsDep, catalog: CatalogDep, who: Screener
) -> Response:
    """Start screening a population against one trial (asynchronous)."""
    trial_named(catalog, study_id)
    body = await read_body(request, settings.max_body_bytes)
    return await _start(request, who, [study_id], body, all_trials=False)


@router.post(
    "/ResearchStudy/$prescreen",
    status_code=202,
    response_class=Response,
    openapi_extra=PRESCREEN_OPENAPI,
)
async def prescreen_all(request: Request, settings: SettingsDep, who: Screener) -> Response:
    """Start screening a population against every trial (or those named by 'study')."""
    body = await read_body(request, settings.max_body_bytes)
    return await _start(request, who, [], body, all_trials=True)


async def _run_of(request: Request, who: Principal, run_id: str) -> RunSummary:
    _everyone(who)
    run = await asyncio.to_thread(_service(request).get, run_id)
    if run is None or (run.tenant != who.tenant and not who.across_tenants):
        raise NotFound(f"No population run {run_id!r}.")
    return run


@router.get(f"{STATUS.removeprefix('/fhir')}/{{run_id}}", response_class=FhirResponse)
async def status(run_id: str, request: Request, settings: SettingsDep, who: Screener) -> Response:
    """202 with X-Progress while the run goes; 200 with its outputs once done."""
    run = await _run_of(request, who, run_id)
    if run.status in {"queued", "running"}:
        total = "?" if run.patients_total is None else str(run.patients_total)
        return Response(
            status_code=202,
            headers={
                "X-Progress": f"{run.status}: {run.patients_done}/{total} patients",
                "Retry-After": "2",
            },
        )
    if run.status != "completed":
        raise NotFound(f"Population run {run_id} {run.status}: {run.error or 'no outputs'}.")
    base = f"{public_base(request, settings)}"
    return FhirResponse(_result(run, base))


def _result(run: RunSummary, base: str) -> dict[str, Any]:
    files = f"{base}{STATUS}/{run.id}"
    parts: list[dict[str, Any]] = [
        {"name": "run", "valueString": run.id},
        {"name": "status", "valueCode": run.status},
        {"name": "asOf", "valueDate": run.as_of.isoformat()},
        {"name": "patients", "valueInteger": run.patients_done},
        {"name": "screenings", "valueUri": f"{files}/screenings.ndjson"},
        {"name": "candidates", "valueUri": f"{files}/candidates.csv"},
        {"name": "funnel", "valueUri": f"{files}/funnel.json"},
        {"name": "funnelParameters", "valueUri": f"{files}/funnel.parameters.json"},
        {"name": "errors", "valueUri": f"{files}/errors.json"},
    ]
    for trial in run.trials:
        outcomes = (run.outcomes_by_trial or {}).get(trial, {})
        parts.append(
            {
                "name": "trial",
                "part": [
                    {"name": "study", "valueReference": {"reference": f"ResearchStudy/{trial}"}},
                    {
                        "name": "group",
                        "valueReference": {
                            "reference": f"{base}/fhir/Group/{group_id(run.id, trial)}"
                        },
                    },
                    *({"name": result, "valueInteger": n} for result, n in outcomes.items()),
                ],
            }
        )
    return {"resourceType": "Parameters", "parameter": parts}


@router.delete(f"{STATUS.removeprefix('/fhir')}/{{run_id}}")
async def cancel(run_id: str, request: Request, who: Screener) -> Response:
    """Cancel a queued or running run (202); an ended run is left as it is (404 if unknown)."""
    await _run_of(request, who, run_id)
    await asyncio.to_thread(_service(request).cancel, run_id)
    return Response(status_code=202)


@router.get(f"{STATUS.removeprefix('/fhir')}/{{run_id}}/{{name}}")
async def output(run_id: str, name: str, request: Request, who: Screener) -> Response:
    """One output file of a completed run."""
    if name not in FILES:
        raise NotFound(f"A run has no {name!r}; it has {', '.join(FILES)}.")
    await _run_of(request, who, run_id)
    path = await asyncio.to_thread(_service(request).output_path, run_id, name)
    return FileResponse(path, media_type=FILES[name])


@router.get("/Group/{gid}", response_class=FhirResponse)
async def group(gid: str, request: Request, who: Screener) -> Response:
    """The Group of a completed run's candidates for one trial."""
    parts = gid.split("-")
    if len(parts) != 3 or parts[0] != "prescreen":
        raise NotFound(f"No Group {gid!r}.")
    run = await _run_of(request, who, parts[1])
    if parts[2] not in run.trials:
        raise NotFound(f"No Group {gid!r}.")
    path = await asyncio.to_thread(_service(request).output_path, run.id, f"Group-{parts[2]}.json")
    return Response(path.read_bytes(), media_type=FHIR_JSON)


@router.get(f"/OperationDefinition/{PRESCREEN_ID}", response_class=FhirResponse)
async def operation_definition(request: Request, settings: SettingsDep) -> Response:
    """The ``$prescreen`` OperationDefinition."""
    return FhirResponse(prescreen_operation_definition(settings.canonical_base))
