"""Signing in to the pages, end to end over real HTTP: the service and an OpenID Connect provider
(tests/oidc_provider.py) each on a loopback port, and a browser played by httpx that follows
redirects and keeps cookies by hand, so every cookie attribute is seen as the browser gets it.

What must hold: the authorization code flow with PKCE signs in a coordinator, an investigator
and an auditor with the roles their ID token carries; the session cookie is HttpOnly, Secure and
SameSite; a form without the session's CSRF token is refused; a tampered, forged, expired or
signed-out session is no session; a wrong state, nonce, issuer, audience, key or algorithm never
yields one; a coordinator cannot reach what only investigators may do.
"""

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import SecretStr

from app.core.settings import CdsClient, Settings
from app.main import create_app
from app.store.database import NewScreening, Store
from app.ui.oidc import OidcClient
from app.ui.session import UiUser, check_csrf, current_user, require_role
from app.ui.sessions import LOGIN_COOKIE, SESSION_COOKIE, SessionSigner
from tests.loopback import free_port, serving
from tests.oidc_provider import OidcProvider, User

SECRET = "test-session-secret-0123456789abcdef"
CLIENT_ID = "trialscreen-ui"
Json = dict[str, Any]


def _with_test_routes(app: FastAPI) -> FastAPI:
    """Two tiny pages standing in for the real ones: an investigator-only page and a form."""

    @app.get("/ui/test/sign-off")
    async def investigators_only(
        user: Annotated[UiUser, Depends(require_role("investigator"))],
    ) -> Json:
        return {"signed_off_by": user.subject}

    @app.post("/ui/test/form", dependencies=[Depends(check_csrf)])
    async def form(user: Annotated[UiUser, Depends(current_user)]) -> Json:
        return {"accepted_from": user.subject}

    return app


@dataclass
class Service:
    base: str
    provider: OidcProvider
    settings: Settings


def _serve(
    tmp: Path, provider_base: str, provider: OidcProvider, **overrides: Any
) -> Iterator[Service]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    provider.redirect_uris = (f"{base}/ui/callback",)
    values: Json = {
        "public_base_url": base,
        "database_url": f"sqlite:///{tmp / f'ui-{port}.db'}",
        "ui_oidc_issuer": provider_base,
        "ui_oidc_client_id": CLIENT_ID,
        "ui_session_secret": SecretStr(SECRET),
        "ui_session_lifetime": 3600,
    }
    settings = Settings(**(values | overrides))
    with serving(_with_test_routes(create_app(settings)), port):
        yield Service(base, provider, settings)


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    port = free_port()
    provider = OidcProvider(issuer=f"http://127.0.0.1:{port}", client_id=CLIENT_ID)
    with serving(provider.app(), port):
        yield provider


@pytest.fixture(scope="module")
def service(provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from _serve(tmp_path_factory.mktemp("ui"), provider.issuer, provider)


@pytest.fixture(autouse=True)
def _well_behaved(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with an honest provider and a coordinator at its desk."""
    yield
    if "provider" in request.fixturenames:
        provider: OidcProvider = request.getfixturevalue("provider")
        provider.claim_changes = {}
        provider.sign_with_unpublished_key = False
        provider.algorithm = "RS256"
        provider.user = User("u-1", "Casey Coordinator", ["coordinator"])
        provider.client_secret = None


# --- a browser ---------------------------------------------------------------------------------


@dataclass
class Browser:
    """Follows redirects and keeps the service's cookies as a browser would over HTTPS (httpx's
    own jar would withhold Secure cookies from http://127.0.0.1)."""

    cookies: dict[str, str] = field(default_factory=dict)
    set_cookies: dict[str, list[Any]] = field(default_factory=dict)
    """Every Set-Cookie seen, per cookie name, in order."""
    visited: list[str] = field(default_factory=list)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = self.http.request(method, url, headers=headers, **kwargs)
        self.visited.append(url)
        for line in response.headers.get_list("set-cookie"):
            jar: SimpleCookie = SimpleCookie()
            jar.load(line)
            for name, morsel in jar.items():
                self.set_cookies.setdefault(name, []).append(morsel)
                if morsel["max-age"] == "0" or not morsel.value or morsel.value == '""':
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return response

    def go(self, url: str, hops: int = 10) -> httpx.Response:
        """GET ``url`` and follow redirects (relative ones against the current page)."""
        response = self.request("GET", url)
        while response.status_code in (302, 303, 307) and hops:
            url = str(httpx.URL(url).join(response.headers["location"]))
            response = self.request("GET", url)
            hops -= 1
        return response


def sign_in(service: Service, roles: list[str], next_path: str = "/ui/whoami") -> Browser:
    service.provider.user = User(f"user-{'-'.join(roles) or 'none'}", "Dr Test", roles)
    browser = Browser()
    response = browser.go(f"{service.base}{next_path}")
    assert response.status_code == 200, response.text
    return browser


def whoami(service: Service, browser: Browser) -> Json:
    response = browser.request("GET", f"{service.base}/ui/whoami")
    assert response.status_code == 200, (response.status_code, response.text)
    body: Json = response.json()
    return body


def _signed_out(service: Service, browser: Browser) -> bool:
    response = browser.request("GET", f"{service.base}/ui/whoami")
    return response.status_code == 303 and response.headers["location"].startswith("/ui/login")


# --- signing in ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["coordinator", "investigator", "auditor"])
def test_each_role_signs_in_with_code_and_pkce(service: Service, role: str) -> None:
    browser = sign_in(service, [role])
    me = whoami(service, browser)
    assert me["roles"] == [role] and me["development"] is False
    assert me["subject"] == f"user-{role}" and me["name"] == "Dr Test"
    # The path the browser took: our login, the provider's authorize, our callback, the page.
    login, authorize, callback, page = browser.visited[1:5]
    assert urlsplit(login).path == "/ui/login"
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(f"{service.provider.issuer}/authorize?")
    assert query["response_type"] == ["code"] and query["client_id"] == [CLIENT_ID]
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["redirect_uri"] == [f"{service.base}/ui/callback"]
    assert query["state"][0] and query["nonce"][0] and "openid" in query["scope"][0].split()
    assert urlsplit(callback).path == "/ui/callback" and urlsplit(page).path == "/ui/whoami"
    # The verifier went to the token endpoint only, never through the browser.
    verifier = service.provider.token_requests[-1]["code_verifier"]
    assert 43 <= len(verifier) <= 128 and all(verifier not in url for url in browser.visited)
    assert LOGIN_COOKIE not in browser.cookies  # the attempt is over


def test_a_visitor_is_sent_to_sign_in_and_back(service: Service) -> None:
    browser = Browser()
    response = browser.request("GET", f"{service.base}/ui/whoami?x=1")
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/ui/login"
    assert parse_qs(location.query) == {"next": ["/ui/whoami?x=1"]}
    assert browser.go(f"{service.base}/ui/whoami?x=1").status_code == 200
    assert urlsplit(browser.visited[-1]).query == "x=1"


def test_cookies_are_httponly_secure_and_samesite(service: Service) -> None:
    browser = sign_in(service, ["coordinator"])
    for name, lifetime in ((SESSION_COOKIE, "3600"), (LOGIN_COOKIE, "600")):
        morsel = browser.set_cookies[name][0]
        assert morsel["httponly"] is True and morsel["secure"] is True, name
        assert morsel["samesite"].lower() == "lax" and morsel["path"] == "/", name
        assert morsel["max-age"] == lifetime, name
    # Nobody signed in: no session cookie is handed out.
    assert not httpx.get(f"{service.base}/ui/whoami").headers.get_list("set-cookie")
    # The login cookie is cleared by the callback that used it.
    assert [m["max-age"] for m in browser.set_cookies[LOGIN_COOKIE]] == ["600", "0"]


def test_pages_send_a_strict_content_security_policy(service: Service) -> None:
    response = httpx.get(f"{service.base}/ui/signed-out")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in httpx.get(f"{service.base}/cds-services").headers


# --- forms and CSRF ----------------------------------------------------------------------------


def test_a_form_without_the_csrf_token_is_refused(service: Service) -> None:
    browser = sign_in(service, ["coordinator"])
    url = f"{service.base}/ui/test/form"
    token = whoami(service, browser)["csrf"]
    assert browser.request("POST", url, data={}).status_code == 403
    assert browser.request("POST", url, data={"csrf_token": "forged"}).status_code == 403
    response = browser.request("POST", url, data={"csrf_token": token})
    assert response.status_code == 200 and response.json() == {"accepted_from": "user-coordinator"}
    assert browser.request("POST", url, headers={"x-csrf-token": token}).status_code == 200
    multipart = browser.request(
        "POST", url, data={"csrf_token": token}, files={"bundle": ("b.json", b"{}")}
    )
    assert multipart.status_code == 200
    # The right token sent from another site's page.
    evil = {"origin": "https://evil.example", "x-csrf-token": token}
    assert browser.request("POST", url, headers=evil).status_code == 403
    # Another user's token does not fit this session.
    other = whoami(service, sign_in(service, ["coordinator"]))["csrf"]
    assert other != token
    assert browser.request("POST", url, data={"csrf_token": other}).status_code == 403
    # No session at all: refused, whatever the token.
    assert Browser().request("POST", url, data={"csrf_token": token}).status_code == 403


# --- sessions that are not -------------------------------------------------------------------


def _tampered(cookie: str) -> list[str]:
    header, payload, signature = cookie.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["coordinator", "investigator", "auditor"]
    raised = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return [
        f"{header}.{payload}.{flipped}",  # signature changed
        f"{header}.{raised}.{signature}",  # roles raised, signature kept
        f"{header}.{payload}.",  # signature dropped
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0." + raised + ".",  # alg none
        cookie[:-10],
    ]


def test_a_tampered_session_is_no_session(service: Service) -> None:
    browser = sign_in(service, ["coordinator"])
    good = browser.cookies[SESSION_COOKIE]
    for bad in _tampered(good):
        browser.cookies[SESSION_COOKIE] = bad
        assert _signed_out(service, browser), bad
    browser.cookies[SESSION_COOKIE] = good
    assert whoami(service, browser)["roles"] == ["coordinator"]


def test_a_forged_expired_or_misplaced_session_is_no_session(service: Service) -> None:
    roles = frozenset({"investigator"})
    forged, _ = SessionSigner(b"another secret", 3600).issue("mallory", "M", roles)
    past = SessionSigner(SECRET.encode(), 3600, clock=lambda: time.time() - 7200)
    expired, _ = past.issue("u-1", "Casey", roles)
    fresh, _ = SessionSigner(SECRET.encode(), 3600).issue("u-1", "Casey", roles)
    login_cookie = SessionSigner(SECRET.encode(), 3600).issue_login(OidcClient.new_attempt("/ui/"))
    browser = Browser()
    for cookie in (forged, expired, login_cookie):
        browser.cookies[SESSION_COOKIE] = cookie
        assert _signed_out(service, browser)
    browser.cookies[SESSION_COOKIE] = fresh  # the same key, in time: accepted
    assert whoami(service, browser)["roles"] == ["investigator"]


def test_signing_out_ends_the_session_everywhere(service: Service) -> None:
    browser = sign_in(service, ["investigator"])
    stolen = browser.cookies[SESSION_COOKIE]
    token = whoami(service, browser)["csrf"]
    assert browser.request("POST", f"{service.base}/ui/logout").status_code == 403  # no token
    response = browser.request("POST", f"{service.base}/ui/logout", data={"csrf_token": token})
    assert response.status_code == 303
    end_session = response.headers["location"]
    assert end_session.startswith(f"{service.provider.issuer}/logout?")
    assert SESSION_COOKIE not in browser.cookies
    assert browser.go(end_session).status_code == 200
    assert urlsplit(browser.visited[-1]).path == "/ui/signed-out"
    browser.cookies[SESSION_COOKIE] = stolen  # a copy kept from before: refused
    assert _signed_out(service, browser)


# --- sign-ins that must fail -------------------------------------------------------------------


def _to_callback(service: Service, browser: Browser) -> str:
    """Run the flow up to the provider's answer; the callback URL it sends the browser to."""
    login = browser.request("GET", f"{service.base}/ui/login?next=/ui/whoami")
    assert login.status_code == 303
    authorize = browser.request("GET", login.headers["location"])
    assert authorize.status_code == 303
    callback: str = authorize.headers["location"]
    assert callback.startswith(f"{service.base}/ui/callback?")
    return callback


def test_a_wrong_state_is_refused(service: Service) -> None:
    browser = Browser()
    callback = _to_callback(service, browser)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    for query in (f"code={code}&state=forged", f"code={code}"):
        response = browser.request("GET", f"{service.base}/ui/callback?{query}")
        assert response.status_code == 400 and SESSION_COOKIE not in browser.cookies
    # An answer arriving without the attempt's cookie (another browser) is refused too.
    assert Browser().request("GET", callback).status_code == 400


def test_a_refusal_by_the_provider_makes_no_session(service: Service) -> None:
    browser = Browser()
    callback = _to_callback(service, browser)
    state = parse_qs(urlsplit(callback).query)["state"][0]
    url = f"{service.base}/ui/callback?error=access_denied&state={state}"
    response = browser.request("GET", url)
    assert response.status_code == 401 and "access_denied" in response.text
    assert SESSION_COOKIE not in browser.cookies and LOGIN_COOKIE not in browser.cookies


def test_a_code_is_good_once(service: Service) -> None:
    browser = Browser()
    callback = _to_callback(service, browser)
    attempt = browser.cookies[LOGIN_COOKIE]
    assert browser.request("GET", callback).status_code == 303
    replay = Browser(cookies={LOGIN_COOKIE: attempt})
    response = replay.request("GET", callback)
    assert response.status_code == 401 and SESSION_COOKIE not in replay.cookies


@pytest.mark.parametrize(
    "misbehave",
    [
        {"claim_changes": {"nonce": "another-nonce"}},
        {"claim_changes": {"nonce": None}},
        {"claim_changes": {"iss": "https://evil.example"}},
        {"claim_changes": {"aud": "another-client"}},
        {"claim_changes": {"aud": [CLIENT_ID, "another"], "azp": "another"}},
        {"claim_changes": {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 4000}},
        {"claim_changes": {"sub": None}},
        {"claim_changes": {"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}},
        {"sign_with_unpublished_key": True},
        {"algorithm": "none"},
        {"algorithm": "HS256"},
    ],
    ids=[
        "wrong nonce",
        "no nonce",
        "wrong issuer",
        "wrong audience",
        "azp another client",
        "expired",
        "no subject",
        "wrong at_hash",
        "unpublished key",
        "alg none",
        "alg HS256",
    ],
)
def test_a_bad_id_token_never_makes_a_session(service: Service, misbehave: Json) -> None:
    provider = service.provider
    for name, value in misbehave.items():
        setattr(provider, name, value)
    provider.user = User("u-bad", "Mallory", ["investigator"])
    browser = Browser()
    response = browser.go(f"{service.base}/ui/whoami")
    assert response.status_code == 401, response.text
    assert SESSION_COOKIE not in browser.cookies
    assert "Sign-in failed" in response.text


def test_a_user_without_a_trialscreen_role_is_refused(service: Service) -> None:
    service.provider.user = User("u-none", "Nobody", ["nurse"])
    browser = Browser()
    response = browser.go(f"{service.base}/ui/whoami")
    assert response.status_code == 403 and SESSION_COOKIE not in browser.cookies


def test_sign_in_never_redirects_off_site(service: Service) -> None:
    for target in ("https://evil.example/", "//evil.example/ui/", "/\\evil.example", "/fhir/x"):
        browser = Browser()
        service.provider.user = User("u-1", "Casey", ["coordinator"])
        response = browser.go(f"{service.base}/ui/login?next={target}")
        assert urlsplit(browser.visited[-1]).netloc == urlsplit(service.base).netloc, target
        assert urlsplit(browser.visited[-1]).path == "/ui/", target
        assert response.status_code in (200, 404)  # the home page, when the pages exist


# --- roles -------------------------------------------------------------------------------------


def test_a_coordinator_cannot_sign_off(service: Service) -> None:
    page = f"{service.base}/ui/test/sign-off"
    coordinator = sign_in(service, ["coordinator"])
    assert coordinator.request("GET", page).status_code == 403
    auditor = sign_in(service, ["auditor"])
    assert auditor.request("GET", page).status_code == 403
    investigator = sign_in(service, ["investigator"])
    response = investigator.request("GET", page)
    assert response.status_code == 200 and response.json() == {"signed_off_by": "user-investigator"}
    both = sign_in(service, ["coordinator", "investigator"])
    assert both.request("GET", page).status_code == 200


def test_roles_from_a_nested_claim_with_a_role_map() -> None:
    settings = Settings(
        ui_oidc_issuer="https://idp.example",
        ui_oidc_client_id="c",
        ui_roles_claim="realm_access.roles",
        ui_role_map={"trial-pi": "investigator", "crc": "coordinator"},
    )
    client = OidcClient(settings, httpx.AsyncClient())
    claims = {"realm_access": {"roles": ["trial-pi", "crc", "admin", "auditor"]}}
    assert client.roles_of(claims) == {"investigator", "coordinator", "auditor"}
    assert client.roles_of({"realm_access": {"roles": "crc auditor"}}) == {"coordinator", "auditor"}
    assert client.roles_of({"realm_access": "crc"}) == frozenset()
    assert client.roles_of({}) == frozenset()


@pytest.fixture(scope="module")
def confidential(
    provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """A confidential client: it also authenticates with a secret at the token endpoint."""
    yield from _serve(
        tmp_path_factory.mktemp("ui-secret"),
        provider.issuer,
        provider,
        ui_oidc_client_secret=SecretStr("the-client-secret"),
    )


def test_a_confidential_client_sends_its_secret(confidential: Service) -> None:
    confidential.provider.client_secret = "the-client-secret"
    assert whoami(confidential, sign_in(confidential, ["auditor"]))["roles"] == ["auditor"]
    confidential.provider.client_secret = "rotated"
    browser = Browser()
    assert browser.go(f"{confidential.base}/ui/whoami").status_code == 401


# --- the development switch --------------------------------------------------------------------


@pytest.fixture(scope="module")
def development(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tmp = tmp_path_factory.mktemp("ui-dev")
    settings = Settings(
        public_base_url=base,
        database_url=f"sqlite:///{tmp / 'dev.db'}",
        allow_unauthenticated=True,
    )
    with serving(_with_test_routes(create_app(settings)), port):
        yield Service(base, OidcProvider(issuer="unused"), settings)


def test_the_development_switch_opens_the_pages_as_a_development_user(
    development: Service,
) -> None:
    browser = Browser()
    me = whoami(development, browser)
    assert me["development"] is True
    assert me["roles"] == ["auditor", "coordinator", "investigator"]
    assert browser.request("GET", f"{development.base}/ui/test/sign-off").status_code == 200
    assert browser.go(f"{development.base}/ui/login?next=/ui/whoami").status_code == 200
    # Forms still need their token, even in development.
    form = f"{development.base}/ui/test/form"
    assert browser.request("POST", form).status_code == 403
    assert browser.request("POST", form, data={"csrf_token": me["csrf"]}).status_code == 200


def test_without_a_provider_or_the_switch_nobody_gets_in(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    tmp = tmp_path_factory.mktemp("ui-closed")
    settings = Settings(public_base_url=base, database_url=f"sqlite:///{tmp / 'c.db'}")
    with serving(create_app(settings), port):
        browser = Browser()
        response = browser.go(f"{base}/ui/whoami")
        assert response.status_code == 503 and "not configured" in response.text


# --- the SMART EHR launch from a card ------------------------------------------------------------

SMART_CLIENT = "trialscreen-smart"


@dataclass
class Launching:
    service: Service
    ehr: OidcProvider
    store_url: str


@pytest.fixture(scope="module")
def launching(
    provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launching]:
    """The service, registered with an EHR whose authorization server is another loopback
    provider (its FHIR base is one of a CDS client's fhir_bases)."""
    port = free_port()
    ehr = OidcProvider(issuer=f"http://127.0.0.1:{port}", client_id=SMART_CLIENT)
    ehr.user = User("Practitioner/dr-who", "Dr Who", [])  # the EHR knows no trial roles
    tmp = tmp_path_factory.mktemp("ui-launch")
    with serving(ehr.app(), port):
        for service in _serve(
            tmp,
            provider.issuer,
            provider,
            ui_smart_client_id=SMART_CLIENT,
            cds_clients=(CdsClient(iss="https://ehr.example", fhir_bases=(ehr.fhir_base,)),),
        ):
            ehr.redirect_uris = (f"{service.base}/ui/callback",)
            yield Launching(service, ehr, str(service.settings.database_url))


def _stored_screening(url: str, patient: str) -> str:
    screening_id = str(uuid.uuid4())
    store = Store(url)
    store.save(
        [
            NewScreening(
                guidance={"resourceType": "GuidanceResponse", "id": screening_id},
                trial_id="NCT07358988",
                criteria_version="1.0.0",
                as_of=date(2026, 1, 1),
                patient_ref=f"Patient/{patient}",
                eligibility="needs-data",
                record_digest="0" * 64,
                requested_by="cds:https://ehr.example",
            )
        ]
    )
    store.close()
    return screening_id


def test_an_ehr_launch_opens_the_report_the_card_named(launching: Launching) -> None:
    base, ehr = launching.service.base, launching.ehr
    screening_id = _stored_screening(launching.store_url, "p-1")
    ehr.launches["launch-1"] = {"patient": "p-1", "appContext": screening_id}
    browser = Browser()
    browser.go(f"{base}/ui/launch?iss={ehr.fhir_base}&launch=launch-1")
    launch, authorize, callback, page = browser.visited[:4]
    assert urlsplit(launch).path == "/ui/launch" and urlsplit(callback).path == "/ui/callback"
    query = parse_qs(urlsplit(authorize).query)
    assert authorize.startswith(f"{ehr.issuer}/authorize?")
    assert query["aud"] == [ehr.fhir_base] and query["launch"] == ["launch-1"]
    assert query["client_id"] == [SMART_CLIENT]
    assert set(query["scope"][0].split()) == {"launch", "openid", "fhirUser"}
    assert query["code_challenge_method"] == ["S256"] and query["nonce"][0]
    assert urlsplit(page).path == f"/ui/reports/{screening_id}"
    me = whoami(launching.service, browser)
    assert me["subject"] == "Practitioner/dr-who" and me["roles"] == ["coordinator"]


def test_a_launch_naming_another_patients_report_opens_home(launching: Launching) -> None:
    base, ehr = launching.service.base, launching.ehr
    screening_id = _stored_screening(launching.store_url, "p-1")
    ehr.launches["launch-2"] = {"patient": "p-2", "appContext": screening_id}
    ehr.launches["launch-3"] = {"patient": "p-1", "appContext": "no-such-screening"}
    for launch in ("launch-2", "launch-3"):
        browser = Browser()
        browser.go(f"{base}/ui/launch?iss={ehr.fhir_base}&launch={launch}")
        assert urlsplit(browser.visited[-1]).path == "/ui/", launch


def test_a_launch_from_an_unknown_ehr_is_refused_without_contacting_it(
    launching: Launching,
) -> None:
    base, ehr = launching.service.base, launching.ehr
    before = len(ehr.seen)
    for iss in (f"{ehr.issuer}/other-fhir", ehr.issuer, "https://evil.example/fhir"):
        response = Browser().request("GET", f"{base}/ui/launch?iss={iss}&launch=launch-1")
        assert response.status_code == 400, iss
    assert Browser().request("GET", f"{base}/ui/launch?launch=x").status_code == 400
    assert ehr.seen[before:] == []


def test_a_launch_with_a_bad_id_token_makes_no_session(launching: Launching) -> None:
    base, ehr = launching.service.base, launching.ehr
    ehr.launches["launch-4"] = {"patient": "p-1"}
    ehr.claim_changes = {"nonce": "replayed"}
    try:
        browser = Browser()
        response = browser.go(f"{base}/ui/launch?iss={ehr.fhir_base}&launch=launch-4")
    finally:
        ehr.claim_changes = {}
    assert response.status_code == 401 and SESSION_COOKIE not in browser.cookies


def test_without_a_smart_client_there_is_no_launch(service: Service) -> None:
    response = Browser().request("GET", f"{service.base}/ui/launch?iss=x&launch=y")
    assert response.status_code == 404
