"""Who is using the pages: the signed-in user, their roles, and the CSRF token their forms carry.

This module is the seam between the pages and the sign-in (OpenID Connect, issue 15 point 2):
the pages depend only on these names. This version implements the development mode only: with
``TRIALSCREEN_ALLOW_UNAUTHENTICATED`` on, every visitor is a development user holding every role
(the pages show a banner saying so); otherwise nobody is signed in and every page redirects to
``/ui/login``.
"""

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, Request

ROLES = frozenset({"coordinator", "investigator", "auditor"})
LOGIN_PATH = "/ui/login"
CSRF_FIELD = "csrf_token"


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
    """A form came without the token this user's pages carry: the pages answer 403."""


async def current_user(request: Request) -> UiUser:
    """The signed-in user; raises ``LoginRequired`` when there is none."""
    if request.app.state.settings.allow_unauthenticated:
        return DEVELOPMENT_USER
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    raise LoginRequired(path)


def require_role(role: str) -> Callable[..., Awaitable[UiUser]]:
    """A dependency: the signed-in user, who must hold ``role`` (else ``RoleMissing``)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(user: UiUser = Depends(current_user)) -> UiUser:  # noqa: B008
        if role not in user.roles:
            raise RoleMissing(role)
        return user

    return dependency


def _secret(request: Request) -> bytes:
    state = request.app.state
    secret: bytes | None = getattr(state, "ui_csrf_secret", None)
    if secret is None:
        secret = state.ui_csrf_secret = secrets.token_bytes(32)
    return secret


def csrf_token(request: Request) -> str:
    """The token every POST form of this user carries in a hidden ``csrf_token`` field: an HMAC
    of the session under a per-process secret (in development the session is the development
    user), so another site can neither read nor forge it."""
    return hmac.new(_secret(request), b"csrf:development", hashlib.sha256).hexdigest()


async def check_csrf(request: Request) -> None:
    """A dependency for every POST: the form's ``csrf_token`` must be this user's token."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent, csrf_token(request)):
        raise CsrfRejected()
