"""Who may call the CDS Hooks service: the caller's JWT, verified as CDS Hooks requires.

Real RS384 / ES384 keys; one issuer with an inline JWK Set, one whose keys are published at a
JWKS URL served over real HTTP on loopback (the server records every path it served, so a test
can tell that a foreign ``jku`` was never fetched), one bound to a tenant. Every refused token
gets the same bare 401 with an empty body.
"""

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from app.core.settings import CdsClient, Settings
from app.main import create_app
from tests.loopback import free_port, serving

Json = dict[str, Any]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

BASE = "http://testserver"
SERVICE = "/cds-services/trial-eligibility"
FEEDBACK = f"{SERVICE}/feedback"
AUD = f"{BASE}{SERVICE}"
ISS_INLINE = "https://ehr-inline.example.org"
ISS_REMOTE = "https://ehr-remote.example.org"
ISS_TENANT = "https://ehr-tenant.example.org"
TENANT = "2ddd6c3a-8e9a-44c6-a305-52111ad302a2"

KEYS: dict[str, PrivateKey] = {
    "rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec-1": ec.generate_private_key(ec.SECP384R1()),
    "rsa-2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
}
ALGORITHMS = {"rsa-1": "RS384", "ec-1": "ES384", "rsa-2": "RS384"}
STRANGER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
"""A key no issuer registered."""


# --- keys and tokens -----------------------------------------------------------------------------


def public_jwk(kid: str) -> Json:
    key = KEYS[kid]
    if isinstance(key, rsa.RSAPrivateKey):
        jwk: Json = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return jwk | {"kid": kid, "alg": ALGORITHMS[kid], "use": "sig"}


def jwks(*kids: str) -> Json:
    """A JWK Set of the public keys named."""
    return {"keys": [public_jwk(kid) for kid in kids]}


def public_pem(kid: str) -> bytes:
    return (
        KEYS[kid]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def claims(
    iss: str | None = ISS_INLINE, aud: str | list[str] | None = AUD, **overrides: Any
) -> Json:
    """Valid claims for a call now: an override of None drops that claim."""
    now = int(time.time())
    base: Json = {"iss": iss, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    merged = base | overrides
    return {k: v for k, v in merged.items() if v is not None}


def mint(
    kid: str | None = "rsa-1",
    *,
    key: PrivateKey | None = None,
    algorithm: str | None = None,
    payload: Json | None = None,
    header: Json | None = None,
) -> str:
    """A signed JWT (PyJWT): by default RS384 with the registered key ``kid``, for ``claims()``.
    ``kid=None`` leaves the kid out of the header."""
    signing_key = key or KEYS[kid or "rsa-1"]
    headers: Json = {"typ": "JWT"} | ({"kid": kid} if kid is not None else {}) | (header or {})
    return jwt.encode(
        payload if payload is not None else claims(),
        signing_key,
        algorithm=algorithm or ALGORITHMS[kid or "rsa-1"],
        headers=headers,
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: Json, payload: Json, sign: Any = None) -> str:
    """A JWT assembled by hand (for what PyJWT refuses to produce): ``sign`` maps the signing
    input to the signature; None leaves the signature empty."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{_b64(signature)}"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- a JWKS endpoint on loopback ------------------------------------------------------------------


@dataclass
class JwksServer:
    base: str
    sets: dict[str, Json] = field(default_factory=dict)
    """Path -> the JWK Set served there."""
    served: list[str] = field(default_factory=list)
    """Every path requested, in order."""
    cache_control: dict[str, str] = field(default_factory=dict)
    """Path -> the Cache-Control header served with it."""

    def count(self, path: str) -> int:
        return self.served.count(path)


def _jwks_app(server: JwksServer) -> FastAPI:
    app = FastAPI()

    @app.get("/{name}")
    async def key_set(name: str) -> Response:
        path = f"/{name}"
        server.served.append(path)
        if path not in server.sets:
            return Response(status_code=404)
        control = server.cache_control.get(path)
        headers = {"cache-control": control} if control else None
        return JSONResponse(server.sets[path], headers=headers)

    return app


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JwksServer]:
    port = free_port()
    server = JwksServer(f"http://127.0.0.1:{port}")
    with serving(_jwks_app(server), port):
        yield server


# --- the service ----------------------------------------------------------------------------------

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1985-06-15"}


def hook_body(client: TestClient, patient_id: str = "p1") -> Json:
    """A patient-view call whose prefetch is complete (the Patient, every search "no data"), so
    the service answers without fetching anything."""
    (service,) = client.get("/cds-services").json()["services"]
    prefetch: Json = dict.fromkeys(service["prefetch"])
    prefetch["patient"] = PATIENT | {"id": patient_id}
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        "prefetch": prefetch,
    }


@dataclass
class Service:
    client: TestClient
    app: FastAPI
    body: Json

    def call(self, token: str | None, path: str = SERVICE, **kwargs: Any) -> Any:
        headers = bearer(token) if token is not None else {}
        headers |= kwargs.pop("headers", {})
        body = kwargs.pop("json", self.body)
        return self.client.post(path, json=body, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def service(jwks_server: JwksServer) -> Iterator[Service]:
    jwks_server.sets["/jwks.json"] = jwks("rsa-1", "ec-1")
    jwks_server.sets["/jku-jwks.json"] = jwks("rsa-1", "ec-1")
    # Served too, with the right keys: were it ever fetched, a token naming it would verify.
    jwks_server.sets["/foreign-jwks.json"] = jwks("rsa-1", "ec-1")
    settings = Settings(
        public_base_url=BASE,
        cds_clients=(
            CdsClient(
                iss=ISS_INLINE,
                jwks=jwks("rsa-1", "ec-1"),
                fhir_bases=("https://ehr-inline.example.org/fhir",),
            ),
            CdsClient(
                iss=ISS_REMOTE,
                jwks_url=f"{jwks_server.base}/jwks.json",
                jku_allowlist=(f"{jwks_server.base}/jku-jwks.json",),
            ),
            CdsClient(iss=ISS_TENANT, jwks=jwks("rsa-1"), tenant=TENANT),
        ),
    )
    app = create_app(settings)
    # A 500 is seen as the response it is, not raised into the test.
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Service(client, app, hook_body(client))


def assert_bare_401(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.content == b""


# --- accepted -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kid", "algorithm"), [("rsa-1", "RS384"), ("ec-1", "ES384")])
def test_valid_rs384_and_es384_tokens_are_accepted(
    service: Service, kid: str, algorithm: str
) -> None:
    token = mint(kid, algorithm=algorithm)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    response = service.call(token)
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["cards"], list)


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1"])
def test_keys_from_the_issuers_jwks_url_are_accepted(
    service: Service, jwks_server: JwksServer, kid: str
) -> None:
    response = service.call(mint(kid, payload=claims(ISS_REMOTE)))
    assert response.status_code == 200, response.text
    assert jwks_server.count("/jwks.json") >= 1


def test_an_allowlisted_jku_is_used(service: Service, jwks_server: JwksServer) -> None:
    jku = f"{jwks_server.base}/jku-jwks.json"
    response = service.call(mint("ec-1", payload=claims(ISS_REMOTE), header={"jku": jku}))
    assert response.status_code == 200, response.text
    assert jwks_server.count("/jku-jwks.json") == 1


def test_aud_as_an_array_holding_the_url_called_is_accepted(service: Service) -> None:
    response = service.call(mint(payload=claims(aud=[AUD])))
    assert response.status_code == 200, response.text


def test_epic_style_claims_sub_and_nbf_are_accepted(service: Service) -> None:
    now = int(time.time())
    # exp at most five minutes after iat (CDS Hooks); issue 12 caps it, so no longer 900 s.
    response = service.call(mint(payload=claims(sub="ehr-client", nbf=now, exp=now + 300)))
    assert response.status_code == 200, response.text


def test_the_tenant_bound_issuer_accepts_its_tenant(service: Service) -> None:
    response = service.call(mint(payload=claims(ISS_TENANT, tenant=TENANT)))
    assert response.status_code == 200, response.text


def test_feedback_takes_the_same_tokens_with_its_own_aud(service: Service) -> None:
    body = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "overridden"}]}
    token = mint(payload=claims(aud=f"{BASE}{FEEDBACK}"))
    # Authenticated: the unknown card is a 404, not a 401.
    assert service.call(token, FEEDBACK, json=body).status_code == 404
    # Addressed to the service the feedback is about (EHRs do both): accepted too.
    assert service.call(mint(), FEEDBACK, json=body).status_code == 404
    for elsewhere in (f"{BASE}/cds-services", f"{BASE}{SERVICE}-2", f"{BASE}{FEEDBACK}/x"):
        assert_bare_401(service.call(mint(payload=claims(aud=elsewhere)), FEEDBACK, json=body))
    assert_bare_401(service.call(None, FEEDBACK, json=body))
    # The feedback URL is no audience for the hook itself.
    assert_bare_401(service.call(mint(payload=claims(aud=f"{BASE}{FEEDBACK}"))))


# --- refused --------------------------------------------------------------------------------------


def _hmac(algorithm: str) -> str:
    """HS256 / HS384 signed with the issuer's public key PEM as the secret: the classic
    algorithm-confusion attack on a verifier that trusts the header's alg."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[algorithm]
    header = {"alg": algorithm, "typ": "JWT", "kid": "rsa-1"}
    return hand_made(
        header, claims(), lambda data: hmac.new(public_pem("rsa-1"), data, digest).digest()
    )


def _now() -> int:
    return int(time.time())


REFUSED: dict[str, Any] = {
    "not a JWT": lambda: "not-a-jwt",
    "three garbage segments": lambda: "e30.e30.e30",
    "alg none": lambda: hand_made({"alg": "none", "typ": "JWT", "kid": "rsa-1"}, claims()),
    "alg None (capitalised)": lambda: hand_made(
        {"alg": "None", "typ": "JWT", "kid": "rsa-1"}, claims()
    ),
    "HS256 with the public key as secret": lambda: _hmac("HS256"),
    "HS384 with the public key as secret": lambda: _hmac("HS384"),
    "RS256": lambda: mint("rsa-1", algorithm="RS256"),
    "RS512": lambda: mint("rsa-1", algorithm="RS512"),
    "PS384": lambda: mint("rsa-1", algorithm="PS384"),
    "missing kid": lambda: mint(None),
    "unknown kid": lambda: mint("rsa-1", header={"kid": "no-such-key"}),
    "wrong signature key": lambda: mint("rsa-1", key=STRANGER),
    "tampered payload": lambda: _tampered(),
    "unknown iss": lambda: mint(payload=claims("https://evil.example.org")),
    "missing iss": lambda: mint(payload=claims(iss=None)),
    "aud of another path": lambda: mint(payload=claims(aud=f"{BASE}/cds-services/other")),
    "aud of another host": lambda: mint(payload=claims(aud=f"https://other.example.org{SERVICE}")),
    "aud with a trailing slash": lambda: mint(payload=claims(aud=f"{AUD}/")),
    "aud of the base only": lambda: mint(payload=claims(aud=f"{BASE}/cds-services")),
    "missing aud": lambda: mint(payload=claims(aud=None)),
    "expired beyond skew": lambda: mint(payload=claims(exp=_now() - 120, iat=_now() - 420)),
    "missing exp": lambda: mint(payload=claims(exp=None)),
    "iat in the future beyond skew": lambda: mint(payload=claims(iat=_now() + 120)),
    "missing iat": lambda: mint(payload=claims(iat=None)),
    "nbf in the future": lambda: mint(payload=claims(nbf=_now() + 120)),
    "missing jti": lambda: mint(payload=claims(jti=None)),
    "jku for an issuer without an allowlist": lambda: mint(
        payload=claims(), header={"jku": "https://ehr-inline.example.org/jwks"}
    ),
    "wrong tenant": lambda: mint(payload=claims(ISS_TENANT, tenant="another-tenant")),
    "missing tenant": lambda: mint(payload=claims(ISS_TENANT)),
}


def _tampered() -> str:
    header, payload, signature = mint().split(".")
    changed = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    changed["iss"] = ISS_TENANT
    return f"{header}.{_b64(json.dumps(changed).encode())}.{signature}"


@pytest.mark.parametrize("make", list(REFUSED.values()), ids=list(REFUSED))
def test_bad_tokens_get_a_bare_401(service: Service, make: Any) -> None:
    assert_bare_401(service.call(make()))


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "bearer-but-not"],
)
def test_no_bearer_token_gets_a_bare_401(service: Service, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    assert_bare_401(service.call(None, headers=headers))


def test_a_token_signed_for_the_inline_issuer_is_not_valid_for_another(
    service: Service,
) -> None:
    # The tenant issuer knows rsa-1 too: the token must name it as iss to be accepted there.
    assert_bare_401(service.call(mint("ec-1", payload=claims(ISS_TENANT, tenant=TENANT))))


def test_a_replayed_jti_is_refused(service: Service) -> None:
    token = mint()
    assert service.call(token).status_code == 200
    assert_bare_401(service.call(token))
    # The same jti in a freshly signed token is a replay too.
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert_bare_401(service.call(mint("ec-1", payload=claims(jti=jti))))


def test_a_jku_outside_the_allowlist_is_never_fetched(
    service: Service, jwks_server: JwksServer
) -> None:
    foreign = f"{jwks_server.base}/foreign-jwks.json"
    for kid in ("rsa-1", "ec-1", "unseen-kid"):
        token = mint("rsa-1", payload=claims(ISS_REMOTE), header={"jku": foreign, "kid": kid})
        assert_bare_401(service.call(token))
    assert_bare_401(service.call(mint(payload=claims(ISS_INLINE), header={"jku": foreign})))
    assert jwks_server.count("/foreign-jwks.json") == 0


_RS384 = {"alg": "RS384", "typ": "JWT", "kid": "rsa-1"}
_GARBAGE = {"sign": lambda data: b"x" * 256}
MALFORMED: dict[str, Any] = {
    "alg is an array": lambda: hand_made(_RS384 | {"alg": ["RS384"]}, claims(), **_GARBAGE),
    "iss is an array": lambda: hand_made(_RS384, claims() | {"iss": [ISS_INLINE]}, **_GARBAGE),
    "iss is an object": lambda: hand_made(_RS384, claims() | {"iss": {"a": 1}}, **_GARBAGE),
    # A registered kid with the other family's algorithm: the EC key handed to RS384, and the
    # RSA key to ES384.
    "RS384 naming the EC key's kid": lambda: mint("rsa-1", header={"kid": "ec-1"}),
    "ES384 naming the RSA key's kid": lambda: hand_made(
        {"alg": "ES384", "typ": "JWT", "kid": "rsa-1"}, claims(), **_GARBAGE
    ),
}


@pytest.mark.parametrize("make", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_or_mismatched_tokens_get_a_bare_401(service: Service, make: Any) -> None:
    assert_bare_401(service.call(make()))


# --- key rotation at the JWKS URL -----------------------------------------------------------------


@pytest.fixture
def rotating(jwks_server: JwksServer) -> Iterator[tuple[Service, list[float]]]:
    """A service whose issuer publishes its keys at /rotating-jwks.json, with a settable clock
    for the verifier's refresh interval."""
    jwks_server.sets["/rotating-jwks.json"] = jwks("rsa-1")
    settings = Settings(
        public_base_url=BASE,
        cds_clients=(CdsClient(iss=ISS_REMOTE, jwks_url=f"{jwks_server.base}/rotating-jwks.json"),),
    )
    app = create_app(settings)
    now = [time.time()]
    with TestClient(app) as client:
        app.state.jwt_verifier.clock = lambda: now[0]
        yield Service(client, app, hook_body(client)), now


def test_a_new_kid_published_at_the_jwks_url_is_accepted(
    rotating: tuple[Service, list[float]], jwks_server: JwksServer
) -> None:
    service, now = rotating
    path = "/rotating-jwks.json"
    start = jwks_server.count(path)
    assert service.call(mint("rsa-1", payload=claims(ISS_REMOTE))).status_code == 200
    assert jwks_server.count(path) == start + 1
    # Cached: more calls with a known kid fetch nothing.
    assert service.call(mint("rsa-1", payload=claims(ISS_REMOTE))).status_code == 200
    assert jwks_server.count(path) == start + 1
    # The EHR rotates: a new key is published, and later its tokens are signed with it.
    jwks_server.sets[path] = jwks("rsa-1", "rsa-2")
    now[0] += 60
    response = service.call(mint("rsa-2", payload=claims(ISS_REMOTE)))
    assert response.status_code == 200, response.text
    assert jwks_server.count(path) == start + 2
    # Both keys are now known: neither needs another fetch.
    assert service.call(mint("rsa-1", payload=claims(ISS_REMOTE))).status_code == 200
    assert service.call(mint("rsa-2", payload=claims(ISS_REMOTE))).status_code == 200
    assert jwks_server.count(path) == start + 2


def test_unknown_kids_do_not_hammer_the_jwks_url(
    rotating: tuple[Service, list[float]], jwks_server: JwksServer
) -> None:
    service, now = rotating
    path = "/rotating-jwks.json"
    assert service.call(mint("rsa-1", payload=claims(ISS_REMOTE))).status_code == 200
    before = jwks_server.count(path)
    for n in range(5):
        token = mint("rsa-1", payload=claims(ISS_REMOTE), header={"kid": f"bogus-{n}"})
        assert_bare_401(service.call(token))
    assert jwks_server.count(path) == before  # within the refresh interval: no refetch
    now[0] += 60
    assert_bare_401(
        service.call(mint("rsa-1", payload=claims(ISS_REMOTE), header={"kid": "bogus-x"}))
    )
    assert jwks_server.count(path) == before + 1  # once per interval at most


def test_a_failed_refresh_keeps_the_keys_already_known(
    rotating: tuple[Service, list[float]], jwks_server: JwksServer
) -> None:
    service, now = rotating
    path = "/rotating-jwks.json"
    assert service.call(mint("rsa-1", payload=claims(ISS_REMOTE))).status_code == 200
    before = jwks_server.count(path)
    published = jwks_server.sets.pop(path)  # the JWKS URL answers 404 for a while
    now[0] += 60
    bogus = mint("rsa-1", payload=claims(ISS_REMOTE), header={"kid": "bogus"})
    assert_bare_401(service.call(bogus))
    assert jwks_server.count(path) == before + 1  # the refresh was tried, and failed
    jwks_server.sets[path] = published
    response = service.call(mint("rsa-1", payload=claims(ISS_REMOTE)))
    assert response.status_code == 200, response.text


# --- issue 12: lifetimes, replays across restarts, keys removed at the issuer ---------------------


@pytest.mark.parametrize("lifetime", [301, 3600, 10 * 365 * 86400])
def test_a_token_living_longer_than_five_minutes_is_refused(
    service: Service, lifetime: int
) -> None:
    now = int(time.time())
    assert_bare_401(service.call(mint(payload=claims(iat=now, exp=now + lifetime))))


def test_a_replay_is_refused_by_a_restarted_service_on_the_same_database(
    tmp_path: Any,
) -> None:
    settings = Settings(
        public_base_url=BASE,
        database_url=f"sqlite:///{tmp_path / 'shared.db'}",
        cds_clients=(CdsClient(iss=ISS_INLINE, jwks=jwks("rsa-1")),),
    )
    token = mint()
    with TestClient(create_app(settings)) as first:
        assert first.post(SERVICE, json=hook_body(first), headers=bearer(token)).status_code == 200
    with TestClient(create_app(settings)) as restarted:
        assert_bare_401(restarted.post(SERVICE, json=hook_body(restarted), headers=bearer(token)))
        fresh = mint()
        response = restarted.post(SERVICE, json=hook_body(restarted), headers=bearer(fresh))
        assert response.status_code == 200


def test_a_key_removed_from_the_jwks_stops_working_within_its_max_age(
    rotating: tuple[Service, list[float]], jwks_server: JwksServer
) -> None:
    service, now = rotating
    path = "/rotating-jwks.json"
    jwks_server.sets[path] = jwks("rsa-1", "rsa-2")
    jwks_server.cache_control[path] = "public, max-age=120"
    try:
        assert service.call(mint("rsa-2", payload=claims(ISS_REMOTE))).status_code == 200
        jwks_server.sets[path] = jwks("rsa-1")  # the issuer withdraws rsa-2
        now[0] += 60
        assert service.call(mint("rsa-2", payload=claims(ISS_REMOTE))).status_code == 200
        now[0] += 61  # past max-age: the next call refetches
        assert_bare_401(service.call(mint("rsa-2", payload=claims(ISS_REMOTE))))
        assert service.call(mint("rsa-1", payload=claims(ISS_REMOTE))).status_code == 200
    finally:
        jwks_server.cache_control.pop(path)


def test_without_cache_headers_keys_are_refetched_every_five_minutes(
    rotating: tuple[Service, list[float]], jwks_server: JwksServer
) -> None:
    service, now = rotating
    path = "/rotating-jwks.json"
    jwks_server.sets[path] = jwks("rsa-1", "rsa-2")
    assert service.call(mint("rsa-2", payload=claims(ISS_REMOTE))).status_code == 200
    jwks_server.sets[path] = jwks("rsa-1")
    now[0] += 299
    assert service.call(mint("rsa-2", payload=claims(ISS_REMOTE))).status_code == 200
    now[0] += 2
    assert_bare_401(service.call(mint("rsa-2", payload=claims(ISS_REMOTE))))


def test_feedback_is_taken_only_from_the_client_the_card_was_shown_by(tmp_path: Any) -> None:
    settings = Settings(
        public_base_url=BASE,
        database_url=f"sqlite:///{tmp_path / 'cards.db'}",
        cds_show_ineligible=True,
        cds_clients=(
            CdsClient(iss=ISS_INLINE, jwks=jwks("rsa-1")),
            CdsClient(iss=ISS_REMOTE, jwks=jwks("rsa-1")),
        ),
    )
    with TestClient(create_app(settings)) as client:
        response = client.post(SERVICE, json=hook_body(client), headers=bearer(mint()))
        assert response.status_code == 200, response.text
        card = response.json()["cards"][0]
        item = {
            "card": card["uuid"],
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": datetime.now(UTC).isoformat(),
        }
        body = {"feedback": [item]}
        fb_aud = f"{BASE}{FEEDBACK}"
        other = mint(payload=claims(ISS_REMOTE, aud=fb_aud))
        assert client.post(FEEDBACK, json=body, headers=bearer(other)).status_code == 404
        own = mint(payload=claims(ISS_INLINE, aud=fb_aud))
        assert client.post(FEEDBACK, json=body, headers=bearer(own)).status_code == 200


def test_readers_see_only_their_tenants_screenings(tmp_path: Any) -> None:
    from tests.test_access import ISSUER as REST_ISSUER
    from tests.test_access import READER
    from tests.test_access import _jwks as rest_jwks
    from tests.test_access import token as rest_token

    settings = Settings(
        public_base_url=BASE,
        database_url=f"sqlite:///{tmp_path / 'tenants.db'}",
        cds_show_ineligible=True,
        auth_issuer=REST_ISSUER,
        auth_jwks=rest_jwks(),
        cross_tenant_clients=("auditing-engine",),
        cds_clients=(
            CdsClient(iss=ISS_INLINE, jwks=jwks("rsa-1")),
            CdsClient(iss=ISS_TENANT, jwks=jwks("rsa-1"), tenant=TENANT),
        ),
    )
    patient = f"t-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings)) as client:
        made = {}
        for iss, extra in ((ISS_INLINE, {}), (ISS_TENANT, {"tenant": TENANT})):
            token = mint(payload=claims(iss, **extra))
            response = client.post(SERVICE, json=hook_body(client, patient), headers=bearer(token))
            assert response.status_code == 200, response.text
            made[iss] = response.json()["cards"][0]["links"][0]["url"].rsplit("/", 1)[1]

        def visible(**token_claims: Any) -> set[str]:
            headers = bearer(rest_token(READER, **token_claims))
            search = client.get(
                f"/fhir/GuidanceResponse?subject=Patient/{patient}", headers=headers
            )
            found = {e["resource"]["id"] for e in search.json().get("entry", [])}
            for iss, screening_id in made.items():
                read = client.get(f"/fhir/GuidanceResponse/{screening_id}", headers=headers)
                assert read.status_code == (200 if screening_id in found else 404), iss
            return found

        # Each CDS client's screenings carry its tenant (the configured one, else its issuer).
        assert made[ISS_TENANT] in visible(tenant=TENANT)
        assert made[ISS_INLINE] not in visible(tenant=TENANT)
        assert made[ISS_INLINE] in visible(tenant=ISS_INLINE)
        assert visible() == set()  # no tenant claim: only screenings made without a tenant
        assert set(made.values()) <= visible(client_id="auditing-engine")
