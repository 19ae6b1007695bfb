"""Content negotiation: the service speaks FHIR JSON only. A client that asks for XML (by
``_format`` or by ``Accept``) gets 406 with an OperationOutcome (in JSON, the one format it
has), never a JSON body it did not ask for (FHIR R4 http §3.1.0.1.9)."""

from fastapi import Request

from app.core.errors import TrialscreenError

_JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
_JSON_TYPES = frozenset(
    {"application/fhir+json", "application/json", "application/*", "*/*", "application/json+fhir"}
)


class NotAcceptable(TrialscreenError):
    status_code = 406
    issue_code = "not-supported"


async def negotiate(request: Request) -> None:
    """A FastAPI dependency of every FHIR route: refuse what cannot be answered in JSON."""
    requested = request.query_params.get("_format")
    if requested:  # an empty parameter is ignored, as FHIR search asks
        if requested.split(";")[0].strip().lower() not in _JSON_FORMATS:
            raise NotAcceptable(
                f"_format={requested} is not served: this server answers in FHIR JSON only "
                "(_format=json).",
                expression="_format",
            )
        return  # _format overrides Accept
    accept = request.headers.get("accept")
    if not accept:
        return
    offered = [_media_type(item) for item in accept.split(",") if item.strip()]
    if offered and not any(kind in _JSON_TYPES for kind, quality in offered if quality > 0):
        raise NotAcceptable(
            f"Accept: {accept} is not served: this server answers in application/fhir+json only."
        )


def _media_type(item: str) -> tuple[str, float]:
    kind, *params = (p.strip() for p in item.split(";"))
    quality = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = 0.0
    return kind.lower(), quality
