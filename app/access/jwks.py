"""Public keys of token issuers: JWK Sets fetched from allowlisted URLs or given inline, cached,
refetched on an unknown ``kid`` at most every few seconds, refetched anyway once the set is older
than its ``Cache-Control: max-age`` (bounded: at most ``MAX_AGE``), so a key the issuer removed
stops working within minutes; kept when a refetch fails."""

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt

REFRESH_EVERY = 10.0
"""An unknown kid refetches a key set at most this often (bad tokens cannot amplify fetches)."""
MAX_AGE = 300.0
"""A key set is refetched once this old, or sooner if its Cache-Control max-age says so."""
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age=(\d+)")


@dataclass
class _KeySet:
    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched: float = float("-inf")
    max_age: float = MAX_AGE


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
            age = self.clock() - cached.fetched
            if age >= cached.max_age or (kid not in cached.keys and age >= REFRESH_EVERY):
                fresh = await self._fetch(url)
                cached.fetched = self.clock()
                if fresh is not None:  # a failed refresh keeps the keys already known
                    cached.keys, cached.max_age = fresh
        return cached.keys.get(kid)

    async def _fetch(self, url: str) -> tuple[dict[str, jwt.PyJWK], float] | None:
        try:
            response = await self.http.get(url, timeout=5.0)
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(body, dict):
            return None
        found = _MAX_AGE.search(response.headers.get("cache-control", ""))
        max_age = min(MAX_AGE, max(REFRESH_EVERY, float(found[1]))) if found else MAX_AGE
        return parse_jwks(body), max_age


def parse_jwks(jwks: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for jwk in jwks.get("keys", []):
        if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str):
            try:
                keys[jwk["kid"]] = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue
    return keys
