"""Two uvicorn workers on one database enforce one rate limit and refuse one replay: the state that
guards the service lives in the database, not in a process (issue 12).

The service runs as it is deployed, ``uvicorn app.main:app --workers 2``, configured through the
environment, on a fresh SQLite file or PostgreSQL database. Each request opens a new connection,
so the kernel hands them to both workers; the test first shows that both answer (each worker's
``trialscreen_process_id`` in /metrics differs).
"""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest

from app.store.database import Store
from tests.loopback import free_port
from tests.test_access import ISSUER, KEY, READER, _jwks
from tests.test_cds_trust import ISS_INLINE, claims, jwks, mint

ROOT = Path(__file__).resolve().parent.parent
RATE_PER_MINUTE = 4
"""Four requests a minute, four at once: a refill takes 15 s, longer than the test's burst."""


def _settings_env(base: str, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIALSCREEN_")}
    return env | {
        "TRIALSCREEN_DATABASE_URL": database_url,
        "TRIALSCREEN_PUBLIC_BASE_URL": base,
        "TRIALSCREEN_AUTH_ISSUER": ISSUER,
        "TRIALSCREEN_AUTH_JWKS": json.dumps(_jwks()),
        "TRIALSCREEN_RATE_LIMIT_PER_MINUTE": str(RATE_PER_MINUTE),
        "TRIALSCREEN_RATE_LIMIT_BURST": str(RATE_PER_MINUTE),
        "TRIALSCREEN_REFUSED_PER_MINUTE": "0",
        "TRIALSCREEN_CDS_CLIENTS": json.dumps([{"iss": ISS_INLINE, "jwks": jwks("rsa-1")}]),
    }


@pytest.fixture
def two_workers(store_url: str) -> Iterator[str]:
    """The service on two uvicorn worker processes sharing ``store_url``; its base URL."""
    Store(store_url).close()  # migrated once, before the workers start (as a deployment does)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "uvicorn", "app.main:app"),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--no-access-log"),
    ]
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        env=_settings_env(base, store_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("the two-worker service did not start")
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _fresh(method: str, url: str, **kwargs: object) -> httpx.Response:
    """One request on its own connection (so the kernel may give it to either worker)."""
    with httpx.Client(timeout=30) as client:
        return client.request(method, url, **kwargs)  # type: ignore[arg-type]


def _worker(base: str) -> str:
    metrics = _fresh("GET", f"{base}/metrics").text
    (line,) = [x for x in metrics.splitlines() if x.startswith("trialscreen_process_id ")]
    return line


def _token(scope: str, audience: str) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": audience,
        "client_id": "replica-probe",
        "scope": scope,
        "iat": now,
        "exp": now + 300,
    }
    return jwt.encode(body, KEY, algorithm="RS384", headers={"kid": "k1"})


def test_two_workers_share_one_rate_limit_and_one_replay_cache(two_workers: str) -> None:
    base = two_workers
    workers: set[str] = set()
    deadline = time.monotonic() + 60  # the second worker may still be importing
    while len(workers) < 2 and time.monotonic() < deadline:
        with ThreadPoolExecutor(8) as pool:
            workers |= set(pool.map(lambda _: _worker(base), range(32)))
    assert len(workers) == 2, "both workers answer"

    reader = {"Authorization": f"Bearer {_token(READER, base)}"}
    search = f"{base}/fhir/GuidanceResponse?subject=Patient/replica-1"
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(lambda _: _fresh("GET", search, headers=reader).status_code, range(24))
        )
    # One bucket for the client across both workers: its burst, then 429 (two per-process
    # buckets would let up to twice the burst through).
    assert statuses.count(200) == RATE_PER_MINUTE, statuses
    assert statuses.count(429) == 24 - RATE_PER_MINUTE, statuses

    service = f"{base}/cds-services/trial-eligibility"
    prefetch_keys = _fresh("GET", f"{base}/cds-services").json()["services"][0]["prefetch"]
    prefetch: dict[str, object] = dict.fromkeys(prefetch_keys)  # every search: "no data"
    prefetch["patient"] = {"resourceType": "Patient", "id": "replica-1"}
    body = {
        "hook": "patient-view",
        "hookInstance": "6f0e4d44-3b8a-4d55-9a64-0b0c1f6f2a11",
        "context": {"userId": "Practitioner/example", "patientId": "replica-1"},
        "prefetch": prefetch,
    }
    token = mint(payload=claims(ISS_INLINE, aud=service))
    headers = {"Authorization": f"Bearer {token}"}
    first = _fresh("POST", service, json=body, headers=headers)
    assert first.status_code == 200, first.text
    with ThreadPoolExecutor(8) as pool:
        replays = list(
            pool.map(
                lambda _: _fresh("POST", service, json=body, headers=headers).status_code,
                range(16),
            )
        )
    assert replays == [401] * 16  # whichever worker gets the replay refuses it
