"""The web pages in a real browser: Debian's Chromium driven by Playwright against the real
service (uvicorn on loopback, development mode). Every page loads at 1280 and 390 px without a
Content-Security-Policy or script error and with no serious or critical axe-core violation; a
screening by id and by upload shows the same chips as the API's answer; a sign-off is recorded
and shown beside the report; a population run progresses to its funnel and candidate table, whose
CSV downloads; the main flow works by keyboard alone. Screenshots of every page go to
``var/screenshots/`` (not committed) for people to look at."""

import csv
import json
import os
import re
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.core.settings import Settings
from app.main import create_app
from app.population.runs import RunService
from app.store.database import Store
from app.ui.report_view import chip
from tests.loopback import free_port, serving
from tests.ui_population_fake import FakeRunService

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "var" / "screenshots"
DEMO = ROOT / "app" / "demo" / "patients"
PATIENT = "b6446621-f1b9-4a74-bd09-7ec2410b27cf"
UPLOADED = "c49c4f3c-16d7-4db2-89ea-3973f14f60bb"
AS_OF = "2025-11-01"
WIDTHS = {"wide": 1280, "narrow": 390}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="Chromium is not installed (bash tests/run installs it)"
)


class Service:
    def __init__(
        self, base: str, app: FastAPI, population: FakeRunService, real: RunService
    ) -> None:
        self.base = base
        self.app = app
        self.store: Store = app.state.store
        self.population = population
        self.real_population = real


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("ui")
    settings = Settings(
        allow_unauthenticated=True,
        database_url=f"sqlite:///{work / 'trialscreen.db'}",
        data_dir=work,
        population_workers=1,
    )
    app = create_app(settings)
    port = free_port()
    with serving(app, port):
        # After start-up, so the fake (a run that advances one patient per status read, to
        # watch the progress bar move) stands in for the service's own; that one is kept for
        # the test that runs a real population run from the page.
        real = app.state.population
        app.state.population = FakeRunService(app.state.catalog, work / "runs")
        yield Service(f"http://127.0.0.1:{port}", app, app.state.population, real)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield launched
        launched.close()


class Watched:
    """A page whose console errors (a CSP violation is one) and failed requests are kept."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


@pytest.fixture
def page(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    watched = Watched(context.new_page())
    yield watched
    context.close()
    assert watched.errors == []


def _api_screen(service: Service, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"resourceType": "Parameters", "parameter": parameters}
    answer = httpx.post(
        f"{service.base}/fhir/ResearchStudy/NCT06801119/$screen",
        json=body,
        headers={"content-type": "application/fhir+json"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    guidance: dict[str, Any] = answer.json()
    return guidance


def _expected_chips(guidance: dict[str, Any]) -> dict[str, str]:
    """Check id -> chip words, from the API's GuidanceResponse for the same record."""
    chips: dict[str, str] = {}

    def walk(node: dict[str, Any]) -> None:
        parts = {p["name"]: p for p in reversed(node["part"])}
        chips[parts["id"]["valueString"]] = chip(
            parts["kind"]["valueCode"], parts["result"]["valueCode"]
        )[0]
        for p in node["part"]:
            if p["name"] == "criterion":
                walk(p)

    for p in guidance["contained"][0]["parameter"]:
        if p["name"] == "criterion":
            walk(p)
    return chips


def _shown_chips(page: Page) -> dict[str, str]:
    rows = page.locator("table.results tbody tr")
    shown = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        shown[row.locator(".id").inner_text().strip()] = row.locator(".chip").inner_text().strip()
    return shown


def _screen_on_page(
    page: Page, service: Service, *, patient: str = "", upload: Path | None = None
) -> None:
    page.goto(f"{service.base}/ui/screen")
    page.get_by_label("KN5501 (NCT07358988)").uncheck()
    if patient:
        page.get_by_label("Patient id").fill(patient)
    if upload is not None:
        page.get_by_label("or a Bundle file (JSON)").set_input_files(str(upload))
    page.get_by_label("As of").fill(AS_OF)
    page.get_by_role("button", name="Screen").click()
    page.wait_for_url(re.compile(r"/ui/reports/"))


def test_a_screening_by_id_shows_the_chips_the_api_gives(page: Watched, service: Service) -> None:
    _screen_on_page(page.page, service, patient=PATIENT)
    expected = _expected_chips(
        _api_screen(
            service,
            [{"name": "patient", "valueString": PATIENT}, {"name": "asOf", "valueDate": AS_OF}],
        )
    )
    assert _shown_chips(page.page) == expected
    # The mapping itself: this patient takes no glucocorticoid (I3 not met), so not eligible, and
    # an exclusion that does not apply never reads "met".
    assert expected["I3"] == "not met"
    expect(page.page.locator(".verdict.machine .overall")).to_have_text("Not eligible")
    exclusion_chips = page.page.locator("tbody.exclusion .chip").all_inner_texts()
    assert exclusion_chips and "met" not in exclusion_chips
    assert "does not apply" in exclusion_chips


def test_a_screening_of_an_uploaded_bundle_shows_the_chips_the_api_gives(
    page: Watched, service: Service
) -> None:
    path = DEMO / f"{UPLOADED}.json"
    _screen_on_page(page.page, service, upload=path)
    bundle = json.loads(path.read_text())
    expected = _expected_chips(
        _api_screen(
            service,
            [{"name": "bundle", "resource": bundle}, {"name": "asOf", "valueDate": AS_OF}],
        )
    )
    assert _shown_chips(page.page) == expected
    expect(page.page.locator("h1")).to_contain_text(UPLOADED)


def test_a_sign_off_is_recorded_beside_the_report_and_audited(
    page: Watched, service: Service
) -> None:
    p = page.page
    _screen_on_page(p, service, patient=PATIENT)
    report_id = p.url.rsplit("/", 1)[1]
    items = p.locator("#signoff fieldset.item")
    assert items.count() > 0
    for i in range(items.count()):
        items.nth(i).get_by_label("Holds").check()
    p.get_by_label("Not eligible").check()
    p.get_by_label("Note", exact=True).fill("No current glucocorticoid; I3 fails.")
    p.get_by_role("button", name="Record sign-off").click()
    p.wait_for_url(re.compile(r"#signoff$"))
    human = p.locator(".verdict.human")
    expect(human.locator(".overall")).to_have_text("Not eligible")
    expect(human).to_contain_text("No current glucocorticoid; I3 fails.")
    expect(human).to_contain_text("Development user")
    expect(p.locator(".verdict.machine .overall")).to_have_text("Not eligible")
    expect(p.locator("table.side tbody tr")).to_have_count(items.count())
    stored = service.store.signoffs_for(report_id)
    assert [(s.decision, s.signed_by) for s in stored] == [("not-eligible", "development")]
    assert len(json.loads(stored[0].items)) == items.count()
    p.goto(f"{service.base}/ui/audit")
    signed = p.locator("table.audit tbody tr", has_text="signoff")
    expect(signed).to_have_count(1)
    expect(signed).to_contain_text("investigator sign-off: not-eligible")
    expect(signed).to_contain_text(f"GuidanceResponse/{report_id}")


def test_a_population_run_progresses_to_its_funnel_table_and_csv(
    page: Watched, service: Service, tmp_path: Path
) -> None:
    p = page.page
    p.goto(f"{service.base}/ui/population")
    p.get_by_label("As of").fill(AS_OF)
    p.get_by_role("button", name="Start run").click()
    p.wait_for_url(re.compile(r"/ui/population/[0-9a-f]+$"))
    # The fake advances one patient per status read: the bar moves, then the page reloads.
    expect(p.locator("progress")).to_be_visible()
    p.screenshot(path=str(SHOTS / "population-run-progress-wide.png"), full_page=True)
    expect(p.locator("#run-status")).to_have_text("completed", timeout=20_000)
    funnels = p.locator("svg.funnel-chart")
    expect(funnels).to_have_count(2)
    steps = len(service.population.funnel(p.url.rsplit("/", 1)[1])[0]["steps"])
    expect(funnels.first.locator("rect")).to_have_count(steps + 1)
    rows = p.locator("table.candidates tbody tr")
    expect(rows).to_have_count(10)  # 5 demo patients x 2 trials
    p.get_by_label("Result").select_option("ineligible")
    p.get_by_role("button", name="Filter").click()
    shown = rows.count()
    assert 0 < shown < 10
    assert set(p.locator("table.candidates tbody .chip").all_inner_texts()) == {"Not eligible"}
    with p.expect_download() as download:
        p.get_by_role("link", name="Download all as CSV").click()
    saved = tmp_path / "candidates.csv"
    download.value.save_as(saved)
    lines = saved.read_text().splitlines()
    assert lines[0].startswith("rank,trial,patient,result,missing,review,") and len(lines) == 11
    rows.first.get_by_role("link").click()
    expect(p.locator(".verdict.machine .overall")).to_have_text("Not eligible")
    expect(p.locator("table.results tbody tr").first).to_be_visible()


def test_a_real_population_run_from_the_page_matches_its_outputs(
    page: Watched, service: Service
) -> None:
    """The service's own RunService (DuckDB, worker processes) behind the same page."""
    faked = service.app.state.population
    service.app.state.population = service.real_population
    try:
        p = page.page
        p.goto(f"{service.base}/ui/population")
        p.get_by_label("As of").fill(AS_OF)
        p.get_by_role("button", name="Start run").click()
        p.wait_for_url(re.compile(r"/ui/population/[0-9a-f]+$"))
        expect(p.locator("#run-status")).to_have_text("completed", timeout=180_000)
        run = p.url.rsplit("/", 1)[1]
        funnel = service.real_population.funnel(run)
        funnels = p.locator("svg.funnel-chart")
        expect(funnels).to_have_count(len(funnel))
        expect(funnels.first.locator("rect")).to_have_count(len(funnel[0]["steps"]) + 1)
        with service.real_population.candidates_csv_path(run).open() as f:
            listed = list(csv.DictReader(f))
        rows = p.locator("table.candidates tbody tr")
        expect(rows).to_have_count(len(listed))
        first = listed[0]
        expect(rows.first).to_contain_text(first["patient"].removeprefix("Patient/"))
        rows.first.get_by_role("link").click()
        expect(p.locator(".verdict.machine .overall")).to_be_visible()
        expect(p.locator("table.results tbody tr").first).to_be_visible()
    finally:
        service.app.state.population = faked


def _tab_to(page: Page, selector: str, limit: int = 60) -> None:
    """Press Tab until the element matching ``selector`` has the focus."""
    target = page.locator(selector)
    for _ in range(limit):
        if target.evaluate("e => e === document.activeElement"):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} not reachable by Tab")


def test_the_main_flow_works_by_keyboard_alone(page: Watched, service: Service) -> None:
    p = page.page
    p.goto(f"{service.base}/ui/")
    p.keyboard.press("Tab")
    expect(p.locator(".skip")).to_be_focused()
    expect(p.locator(".skip")).to_be_in_viewport()  # the skip link shows itself when focused
    _tab_to(p, "nav a[href='/ui/screen']")
    p.keyboard.press("Enter")
    p.wait_for_url(re.compile(r"/ui/screen$"))
    _tab_to(p, "#patient_id")
    outline = p.locator("#patient_id").evaluate("e => getComputedStyle(e).outlineStyle")
    assert outline == "solid"  # where the focus is shows
    p.keyboard.type(PATIENT)
    _tab_to(p, "#as_of")
    p.keyboard.type("11012025")  # Chromium's date field: month, day, year
    _tab_to(p, "button[type=submit]")
    p.keyboard.press("Enter")
    p.wait_for_url(re.compile(r"/ui/screened\?ids="))
    _tab_to(p, "ul.cards a >> nth=0")
    p.keyboard.press("Enter")
    p.wait_for_url(re.compile(r"/ui/reports/"))
    items = p.locator("#signoff fieldset.item")
    for i in range(items.count()):
        _tab_to(p, f"#signoff fieldset.item >> nth={i} >> input[type=radio] >> nth=0", 200)
        p.keyboard.press("Space")
    _tab_to(p, "#signoff input[name=decision] >> nth=0", 200)
    p.keyboard.press("Space")
    _tab_to(p, "#signoff button[type=submit]")
    p.keyboard.press("Enter")
    p.wait_for_url(re.compile(r"#signoff$"))
    expect(p.locator(".verdict.human .overall")).to_have_text("Eligible")


def _pages(service: Service) -> list[tuple[str, str]]:
    """Every page, by name and address (after the flows above made reports and a run)."""
    by_id = [{"name": "patient", "valueString": PATIENT}, {"name": "asOf", "valueDate": AS_OF}]
    while service.store.screenings_for(f"Patient/{PATIENT}", "NCT06801119", 0, 1)[0] < 2:
        _api_screen(service, by_id)  # when this test runs alone
    _, kept = service.store.screenings_for(f"Patient/{PATIENT}", "NCT06801119", 0, 2)
    newest, older = (json.loads(g)["id"] for g in kept)
    # A screening before the patient turned 18: the comparison has checks that moved.
    minor = [
        {"name": "patient", "valueString": PATIENT},
        {"name": "asOf", "valueDate": "2001-06-01"},
    ]
    younger = _api_screen(service, minor)["id"]
    done = [r for r in service.population.list() if r.status == "completed"]
    if not done:
        started = service.population.start(["NCT06801119"], date(2025, 11, 1), "demo", "test")
        while (run_now := service.population.get(started.id)) and run_now.status != "completed":
            pass
        done = [r for r in service.population.list() if r.status == "completed"]
    run = done[0].id
    return [
        ("trials", "/ui/trials"),
        ("trial", "/ui/trials/NCT06801119"),
        ("code-set", "/ui/code-sets/sle"),
        ("screen", "/ui/screen"),
        ("report", f"/ui/reports/{newest}"),
        ("screened", f"/ui/screened?ids={newest},{older}"),
        ("history", f"/ui/history?patient={PATIENT}"),
        ("compare", f"/ui/compare?a={younger}&b={newest}"),
        ("audit", "/ui/audit"),
        ("population", "/ui/population"),
        ("population-run", f"/ui/population/{run}"),
        ("population-report", f"/ui/population/{run}/reports/NCT06801119/Patient/{PATIENT}"),
        ("not-found", "/ui/trials/NCT00000000"),
    ]


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_loads_fits_and_passes_axe(
    browser: Browser, service: Service, width: str
) -> None:
    context = browser.new_context(viewport={"width": WIDTHS[width], "height": 900})
    watched = Watched(context.new_page())
    p = watched.page
    axe = Axe()
    problems = []
    for name, path in _pages(service):
        answer = p.goto(service.base + path)
        assert answer is not None
        assert answer.status == (404 if name == "not-found" else 200), name
        assert "script-src 'self'" in (answer.headers.get("content-security-policy") or "")
        if name == "not-found":  # the browser logs the page's own 404; nothing else may fail
            assert [e for e in watched.errors if "404" not in e] == []
            watched.errors.clear()
        p.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
        results = axe.run(p)
        for violation in results.response["violations"]:
            if violation["impact"] in ("serious", "critical"):
                targets = [n["target"] for n in violation["nodes"]][:3]
                problems.append(f"{name}: {violation['id']} {targets}")
        overflow = p.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 1:
            problems.append(f"{name}: {overflow}px wider than the {WIDTHS[width]}px window")
    context.close()
    assert problems == [], "\n".join(problems)
    assert watched.errors == []


def test_the_report_prints_without_the_controls(page: Watched, service: Service) -> None:
    p = page.page
    _screen_on_page(p, service, patient=PATIENT)
    p.emulate_media(media="print")
    for hidden in ("nav[aria-label=Main]", "#signoff", ".banner", "[data-print]"):
        expect(p.locator(hidden)).to_be_hidden()
    expect(p.locator(".verdict.machine .overall")).to_be_visible()
    expect(p.locator("table.results tbody tr").first).to_be_visible()
    expect(p.locator("#review-h")).to_be_visible()
    p.screenshot(path=str(SHOTS / "report-print.png"))
