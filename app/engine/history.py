"""Checks on coded history: conditions, procedures, immunizations, allergies.

History is taken as recorded: no matching record means "no record found" (not-met), not unknown.
Two things keep that closed-world reading honest. An entry whose codes the check does not recognise
but whose text or coding displays name the concept (the code set's ``terms``) sends the check to
review instead of "no record found". And an entry that does not establish the fact (a provisional
diagnosis, an unconfirmed or only high-criticality allergy) is shown to a clinician, never counted
as a definite finding. Words only ever move an answer toward review, never to met or not-met.
"""

import re
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from typing import Protocol, TypeVar

from app.catalog.mappings import Mappings, TermMatcher
from app.catalog.schema import (
    AllergyCheck,
    ConditionCheck,
    ImmunizationCheck,
    ProcedureCheck,
)
from app.engine.context import Context, History, RecognisedCodes
from app.engine.record import Allergy, Coding, Condition, Procedure
from app.engine.results import Result, Status

_ACTIVE = frozenset({"active", "recurrence", "relapse"})
_ALLERGY_GONE = frozenset({"inactive", "resolved"})
"""AllergyIntolerance clinicalStatus codes under which the allergy no longer counts."""


class _Dated(Protocol):
    @property
    def ref(self) -> str: ...
    @property
    def codes(self) -> tuple[Coding, ...]: ...
    @property
    def text(self) -> str: ...
    @property
    def when(self) -> date | None: ...
    @property
    def displays(self) -> tuple[str, ...]: ...


_T = TypeVar("_T", bound=_Dated)
_Check = ConditionCheck | ProcedureCheck | ImmunizationCheck | AllergyCheck


def _matcher(ctx: Context, names: Sequence[str]) -> list[RecognisedCodes]:
    return [ctx.codes(n) for n in names]


def _what(code_sets: Sequence[str]) -> str:
    return " or ".join(name.replace("_", " ") for name in code_sets)


def _describe(item: _Dated) -> str:
    label = item.text or next(iter(item.displays), "") or (item.codes[0][1] if item.codes else "")
    status = getattr(item, "clinical_status", None)
    noted = f", {status}" if status and status not in _ACTIVE else ""
    return f"{label or 'a record'} ({item.when or 'undated'}{noted}, {item.ref})"


def _listed(items: Sequence[_Dated]) -> str:
    more = f" and {len(items) - 5} more" if len(items) > 5 else ""
    return "; ".join(_describe(m) for m in items[:5]) + more


def _found(check: _Check, matches: Sequence[_Dated], what: str) -> Result:
    refs = tuple(m.ref for m in matches)
    listed = _listed(matches)
    if check.on_match == "review":
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            f"Found {what}: {listed}. A clinician must judge whether it counts.",
            evidence=refs,
            review=(f"{check.label}: found {listed}",),
        )
    return Result(check.id, check.label, Status.MET, f"Found {what}: {listed}.", evidence=refs)


def _none_found(check_id: str, label: str, since: date | None) -> Result:
    span = f" (searched from {since})" if since else ""
    return Result(check_id, label, Status.NOT_MET, f"No record found: {label}{span}.")


def _to_review(check: _Check, items: Sequence[_Dated], why: str) -> Result:
    """Unknown with a review item naming each resource: what the record holds may count, but
    only a clinician can say."""
    listed = _listed(items)
    return Result(
        check.id,
        check.label,
        Status.UNKNOWN,
        f"{why}: {listed}. A clinician must judge whether it counts.",
        evidence=tuple(i.ref for i in items),
        review=(f"{check.label}: {why.lower()}: {listed}",),
    )


def _select_dated(
    items: Sequence[_T],
    recognised: frozenset[int],
    since: date | None,
    counts_anyway: Callable[[_T], bool] = lambda _: False,
) -> tuple[list[_T], list[_T]]:
    """(matches inside the window, matches without a date when a window applies); a match is
    an item in ``recognised`` (:meth:`Context.recognised`)."""
    if not recognised:
        return [], []
    coded = [i for i in items if id(i) in recognised]
    return _in_window(coded, since, counts_anyway)


def _in_window(
    items: Sequence[_T], since: date | None, counts_anyway: Callable[[_T], bool]
) -> tuple[list[_T], list[_T]]:
    """(inside the window, cannot be placed): undated, or dated so coarsely (a year, a month, a
    period without an end) that it may or may not reach into the window."""
    if since is None:
        return list(items), []
    inside = [i for i in items if (i.when is not None and i.when >= since) or counts_anyway(i)]
    placed = {id(i) for i in inside}
    vague = [i for i in items if id(i) not in placed and (i.when is None or _may_reach(i, since))]
    return inside, vague


def _may_reach(item: _Dated, since: date) -> bool:
    latest: date | None = getattr(item, "latest", None)
    return latest is not None and latest >= since


def _undated(check_id: str, label: str, what: str, undated: Sequence[_Dated]) -> Result:
    listed = _listed(undated)
    return Result(
        check_id,
        label,
        Status.UNKNOWN,
        f"Found {what} without a date precise enough to place it in the window: {listed}.",
        evidence=tuple(u.ref for u in undated),
        review=(f"{label}: date of {listed}",),
    )


def _labels(item: _Dated) -> tuple[str, ...]:
    return (item.text, *item.displays) if item.text else item.displays


def _named_in_words(
    ctx: Context,
    check: ConditionCheck | ProcedureCheck | ImmunizationCheck,
    part: History,
    candidates: Iterable[_T],
) -> list[tuple[_T, str]]:
    """Entries the check's codes do not recognise whose text or a display names the concept,
    with the words found. ``candidates`` are entries of that part of the record."""
    sets = _matcher(ctx, check.codes)
    words = _words_only(ctx, check, part)
    out = []
    for item in candidates:
        if id(item) not in words:
            continue
        labels = _labels(item)
        term = next((t for s in sets if (t := s.term_in(labels)) is not None), None)
        if term is not None:
            out.append((item, term))
    return out


def _words_only(
    ctx: Context, check: ConditionCheck | ProcedureCheck | ImmunizationCheck, part: History
) -> frozenset[int]:
    """``id()`` of the entries of that part whose words name the check's concept and whose codes
    the check does not recognise (a code the set lists, or explicitly excludes, is recognised:
    words do not overrule it): the only ones :func:`_named_in_words` may return."""

    def compute() -> frozenset[int]:
        named = ctx.named(part, check.codes)
        if not named:
            return named
        return named - ctx.recognised(part, check.codes) - ctx.excluded(part, check.codes)

    return ctx.remembered(("words only", part, tuple(check.codes)), compute)


def _safety_net(
    check: ConditionCheck | ProcedureCheck | ImmunizationCheck,
    ctx: Context,
    result: Result,
    part: History,
    candidates: Sequence[_Dated],
) -> Result:
    """A not-met answer that an entry named only in words may overturn goes to review."""
    if result.status is not Status.NOT_MET:
        return result
    named = _named_in_words(ctx, check, part, candidates)
    if not named:
        return result
    items = [i for i, _ in named]
    words = ", ".join(sorted({f"'{t}'" for _, t in named}))
    why = (
        f"No code recognised for {_what(check.codes)}, but the record names it in words "
        f"({words}) in an entry whose codes the check does not know"
    )
    return _to_review(check, items, why)


def condition(check: ConditionCheck, ctx: Context) -> Result:
    since = ctx.history_since(check.within)
    if check.current_within is not None:
        since = check.current_within.before(ctx.as_of)
    pool, confirmed, tentative = _condition_pool(ctx, check)

    def present_in_window(c: Condition) -> bool:
        # Still active, or abated inside the window: the condition was present during it.
        ended = c.abated is not None and since is not None and c.abated >= since
        return check.or_active and (c.active_on(ctx.as_of) or ended)

    result = _condition_in(check, ctx, confirmed, since, present_in_window)
    if result.status is not Status.NOT_MET:
        return result
    # A provisional / differential / unconfirmed diagnosis neither establishes nor rules out.
    # With onset_at_least an entry bears on the answer if it may be old enough: it may lengthen
    # the history the confirmed entries show.
    window = since if check.onset_at_least is None else None
    limit = check.onset_at_least.before(ctx.as_of) if check.onset_at_least else date.max

    def may_count(c: Condition) -> bool:
        return c.when is None or c.when <= limit

    inside, undated = _select_dated(
        tentative, ctx.recognised("conditions", check.codes), window, present_in_window
    )
    inside = [c for c in inside if may_count(c)]
    if inside or undated:
        why = f"{_what(check.codes)} is recorded only as a provisional or unconfirmed diagnosis"
        return _to_review(check, [*inside, *undated], why)
    # Only entries named in words can overturn "no record found" (each kept or dropped on its
    # own, in record order, so narrowing the pool first changes nothing but the work).
    words = _words_only(ctx, check, "conditions")
    if not words:
        return result
    named = [c for c in pool if id(c) in words]
    inside, undated = _in_window(named, window, present_in_window)
    inside = [c for c in inside if may_count(c)]
    if check.current_within is not None:
        # Still marked active though older than the window: as for coded entries, review.
        placed = {id(c) for c in (*inside, *undated)}
        undated += [c for c in named if c.clinical_status in _ACTIVE and id(c) not in placed]
    return _safety_net(check, ctx, result, "conditions", [*inside, *undated])


_Pool = tuple[tuple[Condition, ...], tuple[Condition, ...], tuple[Condition, ...]]


def _condition_pool(ctx: Context, check: ConditionCheck) -> _Pool:
    """The conditions the check looks at (active ones only if it says so, less its excepted
    codes), in record order, and those of them confirmed and tentative; worked out once per
    evaluation for the checks that share them."""

    def compute() -> _Pool:
        excepted = ctx.recognised("conditions", check.except_codes)
        pool = tuple(
            c
            for c in ctx.record.conditions
            if (c.active_on(ctx.as_of) or not check.active_only) and id(c) not in excepted
        )
        tentative = tuple(c for c in pool if c.tentative)
        confirmed = tuple(c for c in pool if not c.tentative) if tentative else pool
        return pool, confirmed, tentative

    return ctx.remembered(("condition pool", check.active_only, tuple(check.except_codes)), compute)


def _condition_in(
    check: ConditionCheck,
    ctx: Context,
    pool: Sequence[Condition],
    since: date | None,
    present_in_window: Callable[[Condition], bool],
) -> Result:
    recognised = ctx.recognised("conditions", check.codes)
    what = _what(check.codes)
    inside, undated = _select_dated(pool, recognised, since, present_in_window)
    seen = {id(c) for c in (*inside, *undated)}
    if check.or_active and since is not None:
        # Ended (remission, resolved) without an abatement date, diagnosed before the window:
        # it may have been present during it.
        undated += [
            c
            for c in pool
            if id(c) not in seen and c.abated is None and c.when is not None and id(c) in recognised
        ]
    if check.current_within is not None:
        # Older than the window yet still marked active: most likely never closed, but the
        # status says current, so a clinician decides (without a status it simply lapsed).
        seen = {id(c) for c in (*inside, *undated)}
        stale = [
            c
            for c in pool
            if id(c) not in seen
            and c.when is not None
            and c.clinical_status in _ACTIVE
            and id(c) in recognised
        ]
        if not inside and not undated and stale:
            why = (
                f"{what} is still marked active but was recorded more than "
                f"{check.current_within} ago"
            )
            return _to_review(check, stale + undated, why)
    if check.onset_at_least is not None and inside:
        latest_onset = check.onset_at_least.before(ctx.as_of)
        dated = [c for c in inside if c.when is not None]
        if not dated:
            return _undated(check.id, check.label, what, inside)
        first = min(dated, key=lambda c: c.when or date.max)
        surely = [c for c in dated if (c.latest or c.when or date.max) <= latest_onset]
        if not surely and first.when is not None and first.when <= latest_onset:
            # A partial date ("2025") that may fall on either side of the limit.
            return _undated(check.id, check.label, what, [first])
        if first.when is not None and first.when > latest_onset:
            return Result(
                check.id,
                check.label,
                Status.NOT_MET,
                f"The earliest record of {what} is dated {first.when}, after {latest_onset} "
                f"({check.onset_at_least} before the as-of date).",
                evidence=(first.ref,),
            )
        return Result(
            check.id,
            check.label,
            Status.MET,
            f"{what} recorded since {first.when} ({first.ref}), at least "
            f"{check.onset_at_least} before the as-of date.",
            evidence=(first.ref,),
        )
    return _verdict(check, what, inside, undated, since)


def procedure(check: ProcedureCheck, ctx: Context) -> Result:
    since = ctx.history_since(check.within)
    excepted = ctx.recognised("procedures", check.except_codes)
    pool = [p for p in ctx.record.procedures if id(p) not in excepted] if excepted else None

    def overlaps(p: Procedure) -> bool:
        # A performedPeriod counts over its whole length; in-progress means happening now.
        return p.ongoing() or (p.end is not None and since is not None and p.end >= since)

    return _events(
        check, ctx, "procedures", ctx.record.procedures if pool is None else pool, since, overlaps
    )


def immunization(check: ImmunizationCheck, ctx: Context) -> Result:
    since = ctx.history_since(check.within)
    return _events(check, ctx, "immunizations", ctx.record.immunizations, since, lambda _: False)


def _events(
    check: ProcedureCheck | ImmunizationCheck,
    ctx: Context,
    part: History,
    items: Sequence[_T],
    since: date | None,
    counts_anyway: Callable[[_T], bool],
) -> Result:
    """``items``: entries of that part of the record."""
    what = _what(check.codes)
    recognised = ctx.recognised(part, check.codes)
    inside, undated = _select_dated(items, recognised, since, counts_anyway)
    result = _verdict(check, what, inside, undated, since)
    if result.status is not Status.NOT_MET:
        return result
    # As in :func:`condition`: only entries named in words can overturn "no record found".
    words = _words_only(ctx, check, part)
    if not words:
        return result
    inside, undated = _in_window([i for i in items if id(i) in words], since, counts_anyway)
    return _safety_net(check, ctx, result, part, [*inside, *undated])


def _verdict(
    check: ConditionCheck | ProcedureCheck | ImmunizationCheck,
    what: str,
    inside: Sequence[_Dated],
    undated: Sequence[_Dated],
    since: date | None,
) -> Result:
    """Found in the window; else found without a date (unknown); else no record found."""
    if inside:
        return _found(check, inside, what)
    if undated:
        return _undated(check.id, check.label, what, undated)
    return _none_found(check.id, check.label, since)


def allergy(check: AllergyCheck, ctx: Context) -> Result:
    """Active allergies that are definitely to the substances and (for ``severe``) definitely
    severe count; one that may be (named only in words, unconfirmed, or of high criticality
    without a recorded severe reaction) goes to review."""
    mappings = ctx.mappings
    anaphylaxis = mappings.code_sets["anaphylaxis"]
    substance_terms = _substance_terms(mappings, check.substances)
    definite: list[Allergy] = []
    doubtful: list[tuple[Allergy, str]] = []
    for a in ctx.record.allergies:
        if a.clinical_status in _ALLERGY_GONE:
            continue
        doubts: list[str] = []
        if check.substances:
            ingredient = mappings.ingredient_of(a.codes)
            if not any(mappings.in_class(ingredient, a.codes, c) for c in check.substances):
                term = substance_terms.first_in(_labels(a))
                if term is None:
                    continue
                doubts.append(f"substance named in words ('{term}'), not by a recognised code")
        anaphylactic = anaphylaxis.matcher.matches_any(a.manifestations)
        severe_enough = anaphylactic or (
            a.severe_reaction and check.reaction == "severe_or_anaphylaxis"
        )
        if check.severe and not severe_enough:
            term = anaphylaxis.terms.first_in(a.manifestation_text)
            if term is not None:
                doubts.append(f"reaction written as '{term}', not coded")
            elif a.severe_reaction:
                doubts.append("a severe reaction, not recorded as anaphylaxis")
            elif a.criticality == "high":
                doubts.append("high criticality, but no severe reaction or anaphylaxis recorded")
            else:
                continue
        if a.tentative:
            doubts.append(f"verification status {a.verification}")
        if doubts:
            doubtful.append((a, "; ".join(doubts)))
        else:
            definite.append(a)
    what = check.label.rstrip(".").lower()
    if definite:
        return _found(check, definite, what)
    if doubtful:
        listed = "; ".join(f"{_describe(a)}: {why}" for a, why in doubtful[:5])
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            f"Possibly {what}, not established: {listed}. A clinician must judge whether it "
            "counts.",
            evidence=tuple(a.ref for a, _ in doubtful),
            review=(f"{check.label}: {listed}",),
        )
    return _none_found(check.id, check.label, None)


_GRADE = re.compile(r"^(\w+)\s+\d[\d.]*$")


def _substance_terms(mappings: Mappings, classes: Sequence[str]) -> TermMatcher:
    """Words an allergy written in text may use for the ingredients of these drug classes: the
    ingredient's name, its display (without a parenthesis), its brand names (the bracketed part of
    its RxNorm product names) and, for a graded name such as "dextran 40", the bare name, since
    "dextran" alone may well mean this one."""
    terms: set[str] = set()
    for cls in classes:
        for name in mappings.drug_classes[cls].ingredients:
            ingredient = mappings.ingredients[name]
            for label in (name.replace("_", " "), ingredient.display.split("(")[0].strip()):
                terms.add(label)
                if graded := _GRADE.match(label):
                    terms.add(graded.group(1))
            for row in ingredient.products.values():
                terms.update(re.findall(r"\[([^\]]+)\]", row.display))
    return TermMatcher.of(sorted(terms))
