"""The HTTP contract, ``openapi/openapi.json``, as the app states it.

``python -m app.openapi_document`` rewrites the file; a test fails when it is out of date.
"""

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

PATH = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
_FHIR = "application/fhir+json"
_OBJECT = {"type": "object", "additionalProperties": True}
_ERRORS = {
    "400": "Malformed request: an OperationOutcome says what is wrong",
    "401": "No valid access token",
    "403": "The access token lacks the scope this needs",
    "404": "Not found",
    "406": "The client asked for a format other than FHIR JSON (_format or Accept)",
    "429": "Too many requests from this client (see Retry-After)",
}
_READS = {"metadata", "sle-activity", "ResearchStudy-screen", "ResearchStudy-prescreen"}
_PROTECTED = (
    "/fhir/GuidanceResponse",
    "/fhir/AuditEvent",
    "/fhir/$prescreen-status",  # population runs (issue 14)
    "/fhir/Group",
)
_SECURITY_SCHEMES = {
    "smartBackendServices": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An OAuth2 access token (SMART Backend Services, client_credentials with "
        "private_key_jwt) from the issuer in TRIALSCREEN_AUTH_ISSUER; its token endpoint is in "
        "the CapabilityStatement's rest.security and in /fhir/.well-known/smart-configuration. "
        "Scopes: system/GuidanceResponse.c ($screen), system/GuidanceResponse.rs (read and "
        "search screenings), system/AuditEvent.rs (the audit trail). The published resources "
        "need none.",
    },
    "cdsHooksJwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "CDS Hooks: a JWT the EHR signs with a key of its JWKS (iss, aud = the "
        "service URL, exp, jti).",
    },
}
_CDS_ERRORS = {
    "400": "Malformed hook call",
    "404": "No such service or card",
    "412": "Required data could neither be prefetched nor fetched",
}


def contract(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, saying what the service really sends: FHIR JSON bodies and
    OperationOutcome errors (a 400 where FastAPI would declare its own 422 shape), plain JSON
    for CDS Hooks and its bare 401."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                responses: dict[str, Any] = operation["responses"]
                if path.endswith("$screen"):  # a Bundle without exactly one Patient
                    responses["422"] = _outcome("The Bundle does not hold exactly one Patient")
                else:  # FastAPI's own validation shape is never sent: errors are 400s
                    responses.pop("422", None)
                if path.startswith("/fhir"):
                    if "200" in responses:  # $prescreen answers 202 (asynchronous)
                        responses["200"]["content"] = {_FHIR: {"schema": _OBJECT}}
                    for code, text in _ERRORS.items():
                        responses.setdefault(code, _outcome(text))
                    if method == "get" and ("{" in path or path.rsplit("/", 1)[-1] in _READS):
                        responses["304"] = {
                            "description": "Not Modified (If-None-Match or If-Modified-Since)"
                        }
                    if path.startswith(_PROTECTED) or path.endswith(("$screen", "$prescreen")):
                        operation["security"] = [{"smartBackendServices": []}]
                else:
                    _cds(path, responses)
                    if path != "/cds-services":
                        operation["security"] = [{"cdsHooksJwt": []}]
        document.setdefault("components", {})["securitySchemes"] = _SECURITY_SCHEMES
        app.openapi_schema = document
    return app.openapi_schema


def _outcome(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_FHIR: {"schema": _OBJECT}}}


def _cds(path: str, responses: dict[str, Any]) -> None:
    if path.endswith("/feedback"):
        responses["200"] = {"description": "Feedback stored"}
    else:
        responses["200"]["content"] = {"application/json": {"schema": _OBJECT}}
    if path != "/cds-services":
        responses.update({code: _outcome(text) for code, text in _CDS_ERRORS.items()})
        responses["401"] = {"description": "Bad or missing JWT (bare: the reason is not told)"}


def render(app: FastAPI) -> str:
    document: dict[str, Any] = app.openapi()
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
