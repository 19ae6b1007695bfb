"""Load every trial under ``criteria/`` with the terminology under ``fhir_mappings/`` and check that
they fit together: every name a criterion uses exists, every unit converts, ids are unique and in
protocol order, ranges and windows are not contradictory.

Run as ``python -m app.catalog`` to lint the files (exit status 1 on the first problem).
"""

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from app.catalog.mappings import (
    WHO_MAX_LEN,
    Analyte,
    AnalyteSpec,
    CodeMatcher,
    CodeRow,
    CodeSet,
    CodeSetSpec,
    DrugClass,
    Ingredient,
    Mappings,
    MedicationsSpec,
    Route,
    RoutesSpec,
    StrictSpec,
    TermMatcher,
    ValueSet,
    ValueSetFile,
)
from app.catalog.schema import (
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
from app.catalog.trial import LoadedTrial
from app.core.errors import CatalogError
from app.core.settings import Settings

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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML loader that rejects a key given twice in a mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise CatalogError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return yaml.load(handle, Loader=_UniqueKeyLoader)
    except (OSError, yaml.YAMLError, CatalogError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def _parse(model: type[StrictSpec], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{where}: {exc}") from exc


def _code_set_files(directory: Path) -> list[Path]:
    return [directory / f"{n}.yaml" for n in ("conditions", "procedures", "vaccines", "results")]


def _load_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc


def load_value_sets(directory: Path, systems: dict[str, str]) -> dict[str, ValueSet]:
    """Every checked-in expansion under ``directory`` (``<id>.json``), codes resolved to URIs."""
    out: dict[str, ValueSet] = {}
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        spec: ValueSetFile = _parse(ValueSetFile, _load_json(path), str(path))
        if path.stem != spec.id:
            raise CatalogError(f"{path}: file name must be the value set id {spec.id}.json")
        codes: list[tuple[str, str, str]] = []
        for entry in spec.codes:
            parts = entry.split("|", 2)
            if len(parts) != 3 or not parts[1]:
                raise CatalogError(f"{path}: {entry!r} is not system|code|display")
            if parts[0] not in systems:
                raise CatalogError(f"{path}: unknown system {parts[0]!r} (see systems.yaml)")
            codes.append((systems[parts[0]], parts[1], parts[2]))
        out[spec.id] = ValueSet(spec, tuple(codes))
    short = {uri: name for name, uri in systems.items()}
    for vs in out.values():
        parent, rule = vs.spec.subset_of, vs.spec.select
        if parent is None or rule is None:
            continue
        if parent not in out:
            raise CatalogError(f"valuesets/{vs.spec.id}.json: subset of unknown {parent!r}")
        missing = set(vs.codes) - set(out[parent].codes)
        if missing:
            raise CatalogError(
                f"valuesets/{vs.spec.id}.json: codes not in {parent}: {sorted(missing)[:5]}"
            )
        selected = {c for c in out[parent].codes if rule.selects(short[c[0]], c[2])}
        if selected != set(vs.codes):
            raise CatalogError(
                f"valuesets/{vs.spec.id}.json: its rule does not select exactly its codes "
                f"(rebuild with build.py): {sorted(selected ^ set(vs.codes))[:5]}"
            )
    return out


def load_mappings(directory: Path, canonical_base: str) -> Mappings:
    systems_raw = load_yaml(directory / "systems.yaml")
    if not isinstance(systems_raw, dict):
        raise CatalogError(f"{directory / 'systems.yaml'}: expected a mapping")
    systems = {
        str(k): str(v).replace("{canonical}", canonical_base.rstrip("/"))
        for k, v in systems_raw.items()
    }

    def uri(row: CodeRow, where: str) -> str:
        if row.system not in systems:
            raise CatalogError(f"{where}: unknown system {row.system!r} (see systems.yaml)")
        return systems[row.system]

    value_sets = load_value_sets(directory / "valuesets", systems)
    who, icd10cm = systems.get("icd10"), systems.get("icd10cm")

    def expanded(names: Iterable[str], where: str) -> tuple[ValueSet, ...]:
        out = []
        for name in names:
            if name not in value_sets:
                raise CatalogError(
                    f"{where}: unknown value set {name!r} (fhir_mappings/valuesets/)"
                )
            out.append(value_sets[name])
        return tuple(out)

    def keys(
        rows: tuple[CodeRow, ...], sets: Iterable[ValueSet], where: str
    ) -> tuple[frozenset[tuple[str, str]], tuple[tuple[str, str], ...]]:
        exact: set[tuple[str, str]] = {(s, c) for vs in sets for s, c, _ in vs.codes}
        prefixes: list[tuple[str, str]] = []
        for r in rows:
            (exact.add if r.match == "exact" else prefixes.append)((uri(r, where), r.code))
        # WHO ICD-10 reads the ICD-10-CM entries of WHO length (README: "WHO ICD-10"); an exact
        # ICD-10-CM category without subdivisions (B20, F05) stands for WHO's subdivisions of it.
        no_twin = {r.code for r in rows if r.system == "icd10cm" and not r.who}
        if who is not None and icd10cm is not None:
            twins = [
                (c, kind)
                for kind, pairs in (("exact", exact), ("prefix", prefixes))
                for s, c in list(pairs)
                if s == icd10cm and len(c) <= WHO_MAX_LEN and c not in no_twin
            ]
            exact |= {(who, c) for c, kind in twins if kind == "exact" and len(c) > 3}
            prefixes += [(who, c) for c, kind in twins if kind == "prefix" or len(c) == 3]
        return frozenset(exact), tuple(prefixes)

    def matcher(
        rows: tuple[CodeRow, ...],
        excluded: tuple[CodeRow, ...],
        where: str,
        sets: Iterable[ValueSet] = (),
        excluded_sets: Iterable[ValueSet] = (),
    ) -> CodeMatcher:
        exact, prefixes = keys(rows, sets, where)
        ex_exact, ex_prefixes = keys(excluded, excluded_sets, where)
        return CodeMatcher(exact, prefixes, ex_exact, ex_prefixes)

    code_sets: dict[str, CodeSet] = {}
    for path in _code_set_files(directory):
        raw = load_yaml(path) or {}
        for name, body in raw.items():
            where = f"{path.name}:{name}"
            if name in code_sets:
                raise CatalogError(f"{where}: code set name already defined in another file")
            spec: CodeSetSpec = _parse(CodeSetSpec, body, where)
            included = expanded(spec.value_sets, where)
            removed = expanded(spec.exclude_value_sets, where)
            code_sets[name] = CodeSet(
                name=name,
                description=spec.description,
                rows=spec.codes,
                matcher=matcher(spec.codes, spec.exclude, where, included, removed),
                strings=frozenset(s.lower() for s in spec.strings),
                value_sets=included,
                excluded_rows=spec.exclude,
                excluded_value_sets=removed,
                terms=TermMatcher.of(spec.terms, spec.codes),
            )

    analytes: dict[str, Analyte] = {}
    for name, body in (load_yaml(directory / "analytes.yaml") or {}).items():
        where = f"analytes.yaml:{name}"
        a: AnalyteSpec = _parse(AnalyteSpec, body, where)
        analytes[name] = Analyte(
            name=name,
            display=a.display,
            unit=a.unit,
            rows=a.codes,
            codes=frozenset((uri(r, where), r.code) for r in a.codes),
            factors=dict(a.units),
            panel_codes=tuple((uri(r, where), r.code) for r in a.panels),
        )

    meds: MedicationsSpec = _parse(
        MedicationsSpec, load_yaml(directory / "medications.yaml"), "medications.yaml"
    )
    ingredients: dict[str, Ingredient] = {}
    by_code: dict[tuple[str, str], str] = {}
    for name, ing in meds.ingredients.items():
        where = f"medications.yaml:{name}"
        for row in (*ing.codes, *ing.products):
            key = (uri(row, where), row.code)
            if by_code.get(key, name) != name:
                raise CatalogError(f"{where}: code {row.code} already belongs to {by_code[key]}")
            by_code[key] = name
        ingredients[name] = Ingredient(
            name=name,
            display=ing.display,
            prednisone_equivalent=ing.prednisone_equivalent,
            products={(uri(p, where), p.code): p for p in ing.products},
        )
    classes: dict[str, DrugClass] = {}
    for name, cls in meds.classes.items():
        unknown = [i for i in cls.ingredients if i not in ingredients]
        if unknown:
            raise CatalogError(f"medications.yaml:{name}: unknown ingredients {unknown}")
        classes[name] = DrugClass(
            name, cls.description, frozenset(cls.ingredients), cls.atc_prefixes
        )

    routes: dict[tuple[str, str], Route] = {}
    if (directory / "routes.yaml").exists():
        spec_routes: RoutesSpec = _parse(
            RoutesSpec, {"routes": load_yaml(directory / "routes.yaml")}, "routes.yaml"
        )
        for route, rows in spec_routes.routes.items():
            for row in rows:
                key = (uri(row, f"routes.yaml:{route}"), row.code)
                if routes.get(key, route) != route:
                    raise CatalogError(f"routes.yaml:{route}: {row.code} is already {routes[key]}")
                routes[key] = route

    clash = set(code_sets) & (set(analytes) | set(classes))
    if clash:
        raise CatalogError(f"names used twice across mapping files: {sorted(clash)}")
    return Mappings(systems, code_sets, analytes, ingredients, classes, by_code, routes, value_sets)


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
        if check.review_not_met and check.check != "any":
            yield f"{where}: review_not_met is for 'any' groups"
    if isinstance(check, ConditionCheck | ProcedureCheck | ImmunizationCheck):
        excepted = check.except_codes if not isinstance(check, ImmunizationCheck) else ()
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
        if check.room_air is not None:
            if check.room_air.codes not in m.code_sets:
                yield f"{where}: unknown code set {check.room_air.codes!r}"
            for oxygen in check.room_air.supplemental_oxygen:
                o2 = m.analytes.get(oxygen.analyte)
                if o2 is None or oxygen.unit not in o2.factors:
                    yield f"{where}: {oxygen.analyte!r} is not an analyte in {oxygen.unit!r}"
    if isinstance(check, LabFindingCheck):
        for name in check.analytes:
            if name not in m.analytes:
                yield f"{where}: unknown analyte {name!r}"
        for codes in (check.result_codes, check.negative_codes):
            if codes is not None and codes not in m.code_sets:
                yield f"{where}: unknown code set {codes!r}"
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
