"""Liveness and readiness for the orchestrator: ``GET /healthz`` and ``GET /readyz``.

Plain JSON, outside the FHIR contract (not in ``openapi/openapi.json``), no authentication.
"""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.catalog.loader import Catalog
from app.store.database import Store

router = APIRouter()

_PING_TIMEOUT = 2.0
"""Seconds the database may take to answer before the service counts as not ready: an
orchestrator's probe times out after a few seconds and should get a 503, not a hang."""


@router.get("/healthz", include_in_schema=False)
async def healthz() -> JSONResponse:
    """The process serves requests (restart it if not); says nothing about its dependencies."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """Whether to send traffic here: the database answers and at least one trial is loaded."""
    checks = {"database": await _database(request), "catalog": _catalog(request)}
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


async def _database(request: Request) -> str:
    store: Store | None = getattr(request.app.state, "store", None)
    if store is None:
        return "not opened (the app has not started)"
    try:
        answered = await asyncio.wait_for(asyncio.to_thread(store.ping), _PING_TIMEOUT)
    except TimeoutError:
        return f"no answer within {_PING_TIMEOUT:g} s"
    return "ok" if answered else "does not answer"


def _catalog(request: Request) -> str:
    catalog: Catalog | None = getattr(request.app.state, "catalog", None)
    if catalog is None:
        return "not loaded (the app has not started)"
    return "ok" if catalog.trials else "no trial loaded"
