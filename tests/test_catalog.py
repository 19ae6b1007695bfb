"""Criteria and mapping files: verbatim texts, and the strict schema failing on broken copies."""

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.catalog.loader import Catalog, load_catalog
from app.core.errors import CatalogError
from app.core.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CRITERIA = ROOT / "criteria"


def _registry_items(trial_id: str) -> list[str]:
    """The numbered criteria of a registry record, inclusions then exclusions, as written."""
    text = (CRITERIA / "registry" / f"{trial_id}.txt").read_text(encoding="utf-8")
    after_inclusion = re.split(r"^Inclusion criteria$", text, flags=re.M | re.I)[1]
    inclusion, exclusion = re.split(r"^Exclusion criteria$", after_inclusion, flags=re.M | re.I)
    item = re.compile(r"^\s*(?:•\s*)?\d+\.\s+(.*)$")
    found = []
    for block in (inclusion, exclusion.lstrip("\n")):
        for line in block.split("\n"):
            match = item.match(line)
            if match:
                found.append(match.group(1).strip())
            elif found and not line.strip():
                break
    return found


def test_every_criterion_is_the_verbatim_registry_text_in_order(catalog: Catalog) -> None:
    for trial_id, trial in catalog.trials.items():
        assert [c.text for c in trial.spec.criteria] == _registry_items(trial_id)


def _broken_copy(
    tmp_path: Path, trial_id: str, mutate: Callable[[dict[str, Any]], None]
) -> Settings:
    criteria = tmp_path / "criteria"
    criteria.mkdir()
    data = yaml.safe_load((CRITERIA / f"{trial_id}.yaml").read_text(encoding="utf-8"))
    mutate(data)
    (criteria / f"{trial_id}.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    return Settings(criteria_dir=criteria)


def _check(data: dict[str, Any], check_id: str) -> dict[str, Any]:
    def find(checks: list[dict[str, Any]]) -> dict[str, Any] | None:
        for c in checks:
            if c["id"] == check_id:
                return c
            found = find(c.get("checks", []))
            if found is not None:
                return found
        return None

    for criterion in data["criteria"]:
        found = find(criterion["checks"])
        if found is not None:
            return found
    raise KeyError(check_id)


BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown key", lambda d: _check(d, "I7.anc").update(treshold=1), "treshold"),
    (
        "unknown code set",
        lambda d: _check(d, "I1.sle").update(codes=["lupus"]),
        "unknown code set 'lupus'",
    ),
    (
        "unit that does not convert",
        lambda d: _check(d, "I7.hb").update(unit="mg/dL"),
        "does not convert",
    ),
    ("empty group", lambda d: _check(d, "I7.coagulation").update(checks=[]), "too_short"),
    ("duplicate id", lambda d: _check(d, "I7.alc").update(id="I7.anc"), "id used twice"),
    ("ids out of order", lambda d: d["criteria"][1].update(id="I3"), "protocol order"),
    ("no verbatim text", lambda d: d["criteria"][0].update(text=""), "text"),
    ("contradictory age range", lambda d: _check(d, "I1.age").update(min=70), "contradictory age"),
    (
        "contradictory window",
        lambda d: _check(d, "I2.duration").update(within={"months": 3}),
        "contradictory window",
    ),
    (
        "unknown analyte",
        lambda d: _check(d, "I7.anc").update(analyte="neutrophils"),
        "unknown analyte",
    ),
    (
        "unknown drug class",
        lambda d: _check(d, "I2.therapy").update(classes=["steroids"]),
        "unknown drug class",
    ),
    ("unknown check kind", lambda d: _check(d, "I7.anc").update(check="lab"), "check"),
    (
        "sub-check id outside its criterion",
        lambda d: _check(d, "I7.anc").update(id="I6.anc"),
        "start with",
    ),
    (
        "room-air rule with an unknown code set",
        lambda d: _check(d, "I7.spo2")["room_air"].update(codes="on_air"),
        "unknown code set 'on_air'",
    ),
    (
        "supplemental oxygen in a unit its analyte does not convert",
        lambda d: _check(d, "I7.spo2")["room_air"]["supplemental_oxygen"][1].update(unit="%"),
        "'inspired_oxygen_flow' is not an analyte in '%'",
    ),
    (
        "review_not_met on a group that is not 'any'",
        lambda d: _check(d, "I7.coagulation").update(check="all"),
        "review_not_met is for 'any' groups",
    ),
    (
        "negative_codes on a finding that is not coded",
        lambda d: _check(d, "I5.ana").update(negative_codes="not_pregnant"),
        "negative_codes only with finding: coded",
    ),
    (
        "unknown negative_codes",
        lambda d: _check(d, "E4.pregnancy_status").update(negative_codes="not_expecting"),
        "unknown code set 'not_expecting'",
    ),
    (
        "a single reading is not 'repeated'",
        lambda d: _check(d, "I7.hb").update(repeated=1),
        "repeated",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, s) for _, m, s in BROKEN], ids=[n for n, *_ in BROKEN]
)
def test_a_broken_trial_file_fails_to_load(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)):
        load_catalog(_broken_copy(tmp_path, "NCT06801119", mutate))


def _broken_mappings(tmp_path: Path, name: str, edit: Callable[[str], str]) -> Settings:
    target = tmp_path / "fhir_mappings"
    shutil.copytree(ROOT / "fhir_mappings", target)
    path = target / name
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")
    return Settings(mappings_dir=target)


BROKEN_MAPPINGS: list[tuple[str, str, Callable[[str], str], str]] = [
    (
        "duplicate key",
        "conditions.yaml",
        lambda s: s + "\nsle:\n  description: again\n",
        "duplicate key",
    ),
    (
        "unknown system",
        "analytes.yaml",
        lambda s: s.replace("system: loinc", "system: lonic", 1),
        "unknown system",
    ),
    (
        "unverified code without a note",
        "vaccines.yaml",
        lambda s: s.replace("verified: true", "verified: false", 1),
        "carry a note",
    ),
    (
        "canonical unit without factor 1",
        "analytes.yaml",
        lambda s: s.replace('"10*9/L": 1\n', '"10*9/L": 1000\n', 1),
        "canonical unit",
    ),
]


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [(f, e, m) for _, f, e, m in BROKEN_MAPPINGS],
    ids=[n for n, *_ in BROKEN_MAPPINGS],
)
def test_a_broken_mapping_file_fails_to_load(
    tmp_path: Path, name: str, edit: Callable[[str], str], message: str
) -> None:
    with pytest.raises(CatalogError, match=re.escape(message)):
        load_catalog(_broken_mappings(tmp_path, name, edit))


def test_cvx_codes_keep_their_leading_zeros(catalog: Catalog) -> None:
    live = catalog.mappings.code_sets["live_vaccines"]
    assert live.matcher.matches("http://hl7.org/fhir/sid/cvx", "03")
    assert not live.matcher.matches("http://hl7.org/fhir/sid/cvx", "3")


def test_prefix_codes_match_and_exclusions_win(catalog: Catalog) -> None:
    sle = catalog.mappings.code_sets["sle"].matcher
    icd = "http://hl7.org/fhir/sid/icd-10-cm"
    assert sle.matches(icd, "M32.14")
    assert not sle.matches(icd, "M32.0")  # drug-induced lupus
    assert not sle.matches(icd, "L93.0")  # cutaneous lupus
