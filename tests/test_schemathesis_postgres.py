"""The HTTP contract on PostgreSQL: the same property test as tests/test_schemathesis.py, against
the service keeping its screenings in a real PostgreSQL database, where a NUL in a text value or
an index row over ~2.7 KB fails a statement that SQLite accepts (issue 12). Every answer must be
a non-5xx answer the OpenAPI document declares.
"""

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from tests import postgres
from tests.test_schemathesis import CHECKS


class _Delegate:
    """An ASGI app forwarding to the app the fixture starts (schemathesis binds its app when the
    tests are collected, before the PostgreSQL server exists)."""

    target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.target(scope, receive, send)


DELEGATE = _Delegate()
# The document does not depend on the database: it is read from an app that is never started.
schema = schemathesis.openapi.from_dict(create_app(Settings(allow_unauthenticated=True)).openapi())
schema.app = DELEGATE


@pytest.fixture(scope="module", autouse=True)
def on_postgresql(postgres_url: str) -> Iterator[None]:
    """Requests go to an app on a fresh PostgreSQL database, lifespan included."""
    url = postgres.create_database(postgres_url, f"contract_{secrets.token_hex(6)}")
    app = create_app(Settings(allow_unauthenticated=True, database_url=url))
    try:
        with TestClient(app):
            DELEGATE.target = app
            yield
            # The cases did reach PostgreSQL: their accesses are in its audit trail.
            total, _ = app.state.store.audit_events(None, 0, 1)
            assert total > 0
    finally:
        postgres.drop_database(url)


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_documented_on_postgresql(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)
