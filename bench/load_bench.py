"""Benchmark: the service under load, every path as a ratio to its floor, in one run.

1. Parse floor: ``orjson.loads`` of the 6,207-resource Synthea record with the garbage collector
   on and off, and the in-process screen (read + evaluate both trials + report) against both.
2. Over real HTTP (uvicorn subprocesses on loopback, aiohttp client): the framework floors are a
   bare FastAPI app (bench/floor_app.py) receiving the same bytes, unparsed (``/echo``) and
   decoded into a ``dict`` body parameter as FastAPI apps take JSON (``/parse``); the service
   screens them
   (one request at a time for the large record; 16 concurrent clients for the 431-resource demo
   patient: requests/s and p99).
3. ``/healthz`` latency (p50 / p99 / max) while 50,000-resource screenings run back to back.

Each service is configured here (no token: the development setting; no rate limit; a
throw-away database), so the benchmark runs from a clean clone:

    .venv/bin/python -m bench.load_bench [--seconds 10] [--clients 16]

CDS Hooks (bench.cds_bench) and the EHR fetch (bench.fetch_bench, aiohttp as the client floor,
round-trip depth) have their own benchmarks; ``python -m bench`` runs all three.
Targets (issue 13): screen <= 2x the GC-off floor in-process and <= 1.3x over HTTP; >= 50 % of
the floor's requests/s and p99 < 200 ms at 16 clients; /healthz p99 < 20 ms under big screens.
"""

import argparse
import asyncio
import gc
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from app.api.screen import screen_posted
from app.catalog.loader import load_catalog
from app.core.settings import Settings
from app.screening.pool import WorkerEnv
from bench.cds_bench import _free_port, stop_server

_ROOT = Path(__file__).resolve().parent.parent
_LARGE = Path(__file__).resolve().parent / "data" / "synthea-sle-large.json.gz"
_DEMO = _ROOT / "app" / "demo" / "patients" / "b6446621-f1b9-4a74-bd09-7ec2410b27cf.json"
_AS_OF = "2025-11-01"
_STUDY = "NCT06801119"
Json = dict[str, Any]


def parameters(bundle: Json) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "bundle", "resource": bundle},
                {"name": "asOf", "valueDate": _AS_OF},
            ],
        }
    )


def enlarged(bundle: Json, resources: int) -> Json:
    """The record's entries repeated (fresh ids, one Patient) up to ``resources`` entries."""
    entries = bundle["entry"]
    patient = next(e for e in entries if e["resource"]["resourceType"] == "Patient")
    others = [e for e in entries if e is not patient]
    out = [patient]
    copy = 0
    while len(out) < resources:
        for e in others:
            if len(out) >= resources:
                break
            r = dict(e["resource"])
            r["id"] = f"{r.get('id', 'x')}-{copy}"
            out.append({"fullUrl": f"urn:uuid:{r['id']}", "resource": r})
        copy += 1
    return {**bundle, "entry": out}


# --- in-process --------------------------------------------------------------------------------


def median_time(fn: Callable[[], object], repeat: int, collect: bool = True) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        if not collect:
            gc.disable()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        gc.enable()
    return statistics.median(times)


def in_process(body: bytes, repeat: int) -> tuple[float, float, float]:
    """(GC-off floor, GC-on floor, screen as in a worker), printed with the screen's ratio to
    each. The screen is the job a screening worker runs for $screen (parse, read, evaluate both
    trials, describe)."""
    settings = Settings(allow_unauthenticated=True)
    env = WorkerEnv.of(settings, load_catalog(settings))

    def screen() -> object:
        now = datetime.now(UTC)
        return screen_posted(env, body, None, date(2025, 11, 1), now, "bench", True)

    on = median_time(lambda: orjson.loads(body), repeat)
    off = median_time(lambda: orjson.loads(body), repeat, collect=False)
    # As a screening worker runs it: collector off during the job (app/screening/pool.py).
    worker = median_time(screen, repeat, collect=False)
    plain = median_time(screen, repeat)
    print(f"orjson.loads floor: GC on {on * 1e3:.1f} ms, GC off {off * 1e3:.1f} ms")
    print(
        f"screen in-process, both trials: as in a worker (GC paused) {worker * 1e3:.1f} ms = "
        f"{worker / off:.2f}x the GC-off floor; GC on {plain * 1e3:.1f} ms = "
        f"{plain / off:.2f}x GC-off, {plain / on:.2f}x GC-on"
    )
    return off, on, worker


# --- over HTTP ---------------------------------------------------------------------------------


def start(app: str, port: int, work: Path, env: dict[str, str]) -> "subprocess.Popen[bytes]":
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-keep-alive",
        "5",
        "--h11-max-incomplete-event-size",
        "16384",
    ]
    if app == "app.main:app":
        command += ["--http", "app.core.http_server:HeadTimeoutProtocol"]
    environment = os.environ | {
        "TRIALSCREEN_ALLOW_UNAUTHENTICATED": "true",
        "TRIALSCREEN_RATE_LIMIT_PER_MINUTE": "0",
        "TRIALSCREEN_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
        "TRIALSCREEN_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        **env,
    }
    log = (work / f"{port}.log").open("wb")
    return subprocess.Popen(command, cwd=_ROOT, env=environment, stdout=log, stderr=log)


async def ready(session: aiohttp.ClientSession, base: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{base}/healthz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"load_bench: {base} did not start")


_HEADERS = {"content-type": "application/fhir+json"}


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> float:
    start = time.perf_counter()
    async with session.post(url, data=body, headers=_HEADERS) as r:
        await r.read()
        if r.status != 200:
            raise SystemExit(f"load_bench: {url} answered {r.status}")
    return time.perf_counter() - start


async def load(url: str, body: bytes, clients: int, seconds: float) -> tuple[float, list[float]]:
    """(requests/s, latencies) with ``clients`` keep-alive connections posting back to back."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(2):  # warm up: connections, worker processes
            await asyncio.gather(*(post(session, url, body) for _ in range(clients)))
        stop = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < stop:
                latencies.append(await post(session, url, body))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
    return len(latencies) / wall, latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


async def single(url: str, body: bytes, repeat: int) -> float:
    async with aiohttp.ClientSession() as session:
        await post(session, url, body)
        return statistics.median([await post(session, url, body) for _ in range(repeat)])


async def healthz_under_load(
    base: str, floor_base: str, body: bytes, seconds: float, screens: int
) -> tuple[list[float], list[float]]:
    """/healthz latencies of the service and, as a control, of the floor app (idle, same
    machine: what the machine's own scheduling adds), polled every 20 ms while ``screens``
    clients post ``body`` to the service back to back."""
    url = f"{base}/fhir/ResearchStudy/{_STUDY}/$screen"
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        stop = time.monotonic() + seconds
        done = 0

        async def screener() -> None:
            nonlocal done
            while time.monotonic() < stop:
                async with session.post(url, data=body, headers=_HEADERS) as r:
                    await r.read()
                    done += r.status == 200

        async def prober(base: str) -> list[float]:
            # Its own process: this one's event loop is busy writing the large bodies, and its
            # stalls are not the service's.
            await asyncio.sleep(1.0)  # the screens are under way
            probe = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _PROBE,
                base.removeprefix("http://"),
                str(stop - time.monotonic()),
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await probe.communicate()
            latencies: list[float] = orjson.loads(out)
            return latencies

        probes = asyncio.gather(prober(base), prober(floor_base))
        await asyncio.gather(*(screener() for _ in range(screens)))
        service, control = await probes
    print(f"  ({done} large screens completed meanwhile)")
    return service, control


_PROBE = """
import http.client, json, sys, time
host, seconds = sys.argv[1], float(sys.argv[2])
stop, out = time.monotonic() + seconds, []
conn = http.client.HTTPConnection(host, timeout=30)
while time.monotonic() < stop:
    start = time.perf_counter()
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    out.append(time.perf_counter() - start)
    time.sleep(0.02)
print(json.dumps(out))
"""
"""Polls /healthz on one keep-alive connection every 20 ms; prints the latencies (JSON)."""


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


async def over_http(large: bytes, demo: bytes, huge: bytes, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="load_bench-") as tmp:
        work = Path(tmp)
        floor_port, port = _free_port(), _free_port()
        env = {} if args.workers is None else {"TRIALSCREEN_SCREEN_WORKERS": str(args.workers)}
        floor = start("bench.floor_app:app", floor_port, work, {})
        service = start("app.main:app", port, work, env)
        base, floor_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{floor_port}"
        try:
            async with aiohttp.ClientSession() as session:
                await ready(session, floor_base)
                await ready(session, base)
            screen_url = f"{base}/fhir/ResearchStudy/{_STUDY}/$screen"
            all_url = f"{base}/fhir/ResearchStudy/$screen"
            echo = f"{floor_base}/echo"
            await single(screen_url, demo, 3)  # worker processes started and warm

            f_large = await single(echo, large, args.repeat)
            p_large = await single(f"{floor_base}/parse", large, args.repeat)
            s_large = await single(all_url, large, args.repeat)
            print(
                f"6,207-resource record over HTTP, one at a time: floor app /echo "
                f"{_ms(f_large)}, /parse {_ms(p_large)}; screen (both trials) {_ms(s_large)} = "
                f"{s_large / f_large:.2f}x /echo, {s_large / p_large:.2f}x /parse, "
                f"{s_large / args.gc_off_floor:.2f}x the GC-off parse floor, "
                f"{s_large / args.in_process:.2f}x the screen in-process"
            )
            c = args.clients
            floors = {}
            for label, url in (("echo", echo), ("parse", f"{floor_base}/parse")):
                floors[label], f_lat = await load(url, demo, c, args.seconds)
                print(
                    f"431-resource patient, {c} clients, floor app /{label}: "
                    f"{floors[label]:.0f} req/s, p50 {_ms(statistics.median(f_lat))}, "
                    f"p99 {_ms(p99(f_lat))}"
                )
            for label, url in (("one trial", screen_url), ("both trials", all_url)):
                rate, lat = await load(url, demo, c, args.seconds)
                print(
                    f"431-resource patient, {c} clients, $screen {label}: {rate:.0f} req/s = "
                    f"{rate / floors['echo']:.0%} of /echo, {rate / floors['parse']:.0%} of "
                    f"/parse; p50 {_ms(statistics.median(lat))}, p99 {_ms(p99(lat))}"
                )
            if args.huge:
                print(f"/healthz while {args.huge_clients} clients screen {args.huge:,} resources:")
                lat, control = await healthz_under_load(
                    base, floor_base, huge, args.seconds * 2, args.huge_clients
                )
                for label, values in (("service", lat), ("floor app (control)", control)):
                    print(
                        f"  {label} /healthz p50 {_ms(statistics.median(values))}, "
                        f"p99 {_ms(p99(values))}, max {_ms(max(values))} ({len(values)} probes)"
                    )
        finally:
            stop_server(service)
            stop_server(floor)
            log = (work / f"{port}.log").read_text(errors="replace")
            if "Traceback" in log:
                print(f"service log (tail):\n{log[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--huge", type=int, default=50_000, help="resources; 0 skips")
    parser.add_argument("--huge-clients", type=int, default=2)
    parser.add_argument(
        "--workers", type=int, default=None, help="TRIALSCREEN_SCREEN_WORKERS for the service"
    )
    args = parser.parse_args()
    bundle = orjson.loads(gzip.decompress(_LARGE.read_bytes()))
    large = parameters(bundle)
    demo = parameters(orjson.loads(_DEMO.read_bytes()))
    huge = parameters(enlarged(bundle, args.huge)) if args.huge else b""
    entries = len(bundle["entry"])
    del bundle  # parsed dicts kept alive would slow every later collection in this process
    gc.collect()
    print(
        f"records: {entries} resources ({len(large) / 1e6:.1f} MB); demo 431 "
        f"({len(demo) / 1e6:.2f} MB); huge {args.huge} ({len(huge) / 1e6:.1f} MB); "
        f"{os.cpu_count()} CPUs; {date.today()}"
    )
    args.gc_off_floor, _, args.in_process = in_process(large, args.repeat)
    asyncio.run(over_http(large, demo, huge, args))


if __name__ == "__main__":
    main()
