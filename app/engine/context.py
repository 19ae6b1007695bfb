"""What every check sees: the trial, its terminology, the record as of the as-of date."""

from dataclasses import dataclass
from datetime import date

from app.catalog.mappings import Analyte, Mappings
from app.catalog.schema import Duration
from app.catalog.trial import LoadedTrial
from app.engine.record import Observation, PatientRecord
from app.engine.results import DataRequest


@dataclass(frozen=True, slots=True)
class Context:
    trial: LoadedTrial
    record: PatientRecord
    """Already cut at the as-of date: nothing in it is dated later."""
    as_of: date

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
