"""Property: a record made LESS complete never looks better for eligibility.

Start from golden records of both trials (each baseline and a deterministic sample of cases), make
one of them less complete the way real EHR data is — a resource removed, a date dropped or cut to
the year, a resource's codes replaced by their words — and screen both. No criterion may move from
``unknown`` to the definite answer that favours eligibility (an inclusion to met, an exclusion to
not-met), and the overall answer may not become ``eligible``. Blurring and un-coding also may not
turn a definite answer against eligibility into one for it: less information is never better news.

Removal is the one exception the closed-world reading of history forces: a record without the very
entry that made a result unknown is indistinguishable from a patient who never had it, so a removal
of a resource the result cites as evidence is not held to the property (removing anything else is).
"""

import re
from copy import deepcopy
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.catalog.loader import Catalog
from app.catalog.mappings import Mappings
from app.engine import evaluate
from app.engine.evaluate import Eligibility, Screening
from app.engine.results import Result, Status
from app.fhir_io.bundle_reader import read_bundle
from tests import fhir_builders
from tests.golden_cases import GOLDEN, GoldenCase, load_cases

Json = dict[str, Any]
_DATE = re.compile(r"^[0-9]{4}(-[0-9]{2}(-[0-9]{2})?)?(T.*)?$")
_DATE_KEY = re.compile(r"(Date|DateTime|Instant|On|Asserted|^start|^end|^recorded|^issued)$")
_CONCEPT_KEYS = ("code", "vaccineCode", "medicationCodeableConcept")
_SAMPLE_EVERY = 6
"""Every n-th golden case joins the baselines (deterministic, a few dozen records per trial)."""


@dataclass(frozen=True)
class _Record:
    trial: str
    name: str
    as_of: date
    bundle: Json


def _records() -> list[_Record]:
    import yaml

    out = []
    for trial_dir in sorted(p for p in GOLDEN.iterdir() if p.is_dir()):
        base = yaml.safe_load((trial_dir / "baseline.yaml").read_text(encoding="utf-8"))
        bundle = fhir_builders.bundle(dict(base["patient"]), base["resources"])
        out.append(_Record(trial_dir.name, "baseline", date.fromisoformat(base["as_of"]), bundle))
    cases: list[GoldenCase] = load_cases()
    out += [
        _Record(c.trial, c.name, c.as_of, c.bundle)
        for i, c in enumerate(cases)
        if i % _SAMPLE_EVERY == 0 or c.name.startswith("history_")
    ]
    return out


RECORDS = _records()


def _entries(bundle: Json) -> list[Json]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] != "Patient"]


def _date_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every FHIR date/dateTime string inside a resource."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _date_paths(v, (*path, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _date_paths(v, (*path, i))]
    if isinstance(node, str) and _DATE.match(node) and path and _DATE_KEY.search(str(path[-1])):
        return [path]
    return []


def _displays(m: Mappings) -> dict[tuple[str, str], str]:
    """What an EHR would write in words for a code the catalog knows."""
    out: dict[tuple[str, str], str] = {}
    systems = m.systems
    rows = [r for s in m.code_sets.values() for r in s.rows]
    rows += [r for a in m.analytes.values() for r in a.rows]
    for r in rows:
        if r.display:
            out.setdefault((systems.get(r.system, r.system), r.code), r.display)
    for ing in m.ingredients.values():
        for coding, row in ing.products.items():
            out.setdefault(coding, row.display or ing.display)
    for coding, name in m.ingredient_by_code.items():
        out.setdefault(coding, m.ingredients[name].display)
    return out


def _blur(bundle: Json, entry: int, path: tuple[Any, ...], how: str) -> Json:
    out = deepcopy(bundle)
    target = _entries(out)[entry]
    *parents, last = path
    for key in parents:
        target = target[key]
    if how == "drop":
        del target[last]
    else:
        target[last] = target[last][:4]
    return out


def _uncode(bundle: Json, entry: int, words: dict[tuple[str, str], str]) -> Json | None:
    out = deepcopy(bundle)
    resource = _entries(out)[entry]
    key = next((k for k in _CONCEPT_KEYS if isinstance(resource.get(k), dict)), None)
    if key is None:
        return None
    concept = resource[key]
    labels = [concept.get("text")] + [
        c.get("display") or words.get((c.get("system", ""), c.get("code", "")))
        for c in concept.get("coding", [])
    ]
    text = next((t for t in labels if t), None)
    if text is None:
        return None
    resource[key] = {"text": text}
    return out


def _remove(bundle: Json, entry: int) -> tuple[Json, str]:
    out = deepcopy(bundle)
    resource = _entries(out)[entry]
    out["entry"] = [e for e in out["entry"] if e["resource"] is not resource]
    return out, f"{resource['resourceType']}/{resource.get('id')}"


def _favours(kind: str, status: Status) -> bool:
    return status is (Status.MET if kind == "inclusion" else Status.NOT_MET)


def _against(kind: str, status: Status) -> bool:
    return status is (Status.NOT_MET if kind == "inclusion" else Status.MET)


def _evidence(result: Result) -> set[str]:
    return {ref for r in result.walk() for ref in r.evidence}


_SCREENED: dict[int, Screening] = {}


def _screen(catalog: Catalog, record: _Record, bundle: Json) -> Screening:
    return evaluate(catalog.trials[record.trial], read_bundle(bundle), record.as_of)


_HISTORY = frozenset({"Condition", "Procedure", "Immunization", "AllergyIntolerance"})


def _changes(history: bool) -> st.SearchStrategy[tuple[int, str, int, int]]:
    """(record, what to do, which of its resources, which date field): only resources of the
    history part, or only the others."""

    def eligible(index: int) -> list[int]:
        return [
            i
            for i, r in enumerate(_entries(RECORDS[index].bundle))
            if (r["resourceType"] in _HISTORY) == history
        ]

    @st.composite
    def draw_change(draw: st.DrawFn) -> tuple[int, str, int, int]:
        index = draw(st.sampled_from([i for i in range(len(RECORDS)) if eligible(i)]))
        op = draw(st.sampled_from(["remove", "drop-date", "year-only", "uncode"]))
        entry = draw(st.sampled_from(eligible(index)))
        return index, op, entry, draw(st.integers(0, 20))

    return draw_change()


@pytest.fixture(scope="module")
def words(catalog: Catalog) -> dict[tuple[str, str], str]:
    return _displays(catalog.mappings)


def _check(
    change: tuple[int, str, int, int], catalog: Catalog, words: dict[tuple[str, str], str]
) -> None:
    index, op, entry, which = change
    record = RECORDS[index]
    removed: str | None = None
    if op == "remove":
        bundle, removed = _remove(record.bundle, entry)
    elif op == "uncode":
        uncoded = _uncode(record.bundle, entry, words)
        if uncoded is None:
            return
        bundle = uncoded
    else:
        paths = _date_paths(_entries(record.bundle)[entry])
        if not paths:
            return
        bundle = _blur(record.bundle, entry, paths[which % len(paths)], op)
    before = _SCREENED.get(index) or _screen(catalog, record, record.bundle)
    _SCREENED[index] = before
    after = _screen(catalog, record, bundle)
    where = f"{record.trial} {record.name}: {op} entry {entry}"
    for old, new in zip(before.criteria, after.criteria, strict=True):
        kind = old.criterion.kind
        if removed is not None and removed in _evidence(old.result):
            continue
        moved = f"{where}: {old.criterion.id} {old.result.status} -> {new.result.status}"
        if old.result.status is Status.UNKNOWN:
            assert not _favours(kind, new.result.status), f"{moved}: {new.result.reason}"
        if op != "remove" and _against(kind, old.result.status):
            assert not _favours(kind, new.result.status), f"{moved}: {new.result.reason}"
    cited = set().union(*(_evidence(c.result) for c in before.criteria))
    if before.eligibility is not Eligibility.ELIGIBLE and removed not in cited:
        assert after.eligibility is not Eligibility.ELIGIBLE, where


_BOUNDED = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@_BOUNDED
@given(change=_changes(history=True))
def test_less_complete_history_is_never_better_news(
    change: tuple[int, str, int, int], catalog: Catalog, words: dict[tuple[str, str], str]
) -> None:
    _check(change, catalog, words)


# Found by this property in the parts other helpers own (issue 10 report); remove the mark when
# fixed. An Observation without a date, or one whose code is replaced by its words, is dropped
# silently, so an older result decides (I7.hb, KN5501 I2.weight) or a positive test vanishes
# (KN5501 E10.hiv_test); a medication without a start, or known only by its words, is not counted
# (HN2301 I3.dose, KN5501 E7.iv_anti_infective).
@pytest.mark.xfail(
    strict=True, reason="known gaps in observation/medication reading (issue 10 report)"
)
@_BOUNDED
@given(change=_changes(history=False))
def test_less_complete_labs_and_medications_are_never_better_news(
    change: tuple[int, str, int, int], catalog: Catalog, words: dict[tuple[str, str], str]
) -> None:
    _check(change, catalog, words)


def test_the_records_are_varied() -> None:
    """The property sees both trials and records that hold every kind of history resource."""
    trials = {r.trial for r in RECORDS}
    kinds = {e["resourceType"] for r in RECORDS for e in _entries(r.bundle)}
    assert trials == {"NCT06801119", "NCT07358988"}
    assert {"Condition", "Procedure", "Immunization", "AllergyIntolerance"} <= kinds
    assert {"Observation", "MedicationRequest"} <= kinds
