"""The screening jobs that run in the pool's workers (app/screening/pool.py), shared by every way
a patient is screened one at a time: ``$screen`` (app/api/screen.py) and the web pages
(app/ui/screening_run.py). A job reads a record and evaluates it; :func:`completed` finishes on
the event loop what the terminology server must see first. Nothing here stores or audits."""

import hashlib
from dataclasses import dataclass, replace
from datetime import date, datetime

import orjson

from app.catalog.loader import Catalog
from app.catalog.trial import LoadedTrial
from app.core import limits
from app.core.errors import InvalidInput
from app.ehr.record_source import FetchedRecord, ReceivedRecord
from app.ehr.terminology import TerminologyServer
from app.engine import evaluate
from app.engine.record import PatientRecord
from app.fhir_io.bundle_reader import read_bundle
from app.screening.issued import counted, describe
from app.screening.learned import TrialRef, recognised_refs, trial_of
from app.screening.pool import ScreenPool, WorkerEnv
from app.store.database import NewScreening


@dataclass(frozen=True, slots=True)
class JobResult:
    """What a worker makes of a request: the trials and as-of date asked for, and either the
    patient id to fetch, the record read (to be completed by the terminology server), or the
    screenings themselves."""

    trials: list[str]
    as_of: date
    patient_id: str | None = None
    fetched: FetchedRecord | None = None
    screenings: list[NewScreening] | None = None


def screen_record(
    env: WorkerEnv,
    fetched: FetchedRecord,
    trials: list[str],
    as_of: date,
    now: datetime,
    requested_by: str,
    evaluate_now: bool,
) -> JobResult:
    """In a worker, a record read: evaluated against each trial unless the terminology server
    must see it first (then the record goes back, for :func:`completed`)."""
    if not evaluate_now:
        return JobResult(trials, as_of, fetched=fetched)
    loaded = [env.catalog.trials[t] for t in trials]
    screenings = _evaluated(env, fetched, loaded, as_of, now, requested_by)
    return JobResult(trials, as_of, fetched=_bare(fetched), screenings=screenings)


def screen_received(
    env: WorkerEnv,
    received: ReceivedRecord,
    trials: list[str],
    as_of: date,
    now: datetime,
    requested_by: str,
    evaluate_now: bool,
) -> JobResult:
    """Runs in a screening worker: a record fetched by patient id, read and screened."""
    return screen_record(env, received.read(), trials, as_of, now, requested_by, evaluate_now)


def screen_bundle(
    env: WorkerEnv,
    body: bytes,
    trials: list[str],
    as_of: date,
    now: datetime,
    requested_by: str,
    evaluate_now: bool,
) -> JobResult:
    """Runs in a screening worker: a Bundle file as uploaded (a page's form), counted (413 above
    the limit, before it is parsed), parsed, read and screened."""
    limits.resource_count(body, env.settings.max_resources)
    try:
        bundle = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("The file is not JSON: upload a FHIR Bundle (.json).") from None
    return screen_record(
        env, read_posted(env, bundle, body), trials, as_of, now, requested_by, evaluate_now
    )


def read_posted(env: WorkerEnv, bundle: object, body: bytes) -> FetchedRecord:
    """A posted Bundle read (only the Observations the criteria look up decoded), with the
    digest of the bytes as received: what was screened, without serialising it again."""
    record = read_bundle(bundle, env.observation_codes)
    return FetchedRecord(record, digest=hashlib.sha256(body).hexdigest())


def evaluate_fetched(
    env: WorkerEnv,
    fetched: FetchedRecord,
    trials: list[TrialRef],
    as_of: date,
    now: datetime,
    requested_by: str,
) -> list[NewScreening]:
    """Runs in a screening worker: a record already read evaluated against each trial as the
    terminology server completed it."""
    loaded = [trial_of(env.catalog, t) for t in trials]
    return _evaluated(env, fetched, loaded, as_of, now, requested_by)


async def completed(
    pool: ScreenPool,
    catalog: Catalog,
    terminology: TerminologyServer | None,
    result: JobResult,
    now: datetime,
    requested_by: str,
) -> list[NewScreening]:
    """The screenings of a record a worker has read: those it made, or, when the terminology
    server had to see the record first, those made now with what it recognised. Counted in
    this process's metrics."""
    assert result.fetched is not None
    screenings = result.screenings
    if screenings is None:
        record = result.fetched.record
        trials = await recognised_refs(terminology, catalog, result.trials, record)
        screenings = await pool.run(
            evaluate_fetched, result.fetched, trials, result.as_of, now, requested_by
        )
    counted(screenings)
    return screenings


def _bare(fetched: FetchedRecord) -> FetchedRecord:
    """Only what the service needs back from a worker: the patient, not the whole record."""
    record = PatientRecord(patient=fetched.record.patient)
    return replace(fetched, record=record)


def _evaluated(
    env: WorkerEnv,
    fetched: FetchedRecord,
    trials: list[LoadedTrial],
    as_of: date,
    now: datetime,
    requested_by: str,
) -> list[NewScreening]:
    return [
        describe(
            evaluate(t, fetched.record, as_of),
            fetched,
            env.settings,
            now,
            requested_by,
            counted=False,
        )
        for t in trials
    ]
