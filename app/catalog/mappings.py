"""The terminology the criteria refer to by name: code sets, analytes with units, medications.

Read from ``fhir_mappings/*.yaml`` by ``app.catalog.loader`` into these frozen models. Every
file is checked strictly: unknown
keys, unknown system names, duplicate names, empty sets and analytes without their canonical unit
fail with a :class:`CatalogError` naming the file and entry.
"""

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Literal

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
    # ICD-10-CM rows only: also read for a WHO ICD-10 coding (rows of at most 5 characters)
    who: bool = True

    @model_validator(mode="after")
    def _explained(self) -> "CodeRow":
        if self.verified and not self.source:
            raise ValueError(f"code {self.code}: verified rows name their source")
        if not self.verified and not self.note:
            raise ValueError(f"code {self.code}: unverified rows carry a note saying why")
        return self


class CodeSetSpec(StrictSpec):
    description: str
    codes: tuple[CodeRow, ...] = ()
    value_sets: tuple[str, ...] = ()
    """Ids of checked-in expansions (``fhir_mappings/valuesets/<id>.json``) whose codes belong to
    the set, beside the hand-listed ``codes``."""
    exclude: tuple[CodeRow, ...] = ()
    exclude_value_sets: tuple[str, ...] = ()
    """Ids of checked-in expansions whose codes are removed (like ``exclude`` rows)."""
    strings: tuple[str, ...] = ()
    terms: tuple[str, ...] = ()
    """Words that name the concept in a resource's text or coding displays (synonyms,
    abbreviations). Matched whole-word and case-insensitively by :class:`TermMatcher`; a hit on an
    entry the codes do not recognise sends the check to review, never to a definite answer."""

    @model_validator(mode="after")
    def _not_empty(self) -> "CodeSetSpec":
        if not self.codes and not self.value_sets:
            raise ValueError("a code set lists codes or value sets")
        return self


class ValueSetSource(StrictSpec):
    repository: str
    path: str
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")


class SubsetRule(StrictSpec):
    """How a subset was selected from its parent: display matches ``match`` and not ``unless``
    (Python regexes, case-insensitive), in ``systems`` (short names; empty = any)."""

    match: str
    unless: str = ""
    systems: tuple[str, ...] = ()

    def selects(self, system: str, display: str) -> bool:
        if self.systems and system not in self.systems:
            return False
        if not re.search(self.match, display, re.IGNORECASE):
            return False
        return not (self.unless and re.search(self.unless, display, re.IGNORECASE))


class ValueSetFile(StrictSpec):
    """One checked-in value set expansion (``fhir_mappings/valuesets/<id>.json``).

    Either a published expansion (``source`` says where it was read, ``url``/``version`` what it
    is) or a documented subset of one (``subset_of`` + ``rule``) used to exclude codes."""

    id: str
    url: str
    name: str
    title: str = ""
    version: str
    expansion_timestamp: str
    source: ValueSetSource | None = None
    subset_of: str | None = None
    rule: str = ""
    select: SubsetRule | None = None
    """The subset's rule in machine-readable form (applied to codes a terminology server adds)."""
    codes: tuple[str, ...] = Field(min_length=1)
    """``system|code|display`` with the short system names of systems.yaml."""

    @model_validator(mode="after")
    def _provenance(self) -> "ValueSetFile":
        if (self.source is None) == (self.subset_of is None):
            raise ValueError("a value set names its source, or the value set it is a subset of")
        if self.subset_of is not None and (not self.rule or self.select is None):
            raise ValueError("a subset says by which rule it was selected")
        return self


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


class RoutesSpec(StrictSpec):
    """routes.yaml: route name -> the route codes (SNOMED CT and HL7 v3) that mean it."""

    routes: dict[Route, tuple[CodeRow, ...]]


class MedicationsSpec(StrictSpec):
    ingredients: dict[str, IngredientSpec]
    classes: dict[str, DrugClassSpec]


ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10_WHO = "http://hl7.org/fhir/sid/icd-10"
ICD_SYSTEMS = frozenset({ICD10CM, ICD10_WHO})
WHO_MAX_LEN = 5
"""WHO ICD-10 codes have at most four characters plus the dot (``I50.9``): an ICD-10-CM row that
short is read for a WHO ICD-10 coding too (see fhir_mappings/README.md, "WHO ICD-10")."""


_MEMO_LIMIT = 10_000
"""Entries a matcher remembers before it starts afresh: the codes and labels of real records
repeat, but a stream of made-up ones must not grow a worker's memory without end."""
_MEMO_CHARS = 256
"""Longer codes and labels are not remembered (nor held alive by the memory)."""


_UNKNOWN: Any = object()
"""Not remembered (``memo.get(key, _UNKNOWN)``: one lookup, safe while another thread clears)."""


def _remember(memo: dict[Any, Any], key: Any, value: Any, chars: int) -> None:
    if chars > _MEMO_CHARS:
        return
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = value


def icd_code(code: str) -> str:
    """An ICD-10 / ICD-10-CM code as the code sets write it: upper case, dot after the category
    (``i509`` -> ``I50.9``), without the WHO dagger/asterisk marks (``G01*`` -> ``G01``)."""
    c = code.strip().upper().rstrip("*†+!")
    if len(c) > 3 and "." not in c:
        c = f"{c[:3]}.{c[3:]}"
    return c


@dataclass(frozen=True, slots=True)
class CodeMatcher:
    """Membership test for codings: exact (system, code) pairs and code prefixes per system.
    ICD-10(-CM) codes are normalised first (:func:`icd_code`)."""

    exact: frozenset[tuple[str, str]]
    prefixes: tuple[tuple[str, str], ...]
    excluded_exact: frozenset[tuple[str, str]] = frozenset()
    excluded_prefixes: tuple[tuple[str, str], ...] = ()
    _matched: dict[tuple[str, str], bool] = field(
        init=False, default_factory=dict, compare=False, repr=False
    )
    """(system, code) -> :meth:`matches`, remembered: a matcher never changes (``with_codes``
    builds a new one, with its own memory)."""

    def excluded(self, system: str, code: str) -> bool:
        """Whether an exclusion row removes the code (whatever includes it)."""
        if system in ICD_SYSTEMS:
            code = icd_code(code)
        return (system, code) in self.excluded_exact or any(
            s == system and code.startswith(p) for s, p in self.excluded_prefixes
        )

    def matches(self, system: str, code: str) -> bool:
        key = (system, code)
        found = self._matched.get(key)
        if found is None:
            found = self._matches(system, code)
            _remember(self._matched, key, found, len(system) + len(code))
        return found

    def _matches(self, system: str, code: str) -> bool:
        if self.excluded(system, code):
            return False
        if system in ICD_SYSTEMS:
            code = icd_code(code)
        if (system, code) in self.exact:
            return True
        return any(s == system and code.startswith(p) for s, p in self.prefixes)

    def matches_any(self, codings: Iterable[tuple[str, str]]) -> bool:
        return any(self.matches(s, c) for s, c in codings)

    def excludes_any(self, codings: Iterable[tuple[str, str]]) -> bool:
        """Whether a coding is on the set's ``exclude`` list: known, and known not to count."""
        return any(
            (s, c) in self.excluded_exact
            or any(s == es and c.startswith(p) for es, p in self.excluded_prefixes)
            for s, c in codings
        )


_SEMANTIC_TAG = re.compile(
    r"\s*\((disorder|finding|procedure|situation|event|morphologic abnormality)\)\s*$"
)


@dataclass(frozen=True, slots=True)
class TermMatcher:
    """Whole-word, case-insensitive search for any of a list of terms in free text. A term's
    own spaces match any run of whitespace or hyphens ("non invasive" finds "non-invasive");
    word boundaries keep "CVA" out of "CVAD" and "TB" out of "TBD"."""

    terms: tuple[str, ...]
    _pattern: "re.Pattern[str] | None" = field(default=None, compare=False, repr=False)
    _found: dict[str, str | None] = field(
        init=False, default_factory=dict, compare=False, repr=False
    )
    """label -> the term found in it, remembered (the same labels recur in every record)."""

    @classmethod
    def of(cls, terms: Iterable[str], rows: Iterable[CodeRow] = ()) -> "TermMatcher":
        """The terms, plus each row's display without its SNOMED semantic tag: a code replaced
        by its own display is still recognised as naming the concept."""
        displays = (_SEMANTIC_TAG.sub("", r.display) for r in rows if r.display)
        terms = tuple(dict.fromkeys(t.strip() for t in (*terms, *displays) if t.strip()))
        if not terms:
            return cls(())
        words = sorted(
            (r"[\s\-]+".join(re.escape(w) for w in t.split()) for t in terms), key=len, reverse=True
        )
        pattern = re.compile(r"(?<![\w])(?:" + "|".join(words) + r")(?![\w])", re.IGNORECASE)
        return cls(terms, pattern)

    def first_in(self, labels: Iterable[str]) -> str | None:
        """The first term found in any of the labels, as written there; None if none."""
        if self._pattern is None:
            return None
        memo = self._found
        for label in labels:
            term: str | None = memo.get(label, _UNKNOWN)
            if term is _UNKNOWN:
                found = self._pattern.search(label)
                term = found.group(0) if found else None
                _remember(memo, label, term, len(label))
            if term is not None:
                return term
        return None


@dataclass(frozen=True, slots=True)
class ValueSet:
    """A checked-in expansion, its codes resolved to (system URI, code, display)."""

    spec: ValueSetFile
    codes: tuple[tuple[str, str, str], ...]


@dataclass(frozen=True, slots=True)
class CodeSet:
    name: str
    description: str
    rows: tuple[CodeRow, ...]
    matcher: CodeMatcher
    strings: frozenset[str]
    value_sets: tuple[ValueSet, ...] = ()
    excluded_rows: tuple[CodeRow, ...] = ()
    excluded_value_sets: tuple[ValueSet, ...] = ()
    terms: TermMatcher = TermMatcher(())

    def entries(self, systems: Mapping[str, str]) -> frozenset[tuple[str, str, str]]:
        """(system URI, code, match) of every entry, exclusions applied: hand rows (a prefix row
        is one entry) plus the expansions' codes. WHO ICD-10 twins are not counted."""
        out = {(s, c, "exact") for vs in self.value_sets for s, c, _ in vs.codes}
        out |= {(systems[r.system], r.code, r.match) for r in self.rows}
        return frozenset(e for e in out if e[2] == "prefix" or self.matcher.matches(e[0], e[1]))


@dataclass(frozen=True, slots=True)
class Analyte:
    name: str
    display: str
    unit: str | None
    rows: tuple[CodeRow, ...]
    codes: frozenset[tuple[str, str]]
    factors: Mapping[str, float]
    panel_codes: tuple[tuple[str, str], ...] = ()

    def factor(self, unit: str) -> float | None:
        """The factor from ``unit`` to the canonical unit, by UCUM meaning: a listed unit as
        written, else a listed unit the UCUM expression converts to exactly (``g/dl`` = ``g/dL``,
        ``{cells}/uL`` = ``/uL``, ``10*3/mm3`` = ``10*3/uL``, ``mg/L`` from ``mg/dL``). None when
        the unit is unknown, not valid UCUM, of another dimension (a molar unit where only mass
        units are listed) or carries an annotation the listed units do not (``mL/min/{1.73_m2}``
        is not ``mL/min``). Dimensionless analytes (scores, ratios) only take their units as
        written."""
        factor = self.factors.get(unit)
        if factor is not None:
            return factor
        if self.unit is None:
            return None
        if _dimensionless(self.unit):
            return 1.0 if unit == "" else None  # a score or ratio sent as valueInteger / unitless
        for listed, listed_factor in self.factors.items():
            ratio = ucum_ratio(unit, listed)
            if ratio is not None:
                return ratio * listed_factor
        return None

    def to_canonical(self, value: float, unit: str) -> float | None:
        """The value in the canonical unit; None when this analyte does not accept the unit."""
        factor = self.factor(unit)
        return None if factor is None else value * factor


def _dimensionless(ucum: str) -> bool:
    return ucum == "1" or (ucum.startswith("{") and ucum.endswith("}"))


_COUNT_ANNOTATIONS = frozenset({"{cells}", "{cell}", "{#}", "{count}", "{rbc}", "{wbc}"})
"""Annotations that only say what is counted: ``{cells}/uL`` means ``/uL``."""
_ANNOTATION = re.compile(r"\{[^}]*\}")


def _annotations(ucum: str) -> frozenset[str]:
    return frozenset(a.lower() for a in _ANNOTATION.findall(ucum)) - _COUNT_ANNOTATIONS


@lru_cache(maxsize=1)
def _ucum_registry() -> Any:
    from ucumvert import PintUcumRegistry  # type: ignore[import-untyped]

    return PintUcumRegistry()


@lru_cache(maxsize=4096)
def ucum_ratio(unit: str, target: str) -> float | None:
    """How many ``target`` one ``unit`` is, when both are valid UCUM of the same dimension and
    carry the same annotations (other than count annotations); None otherwise. Parsed with
    ``ucumvert`` (UCUM grammar, offline)."""
    if not unit or _annotations(unit) != _annotations(target):
        return None
    try:
        registry = _ucum_registry()
        source = registry.from_ucum(_ANNOTATION.sub("", unit) or "1")
        goal = registry.from_ucum(_ANNOTATION.sub("", target) or "1")
        if source.dimensionality != goal.dimensionality:
            return None
        ratio = float((1 * source).to(goal).magnitude)
    except Exception:
        return None
    return ratio if math.isfinite(ratio) and ratio > 0 else None


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
    _named: dict[str, str | None] = field(
        init=False, default_factory=dict, compare=False, repr=False
    )
    """text -> :meth:`named_in`, remembered (the same drug texts recur in every record)."""

    def named_in(self, text: str) -> str | None:
        """The first of the class's drug names that ``text`` (lower-case) contains as words."""
        if self.name_pattern is None:
            return None
        memo = self._named
        known: str | None = memo.get(text, _UNKNOWN)
        if known is not _UNKNOWN:
            return known
        found = self.name_pattern.search(text)
        name = None if found is None else found.group(0)
        _remember(memo, text, name, len(text))
        return name


@dataclass(frozen=True, slots=True)
class Mappings:
    systems: Mapping[str, str]
    code_sets: Mapping[str, CodeSet]
    analytes: Mapping[str, Analyte]
    ingredients: Mapping[str, Ingredient]
    drug_classes: Mapping[str, DrugClass]
    ingredient_by_code: Mapping[tuple[str, str], str]
    """(system URI, code) of an ingredient or any of its products -> ingredient name."""
    routes: Mapping[tuple[str, str], Route] = field(default_factory=dict)
    """(system URI, code) of a route of administration (SNOMED CT, HL7 v3) -> route name."""
    value_sets: Mapping[str, ValueSet] = field(default_factory=dict)
    """Every checked-in expansion by id (fhir_mappings/valuesets/)."""
    _in_class: dict[tuple[str | None, tuple[tuple[str, str], ...], str], bool] = field(
        init=False, default_factory=dict, compare=False, repr=False
    )
    """:meth:`in_class` answers for tuples of codings, remembered (``with_codes`` and
    ``replace`` build new mappings, with their own memory)."""

    def with_codes(self, learned: Mapping[str, frozenset[tuple[str, str]]]) -> "Mappings":
        """These mappings with more exact (system URI, code) members in the named code sets (codes
        a terminology server placed in their value sets). Exclusions still win."""
        code_sets = dict(self.code_sets)
        for name, codes in learned.items():
            cs = code_sets[name]
            matcher = replace(cs.matcher, exact=cs.matcher.exact | codes)
            code_sets[name] = replace(cs, matcher=matcher)
        return replace(self, code_sets=code_sets)

    def route_of(self, codings: Iterable[tuple[str, str]]) -> Route | None:
        """The route named by the first recognised coding; None when none is recognised."""
        for coding in codings:
            route = self.routes.get(coding)
            if route is not None:
                return route
        return None

    def ingredient_of(self, codings: Iterable[tuple[str, str]]) -> str | None:
        for coding in codings:
            name = self.ingredient_by_code.get(coding)
            if name is not None:
                return name
        return None

    def in_class(
        self, ingredient: str | None, codings: Iterable[tuple[str, str]], cls: str
    ) -> bool:
        if not isinstance(codings, tuple):
            return self._in_class_of(ingredient, codings, cls)
        key = (ingredient, codings, cls)
        found = self._in_class.get(key)
        if found is None:
            found = self._in_class_of(ingredient, codings, cls)
            _remember(self._in_class, key, found, sum(len(s) + len(c) for s, c in codings))
        return found

    def _in_class_of(
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
