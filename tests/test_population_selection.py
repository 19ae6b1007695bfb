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
from app.ehr.fetch_plan import plan_for
from app.fhir_io.bundle_reader import beyond_criteria, read_bundle
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


# --- the history selection at its edges -------------------------------------------------------

BAD = [7, 2.5, True, "not a date", "2024-02-30", "0000-01-01", "2024-13", {"x": 1}, [1], [], ""]
"""Values of the wrong shape for some element or other (and a few dates that are no dates)."""
GOOD_DATES = ["2024", "2024-05", "2024-05-06", "2024-05-06T10:00:00+02:00", "2024-05-06T10:00Z"]
SNOMED = "http://snomed.info/sct"
PID = "fuzz"


def _bases() -> dict[str, Json]:
    """One resource of each selected type that no check knows (the controls show it is left out
    as it stands)."""
    subject = {"reference": f"Patient/{PID}"}
    concept = {"coding": [{"system": SNOMED, "code": "314529007"}], "text": "Medication review due"}
    return {
        "Condition": {
            "resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "x", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "x", "code": "confirmed"}]},
            "code": concept,
            "subject": subject,
            "onsetDateTime": "2020-01-01",
            "recordedDate": "2020-01-01",
        },
        "Procedure": {
            "resourceType": "Procedure",
            "status": "completed",
            "code": {"coding": [{"system": SNOMED, "code": "430193006"}], "text": "Reconciliation"},
            "subject": subject,
            "performedPeriod": {"start": "2020-01-01", "end": "2020-01-01"},
        },
        "Immunization": {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]},
            "patient": subject,
            "occurrenceDateTime": "2020-01-01",
        },
    }


def _mutations(kind: str, base: Json) -> list[Json]:
    """The base with each element of the FHIR R4B model, and each part of the concepts and
    periods it carries, given a wrong or an unusual value."""
    from fhir.resources.R4B import get_fhir_model_class

    out = []
    elements = [
        e
        for e in get_fhir_model_class(kind).elements_sequence()
        if e not in {"id", "subject", "patient"}
    ]
    for element in elements:
        out += [{**base, element: v} for v in (*BAD, *GOOD_DATES, None)]
    for key, value in base.items():
        if (isinstance(value, dict) and "coding" in value) or key in {"code", "vaccineCode"}:
            for v in BAD:
                out += [
                    {**base, key: {"coding": v}},
                    {**base, key: {"coding": [v]}},
                    {**base, key: {"text": v, "coding": value.get("coding", [])}},
                    {**base, key: {"coding": [{"system": v, "code": "x"}]}},
                    {**base, key: {"coding": [{"system": SNOMED, "code": v}]}},
                    {**base, key: {"coding": [{"system": SNOMED, "code": "1", "display": v}]}},
                ]
    for key in ("onsetPeriod", "abatementPeriod", "performedPeriod"):
        for v in (*BAD, *GOOD_DATES, None):
            out += [{**base, key: {"start": v}}, {**base, key: {"end": v}}]
    return out


def _kept_ids(catalog: Catalog, tmp_path: Path, resources: list[Json]) -> set[str]:
    folder = tmp_path / "fuzz"
    folder.mkdir()
    by_type: dict[str, list[bytes]] = {"Patient": [orjson.dumps(_patient())]}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(orjson.dumps(r))
    for kind, lines in by_type.items():
        (folder / f"{kind}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    with NdjsonSource(folder, needed_data(catalog.trials.values())) as source:
        (patient,) = source.patients()
    return {orjson.loads(line)["id"] for line in patient.lines}


def _patient() -> Json:
    return {"resourceType": "Patient", "id": PID, "birthDate": "1990-01-01", "gender": "female"}


def test_what_the_reader_cannot_read_is_never_left_out(catalog: Catalog, tmp_path: Path) -> None:
    """A resource the reader fails on becomes an unreadable resource (it holds checks back and
    the report names it): for every element of each type set wrong, left out only if read."""
    resources = []
    for kind, base in _bases().items():
        resources.append({**base, "id": f"{kind}-base"})
        for i, mutated in enumerate(_mutations(kind, base)):
            resources.append({**mutated, "id": f"{kind}-{i}"})
    kept = _kept_ids(catalog, tmp_path, resources)
    assert not {f"{kind}-base" for kind in _bases()} & kept  # the controls: left out as they are
    left_out = 0
    for r in resources:
        bundle = {"resourceType": "Bundle", "entry": [{"resource": _patient()}, {"resource": r}]}
        if read_bundle(bundle).unreadable:
            assert r["id"] in kept, r
        left_out += r["id"] not in kept
    assert left_out > 100  # the elements the reader does not read leave it out still


def _known(catalog: Catalog, kind: str) -> list[Any]:
    """The code sets of every check reading ``kind``."""
    trial = next(iter(catalog.trials.values()))
    names = dict(plan_for(list(catalog.trials.values()), trial.mappings, (), 1).history_code_sets)
    return [trial.mappings.code_sets[n] for n in names[kind] or ()]


def test_what_a_check_knows_is_never_left_out(catalog: Catalog, tmp_path: Path) -> None:
    """Every code of every code set a history check reads (as listed, without its dot, in lower
    case, a child of a listed prefix) and every term (as listed, in capitals, hyphenated): each
    resource a check recognises, by code or by words, is kept."""
    resources: list[Json] = []
    truth: dict[str, bool] = {}
    for kind, base in _bases().items():
        key = "vaccineCode" if kind == "Immunization" else "code"
        sets = _known(catalog, kind)
        codings = {
            (system, variant)
            for s in sets
            for system, code in (*s.matcher.exact, *s.matcher.excluded_exact)
            for variant in (code, code.replace(".", ""), code.lower())
        } | {
            (system, prefix + suffix)
            for s in sets
            for system, prefix in (*s.matcher.prefixes, *s.matcher.excluded_prefixes)
            for suffix in ("", "0", ".9")
        }
        concepts: list[Json] = [{"coding": [{"system": s, "code": c}]} for s, c in sorted(codings)]
        terms = {t for s in sets for t in s.terms.terms}
        for t in sorted(terms):
            for text in (t, t.upper(), t.replace(" ", "-"), f"history of {t}, resolved"):
                concepts.append({"coding": [{"system": SNOMED, "code": "0"}], "text": text})
                concepts.append({"coding": [{"system": SNOMED, "code": "0", "display": text}]})
        for i, concept in enumerate(concepts):
            r = {**base, key: concept, "id": f"{kind}-{i}"}
            resources.append(r)
            codes = [(c.get("system", ""), c["code"]) for c in concept["coding"]]
            labels = [concept.get("text") or "", *(c.get("display", "") for c in concept["coding"])]
            truth[r["id"]] = any(
                s.matcher.matches_any(codes)
                or s.matcher.excludes_any(codes)
                or s.terms.first_in(labels) is not None
                for s in sets
            )
    kept = _kept_ids(catalog, tmp_path, resources)
    known = {i for i, k in truth.items() if k}
    assert len(known) > 5000
    assert known <= kept, sorted(known - kept)[:10]


def test_an_observation_is_left_out_only_when_the_reader_would_skip_it(
    catalog: Catalog, tmp_path: Path
) -> None:
    """Observations of every shape of code and component: each one the reader's own rule
    (``beyond_criteria``) does not skip is kept."""
    needed = needed_data(catalog.trials.values())
    wanted = frozenset(needed.observation_codes)
    height = {"system": LOINC, "code": "8302-2"}
    codings: list[Any] = [
        height,
        {"system": LOINC, "code": "718-7"},
        {"system": LOCAL, "code": "718-7"},
        {"system": LOCAL, "code": "X"},
        {"code": "8302-2"},
        {"system": LOINC},
        {"system": None, "code": "8302-2"},
        *({"system": v, "code": "8302-2"} for v in BAD),
        *({"system": LOINC, "code": v} for v in BAD),
        *BAD,
    ]
    concepts: list[Any] = [
        *({"coding": [c]} for c in codings),
        *({"coding": [height, c]} for c in codings),
        *({"coding": v} for v in BAD),
        *BAD,
        None,
        {"text": "Hemoglobin"},
    ]
    resources = []
    for i, concept in enumerate(concepts):
        resources.append(_obs(f"code-{i}", PID, concept))
        parts = [{"code": concept}, concept, [{"code": concept}]]
        for k, component in enumerate([*parts, *BAD]):
            resources.append(_obs(f"part-{i}-{k}", PID, {"coding": [height]}, component=component))
            resources.append(
                _obs(
                    f"parts-{i}-{k}",
                    PID,
                    {"coding": [height]},
                    component=[{"code": {"coding": [height]}}, component],
                )
            )
    kept = _kept_ids(catalog, tmp_path, resources)
    skipped = [r["id"] for r in resources if beyond_criteria(r, wanted)]
    assert {r["id"] for r in resources} - set(skipped) <= kept
    assert len(set(skipped) - kept) > 10  # some are left out
