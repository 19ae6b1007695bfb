"""Benchmark: screen a large synthetic record from request bytes to response bytes.

Prints the time of the whole screen as a ratio to ``orjson.loads`` of the same bytes (the parse
floor), measured in the same run, and the peak memory the screen allocates. Target: ratio <= 3.

    .venv/bin/python -m bench.screen_bench [--repeat 15] [--record PATH.json.gz]

The ASGI figure adds FastAPI and the HTTP framing, called in-process (no socket).
"""

import argparse
import asyncio
import gc
import gzip
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import orjson

from app.api.screen_request import parse_screen_request
from app.catalog.loader import load_catalog
from app.catalog.trial import LoadedTrial
from app.core.settings import Settings
from app.engine import evaluate
from app.fhir_io.bundle_reader import read_bundle
from app.fhir_io.report import guidance_response
from app.main import create_app
from app.screening.pool import WorkerEnv, tune_gc

_DEFAULT_RECORD = Path(__file__).resolve().parent / "data" / "synthea-sle-large.json.gz"


def request_bytes(record: Path, as_of: date) -> bytes:
    bundle = orjson.loads(gzip.decompress(record.read_bytes()))
    return orjson.dumps(
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "bundle", "resource": bundle},
                {"name": "asOf", "valueDate": as_of.isoformat()},
            ],
        }
    )


def screen(
    body: bytes,
    trials: list[LoadedTrial],
    settings: Settings,
    observation_codes: frozenset[tuple[str, str]],
) -> bytes:
    """The same steps the $screen endpoints take, without the HTTP layer: one reading of the
    record (only the Observations the criteria look up decoded, as a screening worker reads
    it), one GuidanceResponse per trial."""
    parsed = parse_screen_request(body)
    assert parsed.as_of is not None
    record = read_bundle(parsed.bundle, observation_codes)
    responses = [
        guidance_response(
            evaluate(trial, record, parsed.as_of),
            response_id="bench",
            canonical_base=settings.canonical_base,
            issued=datetime.now(UTC),
        )
        for trial in trials
    ]
    return orjson.dumps(responses[0] if len(responses) == 1 else responses)


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(median, min) wall time in seconds, garbage collected between runs, after one untimed
    run (the catalog's matchers fill their caches on the first screening)."""
    fn()
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


async def _asgi_times(body: bytes, path: str, settings: Settings, repeat: int) -> list[float]:
    app = create_app(settings)
    times = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            url = f"/fhir/ResearchStudy/{path}"
            headers = {"content-type": "application/fhir+json"}
            await client.post(url, content=body, headers=headers)  # workers started, warm
            for _ in range(repeat):
                gc.collect()
                start = time.perf_counter()
                response = await client.post(url, content=body, headers=headers)
                times.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text[:300]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", type=Path, default=_DEFAULT_RECORD)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--as-of", type=date.fromisoformat, default=date(2025, 11, 1))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="screen-bench-") as work:
        run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> None:
    # The benchmark configures its own service: no token needed (the development setting), no
    # rate limit, and screenings kept in a throw-away database (in ``work``) rather than var/.
    settings = Settings(
        allow_unauthenticated=True,
        rate_limit_per_minute=0,
        database_url=f"sqlite:///{work / 'bench.db'}",
    )
    catalog = load_catalog(settings)
    codes = WorkerEnv.of(settings, catalog).observation_codes
    # The collector as the service sets it at start-up, before anything is timed: otherwise the
    # first path runs with the default collector and the later ones with the one the first
    # ASGI app's start-up set (twice as fast on the large record).
    tune_gc(settings)
    body = request_bytes(args.record, args.as_of)
    resources = len(orjson.loads(body)["parameter"][0]["resource"].get("entry", []))
    print(f"record: {args.record.name}, {len(body) / 1e6:.1f} MB, {resources} resources")

    floor, floor_min = best_of(lambda: orjson.loads(body), args.repeat)
    print(f"parse floor (orjson.loads): median {floor * 1e3:.1f} ms (min {floor_min * 1e3:.1f} ms)")
    runs = [(f"{t}/$screen", [trial]) for t, trial in catalog.trials.items()]
    runs.append(("$screen", list(catalog.trials.values())))
    for path, trials in runs:
        total, total_min = best_of(lambda t=trials: screen(body, t, settings, codes), args.repeat)  # type: ignore[misc]
        asgi = statistics.median(asyncio.run(_asgi_times(body, path, settings, args.repeat)))
        tracemalloc.start()
        screen(body, trials, settings, codes)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        label = path.removesuffix("/$screen") if len(trials) == 1 else "all trials"
        print(
            f"{label}: screen median {total * 1e3:.1f} ms = {total / floor:.2f}x parse floor "
            f"(min {total_min / floor_min:.2f}x); via ASGI {asgi * 1e3:.1f} ms = "
            f"{asgi / floor:.2f}x; peak allocated {peak / 1e6:.0f} MB "
            f"(request {len(body) / 1e6:.1f} MB)"
        )


if __name__ == "__main__":
    main()
