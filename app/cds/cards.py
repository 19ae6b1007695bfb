"""CDS Hooks cards from screenings: what a clinician sees when a patient's chart opens.

One card per trial where the patient is not ineligible (unless configured), built from the same
screening the REST API returns: a summary that names the trial but no diagnosis; a detail that
names each decisive criterion by its protocol text with the reason, the few most decisive data
items to collect (not a count: what to order), and what needs a clinician's judgement; a link to
the report page (``/ui/reports/{id}``, behind the pages' sign-in) a clinician can read; and a
suggestion to refer the patient to the trial team. JSON never carries null or empty values.
"""

import uuid
from collections.abc import Iterable
from typing import Any

from app.engine import CriterionResult, DataRequest, Eligibility, Result, Screening, Status

Json = dict[str, Any]
_CARD_NAMESPACE = uuid.UUID("9d5e0a3c-5c1e-4f3f-9b5d-2f6f1e7c8a10")
_SUMMARY_LIMIT = 140
REPORT_PAGE = "/ui/reports/{id}"
"""The pages' report of a stored screening (app/ui)."""
MOST_DECISIVE = 5
"""Data items a card names (the report lists them all)."""
_TEXT_LIMIT = 120
"""Characters of a criterion's protocol text quoted in a card (the report has it whole)."""
_REVIEW_LIMIT = 5


def card_uuid(screening_id: str) -> str:
    """Stable: the same screening always yields the same card uuid (feedback refers to it)."""
    return str(uuid.uuid5(_CARD_NAMESPACE, screening_id))


def shows_card(screening: Screening, show_ineligible: bool) -> bool:
    return show_ineligible or screening.eligibility is not Eligibility.INELIGIBLE


def report_page(base_url: str, screening_id: str) -> str:
    return base_url + REPORT_PAGE.format(id=screening_id)


def smart_link(base_url: str, screening_id: str) -> Json:
    """A link the EHR opens as a SMART EHR launch of the pages (``/ui/launch``); the screening
    id travels as ``appContext`` and comes back in the launch context."""
    return {
        "label": "Open the report in the EHR",
        "url": f"{base_url}/ui/launch",
        "type": "smart",
        "appContext": screening_id,
    }


def card(screening: Screening, screening_id: str, base_url: str, canonical: str) -> Json:
    spec = screening.trial.spec
    name = f"{spec.acronym} trial ({spec.id})"
    review = _review_items(screening)
    summary, indicator = {
        Eligibility.ELIGIBLE: (f"{name}: meets every criterion checked", "info"),
        Eligibility.NEEDS_DATA: (f"{name}: possible candidate, data needed", "info"),
        Eligibility.NEEDS_REVIEW: (
            f"{name}: possible candidate, clinician review needed",
            "warning",
        ),
        Eligibility.INELIGIBLE: (f"{name}: not eligible", "info"),
    }[screening.eligibility]
    report = f"{base_url}/fhir/GuidanceResponse/{screening_id}"
    uid = card_uuid(screening_id)
    return clean(
        {
            "uuid": uid,
            "summary": summary[: _SUMMARY_LIMIT - 1],
            "indicator": indicator,
            "detail": _detail(screening, review),
            "source": _source(base_url, canonical),
            "links": [
                {
                    "label": "Eligibility report",
                    "url": report_page(base_url, screening_id),
                    "type": "absolute",
                }
            ],
            "suggestions": [_referral(screening, uid, report)],
            "selectionBehavior": "at-most-one",
            "overrideReasons": override_reasons(canonical),
        }
    )


OVERRIDE_REASONS = (
    ("patient-declined", "Patient not interested"),
    ("already-screened", "Already screened for this trial"),
    ("not-appropriate", "Not appropriate in my clinical judgement"),
)


def override_system(canonical: str) -> str:
    return f"{canonical}/CodeSystem/cds-override"


def override_reasons(canonical: str) -> list[Json]:
    system = override_system(canonical)
    return [{"system": system, "code": c, "display": text} for c, text in OVERRIDE_REASONS]


def suggestion_uuid(card_id: str) -> str:
    """The referral suggestion's uuid on the card ``card_id`` (feedback names it)."""
    return str(uuid.uuid5(_CARD_NAMESPACE, f"{card_id}/referral"))


def pending_card(
    reports: list[tuple[str, str]], base_url: str, canonical: str, card_id: str
) -> Json:
    """Said when the EHR was too slow to answer within the hook's time: the reports will appear
    at the links."""
    return clean(
        {
            "uuid": card_id,
            "summary": "Clinical trial screening is still running for this patient",
            "indicator": "info",
            "detail": "The patient's record is still being read from the EHR. Each trial's "
            "report will be at its link once screening finishes.",
            "source": _source(base_url, canonical),
            "links": [
                {
                    "label": f"{label} report",
                    "url": report_page(base_url, sid),
                    "type": "absolute",
                }
                for label, sid in reports
            ],
        }
    )


def _source(base_url: str, canonical: str) -> Json:
    return {
        "label": "trialscreen clinical trial screening",
        "url": base_url,
        "topic": {
            "system": f"{canonical}/CodeSystem/cds-topic",
            "code": "trial-eligibility",
            "display": "Clinical trial eligibility",
        },
    }


def _review_items(screening: Screening) -> list[str]:
    items: dict[str, None] = {}
    for c in screening.criteria:
        for r in c.result.walk():
            items.update(dict.fromkeys(f"{r.id}: {i}" for i in r.review))
    return list(items)


def _detail(screening: Screening, review: list[str]) -> str:
    """Markdown: the criteria that decide (by protocol text, with the reason), what is still
    open, the few data items that would settle the most, what only a clinician can judge."""
    met = [c.result for c in screening.criteria if _favourable(c.criterion.kind, c.result)]
    against = [c for c in screening.criteria if _against(c.criterion.kind, c.result)]
    sections = []
    if against:
        sections.append(
            "**Rules the patient out:**\n" + _bullets(_named(c, reason=True) for c in against)
        )
    else:
        # Nothing rules the patient out: what is open decides, and what settles it.
        still_open = [c for c in screening.criteria if c.result.status is Status.UNKNOWN]
        if still_open:
            sections.append("**Still open:**\n" + _bullets(_named(c) for c in still_open))
        decisive = most_decisive(screening.criteria)
        if decisive:
            lines = [_request_line(r) for r in decisive]
            more = _more(len(screening.data_requests) - len(decisive))
            sections.append("**Data to collect, most decisive first:**\n" + _bullets(lines) + more)
        if review:
            more = _more(len(review) - _REVIEW_LIMIT)
            sections.append("**For the investigator:**\n" + _bullets(review[:_REVIEW_LIMIT]) + more)
    if met:
        sections.append(f"**Met or not applicable ({len(met)}):** " + ", ".join(r.id for r in met))
    return "\n\n".join(sections)


def _more(count: int) -> str:
    return f"\n\n…and {count} more in the report." if count > 0 else ""


def most_decisive(
    criteria: Iterable[CriterionResult], limit: int = MOST_DECISIVE
) -> list[DataRequest]:
    """The data items that settle the most of what is open: each unknown criterion lacking data
    shares one vote among the distinct items that would settle it (an item that alone stands
    between a criterion and its answer counts more than one of many alternatives); ties keep
    criterion order."""
    votes: dict[tuple[str, tuple[Any, ...]], float] = {}
    first: dict[tuple[str, tuple[Any, ...]], DataRequest] = {}
    for c in criteria:
        wanted: dict[tuple[str, tuple[Any, ...]], DataRequest] = {}
        for request in c.result.open_requests():
            wanted.setdefault((request.resource_type, request.codes), request)
        for key, request in wanted.items():
            first.setdefault(key, request)
            votes[key] = votes.get(key, 0.0) + 1.0 / len(wanted)
    order = {key: n for n, key in enumerate(first)}
    ranked = sorted(first, key=lambda key: (-votes[key], order[key]))
    return [first[key] for key in ranked[:limit]]


def _named(c: CriterionResult, reason: bool = False) -> str:
    """``I3`` with its protocol text (shortened), and the reason when asked."""
    text = " ".join(c.criterion.text.split()).rstrip(";,. ")
    if len(text) > _TEXT_LIMIT:
        text = text[: _TEXT_LIMIT - 1].rsplit(" ", 1)[0] + "…"
    return f"**{c.criterion.id}** {text}" + (f": {c.result.reason}" if reason else "")


def _request_line(request: DataRequest) -> str:
    since = f" (dated {request.since.isoformat()} or later)" if request.since else ""
    return f"{request.label}{since}"


def _favourable(kind: str, result: Result) -> bool:
    wanted = Status.MET if kind == "inclusion" else Status.NOT_MET
    return result.status in {wanted, Status.NOT_APPLICABLE}


def _against(kind: str, result: Result) -> bool:
    return result.status is (Status.NOT_MET if kind == "inclusion" else Status.MET)


def _bullets(lines: Any) -> str:
    return "\n".join(f"- {line}" for line in lines)


def _referral(screening: Screening, card_id: str, report: str) -> Json:
    spec = screening.trial.spec
    return {
        "label": f"Refer to the {spec.acronym} trial team",
        "uuid": suggestion_uuid(card_id),
        "isRecommended": False,
        "actions": [
            {
                "type": "create",
                "description": f"Refer the patient to the {spec.acronym} ({spec.id}) team",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "draft",
                    "intent": "proposal",
                    "code": {"text": f"Referral for clinical trial screening: {spec.id}"},
                    "subject": {"reference": screening.patient_ref},
                    "supportingInfo": [{"reference": report}],
                    "note": [{"text": f"trialscreen result: {screening.eligibility.value}"}],
                },
            }
        ],
    }


def clean(card: Json) -> Json:
    """The card without null, empty strings, lists or objects anywhere (CDS Hooks forbids them)."""
    cleaned: Json = _clean(card)
    return cleaned


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        items = {k: _clean(v) for k, v in value.items()}
        return {k: v for k, v in items.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [v for v in (_clean(x) for x in value) if v not in (None, "", [], {})]
    return value
