"""The search parameters of kept screenings (GuidanceResponse) and of the audit trail
(AuditEvent), as SQL over the store's tables: each declared parameter becomes a condition, so
``total`` and paging stay exact."""

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, false, func, literal, not_, or_, true
from sqlalchemy.orm import Mapped
from sqlmodel import Session, col, select

from app.api.search import (
    Param,
    Search,
    SearchSpec,
    date_range,
    reference,
    split,
    standard,
    token,
)
from app.core.errors import InvalidInput
from app.store.database import ANY_TENANT, Store, StoredAuditEvent, StoredScreening

_STATUS_SYSTEM = "http://hl7.org/fhir/guidance-response-status"
_EVENT_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_ID = Param("_id", "token", "Logical id of the resource", standard("Resource", "id"))

GUIDANCE = SearchSpec(
    resource="GuidanceResponse",
    params=(
        _ID,
        Param(
            "identifier",
            "token",
            "Business identifier (urn:ietf:rfc:3986|urn:uuid:{id})",
            standard("GuidanceResponse", "identifier"),
        ),
        Param(
            "patient",
            "reference",
            "The patient screened (bare id or Patient/{id})",
            standard("GuidanceResponse", "patient"),
            target="Patient",
        ),
        Param(
            "subject",
            "reference",
            "The patient screened (bare id or Patient/{id})",
            standard("GuidanceResponse", "subject"),
            target="Patient",
        ),
        Param(
            "request",
            "token",
            "requestIdentifier (the service issues none, so this matches nothing it stored)",
            standard("GuidanceResponse", "request"),
        ),
        Param("status", "token", "success or data-required (GuidanceResponse.status)"),
        Param(
            "module",
            "uri",
            "The trial's PlanDefinition canonical (moduleCanonical), with or without |version",
        ),
    ),
    sorts=("date", "_lastUpdated"),
    default_sort="-date",
    default_count=20,
    max_count=100,
    summary=frozenset(
        {"identifier", "requestIdentifier", "moduleCanonical", "moduleUri", "status"}
        | {"moduleCodeableConcept", "implicitRules"}
    ),
    mandatory=frozenset({"moduleCanonical", "status"}),
    note="One of patient, subject, _id or identifier is required: screenings are not listed "
    "across patients.",
)

AUDIT = SearchSpec(
    resource="AuditEvent",
    params=(
        _ID,
        Param(
            "patient",
            "reference",
            "The patient whose data was accessed (bare id or Patient/{id})",
            standard("AuditEvent", "patient"),
            target="Patient",
        ),
        Param(
            "date",
            "date",
            "When the event was recorded (eq, ne, lt, le, gt, ge)",
            standard("AuditEvent", "date"),
        ),
        Param(
            "type",
            "token",
            "Event type (every event here is audit-event-type|rest)",
            standard("AuditEvent", "type"),
        ),
        Param(
            "agent",
            "reference",
            "Who acted: the client id (agent.who.identifier.value); :identifier takes system|value",
            standard("AuditEvent", "agent"),
            modifiers=frozenset({"identifier"}),
        ),
        Param(
            "entity",
            "reference",
            "A resource the event touched (Type/id)",
            standard("AuditEvent", "entity"),
        ),
    ),
    sorts=("date", "_lastUpdated"),
    default_sort="-date",
    default_count=50,
    max_count=200,
    summary=frozenset(
        {"type", "subtype", "action", "period", "recorded", "outcome", "outcomeDesc"}
        | {"purposeOfEvent", "agent", "source", "entity", "implicitRules"}
    ),
    mandatory=frozenset({"type", "recorded", "agent", "source"}),
)


def searched_patient(search: Search, spec: SearchSpec) -> str | None:
    """The one patient a search is about (for its audit row), if it names exactly one."""
    for name in ("patient", "subject"):
        param = spec.param(name)
        for _, values in search.values(name):
            if param is not None and len(values) == 1:
                return reference(values[0], param)
    return None


def find_screenings(
    store: Store, search: Search, patient: str | None = None, tenant: str | None = ANY_TENANT
) -> tuple[int, list[bytes]]:
    """(total, the page of stored GuidanceResponses) matching the search; of ``patient`` only
    when given (a request confined to one patient), of ``tenant``'s only unless it is
    :data:`ANY_TENANT` (None: the screenings made without a tenant)."""
    named = any(search.values(n) for n in ("patient", "subject", "_id", "identifier"))
    if not named and patient is None:
        raise InvalidInput(
            "Search screenings by patient (or subject), _id or identifier: they are not listed "
            "across patients.",
            expression="patient",
        )
    row = StoredScreening
    conditions: list[ColumnElement[bool]] = []
    if patient is not None:
        conditions.append(col(row.patient_ref) == patient)
    if tenant != ANY_TENANT:
        conditions.append(
            col(row.tenant) == tenant if tenant is not None else col(row.tenant).is_(None)
        )
    for name, alternatives, _ in _each(search):
        if name == "_id":
            conditions.append(col(row.id).in_(alternatives))
        elif name == "identifier":
            conditions.append(or_(*(_identifier(v) for v in alternatives)))
        elif name in ("patient", "subject"):
            param = GUIDANCE.param(name)
            assert param is not None
            refs = [reference(v, param) for v in alternatives]
            conditions.append(col(row.patient_ref).in_(refs))
        elif name == "request":
            conditions.append(false())  # no stored GuidanceResponse has a requestIdentifier
        elif name == "status":
            conditions.append(or_(*(_status(v) for v in alternatives)))
        elif name == "module":
            conditions.append(or_(*(_module(v) for v in alternatives)))
    total, rows = _page(store, search, row, conditions, col(row.created))
    return total, [r.guidance for r in rows]


def find_audit_events(
    store: Store, search: Search, client_system: str, patient: str | None = None
) -> tuple[int, list[StoredAuditEvent]]:
    """(total, the page of audit events) matching the search; about ``patient`` only when
    given (a request confined to one patient)."""
    row = StoredAuditEvent
    conditions: list[ColumnElement[bool]] = []
    if patient is not None:
        conditions.append(col(row.patient_ref) == patient)
    for name, alternatives, modifier in _each(search):
        if name == "_id":
            conditions.append(col(row.id).in_(alternatives))
        elif name == "patient":
            param = AUDIT.param(name)
            assert param is not None
            conditions.append(col(row.patient_ref).in_([reference(v, param) for v in alternatives]))
        elif name == "date":
            conditions.append(or_(*(_recorded(v) for v in alternatives)))
        elif name == "type":
            conditions.append(or_(*(_event_type(v) for v in alternatives)))
        elif name == "agent":
            agents = [_agent(v, modifier, client_system) for v in alternatives]
            conditions.append(col(row.agent).in_([a for a in agents if a is not None]))
        elif name == "entity":
            param = AUDIT.param(name)
            assert param is not None
            conditions.append(or_(*(_entity(reference(v, param)) for v in alternatives)))
    return _page(store, search, row, conditions, col(row.recorded))


_Row = TypeVar("_Row", StoredScreening, StoredAuditEvent)


def _page(
    store: Store,
    search: Search,
    row: type[_Row],
    conditions: list[ColumnElement[bool]],
    when: Mapped[datetime],
) -> tuple[int, list[_Row]]:
    """(total, the requested page) of the rows matching every condition, by ``when`` in the
    search's sort direction (ties broken by id, so pages never overlap)."""
    order = when.desc() if search.sort.startswith("-") else when.asc()
    query = select(row).where(and_(true(), *conditions))
    with Session(store.engine) as session:
        total = session.exec(select(func.count()).select_from(query.subquery())).one()
        if search.total_only:
            return total, []
        page = query.order_by(order, col(row.id)).offset(search.offset).limit(search.count)
        return total, list(session.exec(page).all())


def _each(search: Search) -> list[tuple[str, list[str], str | None]]:
    return [(name, split(value), modifier) for name, modifier, value in search.filters]


def _identifier(value: str) -> ColumnElement[bool]:
    system, code = token(value)
    if system not in (None, "urn:ietf:rfc:3986") or code is None:
        return false()
    return col(StoredScreening.id) == code.removeprefix("urn:uuid:")


def _status(value: str) -> ColumnElement[bool]:
    system, code = token(value)
    if system not in (None, _STATUS_SYSTEM):
        return false()
    if code == "data-required":
        return col(StoredScreening.eligibility) == "needs-data"
    if code == "success":
        return col(StoredScreening.eligibility) != "needs-data"
    return false()  # failure, in-progress, ...: no kept screening has them


def _module(value: str) -> ColumnElement[bool]:
    canonical, _, version = value.partition("|")
    trial = canonical.rstrip("/").rsplit("/", 1)[-1]
    condition = col(StoredScreening.trial_id) == trial
    if version:
        condition = and_(condition, col(StoredScreening.criteria_version) == version)
    return condition


def _recorded(value: str) -> ColumnElement[bool]:
    span = date_range(value, "date")
    recorded = col(StoredAuditEvent.recorded)
    conditions: dict[str, Any] = {
        "eq": and_(recorded >= span.start, recorded < span.end),
        "ne": not_(and_(recorded >= span.start, recorded < span.end)),
        "lt": recorded < span.start,
        "le": recorded < span.end,
        "gt": recorded >= span.end,
        "ge": recorded >= span.start,
    }
    condition: ColumnElement[bool] = conditions[span.prefix]
    return condition


def _event_type(value: str) -> ColumnElement[bool]:
    system, code = token(value)
    return true() if system in (None, _EVENT_TYPE_SYSTEM) and code == "rest" else false()


def _agent(value: str, modifier: str | None, client_system: str) -> str | None:
    if modifier == "identifier":
        system, code = token(value)
        return code if system in (None, client_system) else None
    return value


def _entity(ref: str) -> ColumnElement[bool]:
    escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    padded = literal(" ") + func.coalesce(col(StoredAuditEvent.entity_ref), "") + literal(" ")
    return or_(
        col(StoredAuditEvent.patient_ref) == ref,
        padded.like(f"% {escaped} %", escape="\\"),
    )
