"""FHIR Bulk Data Access (``$export``) from the configured EHR into a folder of NDJSON.

The flow is the spec's asynchronous request pattern: kick-off ``[base]/Group/{id}/$export``,
``[base]/Patient/$export`` or ``[base]/$export`` with ``Prefer: respond-async``; poll the
``Content-Location`` it answers (``202`` + ``X-Progress`` while running, honouring ``Retry-After``
within bounds and an overall deadline); read the manifest on ``200``; download every output file
to disk in chunks (bounded memory), retrying a failed download; check line counts against the
manifest's ``count``; keep the manifest's ``error`` files (OperationOutcome NDJSON) apart and
report their issues; ``DELETE`` the job when done, and when the export is cancelled.

Only the configured EHR is ever called: the status URL and every file URL must stay under its base
URL (same scheme, host, port, and a path at or below the base: ``FhirClient._own``), otherwise the
URL is refused and reported; the token goes along only when the manifest says
``requiresAccessToken``. The HTTP client, its auth (SMART Backend Services, bearer or none), the
extra headers and the retry count are those the EHR client uses (``app/ehr/connection.py``).

An export that could not be read in full raises :class:`IncompleteExport` (its ``result`` says
what is missing): a missing Condition file read closed-world would turn "not exported" into "no
record found", so a run must not start on a partial folder.
"""

import asyncio
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson

from app.core.errors import InvalidInput, UpstreamUnavailable
from app.core.observability import count_upstream_error
from app.core.settings import Settings
from app.ehr.auth import EhrAuth, EhrAuthError
from app.ehr.client import FhirClient, _diagnostics, _retry_after
from app.ehr.connection import ehr_auth, ehr_http_client, fhir_client

Json = dict[str, Any]
FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
ERRORS_DIR = "errors"
"""Sub-folder of the destination holding the manifest's error files (OperationOutcome NDJSON),
kept apart so that a reader of ``dest/*.ndjson`` sees patient data only."""
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID = re.compile(r"(?!\.+$)[A-Za-z0-9\-.]{1,64}")
"""A FHIR id."""
_RETRY_STATUS = {429, 502, 503, 504}
_MAX_ISSUES = 200
"""Issues kept from the error files (their count is always reported in full)."""


class BulkExportError(UpstreamUnavailable):
    """The EHR's export could not be started, did not finish, or could not be read; the message
    says why. (What the caller asked wrongly is an ``InvalidInput``.)"""


class IncompleteExport(BulkExportError):
    """The export finished but some output could not be read in full (``result.problems``)."""

    def __init__(self, result: "ExportResult") -> None:
        super().__init__("; ".join(result.problems))
        self.result = result


@dataclass(frozen=True, slots=True)
class ExportLimits:
    deadline: float = 4 * 3600.0
    """Seconds the whole export (kick-off, waiting, downloads) may take."""
    min_poll: float = 1.0
    max_poll: float = 120.0
    """Bounds on the wait between two status polls, whatever Retry-After asks."""
    download_attempts: int | None = None
    """Tries per file (None: the EHR client's ``ehr_max_attempts``)."""
    parallel_downloads: int = 3
    chunk_bytes: int = 1024 * 1024
    max_file_bytes: int = 64 * 1024**3
    """A file larger than this is refused (disk, not memory: files are streamed)."""
    max_manifest_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ExportProgress:
    phase: Literal["kick-off", "waiting", "downloading", "done"]
    message: str
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0


@dataclass(frozen=True, slots=True)
class ExportedFile:
    type: str
    url: str
    path: Path
    lines: int
    """Non-blank lines written (one resource each)."""
    count: int | None
    """What the manifest announced, when it did."""
    bytes: int


@dataclass(frozen=True, slots=True)
class ExportIssue:
    """One issue of an OperationOutcome in the manifest's error files."""

    severity: str
    code: str
    diagnostics: str
    file: str
    line: int


@dataclass
class ExportResult:
    status_url: str
    transaction_time: str | None = None
    requires_access_token: bool = False
    files: list[ExportedFile] = field(default_factory=list)
    error_files: list[ExportedFile] = field(default_factory=list)
    issues: list[ExportIssue] = field(default_factory=list)
    issue_count: int = 0
    problems: list[str] = field(default_factory=list)
    """What could not be read (refused URLs, failed downloads, line counts that disagree)."""
    deleted: bool = False
    """Whether the server acknowledged the DELETE of the job."""
    notes: list[str] = field(default_factory=list)
    """What the export lacks without being incomplete (the answers it changes go to review)."""

    @property
    def complete(self) -> bool:
        return not self.problems

    @property
    def resources(self) -> int:
        return sum(f.lines for f in self.files)

    def by_type(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.files:
            counts[f.type] = counts.get(f.type, 0) + f.lines
        return counts


@dataclass(frozen=True, slots=True)
class ExportScope:
    """What a kick-off URL exports: a Group's members, every patient, or everything."""

    group_id: str | None = None
    system: bool = False


def scope_of(settings: Settings, url: str) -> ExportScope:
    """The scope a user-given URL names (``--bulk-group``, ``--bulk-patients``, a ``source``):
    ``[base]/Group/{id}`` or ``[base]/Group/{id}/$export``; ``[base]/Patient`` or
    ``[base]/Patient/$export``; ``[base]`` or ``[base]/$export``. Only under the configured EHR
    base URL: the export runs against it, with its credentials."""
    base = (settings.ehr_base_url or "").rstrip("/")
    if not base:
        raise InvalidInput("no EHR is configured (TRIALSCREEN_EHR_BASE_URL)")
    if not (url == base or url.startswith(base + "/")) or "?" in url or "#" in url:
        raise InvalidInput(f"{url} is not a bulk export of the configured EHR ({base})")
    path = url[len(base) :].strip("/").removesuffix("$export").strip("/")
    parts = path.split("/") if path else []
    if not parts:
        return ExportScope(system=True)
    if parts == ["Patient"]:
        return ExportScope()
    if len(parts) == 2 and parts[0] == "Group" and _ID.fullmatch(parts[1]):
        return ExportScope(group_id=parts[1])
    raise InvalidInput(
        f"{url} names no export: use {base}/Group/{{id}}, {base}/Patient or {base} itself"
    )


def fhir_instant(moment: datetime) -> str:
    """``moment`` as a FHIR instant in UTC with milliseconds (what servers write in
    ``meta.lastUpdated``, so that even a server comparing strings compares like with like)."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _ignore(_: ExportProgress) -> None:
    return None


async def export_to_folder(
    settings: Settings,
    *,
    group_id: str | None,
    since: datetime | None,
    types: Sequence[str],
    type_filters: Sequence[str] = (),
    dest: Path,
    progress: Callable[[ExportProgress], None] = _ignore,
    system: bool = False,
    method: Literal["GET", "POST"] = "GET",
    limits: ExportLimits | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    auth: EhrAuth | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ExportResult:
    """Export from ``settings.ehr_base_url`` into ``dest`` (created; must be empty).

    ``types``: what the loaded criteria read, ``patient_run.needed_data(trials).resource_types``
    (the fetch plan's types: ``$screen`` by patient id reads no other). ``group_id`` exports that
    Group's members; without it, every patient (``Patient/$export``),
    or everything (``$export``) when ``system`` is set. ``since`` must carry a time zone.
    ``transport`` and ``auth`` replace the configured ones (tests); ``sleep`` the waits.
    """
    if settings.ehr_base_url is None:
        raise InvalidInput("no EHR is configured (TRIALSCREEN_EHR_BASE_URL)")
    if group_id is not None and system:
        raise InvalidInput("a Group export and a system export are exclusive")
    if group_id is not None and not _ID.fullmatch(group_id):
        raise InvalidInput(f"not a FHIR id: {group_id!r}")
    if since is not None and since.tzinfo is None:
        raise InvalidInput("_since needs a time zone")
    bad = [t for t in types if not _TYPE_NAME.fullmatch(t)]
    if bad or not types:
        raise InvalidInput(f"not resource types: {bad or 'none given'}")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InvalidInput(f"{dest} is not empty")
    async with ehr_http_client(settings, transport) as http:
        client = fhir_client(settings, http, settings.ehr_base_url, auth or ehr_auth(settings))
        exporter = _Exporter(client, limits or ExportLimits(), progress, sleep, system)
        return await exporter.run(group_id, since, list(types), list(type_filters), dest, method)


class _Transient(Exception):
    def __init__(self, problem: str, wait: float | None = None) -> None:
        super().__init__(problem)
        self.wait = wait


class _Exporter:
    def __init__(
        self,
        client: FhirClient,
        limits: ExportLimits,
        progress: Callable[[ExportProgress], None],
        sleep: Callable[[float], Awaitable[None]],
        system: bool,
    ) -> None:
        self.client = client
        self.system = system
        self.http = client.http
        self.base = client.base_url
        self.limits = limits
        self.progress = progress
        self.sleep = sleep
        self.attempts = limits.download_attempts or client.max_attempts
        self.ends = time.monotonic() + limits.deadline

    def left(self) -> float:
        return self.ends - time.monotonic()

    async def run(
        self,
        group_id: str | None,
        since: datetime | None,
        types: list[str],
        type_filters: list[str],
        dest: Path,
        method: Literal["GET", "POST"],
    ) -> ExportResult:
        status_url = await self.kick_off(group_id, since, types, type_filters, method)
        result = ExportResult(status_url)
        try:
            manifest = await self.wait(status_url)
            await self.read_manifest(manifest, result, dest)
            if "Medication" in types:
                _unresolved_medications(result)
        finally:
            # Done, failed or cancelled: the server may drop the job and its files.
            result.deleted = await asyncio.shield(self.delete(status_url))
        self.progress(
            ExportProgress(
                "done",
                f"{result.resources} resources in {len(result.files)} files",
                len(result.files),
                len(result.files),
                sum(f.bytes for f in result.files),
            )
        )
        if result.problems:
            raise IncompleteExport(result)
        return result

    # --- kick-off and status ----------------------------------------------------------------

    async def kick_off(
        self,
        group_id: str | None,
        since: datetime | None,
        types: list[str],
        type_filters: list[str],
        method: Literal["GET", "POST"],
    ) -> str:
        url = self._kick_off_url(group_id)
        params: list[tuple[str, str]] = [("_type", ",".join(types))]
        if since is not None:
            params.append(("_since", fhir_instant(since)))
        params += [("_typeFilter", f) for f in type_filters]
        self.progress(ExportProgress("kick-off", f"{method} {url}"))
        headers = {"prefer": self._prefer(), "accept": FHIR_JSON}
        body: Json | None = None
        if method == "POST":
            body = {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": n, "valueInstant" if n == "_since" else "valueString": v}
                    for n, v in params
                ],
            }
            headers["content-type"] = FHIR_JSON
            params = []
        response = await self.call(method, url, params=params, json_body=body, headers=headers)
        if response.status_code != 202:
            raise BulkExportError(
                f"the export was refused: {method} {url} answered {response.status_code}"
                f"{_outcome_text(response.content)}"
            )
        location = response.headers.get("content-location")
        if not location:
            raise BulkExportError("the export was accepted without a Content-Location")
        own = self.client._own(location)
        if own is None:
            count_upstream_error("foreign_url")
            raise BulkExportError(
                f"the status URL {location} is not under the EHR base URL; not followed"
            )
        return own

    def _prefer(self) -> str:
        extra = next((v for k, v in self.client.headers.items() if k.lower() == "prefer"), "")
        return "respond-async" + (f", {extra}" if extra else "")

    async def wait(self, status_url: str) -> Json:
        """Poll until the manifest comes; Retry-After within [min_poll, max_poll]."""
        delay = self.limits.min_poll
        failures = 0
        while True:
            try:
                response = await self.call(
                    "GET", status_url, headers={"accept": FHIR_JSON}, retry=False
                )
            except _Transient as exc:
                failures += 1
                if failures >= self.attempts:
                    raise BulkExportError(f"polling the export failed: {exc}") from None
                wait = exc.wait if exc.wait is not None else delay * 2
                self.progress(ExportProgress("waiting", f"status: {exc}; polling again"))
            else:
                if response.status_code == 200:
                    return self._manifest(response)
                if response.status_code != 202:
                    raise BulkExportError(
                        f"the export failed: the status URL answered {response.status_code}"
                        f"{_outcome_text(response.content)}"
                    )
                failures = 0
                shown = response.headers.get("x-progress") or "in progress"
                self.progress(ExportProgress("waiting", shown[:200]))
                asked = _retry_after(response)
                wait = asked if asked is not None else delay * 1.5
            delay = min(self.limits.max_poll, max(self.limits.min_poll, wait))
            if delay >= self.left():
                raise BulkExportError(
                    f"the export did not finish within {self.limits.deadline:.0f} s"
                )
            await self.sleep(delay)

    def _manifest(self, response: httpx.Response) -> Json:
        try:
            manifest = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise BulkExportError("the export's manifest is not JSON") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
            raise BulkExportError("the export's manifest has no output list")
        return manifest

    async def delete(self, status_url: str) -> bool:
        try:
            async with asyncio.timeout(10.0):
                response = await self.call(
                    "DELETE", status_url, headers={"accept": FHIR_JSON}, retry=False
                )
        except (TimeoutError, _Transient, BulkExportError):
            return False
        return response.status_code in {200, 202, 204}

    # --- manifest and files ---------------------------------------------------------------------

    async def read_manifest(self, manifest: Json, result: ExportResult, dest: Path) -> None:
        result.transaction_time = _str(manifest.get("transactionTime"))
        token = manifest.get("requiresAccessToken") is True
        result.requires_access_token = token
        outputs = self._entries(manifest.get("output"), "output", result)
        errors = self._entries(manifest.get("error") or [], "error", result)
        numbers: dict[str, int] = {}
        jobs: list[tuple[str, str, int | None, Path, bool]] = []
        for kind, url, count in outputs:
            numbers[kind] = numbers.get(kind, 0) + 1
            jobs.append((kind, url, count, dest / f"{kind}.{numbers[kind]}.ndjson", False))
        if errors:
            (dest / ERRORS_DIR).mkdir()
        for n, (kind, url, count) in enumerate(errors, start=1):
            jobs.append((kind, url, count, dest / ERRORS_DIR / f"{kind}.{n}.ndjson", True))
        total, done = len(jobs), 0
        gate = asyncio.Semaphore(max(1, self.limits.parallel_downloads))

        async def one(kind: str, url: str, count: int | None, path: Path, error: bool) -> None:
            nonlocal done
            async with gate:
                try:
                    written = await self.download(url, path, token)
                except BulkExportError as exc:
                    result.problems.append(f"{kind} file {url}: {exc}")
                    return
            lines, size = written
            exported = ExportedFile(kind, url, path, lines, count, size)
            (result.error_files if error else result.files).append(exported)
            if count is not None and count != lines:
                result.problems.append(
                    f"{kind} file {url}: the manifest announced {count} resources, {lines} arrived"
                )
            done += 1
            self.progress(
                ExportProgress("downloading", f"{path.name}: {lines} resources", done, total, size)
            )

        await asyncio.gather(*(one(*job) for job in jobs))
        result.files.sort(key=lambda f: f.path.name)
        result.error_files.sort(key=lambda f: f.path.name)
        for error_file in result.error_files:
            _read_issues(error_file, result)

    def _entries(
        self, items: object, name: str, result: ExportResult
    ) -> list[tuple[str, str, int | None]]:
        if not isinstance(items, list):
            result.problems.append(f"the manifest's {name} is not a list")
            return []
        out: list[tuple[str, str, int | None]] = []
        for n, item in enumerate(items):
            kind = item.get("type") if isinstance(item, dict) else None
            url = item.get("url") if isinstance(item, dict) else None
            count = item.get("count") if isinstance(item, dict) else None
            if not isinstance(kind, str) or not _TYPE_NAME.fullmatch(kind):
                result.problems.append(f"{name}[{n}] has no valid resource type")
                continue
            if not isinstance(url, str):
                result.problems.append(f"{name}[{n}] ({kind}) has no url")
                continue
            own = self.client._own(url)
            if own is None:
                count_upstream_error("foreign_url")
                result.problems.append(f"{kind} file {url} is not under the EHR base URL; refused")
                continue
            valid_count = count if isinstance(count, int) and not isinstance(count, bool) else None
            out.append((kind, own, valid_count))
        return out

    async def download(self, url: str, path: Path, token: bool) -> tuple[int, int]:
        """Stream one file to ``path`` (written to ``path.part`` and renamed when whole);
        returns (non-blank lines, bytes). Retries 429, 502-504 and broken connections."""
        part = path.with_name(path.name + ".part")
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            if self.left() <= 0:
                raise BulkExportError("the export's time ran out")
            try:
                headers = {**self.client.headers, "accept": NDJSON}
                headers = {k: v for k, v in headers.items() if k.lower() != "prefer"}
                if token:
                    headers.update(await self._auth())
                async with asyncio.timeout(self.left()):
                    status, written, wait, body = await self._stream(url, headers, part)
            except (httpx.TransportError, TimeoutError) as exc:
                count_upstream_error("transport")
                problem, wait = f"the download broke off ({type(exc).__name__})", None
            else:
                if status == 200:
                    part.replace(path)
                    return written
                count_upstream_error(f"status_{status}")
                if status == 401 and token and not refreshed:
                    self.client.auth.invalidate()
                    refreshed, attempt = True, attempt - 1
                    continue
                if status not in _RETRY_STATUS:
                    raise BulkExportError(f"answered {status}{_outcome_text(body)}")
                problem = f"answered {status}"
            part.unlink(missing_ok=True)
            if attempt >= self.attempts:
                raise BulkExportError(f"{problem} (after {attempt} tries)")
            delay = wait if wait is not None else min(30.0, 0.5 * 2 ** (attempt - 1))
            delay = min(self.limits.max_poll, delay * random.uniform(0.9, 1.1))
            if delay >= self.left():
                raise BulkExportError(f"{problem}; no time left to retry")
            await self.sleep(delay)

    async def _stream(
        self, url: str, headers: dict[str, str], part: Path
    ) -> tuple[int, tuple[int, int], float | None, bytes]:
        async with self.http.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > 64 * 1024:
                        break
                return response.status_code, (0, 0), _retry_after(response), body
            counter = _LineCounter()
            size = 0
            with part.open("wb") as out:
                async for chunk in response.aiter_bytes(self.limits.chunk_bytes):
                    size += len(chunk)
                    if size > self.limits.max_file_bytes:
                        raise BulkExportError(f"larger than {self.limits.max_file_bytes} bytes")
                    counter.feed(chunk)
                    out.write(chunk)
            return 200, (counter.done(), size), None, b""

    # --- HTTP -----------------------------------------------------------------------------------

    async def _auth(self) -> dict[str, str]:
        try:
            return await self.client.auth.headers(self.http, max(0.1, min(30.0, self.left())))
        except EhrAuthError as exc:
            raise BulkExportError(f"no access to the EHR: {exc}") from None

    async def call(
        self,
        method: str,
        url: str,
        *,
        params: list[tuple[str, str]] | None = None,
        json_body: Json | None = None,
        headers: dict[str, str],
        retry: bool = True,
    ) -> httpx.Response:
        """One small exchange with the EHR (kick-off, status, DELETE), its body read up to
        ``max_manifest_bytes``. 429, 502-504 and broken connections are retried (for the status
        poll they come back as :class:`_Transient`); a 401 renews the token once."""
        base = {k: v for k, v in self.client.headers.items() if k.lower() not in headers}
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            if self.left() <= 0:
                raise BulkExportError("the export's time ran out")
            all_headers = {**base, **headers, **(await self._auth())}
            content = orjson.dumps(json_body) if json_body is not None else None
            try:
                async with asyncio.timeout(min(60.0, self.left())):
                    response = await self._small(method, url, params, content, all_headers)
            except (httpx.TransportError, TimeoutError) as exc:
                count_upstream_error("transport")
                problem: _Transient = _Transient(f"could not reach the EHR ({type(exc).__name__})")
            else:
                if response.status_code == 401 and not refreshed:
                    self.client.auth.invalidate()
                    refreshed, attempt = True, attempt - 1
                    continue
                if response.status_code not in _RETRY_STATUS and not _transient_outcome(response):
                    return response
                count_upstream_error(f"status_{response.status_code}")
                problem = _Transient(f"answered {response.status_code}", _retry_after(response))
            if not retry:
                raise problem  # the status poll paces its own retries
            if attempt >= self.attempts:
                raise BulkExportError(f"{method} {url}: {problem} (after {attempt} tries)")
            wait = problem.wait if problem.wait is not None else 0.5 * 2 ** (attempt - 1)
            wait = min(self.limits.max_poll, max(self.limits.min_poll, wait))
            if wait >= self.left():
                raise BulkExportError(f"{method} {url}: {problem}; no time left to retry")
            await self.sleep(wait)

    async def _small(
        self,
        method: str,
        url: str,
        params: list[tuple[str, str]] | None,
        content: bytes | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        request = self.http.build_request(
            method,
            url,
            params=tuple(params) if params else None,
            content=content,
            headers=headers,
        )
        response = await self.http.send(request, stream=True)
        try:
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > self.limits.max_manifest_bytes:
                    raise BulkExportError(
                        f"{method} {url}: answer larger than {self.limits.max_manifest_bytes} bytes"
                    )
                chunks.append(chunk)
        finally:
            await response.aclose()
        return httpx.Response(
            response.status_code, headers=response.headers, content=b"".join(chunks)
        )

    def _kick_off_url(self, group_id: str | None) -> str:
        if group_id is not None:
            return f"{self.base}/Group/{group_id}/$export"
        return f"{self.base}/{'$export' if self.system else 'Patient/$export'}"


class _LineCounter:
    """Counts non-blank lines across chunk boundaries."""

    def __init__(self) -> None:
        self.lines = 0
        self.open = False

    def feed(self, chunk: bytes) -> None:
        pieces = chunk.split(b"\n")
        for piece in pieces[:-1]:
            if self.open or piece.strip():
                self.lines += 1
            self.open = False
        if pieces[-1].strip():
            self.open = True

    def done(self) -> int:
        return self.lines + (1 if self.open else 0)


def _read_issues(error_file: ExportedFile, result: ExportResult) -> None:
    """The issues of the OperationOutcomes in one error file (read line by line)."""
    with error_file.path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                outcome = orjson.loads(line)
            except orjson.JSONDecodeError:
                result.problems.append(f"{error_file.path.name} line {number} is not JSON")
                continue
            issues = outcome.get("issue") if isinstance(outcome, dict) else None
            for issue in issues if isinstance(issues, list) else []:
                if not isinstance(issue, dict):
                    continue
                result.issue_count += 1
                if len(result.issues) < _MAX_ISSUES:
                    text = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
                    result.issues.append(
                        ExportIssue(
                            severity=str(issue.get("severity", "")),
                            code=str(issue.get("code", "")),
                            diagnostics=str(text or "")[:1000],
                            file=error_file.path.name,
                            line=number,
                        )
                    )


_MEDICATION_USES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration")


def _unresolved_medications(result: ExportResult) -> None:
    """Medication is not in the Patient compartment: a Patient or Group export may leave out the
    Medications that medication uses reference. Those drugs are then unknown to the engine (a
    review item, never "no such drug"); say how many uses are affected."""
    if any(f.type == "Medication" for f in result.files):
        return
    uses = 0
    for f in result.files:
        if f.type in _MEDICATION_USES:
            with f.path.open("rb") as lines:
                uses += sum(1 for line in lines if b'"medicationReference"' in line)
    if uses:
        result.notes.append(
            f"{uses} medication use(s) reference a Medication the export did not include "
            "(Medication is outside the Patient compartment): those drugs cannot be identified"
        )


def _transient_outcome(response: httpx.Response) -> bool:
    """A 5xx whose OperationOutcome says ``transient``: the poll failed, not the export."""
    if response.status_code < 500:
        return False
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    issues = body.get("issue") if isinstance(body, dict) else None
    return isinstance(issues, list) and any(
        isinstance(i, dict) and i.get("code") == "transient" for i in issues
    )


def _outcome_text(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    return _diagnostics(parsed) if isinstance(parsed, dict) else ""


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
