"""Checks on measured values: thresholds in a unit or as a multiple of the upper limit of normal,
qualitative findings (positive / low / coded), and Cockcroft-Gault creatinine clearance."""

from dataclasses import dataclass, replace
from datetime import date

from app.catalog.mappings import Analyte
from app.catalog.schema import (
    CreatinineClearanceCheck,
    LabFindingCheck,
    MeasurementCheck,
)
from app.engine.compare import satisfies, satisfies_censored, symbol
from app.engine.context import Context
from app.engine.record import Observation
from app.engine.results import DataRequest, Result, Status, Value

_POSITIVE, _NEGATIVE, _INDETERMINATE = "positive", "negative", "indeterminate"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _missing(
    check_id: str, label: str, ctx: Context, analytes: list[Analyte], since: date
) -> Result:
    """Unknown for lack of data: no result in the window. Older results are not cited: a record
    fetched from the EHR holds only the window, and the answer must not depend on the path."""
    names = " or ".join(a.display for a in analytes)
    return Result(
        check_id,
        label,
        Status.UNKNOWN,
        f"No {names} result since {since.isoformat()}; a current one is needed.",
        data_requests=(ctx.request_for(analytes, since),),
    )


@dataclass(frozen=True, slots=True)
class _Reading:
    """A value ready to compare: in the check's unit (or x ULN), with what it came from."""

    when: date
    value: float
    censor: str | None
    evidence: tuple[str, ...]
    how: str = ""


def _readings(
    check: MeasurementCheck, ctx: Context, since: date, unusable: list[tuple[date, str]]
) -> list[_Reading]:
    """Usable readings in the window, newest first; what cannot be used goes to ``unusable``."""
    analyte = ctx.mappings.analytes[check.analyte]
    readings: list[_Reading] = []
    for obs in ctx.results_for(analyte):
        if obs.when < since:
            break
        if obs.quantity is None:
            unusable.append((obs.when, f"{obs.ref} has no numeric value"))
            continue
        if check.uln_multiple:
            observed = _uln_ratio(analyte, obs)
            if observed is None:
                unusable.append((obs.when, f"{obs.ref} reports no upper limit of normal"))
                continue
        else:
            assert check.unit is not None  # schema: unit is given unless uln_multiple
            canonical = analyte.to_canonical(obs.quantity.value, obs.quantity.unit)
            if canonical is None:
                problem = f"{obs.ref} is in unit {obs.quantity.unit!r}, not convertible"
                unusable.append((obs.when, problem))
                continue
            observed = canonical / analyte.factors[check.unit]
        readings.append(_Reading(obs.when, observed, obs.quantity.comparator, (obs.ref,)))
    if check.percent_of is not None and check.unit is not None:
        readings += _derived(check, ctx, since)
    return sorted(readings, key=lambda r: r.when, reverse=True)


def _derived(check: MeasurementCheck, ctx: Context, since: date) -> list[_Reading]:
    """Values computed as percent x total from results of the same day (the same draw)."""
    assert check.percent_of is not None and check.unit is not None
    analytes = ctx.mappings.analytes
    target, percent, total = (
        analytes[check.analyte],
        analytes[check.percent_of.percent],
        analytes[check.percent_of.total],
    )
    totals: dict[date, tuple[Observation, float]] = {}
    for obs in ctx.results_for(total):
        q = obs.quantity
        value = total.to_canonical(q.value, q.unit) if q and q.comparator is None else None
        if value is not None and obs.when >= since:
            totals.setdefault(obs.when, (obs, value))
    out = []
    for obs in ctx.results_for(percent):
        q = obs.quantity
        pct = percent.to_canonical(q.value, q.unit) if q and q.comparator is None else None
        if pct is None or obs.when < since or obs.when not in totals:
            continue
        total_obs, total_value = totals[obs.when]
        assert total.unit is not None  # analytes with units have a canonical unit
        canonical = target.to_canonical(pct / 100 * total_value, total.unit)
        if canonical is None:
            continue
        value = canonical / target.factors[check.unit]
        how = f"{_fmt(pct)}% of {total.display} {_fmt(total_value)} {total.unit}"
        out.append(_Reading(obs.when, value, None, (obs.ref, total_obs.ref), how))
    return out


def measurement(check: MeasurementCheck, ctx: Context) -> Result:
    analyte = ctx.mappings.analytes[check.analyte]
    since = ctx.since(check.within)
    unusable: list[tuple[date, str]] = []
    readings = _readings(check, ctx, since, unusable)
    # A newer result that cannot be read may be the deciding one: never fall back past it.
    newer = [problem for day, problem in unusable if not readings or day > readings[0].when]
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
        return _missing(check.id, check.label, ctx, [analyte], since)
    latest = readings[0]
    unit = "× ULN" if check.uln_multiple else str(check.unit)
    threshold = f"{symbol(check.comparator)} {_fmt(check.value)} {unit}"
    shown = f"{latest.censor or ''}{_fmt(latest.value)} {unit}"
    if latest.how:
        shown += f" ({latest.how})"
    base = Result(
        check.id,
        check.label,
        Status.UNKNOWN,
        "",
        evidence=latest.evidence,
        values=(Value(analyte.display, latest.value, unit),),
        threshold=threshold,
    )
    verdict = satisfies_censored(latest.value, latest.censor, check.comparator, check.value)
    if verdict is None:
        return _with(
            base,
            Status.UNKNOWN,
            f"{analyte.display} was reported as {shown} on {latest.when}, which cannot be "
            f"compared with {threshold}.",
            review=(f"{analyte.display} {shown}: compare with {threshold}",),
        )
    status = Status.MET if verdict else Status.NOT_MET
    word = "meets" if verdict else "does not meet"
    return _with(base, status, f"{analyte.display} {shown} on {latest.when} {word} {threshold}.")


def _with(base: Result, status: Status, reason: str, review: tuple[str, ...] = ()) -> Result:
    return replace(base, status=status, reason=reason, review=review)


def _uln_ratio(analyte: Analyte, obs: Observation) -> float | None:
    high = obs.ref_high
    if obs.quantity is None or high is None or high.value <= 0:
        return None
    if high.unit == obs.quantity.unit:
        return obs.quantity.value / high.value
    value = analyte.to_canonical(obs.quantity.value, obs.quantity.unit)
    limit = analyte.to_canonical(high.value, high.unit)
    return None if value is None or not limit else value / limit


def lab_finding(check: LabFindingCheck, ctx: Context) -> Result:
    """The latest result of each listed analyte (alternative tests for one finding) in the window:
    met if any reads as the finding, unknown if any cannot be read, not-met if all read as not."""
    analytes = [ctx.mappings.analytes[name] for name in check.analytes]
    since = ctx.since(check.within)
    latest = [next((o for o in ctx.results_for(a) if o.when >= since), None) for a in analytes]
    read = [
        (o, *_classify(check, ctx, o, a), a.display)
        for o, a in zip(latest, analytes, strict=True)
        if o is not None
    ]
    if not read:
        return _missing(check.id, check.label, ctx, analytes, since)
    described = "; ".join(f"{name} {shown} on {o.when}" for o, _, shown, name in read)
    evidence = tuple(o.ref for o, *_ in read)
    hits = [r for r in read if r[1] == _POSITIVE]
    unclear = [r for r in read if r[1] == _INDETERMINATE]
    finding = {
        "positive": "positive",
        "low": "below the lower reference limit",
        "coded": f"in {check.result_codes}",
    }[check.finding]
    if hits:
        return Result(
            check.id,
            check.label,
            Status.MET,
            f"Latest result reads as {finding}: {described}.",
            evidence=evidence,
        )
    if unclear:
        listed = "; ".join(f"{name} {shown} on {o.when}" for o, _, shown, name in unclear)
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            f"Cannot tell whether the latest result is {finding}: {described}.",
            evidence=evidence,
            review=(f"Interpret {listed}",),
        )
    return Result(
        check.id,
        check.label,
        Status.NOT_MET,
        f"Latest result is not {finding}: {described}.",
        evidence=evidence,
    )


def _classify(
    check: LabFindingCheck, ctx: Context, obs: Observation, analyte: Analyte
) -> tuple[str, str]:
    """(positive | negative | indeterminate, how the value reads) for the check's finding."""
    sets = ctx.mappings.code_sets
    shown = _shown(obs)
    if check.finding == "coded":
        assert check.result_codes is not None  # schema: coded findings name their code set
        if not obs.value_codes:
            return _INDETERMINATE, shown
        hit = sets[check.result_codes].matcher.matches_any(obs.value_codes)
        return (_POSITIVE if hit else _NEGATIVE), shown
    if check.finding == "low":
        if sets["low_interpretation"].matcher.matches_any(obs.interpretation):
            return _POSITIVE, shown
        q, low = obs.quantity, obs.ref_low
        if q is None or low is None:
            return _INDETERMINATE, shown
        same_unit = low.unit == q.unit  # else e.g. C3 in mg/dL against a range in g/L
        value = q.value if same_unit else analyte.to_canonical(q.value, q.unit)
        limit = low.value if same_unit else analyte.to_canonical(low.value, low.unit)
        if value is None or limit is None:
            return _INDETERMINATE, shown
        return (_POSITIVE if satisfies(value, "<", limit) else _NEGATIVE), shown
    for verdict in (_POSITIVE, _NEGATIVE, _INDETERMINATE):
        vocabulary = sets[verdict]
        if vocabulary.matcher.matches_any(obs.value_codes) or obs.value_text in vocabulary.strings:
            return verdict, shown
    if obs.value_bool is not None:
        return (_POSITIVE if obs.value_bool else _NEGATIVE), shown
    if obs.value_text and ":" in obs.value_text and check.titer_cutoff is not None:
        titer = _titer(obs.value_text)
        if titer is not None:
            return (_POSITIVE if titer >= check.titer_cutoff else _NEGATIVE), shown
    # The lab's own reading (DET / NEG) wins over our reading of the number: a viral load of
    # "<20 IU/mL" flagged DET is detected but below the limit of quantification.
    if sets["positive"].matcher.matches_any(obs.interpretation):
        return _POSITIVE, shown
    if sets["negative"].matcher.matches_any(obs.interpretation):
        return _NEGATIVE, shown
    if obs.quantity is not None:
        q = obs.quantity
        if check.numeric == "detected":
            # A viral load below the assay's limit comes back as "<20"; a number is a detection.
            below = q.comparator in {"<", "<="} or q.value <= 0
            return (_NEGATIVE if below else _POSITIVE), shown
        if obs.ref_high is not None and obs.ref_high.unit == q.unit:
            verdict_high = satisfies(q.value, ">", obs.ref_high.value)
            return (_POSITIVE if verdict_high else _NEGATIVE), shown
    if sets["abnormal_high_interpretation"].matcher.matches_any(obs.interpretation):
        return _POSITIVE, shown
    return _INDETERMINATE, shown


def _titer(text: str) -> float | None:
    left, _, right = text.partition(":")
    try:
        return float(right) / float(left)
    except (ValueError, ZeroDivisionError):
        return None


def _shown(obs: Observation) -> str:
    if obs.quantity is not None:
        q = obs.quantity
        return f"{q.comparator or ''}{_fmt(q.value)} {q.unit}".strip()
    if obs.value_text:
        return obs.value_text
    if obs.value_codes:
        system, code = obs.value_codes[0]
        return f"{code} ({system.rsplit('/', 1)[-1]})"
    if obs.value_bool is not None:
        return str(obs.value_bool).lower()
    return "no value"


def creatinine_clearance(check: CreatinineClearanceCheck, ctx: Context) -> Result:
    analytes = ctx.mappings.analytes
    since = ctx.since(check.within)
    threshold = f"{symbol(check.comparator)} {_fmt(check.value)} mL/min"

    def decide(
        value: float, how: str, evidence: tuple[str, ...], values: tuple[Value, ...]
    ) -> Result:
        ok = satisfies(value, check.comparator, check.value)
        return Result(
            check.id,
            check.label,
            Status.MET if ok else Status.NOT_MET,
            f"Creatinine clearance {_fmt(value)} mL/min ({how}) "
            f"{'meets' if ok else 'does not meet'} {threshold}.",
            evidence=evidence,
            values=(Value("creatinine clearance", value, "mL/min"), *values),
            threshold=threshold,
        )

    reported = _latest_in(ctx, analytes["creatinine_clearance_cg"], since)
    creatinine = _latest_in(ctx, analytes["creatinine"], since)
    if reported is not None and (creatinine is None or reported[0].when >= creatinine[0].when):
        # The lab's own Cockcroft-Gault value, unless a newer creatinine supersedes it.
        obs, value = reported
        return decide(value, f"reported by the lab on {obs.when}", (obs.ref,), ())
    weight = _latest_in(ctx, analytes["body_weight"], since)
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
    age = patient.age_on(scr_obs.when)
    assert age is not None  # birth date checked above
    clearance = (140 - age) * kg / (72 * scr) * (0.85 if patient.gender == "female" else 1.0)
    return decide(
        clearance,
        f"Cockcroft-Gault from creatinine {_fmt(scr)} mg/dL on {scr_obs.when}, weight "
        f"{_fmt(kg)} kg, age {age}, {patient.gender}",
        (scr_obs.ref, wt_obs.ref, patient.ref),
        (Value("creatinine", scr, "mg/dL"), Value("body weight", kg, "kg"), Value("age", age, "a")),
    )


def _latest_in(ctx: Context, analyte: Analyte, since: date) -> tuple[Observation, float] | None:
    """The newest result in the window, if it has an uncensored value in a convertible unit.
    An unreadable newest result is not passed over for an older one: the value is then missing
    (so the check asks for a new result rather than deciding on stale data)."""
    for obs in ctx.results_for(analyte):
        if obs.when < since:
            return None
        q = obs.quantity
        if q is None or q.comparator is not None:
            return None
        value = analyte.to_canonical(q.value, q.unit)
        return None if value is None else (obs, value)
    return None
