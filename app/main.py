"""The ASGI application: ``app.main:app``."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app.api import FhirResponse, router
from app.catalog import load_catalog
from app.errors import TrialscreenError
from app.settings import Settings, get_settings

log = logging.getLogger("trialscreen")


def _outcome(status: int, code: str, message: str) -> FhirResponse:
    return FhirResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}],
        },
        status_code=status,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.catalog = load_catalog(settings)
        app.state.started = datetime.now(UTC).isoformat(timespec="seconds")
        yield

    try:
        software_version = version("trialscreen")
    except PackageNotFoundError:
        software_version = "0.0.0"
    app = FastAPI(
        title="trialscreen",
        version=software_version,
        summary="Clinical-trial eligibility screening over FHIR R4",
        lifespan=lifespan,
    )
    app.dependency_overrides[get_settings] = lambda: settings
    app.include_router(router)

    @app.exception_handler(TrialscreenError)
    async def _named(_: Request, exc: TrialscreenError) -> FhirResponse:
        return FhirResponse(exc.outcome(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> FhirResponse:
        return _outcome(400, "invalid", f"Invalid request: {exc.errors()}")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> FhirResponse:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        return _outcome(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> FhirResponse:
        # Log the type and place only: the body may hold patient data.
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return _outcome(500, "exception", "Internal error; the request was not processed.")

    return app


app = create_app()
