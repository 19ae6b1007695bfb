"""Checks on coded history: conditions, procedures, immunizations, allergies.

History is taken as recorded: no matching record means "no record found" (not-met), not unknown.
"""

from collections.abc import Callable, Sequence
from datetime import date
from typing import Protocol, TypeVar

from app.catalog.mappings import CodeMatcher
from app.catalog.schema import (
    AllergyCheck,
    ConditionCheck,
    ImmunizationCheck,
    ProcedureCheck,
)
from app.engine.context import Context
from app.engine.record import Allergy, Coding, Condition
from app.engine.results import Result, Status


class _Dated(Protocol):
    @property
    def ref(self) -> str: ...
    @property
    def codes(self) -> tuple[Coding, ...]: ...
    @property
    def text(self) -> str: ...
    @property
    def when(self) -> date | None: ...


_T = TypeVar("_T", bound=_Dated)


def _matcher(ctx: Context, names: Sequence[str]) -> list[CodeMatcher]:
    return [ctx.mappings.code_sets[n].matcher for n in names]


def _what(code_sets: Sequence[str]) -> str:
    return " or ".join(name.replace("_", " ") for name in code_sets)


def _describe(item: _Dated) -> str:
    label = item.text or (item.codes[0][1] if item.codes else "a record")
    return f"{label} ({item.when or 'undated'}, {item.ref})"


def _found(
    check: ConditionCheck | ProcedureCheck | ImmunizationCheck | AllergyCheck,
    matches: Sequence[_Dated],
    what: str,
) -> Result:
    refs = tuple(m.ref for m in matches)
    listed = "; ".join(_describe(m) for m in matches[:5])
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


def _select_dated(
    items: Sequence[_T],
    matchers: list[CodeMatcher],
    since: date | None,
    counts_anyway: Callable[[_T], bool] = lambda _: False,
) -> tuple[list[_T], list[_T]]:
    """(matches inside the window, matches without a date when a window applies)."""
    coded = [i for i in items if any(m.matches_any(i.codes) for m in matchers)]
    if since is None:
        return coded, []
    inside = [i for i in coded if (i.when is not None and i.when >= since) or counts_anyway(i)]
    undated = [i for i in coded if i.when is None and i not in inside]
    return inside, undated


def _undated(check_id: str, label: str, what: str, undated: Sequence[_Dated]) -> Result:
    listed = "; ".join(_describe(u) for u in undated[:5])
    return Result(
        check_id,
        label,
        Status.UNKNOWN,
        f"Found {what} without a date, so it cannot be placed in the window: {listed}.",
        evidence=tuple(u.ref for u in undated),
        review=(f"{label}: date of {listed}",),
    )


def condition(check: ConditionCheck, ctx: Context) -> Result:
    matchers = _matcher(ctx, check.codes)
    since = ctx.history_since(check.within)
    what = _what(check.codes)
    excepted = _matcher(ctx, check.except_codes)
    pool = [
        c
        for c in ctx.record.conditions
        if (c.active_on(ctx.as_of) or not check.active_only)
        and not any(m.matches_any(c.codes) for m in excepted)
    ]

    def present_in_window(c: Condition) -> bool:
        # Still active, or abated inside the window: the condition was present during it.
        ended = c.abated is not None and since is not None and c.abated >= since
        return check.or_active and (c.active_on(ctx.as_of) or ended)

    inside, undated = _select_dated(pool, matchers, since, present_in_window)
    if check.onset_at_least is not None and inside:
        latest_onset = check.onset_at_least.before(ctx.as_of)
        dated = [c for c in inside if c.when is not None]
        if not dated:
            return _undated(check.id, check.label, what, inside)
        first = min(dated, key=lambda c: c.when or date.max)
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
    return _events(check, ctx, ctx.record.procedures)


def immunization(check: ImmunizationCheck, ctx: Context) -> Result:
    return _events(check, ctx, ctx.record.immunizations)


def _events(
    check: ProcedureCheck | ImmunizationCheck, ctx: Context, items: Sequence[_Dated]
) -> Result:
    since = ctx.history_since(check.within)
    what = _what(check.codes)
    inside, undated = _select_dated(items, _matcher(ctx, check.codes), since)
    return _verdict(check, what, inside, undated, since)


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
    mappings = ctx.mappings
    anaphylaxis = mappings.code_sets["anaphylaxis"].matcher

    def relevant(a: Allergy) -> bool:
        if check.substances:
            ingredient = mappings.ingredient_of(a.codes)
            if not any(mappings.in_class(ingredient, a.codes, c) for c in check.substances):
                return False
        if check.severe:
            return (
                a.criticality == "high"
                or a.severe_reaction
                or anaphylaxis.matches_any(a.manifestations)
            )
        return True

    matches = [a for a in ctx.record.allergies if relevant(a)]
    what = check.label.rstrip(".").lower()
    if matches:
        return _found(check, matches, what)
    return _none_found(check.id, check.label, None)
