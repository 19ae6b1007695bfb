"""FHIR Bulk Data export into a folder of NDJSON (app/population/bulk_export.py).

End to end against a real FHIR server (sekmet-fhir, one of its own for this module so that the
expected content is exactly what was seeded): system, Patient and Group level, GET and POST
kick-off, ``_since``, manifest counts, and the job deleted afterwards. Faults a real server will
not produce on demand (429 with Retry-After on the status URL, 5xx on a download, a manifest
pointing at another host, a job that fails, a cancelled export) run against a small fake behind
``httpx.MockTransport``.
"""

import asyncio
import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from app.catalog.loader import Catalog
from app.core.errors import InvalidInput, UpstreamUnavailable
from app.core.settings import Settings, get_settings
from app.population import cli
from app.population.bulk_export import (
    ERRORS_DIR,
    BulkExportError,
    ExportLimits,
    ExportProgress,
    ExportResult,
    ExportScope,
    IncompleteExport,
    export_to_folder,
    fhir_instant,
    scope_of,
)
from app.population.cohort import write_demo
from app.population.patient_run import needed_data
from app.population.runner import run_population
from tests import fhir_server as fhir
from tests.conftest import DEMO_PATIENTS

Json = dict[str, Any]
GROUP_ID = "bulk-cohort"
MED_PATIENT = "bulk-med-patient"
# A patient whose prescription references a Medication resource (the demo records code their
# drugs inline): Medication is outside the Patient compartment.
MEDICATION_BUNDLE: Json = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {"resource": {"resourceType": "Patient", "id": MED_PATIENT, "gender": "female"}},
        {
            "resource": {
                "resourceType": "Medication",
                "id": "bulk-med-1",
                "code": {
                    "coding": [
                        {
                            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                            "code": "5521",
                            "display": "hydroxychloroquine",
                        }
                    ]
                },
            }
        },
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "bulk-med-request-1",
                "status": "active",
                "intent": "order",
                "subject": {"reference": f"Patient/{MED_PATIENT}"},
                "medicationReference": {"reference": "Medication/bulk-med-1"},
            }
        },
    ],
}


@dataclass(frozen=True)
class Seeded:
    server: fhir.FhirServer
    bundles: dict[str, Json]
    """Patient id -> its demo Bundle."""
    members: tuple[str, ...]
    seeded_before: datetime


def _keys(bundle: Json, types: set[str]) -> set[tuple[str, str]]:
    return {
        (e["resource"]["resourceType"], e["resource"]["id"])
        for e in bundle["entry"]
        if e["resource"]["resourceType"] in types
    }


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    if not fhir.installed():
        pytest.fail("run bash tests/run to install the FHIR test server", pytrace=False)
    bundles = {
        path.stem: json.loads(path.read_text()) for path in sorted(DEMO_PATIENTS.glob("*.json"))
    }
    members = tuple(sorted(bundles)[:2])
    bundles[MED_PATIENT] = MEDICATION_BUNDLE
    before = datetime.now(UTC) - timedelta(seconds=2)
    with fhir.running_fhir_server(tmp_path_factory.mktemp("bulk-fhir")) as server:
        fhir.seed(server.base_url, bundles.values())
        group = {
            "resourceType": "Group",
            "id": GROUP_ID,
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in members],
        }
        response = httpx.put(
            f"{server.base_url}/Group/{GROUP_ID}",
            json=group,
            headers={**fhir.STRICT, "Content-Type": fhir.FHIR_JSON},
            timeout=30,
        )
        assert response.status_code in {200, 201}, fhir.outcome_text(response)
        fhir.analyze(server.db_path)
        yield Seeded(server, bundles, members, before)


def _exported(result: ExportResult) -> set[tuple[str, str]]:
    keys = set()
    for exported in result.files:
        for line in exported.path.read_bytes().splitlines():
            resource = orjson.loads(line)
            assert resource["resourceType"] == exported.type
            keys.add((resource["resourceType"], resource["id"]))
    return keys


def _run(settings: Settings, dest: Path, **kwargs: Any) -> ExportResult:
    events: list[ExportProgress] = []
    kwargs.setdefault("since", None)
    kwargs.setdefault("group_id", None)
    result = asyncio.run(export_to_folder(settings, dest=dest, progress=events.append, **kwargs))
    assert events[0].phase == "kick-off"
    assert events[-1].phase == "done"
    return result


def _settings(base_url: str, **overrides: Any) -> Settings:
    return Settings(allow_unauthenticated=True, ehr_base_url=base_url, **overrides)


def test_the_types_exported_are_those_the_criteria_read(catalog: Catalog) -> None:
    types = needed_data(catalog.trials.values()).resource_types
    assert types[0] == "Patient"
    # Every resource type the two trials read, and nothing they do not (no Encounter, Claim...).
    assert {"Observation", "Condition", "MedicationRequest", "Medication"} <= set(types)
    assert not {"Encounter", "Claim", "ExplanationOfBenefit", "Group"} & set(types)
    assert len(types) == len(set(types))


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_group_export_brings_exactly_its_members_records(
    seeded: Seeded, catalog: Catalog, tmp_path: Path, method: str
) -> None:
    settings = _settings(seeded.server.base_url)
    types = list(needed_data(catalog.trials.values()).resource_types)
    result = _run(settings, tmp_path, group_id=GROUP_ID, types=types, method=method)
    expected = set().union(*(_keys(seeded.bundles[p], set(types)) for p in seeded.members))
    assert _exported(result) == expected
    assert {k[1] for k in expected if k[0] == "Patient"} == set(seeded.members)
    assert result.complete and not result.problems and result.notes == []
    # sekmet announces a count for every file; each was checked against the lines written.
    assert all(f.count == f.lines for f in result.files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.path.name for f in result.files)
    # The job is gone from the server once the files are read.
    assert result.deleted
    assert httpx.get(result.status_url, timeout=10).status_code == 404


def test_a_patient_export_brings_every_patient(
    seeded: Seeded, catalog: Catalog, tmp_path: Path
) -> None:
    settings = _settings(seeded.server.base_url)
    types = list(needed_data(catalog.trials.values()).resource_types)
    result = _run(settings, tmp_path, types=types)
    # Everything of every patient but the Medication, which is in no patient's compartment.
    in_compartment = set(types) - {"Medication"}
    expected = set().union(*(_keys(b, in_compartment) for b in seeded.bundles.values()))
    assert _exported(result) == expected
    assert result.by_type()["Patient"] == len(seeded.bundles)
    assert result.resources == len(expected)
    assert result.complete
    assert result.notes == [
        "1 medication use(s) reference a Medication the export did not include (Medication is "
        "outside the Patient compartment): those drugs cannot be identified"
    ]


def test_a_system_export_brings_the_types_asked_for(seeded: Seeded, tmp_path: Path) -> None:
    settings = _settings(seeded.server.base_url)
    result = _run(settings, tmp_path, types=["Patient", "Group", "Medication"], system=True)
    patients = {("Patient", pid) for pid in seeded.bundles}
    medication = ("Medication", "bulk-med-1")
    assert _exported(result) == patients | {("Group", GROUP_ID), medication}
    assert result.notes == []


def test_since_limits_the_export_to_what_changed(seeded: Seeded, tmp_path: Path) -> None:
    settings = _settings(seeded.server.base_url)
    later = _run(
        settings, tmp_path / "later", types=["Patient"], since=datetime.now(UTC) + timedelta(1)
    )
    assert later.files == [] and later.complete
    earlier = _run(settings, tmp_path / "earlier", types=["Patient"], since=seeded.seeded_before)
    assert earlier.by_type() == {"Patient": len(seeded.bundles)}


def test_an_unknown_group_is_refused_with_the_servers_reason(
    seeded: Seeded, tmp_path: Path
) -> None:
    settings = _settings(seeded.server.base_url)
    with pytest.raises(BulkExportError, match=r"404.*Group/no-such-group not found"):
        _run(settings, tmp_path, group_id="no-such-group", types=["Patient"])


def test_the_destination_must_be_empty(seeded: Seeded, tmp_path: Path) -> None:
    (tmp_path / "Patient.1.ndjson").write_text("{}\n")
    with pytest.raises(InvalidInput, match="not empty"):
        _run(_settings(seeded.server.base_url), tmp_path, types=["Patient"])


def test_since_is_written_as_a_utc_instant() -> None:
    moment = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=UTC) + timedelta(hours=0)
    assert fhir_instant(moment) == "2026-03-01T09:30:15.123Z"
    from zoneinfo import ZoneInfo

    local = datetime(2026, 3, 1, 10, 30, 15, tzinfo=ZoneInfo("Europe/Berlin"))
    assert fhir_instant(local) == "2026-03-01T09:30:15.000Z"


def _answers(folder: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(patient, trial) -> the candidate row: result, counts, each criterion's result, and the
    data to collect (its items in any order). Not the rank: it depends on the population."""
    with (folder / "candidates.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        (r["patient"], r["trial"]): (
            *(v for name, v in r.items() if name not in {"rank", "data_to_collect"}),
            sorted(re.split(r"[;,:] ", r["data_to_collect"])),
        )
        for r in rows
    }


def test_an_exported_cohort_gets_the_answers_of_its_ndjson_folder(
    seeded: Seeded, catalog: Catalog, tmp_path: Path
) -> None:
    """The demo patients read through $export from the FHIR server, and the same patients
    written straight to NDJSON: the population run gives every patient the same answers.

    Not byte-identical reports: sekmet writes each file in id order, the demo files are in
    Bundle order, and where several resources are equivalent (two prescriptions of the same
    drug, two anti-infectives started the same day) the engine lists them, and picks the one
    it cites, in record order."""
    settings = _settings(seeded.server.base_url)
    trials = list(catalog.trials.values())
    types = list(needed_data(trials).resource_types)
    _run(settings, tmp_path / "export", types=types)
    as_of = date(2026, 3, 1)
    run_population(trials, as_of, tmp_path / "export", tmp_path / "from-ehr", workers=1)
    run_population(trials, as_of, write_demo(tmp_path / "demo"), tmp_path / "from-files", workers=1)
    exported, written = _answers(tmp_path / "from-ehr"), _answers(tmp_path / "from-files")
    assert len(written) == (len(seeded.bundles) - 1) * len(trials)
    assert {k: exported[k] for k in written} == written
    # The one patient only the server holds is screened too.
    assert {k[0] for k in exported} - {k[0] for k in written} == {f"Patient/{MED_PATIENT}"}


# --- faults, against a fake ----------------------------------------------------------------------

BASE = "http://ehr.test/fhir"
STATUS = f"{BASE}/bulk-status/job-1"
PATIENTS = b'{"resourceType":"Patient","id":"p1"}\n{"resourceType":"Patient","id":"p2"}\n'
CONDITIONS = b'{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"}}\n'


@dataclass
class FakeBulk:
    """A Bulk Data server: kick-off, a status URL, files. Each queue holds answers sent before
    the normal one (a fault, then the real thing)."""

    files: dict[str, bytes] = field(
        default_factory=lambda: {"Patient.ndjson": PATIENTS, "Condition.ndjson": CONDITIONS}
    )
    running_polls: int = 1
    requires_token: bool = False
    status_faults: list[httpx.Response] = field(default_factory=list)
    file_faults: dict[str, list[httpx.Response]] = field(default_factory=dict)
    output: list[Json] | None = None
    error: list[Json] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    polls: int = 0

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = str(request.url)
        if not url.startswith(BASE):
            return httpx.Response(200, content=PATIENTS)  # must never be asked
        path = request.url.path.removeprefix("/fhir/")
        if path.endswith("$export"):
            return httpx.Response(202, headers={"Content-Location": STATUS})
        if url == STATUS:
            if request.method == "DELETE":
                return httpx.Response(202)
            if self.status_faults:
                return self.status_faults.pop(0)
            self.polls += 1
            if self.polls <= self.running_polls:
                return httpx.Response(202, headers={"X-Progress": f"poll {self.polls}"})
            return httpx.Response(200, json=self.manifest())
        name = path.removeprefix("bulk-files/job-1/")
        if self.file_faults.get(name):
            return self.file_faults[name].pop(0)
        if name in self.files:
            return httpx.Response(200, content=self.files[name])
        return httpx.Response(404)

    def manifest(self) -> Json:
        output = self.output
        if output is None:
            output = [
                {"type": name.split(".")[0], "url": f"{BASE}/bulk-files/job-1/{name}"}
                for name in self.files
            ]
        return {
            "transactionTime": "2026-03-01T00:00:00Z",
            "request": f"{BASE}/Patient/$export",
            "requiresAccessToken": self.requires_token,
            "output": output,
            "error": self.error,
        }

    def sent(self, method: str, url: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and str(r.url).startswith(url)]


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _fake_run(
    fake: FakeBulk,
    dest: Path,
    sleeps: Sleeps | None = None,
    settings: Settings | None = None,
    **kwargs: Any,
) -> tuple[ExportResult, list[ExportProgress]]:
    events: list[ExportProgress] = []
    result = asyncio.run(
        export_to_folder(
            settings or _settings(BASE),
            **{
                "group_id": None,
                "since": None,
                "types": ["Patient", "Condition"],
                "dest": dest,
                "progress": events.append,
                "transport": fake.transport(),
                "sleep": sleeps or Sleeps(),
                **kwargs,
            },
        )
    )
    return result, events


def test_the_status_poll_honours_retry_after_and_shows_progress(tmp_path: Path) -> None:
    fake = FakeBulk(running_polls=2)
    fake.status_faults = [
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(202, headers={"Retry-After": "86400", "X-Progress": "50% done"}),
    ]
    sleeps = Sleeps()
    result, events = _fake_run(fake, tmp_path, sleeps)
    assert result.by_type() == {"Patient": 2, "Condition": 1}
    # 429 -> the 7 s asked; a day asked -> the 120 s bound; no Retry-After -> growing waits.
    assert sleeps.delays[:2] == [7.0, 120.0]
    assert all(1.0 <= d <= 120.0 for d in sleeps.delays)
    shown = [e.message for e in events if e.phase == "waiting"]
    assert "50% done" in shown and "poll 1" in shown and "poll 2" in shown
    assert len(fake.sent("DELETE", STATUS)) == 1


def test_a_failed_download_is_retried_and_the_file_is_whole(tmp_path: Path) -> None:
    fake = FakeBulk()
    fake.file_faults["Patient.ndjson"] = [httpx.Response(503), httpx.Response(502)]
    result, _ = _fake_run(fake, tmp_path)
    assert (tmp_path / "Patient.1.ndjson").read_bytes() == PATIENTS
    assert not list(tmp_path.glob("*.part"))
    assert len(fake.sent("GET", f"{BASE}/bulk-files/job-1/Patient.ndjson")) == 3
    assert result.complete


def test_a_download_that_keeps_failing_makes_the_export_incomplete(tmp_path: Path) -> None:
    fake = FakeBulk()
    fake.file_faults["Condition.ndjson"] = [httpx.Response(503)] * 10
    with pytest.raises(IncompleteExport, match=r"Condition file .* answered 503 \(after 4 tries\)"):
        _fake_run(fake, tmp_path)
    assert not (tmp_path / "Condition.1.ndjson").exists()
    assert not list(tmp_path.glob("*.part"))
    assert len(fake.sent("DELETE", STATUS)) == 1


def test_a_manifest_pointing_at_another_host_is_refused(tmp_path: Path) -> None:
    fake = FakeBulk(requires_token=True)
    fake.output = [
        {"type": "Patient", "url": f"{BASE}/bulk-files/job-1/Patient.ndjson", "count": 2},
        {"type": "Condition", "url": "http://attacker.test/fhir/Condition.ndjson"},
        {"type": "Condition", "url": "http://ehr.test:8443/fhir/Condition.ndjson"},
        {"type": "Condition", "url": f"{BASE}/../admin/Condition.ndjson"},
    ]
    settings = _settings(BASE, ehr_auth="bearer", ehr_token=SecretStr("s3cret"))
    with pytest.raises(IncompleteExport) as caught:
        _fake_run(fake, tmp_path, settings=settings)
    problems = caught.value.result.problems
    assert len(problems) == 3 and all("not under the EHR base URL" in p for p in problems)
    assert all(str(r.url).startswith(BASE) for r in fake.requests)
    assert not (tmp_path / "Condition.1.ndjson").exists()


def test_the_token_goes_with_the_files_only_when_the_manifest_asks(tmp_path: Path) -> None:
    settings = _settings(BASE, ehr_auth="bearer", ehr_token=SecretStr("s3cret"))
    for requires in (True, False):
        fake = FakeBulk(requires_token=requires)
        _fake_run(fake, tmp_path / str(requires), settings=settings)
        files = fake.sent("GET", f"{BASE}/bulk-files/")
        assert len(files) == 2
        assert all(("authorization" in r.headers) is requires for r in files)
        assert all(r.headers.get("authorization") == "Bearer s3cret" for r in files) is requires
        # The kick-off and the status URL always carry it.
        assert fake.sent("GET", f"{BASE}/Patient/$export")[0].headers["authorization"]


def test_a_job_that_fails_is_reported_with_the_servers_reason(tmp_path: Path) -> None:
    fake = FakeBulk()
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": "disk full"}],
    }
    fake.status_faults = [httpx.Response(500, json=outcome)]
    with pytest.raises(BulkExportError, match="status URL answered 500: disk full") as caught:
        _fake_run(fake, tmp_path)
    # What the API and the CLI already answer for an EHR that failed: 502, with the reason.
    assert isinstance(caught.value, UpstreamUnavailable) and caught.value.status_code == 502
    assert "disk full" in caught.value.message
    assert len(fake.sent("DELETE", STATUS)) == 1
    assert not fake.sent("GET", f"{BASE}/bulk-files/")


def test_a_transient_poll_failure_is_retried(tmp_path: Path) -> None:
    fake = FakeBulk()
    transient = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "transient", "diagnostics": "busy"}],
    }
    fake.status_faults = [httpx.Response(500, json=transient), httpx.Response(503)]
    result, _ = _fake_run(fake, tmp_path)
    assert result.complete


def test_counts_that_disagree_with_the_manifest_make_the_export_incomplete(
    tmp_path: Path,
) -> None:
    fake = FakeBulk()
    fake.output = [
        {"type": "Patient", "url": f"{BASE}/bulk-files/job-1/Patient.ndjson", "count": 3}
    ]
    with pytest.raises(IncompleteExport, match="announced 3 resources, 2 arrived"):
        _fake_run(fake, tmp_path)


def test_error_files_are_kept_apart_and_their_issues_reported(tmp_path: Path) -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "Patient/p9 unreadable"}
        ],
    }
    fake = FakeBulk()
    fake.files["err.ndjson"] = orjson.dumps(outcome) + b"\n"
    fake.output = [
        {"type": "Patient", "url": f"{BASE}/bulk-files/job-1/Patient.ndjson", "count": 2}
    ]
    fake.error = [{"type": "OperationOutcome", "url": f"{BASE}/bulk-files/job-1/err.ndjson"}]
    result, _ = _fake_run(fake, tmp_path)
    assert [(i.severity, i.diagnostics) for i in result.issues] == [
        ("error", "Patient/p9 unreadable")
    ]
    assert result.issue_count == 1
    assert [f.path for f in result.error_files] == [
        tmp_path / ERRORS_DIR / "OperationOutcome.1.ndjson"
    ]
    assert sorted(p.name for p in tmp_path.glob("*.ndjson")) == ["Patient.1.ndjson"]


def test_an_export_that_does_not_finish_in_time_is_deleted(tmp_path: Path) -> None:
    fake = FakeBulk(running_polls=10**6)
    with pytest.raises(BulkExportError, match="did not finish within"):
        _fake_run(fake, tmp_path, limits=ExportLimits(deadline=5.0))
    assert len(fake.sent("DELETE", STATUS)) == 1


def test_a_cancelled_export_deletes_the_job(tmp_path: Path) -> None:
    fake = FakeBulk(running_polls=10**6)

    async def forever(_: float) -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(
            export_to_folder(
                _settings(BASE),
                group_id=None,
                since=None,
                types=["Patient"],
                dest=tmp_path,
                transport=fake.transport(),
                sleep=forever,
            )
        )
        while not fake.polls:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(fake.sent("DELETE", STATUS)) == 1


def test_a_status_url_on_another_host_is_not_followed(tmp_path: Path) -> None:
    fake = FakeBulk()

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("$export"):
            fake.requests.append(request)
            return httpx.Response(202, headers={"Content-Location": "http://elsewhere.test/s/1"})
        return fake.handle(request)

    with pytest.raises(BulkExportError, match="not under the EHR base URL"):
        asyncio.run(
            export_to_folder(
                _settings(BASE),
                group_id=None,
                since=None,
                types=["Patient"],
                dest=tmp_path,
                transport=httpx.MockTransport(handle),
                sleep=Sleeps(),
            )
        )
    assert all(str(r.url).startswith(BASE) for r in fake.requests)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"types": ["Patient", "../etc"]}, "not resource types"),
        ({"types": []}, "not resource types"),
        ({"types": ["Patient"], "group_id": "a/b"}, "not a FHIR id"),
        ({"types": ["Patient"], "group_id": ".."}, "not a FHIR id"),
        ({"types": ["Patient"], "since": datetime(2026, 1, 1)}, "time zone"),
    ],
)
def test_bad_requests_are_refused_before_any_call(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    fake = FakeBulk()
    arguments: dict[str, Any] = {"group_id": None, "since": None, **kwargs}
    with pytest.raises(InvalidInput, match=message):
        asyncio.run(
            export_to_folder(
                _settings(BASE), dest=tmp_path, transport=fake.transport(), **arguments
            )
        )
    assert fake.requests == []


def test_medications_left_out_of_the_export_are_noted(tmp_path: Path) -> None:
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationReference": {"reference": "Medication/m1"},
    }
    fake = FakeBulk()
    fake.files["MedicationRequest.ndjson"] = orjson.dumps(request) + b"\n"
    types = ["Patient", "MedicationRequest", "Medication"]
    result, _ = _fake_run(fake, tmp_path / "without", types=types)
    assert result.complete
    assert len(result.notes) == 1 and result.notes[0].startswith("1 medication use(s)")
    medication = {"resourceType": "Medication", "id": "m1"}
    fake = FakeBulk()
    fake.files["MedicationRequest.ndjson"] = orjson.dumps(request) + b"\n"
    fake.files["Medication.ndjson"] = orjson.dumps(medication) + b"\n"
    result, _ = _fake_run(fake, tmp_path / "with", types=types)
    assert result.notes == []


@pytest.mark.parametrize(
    ("url", "scope"),
    [
        (f"{BASE}/Group/cohort-1", ExportScope(group_id="cohort-1")),
        (f"{BASE}/Group/cohort-1/$export", ExportScope(group_id="cohort-1")),
        (f"{BASE}/Patient", ExportScope()),
        (f"{BASE}/Patient/$export", ExportScope()),
        (BASE, ExportScope(system=True)),
        (f"{BASE}/$export", ExportScope(system=True)),
    ],
)
def test_a_kick_off_url_names_its_scope(url: str, scope: ExportScope) -> None:
    assert scope_of(_settings(BASE), url) == scope


@pytest.mark.parametrize(
    "url",
    [
        "http://elsewhere.test/fhir/Group/cohort-1",
        "http://ehr.test/fhirx/Group/1",
        f"{BASE}/Group/a/b",
        f"{BASE}/Group/../../admin",
        f"{BASE}/Group/..",
        f"{BASE}/Observation",
        f"{BASE}/Group/1?_type=Patient",
    ],
)
def test_a_url_outside_the_configured_ehr_names_no_export(url: str) -> None:
    with pytest.raises(InvalidInput):
        scope_of(_settings(BASE), url)


def test_the_cli_prescreens_a_group_exported_from_the_ehr(
    seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("TRIALSCREEN_EHR_BASE_URL", seeded.server.base_url)
    get_settings.cache_clear()
    try:
        out = tmp_path / "run"
        code = cli.main(
            [
                "prescreen",
                "--trial",
                "NCT06801119",
                "--as-of",
                "2025-11-01",
                "--bulk-group",
                f"{seeded.server.base_url}/Group/{GROUP_ID}",
                "--out",
                str(out),
                "--workers",
                "1",
            ]
        )
    finally:
        get_settings.cache_clear()
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "2 patients" in printed.out
    assert "waiting" in printed.err or "downloading" in printed.err
    with (out / "candidates.csv").open(newline="") as f:
        patients = {row["patient"] for row in csv.DictReader(f)}
    assert patients == {f"Patient/{p}" for p in seeded.members}
