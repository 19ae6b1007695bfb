"""``$prescreen`` over REST (issue 14): asynchronous runs, their outputs, sources confined to the
demo cohort, configured roots and the configured EHR, cancellation, audit, runs that survive a
restart and runs a crash interrupted."""

import csv
import io
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.catalog.loader import load_catalog
from app.core.settings import Settings
from app.main import create_app
from app.population.cohort import write_cohort
from app.population.runs import STALE, RunService
from app.store.database import PopulationRun, Store, get_run, save_run
from tests.loopback import free_port, serving
from tests.test_api import validate_r4

ASYNC = {"Prefer": "respond-async"}


def _params(source: str, as_of: str = "2025-11-01", *studies: str) -> dict[str, Any]:
    parameter: list[dict[str, Any]] = [
        {"name": "source", "valueString": source},
        {"name": "asOf", "valueDate": as_of},
    ]
    parameter += [{"name": "study", "valueString": s} for s in studies]
    return {"resourceType": "Parameters", "parameter": parameter}


@pytest.fixture
def app_settings(tmp_path: Path) -> Settings:
    (tmp_path / "roots" / "cohorts").mkdir(parents=True)
    return Settings(
        allow_unauthenticated=True,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        data_dir=tmp_path / "data",
        population_roots=(tmp_path / "roots",),
        population_workers=1,
    )


@pytest.fixture
def api(app_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(app_settings)) as client:
        yield client


def _poll(api: TestClient, url: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = api.get(url)
        if response.status_code != 202:
            return response
        assert "patients" in response.headers["X-Progress"]
        time.sleep(0.2)
    raise AssertionError("the run did not end in time")


def test_a_demo_run_answers_202_then_its_outputs(api: TestClient) -> None:
    started = api.post(
        "/fhir/ResearchStudy/NCT06801119/$prescreen", json=_params("demo"), headers=ASYNC
    )
    assert started.status_code == 202, started.text
    url = started.headers["Content-Location"]
    assert "/fhir/$prescreen-status/" in url
    done = _poll(api, url)
    assert done.status_code == 200, done.text
    result = done.json()
    validate_r4(result)
    values = {p["name"]: p for p in result["parameter"]}
    assert values["patients"]["valueInteger"] == 5
    funnel = api.get(values["funnel"]["valueUri"]).json()
    assert funnel[0]["trial"] == "NCT06801119" and funnel[0]["patients"] == 5
    rows = list(csv.DictReader(io.StringIO(api.get(values["candidates"]["valueUri"]).text)))
    assert len(rows) == 5
    screenings = api.get(values["screenings"]["valueUri"]).text.splitlines()
    assert len(screenings) == 5
    (trial,) = [p for p in result["parameter"] if p["name"] == "trial"]
    group_ref = next(p for p in trial["part"] if p["name"] == "group")["valueReference"]
    group = api.get(group_ref["reference"])
    assert group.status_code == 200
    validate_r4(group.json())
    # One AuditEvent for the run, naming its Group.
    store: Store = api.app.state.store  # type: ignore[attr-defined]
    _, events = store.audit_events(None, 0, 100)
    runs = [e for e in events if e.interaction == "prescreen"]
    assert len(runs) == 1 and runs[0].outcome == "0"
    assert runs[0].entity_ref == f"Group/{group.json()['id']}"


def test_every_trial_and_a_folder_under_a_root(api: TestClient, tmp_path: Path) -> None:
    folder = write_cohort(tmp_path / "roots" / "cohorts" / "c8", 8, seed=2)
    started = api.post("/fhir/ResearchStudy/$prescreen", json=_params(str(folder)), headers=ASYNC)
    assert started.status_code == 202, started.text
    result = _poll(api, started.headers["Content-Location"]).json()
    trials = [p for p in result["parameter"] if p["name"] == "trial"]
    assert len(trials) == 2
    service: RunService = api.app.state.population  # type: ignore[attr-defined]
    (run,) = service.list()
    assert run.status == "completed" and run.patients_done == 8
    assert run.outcomes and sum(run.outcomes.values()) == 16
    patient = next(iter(csv.DictReader(service.candidates_csv_path(run.id).open())))["patient"]
    guidance = service.screening(run.id, "NCT06801119", patient)
    assert guidance is not None and guidance["subject"]["reference"] == patient


@pytest.mark.parametrize(
    ("source", "status"),
    [
        ("/etc", 403),
        ("../../etc", 403),
        ("relative/folder", 403),
        ("https://evil.example/fhir/Group/1", 400),  # no EHR configured
    ],
)
def test_sources_outside_the_allowed_ones_are_refused(
    api: TestClient, tmp_path: Path, source: str, status: int
) -> None:
    response = api.post(
        "/fhir/ResearchStudy/NCT06801119/$prescreen", json=_params(source), headers=ASYNC
    )
    assert response.status_code == status, response.text
    validate_r4(response.json())


def test_a_symlink_out_of_a_root_is_refused(api: TestClient, tmp_path: Path) -> None:
    outside = write_cohort(tmp_path / "outside", 1)
    link = tmp_path / "roots" / "cohorts" / "link"
    link.symlink_to(outside)
    response = api.post(
        "/fhir/ResearchStudy/NCT06801119/$prescreen", json=_params(str(link)), headers=ASYNC
    )
    assert response.status_code == 403


def test_prefer_respond_async_is_required(api: TestClient) -> None:
    response = api.post("/fhir/ResearchStudy/NCT06801119/$prescreen", json=_params("demo"))
    assert response.status_code == 400
    assert "respond-async" in response.json()["issue"][0]["diagnostics"]


def test_unknown_run_and_unknown_trial(api: TestClient) -> None:
    assert api.get("/fhir/$prescreen-status/0123456789ab").status_code == 404
    response = api.post(
        "/fhir/ResearchStudy/NCT00000000/$prescreen", json=_params("demo"), headers=ASYNC
    )
    assert response.status_code == 404


def test_delete_cancels_a_run(api: TestClient, tmp_path: Path) -> None:
    folder = write_cohort(tmp_path / "roots" / "cohorts" / "big", 300, seed=4)
    started = api.post(
        "/fhir/ResearchStudy/NCT06801119/$prescreen", json=_params(str(folder)), headers=ASYNC
    )
    url = started.headers["Content-Location"]
    assert api.delete(url).status_code == 202
    ended = _poll(api, url)
    assert ended.status_code == 404
    assert "cancelled" in ended.json()["issue"][0]["diagnostics"]
    service: RunService = api.app.state.population  # type: ignore[attr-defined]
    run_id = url.rsplit("/", 1)[1]
    service.wait(run_id, 60)
    summary = service.get(run_id)
    assert summary is not None and summary.status == "cancelled"


def test_runs_survive_a_restart_and_an_interrupted_one_is_failed(
    app_settings: Settings,
) -> None:
    store = Store(app_settings.database_url)
    catalog = load_catalog(app_settings)
    now = datetime.now(UTC)

    def row(run_id: str, status: str, heartbeat: float) -> PopulationRun:
        return PopulationRun(
            id=run_id,
            status=status,
            trials='["NCT06801119"]',
            criteria_versions='{"NCT06801119": "1.0.0"}',
            as_of=date(2025, 11, 1),
            source="demo",
            who="someone",
            created=now,
            heartbeat=heartbeat,
            patients_total=10,
            patients_done=3,
            outcomes="{}",
            folder="/nowhere",
        )

    save_run(store, row("aaaaaaaaaaaa", "running", time.time() - STALE - 5))
    save_run(store, row("bbbbbbbbbbbb", "running", time.time()))  # another replica's, alive
    save_run(store, row("cccccccccccc", "completed", time.time() - 3600))
    service = RunService(app_settings, store, catalog)
    assert service.interrupted == 1
    crashed = service.get("aaaaaaaaaaaa")
    assert crashed is not None and crashed.status == "failed" and crashed.error
    assert "interrupted" in crashed.error
    alive = get_run(store, "bbbbbbbbbbbb")
    assert alive is not None and alive.status == "running"
    done = service.get("cccccccccccc")
    assert done is not None and done.status == "completed"
    assert {r.id for r in service.list()} == {"aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"}
    store.close()


def test_delete_stops_a_bulk_export_in_progress_and_deletes_the_job(tmp_path: Path) -> None:
    """A run whose source is the EHR spends its first minutes (or hours) in the export: DELETE
    must stop it there, and the EHR's job must be deleted, not left running."""
    seen: list[str] = []

    async def ehr(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        path, method = scope["path"], scope["method"]
        seen.append(f"{method} {path}")
        headers = [(b"content-type", b"application/fhir+json")]
        if path.endswith("/$export"):
            status = f"http://127.0.0.1:{port}/fhir/bulk-status/job-1".encode()
            headers += [(b"content-location", status)]
        elif path.endswith("/bulk-status/job-1") and method == "GET":
            headers += [(b"retry-after", b"1"), (b"x-progress", b"exporting")]
        else:
            await send({"type": "http.response.start", "status": 202, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    port = free_port()
    settings = Settings(
        allow_unauthenticated=True,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        data_dir=tmp_path / "data",
        ehr_base_url=f"http://127.0.0.1:{port}/fhir",
        population_workers=1,
    )
    with serving(ehr, port), TestClient(create_app(settings)) as api:
        started = api.post(
            "/fhir/ResearchStudy/NCT06801119/$prescreen",
            json=_params(f"http://127.0.0.1:{port}/fhir/Group/lupus"),
            headers=ASYNC,
        )
        assert started.status_code == 202, started.text
        url = started.headers["Content-Location"]
        deadline = time.monotonic() + 30
        while not any(s.startswith("GET /fhir/bulk-status") for s in seen):
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
        assert api.delete(url).status_code == 202
        service: RunService = api.app.state.population  # type: ignore[attr-defined]
        run_id = url.rsplit("/", 1)[1]
        service.wait(run_id, 10)  # the export polls every second or more: stopped, not finished
        summary = service.get(run_id)
        assert summary is not None and summary.status == "cancelled"
    assert seen[0] == "GET /fhir/Group/lupus/$export"
    assert seen[-1] == "DELETE /fhir/bulk-status/job-1"
