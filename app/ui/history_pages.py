"""A patient's screenings over time, what changed between two of them, and the audit trail
(auditors only)."""

import asyncio
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from app.store import audit
from app.store.database import ANY_TENANT, Store
from app.ui.rendering import render
from app.ui.report_view import Change, Report, changes, chip, read_report
from app.ui.screen_pages import stored_report
from app.ui.screening_run import agent
from app.ui.session import UiUser, current_user, require_role

router = APIRouter(prefix="/ui")
User = Annotated[UiUser, Depends(current_user)]
Auditor = Annotated[UiUser, Depends(require_role("auditor"))]
_SHOWN = 100
_AUDIT_PAGE = 50


def _patient_ref(text: str) -> str:
    text = text.strip()[:200]
    if not text or "/" in text or text.startswith("urn:"):
        return text
    return f"Patient/{text}"


@router.get("/history", response_class=HTMLResponse)
async def history(request: Request, user: User) -> HTMLResponse:
    patient = _patient_ref(request.query_params.get("patient", ""))
    reports: list[Report] = []
    total = 0
    moved: dict[str, tuple[Report, list[Change]]] = {}
    newest: dict[str, Report] = {}
    store: Store = request.app.state.store
    recent: list[str] = []
    if not patient:
        _, latest = await asyncio.to_thread(store.screenings_for, None, None, 0, 50, ANY_TENANT)
        subjects = (orjson.loads(g).get("subject", {}).get("reference") for g in latest)
        recent = list(dict.fromkeys(s for s in subjects if s))[:20]
        await audit.record(
            request,
            action="E",
            interaction="search",
            outcome="0",
            agent=agent(user),
            description=f"recently screened patients listed on the web pages: {len(recent)}",
        )
    if patient:
        # The pages serve the hospital's own staff: every tenant's screenings of the patient.
        total, raw = await asyncio.to_thread(
            store.screenings_for, patient, None, 0, _SHOWN, ANY_TENANT
        )
        reports = [read_report(orjson.loads(g), request.app.state.catalog) for g in raw]
        await audit.record(
            request,
            action="E",
            interaction="search",
            outcome="0",
            agent=agent(user),
            description=f"patient history on the web pages: {total} screening(s)",
            patient_ref=patient,
        )
        for r in reports:  # newest first: the first of a trial is its latest
            if r.trial not in newest:
                newest[r.trial] = r
            elif r.trial not in moved:
                moved[r.trial] = (r, changes(r, newest[r.trial]))
    # Offered for comparison first: the latest two screenings against one trial.
    pair = next(((older.id, newest[t].id) for t, (older, _) in moved.items()), ("", ""))
    return render(
        request,
        "history.html",
        user,
        title="Patient history",
        patient=patient,
        recent=recent,
        pair=pair,
        reports=reports,
        total=total,
        moved=moved,
        latest={t: r for t, r in ((r.trial, r) for r in reversed(reports))},
    )


@router.get("/compare", response_class=HTMLResponse)
async def compare(request: Request, user: User) -> HTMLResponse:
    first = request.query_params.get("a", "")
    second = request.query_params.get("b", "")
    older, _ = await stored_report(request, first)
    newer, _ = await stored_report(request, second)
    if older.issued > newer.issued:
        older, newer = newer, older
    if older.trial != newer.trial:
        message = "Compare two screenings against the same trial."
        return render(request, "error.html", user, 400, title="Not comparable", message=message)
    return render(
        request,
        "compare.html",
        user,
        title="What changed",
        older=older,
        newer=newer,
        moved=changes(older, newer),
        chip_of=chip,
    )


@router.get("/audit", response_class=HTMLResponse)
async def audit_trail(request: Request, user: Auditor) -> HTMLResponse:
    patient = _patient_ref(request.query_params.get("patient", ""))
    page_text = request.query_params.get("page", "1")
    page = int(page_text) if page_text.isdigit() and 0 < int(page_text) < 10_000 else 1
    store: Store = request.app.state.store
    total, rows = await asyncio.to_thread(
        store.audit_events, patient or None, (page - 1) * _AUDIT_PAGE, _AUDIT_PAGE
    )
    await audit.record(
        request,
        action="R",
        interaction="audit-search",
        outcome="0",
        agent=agent(user),
        description="audit trail read on the web pages",
        patient_ref=patient or None,
    )
    return render(
        request,
        "audit.html",
        user,
        title="Audit trail",
        patient=patient,
        rows=rows,
        total=total,
        page=page,
        pages=max(1, -(-total // _AUDIT_PAGE)),
    )
