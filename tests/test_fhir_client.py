"""Fetching a record from the EHR under faults a real server will not produce on demand.

Each fault must end in a correct answer (retried) or a correct ``unknown`` with an explanation:
never a crash, and never ``met``, ``not-met`` or ``eligible`` on data that did not arrive.
"""

import asyncio
import time
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.catalog.loader import Catalog
from app.core.errors import NotFound, UpstreamUnavailable
from app.core.settings import Settings
from app.ehr.auth import EhrAuth, NoAuth
from app.ehr.client import Deadline, FhirClient
from app.ehr.fetch_plan import plan_for
from app.ehr.record_source import EhrRecordSource, FetchedRecord
from app.engine import Eligibility, Status, evaluate
from app.main import create_app
from tests.mock_ehr import BASE, MockEhr, _json, on, once
from tests.test_api import _baseline_bundle

AS_OF = date(2026, 6, 1)


class Sleeps:
    """Records the back-off the client asks for instead of sleeping."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def fetch(
    ehr: MockEhr,
    catalog: Catalog,
    sleeps: Sleeps | None = None,
    auth: EhrAuth | None = None,
    **client_options: Any,
) -> FetchedRecord:
    async def run() -> FetchedRecord:
        async with httpx.AsyncClient(transport=ehr.transport()) as http:
            sleep = sleeps or Sleeps()
            client = FhirClient(http, BASE, auth or NoAuth(), sleep=sleep, **client_options)
            plan = plan_for(
                list(catalog.trials.values()), catalog.mappings, ("MedicationRequest",), 40
            )
            return await EhrRecordSource(client, plan, deadline_seconds=30).fetch("p", AS_OF)

    return asyncio.run(run())


@pytest.fixture
def ehr() -> MockEhr:
    return MockEhr(_baseline_bundle(set()))


def _statuses(catalog: Catalog, fetched: FetchedRecord) -> dict[str, Status]:
    screening = evaluate(catalog.trials["NCT06801119"], fetched.record, AS_OF)
    return {r.id: r.status for c in screening.criteria for r in c.result.walk()}


def test_a_clean_fetch_screens_like_the_posted_bundle(ehr: MockEhr, catalog: Catalog) -> None:
    from app.fhir_io.bundle_reader import read_bundle

    fetched = fetch(ehr, catalog, page_size=5)  # small pages: paging is exercised
    assert fetched.problems == ()
    posted = read_bundle(ehr.bundle)
    trial = catalog.trials["NCT06801119"]
    assert (
        evaluate(trial, fetched.record, AS_OF).criteria == evaluate(trial, posted, AS_OF).criteria
    )
    assert any("_offset" in str(r.url) for r in ehr.requests)


def test_429_is_retried_after_the_time_it_asks(ehr: MockEhr, catalog: Catalog) -> None:
    sleeps = Sleeps()
    ehr.faults.append(once(on("Observation", lambda r: _json(429, {}, {"Retry-After": "2"}))))
    fetched = fetch(ehr, catalog, sleeps)
    assert fetched.problems == ()
    assert sleeps.delays == [2.0]


def test_503_then_success_is_retried_with_backoff(ehr: MockEhr, catalog: Catalog) -> None:
    sleeps = Sleeps()
    ehr.faults.append(once(on("Condition", lambda r: httpx.Response(503))))
    fetched = fetch(ehr, catalog, sleeps)
    assert fetched.problems == ()
    assert len(sleeps.delays) == 1 and 0 < sleeps.delays[0] < 1


def _timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def test_a_search_that_keeps_timing_out_makes_its_criteria_unknown(
    ehr: MockEhr, catalog: Catalog
) -> None:
    ehr.faults.append(on("Condition", _timeout))
    fetched = fetch(ehr, catalog)
    assert "Condition" in fetched.record.incomplete
    assert any("did not answer in time" in p for p in fetched.problems)
    statuses = _statuses(catalog, fetched)
    # SLE diagnosis, transplant status, asthma...: every Condition check is unknown
    for check in ("I1.sle", "I2.duration", "E3.status", "E8.asthma"):
        assert statuses[check] is Status.UNKNOWN
    assert statuses["I7.anc"] is Status.MET  # Observations arrived
    screening = evaluate(catalog.trials["NCT06801119"], fetched.record, AS_OF)
    assert screening.eligibility is not Eligibility.ELIGIBLE


def test_a_next_link_to_another_host_is_not_followed(ehr: MockEhr, catalog: Catalog) -> None:
    def foreign_next(request: httpx.Request) -> httpx.Response | None:
        if "/fhir/Condition" not in request.url.path:
            return None
        page = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in ehr.resources("Condition")],
            "link": [{"relation": "next", "url": "https://evil.example/fhir/Condition?page=2"}],
        }
        return _json(200, page)

    ehr.faults.append(foreign_next)
    fetched = fetch(ehr, catalog)
    assert all(r.url.host == "ehr.test" for r in ehr.requests)
    assert "outside the EHR base URL" in fetched.record.incomplete["Condition"]
    assert _statuses(catalog, fetched)["I1.sle"] is Status.UNKNOWN


def test_a_truncated_page_is_retried_then_reported(ehr: MockEhr, catalog: Catalog) -> None:
    truncated = on("Procedure", lambda r: httpx.Response(200, content=b'{"resourceType": "Bund'))
    ehr.faults.append(once(truncated))
    assert fetch(ehr, catalog).problems == ()  # once: the retry succeeds
    ehr.faults[:] = [truncated]
    fetched = fetch(ehr, catalog)
    assert "truncated or invalid JSON" in fetched.record.incomplete["Procedure"]
    assert _statuses(catalog, fetched)["E3.procedure"] is Status.UNKNOWN


def test_an_operation_outcome_instead_of_a_bundle(ehr: MockEhr, catalog: Catalog) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "too-costly", "diagnostics": "search too broad"}],
    }
    ehr.faults.append(on("Immunization", lambda r: _json(200, outcome)))
    fetched = fetch(ehr, catalog)
    assert "search too broad" in fetched.record.incomplete["Immunization"]
    assert _statuses(catalog, fetched)["E7.live_vaccine"] is Status.UNKNOWN


def test_paging_stops_at_the_page_limit(ehr: MockEhr, catalog: Catalog) -> None:
    fetched = fetch(ehr, catalog, page_size=1, max_pages=2)
    assert "more than 2 pages" in fetched.record.incomplete["Observation"]
    assert _statuses(catalog, fetched)["I7.hb"] is Status.UNKNOWN


def test_a_response_over_the_size_cap_is_not_read(ehr: MockEhr, catalog: Catalog) -> None:
    fetched = fetch(ehr, catalog, max_response_bytes=200)
    assert any("exceeded 200 bytes" in p for p in fetched.problems)


def test_an_unknown_patient_is_not_found(ehr: MockEhr, catalog: Catalog) -> None:
    ehr.faults.append(on("Patient", lambda r: _json(404, {"resourceType": "OperationOutcome"})))
    with pytest.raises(NotFound):
        fetch(ehr, catalog)


def test_a_patient_read_that_keeps_failing_is_a_502(ehr: MockEhr, catalog: Catalog) -> None:
    ehr.faults.append(on("Patient", lambda r: httpx.Response(503)))
    with pytest.raises(UpstreamUnavailable):
        fetch(ehr, catalog)


class CountingAuth:
    """Hands out token-1, token-2, ...; the EHR accepts only the second."""

    def __init__(self) -> None:
        self.issued = 0
        self.current: str | None = None

    async def headers(self, http: httpx.AsyncClient, time_left: float) -> dict[str, str]:
        if self.current is None:
            self.issued += 1
            self.current = f"token-{self.issued}"
        return {"authorization": f"Bearer {self.current}"}

    def invalidate(self) -> None:
        self.current = None


def test_a_401_refreshes_the_token_once(ehr: MockEhr, catalog: Catalog) -> None:
    auth = CountingAuth()

    def stale_token(request: httpx.Request) -> httpx.Response | None:
        ok = request.headers.get("authorization") == "Bearer token-2"
        return None if ok else httpx.Response(401)

    ehr.faults.append(stale_token)
    fetched = fetch(ehr, catalog, auth=auth)
    assert fetched.problems == ()
    assert auth.issued == 2


@pytest.fixture
def faulty_app(ehr: MockEhr) -> Iterator[TestClient]:
    settings = Settings(
        ehr_base_url=BASE, ehr_medication_types=("MedicationRequest",), allow_unauthenticated=True
    )
    ehr.faults.append(on("Condition", _timeout))
    with TestClient(create_app(settings, ehr_transport=ehr.transport())) as client:
        yield client


def test_the_guidance_response_says_what_could_not_be_fetched(faulty_app: TestClient) -> None:
    from tests.test_api import result_parameters, validate_r4

    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": "Patient/p"}},
            {"name": "asOf", "valueDate": AS_OF.isoformat()},
        ],
    }
    body = faulty_app.post("/fhir/ResearchStudy/NCT06801119/$screen", json=params).json()
    validate_r4(body)
    (messages,) = [c for c in body["contained"] if c["resourceType"] == "OperationOutcome"]
    assert "Condition" in messages["issue"][0]["diagnostics"]
    assert body["evaluationMessage"] == [{"reference": "#messages"}]
    assert result_parameters(body)["parameter"][0]["valueCode"] != "eligible"


def test_medication_searches_include_the_medication_but_prefetch_templates_do_not(
    catalog: Catalog,
) -> None:
    """The fetch asks for the Medication each order references (_include); a CDS Hooks prefetch
    template cannot carry _include (CDS Hooks 2.0 prefetch query capabilities), so it does not."""
    kinds = ("MedicationRequest", "MedicationAdministration", "MedicationStatement")
    plan = plan_for(list(catalog.trials.values()), catalog.mappings, kinds, 40)
    searches = {s.resource_type: s for s in plan.searches("p", AS_OF) if s.resource_type in kinds}
    assert {k: s.params["_include"] for k, s in searches.items()} == {
        k: f"{k}:medication" for k in kinds
    }
    assert all("_include" not in s.query() for s in searches.values())
    assert all(s.included_types == ("Medication",) for s in searches.values())


# --- hostile pages (issue 12) --------------------------------------------------------------------


def _page(ehr: MockEhr, kind: str, **fields: Any) -> Any:
    def fault(request: httpx.Request) -> httpx.Response | None:
        if f"/fhir/{kind}" not in request.url.path:
            return None
        page = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in ehr.resources(kind)],
        } | fields
        return _json(200, page)

    return fault


@pytest.mark.parametrize(
    "fields",
    [
        {"link": 7},
        {"link": "next"},
        {"link": [3, {"relation": "next", "url": 5}]},
        {"entry": 12},
        {"entry": "everything"},
    ],
)
def test_a_malformed_page_marks_its_part_incomplete(
    ehr: MockEhr, catalog: Catalog, fields: dict[str, Any]
) -> None:
    ehr.faults.append(_page(ehr, "Condition", **fields))
    fetched = fetch(ehr, catalog)
    statuses = _statuses(catalog, fetched)
    if "entry" in fields or fields["link"] in (7, "next"):
        assert "malformed" in fetched.record.incomplete["Condition"]
        assert statuses["I1.sle"] is Status.UNKNOWN
    else:  # a list of links holding junk: the junk is no next link
        assert fetched.problems == ()
    assert statuses["I7.anc"] is Status.MET


def test_an_entry_whose_search_is_not_an_object_is_not_a_match(
    ehr: MockEhr, catalog: Catalog
) -> None:
    def search_as_text(request: httpx.Request) -> httpx.Response | None:
        if "/fhir/Condition" not in request.url.path:
            return None
        entries = [{"resource": r, "search": "match"} for r in ehr.resources("Condition")]
        return _json(200, {"resourceType": "Bundle", "type": "searchset", "entry": entries})

    ehr.faults.append(search_as_text)
    fetched = fetch(ehr, catalog)
    assert fetched.record.conditions == ()
    screening = evaluate(catalog.trials["NCT06801119"], fetched.record, AS_OF)
    assert screening.eligibility is not Eligibility.ELIGIBLE


@pytest.mark.parametrize(
    "next_url",
    [
        f"{BASE}/../other/Condition?page=2",
        f"{BASE}/%2e%2e/other/Condition?page=2",
        f"{BASE}/Condition/../../../other?page=2",
        "http://ehr.test/fhirX/Condition?page=2",
        "http://user@ehr.test/fhir/Condition?page=2",
        "http://ehr.test:8080/fhir/Condition?page=2",
        "https://ehr.test/fhir/Condition?page=2",
        "http://ehr.test:99999/fhir/Condition",
    ],
)
def test_a_next_link_leaving_the_base_path_is_not_followed(
    ehr: MockEhr, catalog: Catalog, next_url: str
) -> None:
    ehr.faults.append(_page(ehr, "Condition", link=[{"relation": "next", "url": next_url}]))
    fetched = fetch(ehr, catalog)
    assert all(r.url.path.startswith("/fhir/") for r in ehr.requests)
    assert sum("Condition" in r.url.path for r in ehr.requests) == 1
    assert "outside the EHR base URL" in fetched.record.incomplete["Condition"]


def test_a_next_link_with_harmless_dot_segments_is_followed_normalised(
    ehr: MockEhr, catalog: Catalog
) -> None:
    ehr.faults.append(
        once(_page(ehr, "Condition", link=[{"relation": "next", "url": f"{BASE}/x/../Condition"}]))
    )
    fetched = fetch(ehr, catalog)
    followed = [r for r in ehr.requests if "Condition" in r.url.path]
    assert [r.url.path for r in followed] == ["/fhir/Condition", "/fhir/Condition"]
    assert "Condition" not in fetched.record.incomplete


class _Dribble(httpx.AsyncByteStream):
    async def __aiter__(self) -> Any:
        for byte in b'{"resourceType": "Bundle", "type": "searchset"}':
            await asyncio.sleep(0.05)
            yield bytes([byte])


def test_a_body_dribbled_byte_by_byte_is_cut_at_the_deadline(ehr: MockEhr) -> None:
    def dribble(request: httpx.Request) -> httpx.Response | None:
        return httpx.Response(200, stream=_Dribble()) if "Condition" in request.url.path else None

    ehr.faults.append(dribble)

    async def run() -> tuple[float, Any]:
        async with httpx.AsyncClient(transport=ehr.transport()) as http:
            client = FhirClient(http, BASE, NoAuth(), read_timeout=20.0, sleep=Sleeps())
            started = time.monotonic()
            outcome = await client.search("Condition", {"patient": "p"}, Deadline.after(0.6))
            return time.monotonic() - started, outcome

    elapsed, outcome = asyncio.run(run())
    assert elapsed < 1.5  # the body alone takes 2.4 s; read timeouts never trip on it
    assert outcome.problem is not None and "time" in outcome.problem
