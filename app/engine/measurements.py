"""Checks on measured values: thresholds in a unit or as a multiple of the upper limit of normal,
qualitative findings (positive / low / coded), and Cockcroft-Gault creatinine clearance."""

from dataclasses import dataclass, replace
from datetime import date

from app.catalog.mappings import Analyte
from app.catalog.schema import (
    CreatinineClearanceCheck,
    LabFindingCheck,
    MeasurementCheck,
    RoomAir,
)
from app.engine.compare import satisfies, satisfies_censored, satisfies_range, symbol
from app.engine.context import Context
from app.engine.record import Observation
from app.engine.result_text import VERDICTS, TextResult, Verdict, read_result_text
from app.engine.results import DataRequest, Result, Status, Value

_POSITIVE: Verdict = "positive"
_NEGATIVE: Verdict = "negative"
_INDETERMINATE: Verdict = "indeterminate"


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
class _Number:
    """A result's number: from valueQuantity, or read from its text ("<0.5", "5-10 mg/dL")."""

    value: float
    unit: str
    censor: str | None = None
    high: float | None = None
    """Upper end when the result is a range (``value`` is then the lower end)."""


def _text(ctx: Context, obs: Observation) -> TextResult | None:
    if not obs.value_text:
        return None
    words = {v: ctx.mappings.code_sets[v].strings for v in VERDICTS}
    return read_result_text(obs.value_text, words)


def _number(ctx: Context, obs: Observation) -> _Number | None:
    """The result's number, from the quantity or else from a text that is only a number."""
    q = obs.quantity
    if q is not None:
        return _Number(q.value, q.unit, q.comparator)
    read = _text(ctx, obs)
    if read is None or read.value is None or read.verdict is not None:
        return None
    return _Number(read.value, read.unit, read.comparator, read.high)


def _plain(ctx: Context, obs: Observation) -> _Number | None:
    """The result's number when it is exact (neither censored nor a range)."""
    n = _number(ctx, obs)
    return n if n is not None and n.censor is None and n.high is None else None


def _undated(obs: Observation, since: date) -> str | None:
    """Why a result dated only to a month or year cannot be used in a window, if it cannot: it
    may fall before the window, or be newer or older than a result dated to the day."""
    if obs.when_latest is None:
        return None
    return (
        f"{obs.ref} is dated only between {obs.when} and {obs.when_latest}, so it cannot be "
        f"placed in the window from {since} or ordered against results dated to the day"
    )


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


def _readings(
    check: MeasurementCheck, ctx: Context, since: date, unusable: list[tuple[date, str]]
) -> list[_Reading]:
    """Usable readings in the window, newest first; what cannot be used goes to ``unusable``."""
    analyte = ctx.mappings.analytes[check.analyte]
    readings: list[_Reading] = []
    for obs in ctx.results_for(analyte):
        if (obs.when_latest or obs.when) < since:
            continue
        undated = _undated(obs, since)
        if undated is not None:
            unusable.append((min(obs.when_latest or obs.when, ctx.as_of), undated))
            continue
        number = _number(ctx, obs)
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
            observed = [e for e in ends if e is not None]
        else:
            assert check.unit is not None  # schema: unit is given unless uln_multiple
            canonical = [analyte.to_canonical(v, number.unit) for v in _ends(number)]
            if any(c is None for c in canonical):
                problem = f"{obs.ref} is in unit {number.unit!r}, not convertible"
                unusable.append((obs.when, problem))
                continue
            observed = [c / analyte.factors[check.unit] for c in canonical if c is not None]
        note = ""
        if check.room_air is not None:
            air, what = _on_room_air(check.room_air, ctx, obs)
            if air is False:
                unusable.append((obs.when, f"{obs.ref} was measured {what}: not on room air"))
                continue
            note = "" if air else what
        high = observed[1] if len(observed) > 1 else None
        readings.append(
            _Reading(obs.when, observed[0], number.censor, (obs.ref,), high=high, note=note)
        )
    if check.percent_of is not None and check.unit is not None:
        readings += _derived(check, ctx, since, unusable)
    return sorted(readings, key=lambda r: r.when, reverse=True)


def _ends(number: _Number) -> list[float]:
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
            n = _plain(ctx, o2)
            value = None if n is None else analyte.to_canonical(n.value, n.unit)
            if value is None or o2.when_latest is not None:
                # Oxygen recorded that day (or in a month that holds it) that cannot be read:
                # room air cannot be shown.
                shown = f"{analyte.display} {_shown(o2)} ({o2.ref}, {_day(o2)})"
                if o2.ref == obs.ref:
                    return False, f"with {shown}, which cannot be read"
                same_day.append((True, f"{shown}, which cannot be read"))
                continue
            limit = analyte.to_canonical(oxygen.above, oxygen.unit)
            assert n is not None and limit is not None  # lint: the unit converts
            shown = f"{analyte.display} {_fmt(n.value)} {n.unit}"
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
        q = _plain(ctx, obs)
        value = total.to_canonical(q.value, q.unit) if q else None
        totals.setdefault(obs.when, None if value is None else (obs, value))
    out = []
    for obs in ctx.results_for(percent):
        if (obs.when_latest or obs.when) < since:
            continue
        undated = _undated(obs, since)
        if undated is not None:
            unusable.append((min(obs.when_latest or obs.when, ctx.as_of), undated))
            continue
        q = _plain(ctx, obs)
        pct = percent.to_canonical(q.value, q.unit) if q else None
        if pct is None:
            unusable.append((obs.when, f"{obs.ref} ({_shown(obs)}) is not a usable percentage"))
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
    shown = f"{latest.censor or ''}{_fmt(latest.value)}"
    if latest.high is not None:
        shown += f"-{_fmt(latest.high)}"
    shown += f" {unit}"
    if latest.how:
        shown += f" ({latest.how})"
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
        listed = ", ".join(f"{_fmt(r.value)} on {r.when}" for r in run)
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


def lab_finding(check: LabFindingCheck, ctx: Context) -> Result:
    """The latest result of each listed analyte (alternative tests for one finding) in the window,
    or with ``history`` every result in it: met if any reads as the finding, unknown if any
    cannot be read, not-met if all read as not."""
    analytes = [ctx.mappings.analytes[name] for name in check.analytes]
    since = ctx.since(check.within)
    read = []
    for analyte in analytes:
        entries = []
        for obs in _considered(check, ctx, analyte, since):
            verdict, shown = _classify(check, ctx, obs, analyte)
            if obs.when < since:  # dated only to a month or year that reaches into the window
                verdict, shown = _INDETERMINATE, f"{shown} (may be before {since})"
            entries.append((obs, verdict, shown, analyte.display))
        if not check.history and len({e[1] for e in entries}) > 1:
            # Which one is the latest cannot be told (a result dated only to the month), and
            # they read differently.
            entries = [(o, _INDETERMINATE, f"{s} (latest?)", n) for o, _, s, n in entries]
        read += entries
    if not read:
        if check.if_none == "not_met":
            names = " or ".join(a.display for a in analytes)
            return Result(
                check.id,
                check.label,
                Status.NOT_MET,
                f"No {names} result since {since.isoformat()}.",
            )
        return _missing(check.id, check.label, ctx, analytes, since)
    described = "; ".join(f"{name} {shown} on {_day(o)}" for o, _, shown, name in read)
    evidence = tuple(dict.fromkeys(o.ref for o, *_ in read))
    hits = [r for r in read if r[1] == _POSITIVE]
    unclear = [r for r in read if r[1] == _INDETERMINATE]
    finding = {
        "positive": "positive",
        "low": "below the lower reference limit",
        "coded": f"in {check.result_codes}",
    }[check.finding]
    which = "A result in the window" if check.history else "Latest result"
    if hits:
        shown_hits = "; ".join(f"{name} {shown} on {_day(o)}" for o, _, shown, name in hits)
        if check.on_match == "review":
            return Result(
                check.id,
                check.label,
                Status.UNKNOWN,
                f"{which} reads as {finding}: {shown_hits}. A clinician must judge whether it "
                "counts.",
                evidence=evidence,
                review=(f"{check.label}: {shown_hits}",),
            )
        return Result(
            check.id,
            check.label,
            Status.MET,
            f"{which} reads as {finding}: {shown_hits if check.history else described}.",
            evidence=evidence,
        )
    if unclear:
        listed = "; ".join(f"{name} {shown} on {_day(o)}" for o, _, shown, name in unclear)
        return Result(
            check.id,
            check.label,
            Status.UNKNOWN,
            f"Cannot tell whether the {'results' if check.history else 'latest result'} "
            f"{'are' if check.history else 'is'} {finding}: {described}.",
            evidence=evidence,
            review=(f"Interpret {listed}",),
        )
    return Result(
        check.id,
        check.label,
        Status.NOT_MET,
        f"{'No result in the window reads as' if check.history else 'Latest result is not'} "
        f"{finding}: {described}.",
        evidence=evidence,
    )


def _day(obs: Observation) -> str:
    return str(obs.when) if obs.when_latest is None else f"{obs.when}..{obs.when_latest}"


def _considered(
    check: LabFindingCheck, ctx: Context, analyte: Analyte, since: date
) -> list[Observation]:
    """The results of one analyte that decide: every one that may lie in the window with
    ``history``; else the latest, together with any result dated only to a month or year that
    may be as recent (which of them is the latest cannot be told)."""
    results = [o for o in ctx.results_for(analyte) if (o.when_latest or o.when) >= since]
    if check.history or not results:
        return results
    exact = [o for o in results if o.when_latest is None]
    newest = exact[0].when if exact else None
    return [
        o
        for o in results
        if o is (exact[0] if exact else None)
        or (o.when_latest is not None and (newest is None or o.when_latest >= newest))
    ]


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
        if sets[check.result_codes].matcher.matches_any(obs.value_codes):
            return _POSITIVE, shown
        if check.negative_codes is None:
            return _NEGATIVE, shown
        negative = sets[check.negative_codes].matcher.matches_any(obs.value_codes)
        return (_NEGATIVE if negative else _INDETERMINATE), shown
    number = _number(ctx, obs)
    if check.finding == "low":
        if sets["low_interpretation"].matcher.matches_any(obs.interpretation):
            return _POSITIVE, shown
        low = obs.ref_low
        if number is None or low is None or number.high is not None:
            return _INDETERMINATE, shown
        same_unit = low.unit == number.unit  # else e.g. C3 in mg/dL against a range in g/L
        value = number.value if same_unit else analyte.to_canonical(number.value, number.unit)
        limit = low.value if same_unit else analyte.to_canonical(low.value, low.unit)
        if value is None or limit is None:
            return _INDETERMINATE, shown
        below = satisfies_censored(value, number.censor, "<", limit)
        return (_INDETERMINATE if below is None else _POSITIVE if below else _NEGATIVE), shown
    for verdict in (_POSITIVE, _NEGATIVE, _INDETERMINATE):
        if sets[verdict].matcher.matches_any(obs.value_codes):
            return verdict, shown
    if obs.value_bool is not None:
        return (_POSITIVE if obs.value_bool else _NEGATIVE), shown
    text = _text(ctx, obs)  # None also when written in a shape the parser does not read
    if text is not None and text.titer is not None:
        by_titer = _by_titer(check, text)
        if by_titer is not None:
            return by_titer, shown
    if text is not None and text.verdict is not None:
        return text.verdict, shown
    # The lab's own reading (DET / NEG) wins over our reading of the number: a viral load of
    # "<20 IU/mL" flagged DET is detected but below the limit of quantification.
    if sets["positive"].matcher.matches_any(obs.interpretation):
        return _POSITIVE, shown
    if sets["negative"].matcher.matches_any(obs.interpretation):
        return _NEGATIVE, shown
    if number is not None:
        if check.numeric == "detected":
            # A viral load below the assay's limit comes back as "<20"; a number is a detection.
            below = number.censor in {"<", "<="} or number.value <= 0
            return (_NEGATIVE if below else _POSITIVE), shown
        high = obs.ref_high
        if high is not None and high.unit == number.unit:
            if number.high is not None:
                above = satisfies_range(number.value, number.high, ">", high.value)
            else:
                above = satisfies_censored(number.value, number.censor, ">", high.value)
            if above is not None:
                return (_POSITIVE if above else _NEGATIVE), shown
    if sets["abnormal_high_interpretation"].matcher.matches_any(obs.interpretation):
        return _POSITIVE, shown
    return _INDETERMINATE, shown


def _by_titer(check: LabFindingCheck, text: TextResult) -> Verdict | None:
    """A titer against the protocol's cut-off: it decides over the lab's word, unless the word
    says negative while the titer reaches the cut-off (contradictory: for review). Without a
    cut-off, None: the lab's word or interpretation decides."""
    assert text.titer is not None
    if check.titer_cutoff is None:
        return None
    reaches = satisfies_censored(text.titer, text.titer_comparator, ">=", check.titer_cutoff)
    if reaches is None or (reaches and text.verdict == _NEGATIVE):
        return _INDETERMINATE
    return _POSITIVE if reaches else _NEGATIVE


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

    newest_reported = _newest_in(ctx, analytes["creatinine_clearance_cg"], since)
    newest_creatinine = _newest_in(ctx, analytes["creatinine"], since)
    if newest_reported is not None and (
        newest_creatinine is None or _last_day(newest_reported) >= _last_day(newest_creatinine)
    ):
        # The lab's own Cockcroft-Gault value, unless a newer creatinine supersedes it; a newest
        # value that cannot be used is not passed over for an older one.
        obs, reported_value = newest_reported
        if reported_value is None:
            problem = f"{obs.ref} ({_shown(obs)}, {_day(obs)}) cannot be used"
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
        return decide(reported_value, f"reported by the lab on {obs.when}", (obs.ref,), ())
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
            f"Cockcroft-Gault gives {_fmt(clearance)}-{_fmt(highest)} mL/min for an age of "
            f"{youngest}-{age} (the birth date is recorded only as {patient.birth_date} to "
            f"{patient.birth_latest}), on both sides of {threshold}.",
            evidence=(scr_obs.ref, wt_obs.ref, patient.ref),
            data_requests=(DataRequest("Patient", (), "exact birth date"),),
            threshold=threshold,
        )
    return decide(
        clearance,
        f"Cockcroft-Gault from creatinine {_fmt(scr)} mg/dL on {scr_obs.when}, weight "
        f"{_fmt(kg)} kg, age {age}, {patient.gender}",
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
    q = _plain(ctx, obs) if obs.when_latest is None else None
    return obs, None if q is None else analyte.to_canonical(q.value, q.unit)


def _last_day(found: tuple[Observation, float | None]) -> date:
    return found[0].when_latest or found[0].when


def _usable(found: tuple[Observation, float | None] | None) -> tuple[Observation, float] | None:
    if found is None or found[1] is None:
        return None
    return found[0], found[1]
