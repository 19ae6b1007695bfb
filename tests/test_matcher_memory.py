"""The catalog's matchers remember their answers across screenings (app/catalog/mappings.py).
What they remember must never outlive the matcher it belongs to, nor grow without end."""

from app.catalog import mappings as m
from app.catalog.loader import Catalog

SNOMED = "http://snomed.info/sct"


def test_learned_codes_are_not_hidden_by_what_the_old_matcher_remembered(
    catalog: Catalog,
) -> None:
    trial = next(iter(catalog.trials.values()))
    name = next(iter(trial.mappings.code_sets))
    matcher = trial.mappings.code_sets[name].matcher
    coding = (SNOMED, "999999999999")
    assert not matcher.matches(*coding)  # remembered as "no"
    learned = trial.mappings.with_codes({name: frozenset({coding})})
    assert learned.code_sets[name].matcher.matches(*coding)
    assert not matcher.matches(*coding)  # the old matcher is unchanged


def test_answers_are_the_same_remembered_or_not(catalog: Catalog) -> None:
    mappings = next(iter(catalog.trials.values())).mappings
    for code_set in mappings.code_sets.values():
        matcher = code_set.matcher
        for system, code in [*sorted(matcher.exact)[:20], (SNOMED, "0"), ("urn:x", "y")]:
            first = matcher.matches(system, code)
            assert matcher.matches(system, code) == first == matcher._matches(system, code)
        for label in ("no such words here", *code_set.terms.terms[:5]):
            first_in = code_set.terms.first_in((label,))
            assert code_set.terms.first_in((label,)) == first_in
            if label in code_set.terms.terms:
                assert first_in is not None


def test_the_memory_stays_bounded() -> None:
    matcher = m.CodeMatcher(frozenset({(SNOMED, "1")}), ())
    for i in range(3 * m._MEMO_LIMIT):
        assert matcher.matches(SNOMED, str(i)) is (i == 1)
    assert 0 < len(matcher._matched) <= m._MEMO_LIMIT
    terms = m.TermMatcher.of(["lupus"])
    long_label = "lupus " + "x" * (2 * m._MEMO_CHARS)
    assert terms.first_in((long_label,)) == "lupus"
    assert long_label not in terms._found
