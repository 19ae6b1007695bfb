"""Checks on medication use: exposure to a drug class, the prednisone-equivalent daily dose of oral
glucocorticoids, and the number of distinct drugs of a class ever used."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from app.catalog.schema import DistinctDrugsCheck, MedicationCheck, PrednisoneDoseCheck
from app.engine.context import Context
from app.engine.record import MedicationUse
from app.engine.results import DataRequest, Result, Status, Value

_PER_DAY = {
    "s": 86400.0,
    "min": 1440.0,
    "h": 24.0,
    "d": 1.0,
    "wk": 1 / 7,
    "mo": 1 / 30,
    "a": 1 / 365,
}
"""Periods per day for each UCUM unit of ``Timing.repeat.periodUnit``."""
_UNIT_DOSE = {"1", "{tbl}", "{tablet}", "{capsule}", "{cap}", "tablet", "tab", "capsule", ""}
"""Dose units that mean "one tablet/capsule" rather than a mass."""


@dataclass(frozen=True, slots=True)
class _Use:
    use: MedicationUse
    ingredient: str | None


def _uses(ctx: Context, classes: Iterable[str]) -> list[_Use]:
    mappings = ctx.mappings
    wanted = tuple(classes)
    out = []
    for use in ctx.record.medications:
        ingredient = mappings.ingredient_of(use.codes)
        if any(mappings.in_class(ingredient, use.codes, c) for c in wanted):
            out.append(_Use(use, ingredient))
    return out


def _used_since(use: MedicationUse, since: date, as_of: date) -> bool:
    if use.start is None:
        return False
    if use.start >= since:
        return True
    return use.is_current(as_of) or (use.end is not None and use.end >= since)


def _name(u: _Use) -> str:
    return u.use.text or u.ingredient or (u.use.codes[0][1] if u.use.codes else "medication")


def _describe(uses: list[_Use]) -> str:
    return "; ".join(f"{_name(u)} (from {u.use.start or 'undated'}, {u.use.ref})" for u in uses[:5])


def medication(check: MedicationCheck, ctx: Context) -> Result:
    what = " or ".join(c.replace("_", " ") for c in check.classes)
    uses = _uses(ctx, check.classes)
    since = ctx.history_since(check.within)
    if check.current:
        uses = [u for u in uses if u.use.is_current(ctx.as_of)]
    if check.route is not None:
        # A use whose route is not recorded may be by this route: kept, and said so.
        uses = [u for u in uses if _route(ctx, u) in {check.route, None}]
    if since is not None:
        uses = [u for u in uses if _used_since(u.use, since, ctx.as_of)]
    if not uses:
        span = f" (searched from {since})" if since else ""
        return Result(
            check.id, check.label, Status.NOT_MET, f"No record found: {check.label}{span}."
        )
    refs = tuple(u.use.ref for u in uses)
    if check.started_at_least is not None:
        cutoff = check.started_at_least.before(ctx.as_of)
        ingredients = {u.ingredient for u in uses}
        starts = [
            m.start
            for m in ctx.record.medications
            if m.start is not None and ctx.mappings.ingredient_of(m.codes) in ingredients
        ]
        first = min(starts, default=None)
        if first is None:
            return Result(
                check.id,
                check.label,
                Status.UNKNOWN,
                f"{_describe(uses)}: no start date recorded, so the time on treatment is unknown.",
                evidence=refs,
                review=(f"{check.label}: start date of {_describe(uses)}",),
            )
        if first > cutoff:
            return Result(
                check.id,
                check.label,
                Status.NOT_MET,
                f"{_describe(uses)}: first recorded use {first}, less than "
                f"{check.started_at_least} before the as-of date.",
                evidence=refs,
            )
    reason = f"Found {what}: {_describe(uses)}."
    if check.on_match == "review":
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            reason + " A clinician must judge whether it counts.",
            evidence=refs,
            review=(f"{check.label}: {_describe(uses)}",),
        )
    return Result(check.id, check.label, Status.MET, reason, evidence=refs)


def distinct_drugs(check: DistinctDrugsCheck, ctx: Context) -> Result:
    uses = _uses(ctx, check.classes)
    by_ingredient: dict[str, _Use] = {}
    for u in uses:
        key = u.ingredient or f"{u.use.codes[:1]}"
        by_ingredient.setdefault(key, u)
    names = sorted(by_ingredient)
    count = len(names)
    ok = count >= check.at_least
    listed = ", ".join(names) if names else "none"
    return Result(
        check.id,
        check.label,
        Status.MET if ok else Status.NOT_MET,
        f"{count} distinct drug(s) recorded ({listed}); at least {check.at_least} required.",
        evidence=tuple(u.use.ref for u in by_ingredient.values()),
        values=(Value("distinct drugs", count, "1"),),
        threshold=f"≥ {check.at_least}",
    )


def prednisone_dose(check: PrednisoneDoseCheck, ctx: Context) -> Result:
    mappings = ctx.mappings
    threshold = f"{check.min:g}-{check.max:g} mg/d prednisone equivalent"
    current = [u for u in _uses(ctx, [check.glucocorticoids]) if u.use.is_current(ctx.as_of)]
    # One use per ingredient: the same drug often appears as both an order and a statement.
    newest: dict[str | None, _Use] = {}
    for u in sorted(current, key=lambda u: u.use.start or date.min):
        newest[u.ingredient] = u
    total, parts, unclear, non_oral = 0.0, [], [], []
    for u in newest.values():
        route = _route(ctx, u)
        if route is not None and route != "oral":
            non_oral.append(u)
            continue
        daily = _daily_mg(ctx, u)
        factor = mappings.ingredients[u.ingredient].prednisone_equivalent if u.ingredient else None
        if daily is None or factor is None or route is None:
            unclear.append(u)
            continue
        total += daily * factor
        parts.append(f"{_name(u)}: {daily:g} mg/d x {factor:g}")
    evidence = tuple(u.use.ref for u in (*newest.values(),))
    if unclear:
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            "The daily dose of the current oral glucocorticoid cannot be computed (no dose, "
            f"frequency, strength or route recorded): {_describe(unclear)}.",
            evidence=evidence,
            threshold=threshold,
            review=(f"Current glucocorticoid dose: {_describe(unclear)}",),
            data_requests=(
                DataRequest(
                    "MedicationRequest",
                    tuple(c for u in unclear for c in u.use.codes),
                    "current glucocorticoid order with its dosage",
                ),
            ),
        )
    waived_by = _uses(ctx, check.min_waived_with)
    waived = [u for u in waived_by if u.use.is_current(ctx.as_of)]
    values = (Value("prednisone-equivalent dose", round(total, 3), "mg/d"),)
    detail = "; ".join(parts) if parts else "no current oral glucocorticoid"
    if non_oral:
        detail += f"; not counted, not oral: {_describe(non_oral)}"
    review: tuple[str, ...] = ()
    if total > check.max:
        status, why = Status.NOT_MET, f"above {check.max:g} mg/d"
    elif total >= check.min:
        status, why = Status.MET, "within range"
    elif waived:
        status = Status.MET
        why = f"below {check.min:g} mg/d, but no minimum applies with {_describe(waived)}"
        if total == 0:
            review = (
                "No current oral glucocorticoid: confirm the protocol accepts 0 mg/d "
                "when combined with an immunosuppressant",
            )
    else:
        status, why = Status.NOT_MET, f"below {check.min:g} mg/d with no immunosuppressant in use"
    return Result(
        check.id,
        check.label,
        status,
        f"Prednisone-equivalent {total:g} mg/d ({detail}): {why}.",
        evidence=evidence + tuple(u.use.ref for u in waived),
        values=values,
        threshold=threshold,
        review=review,
    )


def _route(ctx: Context, u: _Use) -> str | None:
    """The route from the dosage, else from the product ('oral', 'intravenous', ... or 'other');
    None when neither says."""
    route = ctx.mappings.route_of(u.use.routes)  # SNOMED CT or HL7 v3 (fhir_mappings/routes.yaml)
    if route is not None:
        return route
    if u.use.routes:
        return "other"
    product = _product(ctx, u)
    return None if product is None else product.route


def _product(ctx: Context, u: _Use):  # type: ignore[no-untyped-def]
    if u.ingredient is None:
        return None
    products = ctx.mappings.ingredients[u.ingredient].products
    return next((products[c] for c in u.use.codes if c in products), None)


def _daily_mg(ctx: Context, u: _Use) -> float | None:
    dose = u.use.dose
    if dose is None or dose.period <= 0 or dose.period_unit not in _PER_DAY:
        return None
    if dose.unit == "mg":
        per_dose = dose.value
    elif dose.unit == "g":
        per_dose = dose.value * 1000
    elif dose.unit in _UNIT_DOSE:
        product = _product(ctx, u)
        strength = u.use.strengths_mg[0] if u.use.strengths_mg else None
        strength = strength or (product.strength_mg if product and product.per is None else None)
        if strength is None:
            return None
        per_dose = dose.value * strength
    else:
        return None
    return per_dose * dose.frequency * _PER_DAY[dose.period_unit] / dose.period
