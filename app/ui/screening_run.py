"""Screening a patient from a page: the same path as ``$screen`` (record source or posted
Bundle, terminology, engine, :func:`app.screening.issued.describe`), stored with its audit row
in one transaction, so a screening made on a page is the same record as one made by the API."""

import asyncio
from datetime import UTC, date, datetime
from typing import Any

from fastapi import Request

from app.catalog.loader import Catalog
from app.core import limits
from app.core.errors import InvalidInput
from app.ehr.record_source import FetchedRecord, RecordSource
from app.ehr.terminology import recognised
from app.engine import evaluate
from app.fhir_io.bundle_reader import read_bundle, record_digest
from app.screening.issued import describe
from app.store import audit
from app.store.database import Store
from app.ui.session import UiUser


def agent(user: UiUser) -> str:
    """How the audit trail and the stored screening name a page user."""
    return f"ui:{user.subject}"


async def screen_patient(
    request: Request,
    user: UiUser,
    trial_ids: list[str],
    as_of: date,
    patient_id: str | None = None,
    bundle: Any = None,
) -> list[dict[str, Any]]:
    """Screen one patient (by id from the record source, or a posted Bundle) against the trials;
    store each GuidanceResponse and audit the screening; return them in trial order."""
    catalog: Catalog = request.app.state.catalog
    trials = [catalog.trials[t] for t in trial_ids]
    if bundle is not None:
        fetched = FetchedRecord(read_bundle(bundle), digest=record_digest(bundle))
    elif patient_id:
        source: RecordSource = request.app.state.record_source
        fetched = await source.fetch(patient_id, as_of)
    else:
        raise InvalidInput("Give a patient id or a Bundle file.")
    patient = fetched.record.patient.ref or (f"Patient/{patient_id}" if patient_id else None)
    if patient:
        limits.text_value(patient, "the Patient's id or fullUrl", limits.MAX_REFERENCE)
    settings = request.app.state.settings
    terminology = getattr(request.app.state, "terminology", None)
    now = datetime.now(UTC)
    screenings = [
        describe(evaluate(known, fetched.record, as_of), fetched, settings, now, agent(user))
        for known in [await recognised(terminology, t, fetched.record) for t in trials]
    ]
    for s in screenings:  # kept once, never updated: version 1 for good (as $screen does)
        s.guidance["meta"] = {
            "versionId": "1",
            "lastUpdated": now.isoformat(timespec="milliseconds"),
        }
    done = audit.event(
        action="E",
        interaction="screen",
        outcome="0",
        agent=agent(user),
        description=f"screened against {len(screenings)} trial(s) from the web pages",
        patient_ref=patient,
        entities=tuple(f"GuidanceResponse/{s.guidance['id']}" for s in screenings),
    )
    store: Store = request.app.state.store
    await asyncio.to_thread(store.save, screenings, done)
    return [s.guidance for s in screenings]
