"""Screenings off the event loop: a bounded pool of worker processes.

Reading a record and evaluating it is pure CPU work (``orjson`` holds the GIL for a whole parse),
so done on the event loop it stalls every other request, ``/healthz`` included, for as long as
the largest screening takes. Each worker process loads the trial catalog once at start and then
runs jobs: module-level functions called as ``job(env, *args)`` with picklable arguments (the
received bytes rather than parsed dicts, which cost more to pickle than to parse; a large body
as a Spool, handed over by file descriptor: app/screening/spool.py). The workers
take jobs from one shared queue, so every core is used without the accept imbalance of several
server processes on one socket.

Admission is bounded: at most ``workers + screen_queue`` screenings are in the pool at once, and
one more is refused at once with 503 and ``Retry-After`` (:class:`ServerBusy`) rather than
queued without end.

With ``screen_workers=0`` jobs run on a thread of this process instead (tests; hosts with one
core): admission is the same, and the loop still stays free except while a thread holds the GIL.
"""

import asyncio
import gc
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from app.catalog.loader import Catalog, load_catalog
from app.core.errors import ServerBusy
from app.core.settings import Settings
from app.ehr.connection import fetch_plan
from app.ehr.fetch_plan import FetchPlan
from app.screening import spool

log = logging.getLogger(__name__)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class WorkerEnv:
    """What every job receives: the service's settings, its loaded trials, the searches that
    fetch a record for them (a CDS hook's prefetch is read against these), and the codes they
    look Observations up by (the fetch plan's: a posted record's other Observations are not
    decoded, see bundle_reader.read_bundle)."""

    settings: Settings
    catalog: Catalog
    observation_codes: frozenset[tuple[str, str]]
    plan: FetchPlan

    @classmethod
    def of(cls, settings: Settings, catalog: Catalog) -> "WorkerEnv":
        plan = fetch_plan(settings, catalog)
        return cls(settings, catalog, frozenset(plan.observation_codes), plan)


_ENV: WorkerEnv | None = None
"""The worker process's own environment, set once by :func:`_start`."""


def cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPU cores this process may use: those it may run on, capped by a container's CPU quota
    (cgroup v2 ``cpu.max``: "<quota> <period>" or "max <period>"), at least one."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return max(1, n)
    if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
        n = min(n, math.ceil(int(quota) / int(period)))
    return max(1, n)


def tune_gc(settings: Settings) -> None:
    """After start-up: move what exists now (modules, the catalog) out of the collector's sight
    for good, and collect the young generation less often (see Settings.gc_gen0_threshold)."""
    gc.collect()
    gc.freeze()
    if settings.gc_gen0_threshold > 0:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(settings.gc_gen0_threshold, older, oldest)


_NICENESS = 10
"""Workers run at a lower CPU priority than the serving process: with every core busy
screening, the event loop (health probes, small requests, handing out the next jobs) still gets
the CPU the moment it needs it."""


def _start(settings: Settings) -> None:
    global _ENV  # one environment per worker process, set once at its start
    if hasattr(os, "nice"):
        os.nice(_NICENESS)
    threading.Thread(target=_orphaned, args=(os.getppid(),), daemon=True).start()
    _ENV = WorkerEnv.of(settings, load_catalog(settings))
    tune_gc(settings)


def _orphaned(parent: int) -> None:
    """Ends the worker once the service that started it is gone (killed without shutting the
    pool down): an orphan would otherwise wait on its queue for good."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _in_worker(job: Callable[..., R], *args: object) -> R:
    """Run a job in a worker process. The collector is off while it runs: a job allocates a
    parsed record (no reference cycles) and then drops it, and a worker runs one job at a time;
    whatever cycles a job leaves are collected once it is done."""
    assert _ENV is not None, "the worker was not started by ScreenPool"
    gc.disable()
    try:
        return job(_ENV, *args)
    finally:
        gc.enable()


def _ready() -> bool:
    return _ENV is not None


class ScreenPool:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        workers = settings.screen_workers
        if workers is None:
            workers = cores()
        self.workers = workers
        self.limit = max(1, workers) + settings.screen_queue
        self.retry_after = settings.screen_retry_after
        self._env = WorkerEnv.of(settings, catalog)
        self._in_flight = 0
        self._executor = self._new_executor()
        self.spools = workers > 0 and spool.available()
        """Whether large bodies should come as a Spool (a pool of processes, on Linux)."""

    def _new_executor(self) -> Executor:
        if self.workers == 0:
            return ThreadPoolExecutor(max_workers=2, thread_name_prefix="screen")
        # spawn, not fork: the parent has threads (the database's, the event loop's helpers)
        # whose locks a forked child would inherit held.
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(self._env.settings,),
        )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def warm_up(self) -> None:
        """Start every worker now (each loads the catalog, a second or two) rather than on the
        first screenings."""
        if isinstance(self._executor, ProcessPoolExecutor):
            for _ in range(self.workers):
                self._executor.submit(_ready)

    async def run(self, job: Callable[..., R], *args: object) -> R:
        """``job(env, *args)`` in a worker; 503 at once when the pool is full. A :class:`Spool`
        among the arguments is the pool's to close, once the job has ended."""
        spools = [a for a in args if isinstance(a, spool.Spool)]
        if self._in_flight >= self.limit:
            for s in spools:
                s.close()
            raise ServerBusy(
                f"All {self.limit} screening places are taken; retry in {self.retry_after} s.",
                retry_after=self.retry_after,
            )
        loop = asyncio.get_running_loop()
        executor = self._executor
        future: Future[R]
        try:
            if isinstance(executor, ProcessPoolExecutor):
                future = executor.submit(_in_worker, job, *args)
            else:
                future = executor.submit(job, self._env, *args)
        except BaseException:
            for s in spools:  # never handed over
                s.close()
            raise
        # A place is freed when the job ends, not when its caller stops waiting (a client that
        # disconnects does not stop the worker).
        self._in_flight += 1
        future.add_done_callback(lambda _: _call_soon(loop, self._freed))
        for s in spools:
            future.add_done_callback(_closing(s))
        try:
            return await asyncio.wrap_future(future)
        except BrokenProcessPool:
            # A worker died (killed for memory, most likely): start a fresh pool for the next
            # requests and let this one be retried.
            log.error("a screening worker stopped; starting a new pool")
            if self._executor is executor:
                self._executor = self._new_executor()
                executor.shutdown(wait=False, cancel_futures=True)
            raise ServerBusy(
                "A screening worker stopped while screening; retry shortly.",
                retry_after=self.retry_after,
            ) from None

    def _freed(self) -> None:
        self._in_flight -= 1

    def close(self) -> None:
        """Cancel what waits, let running jobs end, and wait for the workers to exit."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _closing(body: spool.Spool) -> Callable[[object], None]:
    return lambda _: body.close()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    if not loop.is_closed():  # a job that outlived the app (shut down meanwhile)
        loop.call_soon_threadsafe(callback)
