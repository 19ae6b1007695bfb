"""CDS Hooks cards from screenings: what a clinician sees when a patient's chart opens.

One card per trial where the patient is not ineligible (unless configured), built from the same
screening the REST API returns: a summary that names the trial but no diagnosis, details of what
is met, what data is missing and what needs review, a link to the full report, and a suggestion
to refer the patient to the trial team. JSON never carries null or empty values.
"""

import uuid
from typing import Any

from app.engine import Eligibility, Result, Screening, Status

Json = dict[str, Any]
_CARD_NAMESPACE = uuid.UUID("9d5e0a3c-5c1e-4f3f-9b5d-2f6f1e7c8a10")
_SUMMARY_LIMIT = 140


def card_uuid(screening_id: str) -> str:
    """Stable: the same screening always yields the same card uuid (feedback refers to it)."""
    return str(uuid.uuid5(_CARD_NAMESPACE, screening_id))


def shows_card(screening: Screening, show_ineligible: bool) -> bool:
    return show_ineligible or screening.eligibility is not Eligibility.INELIGIBLE


def card(screening: Screening, screening_id: str, base_url: str, canonical: str) -> Json:
    spec = screening.trial.spec
    name = f"{spec.acronym} trial ({spec.id})"
    missing = [r.label for r in screening.data_requests]
    review = _review_items(screening)
    summary, indicator = {
        Eligibility.ELIGIBLE: (f"{name}: meets every criterion checked", "info"),
        Eligibility.NEEDS_DATA: (
            f"{name}: possible candidate, {len(missing)} data item(s) needed",
            "info",
        ),
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
            "detail": _detail(screening, missing, review),
            "source": _source(base_url, canonical),
            "links": [{"label": "Full eligibility report", "url": report, "type": "absolute"}],
            "suggestions": [_referral(screening, uid, report)],
            "selectionBehavior": "at-most-one",
            "overrideReasons": [
                {"system": f"{canonical}/CodeSystem/cds-override", "code": code, "display": text}
                for code, text in (
                    ("patient-declined", "Patient not interested"),
                    ("already-screened", "Already screened for this trial"),
                    ("not-appropriate", "Not appropriate in my clinical judgement"),
                )
            ],
        }
    )


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
                    "url": f"{base_url}/fhir/GuidanceResponse/{sid}",
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


def _detail(screening: Screening, missing: list[str], review: list[str]) -> str:
    met = [c.result for c in screening.criteria if _favourable(c.criterion.kind, c.result)]
    against = [c.result for c in screening.criteria if _against(c.criterion.kind, c.result)]
    sections = []
    if against:
        sections.append("**Not met:**\n" + _bullets(f"{r.id}: {r.reason}" for r in against))
    if met:
        sections.append(f"**Met ({len(met)}):** " + ", ".join(r.id for r in met))
    if missing:
        sections.append("**Data needed:**\n" + _bullets(missing))
    if review:
        sections.append("**Needs review:**\n" + _bullets(review[:12]))
    return "\n\n".join(sections)


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
        "uuid": str(uuid.uuid5(_CARD_NAMESPACE, f"{card_id}/referral")),
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
