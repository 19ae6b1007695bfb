"""Who is using the pages: the signed-in user, their roles, and the CSRF token their forms carry.

This module is the seam between the pages and the sign-in (OpenID Connect, issue 15 point 2):
the pages depend only on these names. ``current_user`` is the user of the session cookie
(app/ui/sessions.py, started by app/ui/auth_routes.py) or, with the development switch
(``TRIALSCREEN_ALLOW_UNAUTHENTICATED``) and nobody signed in, a development user holding every
role, whom the pages show under a banner; anyone else is sent to ``/ui/login``.
``require_role`` guards what only one role may do (investigators sign off, auditors read the
audit trail); ``csrf_token`` and ``check_csrf`` protect every form.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request

from app.core.base_url import public_base
from app.core.settings import Settings
from app.store.database import Store
from app.ui.oidc import OidcClient
from app.ui.sessions import ROLES, SESSION_COOKIE, Session, SessionSigner, new_secret, same_token
from app.ui.smart_launch import SmartLauncher

LOGIN_PATH = "/ui/login"
CSRF_FIELD = "csrf_token"
log = logging.getLogger("trialscreen.ui")
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True)
class UiUser:
    subject: str
    name: str
    roles: frozenset[str]  # coordinator | investigator | auditor
    development: bool


DEVELOPMENT_USER = UiUser(
    subject="development", name="Development user", roles=ROLES, development=True
)


class LoginRequired(Exception):
    """Nobody is signed in: the pages answer with a redirect to ``LOGIN_PATH``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class RoleMissing(Exception):
    """The signed-in user lacks the role a page needs: the pages answer 403 with a page."""

    def __init__(self, role: str) -> None:
        super().__init__(role)
        self.role = role


class CsrfRejected(Exception):
    """A form came without the token this user's pages carry (or from another site's page):
    the pages answer 403. ``reason`` says which, for the log and the page."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class UiAccess:
    """The process's session signer and OpenID Connect client (one per app)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        oidc: OidcClient | None,
        smart: SmartLauncher | None = None,
    ) -> None:
        secret = settings.ui_session_secret
        if secret is None and oidc is not None:
            log.warning(
                "TRIALSCREEN_UI_SESSION_SECRET is not set: this process signs sessions with its "
                "own key, so other workers and replicas refuse them and a restart ends them"
            )
        key = secret.get_secret_value().encode() if secret else new_secret()
        self.signer = SessionSigner(key, settings.ui_session_lifetime)
        self.settings = settings
        self.store = store
        self.oidc = oidc
        self.smart = smart

    async def session(self, request: Request) -> Session | None:
        cached = request.scope.get("trialscreen.ui_session", False)
        if cached is not False:
            return cached  # type: ignore[no-any-return]
        session = self.signer.read(request.cookies.get(SESSION_COOKIE))
        if session is not None:
            key = revocation_key(session.sid)
            if await asyncio.to_thread(self.store.used, key, self.signer.clock()):
                session = None  # signed out: the cookie outlived its session
        request.scope["trialscreen.ui_session"] = session
        return session


def access_of(request: Request) -> UiAccess:
    state = request.app.state
    access: UiAccess | None = getattr(state, "ui_access", None)
    if access is None:
        settings: Settings = state.settings
        oidc = (
            OidcClient(settings, state.http)
            if settings.ui_oidc_issuer and settings.ui_oidc_client_id
            else None
        )
        smart = SmartLauncher(settings, state.http) if settings.ui_smart_client_id else None
        access = state.ui_access = UiAccess(settings, state.store, oidc, smart)
    return access


def revocation_key(sid: str) -> str:
    return f"ui-signed-out:{sid}"


async def current_user(request: Request) -> UiUser:
    access = access_of(request)
    session = await access.session(request)
    if session is not None:
        return UiUser(session.subject, session.name, session.roles, development=False)
    if access.settings.allow_unauthenticated:
        return DEVELOPMENT_USER
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise LoginRequired(target)


CurrentUser = Annotated[UiUser, Depends(current_user)]


def require_role(role: str) -> Callable[..., Awaitable[UiUser]]:
    """A dependency: the signed-in user, who must hold ``role`` (else ``RoleMissing``)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(user: CurrentUser) -> UiUser:
        if role not in user.roles:
            raise RoleMissing(role)
        return user

    return dependency


def csrf_token(request: Request) -> str:
    """The token every POST of this user carries (hidden field ``csrf_token``, or header
    ``X-CSRF-Token``): bound to the session, so another site can neither read nor forge it; in
    development, one per process for the development user."""
    access = access_of(request)
    session = request.scope.get("trialscreen.ui_session", False)
    if session is False:  # current_user has not run for this request
        session = access.signer.read(request.cookies.get(SESSION_COOKIE))
    if isinstance(session, Session):
        return session.csrf
    return access.signer.development_csrf()


async def check_csrf(request: Request) -> None:
    """A dependency of every POST: the request comes from our own pages (its Origin, when the
    browser sends one, is ours) and carries the session's CSRF token."""
    access = access_of(request)
    origin = request.headers.get("origin")
    if origin is not None and origin != _origin(public_base(request, access.settings)):
        raise CsrfRejected("The form was sent from another site's page.")
    session = await access.session(request)
    if session is None and not access.settings.allow_unauthenticated:
        raise CsrfRejected("The session has ended; sign in again and resend the form.")
    expected = session.csrf if session else access.signer.development_csrf()
    given = request.headers.get(CSRF_HEADER)
    if given is None and _is_form(request):
        form = await request.form()
        field = form.get(CSRF_FIELD)
        given = field if isinstance(field, str) else None
    if not same_token(given, expected):
        raise CsrfRejected("The form's security token is missing or stale; reload the page.")


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return kind in {"application/x-www-form-urlencoded", "multipart/form-data"}


def _origin(base: str) -> str:
    parts = urlsplit(base)
    return f"{parts.scheme}://{parts.netloc}"
