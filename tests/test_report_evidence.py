"""The evidence each check cites, summarised in the report as the record said it: resource type,
date (and what the date is), value and unit, reference range. Over the REST operation, with
result shapes as a US Core laboratory result and a Synthea Condition carry them; every answer
valid R4 (R4B models and the R4 JSON schema)."""

from typing import Any

from fastapi.testclient import TestClient

from tests.test_api import SCREEN, criteria, parameters, result_parameters, validate_r4
from tests.test_fhir_clients import validate_schema

Json = dict[str, Any]

HEMOGLOBIN: Json = {
    # US Core Laboratory Result Observation, as in its published example (hemoglobin in blood).
    "resourceType": "Observation",
    "id": "hemoglobin",
    "meta": {
        "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab|6.1.0"]
    },
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory",
                    "display": "Laboratory",
                }
            ],
            "text": "Laboratory",
        }
    ],
    "code": {
        "coding": [
            {
                "system": "http://loinc.org",
                "code": "718-7",
                "display": "Hemoglobin [Mass/volume] in Blood",
            }
        ],
        "text": "Hemoglobin",
    },
    "subject": {"reference": "Patient/p"},
    "effectiveDateTime": "2026-05-20T08:30:00-05:00",
    "issued": "2026-05-20T13:45:00.000Z",
    "valueQuantity": {
        "value": 11.2,
        "unit": "g/dL",
        "system": "http://unitsofmeasure.org",
        "code": "g/dL",
    },
    "interpretation": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": "L",
                    "display": "Low",
                }
            ]
        }
    ],
    "referenceRange": [
        {
            "low": {
                "value": 12.0,
                "unit": "g/dL",
                "system": "http://unitsofmeasure.org",
                "code": "g/dL",
            },
            "high": {
                "value": 15.5,
                "unit": "g/dL",
                "system": "http://unitsofmeasure.org",
                "code": "g/dL",
            },
        }
    ],
}


def _sle(rid: str, onset: str) -> Json:
    """A Synthea Condition (its shape as in the demo records) of systemic lupus erythematosus."""
    return {
        "resourceType": "Condition",
        "id": rid,
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "code": "confirmed",
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": "http://snomed.info/sct",
                    "code": "55464009",
                    "display": "Systemic lupus erythematosus (disorder)",
                }
            ],
            "text": "Systemic lupus erythematosus (disorder)",
        },
        "subject": {"reference": "Patient/p"},
        "onsetDateTime": onset,
        "recordedDate": onset,
    }


def _bundle(*resources: Json) -> Json:
    patient = {"resourceType": "Patient", "id": "p", "gender": "female", "birthDate": "1985-06-15"}
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"urn:uuid:{n:08d}-0000-4000-8000-000000000000", "resource": r}
            for n, r in enumerate((patient, *resources))
        ],
    }


def _check(body: Json, check_id: str) -> Json:
    """The ``criterion`` part of one check (a criterion or a sub-check at any depth)."""

    def find(node: Json) -> Json | None:
        if {"name": "id", "valueString": check_id} in node["part"]:
            return node
        for p in node["part"]:
            if p["name"] == "criterion" and (hit := find(p)) is not None:
                return hit
        return None

    for top in criteria(result_parameters(body)).values():
        if (hit := find(top)) is not None:
            return hit
    raise AssertionError(f"no check {check_id}")


def _details(check: Json) -> list[Json]:
    return [
        {q["name"]: {k: v for k, v in q.items() if k != "name"} for q in p["part"]}
        for p in check["part"]
        if p["name"] == "evidenceDetail"
    ]


def _screened(client: TestClient, bundle: Json) -> Json:
    response = client.post(SCREEN, json=parameters(bundle))
    assert response.status_code == 200, response.text
    body: Json = response.json()
    validate_r4(body)
    validate_r4(result_parameters(body))
    validate_schema(body)
    return body


def test_a_lab_check_cites_the_result_with_its_date_value_unit_and_reference_range(
    client: TestClient,
) -> None:
    body = _screened(client, _bundle(HEMOGLOBIN, _sle("sle", "2019-03-14")))
    hb = _check(body, "I7.hb")
    (detail,) = _details(hb)
    assert detail == {
        "reference": {"valueReference": {"reference": "Observation/hemoglobin"}},
        "type": {"valueCode": "Observation"},
        "label": {"valueString": "Hemoglobin"},
        "date": {"valueDate": "2026-05-20"},
        "dateKind": {"valueCode": "effective"},
        "value": {"valueQuantity": {"value": 11.2, "unit": "g/dL"}},
        "referenceRange": {
            "valueRange": {
                "low": {"value": 12, "unit": "g/dL"},
                "high": {"value": 15.5, "unit": "g/dL"},
            }
        },
    }
    # The bare reference, the compared value and the threshold are still there, unchanged.
    names = [p["name"] for p in hb["part"]]
    assert {"evidence", "value", "threshold"} <= set(names)
    assert names.index("evidence") < names.index("evidenceDetail") < names.index("value")


def test_a_history_check_cites_the_condition_with_its_onset_date(client: TestClient) -> None:
    body = _screened(client, _bundle(HEMOGLOBIN, _sle("sle", "2019-03-14T10:00:00+01:00")))
    (detail,) = _details(_check(body, "I1.sle"))
    assert detail["reference"] == {"valueReference": {"reference": "Condition/sle"}}
    assert detail["type"] == {"valueCode": "Condition"}
    assert detail["date"] == {"valueDate": "2019-03-14"}
    assert detail["dateKind"] == {"valueCode": "onset"}
    assert detail["status"] == {"valueCode": "active"}
    assert "value" not in detail


def test_a_check_citing_many_resources_details_the_newest_five_and_counts_the_rest(
    client: TestClient,
) -> None:
    onsets = [
        "2012-02-01",
        "2019-03",
        "2015-07-09",
        "2010",
        "2021-11-30",
        "2017-01-05",
        "2013-04-04",
    ]
    conditions = [_sle(f"sle-{n}", onset) for n, onset in enumerate(onsets)]
    body = _screened(client, _bundle(HEMOGLOBIN, *conditions))
    sle = _check(body, "I1.sle")
    cited = [p for p in sle["part"] if p["name"] == "evidence"]
    assert len(cited) == 7  # every reference is still cited
    details = _details(sle)
    # Newest first; partial dates stay as partial as the record wrote them.
    assert [d["date"]["valueDate"] for d in details] == [
        "2021-11-30",
        "2019-03",
        "2017-01-05",
        "2015-07-09",
        "2013-04-04",
    ]
    assert {"name": "evidenceNotDetailed", "valueInteger": 2} in sle["part"]
