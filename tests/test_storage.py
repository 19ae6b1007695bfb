"""The store on both databases it runs on: SQLite and a real PostgreSQL (tests/postgres.py).

Every test gets a fresh, empty database through the `store_url` fixture (conftest.py), once per
backend. The crash tests SIGKILL a child process that is writing a large `save` and check that
the store holds none of it afterwards: one transaction per call, whatever happens to the writer.
"""

import asyncio
import json
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, make_url, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, select

from app.store.database import NewScreening, Store, StoredFeedback, StoredScreening
from tests import postgres

REPO_ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 120.0

# The crash tests' save: 2,000 screenings in one call. Each GuidanceResponse carries 30 kB of
# narrative so that writing them (one executemany, then COMMIT) takes long enough for a kill
# 50 ms into it to land mid-write: about 0.2 s on SQLite and 0.6 s on PostgreSQL here.
CRASH_ROWS = 2000
CRASH_PADDING = 30_000
KILL_AFTER_S = 0.05


def screening(screening_id: str, *, card_uuid: str | None = None) -> NewScreening:
    guidance: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "id": screening_id,
        "status": "success",
        "subject": {"reference": "Patient/p1"},
        "text": {"status": "generated", "div": "<div>Eligible.</div>"},
        "note": [{"text": "≥ 18 years, eGFR 45 mL/min/1.73m² — ✓"}],
    }
    return NewScreening(
        guidance=guidance,
        trial_id="NCT00000001",
        criteria_version="1.0.0",
        as_of=date(2026, 11, 1),
        patient_ref="Patient/p1",
        eligibility="eligible",
        record_digest="0" * 64,
        requested_by="test",
        card_uuid=card_uuid,
    )


def feedback(screening_id: str, outcome: str = "accepted") -> StoredFeedback:
    return StoredFeedback(
        screening_id=screening_id,
        card_uuid="card-1",
        outcome=outcome,
        override_reason=b'{"code": "patient-declined"}' if outcome == "overridden" else None,
        outcome_timestamp=datetime(2026, 11, 1, 12, 30, 15, 250000, tzinfo=UTC),
        received=datetime(2026, 11, 1, 12, 30, 16, tzinfo=UTC),
    )


def as_utc(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back (stored as UTC), PostgreSQL aware ones."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def stored_guidance(store: Store, screening_id: str) -> Any:
    raw = store.guidance(screening_id)
    assert raw is not None, f"{screening_id} is not stored"
    return json.loads(raw)


def count_screenings(store: Store) -> int:
    with Session(store.engine) as session:
        return session.exec(select(func.count()).select_from(StoredScreening)).one()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store(store_url)
    yield opened
    opened.close()


# --- Screenings ---------------------------------------------------------------------------------


def test_a_saved_screening_reads_back_as_saved(store: Store) -> None:
    saved = screening("gr-1")
    store.save([saved])

    raw = store.guidance("gr-1")
    assert isinstance(raw, bytes)
    assert json.loads(raw) == saved.guidance
    assert store.guidance("gr-unknown") is None


def test_screenings_saved_in_one_call_are_all_stored(store: Store) -> None:
    batch = [screening(f"gr-{n}") for n in range(3)]
    store.save(batch)

    for saved in batch:
        assert stored_guidance(store, saved.guidance["id"]) == saved.guidance
    assert count_screenings(store) == 3


def test_a_save_that_fails_part_way_stores_none_of_it(store: Store) -> None:
    first, second = screening("gr-1"), screening("gr-2")
    duplicate = screening("gr-1")
    duplicate.guidance["status"] = "failure"

    with pytest.raises(IntegrityError):
        store.save([first, second, duplicate])

    assert store.guidance("gr-1") is None
    assert store.guidance("gr-2") is None
    assert count_screenings(store) == 0
    store.save([first, second])  # the failed call left nothing behind that gets in the way
    assert count_screenings(store) == 2


def test_a_save_clashing_with_a_stored_screening_leaves_it_untouched(store: Store) -> None:
    original = screening("gr-1")
    store.save([original])
    clash = screening("gr-1")
    clash.guidance["status"] = "failure"

    with pytest.raises(IntegrityError):
        store.save([screening("gr-2"), clash])

    assert stored_guidance(store, "gr-1") == original.guidance
    assert store.guidance("gr-2") is None


def test_data_survives_reopening_the_store(store_url: str) -> None:
    first = Store(store_url)
    saved = screening("gr-1", card_uuid="card-1")
    first.save([saved])
    first.save_feedback([feedback("gr-1")])
    first.close()

    reopened = Store(store_url)  # migrations already at head: nothing to do
    try:
        assert stored_guidance(reopened, "gr-1") == saved.guidance
        assert reopened.screening_for_card("card-1") == "gr-1"
        assert [f.outcome for f in reopened.feedback_for("gr-1")] == ["accepted"]
    finally:
        reopened.close()


# --- CDS Hooks feedback -------------------------------------------------------------------------


def test_feedback_is_linked_to_its_screening(store: Store) -> None:
    store.save([screening("gr-1", card_uuid="card-1"), screening("gr-2", card_uuid="card-2")])
    store.save_feedback([feedback("gr-1"), feedback("gr-1", "overridden")])

    assert store.screening_for_card("card-1") == "gr-1"
    assert store.screening_for_card("card-2") == "gr-2"
    assert store.screening_for_card("card-unknown") is None

    rows = sorted(store.feedback_for("gr-1"), key=lambda row: row.outcome)
    assert [(row.screening_id, row.outcome) for row in rows] == [
        ("gr-1", "accepted"),
        ("gr-1", "overridden"),
    ]
    assert rows[0].override_reason is None
    assert rows[1].override_reason == b'{"code": "patient-declined"}'
    expected = feedback("gr-1")
    for row in rows:
        assert row.id is not None
        assert as_utc(row.outcome_timestamp) == expected.outcome_timestamp
        assert as_utc(row.received) == expected.received
    assert store.feedback_for("gr-2") == []


def test_feedback_for_an_unknown_screening_is_refused(store: Store) -> None:
    store.save([screening("gr-1", card_uuid="card-1")])

    with pytest.raises(IntegrityError):
        store.save_feedback([feedback("gr-1"), feedback("gr-unknown")])

    assert store.feedback_for("gr-unknown") == []
    assert store.feedback_for("gr-1") == []  # the whole call was refused


# --- Readiness ----------------------------------------------------------------------------------


def test_ping_answers_while_the_database_is_there(store: Store, store_url: str) -> None:
    assert store.ping() is True
    if make_url(store_url).get_backend_name() == "postgresql":
        postgres.drop_database(store_url)  # closes the store's pooled connection too
    else:
        store.close()
        database = Path(make_url(store_url).database or "")
        for path in (database, *database.parent.glob(f"{database.name}-*")):
            path.unlink()
        database.mkdir()  # SQLite cannot open a directory as its database
    assert store.ping() is False


def test_an_unreachable_postgresql_server_is_not_ready() -> None:
    url = "postgresql+psycopg://x@127.0.0.1:1/none"
    started = time.monotonic()
    try:
        store = Store(url)
    except OperationalError:
        # Opening a store migrates its database, so it cannot open at all.
        assert time.monotonic() - started < 10
        return
    try:
        assert store.ping() is False
    finally:
        store.close()


# --- A writer killed mid-transaction ------------------------------------------------------------

# The child opens the store, prints "saving" just before its one big `save`, "writing" just before
# the INSERT goes to the database and "written" once the database has all the rows (not yet
# committed). With "pause" it then sleeps inside the transaction until it is killed.
CHILD = """
import sys, time
from datetime import date

sys.path.insert(0, sys.argv[1])
from sqlalchemy import event
from app.store.database import NewScreening, Store

url, rows, padding, mode = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
store = Store(url)
screenings = [
    NewScreening(
        guidance={"resourceType": "GuidanceResponse", "id": f"crash-{n}", "text": "x" * padding},
        trial_id="NCT00000001",
        criteria_version="1.0.0",
        as_of=date(2026, 11, 1),
        patient_ref=f"Patient/p{n}",
        eligibility="eligible",
        record_digest="0" * 64,
        requested_by="crash-test",
    )
    for n in range(rows)
]

def writing(conn, cursor, statement, parameters, context, executemany):
    if statement.startswith("INSERT INTO screening"):
        print("writing", flush=True)

def written(conn, cursor, statement, parameters, context, executemany):
    if statement.startswith("INSERT INTO screening"):
        print("written", flush=True)
        if mode == "pause":
            time.sleep(600)

event.listen(store.engine, "before_cursor_execute", writing)
event.listen(store.engine, "after_cursor_execute", written)
print("saving", flush=True)
store.save(screenings)
print("saved", flush=True)
"""


class Child:
    """The writer process, with its output lines read on a thread (so waits are bounded)."""

    def __init__(self, url: str, mode: str, stderr_path: Path) -> None:
        command = [sys.executable, "-c", CHILD, str(REPO_ROOT), url]
        command += [str(CRASH_ROWS), str(CRASH_PADDING), mode]
        self.stderr_path = stderr_path
        with stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.decode().strip())
        self.lines.put(None)

    def expect(self, wanted: str, timeout: float = CHILD_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"the writer did not print {wanted!r} in {timeout} s:\n{self.stderr()}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"the writer ended before printing {wanted!r}:\n{self.stderr()}"
                )
            if line == wanted:
                return

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def kill(self) -> int:
        self.process.kill()  # SIGKILL: no rollback, no cleanup, sockets and locks just vanish
        return self.process.wait(timeout=CHILD_TIMEOUT_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill()


def write_in_progress(url: str) -> bool:
    """Whether another connection holds an open transaction that has written to the database."""
    if make_url(url).get_backend_name() == "postgresql":
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                writers = connection.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
                    )
                ).scalar_one()
        finally:
            engine.dispose()
        return bool(writers)
    return sqlite_write_locked(Path(make_url(url).database or ""))


def sqlite_write_locked(database: Path) -> bool:
    probe = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")  # SQLite has one writer at a time
    except sqlite3.OperationalError as error:
        if "locked" in str(error):
            return True
        raise
    else:
        probe.execute("ROLLBACK")
        return False
    finally:
        probe.close()


def wait_until_no_writer(url: str, timeout: float = 10.0) -> None:
    """PostgreSQL ends a killed client's transaction once it sees the connection close."""
    deadline = time.monotonic() + timeout
    while write_in_progress(url):
        assert time.monotonic() < deadline, f"the killed writer's transaction lasted {timeout} s"
        time.sleep(0.02)


def stored_after_kill(store: Store, url: str) -> int:
    """How many of the killed writer's screenings are stored: all or nothing, never part."""
    wait_until_no_writer(url)
    count = count_screenings(store)
    assert count in {0, CRASH_ROWS}, f"{count} of {CRASH_ROWS} rows: a partial transaction"
    return count


def assert_store_usable_after_kill(store: Store, url: str) -> None:
    if make_url(url).get_backend_name() == "sqlite":
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar_one() == "ok"
    # Nothing the killed writer held (locks, a half-written WAL) gets in the way of a new save.
    store.save([screening("crash-0"), screening("after-crash")])
    assert count_screenings(store) == 2


def test_a_writer_killed_inside_its_transaction_stores_nothing(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    """Killed after the database has every row of the save, before COMMIT: deterministic."""
    child = Child(store_url, "pause", tmp_path / "writer.stderr")
    try:
        child.expect("written")
        assert write_in_progress(store_url), "the writer's transaction should be open"
        assert child.kill() == -signal.SIGKILL
    finally:
        child.stop()
    assert stored_after_kill(store, store_url) == 0, "killed before COMMIT, yet stored"
    assert_store_usable_after_kill(store, store_url)


def test_a_writer_killed_while_writing_stores_nothing(
    store: Store, store_url: str, tmp_path: Path
) -> None:
    """Killed 50 ms into writing 2,000 screenings (60 MB) in one call, at full speed."""
    child = Child(store_url, "run", tmp_path / "writer.stderr")
    try:
        child.expect("writing")
        time.sleep(KILL_AFTER_S)
        in_progress = write_in_progress(store_url)
        returncode = child.kill()
    finally:
        child.stop()
    stored = stored_after_kill(store, store_url)
    assert in_progress, (
        f"the save was over within {KILL_AFTER_S * 1000:.0f} ms of starting to write: "
        "make CRASH_PADDING bigger so that the kill lands mid-write"
    )
    assert returncode == -signal.SIGKILL
    assert stored == 0, "killed mid-write, before COMMIT, yet stored"
    assert_store_usable_after_kill(store, store_url)


# --- state shared by workers and replicas (issue 12) ---------------------------------------------


def test_a_token_bucket_allows_its_burst_then_refills(store: Store) -> None:
    now = 1_000_000.0
    assert [store.take_token("k", 1.0, 3.0, now) for _ in range(3)] == [None, None, None]
    wait = store.take_token("k", 1.0, 3.0, now)
    assert wait is not None and 0.99 <= wait <= 1.0
    assert store.take_token("other", 1.0, 3.0, now) is None  # buckets are per key
    assert store.take_token("k", 1.0, 3.0, now + 1.0) is None  # one token back after 1 s
    assert store.take_token("k", 1.0, 3.0, now + 1.0) is not None
    store.forget_full_buckets(now + 100.0, idle=10.0)
    assert [store.take_token("k", 1.0, 3.0, now + 100.0) for _ in range(3)] == [None] * 3


def test_a_token_id_is_used_once_until_it_expires(store: Store) -> None:
    assert store.first_use("iss|jti-1", expires=100.0, now=50.0)
    assert not store.first_use("iss|jti-1", expires=100.0, now=60.0)
    assert store.first_use("iss|jti-2", expires=100.0, now=60.0)
    # Once expired it is forgotten (the token itself is refused for its exp by then).
    assert store.first_use("iss|jti-1", expires=300.0, now=200.0)


def test_refusals_in_one_minute_share_one_audit_row(store: Store) -> None:
    from app.store import audit

    for _ in range(5):
        asyncio.run(audit.refused(store, agent="unauthenticated@1.2.3.4", description="401 on X"))
    asyncio.run(audit.refused(store, agent="unauthenticated@5.6.7.8", description="401 on X"))
    _, rows = store.audit_events(None, 0, 10)
    counts = sorted(r.occurrences for r in rows)
    assert counts in ([1, 5], [1, 1, 4], [1, 2, 3], [1, 1, 1, 3], [1, 1, 2, 2])  # minute edges
    assert sum(counts) == 6
