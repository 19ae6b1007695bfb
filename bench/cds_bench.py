"""Benchmark: CDS Hooks ``patient-view`` calls with full prefetch, under concurrent load.

Starts the real service (uvicorn, one process) on a free loopback port with a throwaway SQLite
database, builds the prefetch the service advertises at ``GET /cds-services`` from a
6,207-resource Synthea record (each search run locally over the record's resources), and sends
the hook with aiohttp at concurrency 1, 4 and 16. Prints the prefetch size, then p50 / p99 / max
latency and throughput per level, and whether p50 at concurrency 1 is within the 500 ms CDS Hooks
budget; then the same hook at concurrency 1 with a small record (the Patient and its conditions,
every other prefetch key null) for contrast. Under each level: the CPU milliseconds one call cost
the service process, its screening workers and this client (from /proc, Linux), which, unlike
latency, does not depend on what else the machine runs. (The screening workers run at nice 10: on
a machine shared with other busy processes they get a small share of the CPU, and latencies
grow far more than these costs.)

    .venv/bin/python -m bench.cds_bench [--requests 40] [--time-limit 300]

p99 of a few dozen samples is close to the maximum; raise ``--requests`` for a steadier tail.
"""

import argparse
import asyncio
import gzip
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

_ROOT = Path(__file__).resolve().parent.parent
_RECORD = Path(__file__).resolve().parent / "data" / "synthea-sle-large.json.gz"
_SERVICE = "trial-eligibility"
_BUDGET_MS = 500.0
"""CDS Hooks asks services to answer on the order of 500 ms."""
_LEVELS = (1, 4, 16)
_STARTUP_SECONDS = 60.0
_TEMPLATE_ID = "{{context.patientId}}"
Json = dict[str, Any]


# --- the prefetch ------------------------------------------------------------------------------


def _matches_patient(resource: Json, patient_id: str) -> bool:
    """The ``patient`` search parameter: ``subject`` or ``patient`` points at the Patient, by
    relative reference or by the record's ``urn:uuid`` full URL."""
    wanted = {f"Patient/{patient_id}", f"urn:uuid:{patient_id}"}
    for field in ("subject", "patient"):
        ref = resource.get(field)
        if isinstance(ref, dict) and ref.get("reference") in wanted:
            return True
    return False


def _matches_token(codings: list[Json], tokens: list[str]) -> bool:
    """FHIR token search over codings: ``system|code``, ``|code`` (no system) or ``code``."""
    for token in tokens:
        system, bar, code = token.rpartition("|")
        for coding in codings:
            if coding.get("code") != code:
                continue
            if not bar or coding.get("system") == (system or None):
                return True
    return False


def _matches(resource: Json, params: list[tuple[str, str]], patient_id: str) -> bool:
    for name, value in params:
        if name == "patient":
            ok = value == patient_id and _matches_patient(resource, patient_id)
        elif name == "code":
            codings = (resource.get("code") or {}).get("coding") or []
            ok = _matches_token(codings, value.split(","))
        elif name == "intent":
            ok = resource.get("intent") in value.split(",")
        else:
            raise SystemExit(f"cds_bench: cannot run prefetch search parameter {name!r} locally")
        if not ok:
            return False
    return True


def search_locally(query: str, resources: list[Json], patient_id: str) -> Json:
    """A prefetch template (``Type?name=value&...``, unencoded) run over the record: the
    searchset Bundle an EHR would answer, one page, matching resources only."""
    resource_type, _, params_text = query.replace(_TEMPLATE_ID, patient_id).partition("?")
    params = [(p.partition("=")[0], p.partition("=")[2]) for p in params_text.split("&") if p]
    found = [
        r
        for r in resources
        if r.get("resourceType") == resource_type and _matches(r, params, patient_id)
    ]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(found),
        "entry": [
            {
                "fullUrl": f"urn:uuid:{r.get('id', uuid.uuid4())}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in found
        ],
    }


def build_prefetch(templates: dict[str, str], bundle: Json) -> tuple[str, Json]:
    """(patient id, the full prefetch) for the record's one Patient."""
    resources: list[Json] = [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
    patient = next(r for r in resources if r.get("resourceType") == "Patient")
    patient_id = str(patient["id"])
    prefetch: Json = {}
    for key, query in templates.items():
        if key == "patient":
            assert query == f"Patient/{_TEMPLATE_ID}", query
            prefetch[key] = patient
        else:
            prefetch[key] = search_locally(query, resources, patient_id)
    return patient_id, prefetch


def small_prefetch(prefetch: Json) -> Json:
    """The Patient and its conditions; every other key null ("no data")."""
    return {k: v if k in {"patient", "conditions"} else None for k, v in prefetch.items()}


def resource_count(prefetch: Json) -> int:
    return sum(
        1 if v.get("resourceType") != "Bundle" else len(v.get("entry", []))
        for v in prefetch.values()
        if isinstance(v, dict)
    )


class HookBody:
    """The hook call as bytes, serialized once: each call only gets a fresh ``hookInstance``."""

    def __init__(self, patient_id: str, prefetch: Json) -> None:
        rest = orjson.dumps(
            {
                "hook": "patient-view",
                "context": {"userId": "Practitioner/bench", "patientId": patient_id},
                "prefetch": prefetch,
            }
        )
        assert rest.startswith(b"{")
        self._rest = rest[1:]

    def __call__(self) -> bytes:
        return b'{"hookInstance":"' + str(uuid.uuid4()).encode() + b'",' + self._rest


# --- the server --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_server(work: Path, port: int, log_path: Path) -> "subprocess.Popen[bytes]":
    uvicorn = Path(sys.executable).with_name("uvicorn")
    command = ([str(uvicorn)] if uvicorn.exists() else [sys.executable, "-m", "uvicorn"]) + [
        "app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    env = os.environ | {
        "TRIALSCREEN_ALLOW_UNAUTHENTICATED": "true",
        "TRIALSCREEN_DATABASE_URL": f"sqlite:///{work / 'bench.db'}",
        "TRIALSCREEN_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    with log_path.open("wb") as log:
        return subprocess.Popen(command, cwd=_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_server(process: "subprocess.Popen[bytes]") -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


async def discover(
    session: aiohttp.ClientSession, base: str, process: "subprocess.Popen[bytes]", log: Path
) -> dict[str, str]:
    """Wait (bounded) for ``GET /cds-services`` to answer 200; the service's prefetch templates."""
    deadline = time.monotonic() + _STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise SystemExit(f"cds_bench: the service exited ({process.returncode}):\n{tail}")
        try:
            async with session.get(f"{base}/cds-services") as response:
                if response.status == 200:
                    services = (await response.json())["services"]
                    service = next(s for s in services if s["id"] == _SERVICE)
                    templates: dict[str, str] = service["prefetch"]
                    return templates
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"cds_bench: the service did not answer within {_STARTUP_SECONDS:.0f} s")


# --- the load ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Level:
    concurrency: int
    latencies: list[float]
    """Seconds per completed request."""
    wall: float
    cards: int
    cut_short: bool


async def run_level(
    session: aiohttp.ClientSession,
    url: str,
    body: HookBody,
    concurrency: int,
    requests: int,
    deadline: float,
) -> Level:
    """``requests`` hook calls, ``concurrency`` in flight at a time; no new call after
    ``deadline`` (monotonic)."""
    latencies: list[float] = []
    cards: set[int] = set()
    issued = 0
    headers = {"content-type": "application/json"}

    async def one() -> None:
        data = body()
        start = time.perf_counter()
        async with session.post(url, data=data, headers=headers) as response:
            payload = await response.read()
        took = time.perf_counter() - start
        if response.status != 200:
            raise SystemExit(f"cds_bench: hook answered {response.status}: {payload[:300]!r}")
        cards.add(len(orjson.loads(payload)["cards"]))
        latencies.append(took)

    async def worker() -> None:
        nonlocal issued
        while issued < requests and time.monotonic() < deadline:
            issued += 1
            await one()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    return Level(concurrency, latencies, wall, max(cards, default=0), len(latencies) < requests)


@dataclass(frozen=True, slots=True)
class CpuTimes:
    """CPU seconds used so far by the service process, its worker processes and this client."""

    server: float
    workers: float
    client: float

    @classmethod
    def now(cls, pid: int) -> "CpuTimes | None":
        """None where /proc cannot be read (not Linux)."""
        try:
            workers = sum(_cpu_seconds(child) for child in _children(pid))
            server = _cpu_seconds(pid)
        except OSError:
            return None
        used = resource.getrusage(resource.RUSAGE_SELF)
        return cls(server, workers, used.ru_utime + used.ru_stime)

    def per_call(self, later: "CpuTimes", calls: int) -> str:
        """CPU ms per call by process between this reading and ``later``: what a call costs
        whatever else the machine runs (latencies on a shared machine do not say that)."""
        parts = (
            ("server", later.server - self.server),
            ("workers", later.workers - self.workers),
            ("client", later.client - self.client),
        )
        return "CPU per call: " + ", ".join(f"{k} {v / calls * 1e3:.1f} ms" for k, v in parts)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


def report(label: str, level: Level) -> None:
    lat = sorted(level.latencies)
    if not lat:
        print(f"{label}: no request completed within the time limit")
        return
    p50 = statistics.median(lat)
    p99 = statistics.quantiles(lat, n=100, method="inclusive")[98] if len(lat) > 1 else lat[0]
    short = " (cut short by the time limit)" if level.cut_short else ""
    print(
        f"{label}: {len(lat)} calls{short}; p50 {_ms(p50)}, p99 {_ms(p99)}, max {_ms(lat[-1])}; "
        f"{len(lat) / level.wall:.1f} calls/s; {level.cards} card(s) per answer"
    )


async def bench(requests: int, time_limit: float) -> None:
    started = time.monotonic()
    bundle: Json = orjson.loads(gzip.decompress(_RECORD.read_bytes()))
    with tempfile.TemporaryDirectory(prefix="cds_bench-") as tmp:
        work = Path(tmp)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = work / "server.log"
        process = start_server(work, port, log)
        print(f"service: uvicorn pid {process.pid} on {base}")
        try:
            timeout = aiohttp.ClientTimeout(total=120)
            connector = aiohttp.TCPConnector(limit=max(_LEVELS))
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                templates = await discover(session, base, process, log)
                patient_id, prefetch = build_prefetch(templates, bundle)
                payload = orjson.dumps(prefetch)
                print(
                    f"record: {_RECORD.name}, {len(bundle['entry'])} resources; prefetch: "
                    f"{len(templates)} keys, {resource_count(prefetch)} resources, "
                    f"{len(payload) / 1e6:.2f} MB"
                )
                for key, value in prefetch.items():
                    n = len(value.get("entry", [])) if key != "patient" else 1
                    print(f"  {key}: {n}")
                url = f"{base}/cds-services/{_SERVICE}"
                full = HookBody(patient_id, prefetch)
                deadline = started + time_limit
                await run_level(session, url, full, 1, 2, deadline)  # warm up, not counted
                levels = []
                for concurrency in _LEVELS:
                    before = CpuTimes.now(process.pid)
                    level = await run_level(session, url, full, concurrency, requests, deadline)
                    after = CpuTimes.now(process.pid)
                    report(f"full prefetch, concurrency {concurrency:>2}", level)
                    if before and after and level.latencies:
                        print("  " + before.per_call(after, len(level.latencies)))
                    levels.append(level)
                if levels[0].latencies:
                    p50 = statistics.median(levels[0].latencies) * 1e3
                    verdict = "within" if p50 <= _BUDGET_MS else "OVER"
                    print(f"p50 at concurrency 1: {p50:.0f} ms, {verdict} the 500 ms budget")
                small = small_prefetch(prefetch)
                small_body = HookBody(patient_id, small)
                print(
                    f"small record: Patient + conditions, other keys null; "
                    f"{resource_count(small)} resources, "
                    f"{len(orjson.dumps(small)) / 1e6:.3f} MB"
                )
                await run_level(session, url, small_body, 1, 2, deadline)
                before = CpuTimes.now(process.pid)
                level = await run_level(session, url, small_body, 1, requests, deadline)
                after = CpuTimes.now(process.pid)
                report("small prefetch, concurrency  1", level)
                if before and after and level.latencies:
                    print("  " + before.per_call(after, len(level.latencies)))
        finally:
            stop_server(process)
            print(f"service stopped (exit status {process.returncode}; -15 is SIGTERM)")
            logged = log.read_text(errors="replace")
            if "error" in logged.lower() or "traceback" in logged.lower():
                print(f"service log (tail):\n{logged[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="hook calls per level")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for the whole run")
    args = parser.parse_args()
    asyncio.run(bench(args.requests, args.time_limit))


if __name__ == "__main__":
    main()
