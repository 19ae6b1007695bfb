"""Bad data and hostile input never get a 5xx: huge numbers in a record, dates at the ends of the
calendar, control characters and oversized values in paths, ids, search values and headers."""

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from app.store.database import Store, StoredAuditEvent
from tests import fhir_builders
from tests.test_access import AUDITOR, BASE, ISSUER, READER, _jwks, bearer, token
from tests.test_api import SCREEN, parameters, validate_r4

BASELINE = Path(__file__).resolve().parent / "golden" / "NCT06801119" / "baseline.yaml"


def baseline_bundle() -> dict[str, Any]:
    """A record meeting every computable HN2301 criterion on 2026-06-01 (the golden baseline)."""
    case = yaml.safe_load(BASELINE.read_text(encoding="utf-8"))
    return fhir_builders.bundle(case["patient"], case["resources"])


def with_value(bundle: dict[str, Any], loinc: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(bundle)
    for entry in changed["entry"]:
        resource = entry["resource"]
        codes = [c.get("code") for c in resource.get("code", {}).get("coding", [])]
        if resource["resourceType"] == "Observation" and loinc in codes:
            resource["valueQuantity"]["value"] = value
    return changed


def results(response: dict[str, Any]) -> dict[str, str]:
    """Every criterion and check id -> result, from the contained Parameters."""
    found: dict[str, str] = {}

    def walk(parts: list[dict[str, Any]]) -> None:
        values = {p["name"]: p for p in parts}
        found[values["id"]["valueString"]] = values["result"]["valueCode"]
        for p in parts:
            if p["name"] == "criterion":
                walk(p["part"])

    for p in response["contained"][0]["parameter"]:
        if p["name"] == "criterion":
            walk(p["part"])
    return found


def messages(response: dict[str, Any]) -> list[str]:
    outcome = next((c for c in response["contained"] if c["id"] == "messages"), None)
    return [i["diagnostics"] for i in outcome["issue"]] if outcome else []


@pytest.mark.parametrize("value", [1e20, 1e300, 123456789012345678901234567890, -1e300])
def test_a_huge_number_in_a_record_makes_its_check_unknown_not_a_500(
    client: TestClient, value: Any
) -> None:
    sane = client.post(SCREEN, json=parameters(baseline_bundle()))
    assert sane.status_code == 200
    anc = "I7.anc"
    assert results(sane.json())[anc] == "met"

    response = client.post(SCREEN, json=parameters(with_value(baseline_bundle(), "751-8", value)))
    assert response.status_code == 200, response.text
    body = response.json()
    validate_r4(body)
    assert results(body)[anc] == "unknown"
    assert results(body)["I7"] == "unknown"
    assert any("plausible" in m and anc in m for m in messages(body)), messages(body)
    assert body["contained"][0]["parameter"][0]["valueCode"] != "eligible"


# --- paths, ids, search values and headers -------------------------------------------------------


@pytest.fixture
def hardened(store_url: str) -> Iterator[tuple[TestClient, Store]]:
    """The service with tokens required, on a fresh SQLite or PostgreSQL database."""
    settings = Settings(
        public_base_url=BASE,
        auth_issuer=ISSUER,
        auth_jwks=_jwks(),
        database_url=store_url,
        rate_limit_per_minute=0,
        refused_per_minute=600,
        refused_burst=600,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, client.app.state.store  # type: ignore[attr-defined]


def audit_rows(store: Store) -> list[StoredAuditEvent]:
    return store.audit_events(None, 0, 1000)[1]


def stored_text(store: Store) -> str:
    return " ".join(
        f"{r.agent} {r.patient_ref} {r.entity_ref} {r.description}" for r in audit_rows(store)
    )


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/GuidanceResponse/a%00b",
        "/fhir/GuidanceResponse/a%0Ab",
        "/fhir/ResearchStudy/NCT06801119%00/$screen",
        "/cds-services/trial-eligibility%00",
        "/nowhere/%1b[31m",
        "/fhir/GuidanceResponse?subject=Patient/a%00b",
        "/fhir/GuidanceResponse?subject=Patient%2Fa%0D%0Ab",
        "/fhir/AuditEvent?patient=" + "x" * 5000,
        "/fhir/GuidanceResponse/" + "a" * 9000,
    ],
)
def test_control_characters_and_oversized_values_are_400_even_unauthenticated(
    hardened: tuple[TestClient, Store], path: str
) -> None:
    client, store = hardened
    for headers in ({}, bearer(token(READER))):
        response = client.get(path, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
    rows = audit_rows(store)
    assert len(rows) == 1 and rows[0].occurrences == 2  # counted, aggregated
    assert rows[0].interaction == "access-denied"
    assert "\x00" not in stored_text(store) and "xxxx" not in stored_text(store)
    assert "aaaa" not in stored_text(store)


def test_a_control_character_in_a_header_is_400(hardened: tuple[TestClient, Store]) -> None:
    client, store = hardened
    response = client.get(
        "/fhir/GuidanceResponse", headers={"X-Request-ID": "a\x01b", **bearer(token(READER))}
    )
    assert response.status_code == 400
    assert "\x01" not in stored_text(store)


@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/fhir/GuidanceResponse/" + "a" * 65, "GuidanceResponse.id"),
        ("/fhir/GuidanceResponse/a%20b", "GuidanceResponse.id"),
        ("/fhir/GuidanceResponse?subject=Patient/" + "a" * 300, "subject"),
        ("/fhir/GuidanceResponse?subject=Patient/a/b", "subject"),
        ("/fhir/GuidanceResponse?subject=Patient/a&module=" + "m" * 2000, "module"),
    ],
)
def test_ids_and_references_follow_fhir_syntax(
    hardened: tuple[TestClient, Store], path: str, where: str
) -> None:
    client, _ = hardened
    response = client.get(path, headers=bearer(token(READER)))
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == [where]


def test_an_audit_search_by_an_overlong_patient_is_400(hardened: tuple[TestClient, Store]) -> None:
    client, _ = hardened
    response = client.get(
        "/fhir/AuditEvent?patient=Patient/" + "p" * 3000, headers=bearer(token(AUDITOR))
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("as_of", "status"),
    [("0001-01-01", 400), ("1899-12-31", 400), ("9999-12-31", 400), ("2999-12-31", 200)],
)
def test_as_of_at_the_ends_of_the_calendar(client: TestClient, as_of: str, status: int) -> None:
    response = client.post(SCREEN, json=parameters(baseline_bundle(), as_of=as_of))
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["issue"][0]["expression"] == ["Parameters.parameter[1]"]


def test_a_body_without_a_length_is_cut_at_the_limit(store_url: str) -> None:
    settings = Settings(allow_unauthenticated=True, database_url=store_url, max_body_bytes=1000)

    def chunks() -> Iterator[bytes]:
        yield b'{"hook": "patient-view", "pad": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    with TestClient(create_app(settings)) as client:
        for path in ("/cds-services/trial-eligibility", SCREEN):
            response = client.post(
                path, content=chunks(), headers={"content-type": "application/json"}
            )
            assert response.status_code == 413, (path, response.text)


# --- an audit trail that cannot be flooded -------------------------------------------------------


def test_a_flood_of_refused_requests_is_limited_and_aggregated(store_url: str) -> None:
    settings = Settings(
        public_base_url=BASE,
        auth_issuer=ISSUER,
        auth_jwks=_jwks(),
        database_url=store_url,
        rate_limit_per_minute=0,
        refused_per_minute=60,
        refused_burst=30,
    )
    long_id = "a" * 1500
    with TestClient(create_app(settings)) as client:
        store: Store = client.app.state.store  # type: ignore[attr-defined]
        statuses = [
            client.get(f"/fhir/GuidanceResponse/{long_id}{n}").status_code for n in range(150)
        ]
        statuses += [
            client.get("/fhir/GuidanceResponse/x", headers=bearer(token(AUDITOR))).status_code
            for _ in range(150)
        ]
    refused = statuses.count(401) + statuses.count(403)
    assert 30 <= refused < 60 and statuses.count(429) == 300 - refused
    assert statuses[:30] == [401] * 30 and statuses[-1] == 429
    rows = audit_rows(store)
    # One row per source, route and minute (two minutes if the run straddles one).
    assert 1 <= len(rows) <= 4
    assert sum(r.occurrences for r in rows) == refused
    route = "GET /fhir/GuidanceResponse/{screening_id}"
    assert {r.description for r in rows} <= {f"401 on {route}", f"403 on {route}"}
    assert long_id[:100] not in stored_text(store)


def test_the_refusal_limit_is_per_address(store_url: str) -> None:
    settings = Settings(
        public_base_url=BASE,
        auth_issuer=ISSUER,
        auth_jwks=_jwks(),
        database_url=store_url,
        refused_per_minute=60,
        refused_burst=3,
    )
    app = create_app(settings)
    with TestClient(app) as one, TestClient(app, client=("10.0.0.2", 50000)) as two:
        assert [one.get("/fhir/GuidanceResponse/x").status_code for _ in range(4)] == [
            401,
            401,
            401,
            429,
        ]
        assert two.get("/fhir/GuidanceResponse/x").status_code == 401


@pytest.mark.parametrize(
    "patient",
    [
        {"id": "a\x00b"},
        {"id": "p" * 9000},
        {"id": "line\nbreak"},
    ],
    ids=["nul", "9000 characters", "newline"],
)
def test_a_posted_patient_id_that_cannot_be_stored_is_400(
    hardened: tuple[TestClient, Store], patient: dict[str, Any]
) -> None:
    client, store = hardened
    bundle = baseline_bundle()
    bundle["entry"][0]["resource"] |= patient
    headers = bearer(token("system/GuidanceResponse.write"))
    response = client.post(SCREEN, json=parameters(bundle), headers=headers)
    assert response.status_code == 400, response.text
    assert store.screenings_for(None, None, 0, 10)[0] == 0
    assert "\x00" not in stored_text(store)


def test_a_patient_without_id_is_cited_by_a_bounded_full_url(
    hardened: tuple[TestClient, Store],
) -> None:
    client, _ = hardened
    bundle = baseline_bundle()
    del bundle["entry"][0]["resource"]["id"]
    headers = bearer(token("system/GuidanceResponse.write"))
    bundle["entry"][0]["fullUrl"] = "urn:uuid:" + "0" * 2000
    assert client.post(SCREEN, json=parameters(bundle), headers=headers).status_code == 400
    bundle["entry"][0]["fullUrl"] = "urn:uuid:5b0c6d1e-4a35-4d0e-9e1b-7f0a2f4b8c11"
    assert client.post(SCREEN, json=parameters(bundle), headers=headers).status_code == 200
