"""The terminology the criteria refer to by name: code sets, analytes with units, medications.

Loaded from ``fhir_mappings/*.yaml`` into frozen models. Every file is checked strictly: unknown
keys, unknown system names, duplicate names, empty sets and analytes without their canonical unit
fail with a :class:`CatalogError` naming the file and entry.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import CatalogError

Route = Literal["oral", "intravenous", "subcutaneous", "inhaled", "topical", "injection", "other"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeRow(_Strict):
    system: str
    code: str = Field(min_length=1)
    match: Literal["exact", "prefix"] = "exact"
    display: str = ""
    verified: bool
    source: str = ""
    note: str = ""
    # medication products only
    strength_mg: float | None = Field(default=None, gt=0)
    per: Literal["mL"] | None = None
    route: Route | None = None

    @model_validator(mode="after")
    def _explained(self) -> "CodeRow":
        if self.verified and not self.source:
            raise ValueError(f"code {self.code}: verified rows name their source")
        if not self.verified and not self.note:
            raise ValueError(f"code {self.code}: unverified rows carry a note saying why")
        return self


class CodeSetSpec(_Strict):
    description: str
    codes: tuple[CodeRow, ...] = Field(min_length=1)
    exclude: tuple[CodeRow, ...] = ()
    strings: tuple[str, ...] = ()


class AnalyteSpec(_Strict):
    display: str
    unit: str | None = None
    codes: tuple[CodeRow, ...] = Field(min_length=1)
    units: dict[str, float] = Field(default_factory=dict)
    panels: tuple[CodeRow, ...] = ()
    """Panels whose components carry the analyte (e.g. the blood-pressure panel): searched for
    by code when the record is fetched; the component is what is read."""

    @model_validator(mode="after")
    def _canonical_unit_converts(self) -> "AnalyteSpec":
        if self.unit is not None and self.units.get(self.unit) != 1:
            raise ValueError(f"canonical unit {self.unit!r} must be listed in units with factor 1")
        if self.unit is None and self.units:
            raise ValueError("units given without a canonical unit")
        return self


class IngredientSpec(_Strict):
    display: str
    codes: tuple[CodeRow, ...]
    prednisone_equivalent: float | None = Field(default=None, gt=0)
    products: tuple[CodeRow, ...] = ()

    @model_validator(mode="after")
    def _recognisable(self) -> "IngredientSpec":
        if not self.codes and not self.products:
            raise ValueError("an ingredient has at least one code or product")
        return self


class DrugClassSpec(_Strict):
    description: str
    ingredients: tuple[str, ...] = ()
    atc_prefixes: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> "DrugClassSpec":
        if not self.ingredients and not self.atc_prefixes:
            raise ValueError("a drug class lists ingredients or ATC prefixes")
        return self


class MedicationsSpec(_Strict):
    ingredients: dict[str, IngredientSpec]
    classes: dict[str, DrugClassSpec]


@dataclass(frozen=True, slots=True)
class CodeMatcher:
    """Membership test for codings: exact (system, code) pairs and code prefixes per system."""

    exact: frozenset[tuple[str, str]]
    prefixes: tuple[tuple[str, str], ...]
    excluded_exact: frozenset[tuple[str, str]] = frozenset()
    excluded_prefixes: tuple[tuple[str, str], ...] = ()

    def matches(self, system: str, code: str) -> bool:
        if (system, code) in self.excluded_exact or any(
            s == system and code.startswith(p) for s, p in self.excluded_prefixes
        ):
            return False
        if (system, code) in self.exact:
            return True
        return any(s == system and code.startswith(p) for s, p in self.prefixes)

    def matches_any(self, codings: Iterable[tuple[str, str]]) -> bool:
        return any(self.matches(s, c) for s, c in codings)


@dataclass(frozen=True, slots=True)
class CodeSet:
    name: str
    description: str
    rows: tuple[CodeRow, ...]
    matcher: CodeMatcher
    strings: frozenset[str]


@dataclass(frozen=True, slots=True)
class Analyte:
    name: str
    display: str
    unit: str | None
    rows: tuple[CodeRow, ...]
    codes: frozenset[tuple[str, str]]
    factors: Mapping[str, float]
    panel_codes: tuple[tuple[str, str], ...] = ()

    def to_canonical(self, value: float, unit: str) -> float | None:
        """The value in the canonical unit; None when this analyte does not accept the unit."""
        factor = self.factors.get(unit)
        if factor is None and unit == "" and self.unit is not None and _dimensionless(self.unit):
            factor = 1.0  # a score or ratio sent as valueInteger / without a unit
        return None if factor is None else value * factor


def _dimensionless(ucum: str) -> bool:
    return ucum == "1" or (ucum.startswith("{") and ucum.endswith("}"))


@dataclass(frozen=True, slots=True)
class Ingredient:
    name: str
    display: str
    prednisone_equivalent: float | None
    products: Mapping[tuple[str, str], CodeRow]


@dataclass(frozen=True, slots=True)
class DrugClass:
    name: str
    description: str
    ingredients: frozenset[str]
    atc_prefixes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Mappings:
    systems: Mapping[str, str]
    code_sets: Mapping[str, CodeSet]
    analytes: Mapping[str, Analyte]
    ingredients: Mapping[str, Ingredient]
    drug_classes: Mapping[str, DrugClass]
    ingredient_by_code: Mapping[tuple[str, str], str]
    """(system URI, code) of an ingredient or any of its products -> ingredient name."""

    def ingredient_of(self, codings: Iterable[tuple[str, str]]) -> str | None:
        for coding in codings:
            name = self.ingredient_by_code.get(coding)
            if name is not None:
                return name
        return None

    def in_class(
        self, ingredient: str | None, codings: Iterable[tuple[str, str]], cls: str
    ) -> bool:
        drug_class = self.drug_classes[cls]
        if ingredient is not None and ingredient in drug_class.ingredients:
            return True
        atc = self.systems["atc"]
        return any(
            s == atc and c.startswith(p) for s, c in codings for p in drug_class.atc_prefixes
        )


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


def _parse(model: type[_Strict], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CatalogError(f"{where}: {exc}") from exc


def _code_set_files(directory: Path) -> list[Path]:
    return [directory / f"{n}.yaml" for n in ("conditions", "procedures", "vaccines", "results")]


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

    def matcher(rows: Iterable[CodeRow], excluded: Iterable[CodeRow], where: str) -> CodeMatcher:
        def split(rs: Iterable[CodeRow]) -> tuple[frozenset[tuple[str, str]], tuple[Any, ...]]:
            rs = tuple(rs)
            exact = frozenset((uri(r, where), r.code) for r in rs if r.match == "exact")
            prefixes = tuple((uri(r, where), r.code) for r in rs if r.match == "prefix")
            return exact, prefixes

        exact, prefixes = split(rows)
        ex_exact, ex_prefixes = split(excluded)
        return CodeMatcher(exact, prefixes, ex_exact, ex_prefixes)

    code_sets: dict[str, CodeSet] = {}
    for path in _code_set_files(directory):
        raw = load_yaml(path) or {}
        for name, body in raw.items():
            where = f"{path.name}:{name}"
            if name in code_sets:
                raise CatalogError(f"{where}: code set name already defined in another file")
            spec: CodeSetSpec = _parse(CodeSetSpec, body, where)
            code_sets[name] = CodeSet(
                name=name,
                description=spec.description,
                rows=spec.codes,
                matcher=matcher(spec.codes, spec.exclude, where),
                strings=frozenset(s.lower() for s in spec.strings),
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

    clash = set(code_sets) & (set(analytes) | set(classes))
    if clash:
        raise CatalogError(f"names used twice across mapping files: {sorted(clash)}")
    return Mappings(systems, code_sets, analytes, ingredients, classes, by_code)
