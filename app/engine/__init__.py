"""The pure screening engine: ``evaluate(trial, record, as_of)`` over the lean record
(``record``) the FHIR reader builds. No I/O: it imports the catalog's data models and nothing
that touches a file, the network or the database (``tests/test_layers.py`` checks it)."""

from app.engine.evaluate import CriterionResult, Eligibility, Screening, evaluate
from app.engine.results import DataRequest, Result, Status, Value

__all__ = [
    "CriterionResult",
    "DataRequest",
    "Eligibility",
    "Result",
    "Screening",
    "Status",
    "Value",
    "evaluate",
]
