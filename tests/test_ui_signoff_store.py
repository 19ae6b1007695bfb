"""Sign-offs in the store, on SQLite and PostgreSQL: kept with their audit row in one
transaction, read back oldest first, refused for a screening that does not exist, and never
touching the screening they judge."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy.exc import IntegrityError

from app.store import audit
from app.store.database import Store, StoredAuditEvent, StoredSignoff
from tests.test_storage import as_utc, screening


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    yield opened
    opened.close()


def _signoff(screening_id: str, decision: str, at: datetime) -> StoredSignoff:
    items = [{"key": "I1.sle#1", "criterion": "I1.sle", "item": "x", "decision": "holds"}]
    return StoredSignoff(
        id=str(uuid.uuid4()),
        screening_id=screening_id,
        decision=decision,
        note="≥ 18 years — checked ✓",
        items=orjson.dumps(items),
        signed_by="sub-1",
        signed_by_name="Dr Investigator",
        signed_at=at,
    )


def _event(screening_id: str) -> StoredAuditEvent:
    return audit.event(
        action="C",
        interaction="signoff",
        outcome="0",
        agent="ui:sub-1",
        description="investigator sign-off",
        patient_ref="Patient/p1",
        entities=(f"GuidanceResponse/{screening_id}",),
    )


def test_sign_offs_read_back_oldest_first_beside_an_unchanged_screening(store: Store) -> None:
    store.save([screening("gr-1")])
    issued = store.guidance("gr-1")
    first = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    store.save_signoff(_signoff("gr-1", "not-eligible", first + timedelta(hours=1)), _event("gr-1"))
    store.save_signoff(_signoff("gr-1", "eligible", first), _event("gr-1"))
    rows = store.signoffs_for("gr-1")
    assert [(r.decision, as_utc(r.signed_at)) for r in rows] == [
        ("eligible", first),
        ("not-eligible", first + timedelta(hours=1)),
    ]
    assert rows[0].note == "≥ 18 years — checked ✓"
    assert orjson.loads(rows[0].items)[0]["decision"] == "holds"
    assert store.guidance("gr-1") == issued
    total, events = store.audit_events("Patient/p1", 0, 10)
    assert total == 2 and {e.interaction for e in events} == {"signoff"}


def test_a_sign_off_of_an_unknown_screening_is_refused_with_its_audit_row(store: Store) -> None:
    with pytest.raises(IntegrityError):
        store.save_signoff(_signoff("gr-none", "eligible", datetime.now(UTC)), _event("gr-none"))
    assert store.signoffs_for("gr-none") == []
    assert store.audit_events("Patient/p1", 0, 10)[0] == 0  # one transaction: neither kept
