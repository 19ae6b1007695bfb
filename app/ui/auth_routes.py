"""Signing in and out of the pages: ``/ui/login``, ``/ui/launch``, ``/ui/callback``,
``/ui/logout``.

``/ui/login`` starts an authorization code flow with PKCE at the hospital's OpenID Connect
provider, keeping the attempt's state, nonce and verifier in a short-lived signed cookie;
``/ui/launch`` starts one at the EHR for a SMART EHR launch from a card
(app/ui/smart_launch.py). ``/ui/callback`` checks the state, exchanges the code, validates the
ID token (app/ui/oidc.py) and starts the session (app/ui/sessions.py), then opens the page asked
for (after a launch: the report the card named); ``/ui/logout`` (a POST with the CSRF token)
ends it. :func:`install` adds these routes, the redirect to sign-in, the 403 page and the pages'
security headers to an app.
"""

import asyncio
import html
import logging
import re
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.base_url import public_base
from app.store import audit
from app.ui.oidc import OidcClient, SignInFailed
from app.ui.rendering import CSP
from app.ui.session import (
    LOGIN_PATH,
    CsrfRejected,
    CurrentUser,
    LoginRequired,
    RoleMissing,
    access_of,
    check_csrf,
    csrf_token,
    revocation_key,
)
from app.ui.sessions import (
    LOGIN_COOKIE,
    LOGIN_LIFETIME,
    SESSION_COOKIE,
    clear_cookie,
    set_cookie,
)
from app.ui.smart_launch import Launched, SmartLauncher

log = logging.getLogger("trialscreen.ui")
_SCREENING_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
router = APIRouter(prefix="/ui", include_in_schema=False)
HOME = "/ui/"
_SECURITY_HEADERS = {
    b"content-security-policy": CSP.encode(),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"same-origin",
    b"x-frame-options": b"DENY",
    b"cache-control": b"no-store",
}


@router.get("/login")
async def login(request: Request, next: str = HOME) -> Response:
    access = access_of(request)
    target = _local(next)
    if access.oidc is None:
        if access.settings.allow_unauthenticated:
            return RedirectResponse(target, status_code=303)
        return _page(
            503,
            "Sign-in is not configured",
            "This service has no OpenID Connect provider configured "
            "(TRIALSCREEN_UI_OIDC_ISSUER, TRIALSCREEN_UI_OIDC_CLIENT_ID).",
        )
    attempt = access.oidc.new_attempt(target)
    try:
        url = await access.oidc.authorization_url(_redirect_uri(request), attempt)
    except SignInFailed as exc:
        log.warning("sign-in could not start: %s", exc.reason)
        return _page(502, "Sign-in is unavailable", f"Sign-in could not start: {exc.reason}.")
    response = RedirectResponse(url, status_code=303)
    set_cookie(response, LOGIN_COOKIE, access.signer.issue_login(attempt), LOGIN_LIFETIME)
    return response


@router.get("/launch")
async def launch(request: Request, iss: str | None = None, launch: str | None = None) -> Response:
    """SMART App Launch 2.x, EHR launch: ``iss`` (the EHR's FHIR base) and ``launch`` (opaque)."""
    access = access_of(request)
    if access.smart is None:
        return _page(404, "No EHR launch", "This service is not registered for EHR launches.")
    if not iss or not launch or len(iss) > 2048 or len(launch) > 2048:
        return _page(400, "Launch incomplete", "An EHR launch names its iss and launch.")
    if not access.smart.registered(iss):
        # Never contacted: the launch URL is the caller's, and would pick where codes go.
        log.warning("EHR launch from an unregistered iss refused")
        return _page(
            400, "Unknown EHR", "This launch comes from an EHR this service does not know."
        )
    attempt = OidcClient.new_attempt(HOME, launch=launch, iss=iss.rstrip("/"))
    try:
        url = await access.smart.authorization_url(_redirect_uri(request), attempt)
    except SignInFailed as exc:
        log.warning("EHR launch could not start: %s", exc.reason)
        return _page(502, "Launch unavailable", f"The launch could not start: {exc.reason}.")
    response = RedirectResponse(url, status_code=303)
    set_cookie(response, LOGIN_COOKIE, access.signer.issue_login(attempt), LOGIN_LIFETIME)
    return response


@router.get("/callback")
async def callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
) -> Response:
    access = access_of(request)
    attempt = access.signer.read_login(request.cookies.get(LOGIN_COOKIE))
    flow = access.smart if attempt is not None and attempt.launch else access.oidc
    if flow is None or attempt is None:
        return _retry(400, "This sign-in expired or was started elsewhere.")
    if state is None or state != attempt.state:
        return _retry(400, "This sign-in answer does not belong to the sign-in you started.")
    if error is not None or code is None:
        said = (error or "no code")[:100]
        return _retry(401, f"The sign-in provider did not sign you in ({said}).")
    target = attempt.next
    try:
        if isinstance(flow, SmartLauncher):
            launched = await flow.finish(code, _redirect_uri(request), attempt)
            identity = launched.identity
            target = await _launched_page(request, launched)
        else:
            identity = await flow.sign_in(code, _redirect_uri(request), attempt)
    except SignInFailed as exc:
        log.warning("sign-in refused: %s", exc.reason)
        return _retry(401, f"Sign-in failed: {exc.reason}.")
    if not identity.roles:
        await _audit(request, identity.subject, "4", "sign-in refused: no trialscreen role")
        return _page(
            403,
            "No access to trialscreen",
            "You signed in, but your account holds none of the roles coordinator, investigator "
            "or auditor. Ask the trial office to grant one.",
        )
    cookie, session = access.signer.issue(identity.subject, identity.name, identity.roles)
    await _audit(request, identity.subject, "0", f"signed in as {', '.join(sorted(session.roles))}")
    response = RedirectResponse(target, status_code=303)
    set_cookie(response, SESSION_COOKIE, cookie, access.settings.ui_session_lifetime)
    clear_cookie(response, LOGIN_COOKIE)
    return response


@router.post("/logout", dependencies=[Depends(check_csrf)])
async def logout(request: Request) -> Response:
    access = access_of(request)
    session = await access.session(request)
    end_session = None
    if session is not None:
        now = access.signer.clock()
        await asyncio.to_thread(
            access.store.first_use, revocation_key(session.sid), session.expires, now
        )
        await _audit(request, session.subject, "0", "signed out")
        if access.oidc is not None:
            try:
                end_session = (await access.oidc.provider()).end_session_endpoint
            except SignInFailed:
                end_session = None
    if end_session:
        # RP-Initiated Logout 1.0: also end the provider's session, then come back here.
        query = {
            "client_id": access.oidc.client_id if access.oidc else "",
            "post_logout_redirect_uri": f"{_base(request)}/ui/signed-out",
        }
        target = f"{end_session}{'&' if '?' in end_session else '?'}{urlencode(query)}"
        response: Response = RedirectResponse(target, status_code=303)
    else:
        response = RedirectResponse("/ui/signed-out", status_code=303)
    clear_cookie(response, SESSION_COOKIE)
    return response


@router.get("/signed-out")
async def signed_out() -> Response:
    return _page(200, "Signed out", "You are signed out of trialscreen.", link=True)


@router.get("/whoami")
async def whoami(request: Request, user: CurrentUser) -> dict[str, object]:
    """Who the pages think you are (for scripts and tests; no patient data)."""
    return {
        "subject": user.subject,
        "name": user.name,
        "roles": sorted(user.roles),
        "development": user.development,
        "csrf": csrf_token(request),
    }


def install(app: FastAPI) -> None:
    """Sign-in routes and security headers on /ui/; and, where the pages (app/ui/install.py)
    have not already answered them with their own pages, the redirect to sign-in and the 403s."""
    app.include_router(router)
    handlers = app.exception_handlers

    async def _sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        return RedirectResponse(f"{LOGIN_PATH}?next={quote(exc.next_path, safe='')}", 303)

    async def _role(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RoleMissing)
        return _page(403, "Not allowed", f"This needs the {exc.role} role.")

    async def _csrf(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, CsrfRejected)
        return _page(403, "Form refused", exc.reason or "The form was refused.")

    for kind, handler in ((LoginRequired, _sign_in), (RoleMissing, _role), (CsrfRejected, _csrf)):
        if kind not in handlers:
            app.add_exception_handler(kind, handler)
    app.add_middleware(UiSecurityHeaders)


class UiSecurityHeaders:
    """A strict Content-Security-Policy (only this origin's scripts, styles and images; no
    inline script, no framing) and no caching on every response under /ui/; headers a page
    set itself are kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/ui"):
            await self.app(scope, receive, send)
            return

        # Static assets (/ui/static) hold no patient data: browsers may cache them.
        static = str(scope.get("path", "")).startswith("/ui/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                if static:
                    present.add(b"cache-control")
                headers += [(k, v) for k, v in _SECURITY_HEADERS.items() if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


async def _launched_page(request: Request, launched: Launched) -> str:
    """The report the card named (its ``appContext``), when it is a stored screening of the
    patient the EHR has in context; else the home page: a launch never opens another patient's
    report than the one the clinician is looking at."""
    screening_id = launched.app_context
    if not screening_id or not _SCREENING_ID.fullmatch(screening_id):
        return HOME
    row = await asyncio.to_thread(access_of(request).store.screening, screening_id)
    if row is None or launched.patient is None or row.patient_ref != f"Patient/{launched.patient}":
        log.warning("EHR launch named a report not of the patient in context; opened home")
        return HOME
    return f"/ui/reports/{screening_id}"


def _local(target: str) -> str:
    """Only a path of the pages: never another site (an open redirect through sign-in)."""
    if target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target if all(c.isprintable() for c in target) else HOME
    return HOME


def _base(request: Request) -> str:
    settings = access_of(request).settings
    return (settings.ui_redirect_base or public_base(request, settings)).rstrip("/")


def _redirect_uri(request: Request) -> str:
    return f"{_base(request)}/ui/callback"


async def _audit(request: Request, subject: str, outcome: audit.Outcome, text: str) -> None:
    await audit.record(
        request,
        action="E",
        interaction="ui-sign-in",
        outcome=outcome,
        agent=f"ui:{subject}",
        description=text,
    )


def _retry(status: int, message: str) -> Response:
    response = _page(status, "Sign-in did not complete", message, retry=True)
    clear_cookie(response, LOGIN_COOKIE)
    return response


def _page(
    status: int, title: str, message: str, retry: bool = False, link: bool = False
) -> Response:
    action = ""
    if retry:
        action = '<p><a href="/ui/login">Sign in again</a></p>'
    elif link:
        action = '<p><a href="/ui/">Back to trialscreen</a></p>'
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · trialscreen</title></head>"
        f"<body><main><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{action}"
        "</main></body></html>"
    )
    return HTMLResponse(body, status_code=status)
