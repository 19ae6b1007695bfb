"""The audit trail: who did what to which patient's data, with what outcome, and when.

Every screening, read or search of stored screenings, CDS Hooks call and feedback writes one
row; ``GET /fhir/AuditEvent`` shows them to an auditor as FHIR R4 AuditEvents. Rows hold the
patient reference and the resources touched, never names, dates of birth, tokens or bodies.
"""

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict

from fastapi import Request
from typing_extensions import Unpack

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
}


class EventFields(TypedDict):
    action: Action
    interaction: str
    outcome: Outcome
    agent: str
    description: str
    patient_ref: NotRequired[str | None]
    entities: NotRequired[tuple[str, ...]]


def event(**fields: Unpack[EventFields]) -> StoredAuditEvent:
    """An audit row, for :meth:`Store.save` to write in the same transaction as what it audits."""
    return StoredAuditEvent(
        id=str(uuid.uuid4()),
        recorded=datetime.now(UTC),
        action=fields["action"],
        interaction=fields["interaction"],
        outcome=fields["outcome"],
        agent=fields["agent"],
        patient_ref=fields.get("patient_ref") or None,
        entity_ref=" ".join(fields.get("entities", ())) or None,
        description=fields["description"],
    )


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
        "outcomeDesc": row.description,
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
