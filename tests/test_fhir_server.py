"""The real FHIR R4 test server (sekmet-fhir, tests/fhir_server.py) answers the searches the
service will send to an EHR, every one with `Prefer: handling=strict`, and pages to the end by
`Bundle.link[next]`. Expected results are computed from the demo patient files it was seeded with.
"""

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import fhir_server as fhir

DEMO_PATIENTS = Path(__file__).resolve().parent.parent / "app" / "demo" / "patients"
PATIENT_IDS = sorted(path.stem for path in DEMO_PATIENTS.glob("*.json"))
LOINC = "http://loinc.org"
HAEMOGLOBIN_PLATELETS = {"718-7", "777-3"}

Resource = dict[str, Any]


@pytest.fixture(scope="module")
def http(fhir_server: fhir.FhirServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fhir_server.base_url, headers=fhir.STRICT, timeout=30) as client:
        yield client


def record(patient_id: str) -> list[Resource]:
    bundle = json.loads((DEMO_PATIENTS / f"{patient_id}.json").read_text())
    return [entry["resource"] for entry in bundle["entry"]]


def ids(resources: list[Resource], rtype: str, keep: Callable[[Resource], bool]) -> set[str]:
    return {r["id"] for r in resources if r["resourceType"] == rtype and keep(r)}


def search_all(
    http: httpx.Client, base_url: str, path: str, params: dict[str, str]
) -> tuple[list[Resource], list[Resource]]:
    """Every match of a search, following `next` links verbatim; also returns the page Bundles."""
    pages: list[Resource] = []
    response = http.get(path, params=params)
    while True:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(fhir.FHIR_JSON)
        page = response.json()
        assert page["resourceType"] == "Bundle" and page["type"] == "searchset"
        pages.append(page)
        links = {link["relation"]: link["url"] for link in page.get("link", [])}
        if "next" not in links:
            break
        # Absolute, under the base URL, paging by _offset; nothing to rebuild on the client side.
        assert links["next"].startswith(f"{base_url}/{path}?"), links["next"]
        assert "_offset=" in links["next"]
        response = http.get(links["next"])
    matches = [
        entry["resource"]
        for page in pages
        for entry in page.get("entry", [])
        if entry["search"]["mode"] == "match"
    ]
    assert len(matches) == pages[0]["total"]
    return matches, pages


def effective_on_or_after(cutoff: str) -> Callable[[Resource], bool]:
    start = datetime.fromisoformat(cutoff).replace(tzinfo=UTC)

    def keep(observation: Resource) -> bool:
        return datetime.fromisoformat(observation["effectiveDateTime"]) >= start

    return keep


def coded(observation: Resource, system: str, codes: set[str]) -> bool:
    return any(
        c.get("system") == system and c.get("code") in codes
        for c in observation["code"].get("coding", [])
    )


def in_category(observation: Resource, code: str) -> bool:
    return any(
        c.get("code") == code for cat in observation.get("category", []) for c in cat["coding"]
    )


def test_read_patient(http: httpx.Client) -> None:
    for patient_id in PATIENT_IDS:
        source = next(r for r in record(patient_id) if r["resourceType"] == "Patient")
        response = http.get(f"Patient/{patient_id}")
        assert response.status_code == 200, response.text
        patient = response.json()
        assert patient["id"] == patient_id
        assert patient["name"] == source["name"]
        assert patient["birthDate"] == source["birthDate"]
        assert patient["meta"]["versionId"]  # the server adds meta.versionId and lastUpdated

    missing = http.get("Patient/no-such-patient")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("count", ["50", "1"])
@pytest.mark.parametrize("patient_id", PATIENT_IDS)
def test_observations_by_codes_and_date(
    http: httpx.Client, fhir_server: fhir.FhirServer, patient_id: str, count: str
) -> None:
    params = {
        "patient": patient_id,
        "code": ",".join(f"{LOINC}|{code}" for code in sorted(HAEMOGLOBIN_PLATELETS)),
        "date": "ge2023-01-01",
        "_count": count,
    }
    matches, pages = search_all(http, fhir_server.base_url, "Observation", params)

    assert all(coded(o, LOINC, HAEMOGLOBIN_PLATELETS) for o in matches)
    on_or_after = effective_on_or_after("2023-01-01")
    expected = ids(
        record(patient_id),
        "Observation",
        lambda o: coded(o, LOINC, HAEMOGLOBIN_PLATELETS) and on_or_after(o),
    )
    assert {o["id"] for o in matches} == expected
    assert len(pages) == max(1, -(-len(expected) // int(count)))
    for observation in matches:  # references come back relative, as seeded
        assert observation["subject"]["reference"] == f"Patient/{patient_id}"


@pytest.mark.parametrize("cutoff", ["2023-01-01", "2025-01-01"])
@pytest.mark.parametrize("patient_id", PATIENT_IDS)
def test_lab_observations_by_category_and_date(
    http: httpx.Client, fhir_server: fhir.FhirServer, patient_id: str, cutoff: str
) -> None:
    params = {"patient": patient_id, "category": "laboratory", "date": f"ge{cutoff}"}
    matches, pages = search_all(http, fhir_server.base_url, "Observation", params)

    on_or_after = effective_on_or_after(cutoff)
    expected = ids(
        record(patient_id),
        "Observation",
        lambda o: in_category(o, "laboratory") and on_or_after(o),
    )
    assert {o["id"] for o in matches} == expected
    assert len(pages) == max(1, -(-len(expected) // 20))  # the default page size is 20


SEARCHES: list[tuple[str, dict[str, str], Callable[[Resource], bool]]] = [
    ("Condition", {}, lambda r: True),
    ("MedicationRequest", {"intent": "order"}, lambda r: r.get("intent") == "order"),
    ("Immunization", {}, lambda r: True),
    ("Procedure", {}, lambda r: True),
    ("AllergyIntolerance", {}, lambda r: True),
    ("MedicationAdministration", {}, lambda r: True),
]


@pytest.mark.parametrize(
    ("rtype", "params", "keep"), SEARCHES, ids=[search[0] for search in SEARCHES]
)
@pytest.mark.parametrize("patient_id", PATIENT_IDS)
def test_patient_searches(
    http: httpx.Client,
    fhir_server: fhir.FhirServer,
    patient_id: str,
    rtype: str,
    params: dict[str, str],
    keep: Callable[[Resource], bool],
) -> None:
    query = {"patient": patient_id, **params, "_count": "50"}
    matches, _ = search_all(http, fhir_server.base_url, rtype, query)
    assert {r["id"] for r in matches} == ids(record(patient_id), rtype, keep)


def test_page_size_default_and_maximum(http: httpx.Client) -> None:
    patient_id = "768d19b8-5e76-4cd6-a7bd-d43ae6df02bf"
    procedures = len(ids(record(patient_id), "Procedure", lambda r: True))
    assert procedures > 20

    default = http.get("Procedure", params={"patient": patient_id}).json()
    assert len(default["entry"]) == 20 and default["total"] == procedures

    # Above 1000 the page size is cut to 1000 without a word; the links say _count=1000.
    large = http.get("Procedure", params={"patient": patient_id, "_count": "5000"}).json()
    assert len(large["entry"]) == procedures
    assert "_count=1000" in next(
        link["url"] for link in large["link"] if link["relation"] == "self"
    )


@pytest.mark.parametrize(
    "params",
    [
        {"no-such-parameter": "x"},
        {"code:in": "http://example.org/ValueSet/labs"},
        {"_sort": "-no-such-parameter"},
    ],
)
def test_unsupported_search_is_a_400_with_strict_handling(
    http: httpx.Client, params: dict[str, str]
) -> None:
    query = {"patient": PATIENT_IDS[0], **params}
    response = http.get("Observation", params=query)
    assert response.status_code == 400
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-supported"

    # Without the Prefer header the parameter is dropped (a typo would match everything).
    lenient = http.get("Observation", params=query, headers={"Prefer": ""})
    assert lenient.status_code == 200
    assert lenient.json()["entry"][-1]["search"]["mode"] == "outcome"


def test_seed_reports_what_the_server_refuses(fhir_server: fhir.FhirServer) -> None:
    def bundle(*resources: Resource) -> Resource:
        return {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
        }

    patient = {"resourceType": "Patient", "id": "seed-check-patient"}
    subject = {"reference": "urn:uuid:seed-check-patient"}
    no_code = {"resourceType": "Observation", "id": "seed-check-obs", "status": "final"}
    with pytest.raises(fhir.FhirServerError, match=r"Observation\.code"):
        fhir.seed(fhir_server.base_url, [bundle(patient, {**no_code, "subject": subject})])
    # The transaction is atomic: the valid Patient was rolled back with the invalid Observation.
    assert httpx.get(f"{fhir_server.base_url}/Patient/seed-check-patient").status_code == 404

    goal = {"resourceType": "Goal", "id": "seed-check-goal", "subject": subject}
    with pytest.raises(fhir.FhirServerError, match="no search for: Goal"):
        fhir.seed(fhir_server.base_url, [bundle(patient, goal)])

    dangling = {**no_code, "code": {"text": "x"}, "subject": {"reference": "urn:uuid:nobody"}}
    with pytest.raises(fhir.FhirServerError, match="urn:uuid:nobody names no entry"):
        fhir.seed(fhir_server.base_url, [bundle(patient, dangling)])
