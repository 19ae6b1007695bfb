"""What a population run leaves out never changes an answer: for every golden case (814 records
of every shape the engine is tested on), every demo patient and a set of awkward resources, the
screening of the lines DuckDB selects equals the screening of the patient's whole record, report
for report (reasons, evidence, review items, warnings)."""

import json
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.catalog.loader import Catalog
from app.core.settings import Settings
from app.population.cohort import demo_records
from app.population.ndjson_source import NdjsonSource
from app.population.patient_run import needed_data, screen_patient
from tests.golden_cases import load_cases

Json = dict[str, Any]
NOW = datetime(2026, 1, 1, tzinfo=UTC)
LOINC = "http://loinc.org"
LOCAL = "http://hospital.example.org/lab-codes"


def _answer(guidance: Json) -> Json:
    """The report without its id, and with Bundle positions (which differ when lines are left
    out: a problem is also named by its resource's reference) made alike."""
    kept = {k: v for k, v in guidance.items() if k not in {"id", "identifier", "meta"}}
    same: Json = orjson.loads(
        re.sub(rb"Bundle\.entry\[\d+\]", b"Bundle.entry[*]", orjson.dumps(kept))
    )
    return same


def _obs(oid: str, pid: str, code: Json, **extra: Any) -> Json:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2025-10-20",
        "code": code,
        **extra,
    }


def _awkward(pid: str) -> list[Json]:
    """Resources the selection must not drop although no code the criteria read is on them."""
    value = {"valueQuantity": {"value": 6.1, "unit": "g/dL", "code": "g/dL"}}
    return [
        # Known only by its name (a local code): the name safety net reads it.
        _obs(
            f"{pid}-local",
            pid,
            {"coding": [{"system": LOCAL, "code": "HGB"}], "text": "Hemoglobin"},
            **value,
        ),
        _obs(f"{pid}-text", pid, {"text": "Platelets"}, **value),
        # A LOINC code no check reads, but a component the reader cannot place.
        _obs(
            f"{pid}-comp",
            pid,
            {"coding": [{"system": LOINC, "code": "85354-9"}]},
            component=[
                {
                    "code": {"coding": [{"system": LOCAL, "code": "X"}], "text": "Neutrophils"},
                    **value,
                }
            ],
        ),
        # Malformed codings: the reader cannot read the code, so it may be anything.
        _obs(f"{pid}-badsys", pid, {"coding": [{"system": 7, "code": "8302-2"}]}, **value),
        _obs(f"{pid}-badcode", pid, {"coding": [{"system": LOINC, "code": 8302}]}, **value),
        _obs(f"{pid}-notlist", pid, {"coding": {"system": LOINC, "code": "8302-2"}}, **value),
    ]


def _beyond(pid: str) -> Json:
    """A result no check reads: a LOINC code none looks up (and a second, local coding)."""
    code = {
        "coding": [{"system": LOINC, "code": "8302-2"}, {"system": LOCAL, "code": "HT"}],
        "text": "Body height",
    }
    return _obs(f"{pid}-height", pid, code, valueQuantity={"value": 170, "unit": "cm"})


def _orphan(r: Json) -> bool:
    return r["resourceType"] not in {"Patient", "Medication"} and not (
        r.get("subject") or r.get("patient")
    )


def _folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[date, list[Json]]]]:
    """Every golden case (Patient/g{n}), every demo patient and the awkward resources as NDJSON;
    each patient's as-of date and whole record."""
    records: dict[str, tuple[date, list[Json]]] = {}
    for n, case in enumerate(load_cases()):
        pid = f"g{n}"
        text = json.dumps([e["resource"] for e in case.bundle["entry"]])
        text = text.replace('"Patient/p"', f'"Patient/{pid}"')
        resources = json.loads(text)
        if any(_orphan(r) for r in resources):
            continue  # a Bundle's resource that names no patient: NDJSON cannot place it
        for r in resources:
            if r["resourceType"] == "Patient":
                r["id"] = pid
            elif r["resourceType"] == "Medication":
                # Medications are shared by id across the folder: keep each case's its own.
                old = r["id"]
                r["id"] = f"{pid}-{old}"
                for other in resources:
                    ref = (other.get("medicationReference") or {}).get("reference")
                    if ref == f"Medication/{old}":
                        other["medicationReference"]["reference"] = f"Medication/{r['id']}"
        records[pid] = (case.as_of, resources)
    for lines in demo_records():
        resources = [orjson.loads(line) for line in lines]
        pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        records[pid] = (date(2025, 11, 1), [*resources, *_awkward(pid), _beyond(pid)])
    folder = tmp_path / "in"
    folder.mkdir()
    by_type: dict[str, list[bytes]] = {}
    for _, resources in records.values():
        for r in resources:
            by_type.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    for kind, lines in by_type.items():
        (folder / f"{kind}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    return folder, records


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return _folder(tmp_path_factory.mktemp("selection"))


def test_the_selected_lines_screen_as_the_whole_record(
    catalog: Catalog, settings: Settings, corpus: tuple[Path, dict[str, Any]]
) -> None:
    folder, records = corpus
    trials = list(catalog.trials.values())
    with NdjsonSource(folder, needed_data(trials)) as source:
        assert source.errors == []
        selected = {p.patient: p for p in source.patients()}
    assert selected.keys() == records.keys()
    left_out = 0
    for pid, (as_of, whole) in records.items():
        kept = [orjson.loads(line) for line in selected[pid].lines]
        left_out += len(whole) - len(kept)
        assert not selected[pid].unreadable
        full = screen_patient(trials, whole, as_of, settings=settings, now=NOW)
        part = screen_patient(trials, kept, as_of, settings=settings, now=NOW)
        for a, b in zip(full, part, strict=True):
            assert _answer(b.guidance) == _answer(a.guidance), (pid, a.trial)
    assert left_out > 0  # the selection does leave things out (else this test proves nothing)


def test_the_awkward_resources_are_all_kept(
    catalog: Catalog, corpus: tuple[Path, dict[str, Any]]
) -> None:
    """Each awkward resource is one $screen reads (a name, or a code it cannot read); a result
    no check reads is left out."""
    folder, records = corpus
    pid = next(p for p, (_, whole) in records.items() if not p.startswith("g"))
    with NdjsonSource(folder, needed_data(catalog.trials.values())) as source:
        (patient,) = source.patients(only=[pid])
    kept = {orjson.loads(line).get("id") for line in patient.lines}
    assert {r["id"] for r in _awkward(pid)} <= kept
    assert _beyond(pid)["id"] not in kept
