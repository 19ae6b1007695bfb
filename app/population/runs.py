"""Population runs as the service keeps them: started in the background, stored in the database
(``population_run``: who, when, source, as-of, criteria versions, counts, status), their outputs
in ``<data_dir>/runs/<run id>/``. The API kept on ``app.state.population`` (the pages of issue 15
call it too): ``start``, ``get``, ``list``, ``cancel``, ``funnel``, ``candidates_csv_path``,
``screening``.

Sources: ``demo`` (the bundled demo patients written as NDJSON), a folder under one of the
configured ``population_roots`` (never any other server path), or the configured EHR's Bulk Data
export (``[base]/Group/{id}`` or ``[base]/Patient``). A run that a crash interrupts stops beating
its heartbeat; the next start of the service marks it failed.
"""

import asyncio
import builtins
import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from app.catalog.loader import Catalog
from app.catalog.trial import LoadedTrial
from app.core.errors import Forbidden, InvalidInput, NotFound, TrialscreenError
from app.core.settings import Settings
from app.population import bulk_export
from app.population.cohort import write_demo
from app.population.outputs import group_id
from app.population.patient_run import needed_data
from app.population.runner import Cancelled, RunReport, run_population
from app.store import audit
from app.store.audit import Outcome
from app.store.database import (
    PopulationRun,
    Store,
    fail_stale_runs,
    get_run,
    list_runs,
    save_run,
    update_run,
)

Json = dict[str, Any]
HEARTBEAT = 10.0
"""Seconds between two heartbeats of a running run."""
STALE = 6 * HEARTBEAT
"""A run whose heartbeat is older than this at start-up was interrupted."""
CANCEL_POLL = 0.25
"""Seconds between two looks at a run's cancel flag while its Bulk export runs."""
_T = TypeVar("_T")
_RUN_ID = re.compile(r"[a-f0-9]{12}")


@dataclass(frozen=True)
class RunSummary:
    id: str
    status: str
    """queued | running | completed | failed | cancelled"""
    trials: tuple[str, ...]
    as_of: date
    source: str
    created: datetime
    finished: datetime | None
    patients_total: int | None
    patients_done: int
    outcomes: dict[str, int]
    """result -> patients, summed over the run's trials."""
    error: str | None
    who: str
    outcomes_by_trial: dict[str, dict[str, int]] | None = None
    criteria_versions: dict[str, str] | None = None
    errors: int = 0
    """Problems found in the input (the run folder's errors.json lists them)."""
    tenant: str | None = None


def summary_of(row: PopulationRun) -> RunSummary:
    by_trial: dict[str, dict[str, int]] = orjson.loads(row.outcomes)
    totals: dict[str, int] = {}
    for outcomes in by_trial.values():
        for result, n in outcomes.items():
            totals[result] = totals.get(result, 0) + n
    created = row.created if row.created.tzinfo else row.created.replace(tzinfo=UTC)
    finished = row.finished
    if finished is not None and finished.tzinfo is None:
        finished = finished.replace(tzinfo=UTC)
    return RunSummary(
        id=row.id,
        status=row.status,
        trials=tuple(orjson.loads(row.trials)),
        as_of=row.as_of,
        source=row.source,
        created=created,
        finished=finished,
        patients_total=row.patients_total,
        patients_done=row.patients_done,
        outcomes=totals,
        error=row.error,
        who=row.who,
        outcomes_by_trial=by_trial,
        criteria_versions=orjson.loads(row.criteria_versions),
        errors=row.errors,
        tenant=row.tenant,
    )


class RunService:
    """Starts, tracks and cancels population runs; kept on ``app.state.population``."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalog: Catalog,
        runner: Callable[..., RunReport] = run_population,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.runner = runner
        self.root = settings.data_dir / "runs"
        self._cancel: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        failed = fail_stale_runs(store, time.time() - STALE, datetime.now(UTC))
        self.interrupted = failed

    # -- the contract's API -------------------------------------------------------------------

    def start(
        self,
        trials: builtins.list[str],
        as_of: date,
        source: str,
        who: str,
        tenant: str | None = None,
    ) -> RunSummary:
        loaded = self._trials(trials)
        kind, where = self.check_source(source)
        run_id = uuid.uuid4().hex[:12]
        folder = self.root / run_id
        folder.mkdir(parents=True, exist_ok=False)
        row = PopulationRun(
            id=run_id,
            status="queued",
            trials=orjson.dumps([t.id for t in loaded]).decode(),
            criteria_versions=orjson.dumps({t.id: t.spec.version for t in loaded}).decode(),
            as_of=as_of,
            source=source,
            who=who,
            tenant=tenant,
            created=datetime.now(UTC),
            heartbeat=time.time(),
            folder=str(folder),
        )
        save_run(self.store, row)
        cancel = self._cancel[run_id] = threading.Event()
        thread = threading.Thread(
            target=self._run,
            args=(run_id, loaded, as_of, kind, where, folder, who, cancel),
            name=f"population-run-{run_id}",
            daemon=True,
        )
        self._threads[run_id] = thread
        thread.start()
        return summary_of(row)

    def get(self, run_id: str) -> RunSummary | None:
        if not _RUN_ID.fullmatch(run_id):
            return None
        row = get_run(self.store, run_id)
        return None if row is None else summary_of(row)

    def list(
        self, limit: int = 50, tenant: str | None = None, every_tenant: bool = True
    ) -> builtins.list[RunSummary]:
        return [summary_of(r) for r in list_runs(self.store, limit, tenant, every_tenant)]

    def cancel(self, run_id: str) -> bool:
        """Stop a queued or running run (True), or say it had already ended (False)."""
        if self.get(run_id) is None:
            return False
        stopped = update_run(
            self.store, run_id, status="cancelled", finished=datetime.now(UTC), error="cancelled"
        )
        event = self._cancel.get(run_id)
        if event is not None:
            event.set()
        return stopped

    def funnel(self, run_id: str) -> builtins.list[Json]:
        return list(orjson.loads(self._output(run_id, "funnel.json").read_bytes()))

    def candidates_csv_path(self, run_id: str) -> Path:
        return self._output(run_id, "candidates.csv")

    def screening(self, run_id: str, trial: str, patient: str) -> Json | None:
        """That patient's GuidanceResponse for the trial (``patient``: id or Patient/id)."""
        ref = patient if patient.startswith("Patient/") else f"Patient/{patient}"
        module = f"/PlanDefinition/{trial}|".encode()
        needle = orjson.dumps({"reference": ref})
        with self._output(run_id, "screenings.ndjson").open("rb") as lines:
            for line in lines:
                if needle in line and module in line:
                    found = orjson.loads(line)
                    if found.get("subject", {}).get("reference") == ref:
                        return dict(found)
        return None

    def shutdown(self) -> None:
        """The service stops: its unfinished runs end as failed (their threads die with it)."""
        for run_id in list(self._cancel):
            update_run(
                self.store,
                run_id,
                status="failed",
                finished=datetime.now(UTC),
                error="interrupted: the service stopped while it ran",
            )
            self._cancel[run_id].set()

    # -- helpers for the REST edge ------------------------------------------------------------

    def output_path(self, run_id: str, name: str) -> Path:
        return self._output(run_id, name)

    def wait(self, run_id: str, timeout: float | None = None) -> None:
        """Until the run's thread ends (tests, shutdown)."""
        thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)

    def check_source(self, source: str) -> tuple[str, Any]:
        """("demo", None), ("folder", Path) or ("bulk", the export's scope: ``bulk_export.
        ExportScope``); InvalidInput or Forbidden for anything else."""
        if source == "demo":
            return "demo", None
        if re.match(r"https?://", source):
            # Only the configured EHR's [base]/Group/{id}, [base]/Patient or [base] (InvalidInput
            # for anything else): the export runs with its credentials.
            return "bulk", bulk_export.scope_of(self.settings, source)
        path = Path(source)
        if not path.is_absolute() or not self.settings.population_roots:
            raise Forbidden(
                "source must be 'demo', the configured EHR's Group or Patient URL, or a folder "
                "under a configured population root (TRIALSCREEN_POPULATION_ROOTS)."
            )
        resolved = path.resolve()
        for root in self.settings.population_roots:
            if resolved.is_relative_to(root.resolve()) and resolved != root.resolve().parent:
                if not resolved.is_dir():
                    raise InvalidInput(f"{source} is not a folder.")
                return "folder", resolved
        raise Forbidden("That folder is not under a configured population root.")

    # -- the run itself -----------------------------------------------------------------------

    def _trials(self, names: builtins.list[str]) -> builtins.list[LoadedTrial]:
        names = list(dict.fromkeys(names)) or list(self.catalog.trials)
        unknown = [n for n in names if n not in self.catalog.trials]
        if unknown:
            raise NotFound(f"No trial {', '.join(unknown)}.")
        return [self.catalog.trials[n] for n in names]

    def _output(self, run_id: str, name: str) -> Path:
        run = self.get(run_id)
        if run is None:
            raise NotFound(f"No population run {run_id!r}.")
        path = self.root / run_id / name
        if run.status != "completed" or not path.is_file():
            raise NotFound(f"Run {run_id} has no {name} (it is {run.status}).")
        return path

    def _run(
        self,
        run_id: str,
        trials: builtins.list[LoadedTrial],
        as_of: date,
        kind: str,
        where: Any,
        folder: Path,
        who: str,
        cancel: threading.Event,
    ) -> None:
        beating = threading.Event()

        def beat() -> None:
            while not beating.wait(HEARTBEAT):
                update_run(self.store, run_id, heartbeat=time.time())

        heart = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{run_id}")
        heart.start()
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if done == 0 or done == total or now - last >= 1.0:
                last = now
                update_run(
                    self.store,
                    run_id,
                    status="running",
                    patients_done=done,
                    patients_total=total,
                    heartbeat=time.time(),
                )

        try:
            update_run(self.store, run_id, status="running", heartbeat=time.time())
            source = self._prepare(kind, where, folder / "input", trials, cancel)
            report = self.runner(
                trials,
                as_of,
                source,
                folder,
                workers=self.settings.population_workers or None,
                settings=self.settings,
                progress=progress,
                cancelled=cancel.is_set,
                run_id=run_id,
            )
            ended = update_run(
                self.store,
                run_id,
                status="completed",
                finished=datetime.now(UTC),
                patients_done=report.patients,
                patients_total=report.patients_total,
                outcomes=orjson.dumps(report.outcomes).decode(),
                errors=len(report.errors),
                heartbeat=time.time(),
            )
            if ended:
                self._audit(who, run_id, trials, "0", f"pre-screened {report.patients} patients")
        except Cancelled:
            self._audit(who, run_id, trials, "4", "population run cancelled")
        except Exception as exc:  # the run fails; the service goes on
            message = exc.message if isinstance(exc, TrialscreenError) else _words(exc)
            update_run(
                self.store,
                run_id,
                status="failed",
                finished=datetime.now(UTC),
                error=message[:2000],
            )
            self._audit(who, run_id, trials, "8", f"population run failed: {message[:200]}")
        finally:
            beating.set()
            self._cancel.pop(run_id, None)

    def _prepare(
        self,
        kind: str,
        where: Any,
        dest: Path,
        trials: builtins.list[LoadedTrial],
        cancel: threading.Event,
    ) -> Path:
        if kind == "demo":
            return write_demo(dest)
        if kind == "folder":
            assert isinstance(where, Path)
            return where
        result = asyncio.run(
            _unless_cancelled(
                bulk_export.export_to_folder(
                    self.settings,
                    group_id=where.group_id,
                    system=where.system,
                    since=None,
                    types=needed_data(trials).resource_types,
                    dest=dest,
                ),
                cancel,
            )
        )
        if not result.complete:
            raise InvalidInput("The export is incomplete: " + "; ".join(result.problems))
        return dest

    def _audit(
        self, who: str, run_id: str, trials: builtins.list[LoadedTrial], outcome: Outcome, text: str
    ) -> None:
        entities = tuple(f"Group/{group_id(run_id, t.id)}" for t in trials)
        self.store.save_audit(
            audit.event(
                action="E",
                interaction="prescreen",
                outcome=outcome,
                agent=who,
                description=text,
                entities=entities,
            )
        )


async def _unless_cancelled(work: Coroutine[Any, Any, _T], cancel: threading.Event) -> _T:
    """``work``, cancelled as soon as ``cancel`` is set (checked every quarter second); then
    Cancelled. A cancelled export still DELETEs its job at the EHR on the way out."""
    task = asyncio.ensure_future(work)
    while not (await asyncio.wait({task}, timeout=CANCEL_POLL))[0]:
        if cancel.is_set():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise Cancelled
    return task.result()


def _words(exc: Exception) -> str:
    """A failure in words that carry no patient data: the type and, for I/O, the message."""
    if isinstance(exc, OSError | ValueError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__
