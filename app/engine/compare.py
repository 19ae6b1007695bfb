"""Comparisons that keep the protocol's strictness, including results reported as "<x" or ">x"."""

import math

from app.catalog.schema import Comparator

_SYMBOL = {"<": "<", "<=": "≤", ">": ">", ">=": "≥"}


def symbol(comparator: Comparator) -> str:
    return _SYMBOL[comparator]


def satisfies(value: float, comparator: Comparator, threshold: float) -> bool:
    """``value comparator threshold``; values within 1e-9 relative of the threshold count as equal,
    so unit conversion rounding cannot move a result across a boundary."""
    if math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-12):
        return comparator in {"<=", ">="}
    return {
        "<": value < threshold,
        "<=": value < threshold,
        ">": value > threshold,
        ">=": value > threshold,
    }[comparator]


def satisfies_censored(
    value: float, censor: str | None, comparator: Comparator, threshold: float
) -> bool | None:
    """As :func:`satisfies` for a result that may be censored (``valueQuantity.comparator``):
    "<0.2" only says the true value is below 0.2. None when the answer cannot be told."""
    if censor is None:
        return satisfies(value, comparator, threshold)
    below = censor in {"<", "<="}
    # The true value lies in an open interval bounded by `value` on one side.
    if below:
        if comparator in {"<", "<="}:
            return True if satisfies(value, "<=", threshold) else None
        return False if satisfies(value, "<=", threshold) else None
    if comparator in {">", ">="}:
        return True if satisfies(value, ">=", threshold) else None
    return False if satisfies(value, ">=", threshold) else None


def satisfies_range(
    low: float, high: float, comparator: Comparator, threshold: float
) -> bool | None:
    """As :func:`satisfies` for a result written as a range ("5-10"): decided only when both
    ends fall on the same side of the threshold; None otherwise."""
    ends = {satisfies(low, comparator, threshold), satisfies(high, comparator, threshold)}
    return ends.pop() if len(ends) == 1 else None
