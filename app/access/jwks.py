"""Public keys of token issuers: JWK Sets fetched from allowlisted URLs or given inline, cached,
refetched on an unknown ``kid`` at most every few seconds, and kept when a refetch fails."""

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

REFRESH_EVERY = 10.0
"""An unknown kid refetches a key set at most this often (bad tokens cannot amplify fetches)."""


@dataclass
class _KeySet:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched: float = float("-inf")


class KeyCache:
    def __init__(self, http: httpx.AsyncClient, clock: Callable[[], float] = time.time) -> None:
        self.http = http
        self.clock = clock
        self._sets: dict[str, _KeySet] = {}
        self._lock = asyncio.Lock()

    async def key(self, url: str, kid: str) -> jwt.PyJWK | None:
        """The key ``kid`` published at ``url`` (an allowlisted URL: checked by the caller)."""
        async with self._lock:
            cached = self._sets.setdefault(url, _KeySet())
            if kid not in cached.keys and self.clock() - cached.fetched >= REFRESH_EVERY:
                fresh = await self._fetch(url)
                cached.fetched = self.clock()
                if fresh is not None:  # a failed refresh keeps the keys already known
                    cached.keys = fresh
        return cached.keys.get(kid)

    async def _fetch(self, url: str) -> dict[str, jwt.PyJWK] | None:
        try:
            response = await self.http.get(url, timeout=5.0)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        return parse_jwks(body) if isinstance(body, dict) else None


def parse_jwks(jwks: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in jwks.get("keys", []):
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
            try:
                keys[jwk["kid"]] = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue
    return keys
