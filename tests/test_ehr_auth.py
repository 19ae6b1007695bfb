"""SMART Backend Services against a small token endpoint served over real HTTP on loopback.

The endpoint checks what an EHR checks: the client assertion's signature (RS384 / ES384 with the
registered public key), ``kid``, ``iss`` = ``sub`` = client id, ``aud`` = the token URL, a lifetime
of at most five minutes and a ``jti`` it has not seen.
"""

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from app.ehr.auth import SmartBackendAuth
from app.ehr.client import Deadline, EhrError, FhirClient
from tests.loopback import free_port, serving

CLIENT_ID = "trialscreen-test"


@dataclass
class TokenServer:
    base: str
    public_keys: dict[str, Any]
    issued: list[str] = field(default_factory=list)
    seen_jti: set[str] = field(default_factory=set)
    rejected: list[str] = field(default_factory=list)


def _app(server: TokenServer) -> FastAPI:
    app = FastAPI()

    @app.get("/fhir/.well-known/smart-configuration")
    async def configuration() -> dict[str, Any]:
        return {
            "token_endpoint": f"{server.base}/auth/token",
            "grant_types_supported": ["client_credentials"],
        }

    @app.post("/auth/token")
    async def token(request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        try:
            _check_assertion(server, form, f"{server.base}/auth/token")
        except (jwt.PyJWTError, AssertionError, KeyError) as exc:
            server.rejected.append(f"{type(exc).__name__}: {exc}")
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        token = f"token-{len(server.issued) + 1}"
        server.issued.append(token)
        return JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": 300})

    @app.get("/fhir/Patient/{pid}")
    async def patient(pid: str, request: Request) -> JSONResponse:
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in server.issued:
            return JSONResponse({"resourceType": "OperationOutcome"}, status_code=401)
        return JSONResponse({"resourceType": "Patient", "id": pid})

    return app


def _check_assertion(server: TokenServer, form: dict[str, str], audience: str) -> None:
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "system/Patient.rs" in form["scope"].split()
    assertion = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] in {"RS384", "ES384"} and header["typ"] == "JWT"
    key = server.public_keys[header["kid"]]
    claims = jwt.decode(
        assertion,
        key,
        algorithms=[header["alg"]],
        audience=audience,
        options={"require": ["iss", "sub", "aud", "exp", "jti"]},
    )
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["exp"] - int(time.time()) <= 300
    assert claims["jti"] not in server.seen_jti, "replayed jti"
    server.seen_jti.add(claims["jti"])


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
KEYS: dict[str, PrivateKey] = {
    "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec-1": ec.generate_private_key(ec.SECP384R1()),
}


@pytest.fixture(scope="module")
def token_server() -> Iterator[TokenServer]:
    port = free_port()
    server = TokenServer(
        f"http://127.0.0.1:{port}", {kid: k.public_key() for kid, k in KEYS.items()}
    )
    with serving(_app(server), port):
        yield server


def _auth(
    server: TokenServer, kid: str, algorithm: str, key: PrivateKey | None = None
) -> SmartBackendAuth:
    return SmartBackendAuth(
        fhir_base=f"{server.base}/fhir",
        client_id=CLIENT_ID,
        private_key_pem=_pem(key or KEYS[kid]),
        key_id=kid,
        algorithm=algorithm,
        scopes="system/Patient.rs system/Observation.rs",
    )


async def _read_patient(auth: SmartBackendAuth, server: TokenServer, times: int = 1) -> None:
    async with httpx.AsyncClient() as http:
        client = FhirClient(http, f"{server.base}/fhir", auth)
        for _ in range(times):
            patient = await client.read("Patient", "p1", Deadline.after(10))
            assert patient["id"] == "p1"


@pytest.mark.parametrize(("kid", "algorithm"), [("rsa-1", "RS384"), ("ec-1", "ES384")])
def test_smart_backend_services_token_is_obtained_and_cached(
    token_server: TokenServer, kid: str, algorithm: str
) -> None:
    before = len(token_server.issued)
    asyncio.run(_read_patient(_auth(token_server, kid, algorithm), token_server, times=3))
    assert len(token_server.issued) == before + 1, token_server.rejected


def test_a_401_gets_a_fresh_token(token_server: TokenServer) -> None:
    auth = _auth(token_server, "rsa-1", "RS384")
    asyncio.run(_read_patient(auth, token_server))
    token_server.issued.pop()  # the EHR forgets the token: the next read answers 401
    before = len(token_server.issued)
    asyncio.run(_read_patient(auth, token_server))
    assert len(token_server.issued) == before + 1


def test_an_assertion_signed_with_the_wrong_key_is_refused(token_server: TokenServer) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = _auth(token_server, "rsa-1", "RS384", key=stranger)
    with pytest.raises(EhrError, match="no access to the EHR: token endpoint answered 401"):
        asyncio.run(_read_patient(auth, token_server))
    assert any("Signature" in r for r in token_server.rejected)


def test_only_rs384_and_es384_are_offered() -> None:
    with pytest.raises(ValueError, match="RS384 or ES384"):
        SmartBackendAuth("http://x/fhir", CLIENT_ID, _pem(KEYS["rsa-1"]), "rsa-1", "RS256", "s")
