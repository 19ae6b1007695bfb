"""Load every trial under ``criteria/`` with the terminology under ``fhir_mappings/`` and check that
they fit together: every name a criterion uses exists, every unit converts, ids are unique and in
protocol order, ranges and windows are not contradictory.

Run as ``python -m app.catalog`` to lint the files (exit status 1 on the first problem).
"""

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from app.criteria_model import (
    AgeCheck,
    AllergyCheck,
    Check,
    ConditionCheck,
    CreatinineClearanceCheck,
    DistinctDrugsCheck,
    Duration,
    GroupCheck,
    ImmunizationCheck,
    LabFindingCheck,
    MeasurementCheck,
    MedicationCheck,
    PrednisoneDoseCheck,
    ProcedureCheck,
    Trial,
)
from app.engine.context import LoadedTrial
from app.errors import CatalogError
from app.mappings import Mappings, load_mappings, load_yaml
from app.settings import Settings

# Names the engine itself relies on (qualitative vocabularies, Cockcroft-Gault inputs).
_ENGINE_CODE_SETS = (
    "positive",
    "negative",
    "indeterminate",
    "low_interpretation",
    "abnormal_high_interpretation",
    "anaphylaxis",
)
_ENGINE_ANALYTES = {
    "creatinine": "mg/dL",
    "body_weight": "kg",
    "creatinine_clearance_cg": "mL/min",
}


@dataclass(frozen=True, slots=True)
class Catalog:
    trials: dict[str, LoadedTrial]
    mappings: Mappings

    def get(self, trial_id: str) -> LoadedTrial | None:
        return self.trials.get(trial_id)


def load_catalog(settings: Settings) -> Catalog:
    mappings = load_mappings(settings.mappings_dir, settings.canonical_base)
    _check_engine_names(mappings)
    trials: dict[str, LoadedTrial] = {}
    for path in sorted(settings.criteria_dir.glob("*.yaml")):
        trial = load_trial(path, mappings)
        if trial.id in trials:
            raise CatalogError(f"{path}: trial {trial.id} is defined twice")
        trials[trial.id] = LoadedTrial(trial, mappings)
    if not trials:
        raise CatalogError(f"{settings.criteria_dir}: no trial files (*.yaml)")
    return Catalog(trials, mappings)


def load_trial(path: Path, mappings: Mappings) -> Trial:
    try:
        trial = Trial.model_validate(load_yaml(path))
    except ValidationError as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    if path.stem != trial.id:
        raise CatalogError(f"{path}: file name must be the trial id {trial.id}.yaml")
    problems = list(_problems(trial, mappings))
    if problems:
        raise CatalogError(f"{path}:\n  " + "\n  ".join(problems))
    return trial


def _check_engine_names(mappings: Mappings) -> None:
    missing = [n for n in _ENGINE_CODE_SETS if n not in mappings.code_sets]
    for name, unit in _ENGINE_ANALYTES.items():
        analyte = mappings.analytes.get(name)
        if analyte is None or unit not in analyte.factors:
            missing.append(f"{name} (in {unit})")
    if missing:
        raise CatalogError(f"fhir_mappings lacks what the engine needs: {missing}")


def _walk(checks: tuple[Check, ...]) -> Iterator[Check]:
    for check in checks:
        yield check
        if isinstance(check, GroupCheck):
            yield from _walk(check.checks)


def _days(d: Duration) -> float:
    return d.days + 7 * d.weeks + 30.44 * d.months + 365.25 * d.years


def _problems(trial: Trial, m: Mappings) -> Iterator[str]:
    expected = [c.kind for c in trial.criteria]
    if expected != sorted(expected, key=lambda k: k != "inclusion"):
        yield "inclusion criteria come before exclusion criteria"
    for kind, letter in (("inclusion", "I"), ("exclusion", "E")):
        ids = [c.id for c in trial.criteria if c.kind == kind]
        if ids != [f"{letter}{n}" for n in range(1, len(ids) + 1)]:
            yield f"{kind} ids must run {letter}1, {letter}2, ... in protocol order: {ids}"
    seen: set[str] = set()
    for criterion in trial.criteria:
        for check in _walk(criterion.checks):
            yield from _check_problems(check, criterion.id, seen, m)


def _check_problems(check: Check, criterion_id: str, seen: set[str], m: Mappings) -> Iterator[str]:
    where = check.id
    if check.id in seen:
        yield f"{where}: id used twice"
    seen.add(check.id)
    if not check.id.startswith(f"{criterion_id}."):
        yield f"{where}: sub-check ids start with their criterion id ({criterion_id}.)"
    if isinstance(check, GroupCheck):
        for child in check.checks:
            if not child.id.startswith(f"{check.id}."):
                yield f"{child.id}: nested ids start with their group id ({check.id}.)"
    if isinstance(check, ConditionCheck | ProcedureCheck | ImmunizationCheck):
        excepted = check.except_codes if isinstance(check, ConditionCheck) else ()
        for name in (*check.codes, *excepted):
            if name not in m.code_sets:
                yield f"{where}: unknown code set {name!r}"
    if isinstance(check, MedicationCheck | DistinctDrugsCheck):
        for name in check.classes:
            if name not in m.drug_classes:
                yield f"{where}: unknown drug class {name!r}"
    if isinstance(check, AllergyCheck):
        for name in check.substances:
            if name not in m.drug_classes:
                yield f"{where}: unknown drug class {name!r}"
    if isinstance(check, PrednisoneDoseCheck):
        yield from _dose_problems(check, m)
    if isinstance(check, MeasurementCheck):
        analyte = m.analytes.get(check.analyte)
        if analyte is None:
            yield f"{where}: unknown analyte {check.analyte!r}"
        elif check.unit is not None and check.unit not in analyte.factors:
            yield (
                f"{where}: unit {check.unit!r} does not convert to {analyte.name} "
                f"(accepted: {sorted(analyte.factors)})"
            )
        if check.percent_of is not None and analyte is not None:
            percent = m.analytes.get(check.percent_of.percent)
            total = m.analytes.get(check.percent_of.total)
            if percent is None or percent.unit != "%":
                yield f"{where}: percent_of.percent names an analyte reported in %"
            if total is None or total.unit not in analyte.factors:
                yield f"{where}: percent_of.total must convert to {analyte.name}'s units"
    if isinstance(check, LabFindingCheck):
        for name in check.analytes:
            if name not in m.analytes:
                yield f"{where}: unknown analyte {name!r}"
        if check.result_codes is not None and check.result_codes not in m.code_sets:
            yield f"{where}: unknown code set {check.result_codes!r}"
    if isinstance(check, CreatinineClearanceCheck) and check.value <= 0:
        yield f"{where}: a clearance threshold is positive"
    if isinstance(check, AgeCheck):
        if check.min is None and check.max is None:
            yield f"{where}: an age check has a bound"
        if check.min is not None and check.max is not None and check.min > check.max:
            yield f"{where}: contradictory age range {check.min}-{check.max}"
    yield from _window_problems(check)


def _dose_problems(check: PrednisoneDoseCheck, m: Mappings) -> Iterator[str]:
    if check.min > check.max:
        yield f"{check.id}: contradictory dose range {check.min}-{check.max}"
    cls = m.drug_classes.get(check.glucocorticoids)
    if cls is None:
        yield f"{check.id}: unknown drug class {check.glucocorticoids!r}"
    else:
        lacking = [i for i in cls.ingredients if m.ingredients[i].prednisone_equivalent is None]
        if lacking or cls.atc_prefixes:
            yield f"{check.id}: every glucocorticoid needs a prednisone factor: {lacking}"
    for name in check.min_waived_with:
        if name not in m.drug_classes:
            yield f"{check.id}: unknown drug class {name!r}"


def _window_problems(check: Check) -> Iterator[str]:
    within = getattr(check, "within", None)
    floor = getattr(check, "onset_at_least", None) or getattr(check, "started_at_least", None)
    if within is not None and floor is not None and _days(floor) >= _days(within):
        yield (
            f"{check.id}: contradictory window: within {within} but at least {floor} before "
            "the as-of date"
        )


def main() -> int:
    try:
        catalog = load_catalog(Settings())
    except CatalogError as exc:
        print(f"criteria lint failed: {exc}", file=sys.stderr)
        return 1
    for trial in catalog.trials.values():
        checks = sum(1 for c in trial.spec.criteria for _ in _walk(c.checks))
        spec = trial.spec
        print(f"{spec.id} v{spec.version}: {len(spec.criteria)} criteria, {checks} checks OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
