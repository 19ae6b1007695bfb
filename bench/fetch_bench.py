"""Benchmark: fetch one patient's record from a real FHIR server (sekmet-fhir on loopback).

Prints the number of HTTP requests, the depth of sequential round trips, and the end-to-end fetch
time as a ratio to the slowest single search of the plan, measured in the same run (targets: depth
<= 2 plus paging, ratio <= 1.5). Then measures httpx's concurrency overhead against aiohttp on the
same server (encode/httpx#3215): 50 concurrent reads, each client in turn.

    .venv/bin/python -m bench.fetch_bench [--repeat 7]      (after bash tests/run installed sekmet)
"""

import argparse
import asyncio
import gzip
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import orjson
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from app.catalog.loader import load_catalog
from app.core.settings import Settings
from app.ehr.auth import NoAuth
from app.ehr.client import Deadline, FhirClient
from app.ehr.connection import ehr_http_client
from app.ehr.fetch_plan import FetchPlan, Search, plan_for
from app.ehr.record_source import EhrRecordSource
from tests import fhir_server
from tests.mock_ehr import MockEhr

_RECORD = Path(__file__).resolve().parent / "data" / "synthea-sle-large.json.gz"
_AS_OF = date(2023, 4, 1)
"""The benchmark patient's record ends in 2023: screen her then, so windows hold data."""


async def _median(fn: Callable[[], Awaitable[object]], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def measure_fetch(
    base_url: str,
    patient_id: str,
    plan: FetchPlan,
    repeat: int,
    label: str,
    page_size: int = Settings().ehr_page_size,
) -> None:
    headers = {"Prefer": "handling=strict"}
    async with ehr_http_client(Settings(ehr_base_url=base_url)) as http:

        def client() -> FhirClient:
            return FhirClient(http, base_url, NoAuth(), headers=headers, page_size=page_size)

        searches = plan.searches(patient_id, _AS_OF)
        one_by_one = 0.0
        slowest, slowest_name = 0.0, ""
        for search in searches:

            async def alone(s: Search = search) -> None:
                await client().search(s.resource_type, s.params, Deadline.after(60))

            took = await _median(alone, repeat)
            one_by_one += took
            if took > slowest:
                codes = search.params.get("code", "all")
                slowest, slowest_name = took, f"{search.resource_type} ({codes[:40]}...)"
        one = client()
        source = EhrRecordSource(one, plan, deadline_seconds=60)
        fetched = await source.fetch(patient_id, _AS_OF)
        requests, depth = one.stats.requests, one.stats.depth
        total = await _median(
            lambda: EhrRecordSource(client(), plan, 60).fetch(patient_id, _AS_OF), repeat
        )
    print(f"[{label}, _count={page_size}]")
    print(
        f"fetch plan: {len(searches)} searches + 1 read; {requests} HTTP requests; depth {depth} "
        f"sequential round trips (paging included); problems: {list(fetched.problems) or 'none'}"
    )
    print(
        f"end-to-end fetch median {total * 1e3:.0f} ms; "
        f"slowest single search {slowest * 1e3:.0f} ms "
        f"[{slowest_name}]; ratio {total / slowest:.2f} (target <= 1.5); the searches one after "
        f"another take {one_by_one * 1e3:.0f} ms"
    )


async def measure_clients(base_url: str, patient_id: str, concurrency: int, repeat: int) -> None:
    url = f"{base_url}/Patient/{patient_id}"
    limits = httpx.Limits(max_connections=concurrency)

    async def on_httpx(transport: httpx.AsyncBaseTransport | None) -> float:
        async with httpx.AsyncClient(limits=limits, transport=transport) as hx:

            async def batch() -> None:
                responses = await asyncio.gather(*(hx.get(url) for _ in range(concurrency)))
                assert all(r.status_code == 200 for r in responses)

            await batch()  # warm the pool
            return await _median(batch, repeat)

    httpx_time = await on_httpx(None)
    bridged_time = await on_httpx(AiohttpTransport(limits=limits, trust_env=False))

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.get(url) as response:
                await response.read()
                return response.status

        async def with_aiohttp() -> None:
            statuses = await asyncio.gather(*(one() for _ in range(concurrency)))
            assert all(s == 200 for s in statuses)

        await with_aiohttp()
        aiohttp_time = await _median(with_aiohttp, repeat)
    print(
        f"{concurrency} concurrent reads: httpx {httpx_time * 1e3:.0f} ms = "
        f"{httpx_time / aiohttp_time:.2f}x aiohttp ({aiohttp_time * 1e3:.0f} ms); httpx on the "
        f"aiohttp transport (what the service uses) {bridged_time * 1e3:.0f} ms = "
        f"{bridged_time / aiohttp_time:.2f}x"
    )


async def measure_with_latency(
    bundle: dict[str, Any], patient_id: str, plan: FetchPlan, latency: float, repeat: int
) -> None:
    """The same fetch against a loopback server that answers concurrently after a fixed network
    latency, like a hospital EHR seen from a data centre, so the client's concurrency shows."""
    ehr = MockEhr(bundle)

    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(latency)
        answer = ehr.answer(httpx.Request("GET", str(request.url)))
        return web.Response(status=answer.status_code, body=answer.content)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    ehr.base = f"http://{host}:{port}/fhir"
    try:
        await measure_fetch(ehr.base, patient_id, plan, repeat, f"{latency * 1e3:.0f} ms latency")
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    catalog = load_catalog(Settings())
    plan = plan_for(
        list(catalog.trials.values()),
        catalog.mappings,
        ("MedicationRequest", "MedicationAdministration"),
        40,
    )
    bundle = orjson.loads(gzip.decompress(_RECORD.read_bytes()))
    patient_id = next(
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    with (
        tempfile.TemporaryDirectory() as work,
        fhir_server.running_fhir_server(Path(work)) as server,
    ):
        fhir_server.seed(server.base_url, [bundle], allow_unsearchable=True)
        fhir_server.analyze(server.db_path)
        print(f"sekmet-fhir on {server.base_url}, seeded with {len(bundle['entry'])} resources")
        for page_size in (100, Settings().ehr_page_size):
            asyncio.run(
                measure_fetch(
                    server.base_url, patient_id, plan, args.repeat, "sekmet-fhir", page_size
                )
            )
        asyncio.run(measure_clients(server.base_url, patient_id, 50, args.repeat))
    asyncio.run(measure_with_latency(bundle, patient_id, plan, 0.1, args.repeat))


if __name__ == "__main__":
    main()
