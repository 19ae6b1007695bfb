"""Where a patient's record comes from when ``$screen`` is given a patient id: the EHR's FHIR
server, or (with no EHR configured) the bundled demo records. Both end in the same
:func:`read_bundle` as a posted Bundle, so the answer is the same as posting that data."""

import asyncio
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, Protocol

import orjson

from app.core.errors import NotFound, UpstreamUnavailable
from app.ehr.client import Deadline, EhrError, EhrNotFound, FhirClient, SearchOutcome
from app.ehr.fetch_plan import FetchPlan, Search
from app.engine.record import PatientRecord
from app.fhir_io.bundle_reader import read_bundle, record_digest

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FetchedRecord:
    record: PatientRecord
    problems: tuple[str, ...] = ()
    """What could not be fetched, in words for the GuidanceResponse's evaluationMessage."""
    digest: str = ""
    """SHA-256 of the record's resources as received (see bundle_reader.record_digest)."""
    origin: str | None = None
    """The FHIR base the record was read from (its resources' references are made absolute
    against it in the GuidanceResponse); None for a posted Bundle."""


Part = tuple[Search, list[Json], str | None]
"""A search, the resources it found, and the problem that left it incomplete (or None)."""


@dataclass(frozen=True, slots=True)
class Parts:
    """Search results as JSON, ``[[resources, problem], ...]`` in the order of ``searches``: bytes
    cost less to hand to a screening worker than the dicts they encode."""

    searches: tuple[Search, ...]
    json: bytes

    @classmethod
    def of(cls, parts: list[Part]) -> "Parts":
        return cls(tuple(s for s, _, _ in parts), orjson.dumps([[r, p] for _, r, p in parts]))

    def decoded(self) -> list[Part]:
        found = orjson.loads(self.json)
        return [(s, r, p) for s, (r, p) in zip(self.searches, found, strict=True)]


@dataclass(frozen=True, slots=True)
class ReceivedRecord:
    """A record as received and not yet read: a whole Bundle's JSON (``bundle``), or the Patient
    and the searches' results (``patient``, ``parts``). Reading it is CPU work, which the service
    leaves to a screening worker (:meth:`read`)."""

    bundle: bytes = b""
    patient: Json | None = None
    parts: tuple[Parts, ...] = ()
    origin: str | None = None

    def read(self) -> FetchedRecord:
        if self.patient is None:
            bundle = orjson.loads(self.bundle)
            return FetchedRecord(read_bundle(bundle), digest=record_digest(bundle))
        fetched = assemble(self.patient, [part for p in self.parts for part in p.decoded()])
        return replace(fetched, origin=self.origin)


class RecordSource(Protocol):
    async def fetch(self, patient_id: str, as_of: date) -> FetchedRecord: ...

    async def receive(self, patient_id: str, as_of: date) -> ReceivedRecord:
        """The record as received, to be read where the CPU time may be spent."""
        ...


class DemoRecordSource:
    """The synthetic patients shipped in ``app/demo/patients`` (file name = Patient id)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def fetch(self, patient_id: str, as_of: date) -> FetchedRecord:
        return (await self.receive(patient_id, as_of)).read()

    async def receive(self, patient_id: str, as_of: date) -> ReceivedRecord:
        path = self.directory / f"{patient_id}.json"
        if "/" in patient_id or not path.is_file():
            raise NotFound(f"No demo patient {patient_id!r} (see python -m app.demo).")
        return ReceivedRecord(bundle=await asyncio.to_thread(path.read_bytes))


class EhrRecordSource:
    """The EHR's FHIR server: the Patient and every search of the plan, all at once."""

    def __init__(self, client: FhirClient, plan: FetchPlan, deadline_seconds: float) -> None:
        self.client = client
        self.plan = plan
        self.deadline_seconds = deadline_seconds

    async def fetch(self, patient_id: str, as_of: date) -> FetchedRecord:
        return (await self.receive(patient_id, as_of)).read()

    async def receive(self, patient_id: str, as_of: date) -> ReceivedRecord:
        deadline = Deadline.after(self.deadline_seconds)
        searches = self.plan.searches(patient_id, as_of)
        patient, outcomes = await fetch_parts(self.client, patient_id, searches, deadline)
        assert patient is not None  # fetch_parts reads the Patient when none is given
        parts = Parts.of([(s, o.resources, o.problem) for s, o in outcomes])
        return ReceivedRecord(patient=patient, parts=(parts,), origin=self.client.base_url)


async def fetch_parts(
    client: FhirClient,
    patient_id: str,
    searches: list[Search],
    deadline: Deadline,
    patient: Json | None = None,
) -> tuple[Json | None, list[tuple[Search, SearchOutcome]]]:
    """Run the searches (and read the Patient unless given) all at once: one round trip plus
    paging. A Patient that cannot be read is a 404 or 502; a search that fails is reported in its
    outcome."""
    # Every search starts now, alongside the Patient read.
    tasks = [
        asyncio.ensure_future(client.search(s.resource_type, s.params, deadline)) for s in searches
    ]
    if patient is None:
        try:
            patient = await client.read("Patient", patient_id, deadline)
        except EhrError as exc:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if isinstance(exc, EhrNotFound):
                raise NotFound(f"The EHR has no Patient {patient_id!r}.") from None
            raise UpstreamUnavailable(
                f"The EHR's Patient record could not be read: {exc}."
            ) from None
    outcomes = await asyncio.gather(*tasks)
    return patient, list(zip(searches, outcomes, strict=True))


def assemble(patient: Json, parts: list[Part]) -> FetchedRecord:
    """One record from the Patient and the resources of each search (prefetched or fetched);
    a part with a problem makes its source incomplete."""
    entries: list[Json] = [{"resource": patient}]
    incomplete: dict[str, str] = {}
    for search, resources, problem in parts:
        entries += [{"resource": r} for r in resources]
        if problem is not None:
            incomplete.setdefault(search.source, problem)
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    record = replace(read_bundle(bundle), incomplete=incomplete)
    return FetchedRecord(record, tuple(incomplete.values()), record_digest(bundle))
