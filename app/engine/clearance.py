"""Creatinine clearance by Cockcroft-Gault (codes.md §3.2), or as the laboratory reported it."""

from collections.abc import Callable
from datetime import date

from app.catalog.mappings import Analyte
from app.catalog.schema import CreatinineClearanceCheck
from app.engine import observed
from app.engine.compare import satisfies, symbol
from app.engine.context import Context
from app.engine.record import Observation
from app.engine.results import DataRequest, Result, Status, Value
from app.engine.sources import analytes_of


def creatinine_clearance(check: CreatinineClearanceCheck, ctx: Context) -> Result:
    since = ctx.since(check.within)
    inputs = [ctx.mappings.analytes[name] for name in analytes_of(check)]
    return observed.held_for_names(_clearance(check, ctx, since), ctx, inputs, since)


def _clearance(check: CreatinineClearanceCheck, ctx: Context, since: date) -> Result:
    analytes = ctx.mappings.analytes
    threshold = f"{symbol(check.comparator)} {observed.fmt(check.value)} mL/min"

    def decide(
        value: float, how: str, evidence: tuple[str, ...], values: tuple[Value, ...]
    ) -> Result:
        ok = satisfies(value, check.comparator, check.value)
        return Result(
            check.id,
            check.label,
            Status.MET if ok else Status.NOT_MET,
            f"Creatinine clearance {observed.fmt(value)} mL/min ({how}) "
            f"{'meets' if ok else 'does not meet'} {threshold}.",
            evidence=evidence,
            values=(Value("creatinine clearance", value, "mL/min"), *values),
            threshold=threshold,
        )

    newest_reported = _newest_in(ctx, analytes["creatinine_clearance_cg"], since)
    newest_creatinine = _newest_in(ctx, analytes["creatinine"], since)
    if newest_reported is not None and (
        newest_creatinine is None or _last_day(newest_reported) >= _last_day(newest_creatinine)
    ):
        # The lab's own Cockcroft-Gault value, unless a newer creatinine supersedes it; a newest
        # value that cannot be used is not passed over for an older one.
        obs, reported_value = newest_reported
        if reported_value is None:
            problem = f"{obs.ref} ({observed.shown(obs)}, {observed.day(obs)}) cannot be used"
            return Result(
                check.id,
                check.label,
                Status.UNKNOWN,
                f"The newest reported creatinine clearance {problem}.",
                evidence=(obs.ref,),
                review=(f"Creatinine clearance: {problem}",),
                data_requests=(ctx.request_for([analytes["creatinine_clearance_cg"]], since),),
                threshold=threshold,
            )
        reported = _same_day(ctx, analytes["creatinine_clearance_cg"], (obs, reported_value))
        return _unusable_beside(
            check, ctx, analytes["creatinine_clearance_cg"], reported, since, threshold
        ) or _one_answer(
            check,
            [
                decide(v, f"reported by the lab on {o.when}", (o.ref,), ())
                for o, v in _values(reported)
            ],
            threshold,
        )
    creatinine = _usable(newest_creatinine)
    weight = _usable(_newest_in(ctx, analytes["body_weight"], since))
    patient = ctx.record.patient
    requests: list[DataRequest] = []
    if creatinine is None:
        requests.append(ctx.request_for([analytes["creatinine"]], since))
    if weight is None:
        requests.append(ctx.request_for([analytes["body_weight"]], since))
    if patient.birth_date is None:
        requests.append(DataRequest("Patient", (), "birth date"))
    if requests:
        missing = [r.label for r in requests]
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            f"Cockcroft-Gault needs {', '.join(missing)} (within the window from {since}).",
            data_requests=tuple(requests),
            threshold=threshold,
        )
    assert creatinine is not None and weight is not None and patient.birth_date is not None
    same_day = _same_day(ctx, analytes["creatinine"], creatinine)
    return _unusable_beside(
        check, ctx, analytes["creatinine"], same_day, since, threshold
    ) or _one_answer(
        check,
        [_cockcroft_gault(check, ctx, c, weight, threshold, decide) for c in _values(same_day)],
        threshold,
    )


def _cockcroft_gault(
    check: CreatinineClearanceCheck,
    ctx: Context,
    creatinine: tuple[Observation, float],
    weight: tuple[Observation, float],
    threshold: str,
    decide: Callable[[float, str, tuple[str, ...], tuple[Value, ...]], Result],
) -> Result:
    patient = ctx.record.patient
    assert patient.birth_date is not None  # checked by the caller
    if patient.gender not in {"female", "male"}:
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            "Cockcroft-Gault needs the patient's sex (female or male); the record does not say.",
            review=("Sex for the Cockcroft-Gault formula",),
            threshold=threshold,
        )
    (scr_obs, scr), (wt_obs, kg) = creatinine, weight
    if scr <= 0:
        return Result(check.id, check.label, Status.UNKNOWN, f"{scr_obs.ref} has creatinine 0.")
    ages = patient.age_range_on(scr_obs.when)
    assert ages is not None  # birth date checked above
    sex_factor = 0.85 if patient.gender == "female" else 1.0
    youngest, age = ages
    clearance = (140 - age) * kg / (72 * scr) * sex_factor
    highest = (140 - youngest) * kg / (72 * scr) * sex_factor
    if satisfies(clearance, check.comparator, check.value) != satisfies(
        highest, check.comparator, check.value
    ):
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            f"Cockcroft-Gault gives {observed.fmt(clearance)}-{observed.fmt(highest)} mL/min "
            f"for an age of {youngest}-{age} (the birth date is recorded only as "
            f"{patient.birth_date} to {patient.birth_latest}), on both sides of {threshold}.",
            evidence=(scr_obs.ref, wt_obs.ref, patient.ref),
            data_requests=(DataRequest("Patient", (), "exact birth date"),),
            threshold=threshold,
        )
    return decide(
        clearance,
        f"Cockcroft-Gault from creatinine {observed.fmt(scr)} mg/dL on {scr_obs.when}, weight "
        f"{observed.fmt(kg)} kg, age {age}, {patient.gender}",
        (scr_obs.ref, wt_obs.ref, patient.ref),
        (Value("creatinine", scr, "mg/dL"), Value("body weight", kg, "kg"), Value("age", age, "a")),
    )


def _newest_in(
    ctx: Context, analyte: Analyte, since: date
) -> tuple[Observation, float | None] | None:
    """The newest result in the window (a result dated only to a month counts from the last day
    it may be), with its value in the canonical unit, or None for the value when it cannot be
    used (no exact number, a unit that does not convert, a partial date): the value is then
    missing, and an older result is not used in its place."""
    found = [o for o in ctx.results_for(analyte) if (o.when_latest or o.when) >= since]
    if not found:
        return None
    obs = max(found, key=lambda o: (o.when_latest or o.when, o.when_latest is not None))
    q = observed.plain(ctx, obs) if obs.when_latest is None else None
    return obs, None if q is None else analyte.to_canonical(q.value, q.unit)


def _same_day(
    ctx: Context, analyte: Analyte, newest: tuple[Observation, float]
) -> list[tuple[Observation, float | None]]:
    """The newest usable result and every other one of its day (in record order), with its
    value in the canonical unit or None when it cannot be used."""
    obs = newest[0]
    if obs.when_latest is not None:
        return [newest]
    others: list[tuple[Observation, float | None]] = []
    for other in ctx.results_for(analyte):
        if other is obs or other.when != obs.when or other.when_latest is not None:
            continue
        q = observed.plain(ctx, other)
        others.append((other, analyte.to_canonical(q.value, q.unit) if q else None))
    return [newest, *others]


def _values(found: list[tuple[Observation, float | None]]) -> list[tuple[Observation, float]]:
    return [(o, v) for o, v in found if v is not None]


def _unusable_beside(
    check: CreatinineClearanceCheck,
    ctx: Context,
    analyte: Analyte,
    found: list[tuple[Observation, float | None]],
    since: date,
    threshold: str,
) -> Result | None:
    """Unknown when a result of the newest day cannot be used: it may disagree with the ones
    that can, and which one stands is not the engine's guess."""
    problems = [
        f"{o.ref} ({observed.shown(o)}, {observed.day(o)}) cannot be used"
        for o, v in found
        if v is None
    ]
    if not problems:
        return None
    return Result(
        check.id,
        check.label,
        Status.UNKNOWN,
        f"A {analyte.display} result of the newest day cannot be used: {'; '.join(problems)}.",
        evidence=tuple(o.ref for o, _ in found),
        review=tuple(f"{check.label}: {p}" for p in problems),
        data_requests=(ctx.request_for([analyte], since),),
        threshold=threshold,
    )


def _one_answer(check: CreatinineClearanceCheck, results: list[Result], threshold: str) -> Result:
    """The answer the results of one day agree on; results of the same day that fall on both
    sides of the threshold go to review (which result stands is not the engine's guess)."""
    if len({r.status for r in results}) == 1:
        return results[0]
    listed = "; ".join(r.reason.removesuffix(".") for r in results)
    return Result(
        check.id,
        check.label,
        Status.UNKNOWN,
        f"Results of the same day disagree about {threshold}: {listed}.",
        evidence=tuple(dict.fromkeys(e for r in results for e in r.evidence)),
        review=(f"{check.label}: same-day results disagree ({listed}); which one stands?",),
        threshold=threshold,
    )


def _last_day(found: tuple[Observation, float | None]) -> date:
    return found[0].when_latest or found[0].when


def _usable(found: tuple[Observation, float | None] | None) -> tuple[Observation, float] | None:
    if found is None or found[1] is None:
        return None
    return found[0], found[1]
