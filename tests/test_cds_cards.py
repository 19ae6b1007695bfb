"""What a card says and where it leads (issue 15 point 3), and what feedback on it does.

A card links to the report page a clinician can read, names each decisive criterion by its
protocol text and the few most decisive data items to collect (not a count); an override such
as ``patient-declined`` quiets that trial's card for that patient for a configured time; feedback
naming a suggestion, a reason or a time the card never offered is refused with a 400.
The EHR is the real FHIR server of tests/test_cds_hooks.py; each app here keeps its own database,
since a quieted card must not leak into other tests.
"""

import json
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from app.catalog.loader import Catalog
from app.cds.cards import most_decisive
from app.engine import CriterionResult, DataRequest, Result, Status, evaluate
from app.fhir_io.bundle_reader import read_bundle
from app.main import create_app
from app.store.database import CardQuiet, Store, StoredAuditEvent
from tests.fhir_server import FhirServer
from tests.test_cds_hooks import (
    BASE,
    DEMO,
    FEEDBACK,
    PATIENT_IDS,
    SLE_TRIAL,
    Hooks,
    _running,
    criterion_result,
    eligibility,
    hook_request,
    hook_settings,
    prefetch_for,
    trial_of,
)

Json = dict[str, Any]
OTHER_TRIAL = "NCT06801119"


def _app(fhir_server: FhirServer, tmp: Path, **overrides: Any) -> Iterator[Hooks]:
    settings = hook_settings(fhir_server, database_url=f"sqlite:///{tmp / 'cards.db'}", **overrides)
    yield from _running(create_app(settings))


@pytest.fixture(scope="module")
def every_card(
    fhir_server: FhirServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hooks]:
    """Shows ineligible trials' cards too, so both kinds of detail can be read."""
    yield from _app(fhir_server, tmp_path_factory.mktemp("every"), cds_show_ineligible=True)


def _cards(hooks: Hooks, patient_id: str, fhir_server: FhirServer) -> dict[str, Json]:
    """Trial id -> its card, for the patient's complete prefetch."""
    cards = hooks.cards(hook_request(patient_id, prefetch_for(hooks, patient_id, fhir_server)))
    return {trial_of(hooks.report(c).json()): c for c in cards}


def _screening(catalog: Catalog, patient_id: str, trial_id: str) -> Any:
    bundle = json.loads((DEMO / f"{patient_id}.json").read_text())
    return evaluate(catalog.trials[trial_id], read_bundle(bundle), datetime.now(UTC).date())


def _words(text: str) -> str:
    """The start of a criterion's protocol text as a card quotes it."""
    return " ".join(text.split()).rstrip(";,. ")[:40]


def _section(detail: str, title: str) -> list[str]:
    """The bullet lines under a bold section title of the card's markdown detail."""
    for block in detail.split("\n\n"):
        if block.startswith(f"**{title}"):
            return [line[2:] for line in block.splitlines()[1:] if line.startswith("- ")]
    return []


# --- where it leads ------------------------------------------------------------------------------


@pytest.mark.parametrize("patient_id", PATIENT_IDS[:2], ids=lambda p: p[:8])
def test_a_card_links_to_the_report_page(
    every_card: Hooks, fhir_server: FhirServer, patient_id: str
) -> None:
    for trial, card in _cards(every_card, patient_id, fhir_server).items():
        (link,) = card["links"]
        assert link["type"] == "absolute" and link["label"] == "Eligibility report"
        assert re.fullmatch(rf"{BASE}/ui/reports/[0-9a-f-]{{36}}", link["url"]), link
        screening_id = link["url"].rsplit("/", 1)[1]
        # The page's id is the stored screening of this trial; the referral cites it as FHIR.
        report = every_card.report(card).json()
        assert report["id"] == screening_id and trial_of(report) == trial
        (referral,) = card["suggestions"]
        resource = referral["actions"][0]["resource"]
        assert resource["supportingInfo"] == [
            {"reference": f"{BASE}/fhir/GuidanceResponse/{screening_id}"}
        ]


@pytest.fixture(scope="module")
def smart_cards(
    fhir_server: FhirServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hooks]:
    """The EHR launch configured: cards also carry a SMART link."""
    yield from _app(fhir_server, tmp_path_factory.mktemp("smart"), ui_smart_client_id="ts-smart")


def test_a_card_carries_a_smart_link_when_the_ehr_launch_is_configured(
    smart_cards: Hooks, every_card: Hooks, fhir_server: FhirServer
) -> None:
    patient_id = PATIENT_IDS[0]
    card = _cards(smart_cards, patient_id, fhir_server)[SLE_TRIAL]
    page, smart = card["links"]
    assert smart == {
        "label": "Open the report in the EHR",
        "url": f"{BASE}/ui/launch",
        "type": "smart",
        "appContext": page["url"].rsplit("/", 1)[1],
    }
    plain = _cards(every_card, patient_id, fhir_server)[SLE_TRIAL]
    assert [link["type"] for link in plain["links"]] == ["absolute"]


# --- what it says --------------------------------------------------------------------------------


@pytest.mark.parametrize("patient_id", PATIENT_IDS[:3], ids=lambda p: p[:8])
def test_the_detail_names_each_decisive_criterion_by_its_text(
    every_card: Hooks, fhir_server: FhirServer, catalog: Catalog, patient_id: str
) -> None:
    for trial_id, card in _cards(every_card, patient_id, fhir_server).items():
        report = every_card.report(card).json()
        spec = catalog.trials[trial_id].spec
        against = []
        for criterion in spec.criteria:
            status = criterion_result(report, criterion.id)["result"]
            if status == ("not-met" if criterion.kind == "inclusion" else "met"):
                against.append(criterion)
        detail = card["detail"]
        if eligibility(report) == "ineligible":
            assert against, trial_id
            lines = _section(detail, "Rules the patient out")
            assert len(lines) == len(against)
            for criterion, line in zip(against, lines, strict=True):
                assert line.startswith(f"**{criterion.id}** "), line
                words = _words(criterion.text)
                assert words in line, (words, line)
                reason = criterion_result(report, criterion.id)["reason"]
                assert line.endswith(reason), (line, reason)
        else:
            open_ = [
                c for c in spec.criteria if criterion_result(report, c.id)["result"] == "unknown"
            ]
            lines = _section(detail, "Still open")
            assert [line.split("**")[1] for line in lines] == [c.id for c in open_]
            for criterion, line in zip(open_, lines, strict=True):
                assert _words(criterion.text) in line, line


@pytest.mark.parametrize("patient_id", PATIENT_IDS, ids=lambda p: p[:8])
def test_the_detail_names_the_most_decisive_data_items_not_a_count(
    every_card: Hooks, fhir_server: FhirServer, catalog: Catalog, patient_id: str
) -> None:
    card = _cards(every_card, patient_id, fhir_server)[SLE_TRIAL]
    assert not re.search(r"\d+ data item", card["summary"])
    screening = _screening(catalog, patient_id, SLE_TRIAL)
    assert screening.eligibility.value == "needs-data"
    requests = screening.data_requests
    lines = _section(card["detail"], "Data to collect")
    assert 3 <= len(lines) <= 5 and len(lines) == min(5, len(requests))
    expected = most_decisive(screening.criteria)
    assert [line.split(" (dated")[0] for line in lines] == [r.label for r in expected]
    if len(requests) > 5:
        assert f"…and {len(requests) - 5} more in the report." in card["detail"]


def _criterion(catalog: Catalog, n: int) -> Any:
    return catalog.trials[SLE_TRIAL].spec.criteria[n]


def _unknown(name: str, *requests: DataRequest, status: Status = Status.UNKNOWN) -> Result:
    return Result(name, name, status, "", data_requests=requests)


def _request(label: str) -> DataRequest:
    return DataRequest("Observation", (("http://loinc.org", label),), label, date(2026, 1, 1))


def test_most_decisive_puts_what_alone_settles_a_criterion_first(catalog: Catalog) -> None:
    x, y, z, w, v = (_request(n) for n in "xyzwv")
    criteria = [
        CriterionResult(_criterion(catalog, 0), _unknown("A", x, y, z)),  # any of three
        CriterionResult(_criterion(catalog, 1), _unknown("B", w)),  # w alone settles B
        CriterionResult(_criterion(catalog, 2), _unknown("C", x)),  # x alone settles C
        CriterionResult(_criterion(catalog, 3), _unknown("D", v, status=Status.MET)),
    ]
    assert most_decisive(criteria) == [x, w, y, z]  # v: D is decided, it needs nothing
    assert most_decisive(criteria, limit=2) == [x, w]
    assert most_decisive(criteria[3:]) == []


# --- quieting ------------------------------------------------------------------------------------


@pytest.fixture
def quiet_app(fhir_server: FhirServer, tmp_path: Path) -> Iterator[Hooks]:
    yield from _app(fhir_server, tmp_path, cds_quiet_days=30)


def _override(hooks: Hooks, card: Json, code: str) -> int:
    offered = next(r for r in card["overrideReasons"] if r["code"] == code)
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": {k: offered[k] for k in ("system", "code")}},
        "outcomeTimestamp": datetime.now(UTC).isoformat(),
    }
    status: int = hooks.call({"feedback": [item]}, path=FEEDBACK).status_code
    return status


def test_patient_declined_quiets_that_trials_card_for_that_patient(
    quiet_app: Hooks, fhir_server: FhirServer
) -> None:
    declined, other = PATIENT_IDS[0], PATIENT_IDS[1]
    card = _cards(quiet_app, declined, fhir_server)[SLE_TRIAL]
    assert _override(quiet_app, card, "patient-declined") == 200
    store: Store = quiet_app.app.state.store
    before = store.screenings_for(f"Patient/{declined}", SLE_TRIAL, 0, 1)[0]
    assert _cards(quiet_app, declined, fhir_server) == {}
    # Still screened and stored: only the card is quiet.
    assert store.screenings_for(f"Patient/{declined}", SLE_TRIAL, 0, 1)[0] == before + 1
    with Session(store.engine) as session:
        (row,) = session.exec(select(CardQuiet)).all()
        audits = session.exec(select(StoredAuditEvent.description)).all()
    assert (row.patient_ref, row.trial_id, row.reason) == (
        f"Patient/{declined}",
        SLE_TRIAL,
        "patient-declined",
    )
    until = row.until.replace(tzinfo=UTC) if row.until.tzinfo is None else row.until
    assert timedelta(days=29) < until - datetime.now(UTC) <= timedelta(days=30)
    assert any("1 card(s) quieted" in a for a in audits)
    # Another patient's card for the same trial is still shown.
    assert SLE_TRIAL in _cards(quiet_app, other, fhir_server)
    # Once the period is over, the card is back.
    with Session(store.engine) as session, session.begin():
        quiet = session.exec(select(CardQuiet)).one()
        quiet.until = datetime.now(UTC) - timedelta(minutes=1)
    assert SLE_TRIAL in _cards(quiet_app, declined, fhir_server)


def test_a_clinical_judgement_override_does_not_quiet_the_card(
    quiet_app: Hooks, fhir_server: FhirServer
) -> None:
    patient_id = PATIENT_IDS[2]
    card = _cards(quiet_app, patient_id, fhir_server)[SLE_TRIAL]
    assert _override(quiet_app, card, "not-appropriate") == 200
    assert SLE_TRIAL in _cards(quiet_app, patient_id, fhir_server)


def test_quiet_cards_are_kept_per_tenant_patient_and_trial(store_url: str) -> None:
    store = Store(store_url)
    now = datetime.now(UTC)

    def quiet(tenant: str, patient: str, trial: str, until: datetime, reason: str) -> None:
        store.quiet(
            CardQuiet(
                tenant=tenant,
                patient_ref=patient,
                trial_id=trial,
                until=until,
                reason=reason,
                screening_id="s",
                created=now,
            )
        )

    quiet("ehr-a", "Patient/1", SLE_TRIAL, now + timedelta(days=1), "patient-declined")
    quiet("ehr-a", "Patient/1", OTHER_TRIAL, now - timedelta(seconds=1), "patient-declined")
    assert store.quieted("ehr-a", "Patient/1", now) == {SLE_TRIAL}
    assert store.quieted("ehr-b", "Patient/1", now) == set()
    assert store.quieted("ehr-a", "Patient/2", now) == set()
    assert store.quieted("ehr-a", "Patient/1", now + timedelta(days=2)) == set()
    # A later override of the same card replaces the earlier one.
    quiet("ehr-a", "Patient/1", SLE_TRIAL, now - timedelta(seconds=1), "already-screened")
    assert store.quieted("ehr-a", "Patient/1", now) == set()
    store.close()


# --- feedback fields -----------------------------------------------------------------------------


def _now(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def _bad_items(card: Json) -> dict[str, tuple[Json, str]]:
    """Feedback items that must be refused, with the field each one gets wrong."""
    suggestion = card["suggestions"][0]["uuid"]
    declined = {k: v for k, v in card["overrideReasons"][0].items() if k in ("system", "code")}
    ok_accepted = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": suggestion}],
        "outcomeTimestamp": _now(),
    }
    ok_overridden = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": declined},
        "outcomeTimestamp": _now(),
    }
    suggestions = "acceptedSuggestions"
    reason = "overrideReason"
    return {
        "unknown suggestion": (ok_accepted | {suggestions: [{"id": "no-such"}]}, suggestions),
        "another card's suggestion": (
            ok_accepted | {suggestions: [{"id": suggestion}, {"id": card["uuid"]}]},
            suggestions,
        ),
        "no suggestions": ({k: v for k, v in ok_accepted.items() if k != suggestions}, suggestions),
        "suggestions not a list": (ok_accepted | {suggestions: {"id": suggestion}}, suggestions),
        "reason on accepted": (ok_accepted | {reason: {"reason": declined}}, reason),
        "suggestions on overridden": (
            ok_overridden | {suggestions: [{"id": suggestion}]},
            suggestions,
        ),
        "unknown reason code": (
            ok_overridden | {reason: {"reason": declined | {"code": "busy"}}},
            f"{reason}.reason",
        ),
        "reason of another system": (
            ok_overridden | {reason: {"reason": declined | {"system": "http://x.example"}}},
            f"{reason}.reason",
        ),
        "reason not an object": (ok_overridden | {reason: "patient-declined"}, reason),
        "unknown reason field": (ok_overridden | {reason: {"reason": declined, "x": 1}}, reason),
        "comment not text": (
            ok_overridden | {reason: {"reason": declined, "userComment": 5}},
            f"{reason}.userComment",
        ),
        "comment too long": (
            ok_overridden | {reason: {"reason": declined, "userComment": "x" * 2001}},
            f"{reason}.userComment",
        ),
        "no time": (
            {k: v for k, v in ok_accepted.items() if k != "outcomeTimestamp"},
            "outcomeTimestamp",
        ),
        "time in the future": (
            ok_accepted | {"outcomeTimestamp": _now(timedelta(hours=1))},
            "outcomeTimestamp",
        ),
        "time before the card": (
            ok_accepted | {"outcomeTimestamp": _now(-timedelta(days=1))},
            "outcomeTimestamp",
        ),
        "not a time": (ok_accepted | {"outcomeTimestamp": "yesterday"}, "outcomeTimestamp"),
    }


def test_feedback_fields_the_card_never_offered_are_400(
    every_card: Hooks, fhir_server: FhirServer
) -> None:
    patient_id = PATIENT_IDS[3]
    card = _cards(every_card, patient_id, fhir_server)[SLE_TRIAL]
    store: Store = every_card.app.state.store
    screening_id = card["links"][0]["url"].rsplit("/", 1)[1]
    good = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": _now(),
    }
    for name, (item, field) in _bad_items(card).items():
        # Second in a batch after a good one: the whole batch is refused, nothing stored.
        response = every_card.call({"feedback": [good, item]}, path=FEEDBACK)
        assert response.status_code == 400, (name, response.text)
        issue = response.json()["issue"][0]
        assert issue["expression"] == [f"feedback[1].{field}"], (name, issue)
        assert store.feedback_for(screening_id) == [], name
    assert every_card.call({"feedback": [good]}, path=FEEDBACK).status_code == 200
    assert len(store.feedback_for(screening_id)) == 1
