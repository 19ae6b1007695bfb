"""What an evaluation produces: a tree of results, one per criterion and sub-check.

Truth values follow Kleene's three-valued logic with ``not-applicable`` as the neutral element:
``all`` is false if any child is false, else unknown if any is unknown; ``any`` is true if any child
is true, else unknown if any is unknown.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from app.engine.record import Coding


class Status(StrEnum):
    MET = "met"
    NOT_MET = "not-met"
    UNKNOWN = "unknown"
    NOT_APPLICABLE = "not-applicable"


@dataclass(frozen=True, slots=True)
class DataRequest:
    """Data to collect: a resource type, the codes that would satisfy the check, and the window."""

    resource_type: str
    codes: tuple[Coding, ...]
    label: str
    since: date | None = None


@dataclass(frozen=True, slots=True)
class Value:
    """A value the check compared, normalised to the criterion's unit."""

    name: str
    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    label: str
    status: Status
    reason: str
    evidence: tuple[str, ...] = ()
    values: tuple[Value, ...] = ()
    threshold: str | None = None
    review: tuple[str, ...] = ()
    data_requests: tuple[DataRequest, ...] = ()
    children: tuple["Result", ...] = field(default=())

    def walk(self) -> Iterator["Result"]:
        yield self
        for child in self.children:
            yield from child.walk()

    def open_requests(self) -> Iterator[DataRequest]:
        """Data that would settle this result: requests of unknown results only, since a child
        whose parent is already decided (an ``any`` met by a sibling) needs nothing more."""
        if self.status is Status.UNKNOWN:
            yield from self.data_requests
            for child in self.children:
                yield from child.open_requests()

    @property
    def lacks_data(self) -> bool:
        """Unknown because data is missing (not merely because a clinician must judge)."""
        return next(self.open_requests(), None) is not None


def kleene_all(statuses: Iterable[Status]) -> Status:
    seen = set(statuses)
    for status in (Status.NOT_MET, Status.UNKNOWN, Status.MET):
        if status in seen:
            return status
    return Status.NOT_APPLICABLE


def kleene_any(statuses: Iterable[Status]) -> Status:
    seen = set(statuses)
    for status in (Status.MET, Status.UNKNOWN, Status.NOT_MET):
        if status in seen:
            return status
    return Status.NOT_APPLICABLE
