"""Population runs on a page: start a run, follow its progress, then read the attrition funnel
(server-rendered SVG), the candidate table (sorted and filtered on the server, exported as CSV)
and each candidate's report.

The runs themselves are issue 14's ``RunService`` (``app.state.population``); this module names
only the methods of that contract (``RunServiceLike``), which the browser tests' stand-in
(tests/ui_population_fake.py) also keeps.
"""

import asyncio
import csv
import inspect
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from app.catalog.loader import Catalog
from app.core.errors import TrialscreenError
from app.core.settings import zone_of
from app.ui.rendering import PAGE_HEADERS, PageNotFound, render
from app.ui.report_view import OVERALL, read_report
from app.ui.session import UiUser, check_csrf, current_user, require_role

router = APIRouter(prefix="/ui/population")
User = Annotated[UiUser, Depends(current_user)]
Coordinator = Annotated[UiUser, Depends(require_role("coordinator"))]
_ROWS_SHOWN = 500


class RunSummaryLike(Protocol):
    id: str
    status: str
    trials: tuple[str, ...]
    as_of: date
    source: str
    patients_total: int | None
    patients_done: int
    outcomes: dict[str, int]
    error: str | None
    who: str


class RunServiceLike(Protocol):
    def start(self, trials: list[str], as_of: date, source: str, who: str) -> Any: ...
    def get(self, run_id: str) -> Any: ...
    def list(self, limit: int = 50) -> Any: ...
    def cancel(self, run_id: str) -> Any: ...
    def funnel(self, run_id: str) -> Any: ...
    def candidates_csv_path(self, run_id: str) -> Any: ...
    def screening(self, run_id: str, trial: str, patient: str) -> Any: ...


async def _call(method: Any, *args: Any, **kwargs: Any) -> Any:
    """A contract method, whether the service made it plain or async."""
    result = method(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


def _today(request: Request) -> date:
    return datetime.now(UTC).astimezone(zone_of(request.app.state.settings)).date()


def _service(request: Request) -> RunServiceLike:
    service: RunServiceLike = request.app.state.population
    return service


def _percent(run: RunSummaryLike) -> int:
    if run.status == "completed":
        return 100
    if not run.patients_total:
        return 0
    return min(100, round(100 * run.patients_done / run.patients_total))


async def _run(service: RunServiceLike, run_id: str) -> RunSummaryLike:
    run = await _call(service.get, run_id[:100])
    if run is None:
        raise PageNotFound(f"No population run {run_id!r}.")
    found: RunSummaryLike = run
    return found


@router.get("", response_class=HTMLResponse)
async def runs(request: Request, user: User) -> HTMLResponse:
    service = _service(request)
    catalog: Catalog = request.app.state.catalog
    listed = list(await _call(service.list, 50))
    return render(
        request,
        "population.html",
        user,
        title="Population runs",
        runs=listed,
        trials=[catalog.trials[t].spec for t in catalog.trials],
        today=_today(request).isoformat(),
        percent=_percent,
        error=None,
    )


@router.post("", dependencies=[Depends(check_csrf)], response_model=None)
async def start(request: Request, user: Coordinator) -> Response:
    service = _service(request)
    form = await request.form()
    catalog: Catalog = request.app.state.catalog
    chosen = [str(t) for t in form.getlist("trial") if str(t) in catalog.trials]
    source = str(form.get("source") or "demo").strip()[:500]
    try:
        as_of = date.fromisoformat(str(form.get("as_of") or ""))
    except ValueError:
        as_of = _today(request)
    if not chosen:
        chosen = list(catalog.trials)
    try:
        run = await _call(service.start, chosen, as_of, source, f"ui:{user.subject}")
    except (TrialscreenError, ValueError) as exc:  # a source outside the allowed ones, ...
        listed = list(await _call(service.list, 50))
        return render(
            request,
            "population.html",
            user,
            400,
            title="Population runs",
            runs=listed,
            trials=[catalog.trials[t].spec for t in catalog.trials],
            today=as_of.isoformat(),
            percent=_percent,
            error=str(exc),
        )
    return RedirectResponse(f"/ui/population/{run.id}", status_code=303)


@router.get("/{run_id}/status")
async def status(run_id: str, request: Request, user: User) -> JSONResponse:
    service = _service(request)
    run = await _run(service, run_id)
    return JSONResponse(
        {
            "status": run.status,
            "done": run.patients_done,
            "total": run.patients_total,
            "percent": _percent(run),
        },
        headers={"Cache-Control": "no-store"},
    )


@router.post("/{run_id}/cancel", dependencies=[Depends(check_csrf)], response_model=None)
async def cancel(run_id: str, request: Request, user: Coordinator) -> Response:
    service = _service(request)
    run = await _run(service, run_id)
    await _call(service.cancel, run.id)
    return RedirectResponse(f"/ui/population/{run.id}", status_code=303)


@dataclass(frozen=True)
class Bar:
    label: str
    title: str
    remaining: int
    width: float
    y: int
    dropped: int = 0
    """Patients turned away at this step."""


@dataclass(frozen=True)
class Funnel:
    trial: str
    title: str
    patients: int
    outcomes: dict[str, int]
    bars: list[Bar]
    height: int
    steps: list[dict[str, Any]]
    requests: list[dict[str, Any]]


_BAR_HEIGHT = 26
_BAR_AREA = 520.0


def funnel_chart(entry: dict[str, Any]) -> Funnel:
    """One trial's attrition as bars: everyone screened, then those remaining after each
    criterion in protocol order (the SVG is drawn by the template from these numbers)."""
    patients = int(entry.get("patients", 0))
    scale = _BAR_AREA / patients if patients else 0.0
    bars = [Bar("screened", "Patients screened", patients, patients * scale, 0)]
    before = patients
    for n, step in enumerate(entry.get("steps", []), start=1):
        remaining = int(step.get("remaining", 0))
        bars.append(
            Bar(
                str(step.get("criterion", "")),
                str(step.get("text", "")),
                remaining,
                remaining * scale,
                n * _BAR_HEIGHT,
                max(0, before - remaining),
            )
        )
        before = remaining
    return Funnel(
        trial=str(entry.get("trial", "")),
        title=str(entry.get("title", "")),
        patients=patients,
        outcomes={k: int(v) for k, v in dict(entry.get("outcomes", {})).items()},
        bars=bars,
        height=len(bars) * _BAR_HEIGHT + 4,
        steps=list(entry.get("steps", [])),
        requests=list(entry.get("dataRequests", [])),
    )


_SORTS = {"rank", "patient", "result", "missing", "review", "trial"}
_RESULT_ORDER = {"eligible": 0, "needs-review": 1, "needs-data": 2, "ineligible": 3}


def _candidates(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    fixed = {"rank", "trial", "patient", "result", "missing", "review", "data_to_collect"}
    return [h for h in header if h not in fixed], rows


def _number(text: str) -> int:
    return int(text) if text.strip().isdigit() else 0


def _table(
    rows: list[dict[str, str]], trial: str, result: str, missing: str, sort: str, descending: bool
) -> list[dict[str, str]]:
    chosen = [
        r
        for r in rows
        if (not trial or r.get("trial") == trial)
        and (not result or r.get("result") == result)
        and (
            not missing
            or (missing == "any" and _number(r.get("missing", "")) > 0)
            or (missing == "none" and _number(r.get("missing", "")) == 0)
            or (missing not in ("any", "none") and missing in r.get("data_to_collect", ""))
        )
    ]

    def key(r: dict[str, str]) -> tuple[Any, ...]:
        if sort in ("rank", "missing", "review"):
            return (_number(r.get(sort, "")), _number(r.get("rank", "")))
        if sort == "result":
            return (_RESULT_ORDER.get(r.get("result", ""), 9), _number(r.get("rank", "")))
        return (r.get(sort, ""), _number(r.get("rank", "")))

    return sorted(chosen, key=key, reverse=descending)


@router.get("/{run_id}", response_class=HTMLResponse)
async def run_page(run_id: str, request: Request, user: User) -> HTMLResponse:
    service = _service(request)
    run = await _run(service, run_id)
    funnels: list[Funnel] = []
    columns: list[str] = []
    shown: list[dict[str, str]] = []
    total = 0
    query = request.query_params
    sort = query.get("sort", "rank") if query.get("sort", "rank") in _SORTS else "rank"
    descending = query.get("order") == "desc"
    filters = {k: query.get(k, "")[:200] for k in ("trial", "result", "missing")}
    if run.status == "completed":
        funnels = [funnel_chart(e) for e in await _call(service.funnel, run.id)]
        path = Path(await _call(service.candidates_csv_path, run.id))
        if path.is_file():
            columns, rows = await asyncio.to_thread(_candidates, path)
            total = len(rows)
            shown = _table(
                rows, filters["trial"], filters["result"], filters["missing"], sort, descending
            )
    missing_options = sorted({str(r.get("request", "")) for f in funnels for r in f.requests})
    return render(
        request,
        "run.html",
        user,
        title=f"Population run {run.id}",
        run=run,
        percent=_percent(run),
        funnels=funnels,
        columns=columns,
        rows=shown[:_ROWS_SHOWN],
        shown=len(shown),
        total=total,
        limit=_ROWS_SHOWN,
        sort=sort,
        descending=descending,
        filters=filters,
        overall=OVERALL,
        missing_options=missing_options,
        bar_area=_BAR_AREA,
    )


@router.get("/{run_id}/candidates.csv", response_model=None)
async def candidates_csv(run_id: str, request: Request, user: User) -> Response:
    service = _service(request)
    run = await _run(service, run_id)
    path = Path(await _call(service.candidates_csv_path, run.id))
    if run.status != "completed" or not path.is_file():
        raise PageNotFound("This run has no candidate list yet.")
    return FileResponse(
        path,
        media_type="text/csv",
        filename=f"candidates-{run.id}.csv",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/{run_id}/reports/{trial}/{patient:path}", response_class=HTMLResponse)
async def run_report(
    run_id: str, trial: str, patient: str, request: Request, user: User
) -> HTMLResponse:
    service = _service(request)
    run = await _run(service, run_id)
    guidance = await _call(service.screening, run.id, trial[:100], patient[:300])
    if guidance is None:
        raise PageNotFound(f"No screening of {patient!r} against {trial!r} in this run.")
    report = read_report(guidance, request.app.state.catalog)
    return render(
        request,
        "run_report.html",
        user,
        title=f"{report.trial} report (population run)",
        run=run,
        report=report,
        patient_id=patient.removeprefix("Patient/"),
    )


__all__ = ["PAGE_HEADERS", "router"]
