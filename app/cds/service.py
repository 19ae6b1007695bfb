"""The CDS Hooks service (2.0 on the wire; 3.0 additions accepted): discovery, the
``patient-view`` hook, and feedback.

A hook call is screened against every trial from ``prefetch``, fetching from the caller's
``fhirServer`` only what prefetch lacked, and only when that server is registered for the
caller's issuer. The ``fhirAuthorization`` token is used for that fetch alone: never cached,
stored or logged. ``hookInstance`` is the correlation id in logs.
"""

import asyncio
import logging
import time
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.catalog.loader import Catalog
from app.cds.cards import (
    card_uuid,
    override_reasons,
    pending_card,
    smart_link,
    suggestion_uuid,
)
from app.cds.hook import (
    INSTANCE_LIMIT,
    Hook,
    Json,
    Read,
    ScreenOrder,
    parse_json,
    read_hook,
    read_parts,
    screen_read,
)
from app.cds.trust import Caller, JwtVerifier
from app.core import limits
from app.core.base_url import public_base
from app.core.errors import InvalidInput, NotFound, TrialscreenError
from app.core.settings import CdsClient, Settings, zone_of
from app.ehr.auth import BearerAuth
from app.ehr.client import Deadline, FhirClient, SearchOutcome
from app.ehr.connection import fhir_client
from app.ehr.fetch_plan import FetchPlan, Search
from app.ehr.record_source import Parts, ReceivedRecord, fetch_parts
from app.ehr.terminology import TerminologyServer
from app.screening.issued import counted
from app.screening.learned import recognised_refs
from app.screening.pool import ScreenPool
from app.screening.spool import collect
from app.store import audit
from app.store.database import (
    CardQuiet,
    NewScreening,
    PendingScreening,
    Store,
    StoredFeedback,
)

log = logging.getLogger("trialscreen.cds")
router = APIRouter(prefix="/cds-services")
SERVICE_ID = "trial-eligibility"
_PENDING_GRACE = 30.0
"""Seconds past the EHR deadline before a pending screening counts as interrupted."""


class PreconditionFailed(TrialscreenError):
    """CDS Hooks: required data could neither be prefetched nor fetched."""

    status_code = 412
    issue_code = "incomplete"


@router.get("")
async def discovery(request: Request) -> JSONResponse:
    plan: FetchPlan = request.app.state.fetch_plan
    prefetch = {"patient": "Patient/{{context.patientId}}"}
    prefetch |= {s.key: s.query() for s in plan.searches("{{context.patientId}}", None)}
    return JSONResponse(
        {
            "services": [
                {
                    "hook": "patient-view",
                    "id": SERVICE_ID,
                    "title": "Clinical trial eligibility",
                    "description": "Screens the patient in view against the inclusion and "
                    "exclusion criteria of every trial this service holds, and shows a card for "
                    "each trial the patient may be eligible for.",
                    "prefetch": prefetch,
                }
            ]
        }
    )


@router.post("/{service_id}")
async def patient_view(service_id: str, request: Request) -> JSONResponse:
    started = time.monotonic()
    _known(service_id)
    settings: Settings = request.app.state.settings
    caller = await _authenticate(request, settings)
    await fail_interrupted(request.app.state.store)
    pool: ScreenPool = request.app.state.screen_pool
    body = await collect(request.stream(), settings.max_body_bytes, pool.spools)
    now = datetime.now(UTC)
    as_of = now.astimezone(zone_of(settings)).date()
    order = _order(request, as_of, now, caller)
    # Parsed, checked and (with full prefetch) screened in a worker: see app/cds/hook.py.
    hook = await pool.run(read_hook, body, as_of, None if _terminology(request) else order)
    del body
    if hook.read is not None:
        cards = await _issue(request, hook.read, order, caller, hook.instance)
    else:
        assert hook.prefetched is not None
        client = _fhir_client(hook.fhir_server, hook.token, caller, request, settings)
        task = asyncio.ensure_future(
            fetch_parts(
                client,
                hook.patient_id,
                list(hook.to_fetch),
                Deadline.after(settings.ehr_deadline),
                hook.patient,
            )
        )
        budget = max(0.0, settings.cds_fetch_budget - (time.monotonic() - started))
        try:
            patient, outcomes = await asyncio.wait_for(asyncio.shield(task), budget)
        except TimeoutError:
            return await _pending(request, task, hook, as_of, now, caller)
        assert patient is not None
        fetched = Parts.of([(s, o.resources, o.problem) for s, o in outcomes])
        received = ReceivedRecord(patient=patient, parts=(hook.prefetched, fetched))
        cards = await _screen(request, received, order, caller, hook)
    log.info(
        "hook %s: %d card(s) in %.0f ms",
        hook.instance,
        len(cards),
        (time.monotonic() - started) * 1e3,
    )
    return JSONResponse({"cards": cards})


@router.post("/{service_id}/feedback")
async def feedback(service_id: str, request: Request) -> Response:
    # Each item is stored with the screening its card came from; an override with a quieting
    # reason (cds_quiet_reasons) also quiets that trial's card for that patient for
    # cds_quiet_days. Every field is checked against the card as issued: its suggestion ids,
    # its override reasons, and a real time between the card's issue and now (400 otherwise).
    # (A comment, not a docstring: FastAPI would publish it in openapi/openapi.json.)
    _known(service_id)
    settings: Settings = request.app.state.settings
    caller = await _authenticate(request, settings)
    body = parse_json(await request.body())
    items = body.get("feedback")
    if not isinstance(items, list) or not items:
        raise InvalidInput("feedback must be a non-empty array.", expression="feedback")
    store: Store = request.app.state.store
    now = datetime.now(UTC)
    rows: list[StoredFeedback] = []
    quiets: list[CardQuiet] = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]"
        if not isinstance(item, dict) or item.get("outcome") not in {"accepted", "overridden"}:
            raise InvalidInput("Each feedback names its card and an outcome.", expression=where)
        card_id = item.get("card")
        if not isinstance(card_id, str) or not 0 < len(card_id) <= INSTANCE_LIMIT:
            raise InvalidInput("Each feedback names its card.", expression=f"{where}.card")
        limits.text_value(card_id, f"{where}.card", INSTANCE_LIMIT)
        issued = await asyncio.to_thread(store.card_screening, card_id)
        # Only the client the card was shown by may answer it; to any other it does not exist.
        if issued is None or issued[1] != f"cds:{caller.client.iss}":
            raise NotFound(f"No card {card_id!r} was issued by this service to this client.")
        screening_id = issued[0]
        shown = await asyncio.to_thread(store.screening_created, screening_id)
        assert shown is not None
        created, patient_ref, trial_id, tenant = shown
        moment = _timestamp(item.get("outcomeTimestamp"), created, now, where)
        reason = _checked_feedback(item, card_id, settings.canonical_base, where)
        rows.append(
            StoredFeedback(
                screening_id=screening_id,
                card_uuid=str(card_id),
                outcome=item["outcome"],
                override_reason=orjson.dumps(reason) if reason is not None else None,
                outcome_timestamp=moment,
                received=now,
            )
        )
        coding = reason.get("reason") if reason is not None else None
        code = coding.get("code") if isinstance(coding, dict) else None
        if item["outcome"] == "overridden" and code in settings.cds_quiet_reasons:
            quiets.append(
                CardQuiet(
                    tenant=tenant,
                    patient_ref=patient_ref,
                    trial_id=trial_id,
                    until=moment + timedelta(days=settings.cds_quiet_days),
                    reason=code,
                    screening_id=screening_id,
                    created=now,
                )
            )
    await asyncio.to_thread(store.save_feedback, rows)
    for quiet in quiets:
        await asyncio.to_thread(store.quiet, quiet)
    await audit.record(
        request,
        action="C",
        interaction="cds-feedback",
        outcome="0",
        agent=caller.client.iss,
        description=f"{len(rows)} feedback item(s) on cards"
        + (f"; {len(quiets)} card(s) quieted" if quiets else ""),
        entities=tuple(f"GuidanceResponse/{r.screening_id}" for r in rows),
    )
    return Response(status_code=200)


_COMMENT_LIMIT = 2000


def _checked_feedback(item: Json, card_id: str, canonical: str, where: str) -> Json | None:
    """The item's override reason, once every field is one the card offered (CDS Hooks 2.0
    feedback): ``acceptedSuggestions`` names the card's suggestions and comes with
    ``accepted`` only; ``overrideReason`` comes with ``overridden`` only, its ``reason`` one of
    the card's ``overrideReasons`` and its ``userComment`` text."""
    accepted = item.get("acceptedSuggestions")
    reason = item.get("overrideReason")
    if item["outcome"] == "accepted":
        if reason is not None:
            raise InvalidInput(
                "overrideReason belongs to an overridden card.",
                expression=f"{where}.overrideReason",
            )
        offered = {suggestion_uuid(card_id)}
        if not (
            isinstance(accepted, list)
            and accepted
            and all(isinstance(a, dict) and a.get("id") in offered for a in accepted)
        ):
            raise InvalidInput(
                "An accepted card names the suggestions accepted, by the ids the card gave them.",
                expression=f"{where}.acceptedSuggestions",
            )
        return None
    if accepted is not None:
        raise InvalidInput(
            "acceptedSuggestions belongs to an accepted card.",
            expression=f"{where}.acceptedSuggestions",
        )
    if reason is None:
        return None
    if not isinstance(reason, dict) or set(reason) - {"reason", "userComment"}:
        raise InvalidInput(
            "overrideReason holds a reason and a userComment.", expression=f"{where}.overrideReason"
        )
    coding, comment = reason.get("reason"), reason.get("userComment")
    offered_codes = {(r["system"], r["code"]) for r in override_reasons(canonical)}
    if coding is not None and not (
        isinstance(coding, dict) and (coding.get("system"), coding.get("code")) in offered_codes
    ):
        raise InvalidInput(
            "overrideReason.reason is not one of the card's overrideReasons.",
            expression=f"{where}.overrideReason.reason",
        )
    if comment is not None and not (isinstance(comment, str) and len(comment) <= _COMMENT_LIMIT):
        raise InvalidInput(
            f"userComment is text of at most {_COMMENT_LIMIT} characters.",
            expression=f"{where}.overrideReason.userComment",
        )
    return reason


async def as_shown(
    request: Request,
    cards: list[Json],
    stored: list[NewScreening],
    caller: Caller,
    now: datetime,
) -> list[Json]:
    """The cards as the clinician sees them (issue 15): none for a trial a clinician quieted
    for this patient (the screening is still stored: :func:`feedback`), and each with a SMART
    link opening its report in the EHR when the EHR launch is configured."""
    if not cards:
        return cards
    settings: Settings = request.app.state.settings
    store: Store = request.app.state.store
    patient_ref = stored[0].patient_ref
    quiet = await asyncio.to_thread(store.quieted, tenant_of(caller), patient_ref, now)
    screened = {card_uuid(s.guidance["id"]): s for s in stored}
    base = public_base(request, settings)
    shown = []
    for shown_card in cards:
        screening = screened.get(shown_card["uuid"])
        if screening is not None and screening.trial_id in quiet:
            log.info("card for %s quieted by an earlier override", screening.trial_id)
            continue
        if screening is not None and settings.ui_smart_client_id:
            links = [*shown_card["links"], smart_link(base, screening.guidance["id"])]
            shown_card = shown_card | {"links": links}
        shown.append(shown_card)
    return shown


def _known(service_id: str) -> None:
    if service_id != SERVICE_ID:
        raise NotFound(f"No CDS service {service_id!r} (see GET /cds-services).")


async def _authenticate(request: Request, settings: Settings) -> Caller:
    if settings.allow_unauthenticated and "authorization" not in request.headers:
        bases = (settings.ehr_base_url,) if settings.ehr_base_url else ()
        return Caller(CdsClient(iss="unauthenticated", fhir_bases=bases), None)
    verifier: JwtVerifier = request.app.state.jwt_verifier
    called = f"{settings.public_base_url.rstrip('/')}{request.url.path}"
    audience = [called]
    if called.endswith("/feedback"):
        # EHRs address feedback tokens to the service or to the feedback URL itself.
        audience.append(called.removesuffix("/feedback"))
    return await verifier.verify(request.headers.get("authorization"), audience)


def tenant_of(caller: Caller) -> str:
    """The tenant a CDS client's screenings carry: the one configured for it, else the JWT's
    tenant claim, else the issuer itself (each EHR its own tenant)."""
    return caller.client.tenant or caller.tenant or caller.client.iss


def _fhir_client(
    server: str | None, token: str | None, caller: Caller, request: Request, settings: Settings
) -> FhirClient:
    """A client for the hook's fhirServer, or 412: only a server registered for the caller's
    issuer is ever called (no SSRF), and only with the token the caller handed over."""
    allowed = {b.rstrip("/") for b in caller.client.fhir_bases}
    if server is None or server.rstrip("/") not in allowed:
        raise PreconditionFailed(
            "Prefetch lacks data this service needs, and no FHIR server registered for the "
            "caller was given to fetch it from."
        )
    if token is None and caller.client.iss != "unauthenticated":
        raise PreconditionFailed("Prefetch lacks data and no fhirAuthorization was given.")
    auth = BearerAuth(token) if token is not None else request.app.state.ehr_auth
    return fhir_client(settings, request.app.state.http, server, auth)


def _terminology(request: Request) -> TerminologyServer | None:
    server: TerminologyServer | None = getattr(request.app.state, "terminology", None)
    return server


def _order(
    request: Request,
    as_of: date,
    now: datetime,
    caller: Caller,
    ids: tuple[str, ...] | None = None,
) -> ScreenOrder:
    """A screening against every trial, for this caller."""
    settings: Settings = request.app.state.settings
    catalog: Catalog = request.app.state.catalog
    return ScreenOrder(
        trials=tuple(catalog.trials),
        as_of=as_of,
        now=now,
        requested_by=f"cds:{caller.client.iss}",
        base=public_base(request, settings),
        ids=ids,
    )


async def _screen(
    request: Request, received: ReceivedRecord, order: ScreenOrder, caller: Caller, hook: Hook
) -> list[Json]:
    """The record from the Patient and the search parts (prefetched and fetched) screened in the
    screening pool; the cards to show (see :func:`_issue`)."""
    pool: ScreenPool = request.app.state.screen_pool
    read = await pool.run(read_parts, received, None if _terminology(request) else order)
    return await _issue(request, read, order, caller, hook.instance)


async def _issue(
    request: Request, read: Read, order: ScreenOrder, caller: Caller, instance: str
) -> list[Json]:
    """Store each screening of a record read in a worker (screened there, or first completed by
    the terminology server and then screened), and return the cards to show."""
    screened = read.screened
    if screened is None:
        # The terminology server must see the record before the trials are evaluated.
        assert read.fetched is not None
        catalog: Catalog = request.app.state.catalog
        pool: ScreenPool = request.app.state.screen_pool
        trials = await recognised_refs(
            _terminology(request), catalog, list(catalog.trials), read.fetched.record
        )
        completed = replace(order, trials=tuple(trials))
        screened = await pool.run(screen_read, read.fetched, completed)
    stored = [replace(s, tenant=tenant_of(caller)) for s in counted(screened.stored)]
    cards = await as_shown(request, screened.cards, stored, caller, order.now)
    ids = order.ids
    done = audit.event(
        action="E",
        interaction="cds-hook",
        outcome="0",
        agent=caller.client.iss,
        description=f"patient-view hook {instance}: {len(cards)} card(s)"
        + (" after a pending card" if ids else ""),
        patient_ref=screened.patient_ref,
        entities=tuple(f"GuidanceResponse/{s.guidance['id']}" for s in stored),
    )
    store: Store = request.app.state.store
    await asyncio.to_thread(store.save, stored, done, tuple(ids or ()))
    return cards


async def _pending(
    request: Request,
    task: "asyncio.Future[tuple[Json | None, list[tuple[Search, SearchOutcome]]]]",
    hook: Hook,
    as_of: date,
    now: datetime,
    caller: Caller,
) -> JSONResponse:
    """The EHR is slower than the hook's time: answer now, finish in the background, and store
    each trial's report under the id the card already links to. The pending screenings are
    written down first: if this worker dies before they are done, any replica answers their
    links with a failure (:func:`fail_interrupted`)."""
    settings: Settings = request.app.state.settings
    catalog: Catalog = request.app.state.catalog
    store: Store = request.app.state.store
    instance = hook.instance
    assert hook.prefetched is not None
    prefetched = hook.prefetched
    trials = list(catalog.trials.values())
    ids = [str(uuid.uuid4()) for _ in trials]
    expires = time.time() + settings.ehr_deadline + _PENDING_GRACE
    pending_rows = [
        PendingScreening(
            id=sid,
            trial_id=t.id,
            criteria_version=t.spec.version,
            module=f"{settings.canonical_base}/PlanDefinition/{t.spec.id}|{t.spec.version}",
            as_of=as_of,
            patient_ref=f"Patient/{hook.patient_id}",
            requested_by=f"cds:{caller.client.iss}",
            card_uuid=card_uuid(sid),
            tenant=tenant_of(caller),
            expires=expires,
        )
        for t, sid in zip(trials, ids, strict=True)
    ]
    await asyncio.to_thread(store.save_pending, pending_rows)

    async def finish() -> None:
        try:
            patient, outcomes = await task
            assert patient is not None
            fetched = Parts.of([(s, o.resources, o.problem) for s, o in outcomes])
            received = ReceivedRecord(patient=patient, parts=(prefetched, fetched))
            await _screen(
                request, received, _order(request, as_of, now, caller, tuple(ids)), caller, hook
            )
        except Exception as exc:
            log.warning("hook %s: background screening failed (%s)", instance, type(exc).__name__)
            await asyncio.to_thread(store.fail_pending, time.time(), interrupted, tuple(ids))

    background: set[asyncio.Task[None]] = request.app.state.background
    job = asyncio.create_task(finish())
    background.add(job)
    job.add_done_callback(background.discard)
    log.info("hook %s: EHR too slow, answered with a pending card", instance)
    reports = [(t.spec.acronym, sid) for t, sid in zip(trials, ids, strict=True)]
    base = public_base(request, settings)
    # The pending card answers for the first trial's screening: feedback on it lands there.
    pending = pending_card(reports, base, settings.canonical_base, card_uuid(ids[0]))
    return JSONResponse({"cards": [pending]})


def interrupted(pending: PendingScreening) -> NewScreening:
    """What a pending screening's link answers when its background fetch never finished (the
    worker died, or the fetch failed outright): a GuidanceResponse with status ``failure`` that
    says so, never a result."""
    response_id = pending.id
    guidance: Json = {
        "resourceType": "GuidanceResponse",
        "id": response_id,
        "contained": [
            {
                "resourceType": "OperationOutcome",
                "id": "messages",
                "issue": [
                    {
                        "severity": "error",
                        "code": "incomplete",
                        "diagnostics": "The screening was interrupted before the EHR's data "
                        "arrived; open the patient's chart again to screen anew.",
                    }
                ],
            }
        ],
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{response_id}"}],
        "moduleCanonical": pending.module,
        "status": "failure",
        "subject": {"reference": pending.patient_ref},
        "occurrenceDateTime": datetime.now(UTC).isoformat(timespec="seconds"),
        "evaluationMessage": [{"reference": "#messages"}],
    }
    return NewScreening(
        guidance=guidance,
        trial_id=pending.trial_id,
        criteria_version=pending.criteria_version,
        as_of=pending.as_of,
        patient_ref=pending.patient_ref,
        eligibility="interrupted",
        record_digest="",
        requested_by=pending.requested_by,
        card_uuid=pending.card_uuid,
        tenant=pending.tenant,
    )


async def fail_interrupted(store: Store) -> None:
    """Answer every pending screening past its time with :func:`interrupted` (any replica may:
    the one that started it may be gone)."""
    failed = await asyncio.to_thread(store.fail_pending, time.time(), interrupted)
    if failed:
        log.warning("%d pending screening(s) were interrupted; answered as failed", failed)


_CLOCK_SKEW = timedelta(minutes=5)


def _timestamp(value: Any, issued: datetime, now: datetime, where: str) -> datetime:
    """The feedback's outcomeTimestamp in UTC (CDS Hooks: required, an ISO 8601 time in UTC;
    one without a zone is read as UTC). A time that cannot be read, or that falls before the card
    was issued or after now (beyond a few minutes of clock difference), is no real time of a
    clinician's action: 400."""
    moment = None
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value)
            moment = parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except (ValueError, OverflowError):
            moment = None
    if moment is None or not issued - _CLOCK_SKEW <= moment <= now + _CLOCK_SKEW:
        raise InvalidInput(
            "outcomeTimestamp must be the time (ISO 8601, UTC) the clinician acted on the card: "
            "after the card was shown and not in the future.",
            expression=f"{where}.outcomeTimestamp",
        )
    return moment
