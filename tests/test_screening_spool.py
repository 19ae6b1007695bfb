"""Large request bodies go to a screening worker process as a memfd descriptor, not pickled bytes
(app/screening/spool.py): the worker reads exactly the bytes received, the service's descriptor
is closed once the job has ended, a body over the limit is refused with the spool closed, and the
answers of $screen and of a CDS hook are the same whether the body was spooled or not."""

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from app.catalog.loader import Catalog
from app.core.errors import PayloadTooLarge
from app.core.settings import Settings
from app.main import create_app
from app.screening import spool
from app.screening.pool import ScreenPool, WorkerEnv
from app.screening.spool import Body, Spool, body_bytes, collect
from bench.cds_bench import build_prefetch
from tests.test_api import SCREEN
from tests.test_perf_pool import _answers, _demo_body

pytestmark = pytest.mark.skipif(not spool.available(), reason="memfd_create is Linux-only")


def _digest(env: WorkerEnv, body: Body) -> tuple[str, int]:
    data = body_bytes(body)
    return hashlib.sha256(data).hexdigest(), os.getpid()


def _open_fds() -> set[str]:
    return {p.name for p in Path("/proc/self/fd").iterdir()}


def test_a_spooled_body_reaches_a_worker_process_whole(catalog: Catalog) -> None:
    pool = ScreenPool(Settings(allow_unauthenticated=True, screen_workers=1), catalog)
    chunks = [os.urandom(65_536) for _ in range(80)] + [b"tail"]
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    try:
        assert pool.spools
        # The worker and the descriptor sharer start with the first spooled job.
        asyncio.run(pool.run(_digest, Spool([b"warm-up"])))
        before = _open_fds()
        body = Spool(chunks[:3])
        for chunk in chunks[3:]:
            body.write(chunk)
        digest, pid = asyncio.run(pool.run(_digest, body))
        assert (digest, body.size) == (expected, sum(map(len, chunks)))
        assert pid != os.getpid()  # read in the worker, from the descriptor
        assert _open_fds() <= before  # the service's descriptor is closed: the job has ended
    finally:
        pool.close()


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_collect_spools_from_the_threshold_and_closes_on_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(spool, "SPOOL_FROM", 1000)
    small = asyncio.run(collect(_stream([b"x" * 400, b"y" * 400]), 10_000, spool=True))
    assert small == b"x" * 400 + b"y" * 400
    chunks = [bytes([n]) * 400 for n in range(6)]
    large = asyncio.run(collect(_stream(chunks), 10_000, spool=True))
    assert isinstance(large, Spool)
    assert large.read() == b"".join(chunks)
    large.close()
    assert asyncio.run(collect(_stream(chunks), 10_000, spool=False)) == b"".join(chunks)
    before = _open_fds()
    with pytest.raises(PayloadTooLarge):
        asyncio.run(collect(_stream(chunks * 5), 10_000, spool=True))
    assert _open_fds() <= before


def _hook(client: TestClient, bundle: dict[str, Any]) -> dict[str, Any]:
    templates = client.get("/cds-services").json()["services"][0]["prefetch"]
    patient_id, prefetch = build_prefetch(templates, bundle)
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/1", "patientId": patient_id},
        "prefetch": prefetch,
    }


def _cards(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text[:300]
    cards: list[dict[str, Any]] = response.json()["cards"]
    for card in cards:  # fresh ids per call
        card.pop("uuid")
        for s in card.get("suggestions", []):
            s.pop("uuid", None)
            for a in s.get("actions", []):
                a["resource"].pop("supportingInfo", None)
        card.pop("links", None)
    return cards


def test_spooled_and_unspooled_bodies_get_the_same_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = _demo_body()
    demo = Path(__file__).resolve().parent.parent / "app" / "demo" / "patients"
    bundle = orjson.loads((demo / "b6446621-f1b9-4a74-bd09-7ec2410b27cf.json").read_bytes())
    settings = Settings(allow_unauthenticated=True, screen_workers=1)
    with TestClient(create_app(settings)) as client:
        whole = _answers(client.post(SCREEN, json=body))
        whole_cards = _cards(
            client.post("/cds-services/trial-eligibility", json=_hook(client, bundle))
        )
        monkeypatch.setattr(spool, "SPOOL_FROM", 16_384)  # the demo record is ~300 KB
        made: list[Spool] = []
        real = spool.Spool

        class Watched(real):  # type: ignore[misc,valid-type]
            def __init__(self, chunks: list[bytes] | None = None) -> None:
                super().__init__(chunks)
                made.append(self)

        monkeypatch.setattr(spool, "Spool", Watched)
        spooled = _answers(client.post(SCREEN, json=body))
        spooled_cards = _cards(
            client.post("/cds-services/trial-eligibility", json=_hook(client, bundle))
        )
    assert len(made) == 2  # both bodies went to the worker spooled
    assert spooled == whole
    assert spooled_cards == whole_cards
