"""Checks on medication use: exposure to a drug class, the prednisone-equivalent daily dose of oral
glucocorticoids, and the number of distinct drugs of a class ever used.

What counts as use: a MedicationRequest that is an order (intent plan / proposal / option is not
use), a MedicationStatement or a MedicationAdministration, whose status counts, and that is not
applied locally (topical / cutaneous route, ointment or cream, eye or ear drops): a tacrolimus
ointment is not systemic immunosuppression.

An entry the codes cannot place (no code, or one nothing here recognises) whose text names a drug
of the class looked for, and an entry whose ``medicationReference`` points to a Medication the
record does not hold, make a "no record found" answer unknown with a review item naming it: text
only ever moves an answer toward review.

The daily dose (HN2301 I3) of one ingredient is the sum of its current orders (two active
prednisone orders, 5 mg + 2.5 mg, are 7.5 mg/d), less any order another current one replaces
(``priorPrescription``). A MedicationStatement or -Administration of an
ingredient that has a current order records the same exposure and is not added. Without an order,
statements of the same dose are one exposure; statements of different doses cannot be told apart
from a duplicate and go to review.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from app.catalog.mappings import CodeRow, Mappings
from app.catalog.schema import DistinctDrugsCheck, MedicationCheck, PrednisoneDoseCheck
from app.engine.context import Context
from app.engine.record import Dose, MedicationUse
from app.engine.results import DataRequest, Result, Status, Value

_LOCAL = re.compile(
    r"\b(topical|cutaneous|ointment|cream|lotion|ophthalmic|otic|eye drops?|ear drops?)\b"
)
"""Route, dose-form and product words of a medicine applied locally, not systemic therapy."""
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
_MG = {"mg": 1.0, "g": 1000.0, "ug": 0.001, "mcg": 0.001}
_ML = {"mL", "ml"}
_UNIT_DOSE = {"1", "{tbl}", "{tablet}", "{capsule}", "{cap}", "tablet", "tab", "capsule", ""}
"""Dose units that mean "one tablet/capsule" rather than a mass."""


@dataclass(frozen=True, slots=True)
class _Use:
    use: MedicationUse
    ingredient: str | None


def _counted(ctx: Context) -> list[tuple[MedicationUse, str | None]]:
    """Every order or record of use (not a plan), with its ingredient; whether it was applied
    locally is asked only of those a check selects (:func:`_is_local`). Once per evaluation."""

    def compute() -> list[tuple[MedicationUse, str | None]]:
        ingredient_of = ctx.mappings.ingredient_of
        return [(u, ingredient_of(u.codes)) for u in ctx.record.medications if u.is_order]

    return ctx.remembered("counted uses", compute)


def _uses(ctx: Context, classes: Iterable[str]) -> list[_Use]:
    """The uses of the classes (each class list worked out once per evaluation; a new list)."""
    wanted = tuple(classes)
    return list(ctx.remembered(("uses", wanted), lambda: _find_uses(ctx, wanted)))


def _find_uses(ctx: Context, wanted: tuple[str, ...]) -> tuple[_Use, ...]:
    mappings = ctx.mappings
    return tuple(
        _Use(use, ingredient)
        for use, ingredient in _counted(ctx)
        if any(mappings.in_class(ingredient, use.codes, c) for c in wanted)
        and not _is_local(ctx, use, ingredient)
    )


def _unplaced(ctx: Context, classes: Iterable[str]) -> list[tuple[_Use, str]]:
    """Uses that may be of the classes but that the codes cannot place, each with why: the
    Medication they reference is not in the record, or their text names a drug of a class.
    Each class list worked out once per evaluation; a new list."""
    wanted = tuple(classes)
    return list(ctx.remembered(("unplaced", wanted), lambda: _find_unplaced(ctx, wanted)))


def _find_unplaced(ctx: Context, wanted: tuple[str, ...]) -> tuple[tuple[_Use, str], ...]:
    mappings = ctx.mappings
    out = []
    for use, ingredient in _counted(ctx):
        if use.unresolved is not None:
            why = f"its medicationReference {use.unresolved} is not in the record"
        elif ingredient is not None or any(mappings.in_class(None, use.codes, c) for c in wanted):
            continue
        elif (named := _named(mappings, use, wanted)) is not None:
            coded = "has no code" if not use.codes else "has no code recognised here"
            why = f"it {coded}, but its text names {named}"
        else:
            continue
        if not _is_local(ctx, use, ingredient):
            out.append((_Use(use, ingredient), why))
    return tuple(out)


def _named(mappings: Mappings, use: MedicationUse, classes: tuple[str, ...]) -> str | None:
    text = " | ".join((use.text.lower(), *use.labels))
    for cls in classes:
        name = mappings.drug_classes[cls].named_in(text)
        if name is not None:
            return name
    return None


def _is_local(ctx: Context, use: MedicationUse, ingredient: str | None) -> bool:
    if ctx.mappings.route_of(use.routes) == "topical":
        return True
    product = _product_row(ctx, use, ingredient)
    if product is not None and product.route == "topical":
        return True
    return any(_LOCAL.search(label) for label in (use.text.lower(), *use.labels))


def _used_since(use: MedicationUse, since: date, as_of: date) -> bool:
    if use.start is None:
        return False
    if use.start >= since:
        return True
    return use.is_current(as_of) or (use.end is not None and use.end >= since)


def _name(u: _Use) -> str:
    return u.use.text or u.ingredient or (u.use.codes[0][1] if u.use.codes else "medication")


def _describe(uses: Iterable[_Use]) -> str:
    listed = list(uses)
    return "; ".join(
        f"{_name(u)} (from {u.use.start or 'undated'}, {u.use.ref})" for u in listed[:5]
    )


def _in_scope(check: MedicationCheck, ctx: Context, u: _Use, since: date | None) -> bool:
    if check.current and not u.use.is_current(ctx.as_of):
        return False
    if check.route is not None:
        # A use whose route is not recorded (or is an injection of unstated route) may be by
        # this route: kept, and the reason says so.
        route = _route(ctx, u)
        possible = {check.route, None} | ({"injection"} if check.route == "intravenous" else set())
        if route not in possible:
            return False
    return since is None or _used_since(u.use, since, ctx.as_of)


def _undated(check: MedicationCheck, ctx: Context, u: _Use, since: date | None) -> bool:
    """A use without a start date that a dated one would have to be checked for: it may fall in
    the window, or be current (an undated growth-factor dose is unknown, not absent)."""
    use = u.use
    if use.start is not None or (since is None and not check.current):
        return False
    if check.current and use.end is None and use.status not in _ONGOING:
        return False
    horizon = ctx.as_of if check.current else since
    if use.end is not None and horizon is not None and use.end < horizon:
        return False
    if check.route is not None:
        route = _route(ctx, u)
        possible = {check.route, None} | ({"injection"} if check.route == "intravenous" else set())
        return route in possible
    return True


_ONGOING = {"active", "on-hold", "intended", "in-progress", "unknown"}


def _unplaced_result(
    check_id: str, label: str, unplaced: list[tuple[_Use, str]], found: str
) -> Result:
    listed = "; ".join(f"{_name(u)} ({u.use.ref}): {why}" for u, why in unplaced[:5])
    return Result(
        check_id,
        label,
        Status.UNKNOWN,
        f"{found} The record also holds medication entries the codes cannot place: {listed}.",
        evidence=tuple(u.use.ref for u, _ in unplaced),
        review=(f"{label}: is it one of these? {listed}",),
        data_requests=(
            DataRequest(
                "Medication",
                tuple(c for u, _ in unplaced for c in u.use.codes),
                "the coded product of: " + ", ".join(u.use.ref for u, _ in unplaced[:5]),
            ),
        ),
    )


def medication(check: MedicationCheck, ctx: Context) -> Result:
    what = " or ".join(c.replace("_", " ") for c in check.classes)
    since = ctx.history_since(check.within)
    uses = [u for u in _uses(ctx, check.classes) if _in_scope(check, ctx, u, since)]
    if not uses:
        span = f" (searched from {since})" if since else ""
        found = f"No coded record found: {check.label}{span}."
        unplaced = [
            (u, why)
            for u, why in _unplaced(ctx, check.classes)
            if _in_scope(check, ctx, u, since) or _undated(check, ctx, u, since)
        ]
        unplaced += [
            (u, "no date is recorded, so whether it falls in the window is unknown")
            for u in _uses(ctx, check.classes)
            if _undated(check, ctx, u, since)
        ]
        if unplaced:
            return _unplaced_result(check.id, check.label, unplaced, found)
        return Result(
            check.id, check.label, Status.NOT_MET, f"No record found: {check.label}{span}."
        )
    refs = tuple(u.use.ref for u in uses)
    if check.started_at_least is not None:
        cutoff = check.started_at_least.before(ctx.as_of)
        ingredients = {u.ingredient for u in uses}
        starts = [
            u.use.start
            for u in _uses(ctx, check.classes)
            if u.use.start is not None and u.ingredient in ingredients
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
    unstated = [u for u in uses if check.route is not None and _route(ctx, u) != check.route]
    if unstated:
        reason += f" Route not recorded as {check.route} for: {_describe(unstated)}."
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
    by_drug: dict[str, _Use] = {}
    for u in _uses(ctx, check.classes):
        by_drug.setdefault(_drug(ctx, u), u)
    names = sorted(by_drug)
    count = len(names)
    listed = ", ".join(names) if names else "none"
    reason = f"{count} distinct drug(s) recorded ({listed}); at least {check.at_least} required."
    values = (Value("distinct drugs", count, "1"),)
    threshold = f"≥ {check.at_least}"
    evidence = tuple(u.use.ref for u in by_drug.values())
    if count >= check.at_least:
        return Result(
            check.id,
            check.label,
            Status.MET,
            reason,
            evidence=evidence,
            values=values,
            threshold=threshold,
        )
    # Short of the count: entries that may be further drugs (unplaced by the codes, or of a class
    # the protocol may count) leave it to a clinician when they could make up the difference.
    maybe: dict[str, tuple[_Use, str]] = {}
    for u in _uses(ctx, check.review_with):
        key = _drug(ctx, u)
        if key not in by_drug:
            maybe.setdefault(key, (u, f"{_name(u)} may count as one (the protocol's list is open)"))
    for u, why in _unplaced(ctx, check.classes):
        maybe.setdefault(u.use.ref, (u, why))
    if count + len(maybe) >= check.at_least:
        found = _unplaced_result(check.id, check.label, list(maybe.values()), reason)
        unplaced = any(u.use.ref == key for key, (u, _) in maybe.items())
        return Result(
            found.id,
            found.label,
            found.status,
            found.reason.replace("entries the codes cannot place", "entries that may count"),
            evidence=evidence + found.evidence,
            values=values,
            threshold=threshold,
            review=found.review,
            # Only an entry the codes cannot place asks for data; a known drug asks for judgement.
            data_requests=found.data_requests if unplaced else (),
        )
    return Result(
        check.id,
        check.label,
        Status.NOT_MET,
        reason,
        evidence=evidence,
        values=values,
        threshold=threshold,
    )


def _drug(ctx: Context, u: _Use) -> str:
    """One name per active moiety: mycophenolic acid counts as mycophenolate mofetil."""
    if u.ingredient is None:
        return f"{u.use.codes[:1]}"
    ingredient = ctx.mappings.ingredients[u.ingredient]
    return ingredient.same_drug_as or u.ingredient


@dataclass(frozen=True, slots=True)
class _Daily:
    """A daily dose in mg as a range (equal bounds when the order is exact)."""

    low: float
    high: float


def prednisone_dose(check: PrednisoneDoseCheck, ctx: Context) -> Result:
    mappings = ctx.mappings
    threshold = f"{check.min:g}-{check.max:g} mg/d prednisone equivalent"
    current = [u for u in _uses(ctx, [check.glucocorticoids]) if u.use.is_current(ctx.as_of)]
    evidence = tuple(u.use.ref for u in current)
    unplaced = [
        (u, why)
        for u, why in _unplaced(ctx, [check.glucocorticoids])
        if u.use.is_current(ctx.as_of)
    ]
    if unplaced:
        result = _unplaced_result(
            check.id, check.label, unplaced, "The current glucocorticoid dose cannot be summed."
        )
        return Result(
            result.id,
            result.label,
            result.status,
            result.reason,
            evidence=evidence + result.evidence,
            threshold=threshold,
            review=result.review,
            data_requests=result.data_requests,
        )
    total, parts, unclear, non_oral = _Daily(0.0, 0.0), [], [], []
    for ingredient, group in _by_ingredient(current).items():
        counted, problem = _exposure(group)
        if problem is not None:
            unclear.append((group, problem))
            continue
        factor = mappings.ingredients[ingredient].prednisone_equivalent if ingredient else None
        for u in counted:
            route = _route(ctx, u)
            if route is not None and route != "oral":
                non_oral.append(u)
                continue
            daily, why = _daily_mg(ctx, u)
            if route is None:
                why = "no route recorded, so it is not known to be oral"
            if daily is None or factor is None or why is not None:
                unclear.append(([u], why or "no prednisone equivalence factor"))
                continue
            total = _Daily(total.low + daily.low * factor, total.high + daily.high * factor)
            parts.append(f"{_name(u)}: {_range(daily)} mg/d x {factor:g}")
    if unclear:
        listed = "; ".join(f"{_describe(g)}: {why}" for g, why in unclear)
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            f"The daily dose of the current oral glucocorticoid cannot be computed: {listed}.",
            evidence=evidence,
            threshold=threshold,
            review=(f"Current glucocorticoid dose: {listed}",),
            data_requests=(
                DataRequest(
                    "MedicationRequest",
                    tuple(c for g, _ in unclear for u in g for c in u.use.codes),
                    "current glucocorticoid order with its dosage",
                ),
            ),
        )
    values: tuple[Value, ...] = (Value("prednisone-equivalent dose", round(total.high, 3), "mg/d"),)
    if total.low != total.high:
        values = (Value("prednisone-equivalent dose, lowest", round(total.low, 3), "mg/d"),)
        values += (Value("prednisone-equivalent dose, highest", round(total.high, 3), "mg/d"),)
    detail = "; ".join(parts) if parts else "no current oral glucocorticoid"
    if non_oral:
        detail += f"; not counted, not oral: {_describe(non_oral)}"
    said = f"Prednisone-equivalent {_range(total)} mg/d ({detail})"
    review: tuple[str, ...] = ()
    extra = evidence
    if total.low > check.max:
        status, why = Status.NOT_MET, f"above {check.max:g} mg/d"
    elif total.high > check.max:
        status, why = Status.UNKNOWN, f"the dose range reaches above {check.max:g} mg/d"
        review = (f"{check.label}: which dose of the range is taken? {detail}",)
    elif total.low >= check.min:
        status, why = Status.MET, "within range"
    else:
        status, why, review, waivers = _below_minimum(check, ctx, total)
        extra += waivers
    return Result(
        check.id,
        check.label,
        status,
        f"{said}: {why}.",
        evidence=extra,
        values=values,
        threshold=threshold,
        review=review,
    )


def _below_minimum(
    check: PrednisoneDoseCheck, ctx: Context, total: _Daily
) -> tuple[Status, str, tuple[str, ...], tuple[str, ...]]:
    """The minimum is lifted by a current immunosuppressant; where the protocol does not say
    whether a class lifts it (hydroxychloroquine, a biologic), a clinician decides."""
    below = f"below {check.min:g} mg/d" if total.high < check.min else "possibly below minimum"
    waived = [u for u in _uses(ctx, check.min_waived_with) if u.use.is_current(ctx.as_of)]
    if waived:
        review: tuple[str, ...] = ()
        if total.high == 0:
            review = (
                "No current oral glucocorticoid: confirm the protocol accepts 0 mg/d "
                "when combined with an immunosuppressant",
            )
        return (
            Status.MET,
            f"{below}, but no minimum applies with {_describe(waived)}",
            review,
            tuple(u.use.ref for u in waived),
        )
    maybe = [u for u in _uses(ctx, check.min_waiver_unclear_with) if u.use.is_current(ctx.as_of)]
    maybe += [u for u, _ in _unplaced(ctx, check.min_waived_with) if u.use.is_current(ctx.as_of)]
    if maybe:
        return (
            Status.UNKNOWN,
            f"{below}; whether {_describe(maybe)} lifts the minimum is for the investigator "
            "(the protocol waives it 'in combination with immunosuppressants')",
            (f"{check.label}: does {_describe(maybe)} count as an immunosuppressant here?",),
            tuple(u.use.ref for u in maybe),
        )
    if total.high >= check.min:
        return (
            Status.UNKNOWN,
            f"the dose range straddles {check.min:g} mg/d and no immunosuppressant is in use",
            (f"{check.label}: which dose of the range is taken?",),
            (),
        )
    return Status.NOT_MET, f"{below} with no immunosuppressant in use", (), ()


def _by_ingredient(uses: list[_Use]) -> dict[str | None, list[_Use]]:
    out: dict[str | None, list[_Use]] = {}
    for u in sorted(uses, key=lambda u: u.use.start or date.min):
        out.setdefault(u.ingredient, []).append(u)
    return out


def _exposure(group: list[_Use]) -> tuple[list[_Use], str | None]:
    """The uses of one ingredient whose doses add up: every current order; without one, the
    records of use when they agree on the dose (see the module docstring)."""
    orders = [u for u in group if u.use.kind == "MedicationRequest"]
    # An order renewed or changed by another current one (priorPrescription) is superseded,
    # even if the EHR left it active.
    replaced = {u.use.replaces for u in orders}
    orders = [u for u in orders if u.use.ref not in replaced]
    if orders:
        return orders, None
    doses = {u.use.doses for u in group}
    if len(doses) == 1:
        return group[-1:], None
    return group, "several current records of use with different doses (concurrent or the same?)"


def _range(d: _Daily) -> str:
    return f"{d.high:g}" if d.low == d.high else f"{d.low:g}-{d.high:g}"


def _route(ctx: Context, u: _Use) -> str | None:
    """The route from the dosage (SNOMED CT or HL7 v3 codes, fhir_mappings/routes.yaml), else
    from the product ('oral', 'intravenous', 'subcutaneous', ...); None when neither says."""
    route = ctx.mappings.route_of(u.use.routes)
    if route is not None:
        return route
    # A route code not recognised here (a local code) says nothing either way: an intravenous
    # check keeps the use, a dose check cannot count it as oral.
    product = _product_row(ctx, u.use, u.ingredient)
    return None if product is None else product.route


def _product_row(ctx: Context, use: MedicationUse, ingredient: str | None) -> CodeRow | None:
    mappings = ctx.mappings
    if ingredient is not None:
        products = mappings.ingredients[ingredient].products
        found = next((products[c] for c in use.codes if c in products), None)
        if found is not None:
            return found
    for cls in mappings.drug_classes.values():
        found = next((cls.products[c] for c in use.codes if c in cls.products), None)
        if found is not None:
            return found
    return None


def _steps_in_force(use: MedicationUse, as_of: date) -> tuple[list[Dose], str | None]:
    """The dosage steps taken on the as-of date: of a taper, the step whose bounds cover it;
    steps sharing a sequence number are taken together."""
    doses = list(use.doses)
    if use.dosage_problem is not None:
        return [], use.dosage_problem
    if not doses:
        return [], "no dose recorded"
    if len(doses) == 1:
        return doses, None
    if all(d.start is not None or d.end is not None for d in doses):
        covering = [
            d
            for d in doses
            if (d.start is None or d.start <= as_of) and (d.end is None or d.end >= as_of)
        ]
        if covering:
            return covering, None
        return [], f"no dosage step covers {as_of}"
    if len({d.sequence for d in doses}) == 1 and doses[0].sequence is not None:
        return doses, None
    return [], "several dosage steps without dates: which one applies on the as-of date is unclear"


def _daily_mg(ctx: Context, u: _Use) -> tuple[_Daily | None, str | None]:
    steps, problem = _steps_in_force(u.use, ctx.as_of)
    if problem is not None:
        return None, problem
    low = high = 0.0
    for dose in steps:
        per, why = _mg_per_dose(ctx, u, dose)
        if per is None:
            return None, why
        if dose.frequency is None:
            return None, "no timing recorded, so how often it is taken is unknown"
        if dose.period <= 0 or dose.period_unit not in _PER_DAY:
            return None, f"a dosing period the service cannot read ({dose.period_unit!r})"
        per_day = _PER_DAY[dose.period_unit]
        most = per.high * (dose.frequency_max or dose.frequency) * per_day / dose.period
        least = per.low * dose.frequency * per_day / (dose.period_max or dose.period)
        low, high = low + least, high + most
    return _Daily(low, high), None


def _mg_per_dose(ctx: Context, u: _Use, dose: Dose) -> tuple[_Daily | None, str | None]:
    low = dose.low if dose.low is not None else dose.value
    if dose.unit in _MG:
        return _Daily(low * _MG[dose.unit], dose.value * _MG[dose.unit]), None
    product = _product_row(ctx, u.use, u.ingredient)
    if dose.unit in _UNIT_DOSE:
        strength = next((s.mg / s.per for s in u.use.strengths if s.per_unit == "1"), None)
        if strength is None and product is not None and product.per is None:
            strength = product.strength_mg
        if strength is None:
            return None, "a dose in tablets without the product's strength"
    elif dose.unit in _ML:
        strength = next((s.mg / s.per for s in u.use.strengths if s.per_unit == "mL"), None)
        if strength is None and product is not None and product.per == "mL":
            strength = product.strength_mg
        if strength is None:
            return None, "a dose in mL without the product's concentration"
    else:
        return None, f"a dose in {dose.unit!r}, which is not a mass, a tablet or a volume"
    return _Daily(low * strength, dose.value * strength), None
