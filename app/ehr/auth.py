"""How the service authenticates to the EHR: none, a static bearer token, or SMART Backend
Services (client-credentials grant with a ``private_key_jwt`` assertion signed RS384 or ES384).

Tokens never reach logs or responses. A SMART token is cached until shortly before it expires
(Oracle throttles clients that ask more than once a minute) and dropped when the EHR answers 401.
"""

import asyncio
import time
import uuid
from typing import Protocol

import httpx
import jwt

_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_EARLY_REFRESH = 60.0
"""Seconds before expiry at which a cached token is renewed."""


class EhrAuthError(Exception):
    """No token could be obtained; the message says why (never the token or key)."""


class EhrAuth(Protocol):
    async def headers(self, http: httpx.AsyncClient, time_left: float) -> dict[str, str]: ...

    def invalidate(self) -> None: ...


class NoAuth:
    async def headers(self, http: httpx.AsyncClient, time_left: float) -> dict[str, str]:
        return {}

    def invalidate(self) -> None:
        return None


class BearerAuth:
    def __init__(self, token: str) -> None:
        self._header = {"authorization": f"Bearer {token}"}

    async def headers(self, http: httpx.AsyncClient, time_left: float) -> dict[str, str]:
        return self._header

    def invalidate(self) -> None:
        return None  # a static token cannot be renewed; the 401 is reported


class SmartBackendAuth:
    def __init__(
        self,
        fhir_base: str,
        client_id: str,
        private_key_pem: str,
        key_id: str,
        algorithm: str,
        scopes: str,
    ) -> None:
        if algorithm not in {"RS384", "ES384"}:
            raise ValueError("SMART Backend Services signs with RS384 or ES384")
        self.fhir_base = fhir_base.rstrip("/")
        self.client_id = client_id
        self.key = private_key_pem
        self.key_id = key_id
        self.algorithm = algorithm
        self.scopes = scopes
        self._token_endpoint: str | None = None
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    async def headers(self, http: httpx.AsyncClient, time_left: float) -> dict[str, str]:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                await self._renew(http, time_left)
            assert self._token is not None
            return {"authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        self._token = None

    def assertion(self, token_endpoint: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_endpoint,
            "iat": now,
            "exp": now + 300,  # SMART: at most five minutes
            "jti": str(uuid.uuid4()),
        }
        headers = {"kid": self.key_id, "typ": "JWT"}
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers=headers)

    async def _renew(self, http: httpx.AsyncClient, time_left: float) -> None:
        timeout = max(0.1, min(10.0, time_left))
        endpoint = self._token_endpoint or await self._discover(http, timeout)
        form = {
            "grant_type": "client_credentials",
            "scope": self.scopes,
            "client_assertion_type": _ASSERTION_TYPE,
            "client_assertion": self.assertion(endpoint),
        }
        try:
            response = await http.post(endpoint, data=form, timeout=timeout)
        except httpx.HTTPError as exc:
            raise EhrAuthError(f"token endpoint unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise EhrAuthError(f"token endpoint answered {response.status_code}")
        body = response.json()
        token, lifetime = body.get("access_token"), body.get("expires_in", 300)
        if not isinstance(token, str) or not isinstance(lifetime, int | float):
            raise EhrAuthError("token endpoint answered without an access_token")
        self._token = token
        self._expires = time.monotonic() + max(0.0, float(lifetime) - _EARLY_REFRESH)

    async def _discover(self, http: httpx.AsyncClient, timeout: float) -> str:
        url = f"{self.fhir_base}/.well-known/smart-configuration"
        try:
            response = await http.get(url, timeout=timeout)
            endpoint = response.json().get("token_endpoint") if response.is_success else None
        except (httpx.HTTPError, ValueError):
            endpoint = None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise EhrAuthError(f"no token_endpoint in {url}")
        self._token_endpoint = endpoint
        return endpoint
