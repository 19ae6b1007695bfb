"""Every GuidanceResponse the service gives for a fixed set of records, as one stored snapshot:
each golden case, each demo patient and the large Synthea record, against every trial, with the
record's evidence summaries. tests/test_screen_snapshot.py compares a fresh screening with it, so a
change made only for speed cannot move an answer, reason, evidence reference or review item.

Regenerate (only when an answer is meant to change, and say why in the commit):
    .venv/bin/python -m tests.screen_snapshot
"""

import gzip
import hashlib
import itertools
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from app.catalog.loader import Catalog, load_catalog
from app.core.settings import Settings
from app.demo import DEMO_PATIENTS
from app.engine import evaluate
from app.fhir_io.bundle_reader import read_bundle
from app.fhir_io.report import guidance_response
from tests import fhir_builders
from tests.golden_cases import load_cases

SNAPSHOT = Path(__file__).resolve().parent / "fixtures" / "screen_snapshot.json.gz"
_LARGE = Path(__file__).resolve().parent.parent / "bench" / "data" / "synthea-sle-large.json.gz"
_AS_OF = (date(2023, 4, 1), date(2025, 11, 1))
_ISSUED = datetime(2026, 1, 1, tzinfo=UTC)


def _records() -> list[tuple[str, dict[str, Any], tuple[date, ...]]]:
    counter = fhir_builders._ids
    fhir_builders._ids = itertools.count(1)  # resource ids independent of what was built before
    try:
        out: list[tuple[str, dict[str, Any], tuple[date, ...]]] = [
            (f"golden {c.trial}: {c.name}", c.bundle, (c.as_of,)) for c in load_cases()
        ]
    finally:
        fhir_builders._ids = counter
    for path in sorted(DEMO_PATIENTS.glob("*.json")):
        out.append((f"demo {path.stem}", orjson.loads(path.read_bytes()), _AS_OF))
    out.append(("synthea-sle-large", orjson.loads(gzip.decompress(_LARGE.read_bytes())), _AS_OF))
    return out


def screens(catalog: Catalog, settings: Settings) -> dict[str, Any]:
    """Name -> GuidanceResponse for every record, as-of date and trial."""
    out: dict[str, Any] = {}
    for name, bundle, dates in _records():
        record = read_bundle(bundle)
        for as_of, trial in itertools.product(dates, catalog.trials.values()):
            out[f"{name} | {trial.id} | {as_of}"] = guidance_response(
                evaluate(trial, record, as_of),
                response_id="snapshot",
                canonical_base=settings.canonical_base,
                issued=_ISSUED,
                warnings=tuple(f"Not read: {u.describe()}" for u in record.unreadable),
                evidence_base="https://ehr.example/fhir",
                record=record,
            )
    return out


def digest(guidance: Any) -> str:
    return hashlib.sha256(orjson.dumps(guidance, option=orjson.OPT_SORT_KEYS)).hexdigest()


def kept(taken: dict[str, Any]) -> dict[str, Any]:
    """What is stored: the real records' responses whole (a failure shows the difference), the
    golden cases' (about 1,600, tens of MB whole) as SHA-256 digests of their canonical JSON."""
    return {k: digest(v) if k.startswith("golden ") else v for k, v in taken.items()}


def stored() -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(gzip.decompress(SNAPSHOT.read_bytes()))
    return loaded


if __name__ == "__main__":
    settings = Settings(allow_unauthenticated=True)
    taken = kept(screens(load_catalog(settings), settings))
    SNAPSHOT.write_bytes(gzip.compress(orjson.dumps(taken, option=orjson.OPT_SORT_KEYS), mtime=0))
    print(f"{len(taken)} screenings -> {SNAPSHOT}")
