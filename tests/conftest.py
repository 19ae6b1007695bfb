import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.catalog.loader import Catalog, load_catalog
from app.core.settings import Settings
from app.main import create_app
from tests import fhir_server as fhir
from tests import postgres

DEMO_PATIENTS = Path(__file__).resolve().parent.parent / "app" / "demo" / "patients"


_WORK = pytest.StashKey[Path]()
"""The session's throw-away folder (its SQLite file), removed when the session ends."""


def pytest_configure(config: pytest.Config) -> None:
    # Every app a test builds keeps its screenings in a throw-away SQLite file, not in var/.
    work = Path(tempfile.mkdtemp(prefix="trialscreen-tests-"))
    config.stash[_WORK] = work
    os.environ["TRIALSCREEN_DATABASE_URL"] = f"sqlite:///{work / 'trialscreen.db'}"
    # Hundreds of calls from one test client would trip the rate limit; its own tests set it.
    os.environ["TRIALSCREEN_RATE_LIMIT_PER_MINUTE"] = "0"
    os.environ["TRIALSCREEN_REFUSED_PER_MINUTE"] = "0"
    # Screenings on a thread of the test process, not in worker processes each app would start
    # (tests/test_perf_pool.py runs the process pool itself).
    os.environ["TRIALSCREEN_SCREEN_WORKERS"] = "0"


def pytest_unconfigure(config: pytest.Config) -> None:
    work = config.stash.get(_WORK, None)
    if work is not None:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def settings() -> Settings:
    # The shared test app serves without tokens (the development setting); inbound
    # authentication has its own tests.
    return Settings(allow_unauthenticated=True)


@pytest.fixture(scope="session")
def catalog(settings: Settings) -> Catalog:
    return load_catalog(settings)


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fhir.FhirServer]:
    """A real FHIR R4 server (sekmet-fhir) holding every demo patient, with stable ids."""
    if not fhir.installed():
        pytest.fail("run bash tests/run to install the FHIR test server", pytrace=False)
    bundles = [json.loads(path.read_text()) for path in sorted(DEMO_PATIENTS.glob("*.json"))]
    with fhir.running_fhir_server(tmp_path_factory.mktemp("fhir-server")) as server:
        fhir.seed(server.base_url, bundles)
        fhir.analyze(server.db_path)
        yield server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (a fresh cluster): its `trialscreen` database."""
    if not postgres.installed():
        pytest.fail(
            "PostgreSQL server binaries (initdb) not found: "
            "run bash tests/run to install PostgreSQL",
            pytrace=False,
        )
    # Not tmp_path_factory: as root the server runs as another user, who cannot enter
    # /tmp/pytest-of-root; a mkdtemp directory in /tmp is handed over to it.
    work = Path(tempfile.mkdtemp(prefix="trialscreen-postgres-"))
    try:
        with postgres.running_postgres(work) as server:
            yield server.url
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test: an SQLite file, or a new database on `postgres_url`."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_url")
    url = postgres.create_database(server_url, f"test_{secrets.token_hex(6)}")
    try:
        yield url
    finally:
        postgres.drop_database(url)
