"""The optional terminology server (TRIALSCREEN_TERMINOLOGY_URL), served on loopback: codes a newer
release of a value set holds join the code set for the screening, with the code set's curation
kept (exclusion rows, excluded subsets by their rule, included subsets by their rule); answers
are cached; a slow or absent server leaves the shipped expansions to decide."""

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from app.catalog.loader import Catalog
from app.core.settings import Settings
from app.ehr.terminology import TerminologyServer, recognised
from app.engine.record import Condition, Patient, PatientRecord
from app.main import create_app
from tests import fhir_builders
from tests.loopback import free_port, serving
from tests.test_api import criteria, parameters, result_parameters

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
HEART_FAILURE = "http://cts.nlm.nih.gov/fhir/ValueSet/2.16.840.1.113883.3.526.3.376"
CANCER = "http://cts.nlm.nih.gov/fhir/ValueSet/2.16.840.1.113762.1.4.1111.161"
MI = "http://cts.nlm.nih.gov/fhir/ValueSet/2.16.840.1.113762.1.4.1108.101"
# Concepts the shipped 2024 expansions do not hold, as a newer release would (test data of the
# loopback server, not real SNOMED CT identifiers).
NEW_HF = "9000000101"
NEW_BCC = "9000000102"
NEW_SKIN = "9000000103"
NEW_LUNG = "9000000104"

CONTENT: dict[tuple[str, str, str], tuple[bool, str]] = {
    (HEART_FAILURE, SNOMED, NEW_HF): (True, "Heart failure with improved ejection fraction"),
    (CANCER, SNOMED, NEW_BCC): (True, "Basal cell carcinoma of skin of philtrum (disorder)"),
    (CANCER, SNOMED, NEW_SKIN): (True, ""),  # no display: the subset rules cannot be applied
    (CANCER, SNOMED, NEW_LUNG): (True, "Primary adenocarcinoma of lung, new subtype (disorder)"),
    (MI, ICD10CM, "I25.2"): (True, "Old myocardial infarction"),
}


class Server:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.asked: list[tuple[str, str, str]] = []
        self.app = FastAPI()
        self.app.get("/fhir/ValueSet/$validate-code")(self.validate)

    async def validate(self, request: Request) -> JSONResponse:
        q = request.query_params
        key = (q["url"], q["system"], q["code"])
        self.asked.append(key)
        await asyncio.sleep(self.delay)
        member, display = CONTENT.get(key, (False, ""))
        params: list[dict[str, Any]] = [{"name": "result", "valueBoolean": member}]
        if display:
            params.append({"name": "display", "valueString": display})
        return JSONResponse({"resourceType": "Parameters", "parameter": params})


@pytest.fixture
def server() -> Iterator[tuple[Server, str]]:
    s, port = Server(), free_port()
    with serving(s.app, port):
        yield s, f"http://127.0.0.1:{port}/fhir"


def _record(*codings: tuple[str, str]) -> PatientRecord:
    conditions = tuple(
        Condition(f"Condition/c{n}", (c,), "", None, None, None, "active")
        for n, c in enumerate(codings)
    )
    return PatientRecord(patient=Patient("Patient/p", None, None), conditions=conditions)


async def _recognise(
    catalog: Catalog, url: str, record: PatientRecord, budget: float = 5.0
) -> tuple[Any, TerminologyServer]:
    async with httpx.AsyncClient() as http:
        ts = TerminologyServer(url, budget, http)
        trial = await ts.recognise(catalog.trials["NCT07358988"], record)
        return trial, ts


def test_a_code_of_a_newer_release_joins_the_code_set(
    catalog: Catalog, server: tuple[Server, str]
) -> None:
    s, url = server
    record = _record((SNOMED, NEW_HF), (SNOMED, NEW_LUNG))
    trial, _ = asyncio.run(_recognise(catalog, url, record))
    sets = trial.mappings.code_sets
    assert sets["heart_failure"].matcher.matches(SNOMED, NEW_HF)
    assert sets["malignancy"].matcher.matches(SNOMED, NEW_LUNG)
    # only this screening's trial learns it; the catalog stays as shipped
    assert not catalog.mappings.code_sets["heart_failure"].matcher.matches(SNOMED, NEW_HF)
    assert (HEART_FAILURE, SNOMED, NEW_HF) in s.asked


def test_the_code_sets_curation_is_kept(catalog: Catalog, server: tuple[Server, str]) -> None:
    _, url = server
    record = _record((SNOMED, NEW_BCC), (SNOMED, NEW_SKIN), (ICD10CM, "I25.2"))
    trial, _ = asyncio.run(_recognise(catalog, url, record))
    sets = trial.mappings.code_sets
    # a new basal cell carcinoma is selected by the excluded subset's rule: not a malignancy,
    # and the included subset's rule takes it into the excepted tumours (review)
    assert not sets["malignancy"].matcher.matches(SNOMED, NEW_BCC)
    assert sets["malignancy_excepted"].matcher.matches(SNOMED, NEW_BCC)
    # without a display the rules cannot be applied: not learned anywhere
    assert not sets["malignancy"].matcher.matches(SNOMED, NEW_SKIN)
    assert not sets["malignancy_excepted"].matcher.matches(SNOMED, NEW_SKIN)
    # an exclusion row wins over the server (old MI is not an acute event)
    assert not sets["myocardial_infarction"].matcher.matches(ICD10CM, "I25.2")


def test_answers_are_cached(catalog: Catalog, server: tuple[Server, str]) -> None:
    s, url = server
    record = _record((SNOMED, NEW_HF))

    async def twice() -> None:
        async with httpx.AsyncClient() as http:
            ts = TerminologyServer(url, 5.0, http)
            await ts.recognise(catalog.trials["NCT07358988"], record)
            first = len(s.asked)
            trial = await ts.recognise(catalog.trials["NCT07358988"], record)
            assert len(s.asked) == first > 0
            assert trial.mappings.code_sets["heart_failure"].matcher.matches(SNOMED, NEW_HF)

    asyncio.run(twice())


def test_a_slow_server_is_left_behind_at_the_budget(catalog: Catalog) -> None:
    slow, port = Server(delay=2.0), free_port()
    with serving(slow.app, port):
        started = time.monotonic()
        trial, _ = asyncio.run(
            _recognise(catalog, f"http://127.0.0.1:{port}/fhir", _record((SNOMED, NEW_HF)), 0.3)
        )
        assert time.monotonic() - started < 1.5
    assert trial is catalog.trials["NCT07358988"]  # the shipped expansions decide


def test_an_unreachable_server_changes_nothing(catalog: Catalog) -> None:
    url = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    trial, _ = asyncio.run(_recognise(catalog, url, _record((SNOMED, NEW_HF))))
    assert trial is catalog.trials["NCT07358988"]


def test_without_a_server_the_trial_is_unchanged(catalog: Catalog) -> None:
    trial = catalog.trials["NCT07358988"]
    assert asyncio.run(recognised(None, trial, _record((SNOMED, NEW_HF)))) is trial


def test_screening_asks_the_configured_server(server: tuple[Server, str]) -> None:
    s, url = server
    bundle = fhir_builders.bundle(
        {"gender": "female", "birthDate": "1985-06-15"},
        [
            {"condition": {"code": "55464009", "onset": "2019-01-01"}},
            {"condition": {"code": NEW_HF, "onset": "2023-05-01"}},
            {"lab": {"code": "88020-3", "date": "2026-05-10", "value_code": "420913000"}},
        ],
    )
    settings = Settings(allow_unauthenticated=True, terminology_url=url)
    with TestClient(create_app(settings)) as client:
        response = client.post("/fhir/ResearchStudy/NCT06801119/$screen", json=parameters(bundle))
    assert response.status_code == 200, response.text
    e6 = {q["name"]: q for q in criteria(result_parameters(response.json()))["E6"]["part"]}
    assert e6["result"]["valueCode"] == "met"
    assert f"heart failure: {NEW_HF}" in e6["reason"]["valueString"]
    assert (HEART_FAILURE, SNOMED, NEW_HF) in s.asked


def test_without_the_server_the_same_record_is_not_recognised(client: TestClient) -> None:
    bundle = fhir_builders.bundle(
        {"gender": "female", "birthDate": "1985-06-15"},
        [
            {"condition": {"code": "55464009", "onset": "2019-01-01"}},
            {"condition": {"code": NEW_HF, "onset": "2023-05-01"}},
            {"lab": {"code": "88020-3", "date": "2026-05-10", "value_code": "420913000"}},
        ],
    )
    response = client.post("/fhir/ResearchStudy/NCT06801119/$screen", json=parameters(bundle))
    e6 = {q["name"]: q for q in criteria(result_parameters(response.json()))["E6"]["part"]}
    assert e6["result"]["valueCode"] != "met"
