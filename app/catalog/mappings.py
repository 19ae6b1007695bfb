"""The terminology the criteria refer to by name: code sets, analytes with units, medications.

Read from ``fhir_mappings/*.yaml`` by ``app.catalog.loader`` into these frozen models. Every
file is checked strictly: unknown
keys, unknown system names, duplicate names, empty sets and analytes without their canonical unit
fail with a :class:`CatalogError` naming the file and entry.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Route = Literal["oral", "intravenous", "subcutaneous", "inhaled", "topical", "injection", "other"]


class StrictSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeRow(StrictSpec):
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


class CodeSetSpec(StrictSpec):
    description: str
    codes: tuple[CodeRow, ...] = Field(min_length=1)
    exclude: tuple[CodeRow, ...] = ()
    strings: tuple[str, ...] = ()


class AnalyteSpec(StrictSpec):
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


class IngredientSpec(StrictSpec):
    display: str
    codes: tuple[CodeRow, ...]
    prednisone_equivalent: float | None = Field(default=None, gt=0)
    products: tuple[CodeRow, ...] = ()
    same_drug_as: str | None = None
    """Another ingredient with the same active moiety (mycophenolic acid and its mofetil ester):
    counted as one drug where distinct drugs are counted."""

    @model_validator(mode="after")
    def _recognisable(self) -> "IngredientSpec":
        if not self.codes and not self.products:
            raise ValueError("an ingredient has at least one code or product")
        return self


class DrugClassSpec(StrictSpec):
    description: str
    ingredients: tuple[str, ...] = ()
    atc_prefixes: tuple[str, ...] = ()
    codes: tuple[CodeRow, ...] = ()
    """Products that belong to the class without an ingredient entry of their own (e.g. the
    RxNorm clinical drugs of a published VSAC expansion), each with its provenance."""
    synonyms: tuple[str, ...] = ()
    """Further names a text may use for drugs of the class, as the protocol writes them (e.g.
    "G-CSF", "EPO"); matched as whole words, only ever to send an entry to review."""

    @model_validator(mode="after")
    def _not_empty(self) -> "DrugClassSpec":
        if not self.ingredients and not self.atc_prefixes and not self.codes:
            raise ValueError("a drug class lists ingredients or ATC prefixes")
        return self


class MedicationsSpec(StrictSpec):
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
    same_drug_as: str | None = None


@dataclass(frozen=True, slots=True)
class DrugClass:
    name: str
    description: str
    ingredients: frozenset[str]
    atc_prefixes: tuple[str, ...]
    products: Mapping[tuple[str, str], CodeRow] = field(default_factory=dict)
    """The class's own product rows (``codes`` in medications.yaml), by (system URI, code)."""
    names: frozenset[str] = frozenset()
    """Lower-case drug names of the class (ingredient displays, brand names in product
    displays): what an entry known only by text is matched against, to send it to review."""

    name_pattern: "re.Pattern[str] | None" = field(default=None, compare=False)
    """The names as one word-bounded alternation (longest first), built by the loader."""

    def named_in(self, text: str) -> str | None:
        """The first of the class's drug names that ``text`` (lower-case) contains as words."""
        found = None if self.name_pattern is None else self.name_pattern.search(text)
        return None if found is None else found.group(0)


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
        if any(c in drug_class.products for c in codings):
            return True
        atc = self.systems["atc"]
        return any(
            s == atc and c.startswith(p) for s, c in codings for p in drug_class.atc_prefixes
        )
