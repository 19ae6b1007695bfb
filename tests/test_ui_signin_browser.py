"""Signing in with a real browser: Debian's Chromium, driven by Playwright, against the service
and the loopback OpenID provider (tests/oidc_provider.py), each on its own port.

What the httpx tests cannot show: that a browser follows the redirects, keeps the Secure,
SameSite=Lax session cookie on http://127.0.0.1 (a potentially trustworthy origin) and sends
it back; that a page's form carrying the CSRF token goes through while the same form posted
from another origin's page is refused; that a coordinator is refused an investigator's page.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse
from playwright.sync_api import Browser, sync_playwright
from pydantic import SecretStr

from app.core.settings import Settings
from app.main import create_app
from app.ui.session import UiUser, check_csrf, csrf_token, current_user, require_role
from app.ui.sessions import SESSION_COOKIE
from tests.loopback import free_port, serving
from tests.oidc_provider import OidcProvider, User

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="Chromium is not installed (bash tests/run installs it)"
)


def _pages(app: FastAPI) -> FastAPI:
    """A form page, the form's target, and an investigator-only page (the real pages live on
    another branch; these stand in with the same dependencies)."""

    @app.get("/ui/test/form-page", response_class=HTMLResponse)
    async def form_page(request: Request, user: Annotated[UiUser, Depends(current_user)]) -> str:
        return (
            "<!doctype html><title>form</title>"
            f'<p id="who">{user.name}</p>'
            '<form method="post" action="/ui/test/form">'
            f'<input type="hidden" name="csrf_token" value="{csrf_token(request)}">'
            '<button id="send">Send</button></form>'
        )

    @app.post("/ui/test/form", dependencies=[Depends(check_csrf)], response_class=HTMLResponse)
    async def form(user: Annotated[UiUser, Depends(current_user)]) -> str:
        return f'<!doctype html><title>sent</title><p id="done">accepted from {user.subject}</p>'

    @app.get("/ui/test/sign-off", response_class=HTMLResponse)
    async def sign_off(user: Annotated[UiUser, Depends(require_role("investigator"))]) -> str:
        return f'<!doctype html><title>sign-off</title><p id="ok">{user.subject}</p>'

    return app


def _attacker(target: str) -> FastAPI:
    """Another origin's page that posts the form without the token (a classic CSRF)."""
    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return (
            "<!doctype html><title>prize</title>"
            f'<form id="f" method="post" action="{target}/ui/test/form">'
            '<input type="hidden" name="csrf_token" value="guessed"></form>'
            '<button id="go" onclick="document.getElementById(\'f\').submit()">Win</button>'
        )

    return app


class Sites:
    def __init__(self, service: str, attacker: str, provider: OidcProvider) -> None:
        self.service = service
        self.attacker = attacker
        self.provider = provider


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    provider_port, service_port, attacker_port = free_port(), free_port(), free_port()
    provider = OidcProvider(issuer=f"http://127.0.0.1:{provider_port}")
    base = f"http://127.0.0.1:{service_port}"
    provider.redirect_uris = (f"{base}/ui/callback",)
    settings = Settings(
        public_base_url=base,
        database_url=f"sqlite:///{tmp_path_factory.mktemp('ui-browser') / 'b.db'}",
        ui_oidc_issuer=provider.issuer,
        ui_oidc_client_id=provider.client_id,
        ui_session_secret=SecretStr("browser-test-secret-0123456789abcdef"),
    )
    with (
        serving(provider.app(), provider_port),
        serving(_pages(create_app(settings)), service_port),
        serving(_attacker(base), attacker_port),
    ):
        yield Sites(base, f"http://127.0.0.1:{attacker_port}", provider)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        yield launched
        launched.close()


def test_a_coordinator_signs_in_sends_a_form_and_cannot_sign_off(
    sites: Sites, browser: Browser
) -> None:
    sites.provider.user = User("u-casey", "Casey Coordinator", ["coordinator"])
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{sites.service}/ui/test/form-page")
    # Through the provider and back: the page asked for, as the signed-in user.
    assert page.url == f"{sites.service}/ui/test/form-page"
    assert page.locator("#who").inner_text() == "Casey Coordinator"
    (cookie,) = [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Lax"
    page.click("#send")
    assert page.locator("#done").inner_text() == "accepted from u-casey"
    response = page.goto(f"{sites.service}/ui/test/sign-off")
    assert response is not None and response.status == 403
    context.close()


def test_an_investigator_reaches_the_sign_off(sites: Sites, browser: Browser) -> None:
    sites.provider.user = User("u-ivy", "Ivy Investigator", ["investigator"])
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(f"{sites.service}/ui/test/sign-off")
    assert response is not None and response.status == 200
    assert page.locator("#ok").inner_text() == "u-ivy"
    context.close()


def test_another_sites_form_is_refused(sites: Sites, browser: Browser) -> None:
    sites.provider.user = User("u-casey", "Casey Coordinator", ["coordinator"])
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{sites.service}/ui/test/form-page")  # signed in
    page.goto(sites.attacker)
    with page.expect_navigation():
        page.click("#go")
    assert "Form refused" in page.content()
    assert page.locator("#done").count() == 0
    context.close()


def test_the_real_pages_name_the_signed_in_user_and_sign_out(
    sites: Sites, browser: Browser
) -> None:
    sites.provider.user = User("u-ivy", "Ivy Investigator", ["investigator"])
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{sites.service}/ui/trials")
    assert page.url == f"{sites.service}/ui/trials"
    assert "Ivy Investigator" in page.locator(".who").inner_text()
    assert page.locator(".banner").count() == 0  # no development banner for a real sign-in
    assert page.locator("a[href='/ui/audit']").count() == 0  # the audit trail is for auditors
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(f"{sites.service}/ui/signed-out")
    assert not [c for c in context.cookies() if c["name"] == SESSION_COOKIE]
    context.close()
