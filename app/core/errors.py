"""The service's named errors. Each is rendered once, as a FHIR OperationOutcome (see ``api``)."""

from typing import Any


class TrialscreenError(Exception):
    """An error the caller can act on: it carries the HTTP status and an OperationOutcome code."""

    status_code = 400
    issue_code = "invalid"

    def __init__(self, message: str, *, expression: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression

    def headers(self) -> dict[str, str]:
        return {}

    def outcome(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": "error",
            "code": self.issue_code,
            "diagnostics": self.message,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return {"resourceType": "OperationOutcome", "issue": [issue]}


class InvalidInput(TrialscreenError):
    """The request body or a parameter is malformed."""


class UnprocessableInput(TrialscreenError):
    """Well-formed, but not something the operation can screen (e.g. no Patient in the Bundle)."""

    status_code = 422
    issue_code = "processing"


class NotAuthenticated(TrialscreenError):
    status_code = 401
    issue_code = "login"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="trialscreen"'}


class Forbidden(TrialscreenError):
    status_code = 403
    issue_code = "forbidden"


class TooManyRequests(TrialscreenError):
    status_code = 429
    issue_code = "throttled"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class NotFound(TrialscreenError):
    status_code = 404
    issue_code = "not-found"


class PayloadTooLarge(TrialscreenError):
    status_code = 413
    issue_code = "too-costly"


class UpstreamUnavailable(TrialscreenError):
    """The EHR could not be read at all (the Patient itself); retry later."""

    status_code = 502
    issue_code = "transient"


class UnsupportedMediaType(TrialscreenError):
    status_code = 415
    issue_code = "not-supported"


class CatalogError(Exception):
    """A criteria or mapping file is inconsistent. Raised at load time and by the lint, never
    in a request."""


class ServerBusy(TrialscreenError):
    """Every screening worker is busy and the queue is full: retry after the given seconds."""

    status_code = 503
    issue_code = "transient"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
