"""Screenings are kept: readable as issued, searchable per patient as FHIR, reproducible,
surviving a restart, and every access leaves an AuditEvent."""

import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from tests import fhir_builders
from tests.test_api import SCREEN, SCREEN_ALL, _same_answer, parameters, validate_r4


def _record(patient_id: str) -> dict[str, Any]:
    bundle = fhir_builders.bundle(
        {"gender": "female", "birthDate": "1985-06-15"},
        [
            {"condition": {"code": "55464009", "onset": "2019-01-01"}},
            {"lab": {"code": "718-7", "date": "2026-05-20", "value": 11.0, "unit": "g/dL"}},
        ],
    )
    bundle["entry"][0]["resource"]["id"] = patient_id
    return bundle


def test_rescreening_the_same_record_gives_the_same_result(client: TestClient) -> None:
    record = _record(f"p-{uuid.uuid4().hex[:8]}")
    first = client.post(SCREEN, json=parameters(record, "2026-06-01")).json()
    second = client.post(SCREEN, json=parameters(record, "2026-06-01")).json()
    assert first["id"] != second["id"]
    assert _same_answer(first) == _same_answer(second)
    store = client.app.state.store  # type: ignore[attr-defined]
    rows = [store.screening(first["id"]), store.screening(second["id"])]
    assert rows[0].record_digest == rows[1].record_digest
    assert rows[0].criteria_version == rows[1].criteria_version == "1.0.0"


def test_a_patients_screenings_are_searchable_newest_first(client: TestClient) -> None:
    patient = f"Patient/p-{uuid.uuid4().hex[:8]}"
    record = _record(patient.split("/")[1])
    issued = [
        client.post(SCREEN_ALL, json=parameters(record, d)).json()
        for d in ("2026-05-01", "2026-06-01")
    ]
    ids = [e["resource"]["id"] for b in issued for e in b["entry"]]
    found = client.get("/fhir/GuidanceResponse", params={"subject": patient}).json()
    validate_r4(found)
    assert found["total"] == 4
    assert {e["resource"]["id"] for e in found["entry"]} == set(ids)
    latest = [e["resource"]["id"] for e in issued[1]["entry"]]
    assert {e["resource"]["id"] for e in found["entry"][:2]} == set(latest)
    module = "https://trialscreen.org/fhir/PlanDefinition/NCT07358988|1.0.0"
    only = client.get("/fhir/GuidanceResponse", params={"subject": patient, "module": module})
    assert only.json()["total"] == 2
    assert all(e["resource"]["moduleCanonical"] == module for e in only.json()["entry"])
    page = client.get(
        "/fhir/GuidanceResponse", params={"subject": patient, "_count": 3, "_sort": "-date"}
    ).json()
    assert len(page["entry"]) == 3
    next_link = next(link["url"] for link in page["link"] if link["relation"] == "next")
    assert next_link.startswith("http://testserver/fhir/GuidanceResponse?")  # the base used
    rest = client.get(next_link).json()
    assert len(rest["entry"]) == 1


def test_search_needs_a_patient_and_a_supported_sort(client: TestClient) -> None:
    assert client.get("/fhir/GuidanceResponse").status_code == 400
    bad = client.get("/fhir/GuidanceResponse", params={"subject": "Patient/x", "_sort": "status"})
    assert bad.status_code == 400
    validate_r4(bad.json())


def test_every_access_is_audited(client: TestClient) -> None:
    patient = f"Patient/p-{uuid.uuid4().hex[:8]}"
    issued = client.post(SCREEN, json=parameters(_record(patient.split("/")[1]))).json()
    client.get(f"/fhir/GuidanceResponse/{issued['id']}")
    client.get("/fhir/GuidanceResponse", params={"subject": patient})
    trail = client.get("/fhir/AuditEvent", params={"patient": patient}).json()
    validate_r4(trail)
    events = [e["resource"] for e in trail["entry"]]
    kinds = [(e["action"], e["subtype"][1]["code"], e["outcome"]) for e in events]
    assert kinds == [("E", "search", "0"), ("R", "read", "0"), ("E", "screen", "0")]
    screen = events[2]
    assert {"reference": f"GuidanceResponse/{issued['id']}"} in [
        x["what"] for x in screen["entity"]
    ]
    assert screen["agent"][0]["who"]["identifier"]["value"].startswith("anonymous@")


def test_a_refused_screening_is_audited_as_a_failure(client: TestClient) -> None:
    patient = f"p-{uuid.uuid4().hex[:8]}"
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "patient", "valueString": patient}],
    }
    assert client.post(SCREEN, json=params).status_code == 404  # not a demo patient
    trail = client.get("/fhir/AuditEvent", params={"patient": f"Patient/{patient}"}).json()
    (event,) = [e["resource"] for e in trail["entry"]]
    assert (event["action"], event["outcome"]) == ("E", "4")


def test_screenings_survive_a_restart(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'kept.db'}", allow_unauthenticated=True
    )
    with TestClient(create_app(settings)) as first:
        issued = first.post(SCREEN, json=parameters(_record("p-restart"))).json()
    with TestClient(create_app(settings)) as second:
        assert second.get(f"/fhir/GuidanceResponse/{issued['id']}").json() == issued


def _found(client: TestClient, kind: str, params: dict[str, str]) -> list[str]:
    response = client.get(f"/fhir/{kind}", params=params, headers={"Prefer": "handling=strict"})
    assert response.status_code == 200, response.text
    bundle = response.json()
    validate_r4(bundle)
    for entry in bundle.get("entry", []):
        assert entry["fullUrl"] == f"http://testserver/fhir/{kind}/{entry['resource']['id']}"
    assert any(link["relation"] == "self" for link in bundle["link"])
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def test_screening_search_honours_each_parameter(client: TestClient) -> None:
    patient_id = f"p-{uuid.uuid4().hex[:8]}"
    complete = _record(patient_id)
    issued = client.post(SCREEN_ALL, json=parameters(complete, "2026-06-01")).json()
    ids = [e["resource"]["id"] for e in issued["entry"]]
    by_trial = {e["resource"]["moduleCanonical"]: e["resource"] for e in issued["entry"]}
    statuses = {r["status"] for r in by_trial.values()}
    patient = f"Patient/{patient_id}"
    assert set(_found(client, "GuidanceResponse", {"patient": patient_id})) == set(ids)
    assert set(_found(client, "GuidanceResponse", {"patient": patient})) == set(ids)
    assert set(_found(client, "GuidanceResponse", {"subject": patient_id})) == set(ids)
    assert _found(client, "GuidanceResponse", {"_id": ids[0]}) == [ids[0]]
    identifier = f"urn:ietf:rfc:3986|urn:uuid:{ids[1]}"
    assert _found(client, "GuidanceResponse", {"identifier": identifier}) == [ids[1]]
    assert _found(client, "GuidanceResponse", {"patient": patient, "request": "x"}) == []
    for status in ("success", "data-required"):
        expected = {r["id"] for r in by_trial.values() if r["status"] == status}
        found = _found(client, "GuidanceResponse", {"patient": patient, "status": status})
        assert set(found) == expected, (status, statuses)
    for canonical, resource in by_trial.items():
        for module in (canonical, canonical.split("|")[0]):
            found = _found(client, "GuidanceResponse", {"patient": patient, "module": module})
            assert found == [resource["id"]]
    later = client.post(SCREEN_ALL, json=parameters(complete, "2026-07-01")).json()
    newest = {e["resource"]["id"] for e in later["entry"]}
    oldest_first = _found(client, "GuidanceResponse", {"patient": patient, "_sort": "date"})
    assert set(oldest_first[2:]) == newest
    count = client.get("/fhir/GuidanceResponse", params={"patient": patient, "_count": "0"})
    assert count.json()["total"] == 4 and "entry" not in count.json()
    capped = client.get("/fhir/GuidanceResponse", params={"patient": patient, "_count": "1000"})
    assert capped.status_code == 200 and len(capped.json()["entry"]) == 4
    elements = client.get(
        "/fhir/GuidanceResponse", params={"patient": patient, "_elements": "subject"}
    ).json()
    validate_r4(elements)
    assert set(elements["entry"][0]["resource"]) == {
        "resourceType",
        "id",
        "meta",
        "subject",
        "moduleCanonical",
        "status",
    }


def test_audit_search_honours_each_parameter(client: TestClient) -> None:
    patient_id = f"p-{uuid.uuid4().hex[:8]}"
    patient = f"Patient/{patient_id}"
    issued = client.post(SCREEN, json=parameters(_record(patient_id))).json()
    client.get(f"/fhir/GuidanceResponse/{issued['id']}")
    # Oldest first: the screening and the read; each later search is audited after them.
    events = _found(client, "AuditEvent", {"patient": patient, "_sort": "date"})
    assert len(events) == 2
    bare = _found(client, "AuditEvent", {"patient": patient_id, "_sort": "date"})
    assert bare[:2] == events
    trail = client.get("/fhir/AuditEvent", params={"patient": patient, "_sort": "date"}).json()
    agent = trail["entry"][0]["resource"]["agent"][0]["who"]["identifier"]
    recorded = trail["entry"][0]["resource"]["recorded"][:10]
    checks: list[tuple[dict[str, str], list[str]]] = [
        ({"date": f"ge{recorded}"}, events),
        ({"date": recorded}, events),
        ({"date": "lt2001-01-01"}, []),
        ({"date": "ge2001-01,lt2001-02"}, events),
        ({"type": "rest"}, events),
        ({"type": "http://terminology.hl7.org/CodeSystem/audit-event-type|rest"}, events),
        ({"type": "login"}, []),
        ({"agent": agent["value"]}, events),
        ({"agent:identifier": f"{agent['system']}|{agent['value']}"}, events),
        ({"agent": "someone-else"}, []),
        ({"entity": f"GuidanceResponse/{issued['id']}"}, events),
        ({"entity": "GuidanceResponse/other"}, []),
        ({"_id": events[1]}, [events[1]]),
    ]
    for extra, expected in checks:
        found = _found(client, "AuditEvent", {"patient": patient, **extra, "_sort": "date"})
        assert found[:2] == expected if expected else set(found).isdisjoint(events), extra
    assert _found(client, "AuditEvent", {"_id": events[1]}) == [events[1]]


def test_audit_date_needs_a_date(client: TestClient) -> None:
    for value in ("yesterday", "sa2026-01-01"):
        response = client.get("/fhir/AuditEvent", params={"date": value})
        assert response.status_code == 400
        validate_r4(response.json())
