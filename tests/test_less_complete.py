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
from functools import cache
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


@cache
def _records(every: int = _SAMPLE_EVERY) -> list[_Record]:
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
        if i % every == 0 or c.name.startswith("history_")
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
    if how == "drop-date":
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


def _variants(
    record: _Record, op: str, entry: int, words: dict[tuple[str, str], str]
) -> list[tuple[Json, str | None]]:
    """The record made less complete by ``op`` on one resource (for a date, each of its dates)."""
    if op == "remove":
        bundle, removed = _remove(record.bundle, entry)
        return [(bundle, removed)]
    if op == "uncode":
        uncoded = _uncode(record.bundle, entry, words)
        return [] if uncoded is None else [(uncoded, None)]
    paths = _date_paths(_entries(record.bundle)[entry])
    return [(_blur(record.bundle, entry, path, op), None) for path in paths]


def _violations(
    catalog: Catalog, record: _Record, before: Screening, op: str, bundle: Json, removed: str | None
) -> list[str]:
    after = _screen(catalog, record, bundle)
    where = f"{record.trial} {record.name}: {op}"
    found = []
    for old, new in zip(before.criteria, after.criteria, strict=True):
        kind = old.criterion.kind
        if removed is not None and removed in _evidence(old.result):
            continue
        from_unknown = old.result.status is Status.UNKNOWN
        from_against = op != "remove" and _against(kind, old.result.status)
        if (from_unknown or from_against) and _favours(kind, new.result.status):
            found.append(
                f"{where}: {old.criterion.id} {old.result.status} -> {new.result.status}: "
                f"{new.result.reason}"
            )
    cited = set().union(*(_evidence(c.result) for c in before.criteria))
    worse_before = before.eligibility is not Eligibility.ELIGIBLE and removed not in cited
    if worse_before and after.eligibility is Eligibility.ELIGIBLE:
        found.append(f"{where}: became eligible")
    return found


def _check(
    change: tuple[int, str, int, int], catalog: Catalog, words: dict[tuple[str, str], str]
) -> None:
    index, op, entry, which = change
    variants = _variants(RECORDS[index], op, entry, words)
    if variants:
        record = RECORDS[index]
        before = _SCREENED.get(index) or _screen(catalog, record, record.bundle)
        _SCREENED[index] = before
        bundle, removed = variants[which % len(variants)]
        assert not _violations(catalog, record, before, op, bundle, removed)


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


# Gaps this property found outside history reading, one case per kind: an Observation without a
# date, or known only by its words, was dropped silently, so an older result decided or a positive
# test vanished; a medication without a date, or known only by its words, was not counted. Each
# stays here as a regression case; those still open are marked xfail (strict: a fix makes it
# XPASS, so drop the mark).
_KNOWN_ELSEWHERE = [
    ("NCT07358988", "cross_trial: cross-trial: a positive HIV p24 antigen", "18396-2", "drop-date"),
    (
        "NCT06801119",
        "e4_pregnancy: a positive urine pregnancy test excludes even with an older negative "
        "serum test",
        "2106-3",
        "uncode",
    ),
    (
        "NCT07358988",
        "i1_i2_i3: the latest weight counts, not an earlier heavier one",
        "29463-7",
        "year-only",
    ),
    (
        "NCT06801119",
        "e5_lnp: patisiran (LNP siRNA, ATC N07XX12) last year excludes",
        "N07XX12",
        "drop-date",
    ),
    (
        "NCT06801119",
        "e5_lnp: patisiran (LNP siRNA, ATC N07XX12) last year excludes",
        "N07XX12",
        "uncode",
    ),
    (
        "NCT07358988",
        "e7_e8: IV ceftriaxone (ATC J01DD04) 7 days ago goes to review (treatment or prophylaxis?)",
        "J01DD04",
        "drop-date",
    ),
]


_STILL_OPEN = {("N07XX12", "drop-date"), ("N07XX12", "uncode"), ("J01DD04", "drop-date")}


@pytest.mark.parametrize(
    "known",
    [
        pytest.param(
            k,
            id=f"{k[2]} {k[3]}",
            marks=[pytest.mark.xfail(strict=True, reason="medication gap (issue 10 report)")]
            if (k[2], k[3]) in _STILL_OPEN
            else [],
        )
        for k in _KNOWN_ELSEWHERE
    ],
)
def test_less_complete_labs_and_medications_are_never_better_news(
    known: tuple[str, str, str, str], catalog: Catalog, words: dict[tuple[str, str], str]
) -> None:
    trial, name, code, op = known
    record = next(r for r in _records(every=1) if r.trial == trial and r.name == name)
    entries = [
        i
        for i, r in enumerate(_entries(record.bundle))
        if any(
            c.get("code") == code for k in _CONCEPT_KEYS for c in (r.get(k) or {}).get("coding", [])
        )
    ]
    assert entries, f"{name} holds no resource coded {code}"
    before = _screen(catalog, record, record.bundle)
    found = []
    for entry in entries:
        for bundle, removed in _variants(record, op, entry, words):
            found += _violations(catalog, record, before, op, bundle, removed)
    assert not found, found


def test_the_records_are_varied() -> None:
    """The property sees both trials and records that hold every kind of history resource."""
    trials = {r.trial for r in RECORDS}
    kinds = {e["resourceType"] for r in RECORDS for e in _entries(r.bundle)}
    assert trials == {"NCT06801119", "NCT07358988"}
    assert {"Condition", "Procedure", "Immunization", "AllergyIntolerance"} <= kinds
    assert {"Observation", "MedicationRequest"} <= kinds
