"""The population run on Apache Spark (pyspark): for populations beyond one machine, or to use a
cluster the hospital already has. ``local[*]`` by default; any master URL otherwise.

Spark reads the folder of Bulk Data NDJSON (``{Type}.ndjson``, ``{Type}.{n}.ndjson``, ``.gz``
too), classifies every line on the executors (the same rules as the DuckDB engine, see below),
groups lines by patient, and screens each patient with the same pure
:func:`app.population.patient_run.screen_patient` the DuckDB engine and ``$screen`` use. Results
cross back to the driver as JSON, one patient at a time (``toLocalIterator``: the driver holds one
partition, not the population).

What a line becomes:

- files of a type no loaded criterion reads are not opened; a file name that is not a Bulk Data
  name, or names no FHIR R4 type, is reported;
- an Observation is kept when one of its codes (or a component's) is one the criteria read, or
  when it carries no code (an unreadable one may bear on anything); every other needed type is kept
  whole (the text safety net of issue 10 needs uncoded Conditions, Procedures and allergies);
- Medication resources (no patient of their own) go to the patients whose medication uses
  reference them, after the patient's own lines (a Bundle's order);
- a line that is not valid JSON, or a JSON value with no ``resourceType``, is reported with its
  file and line; when its text still names a patient it is held against that patient as an
  unreadable part of the record (the checks that read that part cannot be decided); when it names
  nobody it is held against every patient (a Patient line nobody can read is a patient not
  screened, reported, and no doubt on anyone else's record);
- a resource of no FHIR type, or one that names no patient (``subject``/``patient``), is
  reported and not read; so are patients with resources but no Patient resource, and Patient ids
  that appear twice. Nothing unread ever makes a patient eligible.
"""

import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import SecretStr

from app.catalog.trial import LoadedTrial
from app.core.settings import Settings, get_settings
from app.fhir_io.bundle_reader import beyond_criteria
from app.population.ndjson_source import BulkFile, SourceError, discover
from app.population.outputs import OutputWriter
from app.population.patient_run import (
    NeededData,
    PatientResult,
    needed_data,
    screen_patient,
    source_of_type,
)
from app.population.resource_types import R4_RESOURCE_TYPES
from app.population.runner import BATCH, Cancelled, Progress, RunReport

if TYPE_CHECKING:  # pyspark is an optional dependency (the ``spark`` extra)
    from pyspark.sql import SparkSession

Json = dict[str, Any]
_PATIENT_KEY = re.compile(r"(?:^|/)Patient/([^/]+)(?:/_history/[^/]*)?$")
_URN = re.compile(r"^urn:uuid:(.+)$")
_REFERENCE_IN_TEXT = re.compile(
    r'"(?:subject|patient)"\s*:\s*\{[^{}]*"reference"\s*:\s*"(?:[^"]*/)?(?:Patient/|urn:uuid:)'
    r'([^"/]+)"'
)
_MEDICATION_REFERENCE = re.compile(rb'"reference"\s*:\s*"(?:[^"]*/)?(Medication/[^"/]+)"')
MAX_LISTED_ERRORS = 1000
MAX_LISTED_ORPHANS = 20
APP_ROOT = Path(__file__).resolve().parents[2]
"""The folder holding the ``app`` package: put first on the Python workers' path, so that they
screen with this code and not another installed copy."""


@dataclass
class SparkRun:
    """A run on Spark: ``results`` yields each screened patient's results (per trial), in
    patient id order; the counts and ``errors`` are known before the first result."""

    results: Iterator[PatientResult]
    errors: list[SourceError] = field(default_factory=list)
    errors_total: int = 0
    patients_total: int = 0
    """Patients who will be screened (one Patient resource each)."""
    resources_read: int = 0
    """Lines kept for the engine (Patients included; those of unscreened patients too)."""
    lines_total: int = 0
    """Non-blank lines in the files read."""
    skipped_types: list[str] = field(default_factory=list)
    cores: int = 0
    """The Spark cluster's default parallelism."""


def discover_needed(
    folder: Path, needed: NeededData
) -> tuple[list[BulkFile], list[SourceError], list[str]]:
    """The folder's Bulk Data files of needed types (in the needed order, then by name, as the
    DuckDB engine reads them), the names that are not Bulk Data files, and the types present
    that no criterion reads."""
    files, errors, _ = discover(folder)
    order = {t: i for i, t in enumerate(needed.resource_types)}
    read = [f for f in files if f.resource_type in order]
    read.sort(key=lambda f: order[f.resource_type])
    skipped = sorted({f.resource_type for f in files if f.resource_type not in order})
    return read, errors, skipped


# --- one line ----------------------------------------------------------------------------------

# What classify() gives for a line: (kind, key, payload)
KEEP = "keep"  # key: patient id; payload: (file, line, raw bytes, is a Patient)
BAD = "bad"  # key: patient id or None; payload: (file, line, record part, problem)
ERROR = "error"  # key: None; payload: (file, line, problem, patient)
MEDICATION = "medication"  # key: Medication/{id}; payload: raw bytes
Classified = tuple[str, Any, Any]


@dataclass(frozen=True, slots=True)
class LineRules:
    """What the classifier needs to know, shipped to the executors."""

    names: tuple[str, ...]
    """File names by file index."""
    types: tuple[str, ...]
    """Resource type by file index (from the file name)."""
    needed_types: frozenset[str]
    wanted_codes: frozenset[tuple[str, str]]
    """(system, code) of every Observation a criterion reads."""


def classify(rules: LineRules, f: int, n: int, text: str) -> list[Classified]:
    """One NDJSON line (file index ``f``, 1-based line ``n``)."""
    if not text.strip():
        return []
    name, file_type = rules.names[f], rules.types[f]
    raw = text.encode()
    try:
        resource = orjson.loads(raw)
    except orjson.JSONDecodeError:
        found = _REFERENCE_IN_TEXT.search(text)
        return _unreadable(rules, f, n, "not valid JSON", found.group(1) if found else None)
    rt = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(rt, str):
        patient = _patient_of(resource) if isinstance(resource, dict) else None
        return _unreadable(rules, f, n, "a JSON object with no resourceType", patient)
    rid = resource.get("id")
    if rt == "Medication":
        return [(MEDICATION, f"Medication/{rid}", raw)] if isinstance(rid, str) else []
    if rt not in R4_RESOURCE_TYPES:
        return [(ERROR, None, (f, n, f"resourceType {rt} is no FHIR R4 resource type", None))]
    if rt not in rules.needed_types:
        return []
    patient = rid if rt == "Patient" else _patient_of(resource)
    if not isinstance(patient, str) or not patient:
        return [(ERROR, None, (f, n, f"{rt}/{rid} names no patient (subject or patient)", None))]
    if rt == "Observation" and beyond_criteria(resource, rules.wanted_codes):
        return []
    del name, file_type
    return [(KEEP, patient, (f, n, raw, rt == "Patient"))]


def _unreadable(
    rules: LineRules, f: int, n: int, problem: str, patient: str | None
) -> list[Classified]:
    file_type = rules.types[f]
    part = source_of_type(file_type)  # a Medication may be anyone's drug
    what = f"{rules.names[f]} line {n}: {problem}"
    error: Classified = (ERROR, None, (f, n, problem, patient))
    if patient is None:
        if file_type == "Patient":
            # A Patient line nobody can read is a patient not screened (reported), not a part
            # of anyone else's record.
            return [error]
        what += "; it names no patient, so it may be any"
    return [error, (BAD, patient, (f, n, part, what))]


def _patient_of(resource: Json) -> str | None:
    """The patient a resource is about: ``subject``, else ``patient`` (``Patient/{id}``,
    absolute or versioned, or ``urn:uuid:{id}``)."""
    reference = None
    for name in ("subject", "patient"):
        value = resource.get(name)
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            reference = value["reference"]
            break
    if reference is None:
        return None
    m = _PATIENT_KEY.search(reference) or _URN.match(reference)
    return m.group(1) if m else None


# --- one patient -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScreenJob:
    """What screening a patient needs, shipped once to the executors (a broadcast)."""

    trials: tuple[LoadedTrial, ...]
    as_of: date
    settings: Settings
    now: datetime
    everyone: tuple[tuple[str | None, str], ...]
    medications: dict[str, bytes]


def screen_group(
    job: ScreenJob, patient: str, items: Iterable[tuple[str, tuple[Any, ...]]]
) -> list[bytes]:
    """One patient's classified lines screened: each result as JSON, or nothing when the
    patient has no Patient resource or more than one (reported by the run, never screened)."""
    kept: list[tuple[int, int, bytes]] = []
    bad: list[tuple[int, int, str | None, str]] = []
    patients = 0
    for kind, payload in items:
        if kind == KEEP:
            f, n, raw, is_patient = payload
            kept.append((f, n, raw))
            patients += bool(is_patient)
        else:
            bad.append(payload)
    if patients != 1:
        return []
    kept.sort(key=lambda k: (k[0], k[1]))
    lines = [raw for _, _, raw in kept]
    if job.medications:
        wanted: dict[str, None] = {}
        for line in lines:
            if b'"medicationReference"' in line:
                for ref in _MEDICATION_REFERENCE.findall(line):
                    wanted[ref.decode()] = None
        lines += [job.medications[r] for r in wanted if r in job.medications]
    bad.sort(key=lambda b: (b[0], b[1]))
    unreadable = list(job.everyone) + [(part, what) for _, _, part, what in bad]
    results = screen_patient(
        job.trials,
        [orjson.loads(line) for line in lines],
        job.as_of,
        unreadable=unreadable,
        settings=job.settings,
        now=job.now,
    )
    del patient
    return [_to_json(r) for r in results]


def _to_json(result: PatientResult) -> bytes:
    return orjson.dumps(
        {
            "trial": result.trial,
            "patient": result.patient,
            "guidance": result.guidance,
            "result": result.result,
            "criteria": result.criteria,
            "data_requests": result.data_requests,
            "review": result.review,
            "problems": result.problems,
        }
    )


def from_json(raw: bytes) -> PatientResult:
    d = orjson.loads(raw)
    return PatientResult(
        trial=d["trial"],
        patient=d["patient"],
        guidance=d["guidance"],
        result=d["result"],
        criteria=d["criteria"],
        data_requests=[(a, b, c) for a, b, c in d["data_requests"]],
        review=d["review"],
        problems=tuple(d["problems"]),
    )


# --- the run -----------------------------------------------------------------------------------


def spark_session(
    master: str = "local[*]", app_name: str = "trialscreen-prescreen"
) -> "SparkSession":
    """A Spark session whose Python workers run this interpreter with this code first on their
    path. Local mode needs no cluster, only Java 17."""
    from pyspark.sql import SparkSession

    # The RDD API starts its workers with $PYSPARK_PYTHON (default: python3 on PATH, which may be
    # another interpreter without this environment's packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    path = os.environ.get("PYTHONPATH", "")
    if str(APP_ROOT) not in path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(APP_ROOT), path) if p)
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.pyspark.python", os.environ["PYSPARK_PYTHON"])
        .config("spark.executorEnv.PYTHONPATH", os.environ["PYTHONPATH"])
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
    )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_results(
    trials: Sequence[LoadedTrial],
    as_of: date,
    ndjson_dir: Path,
    master: str = "local[*]",
    *,
    spark: "SparkSession | None" = None,
    settings: Settings | None = None,
    now: datetime | None = None,
    partitions: int | None = None,
) -> SparkRun:
    """Screen every patient of ``ndjson_dir`` against ``trials`` on Spark.

    ``spark``: a session to use (kept open; else the process's active one); without either one
    is started on ``master`` and stopped
    when ``results`` is exhausted or closed (do one or the other: that also drops the cached
    lines). ``now``: the reports' issue time (one for the run). On a cluster the executors need
    this package installed (their Python workers import it); in local mode they run this
    interpreter with this checkout first on their path (``spark_session``). No secret of the
    settings leaves the driver (``without_secrets``).
    """
    from pyspark import StorageLevel

    needed = needed_data(trials)
    files, errors, skipped = discover_needed(ndjson_dir, needed)
    if spark is None:
        from pyspark.sql import SparkSession

        # A session already running in this process is used, and left running (its master
        # wins over ``master``: a process has one Spark context).
        spark = SparkSession.getActiveSession()
    own = spark is None
    session = spark_session(master) if spark is None else spark
    sc = session.sparkContext
    rules = LineRules(
        names=tuple(f.path.name for f in files),
        types=tuple(f.resource_type for f in files),
        needed_types=frozenset(needed.resource_types),
        wanted_codes=frozenset(needed.observation_codes),
    )
    try:
        rules_bc = sc.broadcast(rules)
        texts = [
            sc.textFile(str(f.path), minPartitions=1).zipWithIndex().map(_numbered(i))
            for i, f in enumerate(files)
        ]
        lines = sc.union(texts) if texts else sc.emptyRDD()
        nonblank = sc.accumulator(0)

        def classify_line(r: tuple[int, int, str]) -> list[Classified]:
            if r[2].strip():
                nonblank.add(1)
            return classify(rules_bc.value, r[0], r[1], r[2])

        classified = lines.flatMap(classify_line).persist(StorageLevel.MEMORY_AND_DISK)
        # The small things first, one pass each: reported problems, Medications, what names
        # nobody; then who has exactly one Patient resource.
        side = _merge_side(classified.mapPartitions(_side).collect())
        lines_total = int(nonblank.value)  # every partition was classified once (persisted)
        errors_total = len(errors) + side.errors_total
        errors += [
            SourceError(rules.names[f], int(n), problem, patient)
            for f, n, problem, patient in side.errors[: MAX_LISTED_ERRORS - len(errors)]
        ]
        everyone = [(part, what) for _, _, part, what in side.everyone]
        per_patient = classified.filter(
            lambda c: (c[0] == KEEP or c[0] == BAD) and c[1] is not None
        ).map(lambda c: (c[1], (c[0], c[2])))
        tally = _merge_tally(
            per_patient.filter(lambda kv: kv[1][0] == KEEP)
            .map(lambda kv: (kv[0], (1, int(kv[1][1][3]))))
            .reduceByKey(lambda a, b: (a[0] + b[0], a[1] + b[1]))
            .mapPartitions(_tally)
            .collect()
        )
        first = files[0].path.name if files else ""
        errors += [
            SourceError(
                first,
                None,
                f"{resources} resource(s) of Patient/{patient}, whom no Patient file holds: "
                "not screened",
            )
            for patient, resources in tally.orphans
        ]
        if tally.orphans_total > len(tally.orphans):
            more = tally.orphans_total - len(tally.orphans)
            errors.append(
                SourceError(first, None, f"... and {more} more patients without a Patient resource")
            )
        if tally.duplicates:
            errors.append(
                SourceError(
                    first,
                    None,
                    f"{tally.duplicates} Patient id(s) appear more than once: their records are "
                    "not screened",
                )
            )
        errors_total += tally.orphans_total + min(tally.duplicates, 1)
        patients_total, resources_read = tally.screened, tally.resources
        job = sc.broadcast(
            ScreenJob(
                trials=tuple(trials),
                as_of=as_of,
                settings=without_secrets(settings or get_settings()),
                now=now or datetime.now(UTC),
                everyone=tuple(everyone),
                medications=side.medications,
            )
        )
        # One shuffle: sorted by patient (range-partitioned), so that each patient's lines are
        # together in one partition and patients come back in id order.
        ordered: Any = per_patient.sortByKey(
            numPartitions=partitions or _partitions(sc, patients_total)
        )
        results = ordered.mapPartitions(lambda rows: _screen_sorted(job.value, rows))
        results_iter = results.toLocalIterator()
    except BaseException:
        if own:
            session.stop()
        raise

    def cleanup() -> None:
        classified.unpersist()
        if own:
            session.stop()

    return SparkRun(
        results=_decoded(results_iter, cleanup),
        errors=errors,
        errors_total=errors_total,
        patients_total=patients_total,
        resources_read=resources_read,
        lines_total=lines_total,
        skipped_types=skipped,
        cores=int(sc.defaultParallelism),
    )


@dataclass
class _Side:
    errors_total: int = 0
    errors: list[tuple[int, int, str, str | None]] = field(default_factory=list)
    medications: dict[str, bytes] = field(default_factory=dict)
    everyone: list[tuple[int, int, str | None, str]] = field(default_factory=list)


def _side(rows: Iterable[Classified]) -> Iterator[_Side]:
    """One partition's reported problems (the first few), Medications and lines naming nobody."""
    side = _Side()
    for kind, key, payload in rows:
        if kind == ERROR:
            side.errors_total += 1
            if len(side.errors) < MAX_LISTED_ERRORS:
                side.errors.append(payload)
        elif kind == MEDICATION:
            side.medications[key] = payload
        elif kind == BAD and key is None and len(side.everyone) < MAX_LISTED_ERRORS:
            side.everyone.append(payload)
    yield side


def _merge_side(parts: list[_Side]) -> _Side:
    out = _Side()
    for part in parts:
        out.errors_total += part.errors_total
        out.errors += part.errors
        out.medications.update(part.medications)
        out.everyone += part.everyone
    out.errors.sort(key=lambda e: (e[0], e[1]))
    out.everyone = sorted(out.everyone, key=lambda e: (e[0], e[1]))[:MAX_LISTED_ERRORS]
    return out


@dataclass
class _Tally:
    screened: int = 0
    resources: int = 0
    orphans_total: int = 0
    orphans: list[tuple[str, int]] = field(default_factory=list)
    duplicates: int = 0


def _tally(rows: Iterable[tuple[str, tuple[int, int]]]) -> Iterator[_Tally]:
    """(patient, (resources kept, Patient resources)) -> who will be screened, who not."""
    tally = _Tally()
    for patient, (resources, patients) in rows:
        tally.resources += resources  # kept lines, as the DuckDB engine counts them
        if patients == 1:
            tally.screened += 1
        elif patients == 0:
            tally.orphans_total += 1
            tally.orphans.append((patient, resources))
            tally.orphans = sorted(tally.orphans)[:MAX_LISTED_ORPHANS]
        else:
            tally.duplicates += 1
    yield tally


def _merge_tally(parts: list[_Tally]) -> _Tally:
    out = _Tally()
    for part in parts:
        out.screened += part.screened
        out.resources += part.resources
        out.orphans_total += part.orphans_total
        out.orphans += part.orphans
        out.duplicates += part.duplicates
    out.orphans = sorted(out.orphans)[:MAX_LISTED_ORPHANS]
    return out


def _screen_sorted(job: ScreenJob, rows: Iterable[tuple[str, Any]]) -> Iterator[bytes]:
    """A partition of (patient, item) sorted by patient: each patient screened once."""
    for patient, items in itertools.groupby(rows, key=lambda kv: kv[0]):
        yield from screen_group(job, patient, (item for _, item in items))


def _numbered(f: int) -> Callable[[tuple[str, int]], tuple[int, int, str]]:
    """(text, 0-based index) -> (file index, 1-based line number, text)."""

    def number(pair: tuple[str, int]) -> tuple[int, int, str]:
        return f, pair[1] + 1, pair[0]

    return number


def run_spark(
    trials: Sequence[LoadedTrial],
    as_of: date,
    folder: Path,
    out: Path,
    *,
    master: str = "local[*]",
    spark: "SparkSession | None" = None,
    settings: Settings | None = None,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
    run_id: str = "run",
) -> RunReport:
    """``runner.run_population`` on Spark: the same outputs, written by the same writer, and
    the same report (``workers`` = the Spark cores)."""
    settings = settings or get_settings()
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    writer = OutputWriter(out, trials, as_of, settings.canonical_base, run_id)
    run = spark_results(
        trials, as_of, folder, master, spark=spark, settings=settings, now=datetime.now(UTC)
    )
    total, done, per_patient = run.patients_total, 0, max(1, len(trials))
    if progress:
        progress(0, total)
    results = run.results
    try:
        for n, result in enumerate(results, start=1):
            if cancelled is not None and cancelled():
                raise Cancelled(run_id)
            writer.add(result)
            if n % per_patient == 0:
                done += 1
                if progress and (done % BATCH == 0 or done == total):
                    progress(done, total)
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()  # stops a session spark_results started
    funnel = writer.close()
    errors = tuple(run.errors)
    (out / "errors.json").write_bytes(
        orjson.dumps(
            [
                {"file": e.file, "line": e.line, "problem": e.problem, "patient": e.patient}
                for e in errors
            ],
            option=orjson.OPT_INDENT_2,
        )
    )
    return RunReport(
        patients=done,
        patients_total=total,
        resources=run.resources_read,
        lines=run.lines_total,
        errors=errors,
        skipped_types=tuple(run.skipped_types),
        funnel=funnel,
        seconds=time.monotonic() - started,
        workers=run.cores,
        outcomes={f["trial"]: dict(f["outcomes"]) for f in funnel},
    )


def without_secrets(settings: Settings) -> Settings:
    """The settings shipped to the executors (possibly other machines): every secret (the EHR
    token, the SMART private key) left out. Screening reads none of them."""
    secrets = {
        name: None
        for name in type(settings).model_fields
        if isinstance(getattr(settings, name), SecretStr)
    }
    return settings.model_copy(update=secrets)


def _partitions(sc: Any, patients: int) -> int:
    """Every core busy, and about 500 patients a partition: the driver holds one partition's
    results at a time (``toLocalIterator``), so memory stays flat as the population grows."""
    return max(int(sc.defaultParallelism), patients // 500 + 1)


def _decoded(raw: Iterator[bytes], cleanup: Callable[[], None]) -> Iterator[PatientResult]:
    try:
        for item in raw:
            yield from_json(item)
    finally:
        cleanup()
