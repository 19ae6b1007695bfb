"""The embedded population engine: an NDJSON folder read by DuckDB (``ndjson_source``), each
patient screened by :func:`screen_patient` in worker processes (all cores by default), the results
written by the shared ``outputs`` writer. Memory stays flat: patients stream out of DuckDB in id
order, a bounded number of batches is in flight, outputs are written as results come back."""

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import orjson

from app.catalog.trial import LoadedTrial
from app.core.settings import Settings, get_settings
from app.population.ndjson_source import NdjsonSource, PatientLines, SourceError
from app.population.outputs import OutputWriter
from app.population.patient_run import PatientResult, needed_data, screen_patient

Json = dict[str, Any]
Progress = Callable[[int, int], None]
"""Called with (patients done, patients in all) as the run goes."""
BATCH = 8
"""Patients per task sent to a worker."""


class Cancelled(Exception):
    """The run was cancelled (``cancelled()`` answered True between two batches)."""


@dataclass(frozen=True, slots=True)
class RunReport:
    patients: int
    """Patients screened (each against every trial)."""
    patients_total: int
    resources: int
    """Resources read (after selection), Patients included."""
    lines: int
    """Lines in the files read."""
    errors: tuple[SourceError, ...]
    skipped_types: tuple[str, ...]
    """Resource types present in the folder that no criterion reads (not opened)."""
    funnel: list[Json]
    seconds: float
    workers: int
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)
    """trial -> result -> patients."""


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_population(
    trials: Sequence[LoadedTrial],
    as_of: date,
    folder: Path,
    out: Path,
    *,
    workers: int | None = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
    run_id: str = "run",
    memory_limit: str = "1GB",
) -> RunReport:
    """Screen every patient of an NDJSON folder against ``trials``; outputs go to ``out``."""
    settings = settings or get_settings()
    workers = workers or default_workers()
    started = time.monotonic()
    now = datetime.now(UTC)
    out.mkdir(parents=True, exist_ok=True)
    writer = OutputWriter(out, trials, as_of, settings.canonical_base, run_id)
    with NdjsonSource(
        folder, needed_data(trials), memory_limit=memory_limit, scratch=out / ".scratch"
    ) as source:
        total = source.patients_total
        workers = max(1, min(workers, total // BATCH))  # no process to start for a handful
        done = 0
        if progress:
            progress(0, total)
        for results in _screened(source, trials, as_of, settings, now, workers):
            if cancelled is not None and cancelled():
                raise Cancelled(run_id)
            for r in results:
                writer.add(r)
            done += 1
            if progress and (done % BATCH == 0 or done == total):
                progress(done, total)
        funnel = writer.close()
        errors = tuple(source.errors)
        skipped = tuple(source.skipped)
        resources, lines = source.resources_read, source.lines_total
    shutil.rmtree(out / ".scratch", ignore_errors=True)
    report = RunReport(
        patients=done,
        patients_total=total,
        resources=resources,
        lines=lines,
        errors=errors,
        skipped_types=skipped,
        funnel=funnel,
        seconds=time.monotonic() - started,
        workers=workers,
        outcomes={f["trial"]: dict(f["outcomes"]) for f in funnel},
    )
    (out / "errors.json").write_bytes(
        orjson.dumps(
            [
                {"file": e.file, "line": e.line, "problem": e.problem, "patient": e.patient}
                for e in errors
            ],
            option=orjson.OPT_INDENT_2,
        )
    )
    return report


def _screened(
    source: NdjsonSource,
    trials: Sequence[LoadedTrial],
    as_of: date,
    settings: Settings,
    now: datetime,
    workers: int,
) -> "Any":
    """Per patient, the list of results (one per trial), in patient order."""
    if workers <= 1:
        for p in source.patients():
            yield _screen_one(trials, p, as_of, settings, now)
        return
    context = get_context("spawn")  # never fork a process that holds DuckDB's threads
    with ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(list(trials), as_of, settings, now),
    ) as pool:
        pending: deque[Future[list[list[PatientResult]]]] = deque()
        batch: list[PatientLines] = []
        for p in source.patients():
            batch.append(p)
            if len(batch) == BATCH:
                pending.append(pool.submit(_screen_batch, batch))
                batch = []
                while len(pending) > 3 * workers:
                    yield from pending.popleft().result()
        if batch:
            pending.append(pool.submit(_screen_batch, batch))
        while pending:
            yield from pending.popleft().result()


def _screen_one(
    trials: Sequence[LoadedTrial],
    p: PatientLines,
    as_of: date,
    settings: Settings,
    now: datetime,
) -> list[PatientResult]:
    resources = [orjson.loads(line) for line in p.lines]
    return screen_patient(
        trials, resources, as_of, unreadable=p.unreadable, settings=settings, now=now
    )


_WORKER: dict[str, Any] = {}


def _init_worker(trials: list[LoadedTrial], as_of: date, settings: Settings, now: datetime) -> None:
    _WORKER.update(trials=trials, as_of=as_of, settings=settings, now=now)


def _screen_batch(batch: list[PatientLines]) -> list[list[PatientResult]]:
    w = _WORKER
    return [_screen_one(w["trials"], p, w["as_of"], w["settings"], w["now"]) for p in batch]
