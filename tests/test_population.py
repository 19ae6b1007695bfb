"""Pre-screening a population (issue 14): the answer for every patient equals ``$screen``'s, what
cannot be read is reported with its file and line and never makes anyone eligible, and the
outputs (candidates, funnel, Groups) say what the screenings say."""

import csv
import gzip
import json
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from app.catalog.loader import Catalog
from app.catalog.trial import LoadedTrial
from app.core.settings import Settings
from app.population import cli
from app.population.cohort import demo_records, write_cohort, write_demo
from app.population.ndjson_source import NdjsonSource
from app.population.patient_run import needed_data, screen_patient
from app.population.prefilter import needles_of, prefilters
from app.population.runner import run_population
from tests.golden_cases import load_cases
from tests.test_api import validate_r4

DEMO = Path(__file__).resolve().parent.parent / "app" / "demo" / "patients"
AS_OF = date(2025, 11, 1)
Json = dict[str, Any]


def _answer(guidance: Json) -> Json:
    """A GuidanceResponse without what differs between two issues of the same screening."""
    return {
        k: v
        for k, v in guidance.items()
        if k not in {"id", "identifier", "occurrenceDateTime", "meta"}
    }


def _screenings(out: Path) -> dict[tuple[str, str], Json]:
    found = {}
    for line in (out / "screenings.ndjson").read_bytes().splitlines():
        g = orjson.loads(line)
        trial = g["moduleCanonical"].split("/PlanDefinition/")[1].split("|")[0]
        found[(trial, g["subject"]["reference"])] = g
    return found


@pytest.mark.parametrize("as_of", ["2025-11-01", "2023-06-01"])
def test_every_demo_patient_gets_the_answer_screen_gives(
    client: TestClient, catalog: Catalog, settings: Settings, tmp_path: Path, as_of: str
) -> None:
    trials = list(catalog.trials.values())
    report = run_population(
        trials,
        date.fromisoformat(as_of),
        write_demo(tmp_path / "in"),
        tmp_path / "out",
        workers=1,
        settings=settings,
    )
    assert report.patients == len(list(DEMO.glob("*.json"))) == 5
    found = _screenings(tmp_path / "out")
    assert len(found) == 5 * len(trials)
    for path in sorted(DEMO.glob("*.json")):
        bundle = json.loads(path.read_text())
        params = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "bundle", "resource": bundle},
                {"name": "asOf", "valueDate": as_of},
            ],
        }
        posted = client.post("/fhir/ResearchStudy/$screen", json=params)
        assert posted.status_code == 200
        for entry in posted.json()["entry"]:
            screened = entry["resource"]
            trial = screened["moduleCanonical"].split("/PlanDefinition/")[1].split("|")[0]
            population = found[(trial, f"Patient/{path.stem}")]
            assert _answer(population) == _answer(screened)
            validate_r4(population)


def test_worker_processes_give_the_same_answers(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    trials = list(catalog.trials.values())
    folder = write_cohort(tmp_path / "in", 24, seed=3)
    one = run_population(trials, AS_OF, folder, tmp_path / "one", workers=1, settings=settings)
    two = run_population(trials, AS_OF, folder, tmp_path / "two", workers=2, settings=settings)
    assert one.patients == two.patients == 24
    assert two.workers == 2
    a, b = _screenings(tmp_path / "one"), _screenings(tmp_path / "two")
    assert a.keys() == b.keys()
    assert all(_answer(a[k]) == _answer(b[k]) for k in a)
    assert (tmp_path / "one" / "candidates.csv").read_text() == (
        tmp_path / "two" / "candidates.csv"
    ).read_text()


def test_numbered_and_gzipped_files_read_as_one(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    trials = list(catalog.trials.values())
    plain = write_cohort(tmp_path / "plain", 6, seed=5)
    split = tmp_path / "split"
    split.mkdir()
    for path in plain.iterdir():
        lines = path.read_bytes().splitlines(keepends=True)
        half = len(lines) // 2
        (split / f"{path.stem}.1.ndjson").write_bytes(b"".join(lines[:half]))
        with gzip.open(split / f"{path.stem}.2.ndjson.gz", "wb") as gz:
            gz.write(b"".join(lines[half:]))
    run_population(trials, AS_OF, plain, tmp_path / "a", workers=1, settings=settings)
    run_population(trials, AS_OF, split, tmp_path / "b", workers=1, settings=settings)
    a, b = _screenings(tmp_path / "a"), _screenings(tmp_path / "b")
    assert len(a) == 12
    assert {k: _answer(v) for k, v in a.items()} == {k: _answer(v) for k, v in b.items()}


def test_only_what_the_criteria_read_reaches_the_engine(catalog: Catalog, tmp_path: Path) -> None:
    """Unread types are not opened; Observations of codes no criterion reads are dropped, and
    Conditions no check knows; one named only in words is kept (the text safety net reads it)."""
    folder = write_demo(tmp_path / "in")
    (folder / "Encounter.ndjson").write_text('{"resourceType": "Encounter", "id": "e"}\n')
    with (folder / "Condition.ndjson").open("a") as f:
        f.write(
            json.dumps(
                {
                    "resourceType": "Condition",
                    "id": "text-only",
                    "subject": {"reference": "Patient/b6446621-f1b9-4a74-bd09-7ec2410b27cf"},
                    "code": {"text": "lupus nephritis"},
                }
            )
            + "\n"
        )
    needed = needed_data(catalog.trials.values())
    wanted = {c for _, c in needed.observation_codes}
    with NdjsonSource(folder, needed) as source:
        assert source.skipped == ["Encounter"]
        kept = {p.patient: [orjson.loads(line) for line in p.lines] for p in source.patients()}
    observations = [r for rs in kept.values() for r in rs if r["resourceType"] == "Observation"]
    all_observations = (folder / "Observation.ndjson").read_text().splitlines()
    assert 0 < len(observations) < len(all_observations)
    for o in observations:
        codes = {c["code"] for c in o["code"].get("coding", [])} | {
            c["code"] for comp in o.get("component", []) for c in comp["code"]["coding"]
        }
        assert codes & wanted
    # Conditions no check knows (by code or by words) are left out; one named only in words is
    # kept for the safety net (test_population_selection.py proves no answer changes).
    conditions = (folder / "Condition.ndjson").read_text().splitlines()
    assert (
        0
        < sum(r["resourceType"] == "Condition" for rs in kept.values() for r in rs)
        < len(conditions)
    )
    assert "text-only" in {r.get("id") for r in kept["b6446621-f1b9-4a74-bd09-7ec2410b27cf"]}


def _one_check_trial(catalog: Catalog) -> LoadedTrial:
    """HN2301 reduced to its haemoglobin check (no review items): a trial a record can meet."""
    trial = catalog.trials["NCT06801119"]
    i7 = next(c for c in trial.spec.criteria if c.id == "I7")
    hb = next(c for c in i7.checks if c.id == "I7.hb")
    criterion = i7.model_copy(update={"checks": (hb,), "review": ()})
    return replace(trial, spec=trial.spec.model_copy(update={"criteria": (criterion,)}))


def _golden_folder(tmp_path: Path, extra: dict[str, list[str]]) -> Path:
    """The golden cross-trial record (two copies: patients p1, p2) as NDJSON, with extra lines."""
    case = next(c for c in load_cases() if c.name.startswith("cross_trial"))
    folder = tmp_path / "in"
    folder.mkdir()
    lines: dict[str, list[str]] = {}
    for pid in ("p1", "p2"):
        text = json.dumps(case.bundle).replace('"Patient/p"', f'"Patient/{pid}"')
        for entry in json.loads(text)["entry"]:
            r = entry["resource"]
            if r["resourceType"] == "Patient":
                r["id"] = pid
            elif "id" in r:
                r["id"] = f"{pid}-{r['id']}"
            lines.setdefault(r["resourceType"], []).append(json.dumps(r))
    for kind, more in extra.items():
        lines.setdefault(kind, []).extend(more)
    for kind, ls in lines.items():
        (folder / f"{kind}.ndjson").write_text("\n".join(ls) + "\n")
    return folder


def test_the_one_check_trial_is_met_by_the_golden_record(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    """The control for the next test: without bad lines both patients are eligible."""
    trial = _one_check_trial(catalog)
    folder = _golden_folder(tmp_path, {})
    report = run_population(
        [trial], date(2026, 6, 1), folder, tmp_path / "out", workers=1, settings=settings
    )
    assert report.outcomes[trial.id]["eligible"] == 2
    assert report.errors == ()


def test_unreadable_lines_are_reported_and_never_make_anyone_eligible(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    trial = _one_check_trial(catalog)
    bad = '{"resourceType": "Observation", "subject": {"reference": "Patient/p1"}, "code": '
    folder = _golden_folder(
        tmp_path,
        {
            "Observation": [
                bad,  # invalid JSON that names p1
                '{"resourceType": "Observation", "id": "nobody", "status": "final"}',
                '{"resourceType": "Widget", "subject": {"reference": "Patient/p2"}}',
            ],
            "Patient": ['{"resourceType": "Patient", "id": "p3", '],  # p3: not screened
        },
    )
    (folder / "Foo.ndjson").write_text("{}\n")
    (folder / "notes.ndjson").write_text("{}\n")
    report = run_population(
        [trial], date(2026, 6, 1), folder, tmp_path / "out", workers=1, settings=settings
    )
    problems = {(e.file, e.line): e.problem for e in report.errors}
    observation_lines = (folder / "Observation.ndjson").read_text().splitlines()
    n = len(observation_lines)
    assert problems[("Observation.ndjson", n - 2)] == "not valid JSON"
    assert "names no patient" in problems[("Observation.ndjson", n - 1)]
    assert "no FHIR R4 resource type" in problems[("Observation.ndjson", n)]
    assert "no FHIR R4 resource type" in problems[("Foo.ndjson", None)]
    assert "not a Bulk Data file name" in problems[("notes.ndjson", None)]
    assert problems[("Patient.ndjson", 3)] == "not valid JSON"
    assert report.patients == 2
    results = {g["subject"]["reference"]: g for g in _screenings(tmp_path / "out").values()}
    # p1's unreadable Observation may be the newest haemoglobin: not eligible, and the report says
    # which line could not be read. p2 is untouched.
    p1 = results["Patient/p1"]
    assert p1["contained"][0]["parameter"][0]["valueCode"] != "eligible"
    warnings = json.dumps(p1["contained"])
    assert f"Observation.ndjson line {n - 2}: not valid JSON" in warnings
    assert results["Patient/p2"]["contained"][0]["parameter"][0]["valueCode"] == "eligible"


def test_an_invalid_line_that_names_nobody_is_held_against_everyone(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    trial = _one_check_trial(catalog)
    folder = _golden_folder(tmp_path, {"Observation": ['{"resourceType": "Observ']})
    report = run_population(
        [trial], date(2026, 6, 1), folder, tmp_path / "out", workers=1, settings=settings
    )
    assert report.outcomes[trial.id]["eligible"] == 0
    assert report.outcomes[trial.id]["needs-review"] == 2


def test_outputs_rank_count_and_validate(
    catalog: Catalog, settings: Settings, tmp_path: Path
) -> None:
    trials = list(catalog.trials.values())
    folder = write_cohort(tmp_path / "in", 15, seed=11)
    report = run_population(trials, AS_OF, folder, tmp_path / "out", workers=1, settings=settings)
    out = tmp_path / "out"
    with (out / "candidates.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 15 * len(trials)
    order = ["eligible", "needs-review", "needs-data", "ineligible"]
    funnel = json.loads((out / "funnel.json").read_text())
    for f, trial in zip(funnel, trials, strict=True):
        mine = [r for r in rows if r["trial"] == trial.id]
        assert [int(r["rank"]) for r in mine] == list(range(1, 16))
        keys = [
            (order.index(r["result"]), int(r["missing"]) if r["result"] == "needs-data" else 0)
            for r in mine
        ]
        assert keys == sorted(keys)
        assert f["patients"] == 15 and sum(f["outcomes"].values()) == 15
        remaining = [s["remaining"] for s in f["steps"]]
        assert remaining == sorted(remaining, reverse=True)
        assert remaining[-1] == 15 - f["outcomes"]["ineligible"]
        for step in f["steps"]:
            column = [r[step["criterion"]] for r in mine]
            assert step["notMet"] == column.count("not-met")
            assert step["met"] + step["notMet"] + step["unknown"] + step["notApplicable"] == 15
        for req in f["dataRequests"]:
            asking = [r for r in mine if req["request"] in r["data_to_collect"].split("; ")]
            assert req["patients"] <= len(asking)
        group = json.loads((out / f"Group-{trial.id}.json").read_text())
        validate_r4(group)
        assert group["quantity"] == 15 - f["outcomes"]["ineligible"]
        assert {m["entity"]["reference"] for m in group.get("member", [])} == {
            r["patient"] for r in mine if r["result"] != "ineligible"
        }
    validate_r4(json.loads((out / "funnel.parameters.json").read_text()))
    assert report.patients == 15


def test_screen_patient_never_raises_on_an_unreadable_record(catalog: Catalog) -> None:
    trials = list(catalog.trials.values())
    records = demo_records()
    resources = [orjson.loads(line) for line in records[0]]
    two_patients = [*resources, {"resourceType": "Patient", "id": "other"}]
    results = screen_patient(trials, two_patients, AS_OF)
    assert len(results) == len(trials)
    assert all(r.result != "eligible" and r.problems for r in results)
    assert all("2 Patients" in r.problems[0] for r in results)


def test_cli_runs_the_demo_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = cli.main(
        [
            "prescreen",
            "--trial",
            "NCT06801119",
            "--as-of",
            "2025-11-01",
            "--ndjson",
            "demo",
            "--out",
            str(out),
            "--workers",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    assert "NCT06801119" in printed.out and "5 patients" in printed.out
    assert "5/5 patients" in printed.err
    assert (out / "candidates.csv").is_file() and (out / "funnel.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trial", "NCT00000000"], "unknown trial"),
        (["--as-of", "2025-13-01"], "not a date"),
        (["--ndjson", "/no/such/folder"], "not a folder"),
        (["--workers", "0"], "at least 1"),
    ],
)
def test_cli_refuses_bad_input_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    base = {"--trial": "NCT06801119", "--as-of": "2025-11-01", "--ndjson": "demo"}
    extra = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["prescreen"] + [x for k, v in {**base, **extra}.items() for x in (k, v)]
    argv += ["--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_prefilter_is_sound(catalog: Catalog, settings: Settings, tmp_path: Path) -> None:
    """With and without the prefilter every answer is the same; only patients the engine
    confirms are turned away skip the full screening."""
    trials = list(catalog.trials.values())
    folder = write_cohort(tmp_path / "in", 16, seed=8)
    patients = [
        orjson.loads(x)["id"] for x in (folder / "Patient.ndjson").read_bytes().splitlines()
    ]
    stripped = set(patients[:10])
    filters = prefilters(trials)
    assert filters is not None
    needles = needles_of(filters)
    kept = []
    for line in (folder / "Condition.ndjson").read_text().splitlines():
        owner = orjson.loads(line)["subject"]["reference"].rsplit(":", 1)[-1].rsplit("/", 1)[-1]
        if owner in stripped and any(n in line.lower() for n in needles):
            continue  # no SLE for them
        kept.append(line)
    # A text-only lupus (the engine sends it to review) and an unreadable Condition (it may be
    # the SLE diagnosis): neither may be spared the full screening.
    kept.append(
        json.dumps(
            {
                "resourceType": "Condition",
                "id": "words",
                "subject": {"reference": f"Patient/{patients[0]}"},
                "code": {"text": "Lupus (per outside records)"},
            }
        )
    )
    kept.append(
        json.dumps(
            {
                "resourceType": "Condition",
                "id": "bad",
                "subject": {"reference": f"Patient/{patients[1]}"},
                "code": 5,
            }
        )
    )
    (folder / "Condition.ndjson").write_text("\n".join(kept) + "\n")
    full = run_population(trials, AS_OF, folder, tmp_path / "full", workers=1, settings=settings)
    fast = run_population(
        trials, AS_OF, folder, tmp_path / "fast", workers=1, settings=settings, prefilter=True
    )
    assert full.prefiltered == 0 and fast.prefiltered == 8  # 10 stripped, 2 not spared

    def results(out: Path) -> dict[tuple[str, str], str]:
        with (out / "candidates.csv").open() as f:
            return {(r["trial"], r["patient"]): r["result"] for r in csv.DictReader(f)}

    assert results(tmp_path / "full") == results(tmp_path / "fast")
    a, b = _screenings(tmp_path / "full"), _screenings(tmp_path / "fast")
    assert len(b) == len(a) - 8 * len(trials)
    assert all(_answer(b[k]) == _answer(a[k]) for k in b)
    for pid in patients[:2]:
        assert all((t.id, f"Patient/{pid}") in b for t in trials)
    assert (
        json.loads((tmp_path / "full" / "funnel.json").read_text())[0]["outcomes"]
        == (json.loads((tmp_path / "fast" / "funnel.json").read_text())[0]["outcomes"])
    )
