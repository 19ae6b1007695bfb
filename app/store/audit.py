"""The audit trail: who did what to which patient's data, with what outcome, and when.

Every screening, read or search of stored screenings, CDS Hooks call and feedback writes one
row; ``GET /fhir/AuditEvent`` shows them to an auditor as FHIR R4 AuditEvents. Rows hold the
patient reference and the resources touched, never names, dates of birth, tokens or bodies.
Refused requests are counted, one row per source, description and minute (``occurrences``), so
a flood of them cannot fill the trail; every text is bounded and stripped of control characters.
"""

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict

from fastapi import Request
from typing_extensions import Unpack

from app.core.limits import printable
from app.store.database import Store, StoredAuditEvent

Action = Literal["C", "R", "E"]
Outcome = Literal["0", "4", "8"]
_SUBTYPE = {
    "screen": "operation",
    "cds-hook": "operation",
    "cds-feedback": "create",
    "read": "read",
    "search": "search-type",
    "audit-search": "search-type",
    "access-denied": "operation",
    "signoff": "create",  # an investigator's sign-off on the web pages (app/ui)
    "ui-sign-in": "operation",  # signing in to the pages (the sign-in's app/ui/auth_routes.py)
}


class EventFields(TypedDict):
    action: Action
    interaction: str
    outcome: Outcome
    agent: str
    description: str
    patient_ref: NotRequired[str | None]
    entities: NotRequired[tuple[str, ...]]


_AGENT_LIMIT = 200
_REF_LIMIT = 200
_DESCRIPTION_LIMIT = 500
_ENTITIES_LIMIT = 4000


def event(**fields: Unpack[EventFields]) -> StoredAuditEvent:
    """An audit row, for :meth:`Store.save` to write in the same transaction as what it audits.
    Every text is bounded and free of control characters whatever the caller passed (a NUL
    fails a PostgreSQL insert; an index row has a size limit)."""
    patient_ref = fields.get("patient_ref")
    entities = " ".join(fields.get("entities", ()))
    return StoredAuditEvent(
        id=str(uuid.uuid4()),
        recorded=datetime.now(UTC),
        action=fields["action"],
        interaction=fields["interaction"],
        outcome=fields["outcome"],
        agent=printable(fields["agent"], _AGENT_LIMIT),
        patient_ref=printable(patient_ref, _REF_LIMIT) if patient_ref else None,
        entity_ref=printable(entities, _ENTITIES_LIMIT) if entities else None,
        description=printable(fields["description"], _DESCRIPTION_LIMIT),
    )


_REFUSALS = uuid.UUID("5f0c1d62-6a53-4a53-9f55-5a1f3b3c0e12")


async def refused(store: Store, *, agent: str, description: str) -> None:
    """Count a refused request (401, 403, a malformed request) in the row for its source and
    description in the current minute: a flood adds to one row a minute instead of one each.
    ``description`` names the route template or the kind of fault, never the raw path."""
    row = event(
        action="E", interaction="access-denied", outcome="4", agent=agent, description=description
    )
    minute = row.recorded.replace(second=0, microsecond=0)
    row.id = str(uuid.uuid5(_REFUSALS, f"{minute.isoformat()}|{row.agent}|{row.description}"))
    row.recorded = minute
    await asyncio.to_thread(store.count_refusal, row)


async def record(request: Request, **fields: Unpack[EventFields]) -> None:
    """Write an audit row on its own (accesses that store nothing else)."""
    store: Store = request.app.state.store
    await asyncio.to_thread(store.save_audit, event(**fields))


def as_fhir(row: StoredAuditEvent, canonical: str) -> dict[str, Any]:
    entities: list[dict[str, Any]] = []
    if row.patient_ref:
        entities.append(
            {
                "what": {"reference": row.patient_ref},
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "1",
                    "display": "Person",
                },
            }
        )
    entities += [{"what": {"reference": ref}} for ref in (row.entity_ref or "").split()]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": row.id,
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [
            {
                "system": "http://hl7.org/fhir/restful-interaction",
                "code": _SUBTYPE[row.interaction],
            },
            {"system": f"{canonical}/CodeSystem/audit-interaction", "code": row.interaction},
        ],
        "action": row.action,
        "recorded": row.recorded.astimezone(UTC).isoformat(timespec="milliseconds"),
        "outcome": row.outcome,
        "outcomeDesc": (
            row.description
            if row.occurrences == 1
            else f"{row.description} ({row.occurrences} times in this minute)"
        ),
        "agent": [
            {
                "who": {"identifier": {"system": f"{canonical}/client", "value": row.agent}},
                "requestor": True,
            }
        ],
        "source": {"observer": {"display": "trialscreen"}},
    }
    if entities:
        event["entity"] = entities
    return event
