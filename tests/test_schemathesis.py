"""Property-based tests of the HTTP contract: schemathesis generates requests for every operation
in the app's OpenAPI document and sends them to the app in process (ASGI). Every answer must be a
non-5xx answer that the document declares: its status code, its content type and its schema.

Bounded and repeatable for CI: at most 25 examples per operation, derandomized, no deadline.
"""

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.settings import Settings
from app.main import create_app

# The development setting: the contract is tested without tokens (authentication has its own
# tests). The rate limit is off for the whole test run (tests/conftest.py).
APP = create_app(Settings(allow_unauthenticated=True))
# The document the app serves at /openapi.json (tests/test_openapi.py keeps openapi/openapi.json
# equal to it); requests go to APP through the ASGI transport, lifespan included.
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_documented(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
