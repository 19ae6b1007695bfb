"""Who may call the REST API: OAuth2 bearer JWTs from the configured issuer, checked for
signature (keys from its JWKS), ``iss``, ``aud``, ``exp``/``nbf`` and scopes; and how often.

Scopes follow SMART on FHIR: ``system/GuidanceResponse.read`` (or ``.rs``) reads stored
screenings; ``system/GuidanceResponse.write`` (or ``.c``) runs ``$screen``, which creates them;
``system/AuditEvent.read`` is the auditor's. Without a token, requests are served only when
``TRIALSCREEN_ALLOW_UNAUTHENTICATED`` says so (development).

Which patients a token reaches depends on the level of the scope that grants the request:
``system/`` every patient; ``patient/`` only the patient in the token's ``patient`` claim (403
without one); ``user/`` the patient in the ``patient`` claim when the token carries one (a user
launched in one patient's context), else every patient, since this service keeps no record of
which users may see which patients (issue patient/ scopes to confine a user).
"""

import asyncio
import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import jwt
from fastapi import Request

from app.access.jwks import KeyCache, parse_jwks
from app.core.errors import Forbidden, NotAuthenticated, TooManyRequests
from app.core.limits import is_id, printable
from app.core.settings import Settings
from app.store import audit
from app.store.database import ANY_TENANT, Store

Permission = Literal["read", "create"]
_SKEW = 30
_SCOPE = re.compile(r"(system|user|patient)/(\*|[A-Za-z]+)\.(\*|read|write|[cruds]+)")
_GRANTS: dict[Permission, frozenset[str]] = {
    "read": frozenset({"read", "*", "r", "s"}),
    "create": frozenset({"write", "*", "c"}),
}


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str
    scopes: frozenset[str]
    authenticated: bool
    patient: str | None = None
    """The token's ``patient`` claim (SMART launch context), if any."""
    confined_to: str | None = None
    """``Patient/{id}`` when the request is confined to one patient (set by :func:`require`)."""
    tenant: str | None = None
    """The token's ``tenant`` claim: screenings it asks for carry it; it reads only those."""
    across_tenants: bool = False
    """Reads screenings of every tenant (``TRIALSCREEN_CROSS_TENANT_CLIENTS``, development)."""

    def may(self, resource: str, permission: Permission) -> bool:
        return not self.authenticated or bool(self._levels(resource, permission))

    def compartment(self, resource: str, permission: Permission) -> str | None:
        """``Patient/{id}`` the granting scope confines the request to, or None for every
        patient (see the module docstring); Forbidden for a patient/ scope without a patient."""
        levels = self._levels(resource, permission)
        if not self.authenticated or "system" in levels:
            return None
        patient = self.patient if self.patient and is_id(self.patient) else None
        if "user" in levels:
            return f"Patient/{patient}" if patient else None
        if patient is None:
            raise Forbidden("A patient/ scope needs the token's patient claim (a FHIR id).")
        return f"Patient/{patient}"

    def _levels(self, resource: str, permission: Permission) -> set[str]:
        """The levels (system, user, patient) of the scopes granting ``permission``."""
        levels = set()
        for scope in self.scopes:
            match = _SCOPE.fullmatch(scope)
            if match and match[2] in {resource, "*"}:
                granted = match[3]
                # SMART v1 words (read, write, *) or v2 letters (c r u d s, e.g. "rs")
                letters = set() if granted in {"read", "write", "*"} else set(granted)
                if granted in _GRANTS[permission] or letters & _GRANTS[permission]:
                    levels.add(match[1])
        return levels


def reaches(who: Principal, patient_ref: str | None) -> bool:
    """Whether the caller may reach ``patient_ref`` (a request confined to one patient reaches
    that patient only)."""
    return who.confined_to is None or patient_ref == who.confined_to


def tenant_filter(who: Principal) -> str | None:
    """The tenant whose screenings the caller reads, or ``ANY_TENANT``."""
    return ANY_TENANT if who.across_tenants or not who.authenticated else who.tenant


def same_tenant(who: Principal, tenant: str | None) -> bool:
    return who.across_tenants or not who.authenticated or tenant == who.tenant


def confine(who: Principal, patient_ref: str | None) -> None:
    """403 unless the caller :func:`reaches` ``patient_ref``."""
    if not reaches(who, patient_ref):
        raise Forbidden("The access token reaches only the patient in its patient claim.")


def confined_search(who: Principal, patient_ref: str | None) -> str | None:
    """The patient a search is limited to: the one asked for, which a confined caller may only
    leave out (then it is theirs) or set to their own patient."""
    if who.confined_to is None:
        return patient_ref
    confine(who, patient_ref or who.confined_to)
    return who.confined_to


class InboundVerifier:
    def __init__(self, settings: Settings, keys: KeyCache) -> None:
        self.settings = settings
        self.keys = keys
        self.audience = settings.auth_audience or settings.public_base_url.rstrip("/")

    async def principal(self, authorization: str | None) -> Principal | None:
        """The caller, or None when there is no token at all."""
        if authorization is None:
            return None
        if not authorization.startswith("Bearer "):
            raise NotAuthenticated("Send an OAuth2 access token: Authorization: Bearer <token>.")
        token = authorization.removeprefix("Bearer ").strip()
        settings = self.settings
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise NotAuthenticated("The access token is not a JWT.") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in settings.auth_algorithms:
            raise NotAuthenticated("The access token's algorithm is not accepted.")
        key = await self._key(kid)
        if key is None or settings.auth_issuer is None:
            raise NotAuthenticated("The access token's signing key is not known.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=settings.auth_issuer,
                leeway=_SKEW,
                options={"require": ["iss", "aud", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated("The access token has expired.") from None
        except (jwt.PyJWTError, TypeError, ValueError):
            raise NotAuthenticated("The access token is not valid for this service.") from None
        scope = claims.get("scope", claims.get("scp", ""))
        scopes = scope.split() if isinstance(scope, str) else [str(s) for s in scope or []]
        client = claims.get("client_id") or claims.get("azp") or claims.get("sub") or "unknown"
        patient, tenant = claims.get("patient"), claims.get("tenant")
        return Principal(
            printable(str(client)),
            frozenset(scopes),
            authenticated=True,
            patient=patient if isinstance(patient, str) else None,
            tenant=printable(tenant) if isinstance(tenant, str) else None,
            across_tenants=str(client) in settings.cross_tenant_clients,
        )

    async def _key(self, kid: Any) -> jwt.PyJWK | None:
        settings = self.settings
        if settings.auth_jwks_url is not None and isinstance(kid, str):
            return await self.keys.key(settings.auth_jwks_url, kid)
        keys = parse_jwks(settings.auth_jwks or {})
        if isinstance(kid, str):
            return keys.get(kid)
        return next(iter(keys.values())) if len(keys) == 1 else None


class RateLimiter:
    """A token bucket per key: ``per_minute`` sustained, ``burst`` at once. The buckets live in
    the database, so every worker and replica (and a restarted one) enforces the same limit."""

    def __init__(
        self,
        store: Store,
        per_minute: int,
        burst: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.rate = per_minute / 60.0
        self.burst = float(max(1, burst))
        self.clock = clock
        self._calls = 0

    async def take(self, key: str) -> int | None:
        """None when allowed; else the seconds to wait."""
        if self.rate <= 0:
            return None
        now = self.clock()
        # Keys come from callers (client ids, addresses): hashed, so any length fits the index.
        digest = hashlib.sha256(key.encode()).hexdigest()
        wait = await asyncio.to_thread(self.store.take_token, digest, self.rate, self.burst, now)
        self._calls += 1
        if self._calls % 1000 == 0:
            idle = self.burst / self.rate + 60
            await asyncio.to_thread(self.store.forget_full_buckets, now, idle)
        return None if wait is None else max(1, math.ceil(wait))


def require(resource: str, permission: Permission) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the authenticated caller with the right scope, within its rate."""

    async def dependency(request: Request) -> Principal:
        state = request.app.state
        settings: Settings = state.settings
        verifier: InboundVerifier = state.inbound_verifier
        host = request.client.host if request.client else "unknown"
        principal: Principal | None = None
        try:
            principal = await verifier.principal(request.headers.get("authorization"))
            if principal is None:
                if not settings.allow_unauthenticated:
                    raise NotAuthenticated("This endpoint needs an OAuth2 access token.")
                principal = Principal(f"anonymous@{host}", frozenset(), authenticated=False)
            if not principal.may(resource, permission):
                raise Forbidden(
                    f"The access token lacks a scope allowing {permission} of {resource} "
                    f"(e.g. system/{resource}.{permission if permission == 'read' else 'write'})."
                )
            principal = replace(principal, confined_to=principal.compartment(resource, permission))
        except (NotAuthenticated, Forbidden) as exc:
            # Refusals are limited per address before anything is written, then counted in one
            # audit row per source, route and minute: a flood cannot fill the audit trail.
            refusals: RateLimiter = state.refusal_limiter
            wait = await refusals.take(f"refused:{host}")
            if wait is not None:
                raise TooManyRequests(
                    f"Too many refused requests from this address; retry in {wait} s.", wait
                ) from None
            who = principal.client_id if principal else f"unauthenticated@{host}"
            route = getattr(request.scope.get("route"), "path_format", None) or "?"
            await audit.refused(
                state.store,
                agent=who,
                description=f"{exc.status_code} on {request.method} {printable(route)}",
            )
            raise
        limiter: RateLimiter = state.rate_limiter
        wait = await limiter.take(f"client:{principal.client_id}")
        if wait is not None:
            raise TooManyRequests(f"Too many requests from this client; retry in {wait} s.", wait)
        request.state.principal = principal
        return principal

    return dependency
