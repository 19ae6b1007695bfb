"""The pure screening engine: ``evaluate(trial, record, as_of)``."""

from app.engine.context import LoadedTrial
from app.engine.evaluate import CriterionResult, Eligibility, Screening, evaluate
from app.engine.results import DataRequest, Result, Status, Value

__all__ = [
    "CriterionResult",
    "DataRequest",
    "Eligibility",
    "LoadedTrial",
    "Result",
    "Screening",
    "Status",
    "Value",
    "evaluate",
]
