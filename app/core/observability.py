"""What an operator sees of the service: a request id on every request, one JSON log line per
request, JSON logs for the ``trialscreen`` loggers, and Prometheus metrics at ``GET /metrics``.

No patient data leaves through here. The request log line and the metric labels name the route
template (``/fhir/ResearchStudy/{study_id}/$screen``, or ``unmatched``), never the path a caller
sent, and nothing
reads a body, a query string or a header other than ``X-Request-ID``.

The metrics live in one module-level registry, created once per process: apps built later (many
in a test run) count into the same series. Metrics are per process; run one worker per container.
"""

import contextvars
import logging
import os
import re
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.settings import Settings

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "unmatched"
# Probes and scrapes arrive every few seconds; their request lines are DEBUG so they do not drown
# the lines of real requests.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "trialscreen_request_id", default=None
)
_log = logging.getLogger("trialscreen.http")

REGISTRY = CollectorRegistry()
process_collector.ProcessCollector(registry=REGISTRY)
platform_collector.PlatformCollector(registry=REGISTRY)
gc_collector.GCCollector(registry=REGISTRY)

REQUESTS = Counter(
    "trialscreen_requests",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "trialscreen_request_duration_seconds",
    "Time from request start to the end of the response, by route template.",
    ["method", "route"],
    registry=REGISTRY,
)
SCREENINGS = Counter(
    "trialscreen_screenings",
    "Screenings issued (REST and CDS Hooks), by trial and overall eligibility.",
    ["trial", "eligibility"],
    registry=REGISTRY,
)
PROCESS_ID = Gauge(
    "trialscreen_process_id",
    "The id of the worker process answering the scrape (tells workers of one replica apart).",
    registry=REGISTRY,
)
UPSTREAM_FHIR_ERRORS = Counter(
    "trialscreen_upstream_fhir_errors",
    "Failed requests to the EHR's FHIR server, each try counted: timeout, transport, "
    "status_<code>, invalid_body, too_large.",
    ["kind"],
    registry=REGISTRY,
)


def count_screening(trial: str, eligibility: str) -> None:
    SCREENINGS.labels(trial=trial, eligibility=eligibility).inc()


def count_upstream_error(kind: str) -> None:
    UPSTREAM_FHIR_ERRORS.labels(kind=kind).inc()


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _request_id.get()


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Wrap ``app`` in the request middleware, add ``GET /metrics``, and configure JSON logging
    (once per process). Called by the app factory after every other middleware, so the request
    line also covers what CORS answers on its own."""
    configure_logging()
    PROCESS_ID.set(os.getpid())
    app.add_middleware(RequestObservability)
    if settings.metrics_enabled:
        app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)


async def metrics(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class RequestObservability:
    """Pure ASGI (a ``BaseHTTPMiddleware`` would run the app in another task and buffer
    streaming responses)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or str(uuid.uuid4())
        token = _request_id.set(request_id)
        status = 500  # what the client gets if the app raises before it starts a response
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            # The request id stays set: the app's error handler runs outside this middleware
            # (Starlette's ServerErrorMiddleware) and its log line should carry it too.
            _finished(scope, status, time.perf_counter() - started)
            raise
        _finished(scope, status, time.perf_counter() - started)
        _request_id.reset(token)


def _finished(scope: Scope, status: int, elapsed: float) -> None:
    """Count the request and write its one log line."""
    method = scope["method"] if scope["method"] in _METHODS else "OTHER"
    template = _route_template(scope)
    route = template or _UNMATCHED
    REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    REQUEST_DURATION.labels(method=method, route=route).observe(elapsed)
    _log.log(
        logging.DEBUG if route in _QUIET_ROUTES else logging.INFO,
        "request",
        extra={
            "method": method,
            # Never the raw path of an unmatched request: it is the caller's text, of any
            # length (ids, probes, patient references).
            "path": route,
            "status": status,
            "duration_ms": round(elapsed * 1e3, 1),
        },
    )


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SAFE_ID.fullmatch(text) else None
    return None


def _route_template(scope: Scope) -> str | None:
    """The matched route's path template, prefixes included; None when no route matched."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) else None


# --- logging ---------------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, then any ``extra``
    fields the call passed."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _request_id.get(),
        }
        entry |= {k: v for k, v in record.__dict__.items() if k not in _RECORD_FIELDS}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (test runners swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging() -> None:
    """JSON lines on stderr for the ``trialscreen`` loggers, at INFO. Idempotent: a second call
    (a second app in the same process) adds nothing."""
    logger = logging.getLogger("trialscreen")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    # httpx logs every request's full URL at INFO: for EHR searches that is the patient id and
    # the codes searched. Keep it to warnings whatever the root logger is set to.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
