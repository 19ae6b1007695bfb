"""How a page is answered: Jinja2 templates (autoescaped) and the headers every page carries,
among them a strict Content-Security-Policy (scripts and styles from this origin only, no inline
code), so text quoted from a record can never run in the reader's browser."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.ui.session import UiUser, csrf_token

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))


def when(value: object) -> str:
    """A stored instant for people: ``2025-11-01 14:03 UTC`` (the pages show UTC throughout)."""
    moment = value if isinstance(value, datetime) else None
    if moment is None:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return str(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


_UNIT_WORDS = {"a": "years", "d": "days", "wk": "weeks", "mo": "months"}


def unit(code: str) -> str:
    """A UCUM unit as people read it where the code alone is cryptic (``a`` is years)."""
    return _UNIT_WORDS.get(code, code)


templates.env.filters["when"] = when
templates.env.filters["unit"] = unit

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""Every page's Content-Security-Policy (app/ui/auth_routes.py adds it to /ui responses that
set none)."""


def page_csp(request: Request) -> str:
    """:data:`CSP`, with the sign-in provider's origin as a form destination: signing out posts
    to /ui/logout, which redirects to the provider's end-session endpoint, and browsers hold a
    form's redirects to ``form-action`` too."""
    issuer = request.app.state.settings.ui_oidc_issuer
    if not issuer:
        return CSP
    parts = urlsplit(str(issuer))
    return CSP.replace("form-action 'self'", f"form-action 'self' {parts.scheme}://{parts.netloc}")


PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages hold patient data
}


class PageNotFound(Exception):
    """A page about something that does not exist (an unknown trial, report or run)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def render(
    request: Request,
    template: str,
    user: UiUser | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    context |= {
        "user": user,
        "csrf_token": csrf_token(request) if user is not None else "",
        "nav": request.url.path,
    }
    response = templates.TemplateResponse(
        request,
        template,
        context,
        status_code=status_code,
        headers=PAGE_HEADERS | {"Content-Security-Policy": page_csp(request)},
    )
    return response
