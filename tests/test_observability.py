"""What an operator sees: liveness and readiness, request ids, one JSON log line per request,
Prometheus metrics by route template, and no patient data in any log output."""

import asyncio
import json
import logging
import sys
import traceback
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.core.observability import REGISTRY, JsonFormatter, configure_logging, install_observability
from app.core.settings import Settings
from app.ehr.auth import NoAuth
from app.ehr.client import Deadline, EhrError, FhirClient
from app.ehr.record_source import DemoRecordSource
from app.main import create_app
from tests import fhir_builders
from tests.mock_ehr import BASE, MockEhr, _json
from tests.test_api import parameters, small_bundle

SCREEN = "/fhir/ResearchStudy/NCT06801119/$screen"
Json = dict[str, Any]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def json_lines(text: str) -> list[Json]:
    """Every line of ``text`` that is a JSON object (other output is left out)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def request_lines(text: str) -> list[Json]:
    return [e for e in json_lines(text) if e["logger"] == "trialscreen.http"]


# --- health -------------------------------------------------------------------------------------


def test_healthz_is_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_with_the_database_and_the_trials(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "catalog": "ok"}}


def test_readyz_is_503_when_the_database_does_not_answer(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    app: Any = client.app
    monkeypatch.setattr(app.state.store, "ping", lambda: False)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "checks": {"database": "does not answer", "catalog": "ok"},
    }


def test_readyz_is_503_when_no_trial_is_loaded(client: TestClient) -> None:
    app: Any = client.app
    # Not monkeypatch: it would delete, not restore, an attribute of Starlette's State.
    catalog, app.state.catalog = app.state.catalog, SimpleNamespace(trials={})
    try:
        response = client.get("/readyz")
    finally:
        app.state.catalog = catalog
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "catalog": "no trial loaded"}


def test_readyz_is_503_before_startup() -> None:
    # No `with`: the lifespan never runs, so neither the store nor the catalog exists.
    response = TestClient(create_app(Settings())).get("/readyz")
    assert response.status_code == 503
    assert set(response.json()["checks"].values()) == {
        "not opened (the app has not started)",
        "not loaded (the app has not started)",
    }


def test_health_routes_are_outside_the_fhir_contract(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not {"/healthz", "/readyz", "/metrics"} & set(paths)


# --- request ids and the request log line ------------------------------------------------------


def test_a_safe_incoming_request_id_is_echoed(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.9c2e:01"})
    assert response.headers["x-request-id"] == "lb-7f3a.9c2e:01"


@pytest.mark.parametrize("incoming", [None, "", "has space", "a" * 65, "<script>", "ümlaut"])
def test_otherwise_a_new_uuid4_is_given(client: TestClient, incoming: str | None) -> None:
    headers = {} if incoming is None else {"X-Request-ID": incoming.encode()}
    response = client.get("/healthz", headers=headers)
    assert uuid.UUID(response.headers["x-request-id"]).version == 4


def test_error_answers_carry_the_request_id_too(client: TestClient) -> None:
    response = client.get("/fhir/ResearchStudy/NCT00000000", headers={"X-Request-ID": "r-404"})
    assert response.status_code == 404
    assert response.headers["x-request-id"] == "r-404"


def test_one_json_line_per_request_with_the_route_template_and_no_query_string(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    response = client.post(
        SCREEN + "?note=qs-marker-4411",
        json=parameters(small_bundle()),
        headers={"X-Request-ID": "req-line-1"},
    )
    assert response.status_code == 200
    err = capsys.readouterr().err
    (line,) = [e for e in request_lines(err) if e["request_id"] == "req-line-1"]
    assert line["level"] == "INFO" and line["message"] == "request"
    assert line["method"] == "POST"
    assert line["path"] == "/fhir/ResearchStudy/{study_id}/$screen"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
    assert {"time", "level", "logger", "message", "request_id"} <= set(line)
    assert "qs-marker-4411" not in err and "NCT06801119" not in json.dumps(line)


def test_an_unmatched_path_is_logged_as_unmatched_never_raw(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    client.get("/no/such/place?token=qs-marker-5522", headers={"X-Request-ID": "req-line-2"})
    err = capsys.readouterr().err
    (line,) = [e for e in request_lines(err) if e["request_id"] == "req-line-2"]
    assert (line["path"], line["status"]) == ("unmatched", 404)
    assert "qs-marker-5522" not in err and "/no/such/place" not in err


def test_log_lines_inside_a_request_carry_its_id() -> None:
    app = FastAPI()
    install_observability(app, Settings())
    lines: list[Json] = []

    @app.get("/speak")
    async def speak() -> dict[str, str]:
        logging.getLogger("trialscreen.test").warning("said %s", "something")
        return {}

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(self.format(record)))

    keep = Keep()
    keep.setFormatter(JsonFormatter())
    logging.getLogger("trialscreen").addHandler(keep)
    try:
        TestClient(app).get("/speak", headers={"X-Request-ID": "inner-1"})
    finally:
        logging.getLogger("trialscreen").removeHandler(keep)
    said = [line for line in lines if line["logger"] == "trialscreen.test"]
    assert said == [
        {
            "time": said[0]["time"],
            "level": "WARNING",
            "logger": "trialscreen.test",
            "message": "said something",
            "request_id": "inner-1",
        }
    ]
    assert [line["request_id"] for line in lines if line["logger"] == "trialscreen.http"] == [
        "inner-1"
    ]


def test_an_unhandled_error_is_counted_and_logged_as_a_500(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = FastAPI()
    install_observability(app, Settings())

    @app.get("/boom/{thing}")
    async def boom(thing: str) -> None:
        raise RuntimeError(thing)

    before = sample("trialscreen_requests_total", method="GET", route="/boom/{thing}", status="500")
    capsys.readouterr()
    response = TestClient(app, raise_server_exceptions=False).get(
        "/boom/x", headers={"X-Request-ID": "boom-1"}
    )
    assert response.status_code == 500
    (line,) = [e for e in request_lines(capsys.readouterr().err) if e["request_id"] == "boom-1"]
    assert (line["path"], line["status"]) == ("/boom/{thing}", 500)
    after = sample("trialscreen_requests_total", method="GET", route="/boom/{thing}", status="500")
    assert after == before + 1


def test_the_apps_500_answer_is_counted_and_its_error_line_carries_the_request_id(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    class Broken:
        def get(self, trial_id: str) -> None:
            raise RuntimeError(f"must not be logged: {trial_id}")

    app: Any = client.app
    route = "/fhir/ResearchStudy/{study_id}"
    before = sample("trialscreen_requests_total", method="GET", route=route, status="500")
    capsys.readouterr()
    catalog, app.state.catalog = app.state.catalog, Broken()
    try:
        broken = TestClient(app, raise_server_exceptions=False)
        response = broken.get("/fhir/ResearchStudy/NCT1", headers={"X-Request-ID": "err-1"})
    finally:
        app.state.catalog = catalog
    assert response.status_code == 500
    assert response.json()["resourceType"] == "OperationOutcome"
    lines = [e for e in json_lines(capsys.readouterr().err) if e["request_id"] == "err-1"]
    assert [(e["logger"], e["level"]) for e in lines] == [
        ("trialscreen.http", "INFO"),
        ("trialscreen", "ERROR"),
    ]
    assert lines[0]["status"] == 500 and "must not be logged" not in json.dumps(lines)
    assert lines[1]["message"] == f"unhandled RuntimeError on GET {route}"  # never the raw path
    assert sample("trialscreen_requests_total", method="GET", route=route, status="500") == (
        before + 1
    )


def test_logging_is_configured_once() -> None:
    logger = logging.getLogger("trialscreen")
    handlers = list(logger.handlers)
    configure_logging()
    create_app(Settings())
    assert logger.handlers == handlers
    assert len([h for h in handlers if isinstance(h.formatter, JsonFormatter)]) == 1


def test_an_exception_is_logged_as_one_json_object() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("trialscreen.x", logging.ERROR, "f", 1, "m", (), None)
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "ERROR" and "ValueError: bad" in entry["exception"]


# --- metrics --------------------------------------------------------------------------------------


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_count_a_screening_by_trial_and_eligibility(client: TestClient) -> None:
    key = (
        "trialscreen_screenings_total",
        frozenset({("trial", "NCT06801119"), ("eligibility", "ineligible")}),
    )
    route = "/fhir/ResearchStudy/{study_id}/$screen"
    request_key = (
        "trialscreen_requests_total",
        frozenset({("method", "POST"), ("route", route), ("status", "200")}),
    )
    before = scrape(client)
    response = client.post(SCREEN, json=parameters(small_bundle()))
    assert response.status_code == 200
    after = scrape(client)
    assert after[key] == before.get(key, 0.0) + 1
    assert after[request_key] == before.get(request_key, 0.0) + 1
    duration = (
        "trialscreen_request_duration_seconds_count",
        frozenset({("method", "POST"), ("route", route)}),
    )
    assert after[duration] == before.get(duration, 0.0) + 1


def test_metric_routes_are_templates_never_raw_paths(client: TestClient) -> None:
    client.get("/fhir/ResearchStudy/NCT06801119")
    client.get("/fhir/GuidanceResponse/raw-id-6633")
    client.get("/no/such/raw-id-7744")
    routes = {
        dict(labels)["route"]
        for (name, labels) in scrape(client)
        if name == "trialscreen_requests_total"
    }
    assert {"/fhir/ResearchStudy/{study_id}", "/fhir/GuidanceResponse/{screening_id}"} <= routes
    assert "unmatched" in routes
    assert not [r for r in routes if "NCT0" in r or "raw-id" in r]


def test_apps_in_one_process_share_one_registry(client: TestClient) -> None:
    # A second app registers nothing twice (no "Duplicated timeseries") and counts into the same
    # series as the first.
    with TestClient(create_app(Settings(allow_unauthenticated=True))) as other:
        other.get("/healthz")
        key = (
            "trialscreen_requests_total",
            frozenset({("method", "GET"), ("route", "/healthz"), ("status", "200")}),
        )
        assert scrape(other)[key] == scrape(client)[key] >= 1


def _read(transport: httpx.MockTransport, **options: Any) -> None:
    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as http:
            client = FhirClient(http, BASE, NoAuth(), max_attempts=1, **options)
            await client.read("Patient", "p", Deadline.after(30))

    asyncio.run(run())


def _raise(exc: type[httpx.TransportError]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        raise exc("failed", request=request)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("transport", "options", "kind"),
    [
        (_raise(httpx.ReadTimeout), {}, "timeout"),
        (_raise(httpx.ConnectError), {}, "transport"),
        (httpx.MockTransport(lambda r: httpx.Response(503)), {}, "status_503"),
        (httpx.MockTransport(lambda r: httpx.Response(500)), {}, "status_500"),
        (httpx.MockTransport(lambda r: httpx.Response(404)), {}, "status_404"),
        (httpx.MockTransport(lambda r: httpx.Response(200, content=b'{"res')), {}, "invalid_body"),
        (httpx.MockTransport(lambda r: httpx.Response(200, content=b"[]")), {}, "invalid_body"),
        (
            httpx.MockTransport(lambda r: _json(200, {"resourceType": "Patient", "id": "p"})),
            {"max_response_bytes": 10},
            "too_large",
        ),
    ],
)
def test_upstream_failures_are_counted_by_kind(
    transport: httpx.MockTransport, options: Json, kind: str
) -> None:
    before = sample("trialscreen_upstream_fhir_errors_total", kind=kind)
    with pytest.raises(EhrError):
        _read(transport, **options)
    assert sample("trialscreen_upstream_fhir_errors_total", kind=kind) == before + 1


def test_a_good_answer_counts_no_upstream_failure() -> None:
    kinds = [m for m in REGISTRY.collect() if m.name == "trialscreen_upstream_fhir_errors"]
    before = sum(s.value for m in kinds for s in m.samples if s.name.endswith("_total"))
    _read(httpx.MockTransport(lambda r: _json(200, {"resourceType": "Patient", "id": "p"})))
    kinds = [m for m in REGISTRY.collect() if m.name == "trialscreen_upstream_fhir_errors"]
    assert sum(s.value for m in kinds for s in m.samples if s.name.endswith("_total")) == before


# --- no patient data in any log output ---------------------------------------------------------

PHI_ID = "phi-7f3a9c2e"
PHI = ("Zyxwvutsrq", "Qwertyuiop", "1971-07-29", PHI_ID)


def phi_bundle() -> Json:
    bundle = fhir_builders.bundle(
        {
            "id": PHI_ID,
            "name": [{"family": "Zyxwvutsrq", "given": ["Qwertyuiop"]}],
            "birthDate": "1971-07-29",
            "gender": "female",
        },
        [
            {"condition": {"code": "55464009", "onset": "2019-01-01"}},
            {"lab": {"code": "718-7", "date": "2026-05-20", "value": 11.0, "unit": "g/dL"}},
        ],
    )
    patched: Json = orjson.loads(
        orjson.dumps(bundle).replace(b"Patient/p", f"Patient/{PHI_ID}".encode())
    )
    return patched


def by_id(patient_id: str) -> Json:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueString": patient_id},
            {"name": "asOf", "valueDate": "2026-06-01"},
        ],
    }


def prefetch(client: TestClient, bundle: Json) -> Json:
    (service,) = client.get("/cds-services").json()["services"]
    resources = [e["resource"] for e in bundle["entry"]]
    out: Json = {}
    for key, template in service["prefetch"].items():
        kind = template.split("?")[0].split("/")[0]
        if kind == "Patient":
            out[key] = next(r for r in resources if r["resourceType"] == "Patient")
        else:
            entries = [{"resource": r} for r in resources if r["resourceType"] == kind]
            out[key] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    return out


@pytest.fixture
def demo_client(tmp_path: Path) -> Iterator[TestClient]:
    """The demo record source, holding the PHI patient (file name = Patient id)."""
    (tmp_path / f"{PHI_ID}.json").write_bytes(orjson.dumps(phi_bundle()))
    settings = Settings(allow_unauthenticated=True, cds_show_ineligible=True)
    with TestClient(create_app(settings)) as client:
        app: Any = client.app
        app.state.record_source = DemoRecordSource(tmp_path)
        yield client


@pytest.fixture
def ehr_client() -> Iterator[TestClient]:
    """A (mock) EHR holding the PHI patient; one search keeps failing, so the fetch path's
    failure handling runs too."""
    ehr = MockEhr(phi_bundle())
    ehr.faults.append(lambda r: httpx.Response(500) if "/Condition" in r.url.path else None)
    settings = Settings(
        ehr_base_url=BASE,
        ehr_medication_types=("MedicationRequest",),
        ehr_max_attempts=1,
        allow_unauthenticated=True,
    )
    with TestClient(create_app(settings, ehr_transport=ehr.transport())) as client:
        yield client


def test_no_patient_data_reaches_any_log_output(
    demo_client: TestClient,
    ehr_client: TestClient,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="trialscreen")
    capsys.readouterr()
    bundle = phi_bundle()
    answers = [
        demo_client.post(SCREEN, json=parameters(bundle)),
        demo_client.post("/fhir/ResearchStudy/$screen", json=parameters(bundle)),
        demo_client.post(SCREEN, json=by_id(PHI_ID)),
        # The query string is the caller's; it must not reach the log either.
        demo_client.post(f"{SCREEN}?patient={PHI_ID}&family=Zyxwvutsrq", json=by_id(PHI_ID)),
        ehr_client.post(SCREEN, json=by_id(PHI_ID)),
        ehr_client.post("/fhir/ResearchStudy/$screen", json=by_id(PHI_ID)),
        demo_client.post(
            "/cds-services/trial-eligibility",
            json={
                "hook": "patient-view",
                "hookInstance": str(uuid.uuid4()),
                "context": {"userId": "Practitioner/example", "patientId": PHI_ID},
                "prefetch": prefetch(demo_client, bundle),
            },
        ),
        # Failures: two Patients (422), and an unknown patient id (404).
        demo_client.post(
            SCREEN,
            json=parameters({**bundle, "entry": bundle["entry"] + bundle["entry"][:1]}),
        ),
        demo_client.post(SCREEN, json=by_id(PHI_ID + "-gone")),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200, 200, 200, 422, 404]
    # The data did flow: the answers name the patient, and the EHR screening saw the failure.
    assert all(PHI_ID in a.text for a in answers[:6])
    assert answers[6].json()["cards"]
    assert "Condition" in answers[4].text

    captured = capsys.readouterr()
    records = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.__dict__}" for r in caplog.records
    )
    everything = "\n".join([caplog.text, records, captured.out, captured.err])
    assert len(request_lines(captured.err)) >= len(answers)
    assert [needle for needle in PHI if needle in everything] == []


# --- issue 12: what operators may turn off, what never reaches a log -----------------------------


def test_metrics_and_docs_can_be_turned_off() -> None:
    settings = Settings(allow_unauthenticated=True, metrics_enabled=False, docs_enabled=False)
    with TestClient(create_app(settings)) as off:
        for path in ("/metrics", "/docs", "/redoc"):
            assert off.get(path).status_code == 404, path
        assert off.get("/openapi.json").status_code == 200
    with TestClient(create_app(Settings(allow_unauthenticated=True))) as on:
        for path in ("/metrics", "/docs", "/redoc"):
            assert on.get(path).status_code == 200, path


def test_a_failing_statement_does_not_carry_its_parameters(tmp_path: Path) -> None:
    from sqlalchemy.exc import IntegrityError

    from app.store.database import NewScreening, Store

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    screening = NewScreening(
        guidance={"id": "dup"},
        trial_id="NCT06801119",
        criteria_version="1",
        as_of=date(2026, 6, 1),
        patient_ref=f"Patient/{PHI_ID}",
        eligibility="needs-data",
        record_digest="d",
        requested_by="t",
    )
    store.save([screening])
    with pytest.raises(IntegrityError) as failure:
        store.save([screening])
    store.close()
    text = "".join(traceback.format_exception(failure.value))
    assert "INSERT INTO screening" in text
    assert PHI_ID not in text
