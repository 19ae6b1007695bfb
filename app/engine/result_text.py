"""Laboratory results written as text, read the way laboratories write them.

One parser for every place a result's value is read from text (``valueString`` or
``valueCodeableConcept.text``; a ``valueRatio`` titer arrives as ``"1:160"``):

- qualitative words: ``Positive``, ``POS``, ``reactive``, ``not detected``, ``equivocal``, ``+``;
  the words come from the result vocabularies in ``fhir_mappings/results.yaml`` (``strings:``), so
  the parser itself knows no language, only the shapes around the words;
- titers: ``1:160``, ``1/160``, ``>=1:320``, ``<1:40``, alone or after a word
  (``negative <1:40``, ``positive (1:160)``);
- numbers as laboratories censor or bound them: ``<0.5``, ``> 1000``, ``less than 20``,
  ``5-10`` (a range), with a unit after them (``1.2 x10^9/L`` reads as 1.2 ``10*9/L``).

What does not fit one of these shapes, entirely, is not read (``None``): a phrase with any word
outside the vocabularies (``weakly positive``, ``see comment``, ``hemolysed``), a decimal comma
(``0,5`` could be a thousands separator), two numbers that are not a range. The callers treat an
unread value as ``unknown`` for a clinician to interpret; nothing here guesses.

Pure: no I/O, no globals beyond compiled patterns.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["positive", "negative", "indeterminate"]
VERDICTS: tuple[Verdict, ...] = ("positive", "negative", "indeterminate")


@dataclass(frozen=True, slots=True)
class TextResult:
    """What a result written as text says. Every field is optional; at least one is set."""

    verdict: Verdict | None = None
    """The laboratory's own word (positive / negative / indeterminate), if it wrote one."""
    titer: float | None = None
    """N of a titer 1:N."""
    titer_comparator: str | None = None
    """``<``, ``<=``, ``>``, ``>=`` when the titer is censored (``<1:40``)."""
    value: float | None = None
    """A number; with ``high``, the low end of a range."""
    comparator: str | None = None
    """``<``, ``<=``, ``>``, ``>=`` when the number is censored (``<0.5``)."""
    high: float | None = None
    """The high end of a range written ``low-high``."""
    unit: str = ""
    """The unit written after the number, as a UCUM code where the spelling is a known one
    (``x10^9/L`` -> ``10*9/L``), else as written; "" when none."""


_SYMBOLS = str.maketrans(
    {
        "≥": ">=",
        "≤": "<=",
        "×": "x",
        "–": "-",
        "—": "-",
        "µ": "u",
        "μ": "u",
        "(": " ",
        ")": " ",
    }
)
_SUPERSCRIPT = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
_DIGITS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
_PHRASES = (
    (re.compile(r"\b(?:less than or equal to|not more than)\b", re.I), "<="),
    (re.compile(r"\b(?:greater than or equal to|not less than|at least)\b", re.I), ">="),
    (re.compile(r"\b(?:less than|below|under)\b", re.I), "<"),
    (re.compile(r"\b(?:greater than|more than|above|over)\b", re.I), ">"),
)
_CMP = r"(?:<=|>=|=<|=>|<|>)"
_NUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
_TITER = re.compile(rf"(?<![\d.])(?P<cmp>{_CMP})?\s*1\s*[:/]\s*(?P<n>{_NUM})(?![\d.,/:])")
_NUMBER = re.compile(
    rf"(?P<cmp>{_CMP})?\s*(?P<lo>{_NUM})(?:\s*(?:-|to)\s*(?P<hi>{_NUM}))?"
    r"(?:\s*(?P<unit>x\s*10\S*|[a-z%/{\[]\S*))?",
    re.I,
)
_WORDS = re.compile(r"[a-z][a-z \-']*", re.I)
_POWER_OF_TEN = re.compile(r"(?:x)?10(?:\^|\*|e)?(?P<exp>\d+)/(?P<per>l|ul|mm3)", re.I)
_CANONICAL_CMP = {"=<": "<=", "=>": ">="}


def read_result_text(text: str, words: Mapping[Verdict, frozenset[str]]) -> TextResult | None:
    """Read a result written as text; None when it is not one of the shapes above, entirely.

    ``words`` maps each verdict to its lower-case vocabulary (results.yaml ``strings:``)."""
    normal = _normalise(text)
    if not normal:
        return None
    whole = _verdict_of(normal, words)
    if whole is not None:
        return TextResult(verdict=whole)
    titer = _TITER.search(normal)
    rest = normal
    result = TextResult()
    if titer is not None:
        result = TextResult(
            titer=float(titer["n"]), titer_comparator=_cmp(titer["cmp"]) if titer["cmp"] else None
        )
        rest = (normal[: titer.start()] + " " + normal[titer.end() :]).strip()
    head, number = _split(rest)
    verdict = None
    if head:
        verdict = _verdict_of(head, words)
        if verdict is None:
            return None
    if number:
        if titer is not None:
            return None  # a titer and another number: not a shape we read
        match = _NUMBER.fullmatch(number)
        if match is None:
            return None
        low, high = float(match["lo"]), match["hi"]
        if high is not None and (match["cmp"] or float(high) < low):
            return None
        if match["unit"] and _verdict_of(match["unit"], words) is not None:
            return None  # "12 positive": a word after the number, not a unit
        result = TextResult(
            value=low,
            comparator=_cmp(match["cmp"]) if match["cmp"] else None,
            high=float(high) if high is not None else None,
            unit=_unit(match["unit"] or ""),
        )
    if verdict is None and result == TextResult():
        return None
    return TextResult(
        verdict,
        result.titer,
        result.titer_comparator,
        result.value,
        result.comparator,
        result.high,
        result.unit,
    )


def _normalise(text: str) -> str:
    """Symbols and phrases to one spelling; case is kept (a unit's case is part of it)."""
    normal = _SUPERSCRIPT.sub(lambda m: "^" + m.group().translate(_DIGITS), text)
    normal = normal.translate(_SYMBOLS)
    for pattern, symbol in _PHRASES:
        normal = pattern.sub(symbol, normal)
    normal = re.sub(r"\s*,\s*", " , ", normal)  # "positive, 1:160": the comma separates
    return re.sub(r"\s+", " ", normal).strip().rstrip(".;").strip()


def _verdict_of(phrase: str, words: Mapping[Verdict, frozenset[str]]) -> Verdict | None:
    phrase = phrase.strip(" ,:;").lower()
    for verdict in VERDICTS:
        if phrase in words.get(verdict, frozenset()):
            return verdict
    return None


def _split(text: str) -> tuple[str, str]:
    """(leading words, the number that follows them). Words after a number are not read."""
    text = text.strip(" ,")
    head = _WORDS.match(text)
    if head is None:
        return "", text
    words = head.group().strip()
    return words, text[head.end() :].strip(" ,")


def _cmp(symbol: str) -> str:
    return _CANONICAL_CMP.get(symbol, symbol)


def _unit(written: str) -> str:
    """A few spellings laboratories use for powers of ten per volume, as UCUM; else as written."""
    compact = written.strip()
    match = _POWER_OF_TEN.fullmatch(compact.replace(" ", ""))
    if match is None:
        return compact
    per = {"l": "L", "ul": "uL", "mm3": "mm3"}[match["per"].lower()]
    return f"10*{match['exp']}/{per}"
