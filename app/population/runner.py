"""The embedded population engine: an NDJSON folder read by DuckDB (``ndjson_source``), each
patient screened by :func:`screen_patient` in worker processes (all cores by default), the results
written by the shared ``outputs`` writer. Memory stays flat: patients stream out of DuckDB in id
order, a bounded number of batches is in flight, outputs are written as results come back."""

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import orjson

from app.catalog.trial import LoadedTrial
from app.core.settings import Settings, get_settings
from app.population.ndjson_source import (
    MEMORY_LIMIT,
    NdjsonSource,
    PatientLines,
    SourceError,
    patient_lines,
)
from app.population.outputs import OutputWriter
from app.population.patient_run import PatientResult, needed_data, screen_patient
from app.population.prefilter import Prefilter, needles_of, prefilters, turned_away

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
    worker_peak_mb: float = 0.0
    """Peak resident memory of the largest worker (of this process with one worker)."""
    prefiltered: int = 0
    """Patients turned away by the prefilter (no full screening)."""


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
    memory_limit: str = MEMORY_LIMIT,
    prefilter: bool = False,
) -> RunReport:
    """Screen every patient of an NDJSON folder against ``trials``; outputs go to ``out``.
    ``prefilter``: spare the full screening to patients the engine confirms are turned away at
    every trial's first criterion by their Conditions alone (``prefilter.py``)."""
    settings = settings or get_settings()
    started = time.monotonic()
    now = datetime.now(UTC)
    # No process to start for a handful of patients; the workers start before DuckDB fills
    # this process's memory (a spawned child begins as a copy of it).
    workers = max(1, min(workers or default_workers(), patient_lines(folder) // BATCH))
    filters = prefilters(trials) if prefilter else None
    out.mkdir(parents=True, exist_ok=True)
    writer = OutputWriter(out, trials, as_of, settings.canonical_base, run_id)
    with (
        _Pool(workers, trials, as_of, settings, now, filters) as pool,
        NdjsonSource(
            folder, needed_data(trials), memory_limit=memory_limit, scratch=out / ".scratch"
        ) as source,
    ):
        total = source.patients_total
        spared = source.unmentioned(needles_of(filters)) if filters else set()
        done = prefiltered = 0
        if progress:
            progress(0, total)
        for results in pool.screened(source, spared):
            if cancelled is not None and cancelled():
                raise Cancelled(run_id)
            prefiltered += bool(results and results[0].prefiltered)
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
        worker_peak_mb=pool.peak_kb / 1024,
        prefiltered=prefiltered,
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


class _Pool:
    """The worker processes (none for one worker: then patients are screened here)."""

    def __init__(
        self,
        workers: int,
        trials: Sequence[LoadedTrial],
        as_of: date,
        settings: Settings,
        now: datetime,
        filters: list[Prefilter] | None,
    ) -> None:
        self.workers = workers
        self.args = (list(trials), as_of, settings, now, filters)
        self.peak_kb = 0
        self.pool: ProcessPoolExecutor | None = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=get_context("spawn"),  # never fork a process holding DuckDB threads
                initializer=_init_worker,
                initargs=self.args,
            )
            for f in [self.pool.submit(_peak_kb) for _ in range(workers)]:
                f.result()

    def __enter__(self) -> "_Pool":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def screened(self, source: NdjsonSource, spared: set[str]) -> Iterator[list[PatientResult]]:
        """Per patient, the list of results (one per trial), in patient order."""
        if self.pool is None:
            trials, as_of, settings, now, filters = self.args
            for p in source.patients():
                p.prefiltered = p.patient in spared
                yield _screen_one(trials, p, as_of, settings, now, filters)
            self.peak_kb = _peak_kb()
            return
        pending: deque[Future[tuple[list[list[PatientResult]], int]]] = deque()
        batch: list[PatientLines] = []
        for p in source.patients():
            p.prefiltered = p.patient in spared
            batch.append(p)
            if len(batch) == BATCH:
                pending.append(self.pool.submit(_screen_batch, batch))
                batch = []
                while len(pending) > 3 * self.workers:
                    yield from self._take(pending.popleft())
        if batch:
            pending.append(self.pool.submit(_screen_batch, batch))
        while pending:
            yield from self._take(pending.popleft())

    def _take(
        self, future: "Future[tuple[list[list[PatientResult]], int]]"
    ) -> list[list[PatientResult]]:
        results, peak = future.result()
        self.peak_kb = max(self.peak_kb, peak)
        return results


def _peak_kb() -> int:
    """This process's peak resident memory since it started its program (VmHWM), in kB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _screen_one(
    trials: Sequence[LoadedTrial],
    p: PatientLines,
    as_of: date,
    settings: Settings,
    now: datetime,
    filters: list[Prefilter] | None = None,
) -> list[PatientResult]:
    resources = [orjson.loads(line) for line in p.lines]
    if p.prefiltered and filters:
        spared = turned_away(trials, filters, resources, p.unreadable, as_of)
        if spared is not None:
            return spared
    return screen_patient(
        trials, resources, as_of, unreadable=p.unreadable, settings=settings, now=now
    )


_WORKER: dict[str, Any] = {}


def _init_worker(
    trials: list[LoadedTrial],
    as_of: date,
    settings: Settings,
    now: datetime,
    filters: list[Prefilter] | None,
) -> None:
    _WORKER.update(trials=trials, as_of=as_of, settings=settings, now=now, filters=filters)


def _screen_batch(batch: list[PatientLines]) -> tuple[list[list[PatientResult]], int]:
    w = _WORKER
    results = [
        _screen_one(w["trials"], p, w["as_of"], w["settings"], w["now"], w["filters"])
        for p in batch
    ]
    return results, _peak_kb()
