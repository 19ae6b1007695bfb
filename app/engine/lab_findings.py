"""Qualitative findings (positive / low / coded) read from the latest result of alternative tests,
or from every result in the window ("history of ... within")."""

from datetime import date

from app.catalog.mappings import Analyte
from app.catalog.schema import LabFindingCheck
from app.engine import observed
from app.engine.compare import satisfies_censored, satisfies_range
from app.engine.context import Context
from app.engine.record import Observation
from app.engine.result_text import TextResult, Verdict
from app.engine.results import Result, Status

_POSITIVE: Verdict = "positive"
_NEGATIVE: Verdict = "negative"
_INDETERMINATE: Verdict = "indeterminate"


def lab_finding(check: LabFindingCheck, ctx: Context) -> Result:
    """The latest result of each listed analyte (alternative tests for one finding) in the window,
    or with ``history`` every result in it: met if any reads as the finding, unknown if any
    cannot be read, not-met if all read as not."""
    analytes = [ctx.mappings.analytes[name] for name in check.analytes]
    since = ctx.since(check.within)
    return observed.held_for_names(_lab_finding(check, ctx, analytes, since), ctx, analytes, since)


def _lab_finding(
    check: LabFindingCheck, ctx: Context, analytes: list[Analyte], since: date
) -> Result:
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
        return observed.missing(check.id, check.label, ctx, analytes, since)
    described = "; ".join(f"{name} {shown} on {observed.day(o)}" for o, _, shown, name in read)
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
        shown_hits = "; ".join(f"{name} {shown} on {observed.day(o)}" for o, _, shown, name in hits)
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
        listed = "; ".join(f"{name} {shown} on {observed.day(o)}" for o, _, shown, name in unclear)
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
    shown = observed.shown(obs)
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
    number = observed.number(ctx, obs)
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
    text = observed.text_of(ctx, obs)  # None also when written in a shape the parser does not read
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
