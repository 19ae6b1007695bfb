"""A posted record's Observations that cannot bear on any check are not decoded
(bundle_reader.beyond_criteria, with the fetch plan's Observation codes). No answer may change:
every golden case, every demo patient and the large Synthea record give the same results, reasons,
evidence and review items either way."""

import gzip
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.catalog.loader import Catalog
from app.core.settings import Settings
from app.engine import Result, evaluate
from app.engine.record import PatientRecord
from app.fhir_io.bundle_reader import read_bundle
from app.screening.pool import WorkerEnv
from tests import fhir_builders as fb
from tests.golden_cases import GoldenCase, load_cases

CASES = load_cases()
_ROOT = Path(__file__).resolve().parent.parent
_RECORDS = sorted((_ROOT / "app" / "demo" / "patients").glob("*.json"))
_LARGE = _ROOT / "bench" / "data" / "synthea-sle-large.json.gz"


@pytest.fixture(scope="module")
def codes(settings: Settings, catalog: Catalog) -> frozenset[tuple[str, str]]:
    return WorkerEnv.of(settings, catalog).observation_codes


def _answers(catalog: Catalog, record: PatientRecord, as_of: date) -> list[Any]:
    def flat(r: Result) -> list[Any]:
        return [(x.id, x.status, x.reason, x.evidence, x.review) for x in r.walk()]

    out: list[Any] = []
    for trial in catalog.trials.values():
        screening = evaluate(trial, record, as_of)
        out.append(screening.eligibility)
        out += [flat(c.result) for c in screening.criteria]
        out.append(screening.data_requests)
    return out


@pytest.mark.parametrize("case", CASES, ids=[f"{c.trial}: {c.name}" for c in CASES])
def test_golden_answers_do_not_change(
    case: GoldenCase, catalog: Catalog, codes: frozenset[tuple[str, str]]
) -> None:
    whole = _answers(catalog, read_bundle(case.bundle), case.as_of)
    assert _answers(catalog, read_bundle(case.bundle, codes), case.as_of) == whole


@pytest.mark.parametrize("path", [*_RECORDS, _LARGE], ids=lambda p: p.name)
def test_real_records_answer_the_same_with_fewer_observations(
    path: Path, catalog: Catalog, codes: frozenset[tuple[str, str]]
) -> None:
    raw = path.read_bytes()
    bundle = orjson.loads(gzip.decompress(raw) if path.suffix == ".gz" else raw)
    whole, lean = read_bundle(bundle), read_bundle(bundle, codes)
    for as_of in (date(2023, 4, 1), date(2025, 11, 1)):
        assert _answers(catalog, lean, as_of) == _answers(catalog, whole, as_of)
    assert len(lean.observations) <= len(whole.observations)
    if path == _LARGE:  # vitals, surveys, panels nobody screens for: most of a Synthea record
        assert len(lean.observations) < len(whole.observations) / 2


def _observation(code: dict[str, Any], component: list[dict[str, Any]] | None = None) -> Any:
    res = fb.lab({"code": "0-0", "date": "2025-10-01", "value": 1, "unit": "1"})
    res["code"] = code
    if component is not None:
        res["component"] = component
    return {"resource": res}


def test_only_observations_that_cannot_bear_are_skipped(
    codes: frozenset[tuple[str, str]],
) -> None:
    loinc = "http://loinc.org"
    unknown = {"coding": [{"system": loinc, "code": "8302-2"}], "text": "Body height"}
    hemoglobin = {"coding": [{"system": loinc, "code": "718-7"}]}
    assert (loinc, "718-7") in codes and (loinc, "8302-2") not in codes
    items = [
        _observation(unknown),  # skipped: LOINC, nothing the criteria read
        _observation(hemoglobin),  # read: a code the criteria read
        _observation({"text": "Hemoglobin"}),  # read: known only by its name
        _observation({"coding": [{"system": "urn:local", "code": "HB"}], "text": "Hemoglobin"}),
        _observation(unknown, [{"code": hemoglobin, "valueQuantity": {"value": 12}}]),
        _observation(unknown, [{"code": {"text": "Hemoglobin"}}]),  # a component by name
        _observation({"coding": [{"system": loinc, "code": ["not", "a", "string"]}]}),
    ]
    bundle = fb.bundle({"birthDate": "1990-01-01"}, items)
    whole, lean = read_bundle(bundle), read_bundle(bundle, codes)
    refs = {o.ref for o in whole.observations} | {u.ref for u in whole.unreadable}
    kept = {o.ref for o in lean.observations} | {u.ref for u in lean.unreadable}
    skipped = refs - kept
    assert skipped == {f"Observation/{items[0]['resource']['id']}"}
