"""The CapabilityStatement's REST part, stated from what the routers serve: each resource's
interactions, its search parameters (the same ``SearchSpec`` the search reads), and the SMART
security block; and ``.well-known/smart-configuration``."""

from typing import Any

from app.api.history_search import AUDIT, GUIDANCE
from app.api.search import SearchSpec
from app.api.study_search import STUDY
from app.catalog.publication import PRESCREEN_ID, SCREEN_ID
from app.core.settings import Settings

Json = dict[str, Any]
_SMART_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
SCOPES = (
    "system/GuidanceResponse.c",
    "system/GuidanceResponse.rs",
    "system/AuditEvent.rs",
)
"""What a caller may ask for (see app.access.inbound): screen, read and search screenings,
read the audit trail."""
_READ_ONLY = ("PlanDefinition", "ValueSet", "CodeSystem", "OperationDefinition")


def rest_resources(base: str) -> list[Json]:
    """One entry per resource type served, in the order clients usually look for them."""
    study = _searchable(STUDY, read=True)
    study["operation"] = [
        {"name": "screen", "definition": f"{base}/OperationDefinition/{SCREEN_ID}"},
        {"name": "prescreen", "definition": f"{base}/OperationDefinition/{PRESCREEN_ID}"},
    ]
    return [
        study,
        *({"type": kind, **_reads()} for kind in _READ_ONLY),
        _searchable(GUIDANCE, read=True),
        _searchable(AUDIT, read=False),
    ]


def _reads() -> Json:
    return {
        "interaction": [{"code": "read"}],
        "versioning": "versioned",
        "readHistory": False,
        "conditionalRead": "full-support",
    }


def _searchable(spec: SearchSpec, *, read: bool) -> Json:
    entry: Json = {"type": spec.resource}
    if read:
        entry |= _reads()
        entry["interaction"] = [{"code": "read"}, {"code": "search-type"}]
    else:
        entry["interaction"] = [{"code": "search-type"}]
    entry["searchParam"] = [
        {
            "name": p.name,
            "type": "uri" if p.kind == "uri" else p.kind,
            "documentation": p.documentation,
            **({"definition": p.definition} if p.definition else {}),
        }
        for p in spec.params
    ]
    entry["documentation"] = (
        (f"{spec.note} " if spec.note else "")
        + f"_count (default {spec.default_count}, at most {spec.max_count}; 0 gives the total "
        f"only), _offset, _sort ({', '.join(spec.sorts)}; default {spec.default_sort}), "
        "_total, _summary (true, text, data, count, false), _elements."
    )
    return entry


def security(settings: Settings) -> Json:
    block: Json = {
        "cors": bool(settings.cors_origins),
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "description": "OAuth2 bearer tokens (SMART Backend Services): the published "
        "resources and this statement are public; $screen needs system/GuidanceResponse.c, "
        "reading and searching screenings system/GuidanceResponse.rs, the audit trail "
        "system/AuditEvent.rs.",
    }
    uris = [
        {"url": name, "valueUri": value}
        for name, value in (
            ("token", settings.auth_token_url),
            ("authorize", settings.auth_authorize_url),
        )
        if value
    ]
    if uris:
        block["extension"] = [{"url": _SMART_URIS, "extension": uris}]
    return block


def smart_configuration(settings: Settings) -> Json | None:
    """SMART App Launch 2.0 discovery, when the token endpoint is known."""
    if not settings.auth_token_url:
        return None
    document: Json = {
        "token_endpoint": settings.auth_token_url,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(settings.auth_algorithms),
        "scopes_supported": list(SCOPES),
        "capabilities": ["client-confidential-asymmetric"],
    }
    if settings.auth_issuer:
        document["issuer"] = settings.auth_issuer
    if settings.auth_jwks_url:
        document["jwks_uri"] = settings.auth_jwks_url
    if settings.auth_authorize_url:
        document["authorization_endpoint"] = settings.auth_authorize_url
    return document
