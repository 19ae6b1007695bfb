"""Mounting the pages on the app: the routers under ``/ui``, the static assets, and the answers
to "not signed in", "not allowed" and "not found" as pages (the FHIR API answers those with an
OperationOutcome)."""

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from app.ui import history_pages, population_pages, screen_pages, trials_pages
from app.ui.rendering import PAGE_HEADERS, STATIC, PageNotFound, render
from app.ui.session import (
    LOGIN_PATH,
    CsrfRejected,
    LoginRequired,
    RoleMissing,
    UiUser,
    current_user,
)

_ROLE_WORDS = {
    "investigator": "Only investigators may do this.",
    "auditor": "Only auditors see the audit trail.",
    "coordinator": "Only research coordinators may do this.",
}


def install(app: FastAPI) -> None:
    for module in (trials_pages, screen_pages, history_pages, population_pages):
        app.include_router(module.router, include_in_schema=False)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.exception_handler(LoginRequired)
    async def _login(_: Request, exc: LoginRequired) -> Response:
        target = f"{LOGIN_PATH}?next={quote(exc.next_path, safe='')}"
        return RedirectResponse(target, status_code=303, headers=PAGE_HEADERS)

    @app.exception_handler(RoleMissing)
    async def _role(request: Request, exc: RoleMissing) -> Response:
        user = await _maybe_user(request)
        message = _ROLE_WORDS.get(exc.role, f"This needs the {exc.role} role.")
        return render(request, "error.html", user, 403, title="Not allowed", message=message)

    @app.exception_handler(CsrfRejected)
    async def _csrf(request: Request, _: CsrfRejected) -> Response:
        user = await _maybe_user(request)
        message = "The form was not sent from this service's page; reload the page and try again."
        return render(request, "error.html", user, 403, title="Form refused", message=message)

    @app.exception_handler(PageNotFound)
    async def _missing(request: Request, exc: PageNotFound) -> Response:
        user = await _maybe_user(request)
        return render(request, "error.html", user, 404, title="Not found", message=exc.message)


async def _maybe_user(request: Request) -> UiUser | None:
    try:
        return await current_user(request)
    except LoginRequired:
        return None
