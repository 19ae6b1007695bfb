"""The ASGI application: ``app.main:app``."""

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version

import httpx
from fastapi import Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException

from app.access.inbound import InboundVerifier, RateLimiter
from app.access.jwks import KeyCache
from app.access.request_guard import RequestGuard
from app.api.common import FhirResponse
from app.api.head import HeadAsGet
from app.api.health import router as health_router
from app.api.history import router as history_router
from app.api.negotiation import negotiate
from app.api.openapi import contract
from app.api.prescreen import router as prescreen_router
from app.api.published import router as published_router
from app.api.screen import router as screen_router
from app.catalog.loader import load_catalog
from app.cds.service import fail_interrupted
from app.cds.service import router as cds_router
from app.cds.trust import JwtVerifier, Unauthorized
from app.core.errors import TrialscreenError
from app.core.observability import install_observability
from app.core.settings import Settings, get_settings
from app.demo import DEMO_PATIENTS
from app.ehr.connection import ehr_auth, ehr_http_client, ehr_record_source, fetch_plan
from app.ehr.record_source import DemoRecordSource
from app.ehr.terminology import TerminologyServer
from app.population.runs import RunService
from app.screening.pool import ScreenPool, tune_gc
from app.store.database import Store
from app.ui.auth_routes import install as install_ui_access
from app.ui.install import install as install_pages

log = logging.getLogger("trialscreen")


def _outcome(status: int, code: str, message: str) -> FhirResponse:
    return FhirResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}],
        },
        status_code=status,
    )


def create_app(
    settings: Settings | None = None, ehr_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """The app; ``ehr_transport`` replaces the network under the EHR client (tests of faults a
    real server will not produce on demand)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.catalog = catalog = load_catalog(settings)
        app.state.fetch_plan = plan = fetch_plan(settings, catalog)
        app.state.started = datetime.now(UTC).isoformat(timespec="seconds")
        app.state.store = store = Store(settings.database_url)
        await fail_interrupted(store)  # screenings a previous run left pending past their time
        # Population runs (issue 14); a run a crash interrupted is marked failed here.
        app.state.population = population = RunService(settings, store, catalog)
        background: set[asyncio.Task[None]] = set()
        app.state.background = background
        if settings.allow_unauthenticated:
            log.warning(
                "TRIALSCREEN_ALLOW_UNAUTHENTICATED is on: requests without a token are served "
                "(development only)"
            )
        try:
            async with ehr_http_client(settings, ehr_transport) as http:
                app.state.http = http
                app.state.ehr_auth = ehr_auth(settings)
                app.state.jwt_verifier = JwtVerifier(settings.cds_clients, http, store)
                app.state.inbound_verifier = InboundVerifier(settings, KeyCache(http))
                app.state.rate_limiter = RateLimiter(
                    store, settings.rate_limit_per_minute, settings.rate_limit_burst
                )
                app.state.refusal_limiter = RateLimiter(
                    store, settings.refused_per_minute, settings.refused_burst
                )
                app.state.record_source = (
                    DemoRecordSource(DEMO_PATIENTS)
                    if settings.ehr_base_url is None
                    else ehr_record_source(settings, plan, http)
                )
                app.state.terminology = (
                    TerminologyServer(settings.terminology_url, settings.terminology_budget, http)
                    if settings.terminology_url
                    else None
                )
                app.state.screen_pool = pool = ScreenPool(settings, catalog)
                pool.warm_up()
                tune_gc(settings)
                try:
                    yield
                finally:
                    pool.close()
                    gc.unfreeze()  # what start-up froze may be collected again once it ends
                for task in list(background):
                    task.cancel()
        finally:
            population.shutdown()
            store.close()

    try:
        software_version = version("trialscreen")
    except PackageNotFoundError:
        software_version = "0.0.0"
    app = FastAPI(
        title="trialscreen",
        version=software_version,
        summary="Clinical-trial eligibility screening over FHIR R4",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url="/redoc" if settings.docs_enabled else None,
    )
    fhir_json = [Depends(negotiate)]
    app.include_router(screen_router, dependencies=fhir_json)
    app.include_router(published_router, dependencies=fhir_json)
    app.include_router(history_router, dependencies=fhir_json)
    app.include_router(prescreen_router)  # serves CSV and NDJSON too: no FHIR-only negotiation
    app.include_router(cds_router)
    install_ui_access(app)  # signing in to the pages under /ui (app/ui/auth_routes.py)
    app.openapi = lambda: contract(app)  # type: ignore[method-assign]
    app.include_router(health_router)
    install_pages(app)  # the web pages under /ui (app/ui)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Prefer",
                "If-None-Match",
                "If-Modified-Since",
            ],
            # What a browser client may read: versions for caching, where a screening is kept.
            expose_headers=["ETag", "Last-Modified", "Content-Location", "Preference-Applied"],
        )
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes)
    install_observability(app, settings)
    app.add_middleware(HeadAsGet)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> Response:
        # CDS Hooks: a bad token gets a bare 401 that does not say why.
        return Response(status_code=401)

    @app.exception_handler(TrialscreenError)
    async def _named(_: Request, exc: TrialscreenError) -> FhirResponse:
        return FhirResponse(exc.outcome(), status_code=exc.status_code, headers=exc.headers())

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> FhirResponse:
        # Say which parameter and why in words; never the validator's internals.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _outcome(400, "invalid", f"Invalid request: {problems}.")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> FhirResponse:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        return _outcome(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> FhirResponse:
        # Log the type and place only: the body may hold patient data.
        # The route template, not the path: the path is the caller's (ids, any length).
        route = getattr(request.scope.get("route"), "path_format", None) or "unmatched"
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, route)
        return _outcome(500, "exception", "Internal error; the request was not processed.")

    return app


app = create_app()
