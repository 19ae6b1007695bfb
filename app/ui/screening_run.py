"""Screening a patient from a page: the same path as ``$screen`` (record source or posted
Bundle read and evaluated in the screening pool's workers, app/screening/jobs.py; terminology;
:func:`app.screening.issued.describe`), stored with its audit row in one transaction, so a
screening made on a page is the same record as one made by the API, and a large upload never
holds the event loop."""

import asyncio
from datetime import UTC, date, datetime
from typing import Any

from fastapi import Request

from app.catalog.loader import Catalog
from app.core import limits
from app.core.errors import InvalidInput
from app.ehr.record_source import RecordSource
from app.screening.jobs import completed, screen_bundle, screen_received
from app.screening.pool import ScreenPool
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
    bundle: bytes | None = None,
) -> list[dict[str, Any]]:
    """Screen one patient (by id from the record source, or a Bundle file's bytes) against the
    trials, in the screening pool as $screen does; store each GuidanceResponse and audit the
    screening; return them in trial order."""
    pool: ScreenPool = request.app.state.screen_pool
    terminology = getattr(request.app.state, "terminology", None)
    now = datetime.now(UTC)
    who = agent(user)
    if bundle is not None:
        result = await pool.run(
            screen_bundle, bundle, trial_ids, as_of, now, who, terminology is None
        )
    elif patient_id:
        source: RecordSource = request.app.state.record_source
        received = await source.receive(patient_id, as_of)
        result = await pool.run(
            screen_received, received, trial_ids, as_of, now, who, terminology is None
        )
    else:
        raise InvalidInput("Give a patient id or a Bundle file.")
    assert result.fetched is not None
    patient = result.fetched.record.patient.ref or (f"Patient/{patient_id}" if patient_id else None)
    if patient:
        limits.text_value(patient, "the Patient's id or fullUrl", limits.MAX_REFERENCE)
    catalog: Catalog = request.app.state.catalog
    screenings = await completed(pool, catalog, terminology, result, now, who)
    for s in screenings:  # kept once, never updated: version 1 for good (as $screen does)
        s.guidance["meta"] = {
            "versionId": "1",
            "lastUpdated": now.isoformat(timespec="milliseconds"),
        }
    done = audit.event(
        action="E",
        interaction="screen",
        outcome="0",
        agent=who,
        description=f"screened against {len(screenings)} trial(s) from the web pages",
        patient_ref=patient,
        entities=tuple(f"GuidanceResponse/{s.guidance['id']}" for s in screenings),
    )
    store: Store = request.app.state.store
    await asyncio.to_thread(store.save, screenings, done)
    return [s.guidance for s in screenings]
