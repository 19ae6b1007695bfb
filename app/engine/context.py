"""What every check sees: the trial, its terminology, the record as of the as-of date."""

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, Protocol, TypeVar

from app.catalog.mappings import Analyte, CodeSet, Mappings
from app.catalog.schema import Duration
from app.catalog.trial import LoadedTrial
from app.engine.record import Coding, Observation, PatientRecord
from app.engine.results import DataRequest


class RecognisedCodes:
    """A code set's matcher remembered for one evaluation: each (system, code) is judged once,
    however many checks and resources carry it, so a record with many codings costs one set test
    per distinct coding instead of one per check and per resource. The answers are the code set's
    own (exclusion rows included), never anything else."""

    __slots__ = ("_excluded", "_member", "_set", "_words")

    def __init__(self, code_set: CodeSet) -> None:
        self._set = code_set
        self._member: dict[Coding, bool] = {}
        self._excluded: dict[Coding, bool] = {}
        self._words: dict[str, str | None] = {}

    def matches_any(self, codes: Iterable[Coding]) -> bool:
        member = self._member
        for coding in codes:
            hit = member.get(coding)
            if hit is None:
                hit = member[coding] = self._set.matcher.matches(*coding)
            if hit:
                return True
        return False

    def excludes_any(self, codes: Iterable[Coding]) -> bool:
        excluded = self._excluded
        for coding in codes:
            hit = excluded.get(coding)
            if hit is None:
                hit = excluded[coding] = self._set.matcher.excludes_any((coding,))
            if hit:
                return True
        return False

    def term_in(self, labels: Iterable[str]) -> str | None:
        """The first of the set's terms found in the labels (TermMatcher.first_in), each label
        searched once."""
        words = self._words
        for label in labels:
            if label not in words:
                words[label] = self._set.terms.first_in((label,))
            found = words[label]
            if found is not None:
                return found
        return None


class _Entry(Protocol):
    @property
    def codes(self) -> tuple[Coding, ...]: ...
    @property
    def text(self) -> str: ...
    @property
    def displays(self) -> tuple[str, ...]: ...


History = Literal["conditions", "procedures", "immunizations"]
"""The parts of the record that :meth:`Context.recognised` and :meth:`Context.named` index."""
_V = TypeVar("_V")


def _by_code(entries: Iterable[_Entry]) -> dict[Coding, list[int]]:
    """Each coding's entries of one part of the record, indexed once per evaluation so that a
    check asks each distinct coding once instead of scanning every entry. Entries are
    identified by ``id()``: the record holds them for the whole evaluation."""
    index: dict[Coding, list[int]] = {}
    for entry in entries:
        key = id(entry)
        for coding in entry.codes:
            if coding in index:
                index[coding].append(key)
            else:
                index[coding] = [key]
    return index


def _by_label(entries: Iterable[_Entry]) -> dict[str, list[int]]:
    """Each label's (text, coding display) entries, as :func:`_by_code`."""
    index: dict[str, list[int]] = {}
    for entry in entries:
        key = id(entry)
        for label in (entry.text, *entry.displays) if entry.text else entry.displays:
            if label in index:
                index[label].append(key)
            else:
                index[label] = [key]
    return index


@dataclass(frozen=True, slots=True)
class Context:
    trial: LoadedTrial
    record: PatientRecord
    """Already cut at the as-of date: nothing in it is dated later."""
    as_of: date
    _recognised: dict[str, RecognisedCodes] = field(default_factory=dict, compare=False, repr=False)
    _memo: dict[Hashable, Any] = field(default_factory=dict, compare=False, repr=False)

    def codes(self, code_set: str) -> RecognisedCodes:
        """The named code set's matcher, remembered for this evaluation."""
        found = self._recognised.get(code_set)
        if found is None:
            found = self._recognised[code_set] = RecognisedCodes(self.mappings.code_sets[code_set])
        return found

    def remembered(self, key: Hashable, compute: Callable[[], _V]) -> _V:
        """``compute()``, once per evaluation for each key: for what depends only on the record,
        the as-of date and the trial (the key must say everything else it depends on)."""
        memo = self._memo
        if key in memo:
            found: _V = memo[key]
            return found
        value = memo[key] = compute()
        return value

    def _by_code(self, part: History) -> dict[Coding, list[int]]:
        return self.remembered(("by code", part), lambda: _by_code(getattr(self.record, part)))

    def _by_label(self, part: History) -> dict[str, list[int]]:
        return self.remembered(("by label", part), lambda: _by_label(getattr(self.record, part)))

    def recognised(self, part: History, code_sets: Iterable[str]) -> frozenset[int]:
        """``id()`` of each entry of that part of the record whose codes one of the named code
        sets recognises (``RecognisedCodes.matches_any``)."""
        names = tuple(code_sets)
        if not names:
            return frozenset()

        def compute() -> frozenset[int]:
            # The matchers remember each coding's answer (CodeMatcher.matches).
            matchers = [self.mappings.code_sets[n].matcher for n in names]
            out: set[int] = set()
            for (system, code), keys in self._by_code(part).items():
                for m in matchers:
                    if m.matches(system, code):
                        out.update(keys)
                        break
            return frozenset(out)

        return self.remembered(("recognised", part, names), compute)

    def excluded(self, part: History, code_sets: Iterable[str]) -> frozenset[int]:
        """``id()`` of each entry with a coding one of the named code sets explicitly excludes."""
        names = tuple(code_sets)

        def compute() -> frozenset[int]:
            sets = [self.codes(n) for n in names]
            return frozenset(
                key
                for coding, keys in self._by_code(part).items()
                if any(s.excludes_any((coding,)) for s in sets)
                for key in keys
            )

        return self.remembered(("excluded", part, names), compute)

    def named(self, part: History, code_sets: Iterable[str]) -> frozenset[int]:
        """``id()`` of each entry whose text or a coding display holds one of the named code
        sets' terms (``RecognisedCodes.term_in``)."""
        names = tuple(code_sets)

        def compute() -> frozenset[int]:
            # The term matchers remember each label's answer (TermMatcher.first_in).
            terms = [self.mappings.code_sets[n].terms for n in names]
            out: set[int] = set()
            for label, keys in self._by_label(part).items():
                for t in terms:
                    if t.first_in((label,)) is not None:
                        out.update(keys)
                        break
            return frozenset(out)

        return self.remembered(("named", part, names), compute)

    @property
    def mappings(self) -> Mappings:
        return self.trial.mappings

    def since(self, within: Duration | None) -> date:
        """Start of a measurement window (the trial's screening window by default)."""
        return (within or self.trial.spec.screening_window).before(self.as_of)

    def history_since(self, within: Duration | None) -> date | None:
        """Start of a history window; None means any time."""
        return None if within is None else within.before(self.as_of)

    def results_for(self, analyte: Analyte) -> list[Observation]:
        """Every result of the analyte up to the as-of date, newest first."""
        return self.record.observations_with(analyte.codes)

    def request_for(self, analytes: list[Analyte], since: date) -> DataRequest:
        codes = tuple(
            (self.mappings.systems[row.system], row.code) for a in analytes for row in a.rows
        )
        label = " or ".join(a.display for a in analytes)
        return DataRequest("Observation", codes, label, since)
