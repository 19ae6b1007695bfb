"""Signing in with the hospital's OpenID Connect provider: authorization code flow with PKCE.

The provider's configuration is discovered at ``{issuer}/.well-known/openid-configuration`` (its
``issuer`` must equal the configured one: OpenID Connect Discovery 1.0 §4.3). Authlib builds the
authorization request and the token request and checks the ID token's OpenID claims (nonce, azp,
at_hash); PyJWT checks its signature against the provider's published keys (the JWKS cache the
service already uses for other issuers), its ``iss``, ``aud``, ``exp`` and ``iat``. Only the
asymmetric algorithms configured are accepted: never ``none`` or HMAC, which would let anyone
who knows the client id (public with PKCE) mint tokens.

Roles come from one configurable claim and are mapped onto coordinator / investigator / auditor;
anything else is ignored.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc.errors import JoseError

from app.access.jwks import KeyCache
from app.core.settings import Settings
from app.ui.sessions import ROLES, LoginAttempt

_DISCOVERY_TTL = 3600.0
_LEEWAY = 60
"""Seconds of clock difference tolerated on the ID token's exp / iat."""
_TIMEOUT = 10.0


class SignInFailed(Exception):
    """The sign-in cannot complete. ``reason`` is logged and shown in words; it never carries a
    token or a code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None
    token_auth_methods: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    name: str
    roles: frozenset[str]


class OidcClient:
    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, clock: Callable[[], float] = time.time
    ) -> None:
        if not settings.ui_oidc_issuer or not settings.ui_oidc_client_id:
            raise ValueError("ui_oidc_issuer and ui_oidc_client_id are both needed to sign in")
        self.issuer = settings.ui_oidc_issuer
        self.client_id = settings.ui_oidc_client_id
        secret = settings.ui_oidc_client_secret
        self.client_secret = secret.get_secret_value() if secret else None
        self.scopes = settings.ui_oidc_scopes
        self.algorithms = asymmetric(settings.ui_id_token_algorithms)
        self.roles_claim = settings.ui_roles_claim
        self.role_map = settings.ui_role_map
        self.http = http
        self.clock = clock
        self.keys = KeyCache(http, clock)
        self._provider: Provider | None = None
        self._discovered = float("-inf")

    @staticmethod
    def new_attempt(
        next_path: str, launch: str | None = None, iss: str | None = None
    ) -> LoginAttempt:
        return LoginAttempt(
            state=generate_token(32),
            nonce=generate_token(32),
            verifier=generate_token(64),  # RFC 7636 §4.1: 43-128 characters
            next=next_path,
            launch=launch,
            iss=iss,
        )

    async def provider(self) -> Provider:
        if self._provider is None or self.clock() - self._discovered > _DISCOVERY_TTL:
            self._provider = await self._discover()
            self._discovered = self.clock()
        return self._provider

    async def authorization_url(self, redirect_uri: str, attempt: LoginAttempt) -> str:
        provider = await self.provider()
        url: str = prepare_grant_uri(
            provider.authorization_endpoint,
            client_id=self.client_id,
            response_type="code",
            redirect_uri=redirect_uri,
            scope=self.scopes,
            state=attempt.state,
            nonce=attempt.nonce,
            code_challenge=create_s256_code_challenge(attempt.verifier),
            code_challenge_method="S256",
        )
        return url

    async def sign_in(self, code: str, redirect_uri: str, attempt: LoginAttempt) -> Identity:
        """Exchange the code (with the PKCE verifier) and read who signed in from the ID token."""
        provider = await self.provider()
        body = prepare_token_request(
            "authorization_code",
            code=code,
            redirect_uri=redirect_uri,
            code_verifier=attempt.verifier,
            client_id=self.client_id,
        )
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        auth: tuple[str, str] | None = None
        if self.client_secret is not None:
            if "client_secret_basic" in provider.token_auth_methods:
                auth = (self.client_id, self.client_secret)
            else:
                body += "&" + str(httpx.QueryParams({"client_secret": self.client_secret}))
        try:
            response = await self.http.post(
                provider.token_endpoint,
                content=body,
                headers=headers,
                auth=auth or httpx.USE_CLIENT_DEFAULT,
                timeout=_TIMEOUT,
            )
            tokens = response.json()
        except (httpx.HTTPError, ValueError):
            raise SignInFailed("the provider's token endpoint did not answer") from None
        if response.status_code != 200 or not isinstance(tokens, dict):
            error = tokens.get("error") if isinstance(tokens, dict) else None
            raise SignInFailed(f"the provider refused the code ({error or response.status_code})")
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SignInFailed("the provider sent no ID token")
        access_token = tokens.get("access_token")
        claims = await self._verified(id_token, provider, attempt.nonce, access_token)
        return Identity(
            subject=str(claims["sub"]),
            name=_name(claims),
            roles=self.roles_of(claims),
        )

    def roles_of(self, claims: dict[str, Any]) -> frozenset[str]:
        value: Any = claims
        for part in self.roles_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list):
            return frozenset()
        mapped = {self.role_map.get(r, r) for r in value if isinstance(r, str)}
        return frozenset(mapped & ROLES)

    async def _verified(
        self, token: str, provider: Provider, nonce: str, access_token: Any
    ) -> dict[str, Any]:
        return await verified_id_token(
            token,
            self.keys,
            provider.jwks_uri,
            issuer=provider.issuer,
            client_id=self.client_id,
            algorithms=self.algorithms,
            nonce=nonce,
            access_token=access_token,
            now=self.clock(),
        )

    async def _discover(self) -> Provider:
        url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
        try:
            response = await self.http.get(url, timeout=_TIMEOUT)
            response.raise_for_status()
            doc = response.json()
        except (httpx.HTTPError, ValueError):
            raise SignInFailed("the sign-in provider could not be reached") from None
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
            raise SignInFailed("the provider's configuration names another issuer")
        endpoints = [doc.get(k) for k in ("authorization_endpoint", "token_endpoint", "jwks_uri")]
        if not all(isinstance(e, str) and e.startswith(("https://", "http://")) for e in endpoints):
            raise SignInFailed("the provider's configuration lacks its endpoints")
        methods = doc.get("token_endpoint_auth_methods_supported")
        end_session = doc.get("end_session_endpoint")
        return Provider(
            issuer=self.issuer,
            authorization_endpoint=str(endpoints[0]),
            token_endpoint=str(endpoints[1]),
            jwks_uri=str(endpoints[2]),
            end_session_endpoint=end_session if isinstance(end_session, str) else None,
            token_auth_methods=tuple(m for m in methods if isinstance(m, str))
            if isinstance(methods, list)
            else ("client_secret_basic",),
        )


async def verified_id_token(
    token: str,
    keys: KeyCache,
    jwks_uri: str,
    *,
    issuer: str,
    client_id: str,
    algorithms: tuple[str, ...],
    nonce: str,
    access_token: Any,
    now: float,
) -> dict[str, Any]:
    """The claims of an ID token once its signature (a key published at ``jwks_uri``, an
    accepted asymmetric algorithm), ``iss``, ``aud``, ``exp``, ``iat`` (PyJWT) and its OpenID
    claims ``nonce``, ``azp``, ``at_hash`` (Authlib) all hold; else :class:`SignInFailed`."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise SignInFailed("the ID token is not a JWT") from None
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str) or alg not in algorithms:
        raise SignInFailed(f"the ID token's algorithm {alg!r} is not accepted")
    if not isinstance(kid, str):
        raise SignInFailed("the ID token names no key")
    key = await keys.key(jwks_uri, kid)
    if key is None:
        raise SignInFailed("the ID token is signed with a key its issuer does not publish")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=client_id,
            issuer=issuer,
            leeway=_LEEWAY,
            options={"require": ["iss", "sub", "aud", "exp", "iat"]},
        )
    except (jwt.PyJWTError, TypeError, ValueError) as exc:
        raise SignInFailed(f"the ID token is not valid ({type(exc).__name__})") from None
    params = {"nonce": nonce, "client_id": client_id}
    if isinstance(access_token, str):
        params["access_token"] = access_token
    try:
        CodeIDToken(claims, header, params=params).validate(now=int(now))
    except JoseError as exc:
        raise SignInFailed(f"the ID token's {exc.error} check failed") from None
    return claims


def asymmetric(algorithms: tuple[str, ...]) -> tuple[str, ...]:
    """Only signatures a public key checks: never none or HMAC (whose key, for a public client,
    is no secret)."""
    return tuple(a for a in algorithms if a[:2] in {"RS", "ES", "PS"})


def _name(claims: dict[str, Any]) -> str:
    for key in ("name", "preferred_username", "email", "sub"):
        value = claims.get(key)
        if isinstance(value, str) and value:
            return value[:200]
    return str(claims["sub"])
