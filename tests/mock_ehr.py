"""An in-memory FHIR server behind ``httpx.MockTransport``, for faults a real server will not
produce on demand (429, 503, timeouts, foreign next links, truncated pages, 401s).

It answers the searches the fetch plan sends: Patient read, and searches by ``patient`` with an
optional ``code`` token list, paging with ``_count``.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode

import httpx
import orjson

BASE = "http://ehr.test/fhir"
Json = dict[str, Any]
Fault = Callable[[httpx.Request], httpx.Response | None]
"""Returns a response to send instead of the real one, or None to answer normally."""


@dataclass
class MockEhr:
    bundle: Json
    base: str = BASE
    faults: list[Fault] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for fault in self.faults:
            response = fault(request)
            if response is not None:
                return response
        return self.answer(request)

    def resources(self, kind: str) -> list[Json]:
        return [
            e["resource"] for e in self.bundle["entry"] if e["resource"]["resourceType"] == kind
        ]

    def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/fhir/").split("/")
        if len(path) == 2:
            found = [r for r in self.resources(path[0]) if r.get("id") == path[1]]
            if not found:
                return _json(404, {"resourceType": "OperationOutcome", "issue": []})
            return _json(200, found[0])
        query = parse_qs(request.url.query.decode())
        matches = self.resources(path[0])
        if "code" in query:
            wanted = set(query["code"][0].split(","))
            matches = [
                r
                for r in matches
                if any(f"{c.get('system')}|{c.get('code')}" in wanted for c in r["code"]["coding"])
            ]
        count = int(query.get("_count", ["20"])[0])
        offset = int(query.get("_offset", ["0"])[0])
        page: Json = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in matches[offset : offset + count]],
        }
        if offset + count < len(matches):
            rest = {k: v[0] for k, v in query.items()} | {"_offset": str(offset + count)}
            page["link"] = [{"relation": "next", "url": f"{self.base}/{path[0]}?{urlencode(rest)}"}]
        return _json(200, page)


def _json(status: int, body: Json, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


def once(fault: Fault) -> Fault:
    """The fault the first time it applies, then normal answers."""
    fired = False

    def wrapped(request: httpx.Request) -> httpx.Response | None:
        nonlocal fired
        if fired:
            return None
        response = fault(request)
        fired = response is not None
        return response

    return wrapped


def on(kind: str, response: Callable[[httpx.Request], httpx.Response]) -> Fault:
    """A fault for requests on one resource type."""

    def fault(request: httpx.Request) -> httpx.Response | None:
        return response(request) if f"/fhir/{kind}" in request.url.path else None

    return fault
