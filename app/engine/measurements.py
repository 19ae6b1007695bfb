"""Checks on measured values: thresholds in a unit or as a multiple of the upper limit of normal,
with the reading's context (room air) and its repetition (sustained values). Qualitative findings
are in :mod:`app.engine.lab_findings`, Cockcroft-Gault in :mod:`app.engine.clearance`; both are
re-exported here, where the evaluator finds every measurement-type check."""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date

from app.catalog.mappings import Analyte
from app.catalog.schema import MeasurementCheck, RoomAir
from app.engine import observed
from app.engine.clearance import creatinine_clearance
from app.engine.compare import satisfies, satisfies_censored, satisfies_range, symbol
from app.engine.context import Context
from app.engine.lab_findings import lab_finding
from app.engine.record import Observation
from app.engine.results import Result, Status, Value
from app.engine.sources import analytes_of

__all__ = ["creatinine_clearance", "lab_finding", "measurement"]


@dataclass(frozen=True, slots=True)
class _Reading:
    """A value ready to compare: in the check's unit (or x ULN), with what it came from."""

    when: date
    value: float
    censor: str | None
    evidence: tuple[str, ...]
    how: str = ""
    high: float | None = None
    """Upper end when the result was written as a range."""
    note: str = ""
    """What a clinician should confirm about this reading (e.g. room air not documented)."""


def _in_window(
    ctx: Context, analyte: Analyte, since: date, unusable: list[tuple[date, str]]
) -> Iterator[Observation]:
    """The analyte's results that may fall in the window, newest first; one dated only to a month
    or year cannot be placed or ordered, so it goes to ``unusable`` instead."""
    for obs in ctx.results_for(analyte):
        if (obs.when_latest or obs.when) < since:
            continue
        undated = observed.undated(obs, since)
        if undated is not None:
            unusable.append((min(obs.when_latest or obs.when, ctx.as_of), undated))
            continue
        yield obs


def _readings(
    check: MeasurementCheck, ctx: Context, since: date, unusable: list[tuple[date, str]]
) -> list[_Reading]:
    """Usable readings in the window, newest first; what cannot be used goes to ``unusable``."""
    analyte = ctx.mappings.analytes[check.analyte]
    readings: list[_Reading] = []
    for obs in _in_window(ctx, analyte, since, unusable):
        number = observed.number(ctx, obs)
        if number is None:
            shown = f" ({obs.value_text!r} is not a number)" if obs.value_text else ""
            unusable.append((obs.when, f"{obs.ref} has no numeric value{shown}"))
            continue
        if check.uln_multiple:
            ends = [_uln_ratio(analyte, obs, v, number.unit) for v in _ends(number)]
            if any(e is None for e in ends):
                problem = (
                    f"{obs.ref} reports no upper limit of normal"
                    if obs.ref_high is None
                    else f"{obs.ref} is in unit {number.unit!r}, not comparable with its "
                    f"upper limit of normal in {obs.ref_high.unit!r}"
                )
                unusable.append((obs.when, problem))
                continue
            values = [e for e in ends if e is not None]
        else:
            assert check.unit is not None  # schema: unit is given unless uln_multiple
            canonical = [analyte.to_canonical(v, number.unit) for v in _ends(number)]
            if any(c is None for c in canonical):
                problem = f"{obs.ref} is in unit {number.unit!r}, not convertible"
                unusable.append((obs.when, problem))
                continue
            values = [c / analyte.factors[check.unit] for c in canonical if c is not None]
        note = ""
        if check.room_air is not None:
            air, what = _on_room_air(check.room_air, ctx, obs)
            if air is False:
                unusable.append((obs.when, f"{obs.ref} was measured {what}: not on room air"))
                continue
            note = "" if air else what
        high = values[1] if len(values) > 1 else None
        readings.append(
            _Reading(obs.when, values[0], number.censor, (obs.ref,), high=high, note=note)
        )
    if check.percent_of is not None and check.unit is not None:
        readings += _derived(check, ctx, since, unusable)
    return sorted(readings, key=lambda r: r.when, reverse=True)


def _ends(number: observed.Number) -> list[float]:
    return [number.value] if number.high is None else [number.value, number.high]


def _on_room_air(rule: RoomAir, ctx: Context, obs: Observation) -> tuple[bool | None, str]:
    """(True: on room air, False: on supplemental oxygen, None: not documented; how it reads).

    The reading's own components decide first (US Core pulse oximetry carries the flow 3151-8
    and concentration 3150-0 as components), then its code (59410-1 "--on room air"), then an
    inspired-oxygen result of the same day (the record holds days, not times: oxygen given that
    day makes the reading not comparable, since it cannot be shown to precede the oxygen)."""
    own_code = ctx.mappings.code_sets[rule.codes].matcher.matches_any(obs.codes)
    same_day: list[tuple[bool, str]] = []
    for oxygen in rule.supplemental_oxygen:
        analyte = ctx.mappings.analytes[oxygen.analyte]
        for o2 in ctx.results_for(analyte):
            if not o2.when <= obs.when <= (o2.when_latest or o2.when):
                continue
            n = observed.plain(ctx, o2)
            value = None if n is None else analyte.to_canonical(n.value, n.unit)
            if value is None or o2.when_latest is not None:
                # Oxygen recorded that day (or in a month that holds it) that cannot be read:
                # room air cannot be shown.
                shown = f"{analyte.display} {observed.shown(o2)} ({o2.ref}, {observed.day(o2)})"
                if o2.ref == obs.ref:
                    return False, f"with {shown}, which cannot be read"
                same_day.append((True, f"{shown}, which cannot be read"))
                continue
            limit = analyte.to_canonical(oxygen.above, oxygen.unit)
            assert n is not None and limit is not None  # lint: the unit converts
            shown = f"{analyte.display} {observed.fmt(n.value)} {n.unit}"
            given = satisfies(value, ">", limit)
            if o2.ref == obs.ref:
                return (False, f"with {shown.strip()}") if given else (True, "")
            same_day.append((given, f"{shown.strip()} ({o2.ref})"))
    if own_code:
        return True, ""
    given_that_day = [what for given, what in same_day if given]
    if given_that_day:
        return False, f"on a day with {', '.join(given_that_day)}"
    if same_day:
        return True, ""
    return None, f"{obs.ref}: room air not documented (no inspired-oxygen value or room-air code)"


def _derived(
    check: MeasurementCheck, ctx: Context, since: date, unusable: list[tuple[date, str]]
) -> list[_Reading]:
    """Values computed as percent x total from results of the same day (the same draw). A
    percentage, or the total it needs, that is there but cannot be used goes to ``unusable``; a
    percentage with no total of its day at all is not a reading (as before: nothing to derive)."""
    assert check.percent_of is not None and check.unit is not None
    analytes = ctx.mappings.analytes
    target, percent, total = (
        analytes[check.analyte],
        analytes[check.percent_of.percent],
        analytes[check.percent_of.total],
    )
    totals: dict[date, tuple[Observation, float] | None] = {}
    undated_totals: list[Observation] = []
    for obs in ctx.results_for(total):
        if (obs.when_latest or obs.when) < since:
            continue
        if obs.when_latest is not None:
            undated_totals.append(obs)
            continue
        q = observed.plain(ctx, obs)
        value = total.to_canonical(q.value, q.unit) if q else None
        totals.setdefault(obs.when, None if value is None else (obs, value))
    out = []
    for obs in _in_window(ctx, percent, since, unusable):
        q = observed.plain(ctx, obs)
        pct = percent.to_canonical(q.value, q.unit) if q else None
        if pct is None:
            unusable.append(
                (obs.when, f"{obs.ref} ({observed.shown(obs)}) is not a usable percentage")
            )
            continue
        unclear = [t for t in undated_totals if t.when <= obs.when <= (t.when_latest or t.when)]
        if obs.when not in totals and unclear:
            unusable.append((obs.when, f"{obs.ref}: {total.display} of its day is undated"))
            continue
        if obs.when not in totals:
            continue
        pair = totals[obs.when]
        if pair is None:
            problem = f"{obs.ref}: the {total.display} of {obs.when} cannot be used"
            unusable.append((obs.when, problem))
            continue
        total_obs, total_value = pair
        assert total.unit is not None  # analytes with units have a canonical unit
        canonical = target.to_canonical(pct / 100 * total_value, total.unit)
        if canonical is None:
            continue
        value = canonical / target.factors[check.unit]
        how = f"{observed.fmt(pct)}% of {total.display} {observed.fmt(total_value)} {total.unit}"
        out.append(_Reading(obs.when, value, None, (obs.ref, total_obs.ref), how))
    return out


def measurement(check: MeasurementCheck, ctx: Context) -> Result:
    since = ctx.since(check.within)
    analytes = [ctx.mappings.analytes[name] for name in analytes_of(check)]
    return observed.held_for_names(_measurement(check, ctx, since), ctx, analytes, since)


def _measurement(check: MeasurementCheck, ctx: Context, since: date) -> Result:
    analyte = ctx.mappings.analytes[check.analyte]
    unusable: list[tuple[date, str]] = []
    readings = _readings(check, ctx, since, unusable)
    # A newer result that cannot be read may be the deciding one: never fall back past it. One
    # of the newest reading's own day may disagree with it: never decide beside it either.
    newer = [problem for day, problem in unusable if not readings or day >= readings[0].when]
    if newer:
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            f"The newest {analyte.display} results cannot be used: {'; '.join(newer)}.",
            review=tuple(newer),
            data_requests=(ctx.request_for([analyte], since),),
        )
    if not readings:
        return observed.missing(check.id, check.label, ctx, [analyte], since)
    latest = readings[0]
    unit = "× ULN" if check.uln_multiple else str(check.unit)
    threshold = f"{symbol(check.comparator)} {observed.fmt(check.value)} {unit}"
    shown = _shown(latest, unit)
    noted = (latest.note,) if latest.note else ()
    base = Result(
        check.id,
        check.label,
        Status.UNKNOWN,
        "",
        evidence=latest.evidence,
        values=(Value(analyte.display, latest.value, unit),),
        threshold=threshold,
    )
    verdict = _verdict(latest, check)
    same_day = [r for r in readings if r.when == latest.when]
    if len({_verdict(r, check) for r in same_day}) > 1:
        listed = "; ".join(f"{_shown(r, unit)} ({', '.join(r.evidence)})" for r in same_day)
        return _with(
            replace(base, evidence=tuple(e for r in same_day for e in r.evidence)),
            Status.UNKNOWN,
            f"The {analyte.display} results of {latest.when} disagree about {threshold}: {listed}.",
            review=(
                f"{check.label}: results of {latest.when} disagree ({listed}); which one stands?",
            ),
        )
    if verdict is None:
        return _with(
            base,
            Status.UNKNOWN,
            f"{analyte.display} was reported as {shown} on {latest.when}, which cannot be "
            f"compared with {threshold}.",
            review=(f"{analyte.display} {shown}: compare with {threshold}", *noted),
        )
    if verdict and check.repeated is not None:
        run = _satisfying_run(readings, check)
        days = sorted({r.when for r in run})
        if len(days) < check.repeated:
            return _with(
                replace(base, evidence=tuple(e for r in run for e in r.evidence)),
                Status.UNKNOWN,
                f"{analyte.display} {shown} on {latest.when} is {threshold}, but only "
                f"{len(days)} of the latest readings (on different days) are; the protocol asks "
                f"for a sustained value ({check.repeated} readings on different days decide).",
                review=(
                    f"{check.label}: one reading {shown} on {latest.when}; confirm with repeated "
                    "readings",
                    *noted,
                ),
            )
        listed = ", ".join(f"{observed.fmt(r.value)} on {r.when}" for r in run)
        return _with(
            replace(base, evidence=tuple(e for r in run for e in r.evidence)),
            Status.MET,
            f"{analyte.display} {threshold} on {len(days)} days in a row: {listed}.",
            review=noted,
        )
    status = Status.MET if verdict else Status.NOT_MET
    word = "meets" if verdict else "does not meet"
    return _with(
        base,
        status,
        f"{analyte.display} {shown} on {latest.when} {word} {threshold}.",
        review=noted,
    )


def _shown(reading: _Reading, unit: str) -> str:
    shown = f"{reading.censor or ''}{observed.fmt(reading.value)}"
    if reading.high is not None:
        shown += f"-{observed.fmt(reading.high)}"
    shown += f" {unit}"
    if reading.how:
        shown += f" ({reading.how})"
    return shown


def _verdict(reading: _Reading, check: MeasurementCheck) -> bool | None:
    if reading.high is not None:
        return satisfies_range(reading.value, reading.high, check.comparator, check.value)
    return satisfies_censored(reading.value, reading.censor, check.comparator, check.value)


def _satisfying_run(readings: list[_Reading], check: MeasurementCheck) -> list[_Reading]:
    """The latest readings, newest first, up to the first that does not satisfy the check."""
    run = []
    for reading in readings:
        if not _verdict(reading, check):
            break
        run.append(reading)
    return run


def _with(base: Result, status: Status, reason: str, review: tuple[str, ...] = ()) -> Result:
    return replace(base, status=status, reason=reason, review=review)


def _uln_ratio(analyte: Analyte, obs: Observation, value: float, unit: str) -> float | None:
    """``value`` as a multiple of the result's upper reference limit. No default limit is
    assumed: a result without one is for review (codes.md §1.1 I7c "ULN missing -> manual")."""
    high = obs.ref_high
    if high is None or high.value <= 0:
        return None
    if high.unit == unit:
        return value / high.value
    canonical = analyte.to_canonical(value, unit)
    limit = analyte.to_canonical(high.value, high.unit)
    return None if canonical is None or not limit else canonical / limit
