"""Where screenings, CDS Hooks feedback and the audit trail are kept: SQLModel tables on the
database named by ``TRIALSCREEN_DATABASE_URL`` (an SQLite file by default, PostgreSQL in
production). The schema is Alembic's (``app/store/migrations``), brought up to date when a
Store opens.

Calls are synchronous (SQLAlchemy sessions) and short; the API runs them in a worker thread.
Each write is one transaction: a screening is stored whole or not at all.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import DateTime, Engine, Table, case, delete, event, func, literal, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, Session, SQLModel, col, create_engine, select

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_WHEN = DateTime(timezone=True)


class StoredScreening(SQLModel, table=True):
    __tablename__ = "screening"

    id: str = Field(primary_key=True)
    """The GuidanceResponse id."""
    trial_id: str = Field(index=True)
    criteria_version: str
    as_of: date
    patient_ref: str = Field(index=True)
    eligibility: str
    record_digest: str
    """SHA-256 of the record as screened (canonical JSON), to tell re-screenings apart."""
    requested_by: str
    created: datetime = Field(sa_type=_WHEN, index=True)
    card_uuid: str | None = Field(default=None, index=True)
    guidance: bytes
    """The GuidanceResponse as issued (JSON)."""
    tenant: str | None = Field(default=None, index=True)
    """The tenant of the client that asked (a CDS client's, a token's tenant claim); None for
    screenings asked for without one."""


class StoredFeedback(SQLModel, table=True):
    __tablename__ = "cds_feedback"

    id: int | None = Field(default=None, primary_key=True)
    screening_id: str = Field(foreign_key="screening.id", index=True)
    card_uuid: str
    outcome: str
    override_reason: bytes | None = None
    outcome_timestamp: datetime = Field(sa_type=_WHEN)
    received: datetime = Field(sa_type=_WHEN)


class StoredAuditEvent(SQLModel, table=True):
    """One access to patient data: who, which patient, what action, outcome, when. No PHI
    beyond the patient reference, no tokens, no bodies."""

    __tablename__ = "audit_event"

    id: str = Field(primary_key=True)
    recorded: datetime = Field(sa_type=_WHEN, index=True)
    action: str = Field(max_length=1)
    """FHIR AuditEvent.action: C create, R read, E execute."""
    interaction: str
    """What was done: screen, cds-hook, cds-feedback, read, search, audit-read."""
    outcome: str = Field(max_length=2)
    """FHIR AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure."""
    agent: str = Field(index=True)
    patient_ref: str | None = Field(default=None, index=True)
    entity_ref: str | None = None
    description: str
    occurrences: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    """How many events the row stands for: refused requests are counted per source per minute."""


class PendingScreening(SQLModel, table=True):
    """A screening a CDS card already links to, still being fetched in the background. Kept in
    the database so that, if the worker dies, any replica can answer the link with a failure
    instead of leaving it unanswered for ever."""

    __tablename__ = "pending_screening"

    id: str = Field(primary_key=True)
    """The GuidanceResponse id the card links to."""
    trial_id: str
    criteria_version: str
    module: str
    """The PlanDefinition canonical (with |version) the screening is against."""
    as_of: date
    patient_ref: str
    requested_by: str
    card_uuid: str | None = None
    tenant: str | None = None
    expires: float = Field(index=True)
    """Wall-clock seconds after which, still pending, it counts as interrupted."""


class CardQuiet(SQLModel, table=True):
    """A trial's CDS card quieted for one patient after an override such as
    ``patient-declined`` (issue 15): no card for that trial and patient until ``until``. The
    screenings are still made and stored; only the card is not shown."""

    __tablename__ = "card_quiet"

    tenant: str = Field(primary_key=True)
    """The CDS client's tenant (app/cds/service.tenant_of): one EHR's override quiets only its
    own cards."""
    patient_ref: str = Field(primary_key=True)
    trial_id: str = Field(primary_key=True)
    until: datetime = Field(sa_type=_WHEN, index=True)
    reason: str
    """The override reason's code."""
    screening_id: str
    """The screening whose card was overridden."""
    created: datetime = Field(sa_type=_WHEN)


class RateBucket(SQLModel, table=True):
    """A token bucket of the rate limiter, shared by every worker and replica."""

    __tablename__ = "rate_bucket"

    key: str = Field(primary_key=True)
    tokens: float
    updated: float
    """Wall-clock seconds (the epoch) of the last token taken."""


class SeenToken(SQLModel, table=True):
    """A token id (CDS Hooks ``jti``) already used, kept until the token expires."""

    __tablename__ = "seen_token"

    key: str = Field(primary_key=True)
    expires: float = Field(index=True)


class StoredSignoff(SQLModel, table=True):
    """An investigator's sign-off on a stored screening (migration 0004): inserted, never
    updated; the screening it judges is never edited."""

    __tablename__ = "signoff"

    id: str = Field(primary_key=True)
    screening_id: str = Field(foreign_key="screening.id", index=True)
    decision: str
    """eligible / not-eligible."""
    note: str
    items: bytes
    """JSON list of ``{"criterion", "item", "decision", "note"}``: one per review item."""
    signed_by: str
    """The investigator's subject (their identity at the sign-in provider)."""
    signed_by_name: str
    signed_at: datetime = Field(sa_type=_WHEN)


@dataclass(frozen=True, slots=True)
class NewScreening:
    guidance: dict[str, Any]
    trial_id: str
    criteria_version: str
    as_of: date
    patient_ref: str
    eligibility: str
    record_digest: str
    requested_by: str
    card_uuid: str | None = None
    tenant: str | None = None


ANY_TENANT = "*"
"""For :meth:`Store.screenings_for` and app/api/history_search.find_screenings: do not filter
by tenant."""


class Store:
    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False} if url.startswith("sqlite") else {}
        # hide_parameters: a failing statement's traceback (logged by the server) must not carry
        # the bound values, which are patient references and ids.
        self.engine: Engine = create_engine(url, connect_args=connect_args, hide_parameters=True)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.migrate()

    def migrate(self) -> None:
        """Bring the schema to the newest migration (idempotent)."""
        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Replicas starting together: one migrates, the others wait, then find it done.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7321504)")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def save(
        self,
        screenings: list[NewScreening],
        audit: "StoredAuditEvent | None" = None,
        resolves: tuple[str, ...] = (),
    ) -> None:
        """The screenings and the audit row recording them: all in one transaction or none.
        ``resolves``: pending screenings these complete (their pending rows are dropped)."""
        now = datetime.now(UTC)
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            if resolves:
                session.execute(
                    delete(PendingScreening).where(col(PendingScreening.id).in_(resolves))
                )
            if audit is not None:
                session.add(audit)
            for s in screenings:
                session.add(_stored(s, now))

    def guidance(self, screening_id: str) -> bytes | None:
        row = self.screening(screening_id)
        return None if row is None else row.guidance

    def screening(self, screening_id: str) -> StoredScreening | None:
        with Session(self.engine) as session:
            return session.get(StoredScreening, screening_id)

    def screening_for_card(self, card_uuid: str) -> str | None:
        with Session(self.engine) as session:
            query = select(StoredScreening.id).where(StoredScreening.card_uuid == card_uuid)
            return session.exec(query).first()

    def card_screening(self, card_uuid: str) -> tuple[str, str] | None:
        """(screening id, who requested it) of the screening a CDS card was issued for."""
        with Session(self.engine) as session:
            query = select(StoredScreening.id, StoredScreening.requested_by).where(
                StoredScreening.card_uuid == card_uuid
            )
            row = session.exec(query).first()
            return None if row is None else (row[0], row[1])

    def screenings_for(
        self,
        patient_ref: str | None,
        trial_id: str | None,
        offset: int,
        count: int,
        tenant: str | None = ANY_TENANT,
    ) -> tuple[int, list[bytes]]:
        """(total, GuidanceResponses newest first) of the patient's screenings; of one tenant's
        only unless ``tenant`` is :data:`ANY_TENANT` (None: those made without a tenant)."""
        query = select(StoredScreening)
        if tenant != ANY_TENANT:
            query = query.where(StoredScreening.tenant == tenant)
        if patient_ref is not None:
            query = query.where(StoredScreening.patient_ref == patient_ref)
        if trial_id is not None:
            query = query.where(StoredScreening.trial_id == trial_id)
        with Session(self.engine) as session:
            total = session.exec(select(func.count()).select_from(query.subquery())).one()
            page = query.order_by(col(StoredScreening.created).desc(), col(StoredScreening.id))
            rows = session.exec(page.offset(offset).limit(count)).all()
            return total, [r.guidance for r in rows]

    def save_audit(self, item: StoredAuditEvent) -> None:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add(item)

    def audit_events(
        self, patient_ref: str | None, offset: int, count: int
    ) -> tuple[int, list[StoredAuditEvent]]:
        query = select(StoredAuditEvent)
        if patient_ref is not None:
            query = query.where(StoredAuditEvent.patient_ref == patient_ref)
        with Session(self.engine) as session:
            total = session.exec(select(func.count()).select_from(query.subquery())).one()
            page = query.order_by(col(StoredAuditEvent.recorded).desc(), col(StoredAuditEvent.id))
            return total, list(session.exec(page.offset(offset).limit(count)).all())

    def save_pending(self, items: list[PendingScreening]) -> None:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add_all(items)

    def fail_pending(
        self,
        now: float,
        failed: Callable[[PendingScreening], NewScreening],
        ids: tuple[str, ...] | None = None,
    ) -> int:
        """Store ``failed(row)`` for each pending screening that expired (or each of ``ids``)
        and drop its pending row, in one transaction; rows another replica is handling at the
        same moment are skipped. How many were failed."""
        query = select(PendingScreening)
        if ids is None:
            query = query.where(col(PendingScreening.expires) < now)
        else:
            query = query.where(col(PendingScreening.id).in_(ids))
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            rows = list(session.exec(query.with_for_update(skip_locked=True)).all())
            for row in rows:
                screening = failed(row)
                session.add(_stored(screening, datetime.now(UTC)))
                session.delete(row)
            return len(rows)

    def count_refusal(self, item: StoredAuditEvent) -> None:
        """Write a refusal's audit row, or add one to the row with the same id (the caller
        derives it from source and minute, so a flood updates one row)."""
        values = {c.name: getattr(item, c.name) for c in _table(StoredAuditEvent).columns}
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(StoredAuditEvent).values(values)
        statement = statement.on_conflict_do_update(
            index_elements=["id"],
            set_={"occurrences": _table(StoredAuditEvent).c.occurrences + 1},
        )
        with self.engine.begin() as connection:
            connection.execute(statement)

    def take_token(self, key: str, rate: float, burst: float, now: float) -> float | None:
        """Take one token from the bucket ``key`` (``rate`` per second, ``burst`` at most):
        None when taken, else the seconds until one is there. One statement decides, so two
        workers racing for the last token cannot both get it."""
        bucket = _table(RateBucket).c
        refilled = bucket.tokens + (literal(now) - bucket.updated) * rate
        available = case((refilled > burst, literal(burst)), else_=refilled)
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with self.engine.begin() as connection:
            # RETURNING, not rowcount: psycopg does not report rows of an insert that skipped
            # conflicts reliably.
            created = connection.execute(
                dialect.insert(RateBucket)
                .values(key=key, tokens=burst - 1, updated=now)
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(bucket.key)
            ).first()
            if created is not None:
                return None
            taken = connection.execute(
                update(RateBucket)
                .where(bucket.key == key, available >= 1)
                .values(tokens=available - 1, updated=now)
            )
            if taken.rowcount == 1:
                return None
            left = connection.execute(select(available).where(bucket.key == key)).scalar_one()
        return max(0.0, (1 - float(left)) / rate)

    def forget_full_buckets(self, now: float, idle: float) -> None:
        """Drop buckets untouched for ``idle`` seconds (they are full again)."""
        with self.engine.begin() as connection:
            connection.execute(delete(RateBucket).where(col(RateBucket.updated) < now - idle))

    def first_use(self, key: str, expires: float, now: float) -> bool:
        """Record the token id ``key`` as used until ``expires``; False if it was already used
        (by any worker or replica). Expired ids are dropped on the way."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with self.engine.begin() as connection:
            connection.execute(delete(SeenToken).where(col(SeenToken.expires) < now))
            inserted = connection.execute(
                dialect.insert(SeenToken)
                .values(key=key, expires=expires)
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(_table(SeenToken).c.key)
            ).first()
            return inserted is not None

    # --- issue 15: signed-out sessions, quieted cards ---------------------------------------

    def used(self, key: str, now: float) -> bool:
        """Whether the id ``key`` was recorded by :meth:`first_use` and has not expired yet (a
        signed-out session's id, app/ui/session.py)."""
        with Session(self.engine) as session:
            row = session.get(SeenToken, key)
            return row is not None and row.expires >= now

    def quiet(self, item: "CardQuiet") -> None:
        """Quiet a trial's card for a patient until ``item.until`` (a later override of the same
        card replaces the earlier one). One statement: two overrides arriving together from
        two workers cannot collide on the key."""
        values = {c.name: getattr(item, c.name) for c in _table(CardQuiet).columns}
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(CardQuiet).values(values)
        keys = ["tenant", "patient_ref", "trial_id"]
        statement = statement.on_conflict_do_update(
            index_elements=keys,
            set_={k: statement.excluded[k] for k in values if k not in keys},
        )
        with self.engine.begin() as connection:
            connection.execute(statement)

    def quieted(self, tenant: str, patient_ref: str, now: datetime) -> set[str]:
        """Trial ids whose card is quiet for this patient at ``now``."""
        query = select(CardQuiet.trial_id).where(
            CardQuiet.tenant == tenant,
            CardQuiet.patient_ref == patient_ref,
            col(CardQuiet.until) > now,
        )
        with Session(self.engine) as session:
            return set(session.exec(query).all())

    def screening_created(self, screening_id: str) -> tuple[datetime, str, str, str] | None:
        """(created, patient reference, trial id, tenant or "") of a stored screening."""
        row = self.screening(screening_id)
        if row is None:
            return None
        created = row.created if row.created.tzinfo else row.created.replace(tzinfo=UTC)
        return created, row.patient_ref, row.trial_id, row.tenant or ""

    def save_feedback(self, items: list[StoredFeedback]) -> None:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add_all(items)

    def feedback_for(self, screening_id: str) -> list[StoredFeedback]:
        with Session(self.engine) as session:
            query = select(StoredFeedback).where(StoredFeedback.screening_id == screening_id)
            return list(session.exec(query).all())

    def save_signoff(self, item: StoredSignoff, audit: StoredAuditEvent) -> None:
        """A sign-off and the audit row recording it, in one transaction."""
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add(audit)
            session.add(item)

    def signoffs_for(self, screening_id: str) -> list[StoredSignoff]:
        """The sign-offs of a screening, oldest first."""
        with Session(self.engine) as session:
            query = (
                select(StoredSignoff)
                .where(StoredSignoff.screening_id == screening_id)
                .order_by(col(StoredSignoff.signed_at), col(StoredSignoff.id))
            )
            return list(session.exec(query).all())

    def ping(self) -> bool:
        """Whether the database answers (readiness)."""
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        except Exception:
            return False
        return True

    def close(self) -> None:
        self.engine.dispose()


def _stored(s: NewScreening, now: datetime) -> StoredScreening:
    return StoredScreening(
        id=s.guidance["id"],
        trial_id=s.trial_id,
        criteria_version=s.criteria_version,
        as_of=s.as_of,
        patient_ref=s.patient_ref,
        eligibility=s.eligibility,
        record_digest=s.record_digest,
        requested_by=s.requested_by,
        created=now,
        card_uuid=s.card_uuid,
        guidance=orjson.dumps(s.guidance),
        tenant=s.tenant,
    )


def _table(model: type[SQLModel]) -> Table:
    return SQLModel.metadata.tables[str(model.__tablename__)]


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


# --- population runs (issue 14) ----------------------------------------------------------------


class PopulationRun(SQLModel, table=True):
    """A pre-screening run over a population: who, when, source, as-of, criteria versions,
    progress and outcome. ``trials``, ``criteria_versions`` and ``outcomes`` are JSON."""

    __tablename__ = "population_run"

    id: str = Field(primary_key=True)
    status: str = Field(index=True)
    """queued | running | completed | failed | cancelled"""
    trials: str
    criteria_versions: str
    as_of: date
    source: str
    who: str
    tenant: str | None = Field(default=None, index=True)
    created: datetime = Field(sa_type=_WHEN, index=True)
    finished: datetime | None = Field(default=None, sa_type=_WHEN)
    heartbeat: float
    """Wall-clock seconds of the last sign of life of the process running it."""
    patients_total: int | None = None
    patients_done: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    outcomes: str = Field(default="{}", sa_column_kwargs={"server_default": "{}"})
    errors: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    """Problems found in the input (listed in the run folder's errors.json)."""
    error: str | None = None
    """Why the run failed, when it did."""
    folder: str


_UNFINISHED = ("queued", "running")


def save_run(store: Store, run: PopulationRun) -> None:
    with Session(store.engine, expire_on_commit=False) as session, session.begin():
        session.add(run)


def update_run(store: Store, run_id: str, **values: Any) -> bool:
    """Set ``values`` on a run that is not finished yet; False when it already is (a finished
    run is never changed again: a cancel racing a completion leaves the first word)."""
    statement = (
        update(PopulationRun)
        .where(col(PopulationRun.id) == run_id)
        .where(col(PopulationRun.status).in_(_UNFINISHED))
        .values(**values)
    )
    with store.engine.begin() as connection:
        return bool(connection.execute(statement).rowcount)


def get_run(store: Store, run_id: str) -> PopulationRun | None:
    with Session(store.engine, expire_on_commit=False) as session:
        return session.get(PopulationRun, run_id)


def list_runs(
    store: Store, limit: int, tenant: str | None, every_tenant: bool
) -> list[PopulationRun]:
    query = select(PopulationRun)
    if not every_tenant:
        query = query.where(PopulationRun.tenant == tenant)
    with Session(store.engine, expire_on_commit=False) as session:
        rows = session.exec(query.order_by(col(PopulationRun.created).desc()).limit(limit))
        return list(rows.all())


def fail_stale_runs(store: Store, before: float, now: datetime) -> int:
    """Mark failed every unfinished run whose heartbeat stopped before ``before``."""
    statement = (
        update(PopulationRun)
        .where(col(PopulationRun.status).in_(_UNFINISHED))
        .where(col(PopulationRun.heartbeat) < before)
        .values(
            status="failed", finished=now, error="interrupted: the service stopped while it ran"
        )
    )
    with store.engine.begin() as connection:
        return int(connection.execute(statement).rowcount)
