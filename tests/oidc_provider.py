"""A small OpenID Connect provider for tests, served on loopback like a hospital's would be;
also an EHR's SMART authorization server (``/fhir/.well-known/smart-configuration``, EHR launch
with ``launch`` and ``aud``, the launch context in the token response).

It publishes discovery and a JWKS, answers ``/authorize`` by approving whichever user the test
put at the desk (no login form), and ``/token`` by checking the code, the redirect URI, the
client and the PKCE verifier (S256) before issuing an RS256 ID token carrying the nonce it was
given. Knobs let a test make it misbehave the ways a broken or hostile provider could: another
nonce, issuer or audience, an expired token, a token signed with a key it does not publish, or
the ``none`` algorithm.
"""

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response


@dataclass
class User:
    sub: str
    name: str
    roles: list[str]


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: User
    used: bool = False
    context: dict[str, str] = field(default_factory=dict)


def _private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class OidcProvider:
    issuer: str
    client_id: str = "trialscreen-ui"
    client_secret: str | None = None
    redirect_uris: tuple[str, ...] = ()
    user: User = field(default_factory=lambda: User("u-1", "Casey Coordinator", ["coordinator"]))
    roles_claim: str = "roles"
    claim_changes: dict[str, Any] = field(default_factory=dict)
    """Applied to every ID token's claims (None removes a claim)."""
    sign_with_unpublished_key: bool = False
    algorithm: str = "RS256"
    key: rsa.RSAPrivateKey = field(default_factory=_private_key)
    other_key: rsa.RSAPrivateKey = field(default_factory=_private_key)
    kid: str = "provider-1"
    grants: dict[str, _Grant] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    launches: dict[str, dict[str, str]] = field(default_factory=dict)
    """EHR launch ids and the context each carries (``patient``, ``appContext``)."""
    seen: list[str] = field(default_factory=list)
    """Every path asked for, in order."""

    @property
    def fhir_base(self) -> str:
        return f"{self.issuer}/fhir"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def _log(request: Request, call_next: Any) -> Response:
            self.seen.append(request.url.path)
            response: Response = await call_next(request)
            return response

        @app.get("/fhir/.well-known/smart-configuration")
        async def smart_configuration() -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "jwks_uri": f"{self.issuer}/jwks",
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "capabilities": ["launch-ehr", "sso-openid-connect", "context-ehr-patient"],
                    "code_challenge_methods_supported": ["S256"],
                }
            )

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "end_session_endpoint": f"{self.issuer}/logout",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
                }
            )

        @app.get("/jwks")
        async def jwks() -> JSONResponse:
            public = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
            return JSONResponse(
                {"keys": [public | {"kid": self.kid, "use": "sig", "alg": "RS256"}]}
            )

        @app.get("/authorize")
        async def authorize(request: Request) -> Response:
            q = request.query_params
            redirect_uri = q.get("redirect_uri", "")
            if q.get("client_id") != self.client_id or redirect_uri not in self.redirect_uris:
                return JSONResponse({"error": "invalid_request"}, status_code=400)
            if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
                return _back(redirect_uri, {"error": "invalid_request", "state": q.get("state")})
            if "openid" not in q.get("scope", "").split() or not q.get("code_challenge"):
                return _back(redirect_uri, {"error": "invalid_request", "state": q.get("state")})
            context: dict[str, str] = {}
            if "launch" in q:
                # EHR launch: a launch this EHR issued, for this EHR's FHIR base.
                if q["launch"] not in self.launches or q.get("aud") != self.fhir_base:
                    return _back(redirect_uri, {"error": "invalid_request", "state": q["state"]})
                context = self.launches[q["launch"]]
            code = secrets.token_urlsafe(24)
            self.grants[code] = _Grant(
                self.client_id,
                redirect_uri,
                q["code_challenge"],
                q.get("nonce"),
                self.user,
                context=context,
            )
            return _back(redirect_uri, {"code": code, "state": q.get("state")})

        @app.post("/token")
        async def token(
            request: Request,
            grant_type: str = Form(),
            code: str = Form(),
            redirect_uri: str = Form(),
            code_verifier: str = Form(),
            client_id: str | None = Form(None),
            client_secret: str | None = Form(None),
        ) -> JSONResponse:
            self.token_requests.append(
                {"code": code, "redirect_uri": redirect_uri, "code_verifier": code_verifier}
            )
            grant = self.grants.get(code)
            if grant_type != "authorization_code" or grant is None or grant.used:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            grant.used = True  # a code is good once (RFC 6749 §4.1.2)
            if not self._client_ok(request, client_id, client_secret):
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            digest = hashlib.sha256(code_verifier.encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if redirect_uri != grant.redirect_uri or challenge != grant.challenge:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            access_token = secrets.token_urlsafe(24)
            return JSONResponse(
                {
                    "access_token": access_token,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": self.id_token(grant, access_token),
                }
                | grant.context
            )

        @app.get("/logout")
        async def logout(request: Request) -> Response:
            target = request.query_params.get("post_logout_redirect_uri")
            return RedirectResponse(target or "/", status_code=303)

        return app

    def id_token(self, grant: _Grant, access_token: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": grant.user.sub,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "name": grant.user.name,
            "nonce": grant.nonce,
            self.roles_claim: grant.user.roles,
            "at_hash": _half_hash(access_token),
        }
        for key, value in self.claim_changes.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value
        if self.algorithm == "none":
            return jwt.encode(claims, "", algorithm="none", headers={"kid": self.kid})
        if self.algorithm == "HS256":
            # The client id is public with PKCE: a token "signed" with it proves nothing.
            return jwt.encode(claims, self.client_id.ljust(32, "x"), "HS256", {"kid": self.kid})
        signer = self.other_key if self.sign_with_unpublished_key else self.key
        return jwt.encode(claims, signer, algorithm="RS256", headers={"kid": self.kid})

    def _client_ok(self, request: Request, client_id: str | None, secret: str | None) -> bool:
        basic = request.headers.get("authorization", "")
        if basic.startswith("Basic "):
            given_id, _, given_secret = base64.b64decode(basic[6:]).decode().partition(":")
            return given_id == self.client_id and given_secret == self.client_secret
        if self.client_secret is not None:
            return client_id == self.client_id and secret == self.client_secret
        return client_id == self.client_id


def _back(redirect_uri: str, params: dict[str, Any]) -> Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return RedirectResponse(f"{redirect_uri}?{query}", status_code=303)


def _half_hash(value: str) -> str:
    digest = hashlib.sha256(value.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()
