"""The REST surface over real HTTP semantics (ASGI test client): $screen and the published
resources, every answer validated as FHIR R4 (R4B models), bad input answered with a 4xx
OperationOutcome."""

import json
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class
from starlette.requests import Request

from app.core.base_url import public_base
from app.core.settings import Settings
from app.main import create_app
from tests import fhir_builders
from tests.fhir_server import FhirServer

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
    """A GuidanceResponse without what differs per call (its id and time), its evidence
    references relative (absolute ones name the EHR the record was read from)."""
    same = json.dumps({k: v for k, v in response.items() if k not in _PER_CALL})
    relative = re.sub(
        r'"reference": "https?://[^"]*?/([A-Z][A-Za-z]+/[^"/]+)"', r'"reference": "\1"', same
    )
    answer: dict[str, Any] = json.loads(relative)
    return answer


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


# --- FHIR REST behaviour: search, links, capability, formats, versions -----------------------

STUDIES = "/fhir/ResearchStudy"
XHTML = "{http://www.w3.org/1999/xhtml}div"


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in bundle["link"] if x["relation"] == relation), None)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"identifier": "NCT07358988"}, ["NCT07358988"]),
        ({"identifier": "https://clinicaltrials.gov|NCT06801119"}, ["NCT06801119"]),
        ({"identifier": "http://other.example|NCT06801119"}, []),
        ({"identifier": "https://clinicaltrials.gov|"}, ["NCT06801119", "NCT07358988"]),
        ({"_id": "NCT07358988"}, ["NCT07358988"]),
        ({"_id": "NCT06801119,NCT07358988"}, ["NCT06801119", "NCT07358988"]),
        ({"status": "approved"}, ["NCT07358988"]),
        ({"status": "http://hl7.org/fhir/research-study-status|active"}, ["NCT06801119"]),
        ({"status": "completed"}, []),
        ({"title": "kn5501"}, ["NCT07358988"]),
        ({"title:contains": "cell injection"}, ["NCT07358988"]),
        ({"title:contains": "refractory"}, ["NCT06801119", "NCT07358988"]),
        ({"title:exact": "kn5501"}, []),
        ({"_sort": "-_id"}, ["NCT07358988", "NCT06801119"]),
        ({"_sort": "status"}, ["NCT06801119", "NCT07358988"]),
        ({"_count": "500"}, ["NCT06801119", "NCT07358988"]),
        ({"_count": "", "_summary": "", "title": ""}, ["NCT06801119", "NCT07358988"]),
    ],
)
def test_study_search_honours_each_parameter(
    client: TestClient, params: dict[str, str], expected: list[str]
) -> None:
    response = client.get(STUDIES, params=params, headers={"Prefer": "handling=strict"})
    assert response.status_code == 200, response.text
    bundle = response.json()
    validate_r4(bundle)
    assert _ids(bundle) == expected
    assert bundle["total"] == len(expected)
    for entry in bundle.get("entry", []):
        assert entry["fullUrl"] == f"http://testserver/fhir/ResearchStudy/{entry['resource']['id']}"
    self_link = _link(bundle, "self")
    assert self_link is not None and self_link.startswith("http://testserver/fhir/ResearchStudy?")
    for name, value in params.items():
        if name != "_count" and value:
            assert f"{name.replace(':', '%3A')}=" in self_link


def test_study_search_pages_through_next(client: TestClient) -> None:
    seen: list[str] = []
    url: str | None = f"{STUDIES}?_count=1"
    while url:
        page = client.get(url).json()
        validate_r4(page)
        assert page["total"] == 2
        seen += _ids(page)
        url = _link(page, "next")
    assert seen == ["NCT06801119", "NCT07358988"]


@pytest.mark.parametrize("params", [{"_count": "0"}, {"_summary": "count"}])
def test_count_only_search_gives_the_total_alone(
    client: TestClient, params: dict[str, str]
) -> None:
    bundle = client.get(STUDIES, params=params).json()
    validate_r4(bundle)
    assert bundle["total"] == 2
    assert "entry" not in bundle


def test_summary_and_elements_subset_the_resources(client: TestClient) -> None:
    summary = client.get(STUDIES, params={"_summary": "true"}).json()
    elements = client.get(STUDIES, params={"_elements": "title"}).json()
    for bundle in (summary, elements):
        validate_r4(bundle)
        study = bundle["entry"][0]["resource"]
        assert "description" not in study
        assert study["status"]  # mandatory elements stay
        assert {"code": "SUBSETTED"}.items() <= study["meta"]["tag"][0].items()
    assert set(elements["entry"][0]["resource"]) == {
        "resourceType",
        "id",
        "meta",
        "title",
        "status",
    }
    assert "title" in summary["entry"][0]["resource"]


def test_unknown_parameters_follow_prefer_handling(client: TestClient) -> None:
    lenient = client.get(STUDIES, params={"_id": "NCT06801119", "colour": "blue"})
    assert lenient.status_code == 200
    bundle = lenient.json()
    validate_r4(bundle)
    assert _ids(bundle) == ["NCT06801119"]
    assert "colour" not in str(_link(bundle, "self"))
    (outcome,) = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in outcome["resource"]["issue"][0]["diagnostics"]
    strict = client.get(STUDIES, params={"colour": "blue"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    validate_r4(strict.json())


@pytest.mark.parametrize(
    "params",
    [
        {"_count": "abc"},
        {"_count": "-1"},
        {"_offset": "x"},
        {"_sort": "sponsor"},
        {"_summary": "maybe"},
        {"_total": "lots"},
        {"title:below": "x"},
        {"_elements": "identifier.value"},
    ],
)
def test_bad_search_controls_are_plain_400s(client: TestClient, params: dict[str, str]) -> None:
    response = client.get(STUDIES, params=params)
    assert response.status_code == 400
    outcome = response.json()
    validate_r4(outcome)
    text = outcome["issue"][0]["diagnostics"]
    assert "pydantic" not in text and "'type':" not in text and "input_value" not in text


def test_links_use_the_base_the_client_used(client: TestClient) -> None:
    headers = {"Host": "screening.example.org:8443", "X-Forwarded-Host": "evil.example"}
    bundle = client.get(STUDIES, params={"_count": "1"}, headers=headers).json()
    assert _link(
        bundle,
        "next",
    ).startswith("http://screening.example.org:8443/fhir/")  # type: ignore[union-attr]
    assert bundle["entry"][0]["fullUrl"].startswith("http://screening.example.org:8443/fhir/")


def test_an_explicit_public_base_url_overrides_the_request() -> None:
    settings = Settings(allow_unauthenticated=True, public_base_url="https://trials.example/api")
    with TestClient(create_app(settings)) as configured:
        bundle = configured.get(STUDIES).json()
    assert (
        bundle["entry"][0]["fullUrl"] == "https://trials.example/api/fhir/ResearchStudy/NCT06801119"
    )


def test_xml_is_not_acceptable(client: TestClient) -> None:
    for response in (
        client.get("/fhir/metadata", params={"_format": "xml"}),
        client.get("/fhir/metadata", params={"_format": "application/fhir+xml"}),
        client.get("/fhir/ResearchStudy/NCT06801119", headers={"Accept": "application/fhir+xml"}),
        client.post(SCREEN, json=parameters(small_bundle()), headers={"Accept": "application/xml"}),
    ):
        assert response.status_code == 406
        assert response.headers["content-type"] == "application/fhir+json"
        validate_r4(response.json())
    for ok in (
        client.get("/fhir/metadata", params={"_format": "json"}),
        client.get("/fhir/metadata", params={"_format": ""}),  # empty: ignored
        client.get("/fhir/metadata", headers={"Accept": "application/fhir+json;q=0.9, */*;q=0.1"}),
        client.get("/fhir/metadata", headers={"Accept": "text/html,application/xml;q=0.9,*/*"}),
    ):
        assert ok.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/ResearchStudy/NCT06801119",
        "/fhir/PlanDefinition/NCT07358988",
        "/fhir/ValueSet/sle",
        "/fhir/CodeSystem/sle-activity",
        "/fhir/OperationDefinition/ResearchStudy-screen",
        "/fhir/metadata",
    ],
)
def test_reads_carry_their_version_and_answer_304(client: TestClient, path: str) -> None:
    first = client.get(path)
    body = first.json()
    validate_r4(body)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert etag == f'W/"{body["meta"]["versionId"]}"'
    assert body["meta"]["lastUpdated"]
    assert client.get(path, headers={"If-None-Match": etag}).status_code == 304
    assert client.get(path, headers={"If-Modified-Since": modified}).status_code == 304
    assert client.get(path, headers={"If-None-Match": 'W/"other"'}).status_code == 200
    old = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert client.get(path, headers={"If-Modified-Since": old}).status_code == 200
    head = client.head(path)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["etag"] == etag
    assert int(head.headers["content-length"]) == len(first.content)


def test_head_is_served_only_where_get_is(client: TestClient) -> None:
    assert client.head(STUDIES).status_code == 200
    assert client.head(SCREEN).status_code == 405


def test_prefer_return_on_screen(client: TestClient) -> None:
    body = parameters(small_bundle())
    minimal = client.post(SCREEN, json=body, headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 200
    assert minimal.content == b""
    location = minimal.headers["content-location"]
    assert location.startswith("http://testserver/fhir/GuidanceResponse/")
    stored = client.get(location)
    assert stored.status_code == 200
    validate_r4(stored.json())
    outcome = client.post(SCREEN, json=body, headers={"Prefer": "return=OperationOutcome"})
    validate_r4(outcome.json())
    assert outcome.json()["resourceType"] == "OperationOutcome"
    diagnostics = outcome.json()["issue"][0]["diagnostics"]
    assert diagnostics == f"Screened and kept as {outcome.headers['content-location']}."
    full = client.post(SCREEN, json=body, headers={"Prefer": "return=representation"})
    assert full.json()["resourceType"] == "GuidanceResponse"
    assert full.headers["content-location"].endswith(full.json()["id"])


def test_operation_definition_states_every_screen_parameter(client: TestClient) -> None:
    definition = client.get("/fhir/OperationDefinition/ResearchStudy-screen").json()
    validate_r4(definition)
    assert (definition["type"], definition["instance"], definition["system"]) == (True, True, False)
    assert definition["code"] == "screen"
    by_use = {
        use: [p["name"] for p in definition["parameter"] if p["use"] == use]
        for use in ("in", "out")
    }
    assert by_use == {"in": ["bundle", "patient", "asOf", "study"], "out": ["return"]}


def _local(url: str, settings: Settings) -> str | None:
    """The path on this server that ``url`` names, if it names one here."""
    for base in (settings.canonical_base, "http://testserver/fhir"):
        if url.startswith(base + "/"):
            return "/fhir/" + url.removeprefix(base + "/")
    if not url.startswith("http") and "/" in url:
        return f"/fhir/{url}"
    return None


def test_everything_the_capability_statement_names_resolves(
    client: TestClient, settings: Settings
) -> None:
    statement = client.get("/fhir/metadata").json()
    validate_r4(statement)
    assert statement["implementation"]["url"] == "http://testserver/fhir"
    (rest,) = statement["rest"]
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    examples = {
        "ResearchStudy": "NCT06801119",
        "PlanDefinition": "NCT06801119",
        "ValueSet": "sle",
        "CodeSystem": "sle-activity",
        "OperationDefinition": "ResearchStudy-screen",
    }
    issued = client.post(SCREEN, json=parameters(small_bundle())).json()
    examples["GuidanceResponse"] = issued["id"]
    definitions = [o["definition"] for o in rest["operation"]]
    assert {r["type"] for r in rest["resource"]} == {*examples, "AuditEvent"}
    for resource in rest["resource"]:
        kind = resource["type"]
        codes = {i["code"] for i in resource["interaction"]}
        if "read" in codes:
            read = client.get(f"/fhir/{kind}/{examples[kind]}")
            assert read.status_code == 200, kind
            validate_r4(read.json())
        if "search-type" in codes:
            for param in resource["searchParam"]:  # each declared parameter is really read
                value = {"date": "ge2000-01-01", "reference": "Patient/p"}.get(param["type"], "x")
                query = {param["name"]: value, "patient": "Patient/p"}
                if kind == "ResearchStudy":
                    query.pop("patient")
                found = client.get(
                    f"/fhir/{kind}", params=query, headers={"Prefer": "handling=strict"}
                )
                assert found.status_code == 200, (kind, param["name"], found.text)
                validate_r4(found.json())
                if "definition" in param:
                    assert param["definition"].startswith("http://hl7.org/fhir/SearchParameter/")
        definitions += [o["definition"] for o in resource.get("operation", [])]
    for url in definitions:
        path = _local(url, settings)
        assert path is not None, url
        assert client.get(path).status_code == 200, url


def test_value_sets_have_aligned_valid_names(client: TestClient, catalog: Any) -> None:
    for name in catalog.mappings.code_sets:
        value_set = client.get(f"/fhir/ValueSet/{name.replace('_', '-')}").json()
        validate_r4(value_set)
        assert re.fullmatch(r"[A-Z]([A-Za-z0-9_]){0,254}", value_set["name"]), value_set["name"]
        assert value_set["url"].endswith(f"/ValueSet/{value_set['id']}")


def test_narratives_are_generated_escaped_xhtml(client: TestClient) -> None:
    screened = client.post(SCREEN, json=parameters(small_bundle())).json()
    plan = client.get("/fhir/PlanDefinition/NCT06801119").json()
    for resource in (screened, plan):
        validate_r4(resource)
        assert resource["text"]["status"] == "generated"
        root = ElementTree.fromstring(resource["text"]["div"])  # well-formed: text is escaped
        assert root.tag == XHTML
        assert not [e for e in root.iter() if e.tag.endswith(("script", "style", "img"))]
    rows = ElementTree.fromstring(screened["text"]["div"]).iter(XHTML.replace("div", "tr"))
    assert len(list(rows)) == 1 + 17  # the header and one row per criterion


def _request(client: str, headers: dict[str, str]) -> Request:
    return Request(
        {
            "type": "http",
            "method": "GET",
            "scheme": "http",
            "server": ("10.0.0.5", 8000),
            "client": (client, 40000),
            "path": "/fhir/metadata",
            "root_path": "",
            "query_string": b"",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        }
    )


@pytest.mark.parametrize(
    ("client_ip", "headers", "expected"),
    [
        ("10.1.2.3", {"host": "10.0.0.5:8000"}, "http://10.0.0.5:8000"),
        (  # a proxy that is not trusted cannot redirect the links
            "203.0.113.9",
            {"host": "10.0.0.5:8000", "x-forwarded-host": "evil.example"},
            "http://10.0.0.5:8000",
        ),
        (
            "10.1.2.3",
            {
                "host": "10.0.0.5:8000",
                "x-forwarded-proto": "https",
                "x-forwarded-host": "trials.example.org",
                "x-forwarded-prefix": "/screening",
            },
            "https://trials.example.org/screening",
        ),
        (
            "10.1.2.3",
            {
                "host": "10.0.0.5:8000",
                "forwarded": 'for=198.51.100.1;proto=https;host="ehr.example:9443", for=10.1.2.3',
            },
            "https://ehr.example:9443",
        ),
        ("10.1.2.3", {"host": "bad host<script>"}, "http://10.0.0.5:8000"),
    ],
)
def test_forwarded_headers_count_only_from_trusted_proxies(
    client_ip: str, headers: dict[str, str], expected: str
) -> None:
    settings = Settings(trusted_proxies=("10.1.0.0/16",))
    assert public_base(_request(client_ip, headers), settings) == expected


def test_the_service_does_not_import_the_test_only_fhir_models() -> None:
    """fhir.resources is a test dependency (pyproject dev extra): the image does not carry it."""
    app_dir = Path(__file__).resolve().parent.parent / "app"
    for path in app_dir.rglob("*.py"):
        assert "import fhir." not in path.read_text() and "from fhir." not in path.read_text(), path


def _evidence(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("name") == "evidence":
            yield node["valueReference"]["reference"]
        for value in node.values():
            yield from _evidence(value)
    elif isinstance(node, list):
        for value in node:
            yield from _evidence(value)


def test_evidence_from_the_ehr_resolves_at_the_ehr(fhir_server: FhirServer) -> None:
    settings = Settings(allow_unauthenticated=True, ehr_base_url=fhir_server.base_url)
    patient_id = sorted(FIXTURES.glob("*.json"))[0].stem
    by_id = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{patient_id}"}},
            {"name": "asOf", "valueDate": "2025-11-01"},
        ],
    }
    with TestClient(create_app(settings)) as ehr_client:
        screened = ehr_client.post(SCREEN, json=by_id).json()
    validate_r4(screened)
    references = set(_evidence(screened))
    assert references
    for reference in references:
        assert reference.startswith(f"{fhir_server.base_url}/"), reference
        assert httpx.get(reference).status_code == 200, reference
    posted = parameters(json.loads((FIXTURES / f"{patient_id}.json").read_text()), "2025-11-01")
    with TestClient(create_app(Settings(allow_unauthenticated=True))) as plain:
        assert all("://" not in r for r in _evidence(plain.post(SCREEN, json=posted).json()))


def test_browser_clients_may_read_versions_and_send_preferences() -> None:
    origin = "https://sandbox.example.org"
    settings = Settings(allow_unauthenticated=True, cors_origins=(origin,))
    with TestClient(create_app(settings)) as browser:
        read = browser.get("/fhir/ResearchStudy/NCT06801119", headers={"Origin": origin})
        preflight = browser.options(
            SCREEN,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "prefer, content-type",
            },
        )
    exposed = read.headers["access-control-expose-headers"].lower()
    assert "etag" in exposed and "content-location" in exposed
    assert preflight.status_code == 200
    assert "prefer" in preflight.headers["access-control-allow-headers"].lower()
