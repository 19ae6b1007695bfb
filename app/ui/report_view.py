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


_WHEN_WORDS = {
    "onset": "onset ",
    "recorded": "recorded ",
    "start": "started ",
    "occurrence": "given ",
    "performed": "performed ",
    "birth": "born ",
}


@dataclass(frozen=True)
class EvidenceDetail:
    """What one cited resource said, as the report summarised it (``evidenceDetail``)."""

    reference: str
    resource_type: str
    resource_id: str
    label: str = ""
    date: str = ""
    """With what the date is ("onset 2019-01-01", "started 2024-03-01"; a result's is bare)."""
    value: str = ""
    reference_range: str = ""
    status: str = ""
    problem: str = ""


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
    details: list[EvidenceDetail] = field(default_factory=list)
    values: list[Measured] = field(default_factory=list)
    threshold: str | None = None
    review: list[str] = field(default_factory=list)
    grouped: bool = False
    """It has sub-checks (its reason quotes theirs)."""

    @property
    def chip(self) -> tuple[str, str]:
        return chip(self.kind, self.result)

    @property
    def undetailed(self) -> list[Evidence]:
        """Cited resources the report does not summarise (beyond the newest few, or not read)."""
        shown = {d.reference for d in self.details}
        return [e for e in self.evidence if e.reference not in shown]

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
            row.evidence.append(_evidence(str(p["valueReference"]["reference"])))
        elif p["name"] == "evidenceDetail":
            row.details.append(_detail(p))
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


def _evidence(ref: str) -> Evidence:
    tail = ref.rstrip("/").split("/")
    kind, rid = (tail[-2], tail[-1]) if len(tail) >= 2 else ("", ref)
    if ref.startswith("urn:"):
        kind, rid = "", ref
    return Evidence(ref, kind, rid)


def _detail(node: Json) -> EvidenceDetail:
    named = {q["name"]: q for q in reversed(_parts(node))}

    def text(name: str) -> str:
        p = named.get(name, {})
        return str(p.get("valueString") or p.get("valueCode") or p.get("valueDate") or "")

    cited = _evidence(str(named.get("reference", {}).get("valueReference", {}).get("reference")))
    value = named.get("value", {})
    shown = text("value")
    if "valueQuantity" in value:
        shown = _quantity(value["valueQuantity"])
    elif "valueBoolean" in value:
        shown = "yes" if value["valueBoolean"] else "no"
    day = text("date")
    return EvidenceDetail(
        reference=cited.reference,
        resource_type=text("type") or cited.resource_type,
        resource_id=cited.resource_id,
        label=text("label"),
        date=f"{_WHEN_WORDS.get(text('dateKind'), '')}{day}" if day else "",
        value=shown,
        reference_range=_range(named.get("referenceRange", {}).get("valueRange", {})),
        status=text("status"),
        problem=text("problem"),
    )


def _quantity(q: Json) -> str:
    number = f"{q.get('comparator', '')}{q.get('value', '')}"
    return f"{number} {q['unit']}" if q.get("unit") else number


def _range(r: Json) -> str:
    """A reference range as a person writes it: "12–15.5 g/dL", "≥ 12 g/dL", "≤ 40 U/L"."""
    low, high = r.get("low"), r.get("high")
    if low and high:
        if low.get("unit") == high.get("unit"):
            return f"{low.get('value', '')}–{_quantity(high)}"
        return f"{_quantity(low)} – {_quantity(high)}"
    if low:
        return f"≥ {_quantity(low)}"
    if high:
        return f"≤ {_quantity(high)}"
    return ""


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
