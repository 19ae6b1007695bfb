"""How the measurement checks read one Observation's value: its number (from valueQuantity, or
from a text read by :mod:`app.engine.result_text`), how it is shown in a reason, and whether its
date is exact enough to place it in a window."""

from dataclasses import dataclass, replace
from datetime import date

from app.catalog.mappings import Analyte
from app.engine.context import Context
from app.engine.record import Observation
from app.engine.result_text import VERDICTS, TextResult, read_result_text
from app.engine.results import Result, Status


def fmt(value: float) -> str:
    return f"{value:.4g}"


def missing(
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
class Number:
    """A result's number: from valueQuantity, or read from its text ("<0.5", "5-10 mg/dL")."""

    value: float
    unit: str
    censor: str | None = None
    high: float | None = None
    """Upper end when the result is a range (``value`` is then the lower end)."""


def text_of(ctx: Context, obs: Observation) -> TextResult | None:
    if not obs.value_text:
        return None
    words = {v: ctx.mappings.code_sets[v].strings for v in VERDICTS}
    return read_result_text(obs.value_text, words)


def number(ctx: Context, obs: Observation) -> Number | None:
    """The result's number, from the quantity or else from a text that is only a number."""
    q = obs.quantity
    if q is not None:
        return Number(q.value, q.unit, q.comparator)
    read = text_of(ctx, obs)
    if read is None or read.value is None or read.verdict is not None:
        return None
    return Number(read.value, read.unit, read.comparator, read.high)


def plain(ctx: Context, obs: Observation) -> Number | None:
    """The result's number when it is exact (neither censored nor a range)."""
    n = number(ctx, obs)
    return n if n is not None and n.censor is None and n.high is None else None


def undated(obs: Observation, since: date) -> str | None:
    """Why a result dated only to a month or year cannot be used in a window, if it cannot: it
    may fall before the window, or be newer or older than a result dated to the day."""
    if obs.when_latest is None:
        return None
    return (
        f"{obs.ref} is dated only between {obs.when} and {obs.when_latest}, so it cannot be "
        f"placed in the window from {since} or ordered against results dated to the day"
    )


def shown(obs: Observation) -> str:
    if obs.quantity is not None:
        q = obs.quantity
        return f"{q.comparator or ''}{fmt(q.value)} {q.unit}".strip()
    if obs.value_text:
        return obs.value_text
    if obs.value_codes:
        system, code = obs.value_codes[0]
        return f"{code} ({system.rsplit('/', 1)[-1]})"
    if obs.value_bool is not None:
        return str(obs.value_bool).lower()
    return "no value"


def day(obs: Observation) -> str:
    return str(obs.when) if obs.when_latest is None else f"{obs.when}..{obs.when_latest}"


def _name(text: str) -> str:
    return " ".join(text.lower().split())


def named_only(ctx: Context, analytes: list[Analyte], since: date) -> list[Observation]:
    """Results in the window known only by their name: no LOINC coding and no code any analyte
    knows (uncoded, or a local code), but a name that is exactly one of these analytes' names
    (its display or a LOINC display, case and spacing aside). Such a result may be the deciding
    one; a check it could change goes to review (words never decide a check, codes do)."""
    names = {_name(n) for a in analytes for n in (a.display, *(r.display for r in a.rows)) if n}
    loinc = ctx.mappings.systems["loinc"]
    known = {c for a in ctx.mappings.analytes.values() for c in a.codes}
    return [
        o
        for o in ctx.record.observations
        if o.text
        and (o.when_latest or o.when) >= since
        and not any(system == loinc or (system, code) in known for system, code in o.codes)
        and _name(o.text) in names
    ]


def held_for_names(result: Result, ctx: Context, analytes: list[Analyte], since: date) -> Result:
    """A definite result turned to review when a result known only by its name may overturn it."""
    if result.status not in {Status.MET, Status.NOT_MET}:
        return result
    found = named_only(ctx, analytes, since)
    if not found:
        return result
    listed = "; ".join(f"{o.text!r} {shown(o)} on {day(o)} ({o.ref})" for o in found[:3])
    return replace(
        result,
        status=Status.UNKNOWN,
        reason=f"{result.reason} Not decided: the record also holds a result known only by its "
        f"name, which may bear on this: {listed}.",
        evidence=result.evidence + tuple(o.ref for o in found),
        review=(*result.review, f"{result.label}: interpret {listed} (not coded)"),
    )
