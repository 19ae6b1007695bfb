"""A trial the terminology server completed travels to a screening worker as its id and the codes
learned (app/screening/learned.py), not pickled whole: the worker rebuilds the same trial, and a
code only the server knows still decides a criterion when the screening runs in a worker process,
for ``$screen`` (posted record and patient id) and for a CDS hook with full prefetch."""

import asyncio
import pickle
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from app.catalog.loader import Catalog
from app.core.settings import Settings
from app.ehr.terminology import TerminologyServer
from app.main import create_app
from app.screening.learned import LearnedCodes, learned, trial_of
from bench.cds_bench import build_prefetch
from tests import fhir_builders
from tests.loopback import free_port, serving
from tests.test_api import criteria, parameters, result_parameters
from tests.test_terminology_server import NEW_HF, NEW_LUNG, SNOMED, Server, _record

TRIAL = "NCT06801119"
"""E6 (heart failure) excludes: a heart failure code only the server knows makes it met."""


@pytest.fixture
def server() -> Iterator[tuple[Server, str]]:
    s, port = Server(), free_port()
    with serving(s.app, port):
        yield s, f"http://127.0.0.1:{port}/fhir"


def _completed(catalog: Catalog, url: str, trial_id: str, *codings: tuple[str, str]) -> Any:
    async def recognise() -> Any:
        async with httpx.AsyncClient() as http:
            terminology = TerminologyServer(url, 5.0, http)
            return await terminology.recognise(catalog.trials[trial_id], _record(*codings))

    return asyncio.run(recognise())


def test_the_worker_rebuilds_the_completed_trial_from_the_learned_codes(
    catalog: Catalog, server: tuple[Server, str]
) -> None:
    _, url = server
    loaded = catalog.trials["NCT07358988"]
    completed = _completed(catalog, url, loaded.id, (SNOMED, NEW_HF), (SNOMED, NEW_LUNG))
    assert completed is not loaded
    ref = learned(loaded, completed)
    assert isinstance(ref, LearnedCodes)
    assert dict(ref.codes) == {
        "heart_failure": frozenset({(SNOMED, NEW_HF)}),
        "malignancy": frozenset({(SNOMED, NEW_LUNG)}),
    }
    rebuilt = trial_of(catalog, pickle.loads(pickle.dumps(ref)))
    assert rebuilt == completed
    assert rebuilt.mappings.code_sets["heart_failure"].matcher.matches(SNOMED, NEW_HF)
    # What a job carries: the codes, not the trial.
    assert len(pickle.dumps(ref)) * 100 < len(pickle.dumps(completed))


def test_a_trial_the_server_left_as_it_was_is_named_by_its_id(catalog: Catalog) -> None:
    loaded = catalog.trials[TRIAL]
    assert learned(loaded, loaded) == TRIAL
    assert trial_of(catalog, TRIAL) is loaded


def _bundle(patient_id: str = "p") -> dict[str, Any]:
    bundle = fhir_builders.bundle(
        {"gender": "female", "birthDate": "1985-06-15"},
        [
            {"condition": {"code": "55464009", "onset": "2019-01-01"}},
            {"condition": {"code": NEW_HF, "onset": "2023-05-01"}},
            {"lab": {"code": "88020-3", "date": "2026-05-10", "value_code": "420913000"}},
        ],
    )
    assert bundle["entry"][0]["resource"]["id"] == patient_id
    return bundle


def _e6(guidance: dict[str, Any]) -> dict[str, Any]:
    return {q["name"]: q for q in criteria(result_parameters(guidance))["E6"]["part"]}


def _e6_text(guidance: dict[str, Any]) -> str:
    """E6 with every sub-criterion's result and reason, as text."""
    return orjson.dumps(criteria(result_parameters(guidance))["E6"]).decode()


@pytest.mark.parametrize("terminology", [True, False])
def test_learned_codes_decide_in_a_worker_process(
    server: tuple[Server, str], terminology: bool
) -> None:
    s, url = server
    settings = Settings(
        allow_unauthenticated=True,
        screen_workers=1,
        cds_show_ineligible=True,
        terminology_url=url if terminology else None,
    )
    bundle = _bundle()
    with TestClient(create_app(settings)) as client:
        posted = client.post(f"/fhir/ResearchStudy/{TRIAL}/$screen", json=parameters(bundle))
        templates = client.get("/cds-services").json()["services"][0]["prefetch"]
        patient_id, prefetch = build_prefetch(templates, bundle)
        hook = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/1", "patientId": patient_id},
            "prefetch": prefetch,
        }
        called = client.post("/cds-services/trial-eligibility", json=hook)
        assert called.status_code == 200, called.text
        (card,) = [c for c in called.json()["cards"] if f"({TRIAL})" in c["summary"]]
        report = card["suggestions"][0]["actions"][0]["resource"]["supportingInfo"][0]
        stored = client.get(report["reference"].removeprefix("http://testserver"))
    assert posted.status_code == 200, posted.text
    assert stored.status_code == 200, stored.text
    e6, hooked = _e6(posted.json()), _e6_text(stored.json())
    if terminology:
        assert e6["result"]["valueCode"] == "met"
        assert f"heart failure: {NEW_HF}" in e6["reason"]["valueString"]
        assert f"heart failure: {NEW_HF}" in hooked
    else:
        assert e6["result"]["valueCode"] != "met"
        assert NEW_HF not in hooked
        assert not s.asked
