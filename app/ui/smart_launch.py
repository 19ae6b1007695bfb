"""Opening the pages from the EHR: a SMART App Launch (EHR launch) from a card's ``smart`` link.

The EHR opens ``/ui/launch?iss={fhir base}&launch={opaque}``. The ``iss`` must be a FHIR base
registered for one of the CDS clients (or the configured EHR): any other is refused without
being contacted, since it would choose where the browser and the code go. Its
``.well-known/smart-configuration`` names the authorization and token endpoints; the app asks
for ``launch openid fhirUser`` with the launch, ``aud`` = iss, state, nonce and PKCE (S256).
The token response brings the launch context: ``appContext`` is the screening id the card put
there, ``patient`` the patient in the EHR's context, and the ID token, checked against the keys
the configuration publishes (``issuer``, ``jwks_uri``: SMART App Launch 2.x, required with
``sso-openid-connect``), says who the user is. The EHR vouches for the user, not for trial roles:
a launched user gets ``ui_smart_roles``.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from app.access.jwks import KeyCache
from app.core.settings import Settings
from app.ui.oidc import Identity, SignInFailed, asymmetric, verified_id_token
from app.ui.sessions import ROLES, LoginAttempt

_TIMEOUT = 10.0
_CONFIG_TTL = 3600.0
SCOPES = "launch openid fhirUser"


@dataclass(frozen=True, slots=True)
class SmartServer:
    authorization_endpoint: str
    token_endpoint: str
    issuer: str | None
    jwks_uri: str | None


@dataclass(frozen=True, slots=True)
class Launched:
    identity: Identity
    app_context: str | None
    patient: str | None


class SmartLauncher:
    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, clock: Callable[[], float] = time.time
    ) -> None:
        if not settings.ui_smart_client_id:
            raise ValueError("ui_smart_client_id is needed for the EHR launch")
        self.client_id = settings.ui_smart_client_id
        self.roles = frozenset(settings.ui_smart_roles) & ROLES
        self.algorithms = asymmetric(settings.ui_id_token_algorithms)
        bases = {b for c in settings.cds_clients for b in c.fhir_bases}
        bases |= {settings.ehr_base_url} if settings.ehr_base_url else set()
        self.allowed = frozenset(b.rstrip("/") for b in bases)
        self.http = http
        self.clock = clock
        self.keys = KeyCache(http, clock)
        self._servers: dict[str, tuple[float, SmartServer]] = {}

    def registered(self, iss: str) -> bool:
        return iss.rstrip("/") in self.allowed

    async def authorization_url(self, redirect_uri: str, attempt: LoginAttempt) -> str:
        assert attempt.iss is not None and attempt.launch is not None
        server = await self.server(attempt.iss)
        url: str = prepare_grant_uri(
            server.authorization_endpoint,
            client_id=self.client_id,
            response_type="code",
            redirect_uri=redirect_uri,
            scope=SCOPES,
            state=attempt.state,
            nonce=attempt.nonce,
            code_challenge=create_s256_code_challenge(attempt.verifier),
            code_challenge_method="S256",
            aud=attempt.iss,
            launch=attempt.launch,
        )
        return url

    async def finish(self, code: str, redirect_uri: str, attempt: LoginAttempt) -> Launched:
        assert attempt.iss is not None
        server = await self.server(attempt.iss)
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=attempt.verifier,
            client_id=self.client_id,
        )
        try:
            response = await self.http.post(
                server.token_endpoint,
                content=body,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                },
                timeout=_TIMEOUT,
            )
            tokens = response.json()
        except (httpx.HTTPError, ValueError):
            raise SignInFailed("the EHR's token endpoint did not answer") from None
        if response.status_code != 200 or not isinstance(tokens, dict):
            raise SignInFailed(f"the EHR refused the launch ({response.status_code})")
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SignInFailed("the EHR sent no ID token, so the user is unknown")
        claims = await self._verified(id_token, server, attempt.nonce, tokens.get("access_token"))
        name = next(
            (
                claims[k]
                for k in ("name", "preferred_username", "fhirUser")
                if isinstance(claims.get(k), str)
            ),
            str(claims["sub"]),
        )
        context, patient = tokens.get("appContext"), tokens.get("patient")
        return Launched(
            Identity(subject=str(claims["sub"]), name=str(name)[:200], roles=self.roles),
            context if isinstance(context, str) else None,
            patient if isinstance(patient, str) else None,
        )

    async def server(self, iss: str) -> SmartServer:
        if not self.registered(iss):
            raise SignInFailed("the launch names an EHR this service does not know")
        cached = self._servers.get(iss)
        if cached is not None and self.clock() - cached[0] < _CONFIG_TTL:
            return cached[1]
        url = f"{iss.rstrip('/')}/.well-known/smart-configuration"
        try:
            response = await self.http.get(url, timeout=_TIMEOUT)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError):
            raise SignInFailed("the EHR's SMART configuration could not be read") from None
        if not isinstance(doc, dict):
            raise SignInFailed("the EHR's SMART configuration is not an object")
        endpoints = [doc.get(k) for k in ("authorization_endpoint", "token_endpoint")]
        if not all(isinstance(e, str) and e.startswith(("https://", "http://")) for e in endpoints):
            raise SignInFailed("the EHR's SMART configuration lacks its endpoints")
        issuer, jwks_uri = doc.get("issuer"), doc.get("jwks_uri")
        server = SmartServer(
            str(endpoints[0]),
            str(endpoints[1]),
            issuer if isinstance(issuer, str) else None,
            jwks_uri if isinstance(jwks_uri, str) else None,
        )
        self._servers[iss] = (self.clock(), server)
        return server

    async def _verified(
        self, token: str, server: SmartServer, nonce: str, access_token: Any
    ) -> dict[str, Any]:
        if server.issuer is None or server.jwks_uri is None:
            raise SignInFailed("the EHR publishes no issuer and keys for its ID tokens")
        return await verified_id_token(
            token,
            self.keys,
            server.jwks_uri,
            issuer=server.issuer,
            client_id=self.client_id,
            algorithms=self.algorithms,
            nonce=nonce,
            access_token=access_token,
            now=self.clock(),
        )
