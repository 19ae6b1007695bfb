"""The REST surface over real HTTP semantics (ASGI test client): $screen and the published
resources, every answer validated as FHIR R4 (R4B models), bad input answered with a 4xx
OperationOutcome."""

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class

from app.core.settings import Settings
from app.main import create_app
from tests import fhir_builders

SCREEN = "/fhir/ResearchStudy/NCT06801119/$screen"
FIXTURES = Path(__file__).resolve().parent.parent / "app" / "demo" / "patients"
FHIR_JSON = {"content-type": "application/fhir+json"}


def validate_r4(resource: dict[str, Any]) -> Any:
    """Parse with the R4B model of the resource's type (raises on anything invalid)."""
    return get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def parameters(bundle: dict[str, Any], as_of: str | None = "2026-06-01") -> dict[str, Any]:
    params: list[dict[str, Any]] = [{"name": "bundle", "resource": bundle}]
    if as_of is not None:
        params.append({"name": "asOf", "valueDate": as_of})
    return {"resourceType": "Parameters", "parameter": params}


def small_bundle() -> dict[str, Any]:
    return fhir_builders.bundle(
        {"gender": "female", "birthDate": "1985-06-15"},
        [
            {"condition": {"code": "55464009", "onset": "2019-01-01"}},
            {"lab": {"code": "718-7", "date": "2026-05-20", "value": 11.0, "unit": "g/dL"}},
        ],
    )


def result_parameters(response: dict[str, Any]) -> dict[str, Any]:
    contained: list[dict[str, Any]] = response["contained"]
    (result,) = [c for c in contained if c["id"] == "result"]
    return result


def criteria(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for p in params["parameter"]:
        if p["name"] == "criterion":
            parts = {q["name"]: q for q in p["part"]}
            out[parts["id"]["valueString"]] = p
    return out


def test_screen_returns_a_valid_guidance_response(client: TestClient) -> None:
    response = client.post(SCREEN, json=parameters(small_bundle()))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    body = response.json()
    model = validate_r4(body)
    assert model.subject.reference == "Patient/p"
    assert (
        body["moduleCanonical"] == "https://trialscreen.org/fhir/PlanDefinition/NCT06801119|1.0.0"
    )
    params = result_parameters(body)
    validate_r4(params)
    assert params["parameter"][0] == {"name": "eligibility", "valueCode": "ineligible"}
    found = criteria(params)
    assert list(found) == [f"I{i}" for i in range(1, 9)] + [f"E{i}" for i in range(1, 10)]
    i7 = {q["name"]: q for q in found["I7"]["part"] if q["name"] != "criterion"}
    assert i7["kind"]["valueCode"] == "inclusion"
    assert i7["text"]["valueString"].startswith("Appropriate bone marrow")
    sub = [q for q in found["I7"]["part"] if q["name"] == "criterion"]
    sub_ids = [next(x["valueString"] for x in s["part"] if x["name"] == "id") for s in sub]
    assert "I7.anc" in sub_ids and "I7.hb" in sub_ids


def test_missing_data_sets_data_required_with_requirements(client: TestClient) -> None:
    golden = _baseline_bundle(drop={"anc", "hb"})
    body = client.post(SCREEN, json=parameters(golden)).json()
    validate_r4(body)
    assert body["status"] == "data-required"
    assert result_parameters(body)["parameter"][0]["valueCode"] == "needs-data"
    codes = {c["code"] for r in body["dataRequirement"] for f in r["codeFilter"] for c in f["code"]}
    assert {"751-8", "718-7"} <= codes
    assert all(
        r["dateFilter"][0]["valuePeriod"]["start"] == "2026-05-04"
        for r in body["dataRequirement"]
        if r["type"] == "Observation"
    )


def _baseline_bundle(drop: set[str]) -> dict[str, Any]:
    import yaml

    base = yaml.safe_load(
        (Path(__file__).parent / "golden" / "NCT06801119" / "baseline.yaml").read_text()
    )
    items = [i for i in base["resources"] if next(iter(i.values())).get("id") not in drop]
    return fhir_builders.bundle(base["patient"], items)


def test_default_as_of_is_today(client: TestClient) -> None:
    body = client.post(SCREEN, json=parameters(small_bundle(), as_of=None)).json()
    as_of = next(p for p in result_parameters(body)["parameter"] if p["name"] == "asOf")
    assert as_of["valueDate"] == date.today().isoformat()


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem[:8])
def test_synthea_patients_screen_to_valid_r4(client: TestClient, path: Path) -> None:
    bundle = json.loads(path.read_text())
    response = client.post(SCREEN, json=parameters(bundle, "2025-11-01"))
    assert response.status_code == 200, response.text
    body = response.json()
    validate_r4(body)
    # Synthea records carry no ANA, complement or SLEDAI: never "eligible" on such data.
    assert result_parameters(body)["parameter"][0]["valueCode"] in {"ineligible", "needs-data"}


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/metadata",
        "/fhir/ResearchStudy",
        "/fhir/ResearchStudy/NCT06801119",
        "/fhir/PlanDefinition/NCT06801119",
        "/fhir/ResearchStudy/NCT07358988",
        "/fhir/PlanDefinition/NCT07358988",
        "/fhir/ValueSet/sle",
        "/fhir/ValueSet/malignancy",
        "/fhir/CodeSystem/sle-activity",
    ],
)
def test_published_resources_are_valid_r4(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/fhir+json"
    validate_r4(response.json())


def test_plan_definition_has_one_action_per_criterion(client: TestClient) -> None:
    plan = client.get("/fhir/PlanDefinition/NCT06801119").json()
    assert [a["prefix"] for a in plan["action"]] == [f"I{i}" for i in range(1, 9)] + [
        f"E{i}" for i in range(1, 10)
    ]
    i7 = plan["action"][6]
    assert i7["description"].startswith("Appropriate bone marrow")
    assert any(
        c["code"] == "751-8"
        for r in i7["input"]
        for f in r.get("codeFilter", [])
        for c in f.get("code", [])
    )


def _bundle_with(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


PATIENT = {"resourceType": "Patient", "id": "p", "birthDate": "1980-01-01"}
BAD_REQUESTS: list[tuple[str, bytes | dict[str, Any], int, str]] = [
    ("invalid JSON", b'{"resourceType": "Parameters",', 400, "not valid JSON"),
    ("empty body", b"", 400, "not valid JSON"),
    ("a JSON array", b"[]", 400, "Parameters"),
    ("not a Parameters", {"resourceType": "Patient"}, 400, "not Patient"),
    ("no bundle", {"resourceType": "Parameters", "parameter": []}, 400, "'bundle'"),
    (
        "bundle holds a Patient",
        {"resourceType": "Parameters", "parameter": [{"name": "bundle", "resource": PATIENT}]},
        400,
        "Bundle",
    ),
    ("no Patient", parameters(_bundle_with()), 422, "no Patient"),
    ("two Patients", parameters(_bundle_with(PATIENT, {**PATIENT, "id": "q"})), 422, "2 Patients"),
    ("impossible asOf", parameters(_bundle_with(PATIENT), "2026-02-30"), 400, "asOf"),
    ("asOf not a date", parameters(_bundle_with(PATIENT), "yesterday"), 400, "asOf"),
    ("asOf as dateTime", parameters(_bundle_with(PATIENT), "2026-02-03T10:00:00Z"), 400, "asOf"),
    (
        "unknown parameter",
        {"resourceType": "Parameters", "parameter": [{"name": "patientId", "valueString": "x"}]},
        400,
        "patientId",
    ),
    (
        "only an entry without resourceType",
        parameters({"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]}),
        422,
        "no Patient",
    ),
    ("entries not an array", parameters({"resourceType": "Bundle", "entry": {}}), 400, "entry"),
]


def test_unreadable_resources_are_named_not_refused(client: TestClient) -> None:
    """A resource of the wrong shape is one bad resource, not a bad request: the screening goes on,
    names each such resource in evaluationMessage, and cannot come out eligible on the rest."""
    bad_hb = {
        "resourceType": "Observation",
        "id": "hb",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
        "effectiveDateTime": "2026-01-01",
        "valueQuantity": {"value": "eleven", "unit": "g/dL"},
    }
    bundle = _bundle_with({**PATIENT, "birthDate": "01/02/1980"}, bad_hb)
    bundle["entry"].append({"resource": {"id": "x"}})
    response = client.post(
        SCREEN, content=json.dumps(parameters(bundle, "2026-02-01")), headers=FHIR_JSON
    )
    assert response.status_code == 200, response.text
    guidance = response.json()
    validate_r4(guidance)
    messages = next(c for c in guidance["contained"] if c["resourceType"] == "OperationOutcome")
    said = " ".join(i["diagnostics"] for i in messages["issue"])
    for path in (
        "entry[0].resource.birthDate",
        "entry[1].resource.valueQuantity.value",
        "entry[2]",
    ):
        assert path in said
    result = next(c for c in guidance["contained"] if c["resourceType"] == "Parameters")
    eligibility = next(p["valueCode"] for p in result["parameter"] if p["name"] == "eligibility")
    assert eligibility != "eligible"


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [(b, s, m) for _, b, s, m in BAD_REQUESTS],
    ids=[n for n, *_ in BAD_REQUESTS],
)
def test_bad_input_gets_a_4xx_operation_outcome(
    client: TestClient, body: bytes | dict[str, Any], status: int, message: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post(SCREEN, content=content, headers=FHIR_JSON)
    assert response.status_code == status, response.text
    outcome = response.json()
    validate_r4(outcome)
    assert message in outcome["issue"][0]["diagnostics"]


def test_unknown_trial_is_404(client: TestClient) -> None:
    response = client.post(
        "/fhir/ResearchStudy/NCT00000000/$screen", json=parameters(small_bundle())
    )
    assert response.status_code == 404
    assert "NCT06801119" in validate_r4(response.json()).issue[0].diagnostics


def test_wrong_media_type_is_415(client: TestClient) -> None:
    response = client.post(
        SCREEN, content=b"<Parameters/>", headers={"content-type": "application/xml"}
    )
    assert response.status_code == 415
    validate_r4(response.json())


def test_unknown_route_and_method_get_operation_outcomes(client: TestClient) -> None:
    for response, status in ((client.get("/fhir/Nope"), 404), (client.get(SCREEN), 405)):
        assert response.status_code == status
        validate_r4(response.json())


@pytest.fixture
def small_limit_client() -> Iterator[TestClient]:
    with TestClient(
        create_app(Settings(max_body_bytes=2048, allow_unauthenticated=True))
    ) as test_client:
        yield test_client


def test_body_over_the_limit_is_413(small_limit_client: TestClient) -> None:
    big = parameters(small_bundle())
    big["parameter"][0]["resource"]["entry"][0]["resource"]["text"] = {"div": "x" * 4096}
    response = small_limit_client.post(SCREEN, content=json.dumps(big).encode(), headers=FHIR_JSON)
    assert response.status_code == 413
    assert "2048" in validate_r4(response.json()).issue[0].diagnostics
    # Without a Content-Length (chunked upload) the limit still holds.
    chunks = iter([json.dumps(big).encode()])
    response = small_limit_client.post(SCREEN, content=chunks, headers=FHIR_JSON)
    assert response.status_code == 413


def test_resources_without_an_id_are_cited_by_their_full_url(client: TestClient) -> None:
    hemoglobin = fhir_builders.lab(
        {"code": "718-7", "date": "2026-05-20", "value": 9.0, "unit": "g/dL"}
    )
    del hemoglobin["id"]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b1d5d6e-0000-4000-8000-000000000001",
                "resource": {"resourceType": "Patient", "birthDate": "1980-01-01"},
            },
            {
                "fullUrl": "urn:uuid:0b1d5d6e-0000-4000-8000-000000000002",
                "resource": hemoglobin,
            },
        ],
    }
    body = client.post(SCREEN, json=parameters(bundle)).json()
    validate_r4(body)
    assert body["subject"]["reference"] == "urn:uuid:0b1d5d6e-0000-4000-8000-000000000001"
    hb = next(
        p
        for p in criteria(result_parameters(body))["I7"]["part"]
        if p["name"] == "criterion" and {"name": "id", "valueString": "I7.hb"} in p["part"]
    )
    refs = [x["valueReference"]["reference"] for x in hb["part"] if x["name"] == "evidence"]
    assert refs == ["urn:uuid:0b1d5d6e-0000-4000-8000-000000000002"]


SCREEN_ALL = "/fhir/ResearchStudy/$screen"
_PER_CALL = ("id", "identifier", "occurrenceDateTime", "meta")


def _same_answer(response: dict[str, Any]) -> dict[str, Any]:
    """A GuidanceResponse without what differs per call (its id and time)."""
    return {k: v for k, v in response.items() if k not in _PER_CALL}


def test_all_trials_in_one_call_equal_the_single_trial_calls(client: TestClient) -> None:
    params = parameters(_baseline_bundle(drop={"hb"}))
    response = client.post(SCREEN_ALL, json=params)
    assert response.status_code == 200
    bundle = response.json()
    validate_r4(bundle)
    assert bundle["type"] == "collection"
    answers = {
        e["resource"]["moduleCanonical"].split("/")[-1]: e["resource"] for e in bundle["entry"]
    }
    assert set(answers) == {"NCT06801119|1.0.0", "NCT07358988|1.0.0"}
    for key, answer in answers.items():
        single = client.post(f"/fhir/ResearchStudy/{key.split('|')[0]}/$screen", json=params).json()
        assert _same_answer(answer) == _same_answer(single)


def test_study_parameters_restrict_the_trials(client: TestClient) -> None:
    params = parameters(small_bundle())
    params["parameter"].append({"name": "study", "valueString": "NCT07358988"})
    entries = client.post(SCREEN_ALL, json=params).json()["entry"]
    assert [e["resource"]["moduleCanonical"] for e in entries] == [
        "https://trialscreen.org/fhir/PlanDefinition/NCT07358988|1.0.0"
    ]
    params["parameter"].append({"name": "study", "valueString": "NCT00000001"})
    response = client.post(SCREEN_ALL, json=params)
    assert response.status_code == 404
    assert "NCT00000001" in validate_r4(response.json()).issue[0].diagnostics


def test_study_parameter_is_refused_by_the_single_trial_call(client: TestClient) -> None:
    params = parameters(small_bundle())
    params["parameter"].append({"name": "study", "valueString": "NCT07358988"})
    response = client.post(SCREEN, json=params)
    assert response.status_code == 400
    validate_r4(response.json())


DEMO_ID = "b6446621-f1b9-4a74-bd09-7ec2410b27cf"


def _patient_parameters(value: dict[str, Any], as_of: str = "2025-11-01") -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": "patient", **value}, {"name": "asOf", "valueDate": as_of}],
    }


@pytest.mark.parametrize(
    "value",
    [{"valueString": DEMO_ID}, {"valueReference": {"reference": f"Patient/{DEMO_ID}"}}],
    ids=["valueString", "valueReference"],
)
def test_screening_a_demo_patient_by_id_equals_posting_the_record(
    client: TestClient, value: dict[str, Any]
) -> None:
    bundle = json.loads((FIXTURES / f"{DEMO_ID}.json").read_text())
    posted = client.post(SCREEN_ALL, json=parameters(bundle, "2025-11-01")).json()
    by_id = client.post(SCREEN_ALL, json=_patient_parameters(value)).json()
    assert [_same_answer(e["resource"]) for e in by_id["entry"]] == [
        _same_answer(e["resource"]) for e in posted["entry"]
    ]


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ({"valueString": "no-such-patient"}, 404),
        ({"valueString": "../etc/passwd"}, 400),
        ({"valueReference": {"reference": "Practitioner/1"}}, 400),
        ({"valueString": ""}, 400),
    ],
)
def test_bad_patient_ids(client: TestClient, value: dict[str, Any], status: int) -> None:
    response = client.post(SCREEN, json=_patient_parameters(value))
    assert response.status_code == status
    validate_r4(response.json())


def test_bundle_and_patient_together_are_refused(client: TestClient) -> None:
    params = parameters(small_bundle())
    params["parameter"].append({"name": "patient", "valueString": DEMO_ID})
    response = client.post(SCREEN, json=params)
    assert response.status_code == 400
    assert "either" in response.json()["issue"][0]["diagnostics"]


def test_every_screening_is_stored_and_readable_as_issued(client: TestClient) -> None:
    issued = client.post(SCREEN, json=parameters(small_bundle())).json()
    stored = client.get(f"/fhir/GuidanceResponse/{issued['id']}")
    assert stored.status_code == 200
    assert stored.headers["content-type"] == "application/fhir+json"
    assert stored.json() == issued
    missing = client.get("/fhir/GuidanceResponse/not-a-screening")
    assert missing.status_code == 404
    validate_r4(missing.json())
