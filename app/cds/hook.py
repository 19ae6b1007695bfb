"""A ``patient-view`` hook call as a screening worker reads it.

The body of a hook call with full prefetch is megabytes of JSON. It is parsed once, in a worker
(:func:`read_hook`), never on the event loop: checked, its prefetch matched to the service's
searches, and, when prefetch held the whole record, read and screened there and then, so the
service gets back only the stored screenings and the cards. When prefetch lacks part of the
record, the worker hands back what the service needs to fetch the rest (including the
``fhirAuthorization`` token, between the service's own processes only) and the prefetched
parts as JSON bytes, which cost less to hand on to the next worker than the dicts they encode.
"""

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson

from app.cds.cards import card, card_uuid, shows_card
from app.core import limits
from app.core.errors import InvalidInput
from app.ehr.fetch_plan import Search
from app.ehr.record_source import FetchedRecord, Part, Parts, ReceivedRecord, assemble
from app.engine import evaluate
from app.fhir_io.report import plausible
from app.screening.issued import describe
from app.screening.learned import TrialRef, trial_of
from app.screening.pool import WorkerEnv
from app.screening.spool import Body, body_bytes
from app.store.database import NewScreening

Json = dict[str, Any]
INSTANCE_LIMIT = 128
"""hookInstance is a UUID (CDS Hooks 2.0); anything much longer is not one."""
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


@dataclass(frozen=True, slots=True)
class ScreenOrder:
    """What a worker screens a record for: the trials (as loaded, or as the terminology server
    completed them), the as-of date, the time of issue, the client, and the service's public base
    for the cards' links. With ``ids`` (a pending card's) the screenings take those ids and each
    keeps a card uuid, since the pending card already linked to them."""

    trials: tuple[TrialRef, ...]
    as_of: date
    now: datetime
    requested_by: str
    base: str
    ids: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Screened:
    stored: list[NewScreening]
    cards: list[Json]
    patient_ref: str


@dataclass(frozen=True, slots=True)
class Read:
    """A record read in a worker: screened (``screened``), or, when the terminology server must
    see the record before the trials are evaluated, only read (``fetched``)."""

    fetched: FetchedRecord | None = None
    screened: Screened | None = None


@dataclass(frozen=True, slots=True)
class Hook:
    """What a worker makes of a hook call: its ids and the record read (``read``), or, when
    prefetch lacked part of the record (``read`` None), what the service must fetch."""

    instance: str
    patient_id: str
    read: Read | None
    patient: Json | None = None
    prefetched: Parts | None = None
    to_fetch: tuple[Search, ...] = ()
    fhir_server: str | None = None
    token: str | None = None


def read_hook(env: WorkerEnv, received: Body, as_of: date, order: ScreenOrder | None) -> Hook:
    """Runs in a screening worker: the hook call counted (413 above the resource limit, before it
    is parsed), parsed, checked, and its prefetch read; screened for ``order`` when prefetch held
    the whole record (read only when ``order`` is None)."""
    body = body_bytes(received)
    limits.resource_count(body, env.settings.max_resources, "The hook call")
    hook = parse_json(body)
    del body
    if hook.get("hook") != "patient-view":
        raise InvalidInput("This service answers the patient-view hook.", expression="hook")
    instance = hook.get("hookInstance")
    context = hook.get("context")
    patient_id = context.get("patientId") if isinstance(context, dict) else None
    if not isinstance(instance, str) or not _is_id(patient_id):
        raise InvalidInput("A hook call carries hookInstance and context.patientId.")
    assert isinstance(patient_id, str)
    limits.text_value(instance, "hookInstance", INSTANCE_LIMIT)
    prefetch = hook.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise InvalidInput("prefetch must be an object.", expression="prefetch")
    searches = env.plan.searches(patient_id, as_of)
    patient, parts, to_fetch = from_prefetch(prefetch, searches)
    _same_patient(patient_id, patient, parts)
    if patient is None or to_fetch:
        server = hook.get("fhirServer")
        auth = hook.get("fhirAuthorization")
        token = auth.get("access_token") if isinstance(auth, dict) else None
        return Hook(
            instance,
            patient_id,
            None,
            patient,
            Parts.of(parts),
            tuple(to_fetch),
            server if isinstance(server, str) else None,
            token if isinstance(token, str) else None,
        )
    return Hook(instance, patient_id, _read(env, assemble(patient, parts), order))


def read_parts(env: WorkerEnv, received: ReceivedRecord, order: ScreenOrder | None) -> Read:
    """Runs in a screening worker: the record from the Patient and the search parts (prefetched
    and fetched), screened for ``order`` (read only when ``order`` is None)."""
    return _read(env, received.read(), order)


def screen_read(env: WorkerEnv, fetched: FetchedRecord, order: ScreenOrder) -> Screened:
    """Runs in a screening worker: a record already read evaluated against every trial of the
    order and described, and the cards to show."""
    settings = env.settings
    stored: list[NewScreening] = []
    cards: list[Json] = []
    for n, ref in enumerate(order.trials):
        trial = trial_of(env.catalog, ref)
        screening = plausible(evaluate(trial, fetched.record, order.as_of))
        screening_id = order.ids[n] if order.ids else str(uuid.uuid4())
        shown = shows_card(screening, settings.cds_show_ineligible)
        stored.append(
            describe(
                screening,
                fetched,
                settings,
                order.now,
                requested_by=order.requested_by,
                card_uuid=card_uuid(screening_id) if shown or order.ids else None,
                screening_id=screening_id,
                counted=False,
            )
        )
        if shown:
            cards.append(card(screening, screening_id, order.base, settings.canonical_base))
    return Screened(stored, cards, fetched.record.patient.ref)


def _read(env: WorkerEnv, fetched: FetchedRecord, order: ScreenOrder | None) -> Read:
    return (
        Read(fetched=fetched) if order is None else Read(screened=screen_read(env, fetched, order))
    )


def parse_json(body: bytes) -> Json:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("The request body must be a JSON object.")
    return parsed


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and set(value) <= _ID_CHARS


def from_prefetch(
    prefetch: Json, searches: list[Search]
) -> tuple[Json | None, list[Part], list[Search]]:
    """What prefetch supplied, and the searches still to run. A missing key means "fetch it",
    null means "no data"; a Bundle with a next page, or anything but a Bundle, is fetched."""
    patient = prefetch.get("patient")
    if not (isinstance(patient, dict) and patient.get("resourceType") == "Patient"):
        patient = None
    parts: list[Part] = []
    to_fetch: list[Search] = []
    for search in searches:
        if search.key in prefetch and prefetch[search.key] is None:
            parts.append((search, [], None))
            continue
        bundle = prefetch.get(search.key)
        if not (isinstance(bundle, dict) and bundle.get("resourceType") == "Bundle"):
            to_fetch.append(search)
            continue
        links, entries = bundle.get("link") or [], bundle.get("entry") or []
        if not isinstance(links, list) or not isinstance(entries, list):
            # A Bundle whose parts have the wrong shape: that part of the record is incomplete
            # (its checks unknown), the rest is screened.
            parts.append(
                (search, [], f"The prefetched {search.resource_type} Bundle is malformed.")
            )
            continue
        if any(isinstance(link, dict) and link.get("relation") == "next" for link in links):
            to_fetch.append(search)
            continue
        resources = [
            e["resource"]
            for e in entries
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") in {search.resource_type, *search.included_types}
        ]
        parts.append((search, resources, None))
    return patient, parts, to_fetch


def _same_patient(patient_id: str, patient: Json | None, parts: list[Part]) -> None:
    """400 when prefetch holds another patient than ``context.patientId``: screening it would
    store one person's results under another's id."""
    if patient is not None and patient.get("id") != patient_id:
        raise InvalidInput(
            "The prefetched Patient is not the patient in context.patientId.",
            expression="prefetch.patient",
        )
    for search, resources, _ in parts:
        for resource in resources:
            for field in ("subject", "patient"):
                named = _patient_named(resource.get(field))
                if named is not None and named != patient_id:
                    raise InvalidInput(
                        f"The prefetched {search.resource_type} Bundle holds resources of "
                        "another patient than context.patientId.",
                        expression=f"prefetch.{search.key}",
                    )


def _patient_named(reference: Any) -> str | None:
    """The id in a ``Patient/{id}`` reference (relative or absolute, with or without a version);
    None when the reference names no Patient id (a urn:uuid, a display only)."""
    text = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(text, str):
        return None
    segments = text.split("/_history/")[0].rstrip("/").split("/")
    if len(segments) >= 2 and segments[-2] == "Patient":
        return segments[-1]
    return None
