"""Versions on reads: ``meta.versionId`` / ``meta.lastUpdated`` in the resource, ``ETag`` /
``Last-Modified`` on the response, and ``304 Not Modified`` for a client that already holds that
version (``If-None-Match``, else ``If-Modified-Since``; RFC 9110 §13.2.2)."""

import hashlib
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from app.api.common import FHIR_JSON

Json = dict[str, Any]


def content_version(resource: Json) -> str:
    """A version id that changes exactly when the content does (published resources are built
    from the catalog, not stored with a history)."""
    body = orjson.dumps(
        {k: v for k, v in resource.items() if k != "meta"}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(body).hexdigest()[:16]


def with_meta(resource: Json, version: str, last_updated: datetime) -> Json:
    """The resource with ``meta.versionId`` and ``meta.lastUpdated`` (kept if already there)."""
    meta = dict(resource.get("meta", {}))
    meta.setdefault("versionId", version)
    meta.setdefault("lastUpdated", last_updated.astimezone(UTC).isoformat(timespec="milliseconds"))
    return {**resource, "meta": meta}


def conditional_read(request: Request, resource: Json) -> Response:
    """``resource`` (which has meta.versionId and meta.lastUpdated) or a 304 when the client's
    copy is current."""
    meta = resource["meta"]
    etag = f'W/"{meta["versionId"]}"'
    modified = datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
    headers = {
        "ETag": etag,
        "Last-Modified": format_datetime(modified.astimezone(UTC), usegmt=True),
    }
    if _not_modified(request, meta["versionId"], modified):
        return Response(status_code=304, headers=headers)
    return Response(orjson.dumps(resource), media_type=FHIR_JSON, headers=headers)


def _not_modified(request: Request, version: str, modified: datetime) -> bool:
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/").strip('"') for t in if_none_match.split(",")}
        return "*" in tags or version in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False  # RFC 9110: an invalid date is ignored
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return modified.replace(microsecond=0) <= since
