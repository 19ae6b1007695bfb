"""The EHR's FHIR server, read over one shared ``httpx.AsyncClient``.

Upstream behaviour is mapped to outcomes here and nowhere else: 429 (honouring Retry-After),
502-504, timeouts and connection errors are retried with backoff inside the screening's deadline;
a 401 refreshes the token once; paging follows ``Bundle.link[next]`` only while it stays under the
configured base URL, up to a page limit; responses are read up to a size cap. A search that cannot
be completed says why in :class:`SearchOutcome` instead of raising, so the caller can mark that part
of the record incomplete.
"""

import asyncio
import email.utils
import posixpath
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx
import orjson

from app.core.observability import count_upstream_error
from app.ehr.auth import EhrAuth, EhrAuthError

Json = dict[str, Any]
_RETRY_STATUS = {429, 502, 503, 504}
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
"""Characters RFC 3986 allows unescaped in a path (re-escaping a normalised next link)."""


class EhrError(Exception):
    """The EHR did not give a usable answer; the message says what it did instead."""


class EhrNotFound(EhrError):
    pass


@dataclass
class Deadline:
    """The time left for one screening's fetches."""

    at: float
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> "Deadline":
        return cls(clock() + seconds, clock)

    def left(self) -> float:
        return self.at - self.clock()


@dataclass
class SearchOutcome:
    resource_type: str
    resources: list[Json] = field(default_factory=list)
    problem: str | None = None
    """Why the result is incomplete; None when every page was read."""
    pages: int = 0


@dataclass
class FetchStats:
    """What fetching cost: requests sent, and the longest chain of sequential round trips."""

    requests: int = 0
    depth: int = 0


class FhirClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        auth: EhrAuth,
        *,
        page_size: int = 100,
        max_pages: int = 50,
        max_attempts: int = 4,
        read_timeout: float = 20.0,
        max_response_bytes: int = 32 * 1024 * 1024,
        headers: dict[str, str] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self.page_size = page_size
        self.max_pages = max_pages
        self.max_attempts = max_attempts
        self.read_timeout = read_timeout
        self.max_response_bytes = max_response_bytes
        self.headers = {"accept": "application/fhir+json", **(headers or {})}
        self.sleep = sleep
        self.stats = FetchStats()

    async def read(self, resource_type: str, resource_id: str, deadline: Deadline) -> Json:
        body = await self._get(f"{self.base_url}/{resource_type}/{resource_id}", None, deadline)
        if body.get("resourceType") != resource_type:
            raise EhrError(f"GET {resource_type}/{{id}} answered a {body.get('resourceType')}")
        return body

    async def search(
        self, resource_type: str, params: dict[str, str], deadline: Deadline, depth: int = 1
    ) -> SearchOutcome:
        outcome = SearchOutcome(resource_type)
        # What _include brings (search.mode include) is kept beside the matches.
        included = "_include" in params
        url: str | None = f"{self.base_url}/{resource_type}"
        query: dict[str, str] | None = {**params, "_count": str(self.page_size)}
        while url is not None:
            if outcome.pages == self.max_pages:
                outcome.problem = f"more than {self.max_pages} pages of {resource_type}"
                break
            try:
                page = await self._get(url, query, deadline)
            except EhrError as exc:
                outcome.problem = f"{resource_type} search failed: {exc}"
                break
            outcome.pages += 1
            self.stats.depth = max(self.stats.depth, depth + outcome.pages - 1)
            if page.get("resourceType") != "Bundle":
                outcome.problem = (
                    f"{resource_type} search answered a {page.get('resourceType')} "
                    f"instead of a Bundle{_diagnostics(page)}"
                )
                break
            entries = page.get("entry") or []
            links = page.get("link") or []
            if not isinstance(entries, list) or not isinstance(links, list):
                outcome.problem = f"{resource_type} search returned a malformed Bundle"
                break
            outcome.resources += [
                e["resource"]
                for e in entries
                if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and _wanted(e, resource_type, included)
            ]
            url, query = _next_link(page), None
            if url is not None:
                url = self._own(url)
                if url is None:
                    outcome.problem = (
                        f"{resource_type} paging pointed outside the EHR base URL; not followed"
                    )
                    break
        return outcome

    def _own(self, url: str) -> str | None:
        """``url`` normalised (dot segments resolved, escapes of them too) if it stays under the
        base URL: same scheme, host and port, no user info, and a path at or below the base's
        path. None otherwise: the EHR token is never sent anywhere else."""
        try:
            parts, base = urlsplit(url), urlsplit(self.base_url)
            port, base_port = parts.port, base.port
        except ValueError:
            return None
        if (
            parts.scheme.lower() != base.scheme.lower()
            or (parts.hostname or "") != (base.hostname or "")
            or port != base_port
            or parts.username is not None
            or parts.password is not None
            or "\\" in parts.path
        ):
            return None
        path = posixpath.normpath(unquote(parts.path)) if parts.path else "/"
        path = "/" + path.lstrip("/")  # normpath keeps a leading "//"
        root = base.path.rstrip("/")
        if path != root and not path.startswith(root + "/"):
            return None
        return urlunsplit(
            (parts.scheme, parts.netloc, quote(path, safe=_PATH_SAFE), parts.query, "")
        )

    async def _get(self, url: str, params: dict[str, str] | None, deadline: Deadline) -> Json:
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            left = deadline.left()
            if left <= 0:
                raise EhrError("the screening's time for the EHR ran out")
            self.stats.requests += 1
            try:
                auth = await self.auth.headers(self.http, deadline.left())
            except EhrAuthError as exc:
                raise EhrError(f"no access to the EHR: {exc}") from None
            try:
                headers = {**self.headers, **auth}
                status, body, retry_after = await self._send(url, params, headers, left)
            except httpx.TimeoutException:
                count_upstream_error("timeout")
                problem, wait = "the EHR did not answer in time", None
            except httpx.TransportError as exc:
                count_upstream_error("transport")
                problem, wait = f"could not reach the EHR ({type(exc).__name__})", None
            else:
                if status != 200 and not (status == 401 and not refreshed):
                    count_upstream_error(f"status_{status}")
                if status == 200:
                    try:
                        parsed = orjson.loads(body)
                    except orjson.JSONDecodeError:
                        count_upstream_error("invalid_body")
                        problem, wait = "the EHR sent a truncated or invalid JSON body", None
                    else:
                        if isinstance(parsed, dict):
                            return parsed
                        count_upstream_error("invalid_body")
                        problem, wait = "the EHR sent JSON that is not a resource", None
                elif status == 401 and not refreshed:
                    self.auth.invalidate()
                    refreshed = True
                    attempt -= 1  # a token refresh is not a failed try
                    continue
                elif status == 404:
                    raise EhrNotFound(f"{status} Not Found{_diagnostics_bytes(body)}")
                elif status in _RETRY_STATUS:
                    problem, wait = f"the EHR answered {status}", retry_after
                else:
                    raise EhrError(f"the EHR answered {status}{_diagnostics_bytes(body)}")
            if attempt >= self.max_attempts:
                raise EhrError(f"{problem} (after {attempt} tries)")
            delay = wait if wait is not None else min(8.0, 0.25 * 2 ** (attempt - 1))
            delay *= 1 if wait is not None else random.uniform(0.8, 1.2)
            if delay >= deadline.left():
                raise EhrError(f"{problem}; no time left to retry")
            await self.sleep(delay)

    async def _send(
        self, url: str, params: dict[str, str] | None, headers: dict[str, str], left: float
    ) -> tuple[int, bytes, float | None]:
        # httpx's timeouts bound each read, not the exchange: a server dribbling its body a byte
        # at a time would never trip them. The deadline bounds the whole of it, body included.
        try:
            async with asyncio.timeout(left):
                return await self._exchange(url, params, headers, left)
        except TimeoutError:
            raise httpx.ReadTimeout("the screening's deadline passed mid-response") from None

    async def _exchange(
        self, url: str, params: dict[str, str] | None, headers: dict[str, str], left: float
    ) -> tuple[int, bytes, float | None]:
        timeout = httpx.Timeout(min(self.read_timeout, left), connect=min(5.0, left))
        request = self.http.build_request("GET", url, params=params, headers=headers)
        request.extensions["timeout"] = timeout.as_dict()
        response = await self.http.send(request, stream=True)
        try:
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.max_response_bytes:
                    count_upstream_error("too_large")
                    raise EhrError(f"a response exceeded {self.max_response_bytes} bytes")
                chunks.append(chunk)
        finally:
            await response.aclose()
        return response.status_code, b"".join(chunks), _retry_after(response)


def _search_mode(entry: Json) -> str | None:
    """An entry's search mode: ``match`` when absent; None (not a match) when malformed."""
    search = entry.get("search")
    if search is None:
        return "match"
    mode = search.get("mode", "match") if isinstance(search, dict) else None
    return mode if isinstance(mode, str) else None


def _next_link(page: Json) -> str | None:
    for link in page.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) else None
    return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _diagnostics(resource: Json) -> str:
    if resource.get("resourceType") != "OperationOutcome":
        return ""
    texts = [
        i.get("diagnostics") or i.get("details", {}).get("text", "")
        for i in resource.get("issue", [])
        if isinstance(i, dict)
    ]
    joined = "; ".join(t for t in texts if isinstance(t, str) and t)
    return f": {joined[:300]}" if joined else ""


def _diagnostics_bytes(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    return _diagnostics(parsed) if isinstance(parsed, dict) else ""


def _wanted(entry: Json, resource_type: str, included: bool) -> bool:
    """A match of the search, or a resource its ``_include`` brought."""
    kind = entry["resource"].get("resourceType")
    mode = _search_mode(entry)
    if mode == "include":
        return included and isinstance(kind, str) and kind != "OperationOutcome"
    return bool(mode == "match" and kind == resource_type)
