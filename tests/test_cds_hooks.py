"""The CDS Hooks service end to end: discovery, the patient-view hook (prefetch, fetch from the
caller's FHIR server, both mixed, the pending card), the SSRF guard, feedback, CORS.

The EHR is a real FHIR server (sekmet-fhir, the ``fhir_server`` fixture) seeded with the demo
patients: prefetch is filled by running the service's own templates on it, and fetching goes to
it. A hook's answer must agree with ``$screen`` on the same record: a card for each trial the
patient is not ineligible for, linking to a stored report equal to the REST answer. Every
response is held to the card rules of the specification.
"""

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, col, select

from app.cds.service import interrupted
from app.core.settings import CdsClient, Settings
from app.main import create_app
from app.store.database import PendingScreening, Store
from tests.fhir_server import STRICT, FhirServer
from tests.mock_ehr import MockEhr
from tests.test_api import _same_answer, parameters, result_parameters, validate_r4
from tests.test_cds_trust import bearer, claims, jwks, mint

Json = dict[str, Any]
DEMO = Path(__file__).resolve().parent.parent / "app" / "demo" / "patients"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cds"
PATIENT_IDS = sorted(p.stem for p in DEMO.glob("*.json"))
BASE = "http://testserver"
SERVICE = "/cds-services/trial-eligibility"
FEEDBACK = f"{SERVICE}/feedback"
ISS = "https://ehr.example.org"
TOKEN = "patient/*.read"
FHIR_AUTHORIZATION = {
    "access_token": "x",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": TOKEN,
    "subject": "cds",
}
SLE_TRIAL = "NCT07358988"
"""The trial every demo patient is a possible candidate for (needs data), not ineligible."""


def token(path: str = SERVICE, iss: str = ISS) -> str:
    return mint("ec-1", payload=claims(iss, aud=f"{BASE}{path}"))


# --- the card rules -------------------------------------------------------------------------------

INDICATORS = {"info", "warning", "critical"}
SELECTION_BEHAVIORS = {"at-most-one", "any"}


def empty_values(value: Any, where: str = "$") -> list[str]:
    """Where a JSON document holds null, "", [] or {} (CDS Hooks forbids them)."""
    if value is None or value in ("", [], {}):
        return [where]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in empty_values(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in empty_values(v, f"{where}[{i}]")]
    return []


def _absolute_http(url: Any) -> bool:
    parts = urlsplit(url) if isinstance(url, str) else None
    return parts is not None and parts.scheme in {"http", "https"} and bool(parts.netloc)


def _coding(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("system"), str)
        and isinstance(value.get("code"), str)
        and set(value) <= {"system", "code", "display"}
    )


def assert_card_rules(body: Json) -> None:
    assert set(body) <= {"cards", "systemActions"}, body
    cards = body["cards"]
    assert isinstance(cards, list)
    # No guidance is {"cards": []}: the one empty value allowed.
    rest = {k: v for k, v in body.items() if k != "cards"}
    assert empty_values(cards) in ([], ["$"]) and (not rest or empty_values(rest) == []), body
    for card in cards:
        summary = card["summary"]
        assert isinstance(summary, str) and 0 < len(summary) < 140, summary
        assert not re.search(r"lupus|sle", summary, re.IGNORECASE), summary
        assert card["indicator"] in INDICATORS
        assert isinstance(card["source"]["label"], str)
        if "url" in card["source"]:
            assert _absolute_http(card["source"]["url"])
        if "topic" in card["source"]:
            assert _coding(card["source"]["topic"])
        assert isinstance(card.get("detail", ""), str)  # markdown
        assert isinstance(card["uuid"], str) and uuid.UUID(card["uuid"])
        for link in card.get("links", []):
            assert isinstance(link["label"], str)
            assert _absolute_http(link["url"]), link
            assert link["type"] in {"absolute", "smart"}
            if link["type"] == "absolute":
                assert "appContext" not in link  # only for smart links
            else:
                assert isinstance(link["appContext"], str)
        if card.get("suggestions"):
            assert card["selectionBehavior"] in SELECTION_BEHAVIORS
            for suggestion in card["suggestions"]:
                assert isinstance(suggestion["label"], str)
                uuid.UUID(suggestion["uuid"])
                for action in suggestion.get("actions", []):
                    assert action["type"] in {"create", "update", "delete"}
                    assert isinstance(action["description"], str)
                    if "resource" in action:
                        validate_r4(action["resource"])
        for reason in card.get("overrideReasons", []):
            assert _coding(reason) and isinstance(reason["display"], str), reason


# --- the service under test -----------------------------------------------------------------------


@dataclass
class Hooks:
    client: TestClient
    app: FastAPI
    templates: dict[str, str] = field(default_factory=dict)

    def call(self, body: Json, path: str = SERVICE, jwt: str | None = None) -> httpx.Response:
        """POST a hook call with a fresh token; a 200 answer is held to the card rules."""
        response: httpx.Response = self.client.post(
            path, json=body, headers=bearer(jwt or token(path))
        )
        if response.status_code == 200 and path == SERVICE:
            assert_card_rules(response.json())
        return response

    def cards(self, body: Json) -> list[Json]:
        response = self.call(body)
        assert response.status_code == 200, response.text
        cards: list[Json] = response.json()["cards"]
        return cards

    def report(self, card_or_link: Json) -> httpx.Response:
        """The stored GuidanceResponse behind a card's report page link."""
        link = card_or_link["links"][0] if "links" in card_or_link else card_or_link
        response: httpx.Response = self.client.get(fhir_path(link))
        return response

    def reports(self, cards: list[Json]) -> dict[str, Json]:
        """Trial id -> the stored report each card links to."""
        out: dict[str, Json] = {}
        for card in cards:
            response = self.report(card)
            assert response.status_code == 200, response.text
            out[trial_of(response.json())] = response.json()
        return out

    def rest(self, patient_id: str) -> dict[str, Json]:
        """Trial id -> the REST answer for the patient's demo record, as of today."""
        bundle = json.loads((DEMO / f"{patient_id}.json").read_text())
        today = datetime.now(UTC).date().isoformat()
        response = self.client.post("/fhir/ResearchStudy/$screen", json=parameters(bundle, today))
        assert response.status_code == 200, response.text
        return {trial_of(e["resource"]): e["resource"] for e in response.json()["entry"]}


def fhir_path(link: Json) -> str:
    """A card links to the report page, ``/ui/reports/{id}``; the same screening as FHIR."""
    path = urlsplit(str(link["url"])).path
    assert path.startswith("/ui/reports/"), link
    return f"/fhir/GuidanceResponse/{path.rsplit('/', 1)[1]}"


def trial_of(guidance: Json) -> str:
    return str(guidance["moduleCanonical"]).split("/")[-1].split("|")[0]


def eligibility(guidance: Json) -> str:
    return str(result_parameters(guidance)["parameter"][0]["valueCode"])


def criterion_result(guidance: Json, criterion_id: str) -> Json:
    for p in result_parameters(guidance)["parameter"]:
        if p["name"] != "criterion":
            continue
        parts = {q["name"]: q for q in p["part"] if q["name"] != "criterion"}
        if parts["id"]["valueString"] == criterion_id:
            return {k: next(v for n, v in q.items() if n != "name") for k, q in parts.items()}
    raise AssertionError(f"no criterion {criterion_id}")


def hook_settings(fhir_server: FhirServer, **overrides: Any) -> Settings:
    values: Json = {
        "public_base_url": BASE,
        "cds_clients": (
            CdsClient(iss=ISS, jwks=jwks("rsa-1", "ec-1"), fhir_bases=(fhir_server.base_url,)),
        ),
        "cds_fetch_budget": 30.0,  # the real server is never too slow: no pending card
        "allow_unauthenticated": True,  # for the REST calls these tests compare with
        "ehr_headers": {"Prefer": "handling=strict"},
    }
    return Settings(**(values | overrides))


def _running(app: FastAPI) -> Iterator[Hooks]:
    with TestClient(app) as client:
        (service,) = client.get("/cds-services").json()["services"]
        yield Hooks(client, app, service["prefetch"])


@pytest.fixture(scope="module")
def hooks(fhir_server: FhirServer) -> Iterator[Hooks]:
    yield from _running(create_app(hook_settings(fhir_server)))


@pytest.fixture(scope="module")
def hooks_all(fhir_server: FhirServer) -> Iterator[Hooks]:
    """Shows a card for ineligible patients too."""
    yield from _running(create_app(hook_settings(fhir_server, cds_show_ineligible=True)))


# --- prefetch from the real server ----------------------------------------------------------------

_PREFETCHED: dict[tuple[str, str], Json] = {}


def fill(template: str, patient_id: str, fhir_server: FhirServer) -> Json:
    """Run one prefetch template on the FHIR server as an EHR would: strict handling, one page
    (no links followed), a page size large enough for the whole answer."""
    cache_key = (template, patient_id)
    if cache_key not in _PREFETCHED:
        query = template.replace("{{context.patientId}}", patient_id)
        url = f"{fhir_server.base_url}/{query}"
        if "?" in query:
            url += "&_count=1000"
        response = httpx.get(url, headers=STRICT, timeout=60.0)
        assert response.status_code == 200, (query, response.text)
        resource = response.json()
        if resource["resourceType"] == "Bundle":
            assert not [x for x in resource.get("link", []) if x["relation"] == "next"], query
        _PREFETCHED[cache_key] = resource
    return _PREFETCHED[cache_key]


def prefetch_for(
    hooks: Hooks, patient_id: str, fhir_server: FhirServer, keys: list[str] | None = None
) -> Json:
    wanted = list(hooks.templates) if keys is None else keys
    return {k: fill(hooks.templates[k], patient_id, fhir_server) for k in wanted}


def hook_request(
    patient_id: str, prefetch: Json | None = None, fhir_server: str | None = None
) -> Json:
    body: Json = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
        body["fhirAuthorization"] = FHIR_AUTHORIZATION
    return body


def assert_agrees_with_rest(hooks: Hooks, patient_id: str, cards: list[Json]) -> None:
    """A card for each trial the patient is not ineligible for, linking to a stored report
    equal to the REST answer for the same record."""
    rest = hooks.rest(patient_id)
    reports = hooks.reports(cards)
    assert len(reports) == len(cards)
    assert set(reports) == {t for t, g in rest.items() if eligibility(g) != "ineligible"}
    for card, (trial, report) in zip(cards, reports.items(), strict=True):
        assert trial in card["summary"]
        assert _same_answer(report) == _same_answer(rest[trial]), trial


def card_shapes(hooks: Hooks, cards: list[Json]) -> list[str]:
    """The cards with what differs per call (screening ids, uuids derived from them) masked."""
    shapes = []
    for card in cards:
        text = json.dumps(card, sort_keys=True)
        screening_id = urlsplit(card["links"][0]["url"]).path.rsplit("/", 1)[1]
        for suggestion in card.get("suggestions", []):
            text = text.replace(suggestion["uuid"], "<suggestion>")
        shapes.append(text.replace(card["uuid"], "<card>").replace(screening_id, "<id>"))
    return sorted(shapes)


# --- discovery ------------------------------------------------------------------------------------

_COMPARATOR = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)\d")
_TOKEN = "{{context.patientId}}"


def test_discovery_lists_the_patient_view_service(hooks: Hooks) -> None:
    response = hooks.client.get("/cds-services")
    assert response.status_code == 200
    body = response.json()
    assert empty_values(body) == []
    (service,) = body["services"]
    assert service["hook"] == "patient-view"
    assert service["id"] == "trial-eligibility"
    assert service["title"] and service["description"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == f"Patient/{_TOKEN}"
    for key, template in prefetch.items():
        assert set(re.findall(r"\{\{[^}]*\}\}", template)) == {_TOKEN}, key
        if key == "patient":
            continue
        resource_type, _, query = template.partition("?")
        assert re.fullmatch(r"[A-Z][A-Za-z]+", resource_type), key
        params = [p.partition("=") for p in query.split("&")]
        names = [name for name, _, _ in params]
        assert ("patient", "=", _TOKEN) in params, key
        assert len(names) == len(set(names)), key
        for name, _, value in params:
            assert ":" not in name, (key, name)  # no modifiers
            assert not name.startswith("_"), (key, name)  # no _include, _revinclude, _has
            assert name not in {"date", "effective", "onset-date", "authoredon"}, (key, name)
            assert not _COMPARATOR.match(value), (key, name, value)
            if name != "patient":
                assert name in {"code", "intent", "status", "category"}, (key, name)
                assert all(v and "{{" not in v for v in value.split(",")), (key, value)


@pytest.mark.parametrize("patient_id", PATIENT_IDS[:1])
def test_every_prefetch_template_runs_on_a_real_fhir_server(
    hooks: Hooks, fhir_server: FhirServer, patient_id: str
) -> None:
    for key, template in hooks.templates.items():
        url = f"{fhir_server.base_url}/{template.replace(_TOKEN, patient_id)}"
        response = httpx.get(url, headers=STRICT, timeout=60.0)
        assert response.status_code == 200, (key, response.text)
        resource = response.json()
        if key == "patient":
            assert resource["resourceType"] == "Patient" and resource["id"] == patient_id
        else:
            assert resource["resourceType"] == "Bundle" and resource["type"] == "searchset"
    assert any(fill(t, patient_id, fhir_server).get("entry") for k, t in hooks.templates.items())


# --- the hook: where the record comes from --------------------------------------------------------


@pytest.mark.parametrize("patient_id", PATIENT_IDS, ids=lambda p: p[:8])
def test_prefetch_only_agrees_with_rest(
    hooks: Hooks, fhir_server: FhirServer, patient_id: str
) -> None:
    cards = hooks.cards(hook_request(patient_id, prefetch_for(hooks, patient_id, fhir_server)))
    assert [SLE_TRIAL in c["summary"] for c in cards] == [True]
    assert_agrees_with_rest(hooks, patient_id, cards)


@pytest.mark.parametrize("patient_id", PATIENT_IDS, ids=lambda p: p[:8])
def test_fetch_only_gives_the_same_cards_as_prefetch_only(
    hooks: Hooks, fhir_server: FhirServer, patient_id: str
) -> None:
    fetched = hooks.cards(hook_request(patient_id, fhir_server=fhir_server.base_url))
    assert_agrees_with_rest(hooks, patient_id, fetched)
    prefetched = hooks.cards(hook_request(patient_id, prefetch_for(hooks, patient_id, fhir_server)))
    assert card_shapes(hooks, fetched) == card_shapes(hooks, prefetched)


@pytest.mark.parametrize("patient_id", PATIENT_IDS[:2], ids=lambda p: p[:8])
@pytest.mark.parametrize("half", [0, 1], ids=["even-keys", "odd-keys"])
def test_half_prefetched_half_fetched_gives_the_same_cards(
    hooks: Hooks, fhir_server: FhirServer, patient_id: str, half: int
) -> None:
    keys = list(hooks.templates)[half::2]
    body = hook_request(
        patient_id, prefetch_for(hooks, patient_id, fhir_server, keys), fhir_server.base_url
    )
    mixed = hooks.cards(body)
    assert_agrees_with_rest(hooks, patient_id, mixed)
    prefetched = hooks.cards(hook_request(patient_id, prefetch_for(hooks, patient_id, fhir_server)))
    assert card_shapes(hooks, mixed) == card_shapes(hooks, prefetched)


def test_a_bundle_with_a_next_link_is_fetched_instead(
    hooks: Hooks, fhir_server: FhirServer
) -> None:
    patient_id = PATIENT_IDS[0]
    prefetch = prefetch_for(hooks, patient_id, fhir_server)
    conditions = dict(prefetch["conditions"])
    conditions["entry"] = conditions["entry"][:1]
    conditions["link"] = [{"relation": "next", "url": f"{fhir_server.base_url}/Condition?x"}]
    prefetch["conditions"] = conditions
    body = hook_request(patient_id, prefetch, fhir_server.base_url)
    assert_agrees_with_rest(hooks, patient_id, hooks.cards(body))
    # Without a server to fetch from, the incomplete Bundle cannot be used.
    assert hooks.call(hook_request(patient_id, prefetch)).status_code == 412


def test_null_prefetch_means_no_data(
    hooks: Hooks, hooks_all: Hooks, fhir_server: FhirServer
) -> None:
    patient_id = PATIENT_IDS[0]
    prefetch = prefetch_for(hooks, patient_id, fhir_server) | {"conditions": None}
    # No condition on record: no SLE diagnosis, so no longer a candidate for the SLE trial.
    assert hooks.cards(hook_request(patient_id, prefetch)) == []
    cards = hooks_all.cards(hook_request(patient_id, prefetch))
    reports = hooks_all.reports(cards)
    assert set(reports) == set(hooks.rest(patient_id))
    report = reports[SLE_TRIAL]
    assert eligibility(report) == "ineligible"
    sle = criterion_result(report, "I3")
    assert sle["result"] == "not-met"
    assert "No record found" in sle["reason"], sle
    assert "evaluationMessage" not in report  # "no data" is an answer, not a failed fetch
    card = next(c for c in cards if SLE_TRIAL in c["summary"])
    assert "not eligible" in card["summary"]
    assert "I3" in card["detail"]


# --- 412 and the SSRF guard -----------------------------------------------------------------------


def test_missing_prefetch_and_no_fhir_server_is_412(hooks: Hooks, fhir_server: FhirServer) -> None:
    patient_id = PATIENT_IDS[0]
    full = prefetch_for(hooks, patient_id, fhir_server)
    for dropped in ("patient", "conditions", "observations-1"):
        prefetch = {k: v for k, v in full.items() if k != dropped}
        response = hooks.call(hook_request(patient_id, prefetch))
        assert response.status_code == 412, (dropped, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    assert hooks.call(hook_request(patient_id)).status_code == 412


@dataclass
class Guarded:
    hooks: Hooks
    ehr: MockEhr


REGISTERED = "http://ehr.test/fhir"
OTHER_ISSUER = "https://other-ehr.example.org"
OTHER_BASE = "http://other-ehr.test/fhir"


@pytest.fixture(scope="module")
def guarded() -> Iterator[Guarded]:
    """Every EHR request goes to an in-memory FHIR server that records it, whatever the host:
    a test can tell that no request at all went out."""
    patient_id = PATIENT_IDS[0]
    ehr = MockEhr(json.loads((DEMO / f"{patient_id}.json").read_text()), base=REGISTERED)
    settings = Settings(
        public_base_url=BASE,
        allow_unauthenticated=True,
        cds_clients=(
            CdsClient(iss=ISS, jwks=jwks("rsa-1", "ec-1"), fhir_bases=(REGISTERED,)),
            CdsClient(iss=OTHER_ISSUER, jwks=jwks("rsa-1"), fhir_bases=(OTHER_BASE,)),
        ),
        cds_fetch_budget=30.0,
    )
    for hooks in _running(create_app(settings, ehr_transport=ehr.transport())):
        yield Guarded(hooks, ehr)


def test_a_registered_fhir_server_is_fetched_from_with_the_token_given(
    guarded: Guarded,
) -> None:
    before = len(guarded.ehr.requests)
    body = hook_request(PATIENT_IDS[0], fhir_server=REGISTERED)
    cards = guarded.hooks.cards(body)
    assert [SLE_TRIAL in c["summary"] for c in cards] == [True]
    sent = guarded.ehr.requests[before:]
    assert sent
    assert {str(r.url).startswith(f"{REGISTERED}/") for r in sent} == {True}
    assert {r.headers["authorization"] for r in sent} == {"Bearer x"}


UNREGISTERED = [
    "http://127.0.0.1:9/fhir",
    "http://hooks.smarthealthit.org:9080",
    OTHER_BASE,  # registered, but for another issuer
    "https://ehr.test/fhir",
    "http://ehr.test/fhir/Patient",
    "http://ehr.test/fhi",
    "http://ehr.test:8080/fhir",
    "http://ehr.test.evil.example/fhir",
    "http://ehr.test/fhir@evil.example/fhir",
    "http://evil.example/http://ehr.test/fhir",
    "http://ehr.test/fhir/../../evil",
    "http://ehr.test/fhir?x=1",
    "http://ehr.test/fhir#x",
]


@pytest.mark.parametrize("server", UNREGISTERED)
def test_an_unregistered_fhir_server_is_never_contacted(guarded: Guarded, server: str) -> None:
    before = len(guarded.ehr.requests)
    response = guarded.hooks.call(hook_request(PATIENT_IDS[0], fhir_server=server))
    assert response.status_code == 412, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert guarded.ehr.requests[before:] == []


def test_a_registered_server_without_fhir_authorization_is_412(guarded: Guarded) -> None:
    before = len(guarded.ehr.requests)
    body = hook_request(PATIENT_IDS[0], fhir_server=REGISTERED)
    del body["fhirAuthorization"]
    assert guarded.hooks.call(body).status_code == 412
    assert guarded.ehr.requests[before:] == []


def test_the_other_issuer_may_use_its_own_server_only(guarded: Guarded) -> None:
    before = len(guarded.ehr.requests)
    jwt = mint("rsa-1", payload=claims(OTHER_ISSUER, aud=f"{BASE}{SERVICE}"))
    body = hook_request(PATIENT_IDS[0], fhir_server=REGISTERED)
    assert guarded.hooks.call(body, jwt=jwt).status_code == 412
    assert guarded.ehr.requests[before:] == []
    jwt = mint("rsa-1", payload=claims(OTHER_ISSUER, aud=f"{BASE}{SERVICE}"))
    body = hook_request(PATIENT_IDS[0], fhir_server=OTHER_BASE)
    assert guarded.hooks.call(body, jwt=jwt).status_code == 200
    assert {r.url.host for r in guarded.ehr.requests[before:]} == {"other-ehr.test"}


# --- the pending card -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hooks_slow(fhir_server: FhirServer) -> Iterator[Hooks]:
    """No time at all for fetching: any fetch answers with the pending card."""
    yield from _running(create_app(hook_settings(fhir_server, cds_fetch_budget=0.0)))


def _poll(hooks: Hooks, link: Json, seconds: float = 20.0) -> Json:
    deadline = time.monotonic() + seconds
    while True:
        response = hooks.report(link)
        if response.status_code == 200:
            report: Json = response.json()
            return report
        assert response.status_code == 404, response.text
        assert time.monotonic() < deadline, f"no report at {link['url']} after {seconds} s"
        time.sleep(0.1)


def test_a_slow_ehr_gets_a_pending_card_and_the_reports_follow(
    hooks_slow: Hooks, fhir_server: FhirServer
) -> None:
    patient_id = PATIENT_IDS[1]
    started = time.monotonic()
    cards = hooks_slow.cards(hook_request(patient_id, fhir_server=fhir_server.base_url))
    assert time.monotonic() - started < 5.0
    (card,) = cards
    assert card["indicator"] == "info"
    assert "suggestions" not in card
    rest = hooks_slow.rest(patient_id)
    assert len(card["links"]) == len(rest)
    reports = {trial_of(r): r for r in (_poll(hooks_slow, link) for link in card["links"])}
    assert set(reports) == set(rest)
    for trial, report in reports.items():
        assert _same_answer(report) == _same_answer(rest[trial]), trial
        label = next(x["label"] for x in card["links"] if report["id"] in x["url"])
        assert label.split()[0] in {"HN2301", "KN5501"}
    # Done: nothing is left pending (the reports replaced their pending rows in one transaction).
    with Session(hooks_slow.app.state.store.engine) as session:
        ids = [r["id"] for r in reports.values()]
        assert not session.exec(
            select(PendingScreening).where(col(PendingScreening.id).in_(ids))
        ).all()


def test_complete_prefetch_needs_no_fetch_time(hooks_slow: Hooks, fhir_server: FhirServer) -> None:
    patient_id = PATIENT_IDS[1]
    cards = hooks_slow.cards(
        hook_request(patient_id, prefetch_for(hooks_slow, patient_id, fhir_server))
    )
    assert_agrees_with_rest(hooks_slow, patient_id, cards)


# --- feedback -------------------------------------------------------------------------------------


def _post_feedback(hooks: Hooks, body: Json) -> httpx.Response:
    return hooks.call(body, path=FEEDBACK)


def _screening_id(card: Json) -> str:
    return urlsplit(str(card["links"][0]["url"])).path.rsplit("/", 1)[1]


def test_feedback_is_stored_for_the_card(hooks: Hooks, fhir_server: FhirServer) -> None:
    patient_id = PATIENT_IDS[2]
    (card,) = hooks.cards(hook_request(patient_id, prefetch_for(hooks, patient_id, fhir_server)))
    screening_id = _screening_id(card)
    first, second = _moments(2)
    accepted = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": first.isoformat().replace("+00:00", "Z"),
    }
    # A reason that does not quiet the card (tests/test_cds_cards.py has those).
    not_appropriate = next(r for r in card["overrideReasons"] if r["code"] == "not-appropriate")
    reason = {
        "reason": {k: not_appropriate[k] for k in ("system", "code")},
        "userComment": "Seen by the trial team last week.",
    }
    overridden = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": reason,
        "outcomeTimestamp": second.isoformat(),
    }
    for item in (accepted, overridden):
        response = _post_feedback(hooks, {"feedback": [item]})
        assert response.status_code == 200, response.text
    rows = sorted(hooks.app.state.store.feedback_for(screening_id), key=lambda r: r.outcome)
    assert [(r.outcome, r.card_uuid) for r in rows] == [
        ("accepted", card["uuid"]),
        ("overridden", card["uuid"]),
    ]
    assert rows[0].override_reason is None
    assert json.loads(rows[1].override_reason) == reason
    stamps = [r.outcome_timestamp.replace(tzinfo=None) for r in rows]
    assert stamps == [first.replace(tzinfo=None), second.replace(tzinfo=None)]


def _moments(count: int) -> list[datetime]:
    """Times a clinician could have acted on a card just shown: now, to the second, and the
    seconds before (never before the card was issued, never in the future)."""
    now = datetime.now(UTC).replace(microsecond=0)
    return [now - timedelta(seconds=count - 1 - n) for n in range(count)]


def test_the_spec_feedback_example(hooks: Hooks, fhir_server: FhirServer) -> None:
    example = json.loads((FIXTURES / "feedback.json").read_text())
    # As published, it names a card this service never issued.
    response = _post_feedback(hooks, example)
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    patient_id = PATIENT_IDS[3]
    (card,) = hooks.cards(hook_request(patient_id, prefetch_for(hooks, patient_id, fhir_server)))
    item = example["feedback"][0]
    item["card"] = card["uuid"]
    # Its reason comes from the example's own code system, and its time (2020) is before the
    # card was issued: neither is something this card offered or a real time of acting on it.
    assert _post_feedback(hooks, example).status_code == 400
    item["outcomeTimestamp"] = _moments(1)[0].isoformat()
    assert _post_feedback(hooks, example).status_code == 400
    offered = next(r for r in card["overrideReasons"] if r["code"] == "not-appropriate")
    item["overrideReason"]["reason"] = {k: offered[k] for k in ("system", "code")}
    assert _post_feedback(hooks, example).status_code == 200
    (row,) = hooks.app.state.store.feedback_for(_screening_id(card))
    assert row.outcome == "overridden"
    assert json.loads(row.override_reason)["userComment"] == "A comment entered by the clinician."
    stored = row.outcome_timestamp.replace(tzinfo=None)  # SQLite keeps no zone: UTC
    assert stored == datetime.fromisoformat(item["outcomeTimestamp"]).replace(tzinfo=None)


@pytest.mark.parametrize(
    "item",
    [
        {"card": "not-a-card", "outcome": "accepted"},
        {"card": str(uuid.uuid4()), "outcome": "overridden"},
    ],
)
def test_feedback_for_an_unknown_card_is_404(hooks: Hooks, item: Json) -> None:
    response = _post_feedback(hooks, {"feedback": [item]})
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "body",
    [{}, {"feedback": []}, {"feedback": [{"card": "x", "outcome": "ignored"}]}],
    ids=["no feedback", "empty", "bad outcome"],
)
def test_malformed_feedback_is_400(hooks: Hooks, body: Json) -> None:
    assert _post_feedback(hooks, body).status_code == 400


def test_feedback_on_the_pending_card_is_accepted(
    hooks_slow: Hooks, fhir_server: FhirServer
) -> None:
    (card,) = hooks_slow.cards(hook_request(PATIENT_IDS[1], fhir_server=fhir_server.base_url))
    for link in card["links"]:
        _poll(hooks_slow, link)
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": datetime.now(UTC).isoformat(),
    }
    assert _post_feedback(hooks_slow, {"feedback": [item]}).status_code == 200


# --- what is shown --------------------------------------------------------------------------------


@pytest.mark.parametrize("patient_id", PATIENT_IDS[:2], ids=lambda p: p[:8])
def test_ineligible_trials_get_a_card_only_when_configured(
    hooks: Hooks, hooks_all: Hooks, fhir_server: FhirServer, patient_id: str
) -> None:
    rest = hooks.rest(patient_id)
    ineligible = {t for t, g in rest.items() if eligibility(g) == "ineligible"}
    assert ineligible  # the demo patients are all ineligible for one trial
    prefetch = prefetch_for(hooks, patient_id, fhir_server)
    shown = hooks.reports(hooks.cards(hook_request(patient_id, prefetch)))
    assert not ineligible & set(shown)
    cards = hooks_all.cards(hook_request(patient_id, prefetch))
    every = hooks_all.reports(cards)
    assert set(every) == set(rest)
    for trial, report in every.items():
        assert _same_answer(report) == _same_answer(rest[trial])
    for card in cards:
        if any(t in card["summary"] for t in ineligible):
            assert "not eligible" in card["summary"]


# --- CORS -----------------------------------------------------------------------------------------

SANDBOX = "https://sandbox.cds-hooks.org"


@pytest.fixture(scope="module")
def cors_client() -> Iterator[TestClient]:
    settings = Settings(public_base_url=BASE, cors_origins=(SANDBOX,))
    with TestClient(create_app(settings)) as client:
        yield client


def _preflight(client: TestClient, origin: str, path: str = SERVICE) -> httpx.Response:
    response: httpx.Response = client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type",
        },
    )
    return response


@pytest.mark.parametrize("path", [SERVICE, FEEDBACK, "/cds-services"])
def test_cors_preflight_from_the_sandbox_is_allowed(cors_client: TestClient, path: str) -> None:
    response = _preflight(cors_client, SANDBOX, path)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SANDBOX
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    discovery = cors_client.get("/cds-services", headers={"Origin": SANDBOX})
    assert discovery.headers["access-control-allow-origin"] == SANDBOX


def test_cors_refuses_other_origins(cors_client: TestClient) -> None:
    response = _preflight(cors_client, "https://evil.example")
    assert "access-control-allow-origin" not in response.headers
    discovery = cors_client.get("/cds-services", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in discovery.headers


# --- the specification's example request ----------------------------------------------------------


def _spec_example() -> Json:
    example: Json = json.loads((FIXTURES / "patient-view-request.json").read_text())
    return example


def test_the_spec_example_request_is_answered_with_cards(
    hooks: Hooks, fhir_server: FhirServer
) -> None:
    example = _spec_example()
    patient_id = example["context"]["patientId"]
    # The example's own FHIR server is not registered for the caller: point it at ours.
    example["fhirServer"] = fhir_server.base_url
    response = hooks.call(example)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["cards"]
    expected = hooks.cards(hook_request(patient_id, prefetch_for(hooks, patient_id, fhir_server)))
    assert set(hooks.reports(body["cards"])) == set(hooks.reports(expected)) == {SLE_TRIAL}


def test_the_spec_example_request_as_published_is_412_and_calls_nobody(
    guarded: Guarded,
) -> None:
    before = len(guarded.ehr.requests)
    response = guarded.hooks.call(_spec_example())
    assert response.status_code == 412
    assert guarded.ehr.requests[before:] == []


@pytest.mark.parametrize(
    ("change", "status"),
    [
        (lambda b: b | {"hook": "order-sign"}, 400),
        (lambda b: {k: v for k, v in b.items() if k != "hookInstance"}, 400),
        (lambda b: b | {"context": {"userId": "Practitioner/example"}}, 400),
        (lambda b: b | {"context": {"patientId": "../Patient/x"}}, 400),
        (lambda b: b | {"prefetch": ["not", "an", "object"]}, 400),
    ],
    ids=["another hook", "no hookInstance", "no patientId", "bad patientId", "prefetch array"],
)
def test_malformed_hook_calls_are_400(
    hooks: Hooks, change: Callable[[Json], Json], status: int
) -> None:
    response = hooks.call(change(_spec_example()))
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


def test_an_unknown_service_is_404(hooks: Hooks) -> None:
    path = "/cds-services/no-such-service"
    assert hooks.call(_spec_example(), path=path).status_code == 404


def test_a_prefetched_order_keeps_the_medication_its_bundle_carries() -> None:
    """Prefetch templates carry no _include, but an EHR may add the referenced Medication to the
    MedicationRequest Bundle: it is kept, so the order's product is known; without it the
    reference stays unresolved (an unknown drug, reviewed) rather than the order being dropped."""
    from app.cds.hook import from_prefetch
    from app.ehr.fetch_plan import Search
    from app.engine.sources import MEDICATIONS
    from app.fhir_io.bundle_reader import read_bundle

    search = Search(
        "medication-requests",
        "MedicationRequest",
        {"patient": "p", "intent": "order,plan", "_include": "MedicationRequest:medication"},
        MEDICATIONS,
    )
    order = {
        "resourceType": "MedicationRequest",
        "id": "o1",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "Medication/m1"},
        "subject": {"reference": "Patient/p"},
        "authoredOn": "2026-01-10",
    }
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "8640"}]
        },
    }
    entries = [
        {"resource": order, "search": {"mode": "match"}},
        {"resource": medication, "search": {"mode": "include"}},
    ]
    prefetch = {
        "medication-requests": {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    }
    _, parts, to_fetch = from_prefetch(prefetch, [search])
    assert to_fetch == [] and [r["resourceType"] for r in parts[0][1]] == [
        "MedicationRequest",
        "Medication",
    ]
    patient = {"resourceType": "Patient", "id": "p"}
    bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in (patient, *parts[0][1])]}
    (use,) = read_bundle(bundle).medications
    assert use.unresolved is None and use.codes == (
        ("http://www.nlm.nih.gov/research/umls/rxnorm", "8640"),
    )
    without = {"resourceType": "Bundle", "entry": [{"resource": patient}, {"resource": order}]}
    (bare,) = read_bundle(without).medications
    assert bare.unresolved == "Medication/m1" and bare.codes == ()


# --- hostile prefetch (issue 12) ------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [{"link": "next"}, {"link": 42}, {"entry": 3}, {"entry": "all"}],
    ids=["link string", "link number", "entry number", "entry string"],
)
def test_a_malformed_prefetch_bundle_marks_its_part_incomplete(
    hooks_all: Hooks, fhir_server: FhirServer, broken: Json
) -> None:
    patient_id = PATIENT_IDS[0]
    prefetch = prefetch_for(hooks_all, patient_id, fhir_server)
    prefetch["conditions"] = prefetch["conditions"] | broken
    response = hooks_all.call(hook_request(patient_id, prefetch))
    assert response.status_code == 200, response.text
    report = hooks_all.reports(response.json()["cards"])[SLE_TRIAL]
    assert eligibility(report) != "eligible"
    assert criterion_result(report, "I3")["result"] == "unknown"  # the SLE diagnosis
    messages = next(c for c in report["contained"] if c["id"] == "messages")
    assert any("Condition Bundle is malformed" in i["diagnostics"] for i in messages["issue"])


def test_a_prefetch_of_another_patient_is_400_and_stores_nothing(
    hooks: Hooks, fhir_server: FhirServer
) -> None:
    patient_id, other = PATIENT_IDS[0], PATIENT_IDS[1]
    store = hooks.app.state.store
    before = store.screenings_for(f"Patient/{other}", None, 0, 1)[0]
    whole_other = prefetch_for(hooks, other, fhir_server)
    mixed = prefetch_for(hooks, patient_id, fhir_server) | {"conditions": whole_other["conditions"]}
    for prefetch in (whole_other, mixed):
        response = hooks.call(hook_request(patient_id, prefetch))
        assert response.status_code == 400, response.text
    assert store.screenings_for(f"Patient/{other}", None, 0, 1)[0] == before


@pytest.mark.parametrize(
    "instance", ["x" * 300_000, "abc\x00def", "line\nbreak"], ids=["huge", "nul", "newline"]
)
def test_a_hostile_hook_instance_is_400(hooks: Hooks, instance: str) -> None:
    response = hooks.call(_spec_example() | {"hookInstance": instance})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "moment",
    ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "2026-13-45", "x" * 10_000, 7],
)
def test_a_hostile_outcome_timestamp_is_400(
    hooks: Hooks, fhir_server: FhirServer, moment: Any
) -> None:
    patient_id = PATIENT_IDS[2]
    (card,) = hooks.cards(hook_request(patient_id, prefetch_for(hooks, patient_id, fhir_server)))
    item = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": moment,
    }
    response = _post_feedback(hooks, {"feedback": [item]})
    assert response.status_code == 400, response.text
    assert response.json()["issue"][0]["expression"] == ["feedback[0].outcomeTimestamp"]
    assert hooks.app.state.store.feedback_for(_screening_id(card)) == []


# --- pending screenings survive the worker that started them (issue 12) ---------------------------

HANGING_EHR = "http://ehr.test/fhir"


def _hanging_app(database_url: str) -> FastAPI:
    """Every EHR request hangs: a hook call gets the pending card and its screenings stay
    pending (as if the worker died mid-fetch)."""

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    settings = Settings(
        public_base_url=BASE,
        allow_unauthenticated=True,
        ehr_base_url=HANGING_EHR,
        cds_fetch_budget=0.0,
        database_url=database_url,
    )
    return create_app(settings, ehr_transport=httpx.MockTransport(hang))


def _pending_card(client: TestClient) -> Json:
    body = hook_request("interrupted-1", fhir_server=HANGING_EHR)
    del body["fhirAuthorization"]  # the development caller fetches without one
    response = client.post(SERVICE, json=body)
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    pending: Json = card
    return pending


def test_an_interrupted_pending_screening_is_answered_as_failed(store_url: str) -> None:
    with TestClient(_hanging_app(store_url)) as client:
        card = _pending_card(client)
        store = client.app.state.store  # type: ignore[attr-defined]
        for link in card["links"]:
            assert client.get(fhir_path(link)).status_code == 404  # still pending
        # The worker that started them is gone; later, any replica sweeps what is past its time.
        assert store.fail_pending(time.time() + 3600, interrupted) == len(card["links"])
        for link in card["links"]:
            report = client.get(fhir_path(link)).json()
            validate_r4(report)
            assert report["status"] == "failure"
            assert "interrupted" in report["contained"][0]["issue"][0]["diagnostics"]
        assert store.fail_pending(time.time() + 3600, interrupted) == 0


def test_a_restarted_service_answers_what_it_left_pending(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'restart.db'}"
    with TestClient(_hanging_app(url)) as client:
        card = _pending_card(client)
    # Past its time when the service comes back (its deadline moved into the past).
    store = Store(url)
    with Session(store.engine) as session, session.begin():
        for row in session.exec(select(PendingScreening)).all():
            row.expires = time.time() - 1
    store.close()
    with TestClient(_hanging_app(url)) as restarted:
        for link in card["links"]:
            report = restarted.get(fhir_path(link)).json()
            assert report["status"] == "failure"
