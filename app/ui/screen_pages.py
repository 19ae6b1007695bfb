"""Screening a patient from a page, the report, and the investigator's sign-off beside it.

The report page renders the GuidanceResponse as stored; a sign-off is a new row beside it
(``signoff``), written with its audit row in one transaction; the screening is never edited.
"""

import asyncio
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile

from app.catalog.loader import Catalog
from app.core.errors import TrialscreenError
from app.core.settings import zone_of
from app.demo import DEMO_PATIENTS
from app.store import audit
from app.store.database import Store, StoredSignoff
from app.ui.rendering import PageNotFound, render
from app.ui.report_view import Report, read_report
from app.ui.screening_run import agent, screen_patient
from app.ui.session import UiUser, check_csrf, current_user, require_role

router = APIRouter(prefix="/ui")
User = Annotated[UiUser, Depends(current_user)]
Investigator = Annotated[UiUser, Depends(require_role("investigator"))]

DECISIONS = {"eligible": "Eligible", "not-eligible": "Not eligible"}
ITEM_DECISIONS = {
    "holds": "Holds",
    "does-not-hold": "Does not hold",
    "cannot-tell": "Cannot tell yet",
}
_NOTE_LIMIT = 2000


def _demo_ids(request: Request) -> list[str]:
    if request.app.state.settings.ehr_base_url is not None:
        return []
    return sorted(p.stem for p in DEMO_PATIENTS.glob("*.json"))


def _today(request: Request) -> date:
    return datetime.now(UTC).astimezone(zone_of(request.app.state.settings)).date()


def _form_page(
    request: Request, user: UiUser, status: int = 200, error: str | None = None, **values: Any
) -> HTMLResponse:
    catalog: Catalog = request.app.state.catalog
    return render(
        request,
        "screen.html",
        user,
        status,
        title="Screen a patient",
        trials=[catalog.trials[t].spec for t in catalog.trials],
        demo_ids=_demo_ids(request),
        ehr=request.app.state.settings.ehr_base_url is not None,
        today=_today(request).isoformat(),
        error=error,
        values=values,
    )


@router.get("/screen", response_class=HTMLResponse)
async def screen_form(request: Request, user: User) -> HTMLResponse:
    patient = request.query_params.get("patient", "")
    return _form_page(request, user, patient_id=patient[:200])


@router.post("/screen", dependencies=[Depends(check_csrf)], response_model=None)
async def screen(request: Request, user: User) -> Response:
    form = await request.form()
    catalog: Catalog = request.app.state.catalog
    patient_id = str(form.get("patient_id") or "").strip()
    as_of_text = str(form.get("as_of") or "").strip()
    chosen = [str(t) for t in form.getlist("trial") if str(t) in catalog.trials]
    upload = form.get("bundle")
    values = {"patient_id": patient_id, "as_of": as_of_text, "trials": chosen}
    try:
        as_of = date.fromisoformat(as_of_text) if as_of_text else _today(request)
    except ValueError:
        return _form_page(
            request, user, 400, "The as-of date must be a date (YYYY-MM-DD).", **values
        )
    if not chosen:
        return _form_page(request, user, 400, "Choose at least one trial.", **values)
    bundle: bytes | None = None
    if isinstance(upload, UploadFile) and upload.filename:
        bundle = await upload.read()  # parsed in a screening worker (screening_run)
    elif not patient_id:
        return _form_page(
            request, user, 400, "Give a patient id or upload a Bundle file.", **values
        )
    try:
        issued = await screen_patient(
            request,
            user,
            chosen,
            as_of,
            patient_id=None if bundle is not None else patient_id,
            bundle=bundle,
        )
    except TrialscreenError as exc:
        return _form_page(request, user, exc.status_code, str(exc), **values)
    if len(issued) == 1:
        return RedirectResponse(f"/ui/reports/{issued[0]['id']}", status_code=303)
    ids = ",".join(g["id"] for g in issued)
    return RedirectResponse(f"/ui/screened?ids={ids}", status_code=303)


async def stored_report(request: Request, screening_id: str) -> tuple[Report, Any]:
    store: Store = request.app.state.store
    row = await asyncio.to_thread(store.screening, screening_id)
    if row is None:
        raise PageNotFound(f"No screening {screening_id!r}.")
    report = read_report(orjson.loads(row.guidance), request.app.state.catalog)
    return report, row


@router.get("/screened", response_class=HTMLResponse)
async def screened(request: Request, user: User) -> HTMLResponse:
    ids = [i for i in request.query_params.get("ids", "").split(",") if i][:20]
    reports = [(await stored_report(request, i))[0] for i in ids]
    return render(request, "screened.html", user, title="Screened", reports=reports)


def _signoff_view(row: StoredSignoff) -> dict[str, Any]:
    items = orjson.loads(row.items)
    return {
        "id": row.id,
        "decision": row.decision,
        "decision_words": DECISIONS.get(row.decision, row.decision),
        "note": row.note,
        "by": row.signed_by_name,
        "subject": row.signed_by,
        "at": row.signed_at.astimezone(UTC).isoformat(timespec="seconds"),
        "items": {i["key"]: i for i in items},
    }


async def _report_page(
    request: Request,
    user: UiUser,
    screening_id: str,
    status: int = 200,
    error: str | None = None,
    entered: dict[str, str] | None = None,
) -> HTMLResponse:
    report, row = await stored_report(request, screening_id)
    store: Store = request.app.state.store
    signoffs = [_signoff_view(s) for s in await asyncio.to_thread(store.signoffs_for, row.id)]
    await audit.record(
        request,
        action="R",
        interaction="read",
        outcome="0",
        agent=agent(user),
        description="report read on the web pages",
        patient_ref=row.patient_ref or None,
        entities=(f"GuidanceResponse/{row.id}",),
    )
    return render(
        request,
        "report.html",
        user,
        status,
        title=f"{report.trial} report",
        report=report,
        created=row.created.astimezone(UTC).isoformat(timespec="seconds"),
        requested_by=row.requested_by,
        signoffs=signoffs,
        latest=signoffs[-1] if signoffs else None,
        decisions=DECISIONS,
        item_decisions=ITEM_DECISIONS,
        can_sign="investigator" in user.roles,
        error=error,
        entered=entered or {},
    )


@router.get("/reports/{screening_id}", response_class=HTMLResponse)
async def report(screening_id: str, request: Request, user: User) -> HTMLResponse:
    return await _report_page(request, user, screening_id)


@router.post(
    "/reports/{screening_id}/signoff", dependencies=[Depends(check_csrf)], response_model=None
)
async def sign_off(screening_id: str, request: Request, user: Investigator) -> Response:
    """Record the investigator's decision on each review item and on the whole, beside the
    machine's report (a new row; the report is not touched)."""
    report, row = await stored_report(request, screening_id)
    form = await request.form()
    entered = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    decision = entered.get("decision", "")
    note = entered.get("note", "").strip()
    problems = []
    if decision not in DECISIONS:
        problems.append("Choose eligible or not eligible.")
    if len(note) > _NOTE_LIMIT:
        problems.append(f"Keep the note under {_NOTE_LIMIT} characters.")
    items = []
    for item in report.review_items:
        chosen = entered.get(f"item:{item.key}", "")
        if chosen not in ITEM_DECISIONS:
            problems.append(f"Record a decision on review item {item.check}: {item.text}")
            continue
        items.append(
            {
                "key": item.key,
                "criterion": item.check,
                "item": item.text,
                "decision": chosen,
                "note": entered.get(f"note:{item.key}", "").strip()[:_NOTE_LIMIT],
            }
        )
    if problems:
        return await _report_page(request, user, screening_id, 400, " ".join(problems), entered)
    signoff = StoredSignoff(
        id=str(uuid.uuid4()),
        screening_id=row.id,
        decision=decision,
        note=note,
        items=orjson.dumps(items),
        signed_by=user.subject,
        signed_by_name=user.name,
        signed_at=datetime.now(UTC),
    )
    done = audit.event(
        action="C",
        interaction="signoff",
        outcome="0",
        agent=agent(user),
        description=f"investigator sign-off: {decision} ({len(items)} review item(s) decided)",
        patient_ref=row.patient_ref or None,
        entities=(f"GuidanceResponse/{row.id}",),
    )
    store: Store = request.app.state.store
    await asyncio.to_thread(store.save_signoff, signoff, done)
    return RedirectResponse(f"/ui/reports/{row.id}#signoff", status_code=303)
