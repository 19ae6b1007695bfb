"""Golden cases: each file under tests/golden/<trial>/ lists records with expected results."""

from typing import Any

import pytest

from app.catalog.loader import Catalog
from app.engine import Result, evaluate
from app.fhir_io.bundle_reader import read_bundle
from tests.golden_cases import GoldenCase, load_cases

CASES = load_cases()


def _by_id(results: list[Result]) -> dict[str, Result]:
    return {r.id: r for top in results for r in top.walk()}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.trial}: {c.name}" for c in CASES])
def test_golden(case: GoldenCase, catalog: Catalog) -> None:
    trial = catalog.trials[case.trial]
    screening = evaluate(trial, read_bundle(case.bundle), case.as_of)
    results = _by_id([c.result for c in screening.criteria])
    unknown_ids = set(case.expect) - set(results)
    assert not unknown_ids, f"case names ids the trial does not have: {unknown_ids}"
    got = {k: results[k].status.value for k in case.expect}
    assert got == case.expect, {
        k: results[k].reason for k in case.expect if got[k] != case.expect[k]
    }
    if case.eligibility is not None:
        assert screening.eligibility.value == case.eligibility
    requested = {code for r in screening.data_requests for _, code in r.codes}
    assert set(case.requests) <= requested, (
        f"missing data requests: {set(case.requests) - requested}"
    )
    for rid in case.review:
        assert any(r.review for r in results[rid].walk()), f"{rid} carries no review item"


_MEASURED = {"measurement", "lab_finding", "creatinine_clearance", "prednisone_dose", "age"}
_SWAP = {"met": "not-met", "not-met": "met"}


def _reachable(node: Any) -> set[str]:
    """The results a node can give: a check on a measurement can also be unknown (no data), a
    review-only match is unknown instead of met, a judgement is only unknown; groups and criteria
    can give what their checks give."""
    kind = getattr(node, "check", "criterion")
    children = getattr(node, "checks", ())
    if children:
        found = set().union(*(_reachable(c) for c in children))
    elif kind == "judgement":
        found = {"unknown"}
    elif getattr(node, "on_match", "met") == "review":
        found = {"unknown", "not-met"}
    elif kind in _MEASURED:
        found = {"met", "not-met", "unknown"}
    else:
        found = {"met", "not-met"}
    if getattr(node, "expect", "present") == "absent":
        found = {_SWAP.get(s, s) for s in found}
    return found


def test_every_criterion_and_subcheck_is_covered(catalog: Catalog) -> None:
    """Every criterion and sub-check is expected, in some golden case, to give each result it
    can give (met, not-met, and unknown where data can be missing or a clinician must judge)."""
    for trial_id, trial in catalog.trials.items():
        seen: dict[str, set[str]] = {}
        for case in (c for c in CASES if c.trial == trial_id):
            for rid, status in case.expect.items():
                seen.setdefault(rid, set()).add(status)
        gaps = []
        for node in (n for c in trial.spec.criteria for n in _nodes(c)):
            missing = _reachable(node) - seen.get(node.id, set())
            if missing:
                gaps.append(f"{node.id} never {'/'.join(sorted(missing))}")
        assert not gaps, f"{trial_id}: golden cases do not cover: {gaps}"


def _nodes(node: Any) -> list[Any]:
    out = [node]
    for child in getattr(node, "checks", ()):
        out += _nodes(child)
    return out
