"""Screenings off the event loop (app/screening/pool.py): worker processes give the answers the
service gives in-process, a full pool answers 503 with Retry-After at once, and a request with
more resources than allowed is refused with 413 before it is parsed."""

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from app.catalog.loader import Catalog
from app.core.errors import PayloadTooLarge, ServerBusy
from app.core.limits import resource_count
from app.core.settings import Settings
from app.main import create_app
from app.screening.pool import ScreenPool, WorkerEnv, cores
from tests.test_api import SCREEN, criteria, parameters, result_parameters

_DEMO = Path(__file__).resolve().parent.parent / "app" / "demo" / "patients"
_PATIENT = "b6446621-f1b9-4a74-bd09-7ec2410b27cf"


def _demo_body() -> dict[str, Any]:
    bundle = orjson.loads((_DEMO / f"{_PATIENT}.json").read_bytes())
    return parameters(bundle, "2025-11-01")


def _answers(response: httpx.Response) -> dict[str, str]:
    """Every part of every criterion's result (status, reason, evidence), by criterion."""
    assert response.status_code == 200, response.text[:300]
    found = criteria(result_parameters(response.json()))
    return {k: orjson.dumps(v["part"]).decode() for k, v in found.items()}


def test_worker_processes_answer_as_the_service_does_in_process(client: TestClient) -> None:
    body = _demo_body()
    in_process = _answers(client.post(SCREEN, json=body))
    settings = Settings(allow_unauthenticated=True, screen_workers=1)
    with TestClient(create_app(settings)) as pooled:
        assert pooled.app.state.screen_pool.workers == 1  # type: ignore[attr-defined]
        in_worker = _answers(pooled.post(SCREEN, json=body))
        # A refusal raised in the worker comes back as the same OperationOutcome.
        refused = pooled.post(SCREEN, json={"resourceType": "Parameters", "parameter": []})
    assert in_worker == in_process
    assert refused.status_code == 400
    assert refused.json()["resourceType"] == "OperationOutcome"


def _blocked(env: WorkerEnv, release: threading.Event) -> str:
    release.wait(10)
    return "done"


def test_a_full_pool_refuses_at_once(catalog: Catalog) -> None:
    settings = Settings(allow_unauthenticated=True, screen_workers=0, screen_queue=1)
    pool = ScreenPool(settings, catalog)
    release = threading.Event()

    async def scenario() -> list[Any]:
        held = [asyncio.ensure_future(pool.run(_blocked, release)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ServerBusy) as refused:
            await pool.run(_blocked, release)
        assert refused.value.headers() == {"Retry-After": str(settings.screen_retry_after)}
        release.set()
        done = await asyncio.gather(*held)
        # The places are free again once the jobs end.
        release.clear()
        release.set()
        return [*done, await pool.run(_blocked, release)]

    try:
        assert asyncio.run(scenario()) == ["done"] * 3
        assert pool.in_flight == 0
    finally:
        pool.close()


def test_a_full_pool_answers_503_with_retry_after() -> None:
    settings = Settings(allow_unauthenticated=True, screen_workers=0, screen_queue=0)
    release = threading.Event()

    async def scenario() -> httpx.Response:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pool: ScreenPool = app.state.screen_pool
            held = asyncio.ensure_future(pool.run(_blocked, release))
            await asyncio.sleep(0)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                response = await http.post(SCREEN, json=_demo_body())
            release.set()
            await held
            return response

    response = asyncio.run(scenario())
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(settings.screen_retry_after)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"


def test_too_many_resources_is_413_before_parsing() -> None:
    settings = Settings(allow_unauthenticated=True, screen_workers=0, max_resources=100)
    body = _demo_body()  # 431 resources in a Bundle in a Parameters
    with TestClient(create_app(settings)) as small:
        response = small.post(SCREEN, json=body)
        assert response.status_code == 413
        assert response.json()["issue"][0]["code"] == "too-costly"
        assert "433 resources" in response.json()["issue"][0]["diagnostics"]
        # A record within the limit is screened.
        entries = body["parameter"][0]["resource"]["entry"]
        body["parameter"][0]["resource"]["entry"] = entries[:50]
        assert small.post(SCREEN, json=body).status_code == 200


def test_the_count_sees_every_resource_and_no_escaped_key() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "contained": [{"resourceType": "Specimen"}],
                    "note": [{"text": 'says "resourceType" in words'}],
                }
            },
        ],
    }
    body = orjson.dumps(bundle)
    assert resource_count(body, 4) == 4  # the Bundle, both entries, the contained one
    with pytest.raises(PayloadTooLarge):
        resource_count(body, 3)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1), ("garbage", None)],
)
def test_workers_default_to_the_cores_the_container_may_use(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:

    available = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert cores(tmp_path / "cpu.max") == min(expected or available, available)
    assert cores(tmp_path / "absent") == available


def _pid(env: WorkerEnv) -> int:
    return os.getpid()


def test_closing_the_pool_ends_its_workers(catalog: Catalog) -> None:
    pool = ScreenPool(Settings(allow_unauthenticated=True, screen_workers=1), catalog)

    async def worker_pid() -> int:
        return await pool.run(_pid)

    pid = asyncio.run(worker_pid())
    assert pid != os.getpid()
    pool.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
