"""Browser sessions of the pages: a signed cookie, and the CSRF token bound to it.

The session is a JWT (HS256 under a key derived from ``TRIALSCREEN_UI_SESSION_SECRET``, or one
generated per process when it is unset) holding who signed in, their roles, a session id, the
CSRF token and the expiry; the browser keeps it in an HttpOnly, Secure, SameSite=Lax cookie.
Lax, not Strict: the EHR's card links and the provider's redirect back are cross-site top-level
navigations, which a Strict cookie would not follow (the user would look signed out); what
changes state is a POST, which Lax never sends cross-site, and every POST also needs the CSRF
token. Signing out records the session id as revoked until the session would have expired (in
the database, so every worker and replica refuses the cookie afterwards).

A second short-lived cookie carries one sign-in attempt (state, nonce, PKCE verifier and where
to go afterwards) from ``/ui/login`` to ``/ui/callback``, signed under another derived key.
"""

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from starlette.responses import Response

SESSION_COOKIE = "trialscreen_session"
LOGIN_COOKIE = "trialscreen_login"
LOGIN_LIFETIME = 600
"""Seconds a user has at the provider between /ui/login and /ui/callback."""
ROLES = frozenset({"coordinator", "investigator", "auditor"})


@dataclass(frozen=True, slots=True)
class Session:
    subject: str
    name: str
    roles: frozenset[str]
    sid: str
    csrf: str
    expires: float


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    state: str
    nonce: str
    verifier: str
    next: str
    launch: str | None = None
    iss: str | None = None


class SessionSigner:
    """Issues and reads the two cookies; knows nothing of OpenID Connect."""

    def __init__(
        self, secret: bytes, lifetime: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._session_key = _derive(secret, "session")
        self._login_key = _derive(secret, "login")
        self._csrf_key = _derive(secret, "csrf")
        self.lifetime = lifetime
        self.clock = clock

    def issue(self, subject: str, name: str, roles: frozenset[str]) -> tuple[str, Session]:
        now = self.clock()
        session = Session(
            subject=subject,
            name=name,
            roles=roles & ROLES,
            sid=secrets.token_urlsafe(18),
            csrf=secrets.token_urlsafe(32),
            expires=now + self.lifetime,
        )
        claims = {
            "sub": subject,
            "name": name,
            "roles": sorted(session.roles),
            "sid": session.sid,
            "csrf": session.csrf,
            "iat": int(now),
            "exp": int(session.expires),
            "typ": "session",
        }
        return jwt.encode(claims, self._session_key, algorithm="HS256"), session

    def read(self, cookie: str | None) -> Session | None:
        """The session in the cookie; None when absent, tampered with, or expired."""
        claims = self._decode(cookie, self._session_key, "session")
        if claims is None:
            return None
        roles, fields = claims.get("roles"), (claims.get(k) for k in ("sub", "name", "sid", "csrf"))
        subject, name, sid, csrf = fields
        if not (isinstance(roles, list) and all(isinstance(r, str) for r in roles)):
            return None
        if not all(isinstance(v, str) and v for v in (subject, sid, csrf)):
            return None
        assert isinstance(subject, str) and isinstance(sid, str) and isinstance(csrf, str)
        return Session(
            subject=subject,
            name=name if isinstance(name, str) else subject,
            roles=frozenset(roles) & ROLES,
            sid=sid,
            csrf=csrf,
            expires=float(claims["exp"]),
        )

    def issue_login(self, attempt: LoginAttempt) -> str:
        now = self.clock()
        claims: dict[str, Any] = {
            "state": attempt.state,
            "nonce": attempt.nonce,
            "verifier": attempt.verifier,
            "next": attempt.next,
            "iat": int(now),
            "exp": int(now + LOGIN_LIFETIME),
            "typ": "login",
        }
        claims |= {k: v for k, v in (("launch", attempt.launch), ("iss", attempt.iss)) if v}
        return jwt.encode(claims, self._login_key, algorithm="HS256")

    def read_login(self, cookie: str | None) -> LoginAttempt | None:
        claims = self._decode(cookie, self._login_key, "login")
        if claims is None:
            return None
        values = [claims.get(k) for k in ("state", "nonce", "verifier", "next")]
        if not all(isinstance(v, str) and v for v in values):
            return None
        state, nonce, verifier, after = (str(v) for v in values)
        launch, iss = claims.get("launch"), claims.get("iss")
        return LoginAttempt(
            state,
            nonce,
            verifier,
            after,
            launch if isinstance(launch, str) else None,
            iss if isinstance(iss, str) else None,
        )

    def development_csrf(self) -> str:
        """The CSRF token of the development user (no session): fixed for this process's key."""
        return hmac.new(self._csrf_key, b"development", hashlib.sha256).hexdigest()

    def _decode(self, token: str | None, key: bytes, kind: str) -> dict[str, Any] | None:
        if not token or len(token) > 4096:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["HS256"],
                options={"require": ["exp", "iat"], "verify_exp": False},
            )
        except jwt.PyJWTError:
            return None
        expires = claims.get("exp")
        # Expiry checked against this signer's clock (tests move it), not PyJWT's.
        if claims.get("typ") != kind or not isinstance(expires, int | float):
            return None
        return claims if self.clock() < expires else None


def same_token(given: str | None, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="lax"
    )


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="lax")


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def _derive(secret: bytes, purpose: str) -> bytes:
    # One configured secret, separate keys: a login cookie can never pass as a session.
    return hmac.new(secret, f"trialscreen-ui/{purpose}".encode(), hashlib.sha256).digest()
