"""The population run on Spark (app/population/spark_engine.py), in local mode on two cores.

Every answer must be the one ``screen_patient`` gives for the patient's whole record (which is
the one ``$screen`` gives for a Bundle of it): Spark only reads, selects and groups. What cannot
be read is reported with its file and line, and never makes a patient eligible.

Needs Java 17 (``tests/run`` installs it where missing); one Spark session serves the module.
"""

import gzip
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from app.catalog.loader import Catalog
from app.core.errors import InvalidInput
from app.core.settings import Settings
from app.population import cli
from app.population.patient_run import PatientResult, needed_data, screen_patient
from app.population.runner import run_population
from app.population.spark_engine import (
    BAD,
    ERROR,
    KEEP,
    LineRules,
    SparkRun,
    classify,
    run_spark,
    spark_results,
    spark_session,
    without_secrets,
)
from tests.conftest import DEMO_PATIENTS

pytestmark = pytest.mark.skipif(
    shutil.which("java") is None, reason="Spark needs Java 17 (tests/run installs it)"
)

Json = dict[str, Any]
AS_OF = date(2026, 3, 1)
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = spark_session("local[2]")
    try:
        yield session
    finally:
        session.stop()


def _bundles() -> dict[str, Json]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DEMO_PATIENTS.glob("*.json"))}


def _write(folder: Path, bundles: list[Json], gz: bool = True) -> Path:
    """The bundles as Bulk Data output: one file per type, Observations split in two files,
    the second gzipped unless not ``gz`` (``Observation.1.ndjson``, ``Observation.2.ndjson.gz``)."""
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[bytes]] = {}
    for bundle in bundles:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            by_type.setdefault(resource["resourceType"], []).append(orjson.dumps(resource))
    for kind, lines in by_type.items():
        if kind == "Observation":
            half = len(lines) // 2
            (folder / "Observation.1.ndjson").write_bytes(b"\n".join(lines[:half]) + b"\n")
            rest = b"\n".join(lines[half:]) + b"\n"
            if gz:
                with gzip.open(folder / "Observation.2.ndjson.gz", "wb") as out:
                    out.write(rest)
            else:
                (folder / "Observation.2.ndjson").write_bytes(rest)
        else:
            (folder / f"{kind}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return folder


def _comparable(result: PatientResult) -> tuple[Any, ...]:
    """Everything but the report's own id (and the identifier made of it)."""
    guidance = {k: v for k, v in result.guidance.items() if k not in {"id", "identifier"}}
    return (
        result.trial,
        result.patient,
        result.result,
        result.criteria,
        result.data_requests,
        result.review,
        result.problems,
        orjson.dumps(guidance, option=orjson.OPT_SORT_KEYS),
    )


def _direct(catalog: Catalog, bundle: Json, **kwargs: Any) -> list[PatientResult]:
    resources = [e["resource"] for e in bundle["entry"]]
    trials = list(catalog.trials.values())
    return screen_patient(trials, resources, AS_OF, settings=Settings(), now=NOW, **kwargs)


def _run(spark: Any, catalog: Catalog, folder: Path) -> tuple[SparkRun, list[PatientResult]]:
    trials = list(catalog.trials.values())
    run = spark_results(trials, AS_OF, folder, spark=spark, settings=Settings(), now=NOW)
    return run, list(run.results)


def test_spark_gives_every_patient_the_answer_of_their_whole_record(
    spark: Any, catalog: Catalog, tmp_path: Path
) -> None:
    bundles = _bundles()
    folder = _write(tmp_path / "cohort", list(bundles.values()))
    (folder / "Encounter.ndjson").write_text('{"resourceType":"Encounter","id":"e1"}\n')
    run, results = _run(spark, catalog, folder)
    assert run.errors == [] and run.errors_total == 0
    assert run.skipped_types == ["Encounter"]
    assert run.patients_total == len(bundles)
    expected = [r for pid in sorted(bundles) for r in _direct(catalog, bundles[pid])]
    assert len(results) == len(bundles) * len(catalog.trials)
    # In patient id order, and equal to screening the whole record directly.
    assert [_comparable(r) for r in results] == [_comparable(r) for r in expected]
    # Only what the criteria read was handed over (not every Observation of the record).
    total = sum(len(b["entry"]) for b in bundles.values())
    assert 0 < run.resources_read < total


def test_what_cannot_be_read_is_reported_and_held_against_the_patient(
    spark: Any, catalog: Catalog, tmp_path: Path
) -> None:
    bundles = _bundles()
    first, second = sorted(bundles)[:2]
    folder = _write(tmp_path / "cohort", [bundles[first], bundles[second]])
    conditions = folder / "Condition.ndjson"
    lines = conditions.read_bytes().splitlines()
    broken = f'{{"resourceType":"Condition","subject":{{"reference":"Patient/{first}"}}, oops'
    orphan = '{"resourceType":"Condition","id":"c-ghost","subject":{"reference":"Patient/ghost"}}'
    lines += [
        broken.encode(),
        b'{"resourceType":"Condition","id":"c-nobody"}',
        b'{"resourceType":"NotAType","id":"x"}',
        orphan.encode(),
    ]
    conditions.write_bytes(b"\n".join(lines) + b"\n")
    (folder / "Procedure.ndjson").open("ab").write(b"{not json, names nobody\n")
    (folder / "notes.ndjson").write_text("{}\n")
    run, results = _run(spark, catalog, folder)

    n = len(lines)
    procedure_line = len((folder / "Procedure.ndjson").read_bytes().splitlines())
    described = [e.describe() for e in run.errors]
    assert described == [
        "notes.ndjson: not a Bulk Data file name ({Type}.ndjson)",
        f"Condition.ndjson:{n - 3}: not valid JSON",
        f"Condition.ndjson:{n - 2}: Condition/c-nobody names no patient (subject or patient)",
        f"Condition.ndjson:{n - 1}: resourceType NotAType is no FHIR R4 resource type",
        f"Procedure.ndjson:{procedure_line}: not valid JSON",
        "Patient.ndjson: 1 resource(s) of Patient/ghost, whom no Patient file holds: not screened",
    ]
    assert run.errors[1].patient == first
    assert run.patients_total == 2
    # The invalid Procedure line names nobody: held against both patients; the broken Condition
    # only against the patient it names. Exactly as screen_patient holds such parts back.
    everyone = (
        "Procedure",
        f"Procedure.ndjson line {procedure_line}: not valid JSON; it names no patient, "
        "so it may be any",
    )
    own = ("Condition", f"Condition.ndjson line {n - 3}: not valid JSON")
    expected = _direct(catalog, bundles[first], unreadable=[everyone, own])
    expected += _direct(catalog, bundles[second], unreadable=[everyone])
    assert [_comparable(r) for r in results] == [_comparable(r) for r in expected]
    assert all(r.result != "eligible" for r in results)
    warnings = json.dumps([r.guidance for r in results if r.patient == f"Patient/{first}"])
    assert f"Condition.ndjson line {n - 3}" in warnings


def _screenings(folder: Path) -> list[bytes]:
    """The reports, without what differs between two runs (their ids and issue time)."""
    out = []
    for line in (folder / "screenings.ndjson").read_bytes().splitlines():
        report = orjson.loads(line)
        for key in ("id", "identifier", "occurrenceDateTime"):
            report.pop(key, None)
        out.append(orjson.dumps(report, option=orjson.OPT_SORT_KEYS))
    return out


def test_spark_and_duckdb_write_the_same_outputs(
    spark: Any, catalog: Catalog, tmp_path: Path
) -> None:
    bundles = _bundles()
    folder = _write(tmp_path / "cohort", list(bundles.values()))
    conditions = folder / "Condition.ndjson"
    first = sorted(bundles)[0]
    broken = f'{{"resourceType":"Condition","subject":{{"reference":"Patient/{first}"}}, oops'
    with conditions.open("ab") as extra:
        extra.write(broken.encode() + b"\n")
        extra.write(b'{"resourceType":"Condition","id":"c-nobody"}\n')
        extra.write(
            b'{"resourceType":"Condition","id":"c-x","subject":{"reference":"Patient/x"}}\n'
        )
    (folder / "Encounter.ndjson").write_text('{"resourceType":"Encounter","id":"e1"}\n')
    trials = list(catalog.trials.values())
    settings = Settings()
    duck = run_population(
        trials, AS_OF, folder, tmp_path / "duckdb", workers=1, settings=settings, run_id="r1"
    )
    progress: list[tuple[int, int]] = []
    sparked = run_spark(
        trials,
        AS_OF,
        folder,
        tmp_path / "spark",
        spark=spark,
        settings=settings,
        progress=lambda done, total: progress.append((done, total)),
        run_id="r1",
    )
    assert sparked.errors == duck.errors and len(duck.errors) == 3
    assert (sparked.patients, sparked.patients_total) == (duck.patients, len(bundles))
    assert sparked.lines == duck.lines
    # DuckDB also leaves out the Conditions, Procedures and Immunizations no check knows
    # (selection.py); Spark hands them all to the engine. The answers are the same.
    assert sparked.resources > duck.resources
    assert sparked.skipped_types == duck.skipped_types == ("Encounter",)
    assert sparked.funnel == duck.funnel and sparked.outcomes == duck.outcomes
    assert progress[0] == (0, len(bundles)) and progress[-1] == (len(bundles), len(bundles))
    assert _screenings(tmp_path / "spark") == _screenings(tmp_path / "duckdb")
    for name in ("candidates.csv", "funnel.json", "funnel.parameters.json", "errors.json"):
        spark_file, duck_file = tmp_path / "spark" / name, tmp_path / "duckdb" / name
        assert spark_file.read_bytes() == duck_file.read_bytes(), name
    groups = sorted(p.name for p in (tmp_path / "duckdb").glob("Group-*.json"))
    assert groups and groups == sorted(p.name for p in (tmp_path / "spark").glob("Group-*.json"))
    for name in groups:
        assert (tmp_path / "spark" / name).read_bytes() == (tmp_path / "duckdb" / name).read_bytes()


def test_the_cli_runs_on_spark(spark: Any, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "run"
    argv = ["prescreen", "--trial", "NCT06801119", "--as-of", "2025-11-01", "--ndjson", "demo"]
    assert cli.main([*argv, "--engine", "spark", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "5 patients" in printed.out and "5/5 patients" in printed.err
    assert (out / "candidates.csv").is_file() and (out / "Group-NCT06801119.json").is_file()
    # The module's session was used and is still running for the next test.
    assert spark.sparkContext._jsc is not None
    assert spark.sparkContext.parallelize([1, 2]).count() == 2


def test_a_folder_without_patients_is_refused(spark: Any, catalog: Catalog, tmp_path: Path) -> None:
    (tmp_path / "Condition.ndjson").write_text("{}\n")
    with pytest.raises(InvalidInput, match=r"no Patient\.ndjson"):
        spark_results(list(catalog.trials.values()), AS_OF, tmp_path, spark=spark)


# --- one line, without Spark ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def rules(catalog: Catalog) -> LineRules:
    needed = needed_data(catalog.trials.values())
    return LineRules(
        names=("Observation.ndjson", "Condition.ndjson", "Patient.ndjson"),
        types=("Observation", "Condition", "Patient"),
        needed_types=frozenset(needed.resource_types),
        wanted_codes=frozenset(needed.observation_codes),
    )


def _observation(code: str | None, **extra: Any) -> str:
    resource: Json = {"resourceType": "Observation", "id": "o1", **extra}
    if code is not None:
        resource["code"] = {"coding": [{"system": "http://loinc.org", "code": code}]}
    resource.setdefault("subject", {"reference": "Patient/p1"})
    return json.dumps(resource)


@pytest.mark.parametrize(
    ("reference", "patient"),
    [
        ("Patient/p1", "p1"),
        ("https://ehr.example/fhir/Patient/p1", "p1"),
        ("Patient/p1/_history/3", "p1"),
        ("urn:uuid:5eae80ac-ee32-45a6-8ac9-af4c764d7bed", "5eae80ac-ee32-45a6-8ac9-af4c764d7bed"),
    ],
)
def test_a_resource_is_filed_under_the_patient_it_names(
    rules: LineRules, reference: str, patient: str
) -> None:
    line = json.dumps(
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": reference}}
    )
    ((kind, key, payload),) = classify(rules, 1, 7, line)
    assert (kind, key, payload[:2]) == (KEEP, patient, (1, 7))


def test_observations_are_kept_when_a_criterion_may_read_them(rules: LineRules) -> None:
    haemoglobin = "718-7"
    assert ("http://loinc.org", haemoglobin) in rules.wanted_codes
    assert classify(rules, 0, 1, _observation(haemoglobin))[0][0] == KEEP
    # No code at all: it may bear on anything, so the reader must see it.
    assert classify(rules, 0, 2, _observation(None))[0][0] == KEEP
    # A component's code counts (blood pressure panels carry theirs there).
    component = {"code": {"coding": [{"code": haemoglobin}]}}
    assert classify(rules, 0, 3, _observation("0000-0", component=[component]))[0][0] == KEEP
    # A code no criterion reads (body height): not handed to the engine.
    assert classify(rules, 0, 4, _observation("8302-2")) == []
    # Known only by its name (a local code, no LOINC): the name safety net reads it.
    local = {"coding": [{"system": "http://lab.example.org", "code": "HGB"}], "text": "Hemoglobin"}
    named = json.loads(_observation(None))
    named["code"] = local
    assert classify(rules, 0, 5, json.dumps(named))[0][0] == KEEP


def test_an_invalid_line_is_reported_and_held_against_whom_it_names(rules: LineRules) -> None:
    text = '{"resourceType":"Condition","subject":{"reference":"Patient/p9"}, broken'
    out = classify(rules, 1, 12, text)
    assert out == [
        (ERROR, None, (1, 12, "not valid JSON", "p9")),
        (BAD, "p9", (1, 12, "Condition", "Condition.ndjson line 12: not valid JSON")),
    ]
    assert classify(rules, 1, 13, "   ") == []


def test_no_secret_is_shipped_to_the_executors() -> None:
    settings = Settings(
        ehr_auth="bearer",
        ehr_token=SecretStr("s3cret"),
        smart_private_key=SecretStr("-----BEGIN PRIVATE KEY-----"),
        canonical_base="https://trials.example/fhir",
    )
    shipped = without_secrets(settings)
    assert shipped.ehr_token is None and shipped.smart_private_key is None
    assert shipped.canonical_base == "https://trials.example/fhir"
    assert settings.ehr_token is not None  # the driver's own settings are untouched


def test_an_unreadable_patient_line_is_no_doubt_on_anyone_else(rules: LineRules) -> None:
    # Reported (that patient is not screened), not held against every other patient.
    assert classify(rules, 2, 5, '{"resourceType":"Patient","id":"p1", broken') == [
        (ERROR, None, (2, 5, "not valid JSON", None))
    ]
    # A line of another type that names nobody may be anyone's: held against everyone.
    (_, held) = classify(rules, 1, 6, "{broken")
    assert held[:2] == (BAD, None) and held[2][2] == "Condition"
