"""Who may call the CDS Hooks service: the caller's JWT, verified as CDS Hooks requires.

Only RS384 / ES384 with a ``kid``; ``iss`` from the allowlist; ``aud`` equal to the URL called;
``exp`` and ``iat`` with a small skew, ``exp`` at most five minutes after ``iat``; a ``jti`` not
seen before while the token lives, by any worker or replica (kept in the database); keys from the
issuer's allowlisted ``jku`` or its configured JWKS (cached, refreshed on schedule and once on an
unknown kid).
Any failure is the same bare 401: the caller is not told why.
"""

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from app.access.jwks import KeyCache, parse_jwks
from app.core.settings import CdsClient
from app.store.database import Store

_KEY_TYPES = {"RS384": "RSA", "ES384": "EC"}
_ALGORITHMS = frozenset(_KEY_TYPES)
_SKEW = 30
"""Seconds of clock difference tolerated on exp / iat."""
_LIFETIME = 300
"""CDS Hooks: the JWT's exp is at most five minutes after its iat."""


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
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clients = {c.iss: c for c in clients}
        self.clock = clock
        self.keys = KeyCache(http, lambda: self.clock())
        self.store = store

    async def verify(self, authorization: str | None, audience: str | Sequence[str]) -> Caller:
        """The caller of a request whose JWT is addressed to ``audience`` (the URL called, or any
        of several URLs that stand for it)."""
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
        try:
            lifetime = float(claims["exp"]) - float(claims["iat"])
        except (TypeError, ValueError):
            raise Unauthorized("exp or iat not a number") from None
        if lifetime > _LIFETIME:
            raise Unauthorized("token lives longer than five minutes")
        await self._remember(client.iss, str(claims["jti"]), float(claims["exp"]))
        tenant = claims.get("tenant")
        return Caller(client, tenant if isinstance(tenant, str) else None)

    async def _remember(self, iss: str, jti: str, expires: float) -> None:
        # Hashed: a jti is the caller's text, of any length; the key must fit an index.
        key = hashlib.sha256(f"{iss}\n{jti}".encode()).hexdigest()
        first = await asyncio.to_thread(self.store.first_use, key, expires + _SKEW, self.clock())
        if not first:
            raise Unauthorized("jti replayed")

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
