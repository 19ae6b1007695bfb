"""The first look at every request, before routing, authentication, the database or the log:
the path, the query string and the header values must be of bounded length and free of control
characters (a NUL, a newline), and a declared body may not exceed the limit.

A request that fails gets a 400 (413 for a body) OperationOutcome even unauthenticated, and is
counted in the aggregated audit row of its source, described by the kind of fault: the offending
value itself is never written anywhere.
"""

from urllib.parse import unquote_to_bytes

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access.inbound import RateLimiter
from app.core.errors import PayloadTooLarge
from app.core.limits import CONTROL, MAX_HEADER, MAX_PATH, MAX_QUERY
from app.store import audit

_CONTROL_BYTES = frozenset(range(0x20)) - {0x09} | {0x7F}
"""Control characters, except the horizontal tab HTTP allows inside a header value."""


class RequestGuard:
    """Pure ASGI middleware (see observability.RequestObservability for why not BaseHTTP)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fault = _fault(scope, self.max_body_bytes)
        if fault is None:
            await self.app(scope, _limited(receive, self.max_body_bytes), send)
            return
        status, message = fault
        state = scope["app"].state
        host = scope["client"][0] if scope.get("client") else "unknown"
        limiter: RateLimiter | None = getattr(state, "refusal_limiter", None)
        wait = await limiter.take(f"refused:{host}") if limiter is not None else None
        headers = [(b"content-type", b"application/fhir+json")]
        if wait is not None:
            status = 429
            message = f"Too many refused requests from this address; retry in {wait} s."
            headers.append((b"retry-after", str(wait).encode()))
        elif getattr(state, "store", None) is not None:
            await audit.refused(
                state.store, agent=f"unauthenticated@{host}", description=f"{status}: {message}"
            )
        code = {400: "invalid", 413: "too-costly", 429: "throttled"}[status]
        body = orjson.dumps(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": code, "diagnostics": message}],
            }
        )
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that stops a body (chunked, or longer than it declared) at ``limit`` bytes:
    the route reading it gets a 413 instead of the whole body in memory."""
    size = 0

    async def limited() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes.")
        return message

    return limited


def _fault(scope: Scope, max_body_bytes: int) -> tuple[int, str] | None:
    """(status, what is wrong in words that quote nothing of the request), or None."""
    path: str = scope["path"]
    if len(path) > MAX_PATH:
        return 400, f"The request path is longer than {MAX_PATH} characters."
    if CONTROL.search(path):
        return 400, "The request path holds a control character."
    query: bytes = scope.get("query_string", b"")
    if len(query) > MAX_QUERY:
        return 400, f"The query string is longer than {MAX_QUERY} characters."
    if any(b in _CONTROL_BYTES for b in unquote_to_bytes(query.replace(b"+", b" "))):
        return 400, "The query string holds a control character."
    for name, value in scope["headers"]:
        if len(value) > MAX_HEADER:
            return 400, f"A header value is longer than {MAX_HEADER} bytes."
        if any(b in _CONTROL_BYTES for b in value):
            return 400, "A header value holds a control character."
        if name == b"content-length" and value.isdigit() and int(value) > max_body_bytes:
            return 413, f"The request body exceeds the limit of {max_body_bytes} bytes."
    return None
