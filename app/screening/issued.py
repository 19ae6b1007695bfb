"""One screening as the service issues it: the GuidanceResponse and what is kept of it. Shared by
the REST operation and the CDS Hooks service."""

import uuid
from datetime import datetime

from app.core.observability import count_screening
from app.core.settings import Settings
from app.ehr.record_source import FetchedRecord
from app.engine import Screening
from app.fhir_io.report import guidance_response, plausible
from app.store.database import NewScreening


def describe(
    screening: Screening,
    fetched: FetchedRecord,
    settings: Settings,
    now: datetime,
    requested_by: str,
    card_uuid: str | None = None,
    screening_id: str | None = None,
    counted: bool = True,
) -> NewScreening:
    """What is kept of one screening. ``counted=False`` in a worker process, whose metrics
    nobody scrapes: the service counts it with :func:`counted` when the screening comes back."""
    screening = plausible(screening)  # the stored eligibility and the report must agree
    guidance = guidance_response(
        screening,
        response_id=screening_id or str(uuid.uuid4()),
        canonical_base=settings.canonical_base,
        issued=now,
        warnings=fetched.problems
        + tuple(f"Not read: {u.describe()}" for u in fetched.record.unreadable),
        evidence_base=fetched.origin,
        record=fetched.record,
    )
    if counted:
        count_screening(screening.trial.id, screening.eligibility.value)
    return NewScreening(
        guidance=guidance,
        trial_id=screening.trial.id,
        criteria_version=screening.trial.spec.version,
        as_of=screening.as_of,
        patient_ref=screening.patient_ref,
        eligibility=screening.eligibility.value,
        record_digest=fetched.digest,
        requested_by=requested_by,
        card_uuid=card_uuid,
    )


def counted(screenings: list[NewScreening]) -> list[NewScreening]:
    """The screenings, each counted in this process's metrics."""
    for s in screenings:
        count_screening(s.trial_id, s.eligibility)
    return screenings
