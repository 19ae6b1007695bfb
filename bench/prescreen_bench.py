"""Benchmark: pre-screen synthetic populations (the demo Synthea SLE patients replicated with fresh
ids and jittered dates, ``app/population/cohort.py``) with the DuckDB engine.

For each size it prints, measured in the same run:

- the population run: wall time, CPU seconds (this process, DuckDB's threads and the worker
  processes), patients/s and resources/s per core (per CPU second), peak memory of the main
  process and of the largest worker;
- the orjson floor: ``orjson.loads`` of every line of the same NDJSON bytes (every file), one
  core, and the run's CPU cost as a ratio to it;
- a hand-written DuckDB SQL baseline evaluating four HN2301 lab criteria directly (haemoglobin,
  neutrophils, platelets, creatinine clearance inputs: the newest creatinine and weight within
  the 28-day window), one thread: what the exact engine costs over a bare query.

    .venv/bin/python -m bench.prescreen_bench                      # 1,000 and 10,000 patients
    .venv/bin/python -m bench.prescreen_bench --sizes 1000 --workers 2
    .venv/bin/python -m bench.prescreen_bench --sizes 100000 --trial NCT06801119 --trial NCT07358988

Each population run goes in a child process (``--one``), so that its peak memory is its own.
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import duckdb
import orjson

from app.catalog.loader import load_catalog
from app.core.settings import get_settings
from app.population.cohort import write_cohort
from app.population.runner import default_workers, run_population

AS_OF = date(2025, 11, 1)
_LABS = {
    "hb": ("718-7", "20509-6", "30313-1", "30350-3", "30352-9", "59260-0", "97550-8"),
    "anc": ("751-8", "753-4", "26499-4"),
    "plt": ("777-3", "778-1", "13056-7", "26515-7", "49497-1", "97995-5"),
    "creat": ("2160-0", "38483-4", "14682-9", "59826-8", "77140-2"),
    "weight": ("29463-7", "3141-9"),
}


def _cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def one(folder: Path, out: Path, workers: int, trials: list[str]) -> dict[str, float]:
    """The population run (in this process and its workers); its figures as JSON."""
    settings = get_settings()
    catalog = load_catalog(settings)
    loaded = [catalog.trials[t] for t in trials]
    cpu, wall = _cpu(), time.perf_counter()
    report = run_population(loaded, AS_OF, folder, out, workers=workers, settings=settings)
    wall = time.perf_counter() - wall
    cpu = _cpu() - cpu
    return {
        "patients": report.patients,
        "resources": report.resources,
        "lines": report.lines,
        "wall": wall,
        "cpu": cpu,
        "workers": report.workers,
        "peak_main_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_worker_mb": report.worker_peak_mb,
    }


def orjson_floor(folder: Path) -> tuple[float, int, int]:
    """CPU seconds to ``orjson.loads`` every line of every file; lines; bytes."""
    lines = size = 0
    cpu = time.process_time()
    for path in sorted(folder.glob("*.ndjson")):
        with path.open("rb") as f:
            for line in f:
                orjson.loads(line)
                lines += 1
                size += len(line)
    return time.process_time() - cpu, lines, size


def sql_baseline(folder: Path) -> tuple[float, int, dict[str, int]]:
    """Four HN2301 labs evaluated by a hand-written query, one thread: CPU seconds, patients,
    and how many pass all four (a value in the window meeting the threshold)."""
    db = duckdb.connect()
    db.execute("SET threads = 1")
    codes = {k: list(v) for k, v in _LABS.items()}
    since = date.fromordinal(AS_OF.toordinal() - 28).isoformat()
    query = f"""
        WITH obs AS (
            SELECT regexp_extract(json_extract_string(j, '$.subject.reference'),
                                  '([^/:]+)$', 1) AS patient,
                   json_extract_string(j, '$.code.coding[*].code') AS codes,
                   left(json_extract_string(j, '$.effectiveDateTime'), 10) AS day,
                   CAST(json_extract(j, '$.valueQuantity.value') AS DOUBLE) AS value,
                   json_extract_string(j, '$.valueQuantity.unit') AS unit
            FROM read_csv('{folder / "Observation.ndjson"}', columns={{'j': 'VARCHAR'}},
                          delim='\x01', quote='', escape='', header=false, auto_detect=false,
                          max_line_size=16777216, buffer_size=33554432)
            WHERE json_extract_string(j, '$.status') IN ('final', 'amended', 'corrected')
        ),
        windowed AS (
            SELECT * FROM obs WHERE day > '{since}' AND day <= '{AS_OF.isoformat()}'
        ),
        latest AS (
            SELECT patient,
                arg_max(value, day) FILTER (WHERE list_has_any(codes, ?)) AS hb,
                arg_max(value, day) FILTER (WHERE list_has_any(codes, ?)) AS anc,
                arg_max(value, day) FILTER (WHERE list_has_any(codes, ?)) AS plt,
                arg_max(value, day) FILTER (WHERE list_has_any(codes, ?)) AS creat,
                arg_max(value, day) FILTER (WHERE list_has_any(codes, ?)) AS weight
            FROM windowed GROUP BY patient
        ),
        patients AS (
            SELECT json_extract_string(j, '$.id') AS patient
            FROM read_csv('{folder / "Patient.ndjson"}', columns={{'j': 'VARCHAR'}},
                          delim='\x01', quote='', escape='', header=false, auto_detect=false,
                          max_line_size=16777216, buffer_size=33554432)
        )
        SELECT
            count(*) AS patients,
            count(*) FILTER (WHERE hb >= 8.0) AS hb_met,
            count(*) FILTER (WHERE anc >= 1.5) AS anc_met,
            count(*) FILTER (WHERE plt >= 50) AS plt_met,
            count(*) FILTER (WHERE creat IS NOT NULL AND weight IS NOT NULL) AS crcl_inputs
        FROM patients LEFT JOIN latest USING (patient)
    """
    cpu = time.process_time()
    row = db.execute(
        query, [codes["hb"], codes["anc"], codes["plt"], codes["creat"], codes["weight"]]
    ).fetchone()
    cpu = time.process_time() - cpu
    assert row is not None
    names = ("hb_met", "anc_met", "plt_met", "crcl_inputs")
    return cpu, int(row[0]), dict(zip(names, (int(x) for x in row[1:]), strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated patient counts")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--trial", action="append", help="trial(s); default NCT06801119")
    parser.add_argument("--keep", type=Path, help="keep cohorts and runs under this folder")
    parser.add_argument("--one", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    trials = args.trial or ["NCT06801119"]
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], args.workers, trials)))
        return 0
    work = args.keep or Path(tempfile.mkdtemp(prefix="prescreen-bench-"))
    print(f"trials {', '.join(trials)}, as of {AS_OF}, {args.workers} worker(s)")
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            folder = work / f"cohort-{size}"
            started = time.perf_counter()
            write_cohort(folder, size, seed=size)
            made = time.perf_counter() - started
            floor, lines, size_bytes = orjson_floor(folder)
            command = [
                sys.executable,
                "-m",
                "bench.prescreen_bench",
                "--workers",
                str(args.workers),
                "--one",
                str(folder),
                str(work / f"run-{size}"),
            ]
            for t in trials:
                command += ["--trial", t]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            run = json.loads(done.stdout.strip().splitlines()[-1])
            sql_cpu, sql_patients, sql_counts = sql_baseline(folder)
            cpu = run["cpu"]
            print(
                f"\n{size:,} patients: {lines:,} resources, {size_bytes / 1e6:,.0f} MB NDJSON "
                f"(generated in {made:.0f} s)\n"
                f"  population run   wall {run['wall']:.1f} s, CPU {cpu:.1f} s on "
                f"{run['workers']} worker(s): {run['patients'] / run['wall']:.1f} patients/s; "
                f"per core {run['patients'] / cpu:.1f} patients/s, {lines / cpu:,.0f} "
                f"resources/s ({run['resources'] / cpu:,.0f} selected resources/s)\n"
                f"  peak memory      main {run['peak_main_mb']:.0f} MB, largest worker "
                f"{run['peak_worker_mb']:.0f} MB\n"
                f"  orjson floor     {floor:.1f} CPU s ({lines / floor:,.0f} resources/s, "
                f"{size_bytes / floor / 1e6:.0f} MB/s): run = {cpu / floor:.1f}x the floor\n"
                f"  DuckDB SQL, 4 labs  {sql_cpu:.2f} CPU s, 1 thread: "
                f"{sql_patients / sql_cpu:,.0f} patients/s per core {sql_counts}; the engine "
                f"costs {cpu / sql_cpu:.0f}x"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
