"""A trial as loaded: its criteria file together with the terminology it was checked against."""

from dataclasses import dataclass

from app.catalog.mappings import Mappings
from app.catalog.schema import Trial


@dataclass(frozen=True, slots=True)
class LoadedTrial:
    """A trial file together with the terminology it was checked against."""

    spec: Trial
    mappings: Mappings

    @property
    def id(self) -> str:
        return self.spec.id
