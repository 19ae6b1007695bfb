"""A folder of FHIR Bulk Data output (``{Type}.ndjson``, ``{Type}.{n}.ndjson``, optionally
``.gz``) read with DuckDB and handed out one patient at a time.

DuckDB scans the files (in parallel, out of core: a database file in the run's scratch folder and
a memory limit, so a population larger than memory spills to disk), keeps per patient only what
the loaded criteria can read, and sorts by patient. Only those lines reach Python:

- files of a type no criterion reads (Encounter, Claim, ...) are not opened at all;
- in the same scan, what provably cannot change an answer is left out (``selection.py``):
  Observations ``$screen``'s reader would skip, and Conditions, Procedures and Immunizations
  that carry no code and no words any check knows and that the reader reads without fault;
  what codes do not recognise but words name is kept for the safety net, so the answer is the
  one ``$screen`` gives for the whole record. Allergies and medication uses are kept whole;
- Medication resources (no patient of their own) are joined to the uses that reference them.

A patient's lines reach the engine in file order (files in the order listed, then line order),
which is the order a Bundle of the same record would have. What cannot be read is reported with
its file and line: an invalid JSON line, a resource of no FHIR type, a resource that names no
patient. An invalid line that still names its patient is held against that patient (an unreadable
resource of the file's type: the checks that read that part cannot be decided); one that names
nobody is held against everyone. Nothing unread ever makes a patient eligible.
"""

import gzip
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from app.core.errors import InvalidInput
from app.population.patient_run import NeededData, source_of_type
from app.population.resource_types import R4_RESOURCE_TYPES
from app.population.selection import MACROS, Selection

_FILE = re.compile(r"^([A-Z][A-Za-z]+)(?:\.(\d+))?\.ndjson(?:\.gz)?$")
_PATIENT_KEY = r"(?:^|/)Patient/([^/]+)(?:/_history/[^/]*)?$"
_URN = r"^urn:uuid:(.+)$"
_REFERENCE_IN_TEXT = (
    r'"(?:subject|patient)"\s*:\s*\{[^{}]*"reference"\s*:\s*"(?:[^"]*/)?(?:Patient/|urn:uuid:)'
    r'([^"/]+)"'
)
MAX_LINE_BYTES = 16 * 1024 * 1024
"""A resource longer than this is reported, not read (DuckDB's line limit)."""
PATIENT_LEVEL = {"Observation", "Condition", "Procedure", "AllergyIntolerance", "Immunization"}
MEDICATION_USES = {"MedicationRequest", "MedicationStatement", "MedicationAdministration"}
MAX_LISTED_ERRORS = 1000
MEMORY_LIMIT = "1GB"
"""DuckDB's memory limit (it spills beyond). Scanning all eight files of 100,000 patients at once
needs more than 512 MB (OutOfMemory); at 1 GB the main process peaks at ~1.2 GB."""


@dataclass(frozen=True, slots=True)
class SourceError:
    file: str
    line: int | None
    problem: str
    patient: str | None = None

    def describe(self) -> str:
        at = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{at}: {self.problem}"


@dataclass(slots=True)
class PatientLines:
    """One patient's lines as read (raw JSON), in file order, with what could not be read."""

    patient: str
    """The Patient's id."""
    lines: list[bytes]
    unreadable: list[tuple[str | None, str]] = field(default_factory=list)
    """(record part, problem) of this patient's data that could not be read."""
    prefiltered: bool = False
    """No Condition line of theirs mentions the first criterion's diagnosis (``prefilter``)."""


@dataclass(frozen=True, slots=True)
class BulkFile:
    path: Path
    resource_type: str


def discover(folder: Path) -> tuple[list[BulkFile], list[SourceError], list[str]]:
    """The folder's Bulk Data files, the names that are not, and the types present but unread."""
    if not folder.is_dir():
        raise InvalidInput(f"{folder} is not a folder of NDJSON files.")
    files: list[BulkFile] = []
    errors: list[SourceError] = []
    for path in sorted(folder.iterdir(), key=_natural):
        if path.name.startswith(".") or not path.is_file():
            continue
        m = _FILE.match(path.name)
        if m is None:
            if path.suffix in {".ndjson", ".gz", ".jsonl"}:
                errors.append(
                    SourceError(path.name, None, "not a Bulk Data file name ({Type}.ndjson)")
                )
            continue
        if m.group(1) not in R4_RESOURCE_TYPES:
            errors.append(SourceError(path.name, None, f"{m.group(1)} is no FHIR R4 resource type"))
            continue
        files.append(BulkFile(path, m.group(1)))
    if not any(f.resource_type == "Patient" for f in files):
        raise InvalidInput(f"{folder} holds no Patient.ndjson: there is nobody to screen.")
    return files, errors, []


def patient_lines(folder: Path) -> int:
    """Lines of the folder's Patient files (a quick upper bound on the patients), 0 if none."""
    try:
        files, _, _ = discover(folder)
    except InvalidInput:
        return 0
    total = 0
    for f in files:
        if f.resource_type == "Patient":
            opener = gzip.open if f.path.suffix == ".gz" else open
            with opener(f.path, "rb") as lines:
                total += sum(1 for line in lines if line.strip())
    return total


def _natural(path: Path) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name))


class NdjsonSource:
    """The folder's patients, grouped and filtered by DuckDB; see the module docstring."""

    def __init__(
        self,
        folder: Path,
        needed: NeededData,
        *,
        memory_limit: str = MEMORY_LIMIT,
        threads: int | None = None,
        scratch: Path | None = None,
    ) -> None:
        self.folder = folder
        self.needed = needed
        files, self.errors, _ = discover(folder)
        wanted = set(needed.resource_types)
        type_order = {t: i for i, t in enumerate(needed.resource_types)}
        self.files = sorted(
            (f for f in files if f.resource_type in wanted),
            key=lambda f: type_order[f.resource_type],
        )
        self.skipped = sorted({f.resource_type for f in files if f.resource_type not in wanted})
        self._own_scratch = scratch is None
        self.scratch = Path(tempfile.mkdtemp(prefix="trialscreen-")) if scratch is None else scratch
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.db = duckdb.connect(str(self.scratch / "population.duckdb"))
        self.db.execute(f"SET memory_limit = '{memory_limit}'")
        self.db.execute(f"SET temp_directory = '{self.scratch / 'spill'}'")
        self.db.execute("SET preserve_insertion_order = false")
        # A scratch database, deleted at close: nothing to checkpoint.
        self.db.execute("PRAGMA disable_checkpoint_on_shutdown")
        if threads:
            self.db.execute(f"SET threads = {int(threads)}")
        self.patients_total = 0
        self.resources_read = 0
        self.lines_total = 0
        self.everyone: list[tuple[str | None, str]] = []
        """Unreadable data that names no patient: held against every patient."""
        self._load()

    def close(self) -> None:
        self.db.close()
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> "NdjsonSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- loading ----------------------------------------------------------------------------

    def _scan(self, index: int, f: BulkFile) -> str:
        path = str(f.path).replace("'", "''")
        return (
            f"SELECT {index} AS f, ordinality AS n, j FROM read_csv('{path}', "
            "columns={'j': 'VARCHAR'}, delim='\x01', quote='', escape='', header=false, "
            f"auto_detect=false, max_line_size={MAX_LINE_BYTES}, buffer_size={2 * MAX_LINE_BYTES}, "
            "compression='auto', "
            "strict_mode=false, null_padding=true) WITH ORDINALITY"
        )

    def _load(self) -> None:
        """One scan of every file read: the lines kept (with their patient), and the problems."""
        db = self.db
        for macro in MACROS:
            db.execute(macro)
        selection = Selection(
            tuple(sorted({c for _, c in self.needed.observation_codes})), self.needed.history
        )
        if not self.files:
            return
        scans = " UNION ALL ".join(self._scan(i, f) for i, f in enumerate(self.files))
        file_types = " ".join(
            f"WHEN {i} THEN '{f.resource_type}'" for i, f in enumerate(self.files)
        )
        db.execute(
            f"""
            CREATE OR REPLACE TABLE lines AS
            WITH raw AS ({scans}),
            typed AS (
                SELECT f, n, j, CASE f {file_types} END AS file_type, json_valid(j) AS ok
                FROM raw WHERE j IS NOT NULL AND trim(j) <> ''
            ),
            parsed AS (
                SELECT f, n, j, file_type, ok,
                    CASE WHEN ok THEN json_extract_string(j, ['$.resourceType', '$.id',
                        '$.subject.reference', '$.patient.reference']) END AS p
                FROM typed
            ),
            keyed AS (
                SELECT f, n, j, file_type, ok, p[1] AS rt, p[2] AS rid,
                    CASE
                        WHEN NOT ok THEN regexp_extract(j, '{_REFERENCE_IN_TEXT}', 1)
                        WHEN p[1] = 'Patient' THEN p[2]
                        ELSE coalesce(
                            nullif(regexp_extract(coalesce(p[3], p[4]), '{_PATIENT_KEY}', 1), ''),
                            nullif(regexp_extract(coalesce(p[3], p[4]), '{_URN}', 1), ''))
                    END AS patient
                FROM parsed
            ),
            shaped AS (
                SELECT *, {", ".join(selection.columns())} FROM keyed
            ),
            classified AS (
                SELECT f, n, j, file_type, ok, rt, rid, nullif(patient, '') AS patient,
                CASE
                    WHEN NOT ok THEN 'invalid'
                    WHEN rt IS NULL THEN 'no-type'
                    WHEN rt = 'Medication' THEN 'medication'
                    WHEN rt NOT IN ({", ".join(f"'{t}'" for t in sorted(R4_RESOURCE_TYPES))})
                        THEN 'unknown-type'
                    WHEN rt NOT IN ({", ".join(f"'{t}'" for t in self.needed.resource_types)})
                        THEN 'unread'
                    WHEN patient IS NULL OR patient = '' THEN 'no-patient'
                    {" ".join(selection.status())}
                    ELSE 'keep'
                END AS status
                FROM shaped
            )
            SELECT f, n, file_type, ok, rt, rid, patient, status,
                CASE WHEN status IN ('keep', 'medication', 'invalid', 'no-type') THEN j END AS j
            FROM classified
            """
        )
        self.lines_total = _one(db, "SELECT count(*) FROM lines")
        self._report()

    def _report(self) -> None:
        db = self.db
        names = [f.path.name for f in self.files]
        problems = {
            "invalid": "not valid JSON",
            "no-type": "a JSON object with no resourceType",
            "unknown-type": "resourceType {rt} is no FHIR R4 resource type",
            "no-patient": "{rt}/{rid} names no patient (subject or patient)",
        }
        rows = db.execute(
            """SELECT f, n, status, rt, rid, patient, file_type FROM lines
               WHERE status IN ('invalid', 'no-type', 'unknown-type', 'no-patient')
               ORDER BY f, n"""
        ).fetchall()
        for f, n, status, rt, rid, patient, file_type in rows:
            problem = problems[status].format(rt=rt, rid=rid)
            if len(self.errors) < MAX_LISTED_ERRORS:
                self.errors.append(SourceError(names[f], int(n), problem, patient))
            if status in {"invalid", "no-type"} and file_type in self.needed.resource_types:
                part = source_of_type(file_type)  # a Medication may be anyone's drug
                what = f"{names[f]} line {n}: {problem}"
                # A Patient line nobody can read is a patient not screened (reported), not a
                # part of anyone else's record.
                if patient is None and file_type != "Patient":
                    self.everyone.append((part, f"{what}; it names no patient, so it may be any"))
        self.errors.extend(SourceError(names[0] if names else "", None, m) for m in self._orphans())
        self.patients_total = _one(
            db, "SELECT count(DISTINCT patient) FROM lines WHERE rt = 'Patient' AND status = 'keep'"
        )
        self.resources_read = _one(db, "SELECT count(*) FROM lines WHERE status = 'keep'")

    def _orphans(self) -> list[str]:
        rows = self.db.execute(
            """SELECT patient, count(*) FROM lines WHERE status IN ('keep', 'left-out')
               AND patient NOT IN
               (SELECT patient FROM lines WHERE rt = 'Patient' AND status = 'keep')
               GROUP BY patient ORDER BY patient LIMIT 20"""
        ).fetchall()
        total = _one(
            self.db,
            """SELECT count(DISTINCT patient) FROM lines WHERE status IN ('keep', 'left-out')
               AND patient NOT IN
               (SELECT patient FROM lines WHERE rt = 'Patient' AND status = 'keep')""",
        )
        out = [
            f"{count} resource(s) of Patient/{p}, whom no Patient file holds: not screened"
            for p, count in rows
        ]
        if total > len(rows):
            out.append(f"... and {total - len(rows)} more patients without a Patient resource")
        dup = _one(
            self.db,
            """SELECT count(*) FROM (SELECT patient FROM lines WHERE rt = 'Patient'
               AND status = 'keep' GROUP BY patient HAVING count(*) > 1)""",
        )
        if dup:
            out.append(f"{dup} Patient id(s) appear more than once: their records are not screened")
        return out

    def unmentioned(self, needles: Sequence[str]) -> set[str]:
        """Patients none of whose Condition lines (nor unreadable lines) holds any of the
        lower-case ``needles``."""
        if not needles:
            return set()
        pattern = "|".join(re.escape(n) for n in needles)
        rows = self.db.execute(
            """SELECT patient FROM lines WHERE rt = 'Patient' AND status = 'keep'
               EXCEPT
               SELECT patient FROM lines WHERE patient IS NOT NULL
                 AND (rt = 'Condition' OR status IN ('invalid', 'no-type'))
                 AND regexp_matches(lower(j), ?)""",
            [pattern],
        ).fetchall()
        return {r[0] for r in rows}

    # -- reading ----------------------------------------------------------------------------

    def medications(self) -> dict[str, bytes]:
        """Medication resources by ``Medication/{id}``."""
        rows = self.db.execute(
            "SELECT rid, j FROM lines WHERE status = 'medication' AND rid IS NOT NULL"
        ).fetchall()
        return {f"Medication/{rid}": j.encode() for rid, j in rows}

    def patients(
        self, only: Sequence[str] | None = None, batch: int = 20_000
    ) -> Iterator[PatientLines]:
        """Each patient with a Patient resource, in id order, with their kept lines in file
        order and what of theirs could not be read."""
        medications = self.medications()
        where = "status IN ('keep', 'invalid', 'no-type') AND patient IS NOT NULL"
        params: list[Any] = []
        if only is not None:
            where += " AND patient IN (SELECT unnest(?))"
            params.append(list(only))
        names = [f.path.name for f in self.files]
        types = [f.resource_type for f in self.files]
        cursor = self.db.execute(
            f"""SELECT patient, f, n, status, rt, j FROM lines WHERE {where}
                AND patient IN (SELECT patient FROM lines WHERE rt = 'Patient' AND status = 'keep'
                                GROUP BY patient HAVING count(*) = 1)
                ORDER BY patient, f, n""",
            params,
        )
        current: PatientLines | None = None
        while rows := cursor.fetchmany(batch):
            for patient, f, n, status, _rt, j in rows:
                if current is None or current.patient != patient:
                    if current is not None:
                        yield self._finish(current, medications)
                    current = PatientLines(patient, [], list(self.everyone))
                if status == "keep":
                    current.lines.append(j.encode())
                else:
                    part = source_of_type(types[f])
                    current.unreadable.append((part, f"{names[f]} line {n}: not valid JSON"))
        if current is not None:
            yield self._finish(current, medications)

    @staticmethod
    def _finish(p: PatientLines, medications: dict[str, bytes]) -> PatientLines:
        """The Medications their uses reference, after their own lines (a Bundle's order)."""
        if medications:
            wanted: dict[str, None] = {}
            for line in p.lines:
                if b'"medicationReference"' in line:
                    for ref in re.findall(
                        rb'"reference"\s*:\s*"(?:[^"]*/)?(Medication/[^"/]+)"', line
                    ):
                        wanted[ref.decode()] = None
            p.lines += [medications[r] for r in wanted if r in medications]
        return p


def _one(db: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = db.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
