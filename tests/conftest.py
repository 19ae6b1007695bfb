import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.catalog import Catalog, load_catalog
from app.main import create_app
from app.settings import Settings
from tests import fhir_server as fhir

DEMO_PATIENTS = Path(__file__).resolve().parent.parent / "app" / "demo_patients"


def pytest_configure(config: pytest.Config) -> None:
    # Every app a test builds keeps its screenings in a throw-away SQLite file, not in var/.
    work = Path(tempfile.mkdtemp(prefix="trialscreen-tests-"))
    os.environ["TRIALSCREEN_DATABASE_URL"] = f"sqlite:///{work / 'trialscreen.db'}"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


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
