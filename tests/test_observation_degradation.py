"""A record made less complete never moves a criterion toward eligibility.

Each golden case's Observations are degraded the ways real EHR data degrades: the effective date
blurred to its month, the value replaced by a text no parser should read, a coded value reduced to
its text, the test's code replaced by its name. For every criterion, a degraded record may move
the answer toward unknown or against eligibility, never from unknown or against eligibility to an
answer that favours it (inclusion met, exclusion not-met), and a screening that was not eligible
never becomes eligible.
"""

import copy
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import pytest
import yaml

from app.catalog.loader import Catalog
from app.engine import evaluate
from app.engine.evaluate import Eligibility, Screening
from app.engine.results import Status
from app.fhir_io.bundle_reader import read_bundle
from tests import fhir_builders
from tests.golden_cases import GOLDEN, GoldenCase, load_cases

Json = dict[str, Any]
_VALUES = ("valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueRatio")


def _blur_date(obs: Json) -> bool:
    when = obs.get("effectiveDateTime")
    if not isinstance(when, str) or len(when) < 10:
        return False
    obs["effectiveDateTime"] = when[:7]
    return True


def _unreadable_text(obs: Json) -> bool:
    if not any(k in obs for k in _VALUES):
        return False
    for key in _VALUES:
        obs.pop(key, None)
    obs["valueString"] = "see comment"
    return True


def _code_to_text(obs: Json) -> bool:
    concept = obs.get("valueCodeableConcept")
    if not isinstance(concept, dict) or not concept.get("coding"):
        return False
    display = next((c.get("display") for c in concept["coding"] if c.get("display")), None)
    obs["valueCodeableConcept"] = {"text": concept.get("text") or display or "result"}
    return True


def _analyte_displays() -> dict[str, str]:
    """LOINC code -> its display in fhir_mappings/analytes.yaml."""
    analytes = yaml.safe_load((GOLDEN.parents[1] / "fhir_mappings" / "analytes.yaml").read_text())
    return {
        row["code"]: row["display"]
        for body in analytes.values()
        for row in body["codes"]
        if row["system"] == "loinc"
    }


_DISPLAYS = _analyte_displays()


def _name_only(obs: Json) -> bool:
    """The test's code dropped, its name kept (as a lab with local codes sends it)."""
    codes = [c.get("code") for c in obs.get("code", {}).get("coding", [])]
    name = next((_DISPLAYS[c] for c in codes if c in _DISPLAYS), None)
    if name is None:
        return False
    obs["code"] = {"text": name}
    return True


_DEGRADE: dict[str, Callable[[Json], bool]] = {
    "date blurred to the month": _blur_date,
    "value replaced by unreadable text": _unreadable_text,
    "coded value reduced to text": _code_to_text,
    "test code replaced by its name": _name_only,
}


def _baseline(trial: str) -> tuple[GoldenCase, set[str]]:
    """The trial's baseline record as a case of its own, and the ids of its resources."""
    raw = yaml.safe_load((GOLDEN / trial / "baseline.yaml").read_text(encoding="utf-8"))
    ids = {str(next(iter(item.values())).get("id")) for item in raw["resources"]}
    bundle = fhir_builders.bundle(dict(raw["patient"]), raw["resources"])
    as_of = date.fromisoformat(str(raw["as_of"]))
    return GoldenCase(trial, "baseline", as_of, bundle, {}), ids


def _variants() -> Iterator[tuple[GoldenCase, str, str]]:
    """(case, observation id, degradation) for every Observation of each baseline record, and
    for the Observations each golden case adds to its baseline, where the degradation applies."""
    cases = load_cases()
    for trial in sorted({c.trial for c in cases}):
        baseline, own = _baseline(trial)
        for case in (baseline, *(c for c in cases if c.trial == trial)):
            for entry in case.bundle["entry"]:
                resource = entry["resource"]
                if resource["resourceType"] != "Observation":
                    continue
                if case is not baseline and resource.get("id") in own:
                    continue
                for name, degrade in _DEGRADE.items():
                    if degrade(copy.deepcopy(resource)):
                        yield case, str(resource.get("id")), name


VARIANTS = list(_variants())
_BEFORE: dict[tuple[str, str], Screening] = {}
"""Each case's screening as recorded, computed once for all its variants."""


def _favours(kind: str, status: Status) -> bool:
    return status is (Status.MET if kind == "inclusion" else Status.NOT_MET)


def _screen(catalog: Catalog, case: GoldenCase, bundle: Json) -> Screening:
    return evaluate(catalog.trials[case.trial], read_bundle(bundle), case.as_of)


@pytest.mark.parametrize(
    ("case", "obs_id", "how"),
    VARIANTS,
    ids=[f"{c.trial}: {c.name} / {o} / {h}" for c, o, h in VARIANTS],
)
def test_less_complete_never_favours_eligibility(
    case: GoldenCase, obs_id: str, how: str, catalog: Catalog
) -> None:
    bundle = copy.deepcopy(case.bundle)
    target = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation" and str(e["resource"].get("id")) == obs_id
    )
    assert _DEGRADE[how](target)
    key = (case.trial, case.name)
    if key not in _BEFORE:
        _BEFORE[key] = _screen(catalog, case, case.bundle)
    before = _BEFORE[key]
    after = _screen(catalog, case, bundle)
    moved = [
        f"{b.criterion.id}: {b.result.status} -> {a.result.status} ({a.result.reason})"
        for b, a in zip(before.criteria, after.criteria, strict=True)
        if not _favours(b.criterion.kind, b.result.status)
        and _favours(a.criterion.kind, a.result.status)
    ]
    assert not moved, moved
    if before.eligibility is not Eligibility.ELIGIBLE:
        assert after.eligibility is not Eligibility.ELIGIBLE


def _born(case: GoldenCase) -> object:
    return case.bundle["entry"][0]["resource"].get("birthDate")


def _birth_cases() -> list[GoldenCase]:
    """Each baseline, and every case whose patient has a birth date of its own."""
    cases = load_cases()
    baselines = [_baseline(t)[0] for t in sorted({c.trial for c in cases})]
    usual = {b.trial: _born(b) for b in baselines}
    own = [c for c in cases if isinstance(_born(c), str) and _born(c) != usual[c.trial]]
    return baselines + own


BORN = _birth_cases()


@pytest.mark.parametrize("case", BORN, ids=[f"{c.trial}: {c.name}" for c in BORN])
@pytest.mark.parametrize("keep", [4, 7], ids=["year", "month"])
def test_a_blurred_birth_date_never_favours_eligibility(
    case: GoldenCase, keep: int, catalog: Catalog
) -> None:
    """The birth date blurred to its year or month: ages (and Cockcroft-Gault) decide only when
    every possible birthday agrees."""
    bundle = copy.deepcopy(case.bundle)
    patient = bundle["entry"][0]["resource"]
    assert patient["resourceType"] == "Patient"
    patient["birthDate"] = patient["birthDate"][:keep]
    key = (case.trial, case.name)
    if key not in _BEFORE:
        _BEFORE[key] = _screen(catalog, case, case.bundle)
    before = _BEFORE[key]
    after = _screen(catalog, case, bundle)
    moved = [
        f"{b.criterion.id}: {b.result.status} -> {a.result.status} ({a.result.reason})"
        for b, a in zip(before.criteria, after.criteria, strict=True)
        if not _favours(b.criterion.kind, b.result.status)
        and _favours(a.criterion.kind, a.result.status)
    ]
    assert not moved, moved
    if before.eligibility is not Eligibility.ELIGIBLE:
        assert after.eligibility is not Eligibility.ELIGIBLE
