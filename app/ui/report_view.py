"""A stored GuidanceResponse read back for a page: the overall answer, one row per criterion and
sub-check, the data to collect and the review items. Only what the report holds is shown (the
engine is never run again to render it), so the page says what the machine said when it said it.
"""

import re
from dataclasses import dataclass, field
from typing import Any

from app.catalog.loader import Catalog

Json = dict[str, Any]
_SUB_CHECK = re.compile(r"\s*\[[IE][0-9]+(?:\.[a-z0-9_]+)+\]\s*")

OVERALL = {
    "eligible": ("Eligible", "good"),
    "needs-review": ("Needs review", "review"),
    "needs-data": ("Needs data", "data"),
    "ineligible": ("Not eligible", "bad"),
}
"""Overall eligibility: words and the chip's tone."""

_CHIPS = {
    # (kind, result) -> words, tone. An exclusion that is "met" means the patient is excluded, so
    # its chip never says "met": nobody must read it as a criterion passed.
    ("inclusion", "met"): ("met", "good"),
    ("inclusion", "not-met"): ("not met", "bad"),
    ("exclusion", "met"): ("exclusion applies", "bad"),
    ("exclusion", "not-met"): ("does not apply", "good"),
}


def chip(kind: str, result: str) -> tuple[str, str]:
    """The words and tone of a result's chip."""
    if result == "unknown":
        return "unknown", "unknown"
    if result == "not-applicable":
        return "not applicable", "neutral"
    return _CHIPS.get((kind, result), (result, "neutral"))


@dataclass(frozen=True)
class Evidence:
    reference: str
    resource_type: str
    resource_id: str


@dataclass(frozen=True)
class Measured:
    name: str
    value: str
    unit: str


@dataclass
class Row:
    id: str
    kind: str
    result: str
    text: str
    reason: str
    depth: int
    evidence: list[Evidence] = field(default_factory=list)
    values: list[Measured] = field(default_factory=list)
    threshold: str | None = None
    review: list[str] = field(default_factory=list)
    grouped: bool = False
    """It has sub-checks (its reason quotes theirs)."""

    @property
    def chip(self) -> tuple[str, str]:
        return chip(self.kind, self.result)

    @property
    def summary(self) -> str:
        """The reason as the row shows it: a group's reason repeats every sub-check's (which have
        rows of their own), so a group shows its opening sentence, or the one sub-check it names."""
        if not self.grouped:
            return self.reason
        pieces = _SUB_CHECK.split(self.reason)
        if pieces[0].strip():
            return pieces[0].strip()
        if len(pieces) == 2:
            return self.reason
        return "Decided by the sub-checks below."


@dataclass(frozen=True)
class ReviewItem:
    key: str
    """Stable within the report: ``<check id>#<n>`` (the sign-off form's field names)."""
    check: str
    text: str
    result: str
    kind: str


@dataclass(frozen=True)
class Collect:
    resource_type: str
    what: list[str]
    since: str | None


@dataclass
class Report:
    id: str
    trial: str
    acronym: str
    version: str
    patient: str
    as_of: str
    issued: str
    eligibility: str
    criteria: list[list[Row]]
    """Per criterion: its row first, then its sub-checks (depth-first)."""
    review_items: list[ReviewItem]
    collect: list[Collect]
    unknown_for_data: list[Row]
    messages: list[str]

    @property
    def overall(self) -> tuple[str, str]:
        return OVERALL.get(self.eligibility, (self.eligibility, "neutral"))

    def results(self) -> dict[str, Row]:
        """Every row by its check id (criterion and sub-checks)."""
        return {row.id: row for rows in self.criteria for row in rows}


def _parts(node: Json) -> list[Json]:
    parts: list[Json] = node.get("part", [])
    return parts


def _rows(node: Json, depth: int, into: list[Row]) -> None:
    parts = _parts(node)
    first = {p["name"]: p for p in reversed(parts)}

    def text(name: str) -> str:
        p = first.get(name)
        return str(p.get("valueString") or p.get("valueCode") or "") if p else ""

    row = Row(
        id=text("id"),
        kind=text("kind"),
        result=text("result"),
        text=text("text"),
        reason=text("reason"),
        depth=depth,
        threshold=text("threshold") or None,
    )
    into.append(row)
    for p in parts:
        if p["name"] == "evidence":
            ref = str(p["valueReference"]["reference"])
            tail = ref.rstrip("/").split("/")
            kind, rid = (tail[-2], tail[-1]) if len(tail) >= 2 else ("", ref)
            if ref.startswith("urn:"):
                kind, rid = "", ref
            row.evidence.append(Evidence(ref, kind, rid))
        elif p["name"] == "value":
            named = {q["name"]: q for q in _parts(p)}
            quantity = named.get("quantity", {}).get("valueQuantity", {})
            row.values.append(
                Measured(
                    name=str(named.get("name", {}).get("valueString", "")),
                    value=str(quantity.get("value", "")),
                    unit=str(quantity.get("unit", "")),
                )
            )
        elif p["name"] == "review":
            row.review.append(str(p["valueString"]))
        elif p["name"] == "criterion":
            row.grouped = True
            _rows(p, depth + 1, into)


def _code_names(catalog: Catalog) -> dict[tuple[str, str], str]:
    names: dict[tuple[str, str], str] = {}
    for analyte in catalog.mappings.analytes.values():
        for system, code in analyte.codes:
            names.setdefault((system, code), analyte.display)
    return names


def _collect(requirement: Json, names: dict[tuple[str, str], str]) -> Collect:
    what: list[str] = []
    for flt in requirement.get("codeFilter", []):
        for coding in flt.get("code", []):
            system, code = str(coding.get("system", "")), str(coding.get("code", ""))
            label = names.get((system, code))
            short = system.rsplit("/", 1)[-1]
            what.append(f"{label} ({short} {code})" if label else f"{short} {code}")
        if "valueSet" in flt:
            what.append(f"codes in {flt['valueSet']}")
    since = None
    for flt in requirement.get("dateFilter", []):
        since = flt.get("valuePeriod", {}).get("start") or since
    if requirement.get("mustSupport"):
        what.extend(str(m) for m in requirement["mustSupport"])
    unique = list(dict.fromkeys(what))
    return Collect(str(requirement.get("type", "")), unique, since)


def read_report(guidance: Json, catalog: Catalog) -> Report:
    """The page's view of one stored GuidanceResponse."""
    contained = {c.get("id"): c for c in guidance.get("contained", [])}
    parameters = contained.get("result", {}).get("parameter", [])
    eligibility = next((p["valueCode"] for p in parameters if p["name"] == "eligibility"), "")
    as_of = next((p["valueDate"] for p in parameters if p["name"] == "asOf"), "")
    criteria: list[list[Row]] = []
    for p in parameters:
        if p["name"] == "criterion":
            rows: list[Row] = []
            _rows(p, 0, rows)
            criteria.append(rows)
    review_items = [
        ReviewItem(f"{row.id}#{n}", row.id, item, row.result, row.kind)
        for rows in criteria
        for row in rows
        for n, item in enumerate(row.review, start=1)
    ]
    unknown_for_data = [
        row
        for rows in criteria
        for row in rows
        if row.result == "unknown" and not row.review and row.depth > 0 and not row.grouped
    ]
    names = _code_names(catalog)
    collect = [_collect(r, names) for r in guidance.get("dataRequirement", [])]
    messages = [
        str(issue.get("diagnostics", ""))
        for issue in contained.get("messages", {}).get("issue", [])
    ]
    canonical = str(guidance.get("moduleCanonical", ""))
    trial, _, version = canonical.rpartition("/")[2].partition("|")
    subject = guidance.get("subject", {})
    return Report(
        id=str(guidance.get("id", "")),
        trial=trial,
        acronym=catalog.trials[trial].spec.acronym if trial in catalog.trials else trial,
        version=version,
        patient=str(subject.get("reference") or subject.get("display") or ""),
        as_of=str(as_of),
        issued=str(guidance.get("occurrenceDateTime", "")),
        eligibility=str(eligibility),
        criteria=criteria,
        review_items=review_items,
        collect=collect,
        unknown_for_data=unknown_for_data,
        messages=messages,
    )


@dataclass(frozen=True)
class Change:
    id: str
    text: str
    kind: str
    before: str | None
    after: str | None
    reason_before: str
    reason_after: str


def changes(older: Report, newer: Report) -> list[Change]:
    """Checks (criteria and sub-checks) whose result moved between two reports of one trial,
    in the newer report's order, with each side's reason."""
    before, after = older.results(), newer.results()
    moved = []
    for check_id in list(after) + [k for k in before if k not in after]:
        a, b = before.get(check_id), after.get(check_id)
        if a is not None and b is not None and a.result == b.result:
            continue
        row = b or a
        assert row is not None
        moved.append(
            Change(
                id=check_id,
                text=row.text,
                kind=row.kind,
                before=a.result if a else None,
                after=b.result if b else None,
                reason_before=a.summary if a else "",
                reason_after=b.summary if b else "",
            )
        )
    return moved
