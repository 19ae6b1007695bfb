"""What every check sees: the trial, its terminology, the record as of the as-of date."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

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


@dataclass(frozen=True, slots=True)
class Context:
    trial: LoadedTrial
    record: PatientRecord
    """Already cut at the as-of date: nothing in it is dated later."""
    as_of: date
    _recognised: dict[str, RecognisedCodes] = field(default_factory=dict, compare=False, repr=False)

    def codes(self, code_set: str) -> RecognisedCodes:
        """The named code set's matcher, remembered for this evaluation."""
        found = self._recognised.get(code_set)
        if found is None:
            found = self._recognised[code_set] = RecognisedCodes(self.mappings.code_sets[code_set])
        return found

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
