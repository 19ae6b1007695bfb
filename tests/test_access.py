"""Who may use the REST API (OAuth2 bearer JWTs with scopes), how often (rate limit), and the
audit trail every access leaves."""

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from app.core.settings import Settings
from app.main import create_app
from tests.test_api import SCREEN, parameters, small_bundle, validate_r4

BASE = "http://testserver"
ISSUER = "https://auth.hospital.example"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SCREENER = "system/GuidanceResponse.write"
READER = "system/GuidanceResponse.read"
AUDITOR = "system/AuditEvent.read"


def _jwks() -> dict[str, Any]:
    public = jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
    return {"keys": [public | {"kid": "k1", "alg": "RS384", "use": "sig"}]}


def token(scope: str, key: Any = KEY, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": BASE,
        "sub": "integration-engine",
        "client_id": "engine-1",
        "scope": scope,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    } | claims
    return jwt.encode(body, key, algorithm="RS384", headers={"kid": "k1"})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # A database of its own: the refusal limiter's buckets live there, and other modules'
    # refused requests from the same test client address must not use up this module's budget.
    database = tmp_path_factory.mktemp("access") / "trialscreen.db"
    settings = Settings(
        database_url=f"sqlite:///{database}",
        public_base_url=BASE,
        auth_issuer=ISSUER,
        auth_jwks=_jwks(),
        allow_unauthenticated=False,
        rate_limit_per_minute=0,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_a_token_with_the_screen_scope_screens(secured: TestClient) -> None:
    response = secured.post(
        SCREEN, json=parameters(small_bundle()), headers=bearer(token(SCREENER))
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
        (bearer("not-a-jwt"), 401),
        (bearer(token(SCREENER, key=OTHER_KEY)), 401),
        (bearer(token(SCREENER, aud="https://elsewhere.example")), 401),
        (bearer(token(SCREENER, iss="https://evil.example")), 401),
        (bearer(token(SCREENER, exp=int(time.time()) - 600)), 401),
        (bearer(token(READER)), 403),
        (bearer(token("")), 403),
    ],
    ids=[
        "no token",
        "basic auth",
        "not a JWT",
        "wrong key",
        "wrong audience",
        "wrong issuer",
        "expired",
        "read scope only",
        "no scope",
    ],
)
def test_screening_refuses_bad_tokens(
    secured: TestClient, headers: dict[str, str], status: int
) -> None:
    response = secured.post(SCREEN, json=parameters(small_bundle()), headers=headers)
    assert response.status_code == status
    outcome = validate_r4(response.json())
    assert outcome.issue[0].code == ("login" if status == 401 else "forbidden")
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def _hand_made(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    signing_input = f"{part(header)}.{part(claims)}"
    if secret is None:
        return f"{signing_input}."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def test_hmac_and_none_tokens_are_refused(secured: TestClient) -> None:
    public_pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = jwt.decode(token(SCREENER), options={"verify_signature": False})
    forged = [
        _hand_made({"alg": "HS256", "kid": "k1", "typ": "JWT"}, claims, public_pem),
        _hand_made({"alg": "none", "kid": "k1", "typ": "JWT"}, claims, None),
    ]
    for bad in forged:
        response = secured.post(SCREEN, json=parameters(small_bundle()), headers=bearer(bad))
        assert response.status_code == 401


def test_published_resources_need_no_token(secured: TestClient) -> None:
    for path in ("/fhir/metadata", "/fhir/ResearchStudy", "/fhir/PlanDefinition/NCT06801119"):
        assert secured.get(path).status_code == 200


def test_reading_screenings_needs_the_read_scope(secured: TestClient) -> None:
    issued = secured.post(
        SCREEN, json=parameters(small_bundle()), headers=bearer(token(SCREENER))
    ).json()
    path = f"/fhir/GuidanceResponse/{issued['id']}"
    assert secured.get(path).status_code == 401
    assert secured.get(path, headers=bearer(token(SCREENER))).status_code == 403
    assert secured.get(path, headers=bearer(token(READER))).json() == issued
    assert secured.get(path, headers=bearer(token("system/GuidanceResponse.rs"))).status_code == 200


def test_refused_access_is_audited(secured: TestClient) -> None:
    probe = f"probe-{uuid.uuid4()}"
    assert secured.get("/fhir/GuidanceResponse/some-id").status_code == 401
    assert (
        secured.get(
            "/fhir/GuidanceResponse/some-id", headers=bearer(token(SCREENER, client_id=probe))
        ).status_code
        == 403
    )
    trail = secured.get("/fhir/AuditEvent", headers=bearer(token(AUDITOR))).json()
    denied = [
        e["resource"]
        for e in trail["entry"]
        if e["resource"]["subtype"][1]["code"] == "access-denied"
    ]
    # Refusals are aggregated per source, route and minute: look for both sources' rows.
    agents = {e["agent"][0]["who"]["identifier"]["value"] for e in denied}
    assert {probe, "unauthenticated@testclient"} <= agents
    assert all(e["outcome"] == "4" for e in denied)


def test_the_audit_trail_is_for_auditors(secured: TestClient) -> None:
    assert secured.get("/fhir/AuditEvent", headers=bearer(token(READER))).status_code == 403
    response = secured.get("/fhir/AuditEvent", headers=bearer(token(AUDITOR)))
    assert response.status_code == 200
    bundle = validate_r4(response.json())
    assert bundle.type == "searchset"


def test_rate_limit_answers_429_with_retry_after() -> None:
    settings = Settings(
        public_base_url=BASE,
        auth_issuer=ISSUER,
        auth_jwks=_jwks(),
        rate_limit_per_minute=6,
        rate_limit_burst=2,
    )
    with TestClient(create_app(settings)) as client:
        headers = bearer(token(SCREENER))
        statuses = [
            client.post(SCREEN, json=parameters(small_bundle()), headers=headers).status_code
            for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        limited = client.post(SCREEN, json=parameters(small_bundle()), headers=headers)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert validate_r4(limited.json()).issue[0].code == "throttled"
        # Another client has its own allowance.
        other = bearer(token(SCREENER, client_id="engine-2"))
        assert (
            client.post(SCREEN, json=parameters(small_bundle()), headers=other).status_code == 200
        )


def test_development_setting_serves_without_a_token() -> None:
    with TestClient(create_app(Settings(allow_unauthenticated=True))) as client:
        response = client.post(SCREEN, json=parameters(small_bundle()))
        assert response.status_code == 200
        # A presented token is still checked.
        assert (
            client.post(SCREEN, json=parameters(small_bundle()), headers=bearer("x")).status_code
            == 401
        )


# --- patient-bound scopes (issue 12) -------------------------------------------------------------


def _screen_patient(
    client: TestClient, patient_id: str, scope: str = SCREENER, **claims: Any
) -> Any:
    bundle = small_bundle()
    bundle["entry"][0]["resource"]["id"] = patient_id
    return client.post(SCREEN, json=parameters(bundle), headers=bearer(token(scope, **claims)))


@pytest.fixture(scope="module")
def two_patients(secured: TestClient) -> dict[str, str]:
    """A screening id for each of two patients, screened by the integration engine."""
    ids = {}
    for patient in (f"pa-{uuid.uuid4().hex[:8]}", f"pb-{uuid.uuid4().hex[:8]}"):
        response = _screen_patient(secured, patient)
        assert response.status_code == 200, response.text
        ids[patient] = response.json()["id"]
    return ids


def test_a_patient_scope_reads_only_its_own_patient(
    secured: TestClient, two_patients: dict[str, str]
) -> None:
    (mine, mine_id), (other, other_id) = two_patients.items()
    headers = bearer(token("patient/GuidanceResponse.read", patient=mine))
    assert secured.get(f"/fhir/GuidanceResponse/{mine_id}", headers=headers).status_code == 200
    assert secured.get(f"/fhir/GuidanceResponse/{other_id}", headers=headers).status_code == 403
    search = "/fhir/GuidanceResponse?subject=Patient/"
    assert secured.get(search + other, headers=headers).status_code == 403
    own = secured.get(search + mine, headers=headers)
    assert own.status_code == 200 and own.json()["total"] == 1
    # No subject: the search is filtered to the token's patient.
    filtered = secured.get("/fhir/GuidanceResponse", headers=headers).json()
    assert [e["resource"]["id"] for e in filtered["entry"]] == [mine_id]


def test_a_patient_scope_without_a_patient_claim_is_403(
    secured: TestClient, two_patients: dict[str, str]
) -> None:
    (_, screening_id), _ = two_patients.items()
    headers = bearer(token("patient/GuidanceResponse.rs"))
    assert secured.get(f"/fhir/GuidanceResponse/{screening_id}", headers=headers).status_code == 403


def test_user_scopes_follow_the_patient_claim_when_there_is_one(
    secured: TestClient, two_patients: dict[str, str]
) -> None:
    (mine, _), (_, other_id) = two_patients.items()
    path = f"/fhir/GuidanceResponse/{other_id}"
    anywhere = bearer(token("user/GuidanceResponse.read"))
    assert secured.get(path, headers=anywhere).status_code == 200
    in_context = bearer(token("user/GuidanceResponse.read", patient=mine))
    assert secured.get(path, headers=in_context).status_code == 403
    system = bearer(token("system/GuidanceResponse.read", patient=mine))
    assert secured.get(path, headers=system).status_code == 200


def test_a_patient_scope_screens_only_its_own_patient(secured: TestClient) -> None:
    scope = "patient/GuidanceResponse.write"
    assert _screen_patient(secured, "own-1", scope, patient="own-1").status_code == 200
    assert _screen_patient(secured, "other-1", scope, patient="own-1").status_code == 403
    by_id = {
        "resourceType": "Parameters",
        "parameter": [{"name": "patient", "valueString": "other-1"}],
    }
    refused = secured.post(SCREEN, json=by_id, headers=bearer(token(scope, patient="own-1")))
    assert refused.status_code == 403
