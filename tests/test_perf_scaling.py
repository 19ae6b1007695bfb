"""No super-linear path in the reader or the engine: doubling an adversarial input at most doubles
the work. Work is counted, not timed: every Python-level call and builtin call the profiler sees
while the Bundle is read and both trials are evaluated. A list-membership test on record entries
calls their dataclass ``__eq__`` once per element, so a quadratic path shows up as a quadrupling
count whatever the machine's speed."""

import sys
from collections.abc import Callable
from datetime import date, timedelta
from itertools import pairwise
from types import FrameType
from typing import Any

import pytest

from app.catalog import mappings
from app.catalog.loader import Catalog
from app.engine import evaluate
from app.fhir_io.bundle_reader import read_bundle
from tests import fhir_builders as fb

Json = dict[str, Any]
_AS_OF = date(2025, 11, 1)
_DAY = date(2025, 10, 1)
_SNOMED = "http://snomed.info/sct"


def _undated_events(n: int) -> list[Json]:
    """Transfusions, half dated inside and outside the windows, half undated; vaccines; a
    procedure no code set knows, named in words (the text safety net reads every one)."""
    out: list[Json] = []
    for i in range(n):
        out.append({"procedure": {"code": "116859006", "date": str(_DAY - timedelta(days=i))}})
        out.append({"procedure": {"code": "116859006"}})
        unknown = fb.procedure({"code": f"9{i:07d}"})
        unknown["code"]["text"] = "transfusion of packed cells"
        out.append({"resource": unknown})
        out.append({"immunization": {"code": "207", "date": str(_DAY - timedelta(days=i))}})
    return out


def _conditions(n: int) -> list[Json]:
    """Many conditions: confirmed, resolved, provisional, undated, with and without SLE codes."""
    out: list[Json] = []
    for i in range(n):
        onset = str(_DAY - timedelta(days=7 * i))
        out.append({"condition": {"code": "55464009", "onset": onset, "status": "resolved"}})
        out.append({"condition": {"code": f"3{i:06d}", "verification": "provisional"}})
        out.append({"condition": {"code": "38341003"}})  # hypertension, undated
        out.append({"condition": {"code": f"4{i:06d}", "onset": onset}})
    return out


def _codings(n: int) -> list[Json]:
    """A fixed number of resources, each with ``n`` codings and a display on each."""
    out: list[Json] = []
    for k in range(20):
        for build, code in ((fb.condition, "55464009"), (fb.procedure, "116859006")):
            res = build({"code": code, "onset": "2020-01-01", "date": "2025-10-20"})
            res["code"]["coding"] += [
                {"system": _SNOMED, "code": f"{k}{j:06d}", "display": f"finding {j}"}
                for j in range(n)
            ]
            out.append({"resource": res})
    return out


def _medications_and_labs(n: int) -> list[Json]:
    out: list[Json] = []
    for i in range(n):
        start = str(_DAY - timedelta(days=3 * i))
        out.append({"medication": {"code": "8640", "start": start, "route": "oral", "dose": 5}})
        out.append({"medication": {"code": "5521", "start": start}})
        out.append({"lab": {"code": "718-7", "date": start, "value": 11, "unit": "g/dL"}})
        out.append({"lab": {"code": "2160-0", "date": start, "value": 0.8, "unit": "mg/dL"}})
    return out


SHAPES: dict[str, Callable[[int], list[Json]]] = {
    "undated events": _undated_events,
    "conditions": _conditions,
    "codings per resource": _codings,
    "medications and labs": _medications_and_labs,
}


def _work(catalog: Catalog, items: list[Json]) -> int:
    bundle = fb.bundle({"birthDate": "1990-01-01", "gender": "female"}, items)
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        calls += 1

    sys.setprofile(count)
    try:
        record = read_bundle(bundle)
        for trial in catalog.trials.values():
            evaluate(trial, record, _AS_OF)
    finally:
        sys.setprofile(None)
    return calls


@pytest.mark.parametrize("shape", SHAPES)
def test_doubling_the_input_at_most_doubles_the_work(shape: str, catalog: Catalog) -> None:
    build = SHAPES[shape]
    counts = [_work(catalog, build(n)) for n in (40, 80, 160)]
    # The part that does not grow (the trial's checks, the Patient) makes each ratio a little
    # under 2 for linear work; quadratic work tends to 4.
    ratios = [b / a for a, b in pairwise(counts)]
    assert all(r < 2.2 for r in ratios), (shape, counts, ratios)


def test_each_coding_is_judged_once_per_code_set(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Code matching is remembered per evaluation: the code set's own test runs once per
    distinct coding, however many checks and resources carry it."""
    judged: list[tuple[str, str]] = []
    original = mappings.CodeMatcher.matches

    def counting(self: mappings.CodeMatcher, system: str, code: str) -> bool:
        judged.append((system, code))
        return original(self, system, code)

    monkeypatch.setattr(mappings.CodeMatcher, "matches", counting)
    record = read_bundle(fb.bundle({"birthDate": "1990-01-01"}, _conditions(50)))
    trial = catalog.trials["NCT06801119"]
    evaluate(trial, record, _AS_OF)
    distinct = {coding for c in record.conditions for coding in c.codes}
    # One judgement per code set and distinct coding at most (several code sets read conditions),
    # not one per check and resource (200 conditions x dozens of checks).
    assert len(judged) <= len(distinct) * len(trial.mappings.code_sets)
    assert len(judged) < 200 * 19
