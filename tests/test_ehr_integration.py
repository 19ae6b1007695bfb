"""Screening by patient id against a real FHIR server (sekmet-fhir, seeded with the demo
patients) gives the same report as posting the same record as a Bundle."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from tests.fhir_server import STRICT, FhirServer, seed
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


# --- medicationReference: the fetch brings the Medication (_include) ---------------------------

_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_MEDREF_PATIENT = "medref-include-1"


def _medication_reference_bundle() -> dict[str, Any]:
    """An SLE patient whose prednisone order names its product only through a Medication
    resource (as Epic and Cerner write orders): 20 mg tablets, one a day by timing.code QD."""
    patient = {
        "resourceType": "Patient",
        "id": _MEDREF_PATIENT,
        "gender": "female",
        "birthDate": "1985-06-15",
    }
    medication = {
        "resourceType": "Medication",
        "id": "medref-pred-20",
        "code": {
            "coding": [
                {"system": _RXNORM, "code": "312615", "display": "predniSONE 20 MG Oral Tablet"}
            ]
        },
    }
    order = {
        "resourceType": "MedicationRequest",
        "id": "medref-pred-order",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "Medication/medref-pred-20"},
        "subject": {"reference": f"Patient/{_MEDREF_PATIENT}"},
        "authoredOn": "2025-01-01",
        "dosageInstruction": [
            {
                "timing": {
                    "code": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation",
                                "code": "QD",
                            }
                        ]
                    }
                },
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
            }
        ],
    }
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in (patient, medication, order)
        ],
    }


def _i3(screening: dict[str, Any]) -> dict[str, Any]:
    responses = [e["resource"] for e in screening["entry"]]
    hn2301 = next(r for r in responses if "NCT06801119" in r["moduleCanonical"])
    params = next(c for c in hn2301["contained"] if c["resourceType"] == "Parameters")
    criterion: dict[str, Any] = next(
        p
        for p in params["parameter"]
        if p["name"] == "criterion"
        and any(x["name"] == "id" and x.get("valueString") == "I3" for x in p["part"])
    )
    return criterion


def test_the_fetch_brings_the_medication_a_request_references(
    ehr_client: TestClient, fhir_server: FhirServer
) -> None:
    """sekmet answers _include=MedicationRequest:medication with the Medication (search mode
    include); the screening by id then sees the product and its strength exactly as the posted
    Bundle does: prednisone 20 mg/d, not an unknown drug."""
    bundle = _medication_reference_bundle()
    seed(fhir_server.base_url, [bundle])
    raw = httpx.get(
        f"{fhir_server.base_url}/MedicationRequest",
        params={
            "patient": _MEDREF_PATIENT,
            "intent": "order,plan",
            "_include": "MedicationRequest:medication",
        },
        headers=STRICT,
    ).json()
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in raw["entry"]}
    assert modes == {("MedicationRequest", "match"), ("Medication", "include")}

    fetched = ehr_client.post(SCREEN_ALL, json=_by_id(_MEDREF_PATIENT))
    assert fetched.status_code == 200, fetched.text
    posted = ehr_client.post(SCREEN_ALL, json=parameters(bundle, AS_OF))
    assert [_same_answer(e["resource"]) for e in fetched.json()["entry"]] == [
        _same_answer(e["resource"]) for e in posted.json()["entry"]
    ]
    i3 = {p["name"]: p for p in _i3(fetched.json())["part"]}
    assert i3["result"]["valueCode"] == "met", i3["reason"]
    assert i3["reason"]["valueString"].endswith(
        "Prednisone-equivalent 20 mg/d (predniSONE 20 MG Oral Tablet: 20 mg/d x 1): within range."
    )
