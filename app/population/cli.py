"""``trialscreen``: the command line (console script).

    trialscreen prescreen --trial NCT06801119 --as-of 2025-11-01 --ndjson demo --out runs/demo
    trialscreen prescreen --trial NCT06801119 --trial NCT07358988 --as-of 2026-03-01 \\
        --ndjson /data/bulk --out runs/r1 --workers 8
    trialscreen prescreen ... --bulk-group https://ehr.example/fhir/Group/lupus --out runs/r2
    trialscreen cohort --patients 1000 --out /tmp/cohort     # a synthetic NDJSON cohort

``--ndjson demo`` screens the bundled demo patients (written as NDJSON into the run folder's
``input/``). Exit code 0 on success, 2 on bad input (with a message saying what), 1 when the run
itself fails.
"""

import argparse
import asyncio
import importlib.util
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TextIO

from app.catalog.loader import load_catalog
from app.catalog.trial import LoadedTrial
from app.core.errors import TrialscreenError
from app.core.settings import Settings, get_settings
from app.population import bulk_export, spark_engine
from app.population.cohort import write_cohort, write_demo
from app.population.ndjson_source import MEMORY_LIMIT
from app.population.outputs import RESULTS
from app.population.patient_run import needed_data
from app.population.runner import RunReport, run_population


class BadInput(Exception):
    """What the user asked cannot be done as asked (exit code 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "prescreen":
            return _prescreen(args)
        if args.command == "cohort":
            folder = write_cohort(Path(args.out), args.patients, seed=args.seed)
            print(f"{args.patients} synthetic patients written to {folder}")
            return 0
    except BadInput as exc:
        print(f"trialscreen: {exc}", file=sys.stderr)
        return 2
    except TrialscreenError as exc:
        print(f"trialscreen: {exc.message}", file=sys.stderr)
        return 2
    parser.print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trialscreen", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("prescreen", help="pre-screen a population against trials")
    p.add_argument("--trial", action="append", required=True, help="NCT id (repeatable)")
    p.add_argument("--as-of", required=True, help="as-of date, YYYY-MM-DD")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ndjson", help="folder of Bulk Data NDJSON, or 'demo'")
    src.add_argument("--bulk-group", help="[base]/Group/{id} of the configured EHR: $export it")
    src.add_argument("--bulk-patients", help="[base] of the configured EHR: Patient/$export")
    p.add_argument("--out", required=True, help="run folder (created)")
    p.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb")
    p.add_argument("--spark-master", default="local[*]", help="with --engine spark")
    p.add_argument("--workers", type=int, default=None, help="worker processes (all cores)")
    p.add_argument(
        "--memory-limit", default=MEMORY_LIMIT, help="DuckDB memory limit (spills beyond)"
    )
    p.add_argument(
        "--prefilter",
        action="store_true",
        help="spare the full screening to patients whose Conditions alone turn them away at "
        "every trial's first criterion (no SLE at all); they get no GuidanceResponse",
    )
    c = sub.add_parser("cohort", help="write a synthetic NDJSON cohort (demo patients replicated)")
    c.add_argument("--patients", type=int, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=14)
    return parser


def _prescreen(args: argparse.Namespace) -> int:
    settings = get_settings()
    catalog = load_catalog(settings)
    trials = _trials(catalog.trials, args.trial)
    try:
        as_of = date.fromisoformat(args.as_of)
    except ValueError:
        raise BadInput(f"--as-of {args.as_of!r} is not a date (YYYY-MM-DD)") from None
    if args.workers is not None and args.workers < 1:
        raise BadInput("--workers must be at least 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} exists and is not a folder")
    if (out / "screenings.ndjson").exists():
        raise BadInput(f"--out {out} already holds a run; choose another folder")
    folder = _source(args, settings, trials, out)
    progress = ProgressBar(sys.stderr)
    if args.engine == "spark":
        if importlib.util.find_spec("pyspark") is None:
            raise BadInput("--engine spark needs pyspark: pip install -e '.[spark]' (and Java 17)")
        report = spark_engine.run_spark(
            trials,
            as_of,
            folder,
            out,
            master=args.spark_master,
            settings=settings,
            progress=progress,
        )
    else:
        report = run_population(
            trials,
            as_of,
            folder,
            out,
            workers=args.workers,
            settings=settings,
            progress=progress,
            memory_limit=args.memory_limit,
            prefilter=args.prefilter,
        )
    progress.finish()
    print(summary(report, out))
    return 0


def _trials(known: dict[str, LoadedTrial], asked: list[str]) -> list[LoadedTrial]:
    unknown = [t for t in asked if t not in known]
    if unknown:
        raise BadInput(f"unknown trial(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return [known[t] for t in dict.fromkeys(asked)]


def _source(
    args: argparse.Namespace, settings: Settings, trials: list[LoadedTrial], out: Path
) -> Path:
    if args.ndjson == "demo":
        return write_demo(out / "input")
    if args.ndjson is not None:
        folder = Path(args.ndjson)
        if not folder.is_dir():
            raise BadInput(f"--ndjson {folder} is not a folder")
        return folder
    url = args.bulk_group or args.bulk_patients
    scope = bulk_export.scope_of(settings, url)  # only under the configured EHR (InvalidInput else)
    if args.bulk_group and scope.group_id is None:
        raise BadInput(f"--bulk-group {url!r} is not [base]/Group/{{id}}")
    if args.bulk_patients and scope.group_id is not None:
        raise BadInput(f"--bulk-patients {url!r} names a Group: use --bulk-group")
    dest = out / "input"
    print(f"exporting from {settings.ehr_base_url} ...", file=sys.stderr)
    result = asyncio.run(
        bulk_export.export_to_folder(
            settings,
            group_id=scope.group_id,
            system=scope.system,
            since=None,
            types=needed_data(trials).resource_types,
            dest=dest,
            progress=lambda p: print(f"  {p.phase}: {p.message}", file=sys.stderr),
        )
    )
    if not result.complete:
        raise BadInput("the export is incomplete: " + "; ".join(result.problems))
    return dest


class ProgressBar:
    """Patients done / total, patients per second and ETA: one redrawn line on a terminal,
    plain lines (every 10 % or 10 s) otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last_line = 0.0
        self.last_done = -1

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (total - done) / rate if rate > 0 else 0.0
        line = f"{done}/{total} patients  {rate:.1f} patients/s  ETA {_clock(eta)}"
        if self.tty:
            width = 30
            filled = int(width * done / total) if total else width
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {line}")
            self.stream.flush()
        elif (
            done == total
            or now - self.last_line >= 10
            or (total and done * 10 // total != self.last_done * 10 // max(total, 1))
        ):
            self.stream.write(line + "\n")
            self.last_line = now
        self.last_done = done

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def summary(report: RunReport, out: Path) -> str:
    rows: list[tuple[str, ...]] = [("trial", *RESULTS)]
    for trial, outcomes in report.outcomes.items():
        rows.append((trial, *(str(outcomes.get(r, 0)) for r in RESULTS)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
    rate = report.patients / report.seconds if report.seconds else 0.0
    lines = [
        table,
        "",
        f"{report.patients} patients, {report.resources} resources read "
        f"({report.lines} lines) in {report.seconds:.1f} s with {report.workers} worker(s): "
        f"{rate:.1f} patients/s",
    ]
    if report.prefiltered:
        lines.append(f"{report.prefiltered} patient(s) turned away by the prefilter")
    if report.skipped_types:
        lines.append(f"not read (no criterion reads them): {', '.join(report.skipped_types)}")
    if report.errors:
        lines.append(f"{len(report.errors)} problem(s) in the input (see errors.json), e.g.:")
        lines += [f"  {e.describe()}" for e in report.errors[:5]]
    lines.append(f"outputs in {out}: candidates.csv, funnel.json, screenings.ndjson, Group-*.json")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
