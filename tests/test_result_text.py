"""The result-text parser against strings as laboratories write them (valueString and
valueCodeableConcept.text), with the shipped vocabularies of fhir_mappings/results.yaml; and the
partial FHIR dates results and birth dates are written with."""

from collections.abc import Mapping
from datetime import date

import pytest

from app.catalog.loader import Catalog
from app.core.fhir_dates import parse_fhir_date, parse_fhir_date_range
from app.engine.result_text import VERDICTS, TextResult, Verdict, read_result_text


@pytest.fixture(scope="module")
def words(catalog: Catalog) -> Mapping[Verdict, frozenset[str]]:
    return {v: catalog.mappings.code_sets[v].strings for v in VERDICTS}


# (as written, what it says). The strings are the shapes seen in US lab interfaces (HL7 v2 OBX-5
# text carried into valueString), LIS reports and the FHIR examples: case, punctuation, symbols
# and spacing vary; the meaning must not.
READ = [
    # qualitative words
    ("Positive", TextResult(verdict="positive")),
    ("POSITIVE", TextResult(verdict="positive")),
    ("POS", TextResult(verdict="positive")),
    ("pos", TextResult(verdict="positive")),
    ("Reactive", TextResult(verdict="positive")),
    ("DETECTED", TextResult(verdict="positive")),
    ("+", TextResult(verdict="positive")),
    ("Negative", TextResult(verdict="negative")),
    ("NEG", TextResult(verdict="negative")),
    ("Non-Reactive", TextResult(verdict="negative")),
    ("Nonreactive", TextResult(verdict="negative")),
    ("Not Detected", TextResult(verdict="negative")),
    ("Not detected.", TextResult(verdict="negative")),
    ("  not   detected  ", TextResult(verdict="negative")),
    ("-", TextResult(verdict="negative")),
    ("Equivocal", TextResult(verdict="indeterminate")),
    ("INDETERMINATE", TextResult(verdict="indeterminate")),
    ("Borderline", TextResult(verdict="indeterminate")),
    # titers, alone and with the lab's word
    ("1:160", TextResult(titer=160)),
    ("1/160", TextResult(titer=160)),
    ("1 : 80", TextResult(titer=80)),
    (">=1:320", TextResult(titer=320, titer_comparator=">=")),
    ("≥1:320", TextResult(titer=320, titer_comparator=">=")),
    (">1:1280", TextResult(titer=1280, titer_comparator=">")),
    ("<1:40", TextResult(titer=40, titer_comparator="<")),
    ("negative <1:40", TextResult(verdict="negative", titer=40, titer_comparator="<")),
    ("Negative (<1:40)", TextResult(verdict="negative", titer=40, titer_comparator="<")),
    ("Positive 1:160", TextResult(verdict="positive", titer=160)),
    ("Positive, 1:160", TextResult(verdict="positive", titer=160)),
    ("positive (1:640)", TextResult(verdict="positive", titer=640)),
    # censored numbers, ranges, units
    ("<0.5", TextResult(value=0.5, comparator="<")),
    ("< 0.5", TextResult(value=0.5, comparator="<")),
    ("<=0.5", TextResult(value=0.5, comparator="<=")),
    (">1000", TextResult(value=1000, comparator=">")),
    ("> 1000", TextResult(value=1000, comparator=">")),
    ("less than 20", TextResult(value=20, comparator="<")),
    ("Greater than 1000", TextResult(value=1000, comparator=">")),
    ("<20 IU/mL", TextResult(value=20, comparator="<", unit="IU/mL")),
    ("<20 copies/mL", TextResult(value=20, comparator="<", unit="copies/mL")),
    ("0.8", TextResult(value=0.8)),
    (".5", TextResult(value=0.5)),
    ("12 mg/dL", TextResult(value=12, unit="mg/dL")),
    ("5-10", TextResult(value=5, high=10)),
    ("5 - 10", TextResult(value=5, high=10)),
    ("5–10", TextResult(value=5, high=10)),
    ("5 to 10", TextResult(value=5, high=10)),
    ("1.2 x10^9/L", TextResult(value=1.2, unit="10*9/L")),
    ("1.2 x 10^9/L", TextResult(value=1.2, unit="10*9/L")),
    ("1.2 ×10⁹/L", TextResult(value=1.2, unit="10*9/L")),
    ("3.1 x10E9/L", TextResult(value=3.1, unit="10*9/L")),
    ("250 x10^3/uL", TextResult(value=250, unit="10*3/uL")),
    ("42 µmol/L", TextResult(value=42, unit="umol/L")),
    ("172 mm[Hg]", TextResult(value=172, unit="mm[Hg]")),
    ("<20 [IU]/mL", TextResult(value=20, comparator="<", unit="[IU]/mL")),
    ("Detected 1500 copies/mL", TextResult(verdict="positive", value=1500, unit="copies/mL")),
]

# Strings that must stay unread (None): every one of them would be a guess.
UNREAD = [
    "",
    "   ",
    "weakly positive",  # a qualifier the vocabularies do not define: for a clinician
    "Low positive",
    "see comment",
    "Specimen hemolyzed",
    "TNP",  # test not performed
    "QNS",
    "pending",
    "0,5",  # a decimal comma, or a thousands separator?
    "1,000",
    "2+",  # dipstick grading
    "10-5",  # a range running backwards
    "<5-10",  # a censored range
    "1:40 1:80",  # two titers
    "1:160 5",  # a titer and another number
    "positive?",
    "not positive",  # a negation the vocabulary does not list
    "negative for HBsAg",  # words after the verdict
    "12 positive",  # words after a number
]


@pytest.mark.parametrize(("text", "expected"), READ, ids=[t for t, _ in READ])
def test_reads(text: str, expected: TextResult, words: Mapping[Verdict, frozenset[str]]) -> None:
    assert read_result_text(text, words) == expected


@pytest.mark.parametrize("text", UNREAD)
def test_leaves_unread(text: str, words: Mapping[Verdict, frozenset[str]]) -> None:
    assert read_result_text(text, words) is None


def test_words_come_from_the_vocabulary_not_the_parser() -> None:
    """The parser knows shapes, not words: without a vocabulary no word is read."""
    assert read_result_text("Positive", {}) is None
    assert read_result_text("Positive 1:160", {}) is None
    assert read_result_text("1:160", {}) == TextResult(titer=160)
    assert read_result_text("Positivo", {"positive": frozenset({"positivo"})}) == TextResult(
        verdict="positive"
    )


@pytest.mark.parametrize(
    ("written", "first", "last"),
    [
        ("1956", "1956-01-01", "1956-12-31"),
        ("2008-03", "2008-03-01", "2008-03-31"),
        ("2024-02", "2024-02-01", "2024-02-29"),
        ("2026-05-20", "2026-05-20", "2026-05-20"),
        ("2026-05-20T23:30:00-05:00", "2026-05-20", "2026-05-20"),
    ],
)
def test_partial_dates_span_every_day_they_may_be(written: str, first: str, last: str) -> None:
    assert parse_fhir_date_range(written) == (date.fromisoformat(first), date.fromisoformat(last))
    assert parse_fhir_date(written) == date.fromisoformat(first)


@pytest.mark.parametrize("written", ["2026-13", "26-05-20", "2026/05/20", "May 2026", ""])
def test_not_a_fhir_date(written: str) -> None:
    with pytest.raises(ValueError):
        parse_fhir_date_range(written)
