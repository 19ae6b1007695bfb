"""The service as an integration engineer meets it: real HTTP on a loopback port (not the
usual 8000), driven by a widely used FHIR client library (fhirpy), every answer validated as
FHIR R4. Search with each parameter, page through ``next``, count, read with an ETag, run
``$screen``, and resolve the OperationDefinition the CapabilityStatement names."""

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient

from app.core.settings import Settings
from app.main import create_app
from tests.loopback import free_port, serving
from tests.test_api import parameters, small_bundle, validate_r4


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """The service's FHIR base on a free loopback port; its canonical base is where it is
    served, so the canonicals it publishes resolve."""
    port = free_port()
    fhir_base = f"http://127.0.0.1:{port}/fhir"
    app = create_app(Settings(allow_unauthenticated=True, canonical_base=fhir_base))
    with serving(app, port):
        yield fhir_base


@pytest.fixture(scope="module")
def fhir(base: str) -> SyncFHIRClient:
    return SyncFHIRClient(base)


def _valid(resource: Any) -> dict[str, Any]:
    data: dict[str, Any] = resource.serialize() if hasattr(resource, "serialize") else resource
    validate_r4(data)
    return data


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"identifier": "NCT07358988"}, ["NCT07358988"]),
        ({"identifier": "https://clinicaltrials.gov|NCT06801119"}, ["NCT06801119"]),
        ({"_id": "NCT06801119"}, ["NCT06801119"]),
        ({"status": "approved"}, ["NCT07358988"]),
        ({"title": "Efficacy"}, ["NCT06801119"]),
        ({"title:contains": "CLEAR"}, ["NCT07358988"]),
    ],
)
def test_fhirpy_searches_studies_by_each_parameter(
    fhir: SyncFHIRClient, params: dict[str, str], expected: list[str]
) -> None:
    found = fhir.resources("ResearchStudy").search(**params).fetch_all()
    assert [_valid(s)["id"] for s in found] == expected


def test_fhirpy_pages_counts_and_sorts(fhir: SyncFHIRClient) -> None:
    studies = fhir.resources("ResearchStudy")
    assert studies.count() == 2  # _count=0 (and fhirpy's own _totalMethod, ignored leniently)
    paged = studies.limit(1).fetch_all()  # one per page: follows the absolute next links
    assert [s["id"] for s in paged] == ["NCT06801119", "NCT07358988"]
    assert [s["id"] for s in studies.sort("-_id").fetch()] == ["NCT07358988", "NCT06801119"]
    assert studies.search(_id="NCT07358988").get()["id"] == "NCT07358988"


def test_fhirpy_reads_with_an_etag(fhir: SyncFHIRClient, base: str) -> None:
    study = fhir.reference("ResearchStudy", "NCT06801119").to_resource()
    _valid(study)
    version = study["meta"]["versionId"]
    assert study.refresh()["meta"]["versionId"] == version  # If-None-Match: 304 kept it
    unchanged = httpx.get(f"{base}/ResearchStudy/NCT06801119", headers={"If-None-Match": version})
    assert unchanged.status_code == 304
    assert unchanged.headers["etag"] == f'W/"{version}"'


def test_fhirpy_screens_then_finds_the_screenings(fhir: SyncFHIRClient) -> None:
    patient_id = f"p-{uuid.uuid4().hex[:8]}"
    record = small_bundle()
    record["entry"][0]["resource"]["id"] = patient_id
    guidance = fhir.execute("ResearchStudy/NCT06801119/$screen", data=parameters(record))
    _valid(guidance)
    assert guidance["resourceType"] == "GuidanceResponse"
    both = fhir.execute("ResearchStudy/$screen", data=parameters(record))
    assert len(_valid(both)["entry"]) == 2
    screenings = fhir.resources("GuidanceResponse").search(patient=patient_id)
    assert screenings.count() == 3
    paged = screenings.limit(2).fetch_all()
    assert len(paged) == 3 and guidance["id"] in {_valid(g)["id"] for g in paged}
    read = fhir.reference("GuidanceResponse", guidance["id"]).to_resource()
    assert _valid(read)["meta"]["versionId"] == "1"
    trail = fhir.resources("AuditEvent").search(
        patient=patient_id, entity=f"GuidanceResponse/{guidance['id']}"
    )
    events = [_valid(e) for e in trail.fetch_all()]
    assert {e["subtype"][1]["code"] for e in events} == {"screen", "read"}


def test_the_operation_definition_resolves_from_the_capability_statement(
    fhir: SyncFHIRClient, base: str
) -> None:
    statement = _valid(fhir.execute("metadata", method="get"))
    assert statement["implementation"]["url"] == base
    study = next(r for r in statement["rest"][0]["resource"] if r["type"] == "ResearchStudy")
    (operation,) = study["operation"]
    definition = _valid(fhir.execute(operation["definition"], method="get"))
    assert definition["url"] == operation["definition"]
    assert definition["code"] == "screen"
    assert {p["name"] for p in definition["parameter"]} == {
        "bundle",
        "patient",
        "asOf",
        "study",
        "return",
    }
