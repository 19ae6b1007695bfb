"""Who may call the CDS Hooks service: the caller's JWT, verified as CDS Hooks requires.

Only RS384 / ES384 with a ``kid``; ``iss`` from the allowlist; ``aud`` equal to the URL called;
``exp`` and ``iat`` with a small skew; a ``jti`` not seen before while the token lives; keys from
the issuer's allowlisted ``jku`` or its configured JWKS (cached, refreshed once on an unknown kid).
Any failure is the same bare 401: the caller is not told why.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from app.access.jwks import KeyCache, parse_jwks
from app.core.settings import CdsClient

_KEY_TYPES = {"RS384": "RSA", "ES384": "EC"}
_ALGORITHMS = frozenset(_KEY_TYPES)
_SKEW = 30
"""Seconds of clock difference tolerated on exp / iat."""


class Unauthorized(Exception):
    """Rendered as a bare 401; ``reason`` is for tests and debugging, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Caller:
    client: CdsClient
    tenant: str | None


class JwtVerifier:
    def __init__(
        self,
        clients: tuple[CdsClient, ...],
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clients = {c.iss: c for c in clients}
        self.clock = clock
        self.keys = KeyCache(http, lambda: self.clock())
        self._seen_jti: dict[str, float] = {}

    async def verify(self, authorization: str | None, audience: str) -> Caller:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("no bearer token")
        token = authorization.removeprefix("Bearer ").strip()
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"not a JWT: {exc}") from None
        alg, kid, iss = header.get("alg"), header.get("kid"), unverified.get("iss")
        if not isinstance(alg, str) or alg not in _ALGORITHMS:
            raise Unauthorized(f"algorithm {alg!r} not accepted")
        if not isinstance(kid, str):
            raise Unauthorized("no kid")
        client = self.clients.get(iss) if isinstance(iss, str) else None
        if client is None:
            raise Unauthorized("issuer not allowed")
        key = await self._key(client, header.get("jku"), kid)
        if key.key_type != _KEY_TYPES[alg]:
            raise Unauthorized(f"key {kid} is not a {_KEY_TYPES[alg]} key for {alg}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audience,
                issuer=client.iss,
                leeway=_SKEW,
                options={"require": ["iss", "aud", "exp", "iat", "jti"]},
            )
        except (jwt.PyJWTError, TypeError, ValueError) as exc:
            raise Unauthorized(f"invalid token: {type(exc).__name__}") from None
        if client.tenant is not None and claims.get("tenant") != client.tenant:
            raise Unauthorized("wrong tenant")
        self._remember(str(claims["jti"]), float(claims["exp"]))
        tenant = claims.get("tenant")
        return Caller(client, tenant if isinstance(tenant, str) else None)

    def _remember(self, jti: str, expires: float) -> None:
        now = self.clock()
        for old in [j for j, exp in self._seen_jti.items() if exp + _SKEW < now]:
            del self._seen_jti[old]
        if jti in self._seen_jti:
            raise Unauthorized("jti replayed")
        self._seen_jti[jti] = expires

    async def _key(self, client: CdsClient, jku: Any, kid: str) -> jwt.PyJWK:
        if jku is not None:
            if jku not in client.jku_allowlist:
                raise Unauthorized("jku not allowed")
            source: str | None = jku
        else:
            source = client.jwks_url
        key = (
            parse_jwks(client.jwks or {}).get(kid)
            if source is None
            else await self.keys.key(source, kid)
        )
        if key is None:
            raise Unauthorized("unknown kid")
        return key
