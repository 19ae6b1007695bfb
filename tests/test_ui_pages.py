"""The web pages over HTTP (no browser): who may see and do what, CSRF, the sign-off kept beside
an unchanged report, what changed between two screenings, and pages that cannot run code."""

import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from app.store.database import Store
from app.ui.report_view import changes, chip, read_report
from app.ui.session import DEVELOPMENT_USER, UiUser, current_user
from tests.ui_population_fake import FakeRunService

PATIENT = "b6446621-f1b9-4a74-bd09-7ec2410b27cf"
TEMPLATES = Path(__file__).resolve().parent.parent / "app" / "ui" / "templates"
DEMO_PATIENTS = TEMPLATES.parent.parent / "demo" / "patients"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    db = tmp_path_factory.mktemp("ui-pages") / "t.db"
    settings = Settings(allow_unauthenticated=True, database_url=f"sqlite:///{db}")
    app = create_app(settings)
    with TestClient(app) as test_client:
        yield test_client
    app.dependency_overrides.pop(current_user, None)


def _as(client: TestClient, *roles: str) -> None:
    user = UiUser(subject="u-1", name="Pat Tester", roles=frozenset(roles), development=False)
    client.app.dependency_overrides[current_user] = lambda: user  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _development_user(client: TestClient) -> Iterator[None]:
    yield
    client.app.dependency_overrides.pop(current_user, None)  # type: ignore[attr-defined]


def _token(client: TestClient, path: str = "/ui/screen") -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert found is not None
    return found.group(1)


def _screen(client: TestClient, as_of: str = "2025-11-01", trial: str = "NCT06801119") -> str:
    answer = client.post(
        "/ui/screen",
        data={"csrf_token": _token(client), "patient_id": PATIENT, "as_of": as_of, "trial": trial},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return str(answer.headers["location"]).rsplit("/", 1)[1]


def _store(client: TestClient) -> Store:
    store: Store = client.app.state.store  # type: ignore[attr-defined]
    return store


def test_without_the_development_switch_every_page_asks_to_sign_in(tmp_path: Path) -> None:
    settings = Settings(allow_unauthenticated=False, database_url=f"sqlite:///{tmp_path / 'd.db'}")
    with TestClient(create_app(settings)) as closed:
        for path in ("/ui/", "/ui/screen", "/ui/audit", "/ui/trials/NCT06801119?x=1"):
            answer = closed.get(path, follow_redirects=False)
            assert answer.status_code == 303
            assert answer.headers["location"].startswith("/ui/login?next=%2Fui%2F")
        # A form from nobody: refused (no token can match) or sent to sign in.
        assert closed.post("/ui/screen", follow_redirects=False).status_code in (303, 403)


def test_the_development_switch_opens_the_pages_with_a_banner(client: TestClient) -> None:
    page = client.get("/ui/")
    assert page.status_code == 200
    assert "Development mode:" in page.text and DEVELOPMENT_USER.name in page.text


def test_pages_send_a_strict_content_security_policy(client: TestClient) -> None:
    policy = client.get("/ui/trials").headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy


def test_no_template_carries_inline_script_style_or_handler() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", text), template.name


def test_a_form_without_the_token_is_refused_and_nothing_is_screened(client: TestClient) -> None:
    before = _store(client).screenings_for(f"Patient/{PATIENT}", None, 0, 1)[0]
    for token in ("", "forged"):
        answer = client.post(
            "/ui/screen",
            data={"csrf_token": token, "patient_id": PATIENT, "trial": "NCT06801119"},
        )
        assert answer.status_code == 403 and "Form refused" in answer.text
    assert _store(client).screenings_for(f"Patient/{PATIENT}", None, 0, 1)[0] == before


def test_a_coordinator_cannot_sign_off_nor_read_the_audit_trail(client: TestClient) -> None:
    report = _screen(client)
    _as(client, "coordinator")
    page = client.get(f"/ui/reports/{report}")
    assert page.status_code == 200 and 'id="signoff"' not in page.text
    assert 'href="/ui/audit"' not in page.text
    refused = client.post(
        f"/ui/reports/{report}/signoff",
        data={"csrf_token": _token(client), "decision": "eligible"},
    )
    assert refused.status_code == 403 and "Only investigators" in refused.text
    assert _store(client).signoffs_for(report) == []
    assert client.get("/ui/audit").status_code == 403
    _as(client, "auditor")
    assert client.get("/ui/audit").status_code == 200


def test_a_sign_off_is_kept_beside_the_report_which_stays_as_issued(client: TestClient) -> None:
    report = _screen(client)
    issued = _store(client).guidance(report)
    view = read_report(orjson.loads(issued or b"{}"), client.app.state.catalog)  # type: ignore[attr-defined]
    assert view.review_items
    _as(client, "investigator")
    form = {"csrf_token": _token(client), "decision": "eligible", "note": "Checked the chart."}
    incomplete = client.post(f"/ui/reports/{report}/signoff", data=form)
    assert incomplete.status_code == 400 and "Record a decision on review item" in incomplete.text
    assert _store(client).signoffs_for(report) == []
    form |= {f"item:{i.key}": "holds" for i in view.review_items}
    first = client.post(f"/ui/reports/{report}/signoff", data=form, follow_redirects=False)
    assert first.status_code == 303
    form |= {"decision": "not-eligible", "note": "Second look: I3 fails."}
    client.post(f"/ui/reports/{report}/signoff", data=form)
    kept = _store(client).signoffs_for(report)
    assert [(s.decision, s.signed_by, s.signed_by_name) for s in kept] == [
        ("eligible", "u-1", "Pat Tester"),
        ("not-eligible", "u-1", "Pat Tester"),
    ]
    assert _store(client).guidance(report) == issued
    page = client.get(f"/ui/reports/{report}").text
    assert "Second look: I3 fails." in page and "Checked the chart." in page
    _, events = _store(client).audit_events(f"Patient/{PATIENT}", 0, 100)
    signed = [e for e in events if e.interaction == "signoff"]
    assert len(signed) == 2 and all(e.agent == "ui:u-1" for e in signed)
    audit = client.get("/fhir/AuditEvent", params={"patient": f"Patient/{PATIENT}"})
    assert audit.status_code == 200  # the sign-off rows render as FHIR AuditEvents


def test_what_changed_names_the_checks_that_moved_and_why(client: TestClient) -> None:
    adult, minor = _screen(client, "2025-11-01"), _screen(client, "2001-06-01")
    catalog = client.app.state.catalog  # type: ignore[attr-defined]
    older, newer = (
        read_report(orjson.loads(_store(client).guidance(i) or b"{}"), catalog)
        for i in (minor, adult)
    )
    moved = {c.id: c for c in changes(older, newer)}
    assert moved["I1.age"].before == "not-met" and moved["I1.age"].after == "met"
    assert "born 1983-12-10" in moved["I1.age"].reason_after
    assert all(c.before != c.after for c in moved.values())
    page = client.get("/ui/compare", params={"a": adult, "b": minor}).text
    assert "I1.age" in page and "not met" in page


def test_an_exclusion_chip_never_reads_met() -> None:
    assert chip("exclusion", "met") == ("exclusion applies", "bad")
    assert chip("exclusion", "not-met") == ("does not apply", "good")
    assert chip("inclusion", "met") == ("met", "good")
    assert chip("inclusion", "not-met") == ("not met", "bad")
    assert chip("exclusion", "unknown")[0] == chip("inclusion", "unknown")[0] == "unknown"


def test_the_population_page_offers_a_run_and_refuses_unknown_runs(client: TestClient) -> None:
    page = client.get("/ui/population")
    assert page.status_code == 200
    assert 'action="/ui/population"' in page.text
    assert client.get("/ui/population/abc").status_code == 404


def test_unknown_things_are_pages_not_json(client: TestClient) -> None:
    for path in ("/ui/trials/NCT00000000", "/ui/reports/nope"):
        answer = client.get(path)
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")


def test_the_candidate_table_sorts_and_filters_on_the_server(
    client: TestClient, tmp_path: Path
) -> None:
    app = client.app
    fake = FakeRunService(app.state.catalog, tmp_path)  # type: ignore[attr-defined]
    app.state.population = fake  # type: ignore[attr-defined]
    try:
        run = fake.start(["NCT06801119", "NCT07358988"], date(2025, 11, 1), "demo", "t")
        while fake.get(run.id).status != "completed":  # type: ignore[union-attr]
            pass
        page = client.get(f"/ui/population/{run.id}", params={"sort": "missing", "order": "desc"})
        table = page.text.split('class="candidates"', 1)[1]
        missing = [int(m) for m in re.findall(r"</td><td>(\d+)</td><td>\d+</td><td>", table)]
        assert len(missing) == 10 and missing == sorted(missing, reverse=True)
        needs_data = client.get(f"/ui/population/{run.id}", params={"result": "needs-data"}).text
        assert needs_data.count('class="chip data"') == 5 and 'class="chip bad"' not in needs_data
        refused = client.post(
            "/ui/population",
            data={"csrf_token": _token(client), "source": "/etc", "as_of": "2025-11-01"},
        )
        assert refused.status_code == 400 and "Unknown source &#39;/etc&#39;" in refused.text
        assert refused.headers["content-type"].startswith("text/html")
        csv_file = client.get(f"/ui/population/{run.id}/candidates.csv")
        assert csv_file.headers["content-type"].startswith("text/csv")
        assert "attachment" in csv_file.headers["content-disposition"]
        assert len(csv_file.text.splitlines()) == 11
    finally:
        del app.state.population  # type: ignore[attr-defined]


def test_a_bad_upload_is_explained_on_the_form_and_nothing_is_stored(client: TestClient) -> None:
    before = _store(client).screenings_for(None, None, 0, 1)[0]
    for content, words in (
        (b"{not json", "The file is not JSON"),
        (b'{"resourceType": "Patient", "id": "p"}', "must hold a FHIR Bundle"),
    ):
        answer = client.post(
            "/ui/screen",
            data={"csrf_token": _token(client), "trial": "NCT06801119", "as_of": "2025-11-01"},
            files={"bundle": ("record.json", content, "application/json")},
        )
        assert answer.status_code in (400, 422) and words in answer.text
        assert 'value="NCT06801119" checked' in answer.text  # the form keeps what was chosen
    assert _store(client).screenings_for(None, None, 0, 1)[0] == before


def test_an_upload_with_too_many_resources_is_refused_before_it_is_parsed(
    tmp_path: Path,
) -> None:
    """The page screens through the same worker jobs as $screen (app/screening/jobs.py): the
    resources are counted before the upload is parsed, and nothing is stored."""
    settings = Settings(
        allow_unauthenticated=True,
        database_url=f"sqlite:///{tmp_path / 't.db'}",
        screen_workers=0,
        max_resources=100,
    )
    bundle = orjson.loads((DEMO_PATIENTS / f"{PATIENT}.json").read_bytes())  # 431 resources
    with TestClient(create_app(settings)) as small:
        form = {"csrf_token": _token(small), "trial": "NCT06801119", "as_of": "2025-11-01"}
        answer = small.post(
            "/ui/screen",
            data=form,
            files={"bundle": ("record.json", orjson.dumps(bundle), "application/json")},
        )
        assert answer.status_code == 413 and "resources" in answer.text
        assert _store(small).screenings_for(None, None, 0, 1)[0] == 0
        bundle["entry"] = bundle["entry"][:50]
        within = small.post(
            "/ui/screen",
            data=form,
            files={"bundle": ("record.json", orjson.dumps(bundle), "application/json")},
            follow_redirects=False,
        )
        assert within.status_code == 303, within.text


def test_history_offers_two_screenings_of_one_trial_to_compare(client: TestClient) -> None:
    _screen(client)
    _screen(client)
    _screen(client, trial="NCT07358988")  # the newest is of the other trial
    page = client.get("/ui/history", params={"patient": PATIENT}).text
    older = re.search(r'name="a" value="([^"]+)"[^>]*checked', page)
    newer = re.search(r'name="b" value="([^"]+)"[^>]*checked', page)
    assert older and newer and older.group(1) != newer.group(1)
    compared = client.get("/ui/compare", params={"a": older.group(1), "b": newer.group(1)})
    assert compared.status_code == 200 and "What changed" in compared.text


def test_every_code_set_a_trial_page_links_to_opens(client: TestClient) -> None:
    links: set[str] = set()
    for trial in ("NCT06801119", "NCT07358988"):
        links |= set(
            re.findall(r'href="(/ui/code-sets/[^"]+)"', client.get(f"/ui/trials/{trial}").text)
        )
    assert len(links) > 10
    for link in sorted(links):
        page = client.get(link)
        assert page.status_code == 200, link
        assert "<td><code>" in page.text, link  # at least one code listed
    sle = client.get("/ui/code-sets/sle").text
    assert "200936003" in sle and "Lupus erythematosus (disorder)" in sle


def test_the_report_shows_each_cited_resource_with_date_value_and_reference_range(
    client: TestClient,
) -> None:
    from tests.test_report_evidence import HEMOGLOBIN, _bundle, _sle

    conditions = [_sle(f"sle-{n}", f"201{n}-03-14") for n in range(7)]
    content = orjson.dumps(_bundle(HEMOGLOBIN, *conditions))
    answer = client.post(
        "/ui/screen",
        data={"csrf_token": _token(client), "trial": "NCT06801119", "as_of": "2026-06-01"},
        files={"bundle": ("record.json", content, "application/fhir+json")},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    page = client.get(str(answer.headers["location"])).text

    def row(check: str) -> str:
        found = re.search(rf'<tr [^>]*id="r-{re.escape(check)}">(.*?)</tr>', page, re.S)
        assert found is not None, check
        return " ".join(re.sub(r"<[^>]+>", "", found.group(1)).split())

    hb = row("I7.hb")
    assert "Observation Hemoglobin, 2026-05-20: 11.2 g/dL (reference range 12–15.5 g/dL)" in hb
    assert hb.endswith("≥ 80 g/L")  # the compared threshold, as before
    sle = row("I1.sle")
    # The newest five conditions, each with its onset, then the other two collapsed.
    for year in range(2016, 2011, -1):
        assert f"Condition Systemic lupus erythematosus (disorder), onset {year}-03-14" in sle
    assert "onset 2011-03-14" not in sle and "2 more cited resources" in sle
    assert sle.index("onset 2016-03-14") < sle.index("onset 2012-03-14")
