"""Screening by patient id against a real FHIR server (sekmet-fhir, seeded with the demo
patients) gives the same report as posting the same record as a Bundle."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from tests.fhir_server import FhirServer
from tests.test_api import SCREEN_ALL, _same_answer, parameters, validate_r4

DEMO = Path(__file__).resolve().parent.parent / "app" / "demo" / "patients"
AS_OF = "2025-11-01"


@pytest.fixture(scope="module")
def ehr_client(fhir_server: FhirServer) -> Iterator[TestClient]:
    settings = Settings(
        allow_unauthenticated=True,
        ehr_base_url=fhir_server.base_url,
        # Strict: a search parameter the server does not support fails instead of matching all.
        ehr_headers={"Prefer": "handling=strict"},
        ehr_page_size=20,  # small pages: paging is exercised on real data
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _by_id(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{patient_id}"}},
            {"name": "asOf", "valueDate": AS_OF},
        ],
    }


@pytest.mark.parametrize("path", sorted(DEMO.glob("*.json")), ids=lambda p: p.stem[:8])
def test_screening_by_id_equals_posting_the_bundle(ehr_client: TestClient, path: Path) -> None:
    fetched = ehr_client.post(SCREEN_ALL, json=_by_id(path.stem))
    assert fetched.status_code == 200, fetched.text
    body = fetched.json()
    validate_r4(body)
    for entry in body["entry"]:
        assert "evaluationMessage" not in entry["resource"], entry["resource"]["contained"]
    posted = ehr_client.post(SCREEN_ALL, json=parameters(json.loads(path.read_text()), AS_OF))
    assert [_same_answer(e["resource"]) for e in body["entry"]] == [
        _same_answer(e["resource"]) for e in posted.json()["entry"]
    ]


def test_an_unknown_patient_is_a_404(ehr_client: TestClient) -> None:
    response = ehr_client.post(SCREEN_ALL, json=_by_id("no-such-patient"))
    assert response.status_code == 404
    assert "no-such-patient" in validate_r4(response.json()).issue[0].diagnostics
