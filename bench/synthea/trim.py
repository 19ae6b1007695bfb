#!/usr/bin/env python3
"""Turn a raw Synthea cohort into the benchmark input and the test fixtures.

Reads the per-patient FHIR Bundles that Synthea writes (``<output>/fhir/*.json``) and writes:

* the SLE patient (SNOMED CT 200936003 Condition) with the largest record, every entry kept, as
  one gzip-compressed ``collection`` Bundle (the benchmark input);
* up to ``--fixture-count`` SLE patients trimmed to the resources eligibility screening reads
  (Observations limited to the two years before the reference date), one pretty-printed
  ``collection`` Bundle per patient named ``<patient-id>.json``, smallest first, while their
  total stays within ``--fixture-budget`` bytes.

Standard library only; see generate.sh for how it is run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Resource = dict[str, Any]
Entry = dict[str, Any]
Bundle = dict[str, Any]

SNOMED = "http://snomed.info/sct"
SLE_CODE = "200936003"

#: Resource types kept in the fixtures (Observations are further limited by date).
FIXTURE_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationAdministration",
        "Medication",
        "Immunization",
        "Procedure",
        "AllergyIntolerance",
        "Observation",
    }
)
OBSERVATION_WINDOW_YEARS = 2
DEFAULT_FIXTURE_COUNT = 6
DEFAULT_FIXTURE_BUDGET = 3_000_000


@dataclass(frozen=True)
class PatientRecord:
    """One Synthea patient file and what the selection needs to know about it."""

    path: Path
    patient_id: str
    entry_count: int
    byte_size: int
    has_sle: bool
    fixture: Bundle

    @property
    def fixture_text(self) -> str:
        return dump_pretty(self.fixture)


# --------------------------------------------------------------------------- reading


def patient_files(input_dir: Path) -> list[Path]:
    """The Synthea per-patient Bundles under ``input_dir`` (or its ``fhir/`` folder)."""
    fhir_dir = input_dir / "fhir"
    folder = fhir_dir if fhir_dir.is_dir() else input_dir
    return sorted(folder.glob("*.json"))


def load_bundle(path: Path) -> Bundle:
    with path.open(encoding="utf-8") as handle:
        bundle: Bundle = json.load(handle)
    if bundle.get("resourceType") != "Bundle":
        raise ValueError(f"{path}: not a FHIR Bundle")
    return bundle


def resources(bundle: Bundle) -> Iterator[Resource]:
    for entry in bundle.get("entry", []):
        resource = entry.get("resource")
        if isinstance(resource, dict):
            yield resource


def find_patient(bundle: Bundle) -> Resource | None:
    return next((r for r in resources(bundle) if r.get("resourceType") == "Patient"), None)


def has_coding(concept: Any, system: str, code: str) -> bool:
    if not isinstance(concept, dict):
        return False
    return any(
        c.get("system") == system and c.get("code") == code for c in concept.get("coding", [])
    )


def has_sle(bundle: Bundle) -> bool:
    return any(
        r.get("resourceType") == "Condition" and has_coding(r.get("code"), SNOMED, SLE_CODE)
        for r in resources(bundle)
    )


# --------------------------------------------------------------------------- dates


def parse_reference_date(text: str) -> dt.date:
    """``YYYYMMDD`` (as given to Synthea's ``-r``) or ISO ``YYYY-MM-DD``."""
    text = text.strip()
    if len(text) == 8 and text.isdigit():
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    return dt.date.fromisoformat(text)


def years_before(day: dt.date, years: int) -> dt.date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def fhir_date(value: Any) -> dt.date | None:
    """The calendar date of a FHIR date/dateTime/instant (partial dates to their first day)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    parts = value[:10].split("-")
    try:
        year = int(parts[0])
        month = int(parts[1]) if len(parts) > 1 else 1
        day = int(parts[2]) if len(parts) > 2 else 1
        return dt.date(year, month, day)
    except ValueError:
        return None


def observation_date(observation: Resource) -> dt.date | None:
    period = observation.get("effectivePeriod")
    candidates = (
        observation.get("effectiveDateTime"),
        observation.get("effectiveInstant"),
        period.get("start") if isinstance(period, dict) else None,
        observation.get("issued"),
    )
    return next((d for d in map(fhir_date, candidates) if d is not None), None)


# --------------------------------------------------------------------------- bundles


def as_collection(entries: Iterable[Entry]) -> Bundle:
    """A ``collection`` Bundle of the entries' ``fullUrl`` and ``resource`` (no ``request``)."""
    out: list[Entry] = []
    for entry in entries:
        kept: Entry = {}
        if "fullUrl" in entry:
            kept["fullUrl"] = entry["fullUrl"]
        kept["resource"] = entry["resource"]
        out.append(kept)
    return {"resourceType": "Bundle", "type": "collection", "entry": out}


def reference_keys(entry: Entry) -> Iterator[str]:
    """The strings by which other resources in the Bundle may refer to this entry."""
    if "fullUrl" in entry:
        yield entry["fullUrl"]
    resource = entry["resource"]
    if "id" in resource:
        yield f"{resource['resourceType']}/{resource['id']}"


def is_reference_to(value: Any, targets: frozenset[str]) -> bool:
    return isinstance(value, dict) and value.get("reference") in targets


def without_references(resource: Resource, targets: frozenset[str]) -> Resource:
    """A copy of ``resource`` without its top-level references to ``targets``.

    Only top-level Reference fields (``encounter``, ``context``) and lists of References
    (``reasonReference``) are touched; a list left empty is removed. Nested references are
    left as they are.
    """
    out: Resource = {}
    for key, value in resource.items():
        if is_reference_to(value, targets):
            continue
        if isinstance(value, list) and any(is_reference_to(v, targets) for v in value):
            value = [v for v in value if not is_reference_to(v, targets)]
            if not value:
                continue
        out[key] = value
    return out


def keep_in_fixture(resource: Resource, window: tuple[dt.date, dt.date]) -> bool:
    resource_type = resource.get("resourceType")
    if resource_type not in FIXTURE_TYPES:
        return False
    if resource_type != "Observation":
        return True
    when = observation_date(resource)
    return when is not None and window[0] <= when <= window[1]


def trim_bundle(bundle: Bundle, window: tuple[dt.date, dt.date]) -> Bundle:
    """The fixture form of a patient Bundle (see the module docstring)."""
    kept: list[Entry] = []
    dropped: set[str] = set()
    for entry in bundle.get("entry", []):
        if "resource" not in entry:
            continue
        if keep_in_fixture(entry["resource"], window):
            kept.append(entry)
        else:
            dropped.update(reference_keys(entry))
    targets = frozenset(dropped)
    cleaned = (
        {**entry, "resource": without_references(entry["resource"], targets)} for entry in kept
    )
    return as_collection(cleaned)


def resource_counts(bundle: Bundle) -> Counter[str]:
    return Counter(str(r.get("resourceType")) for r in resources(bundle))


def dump_pretty(bundle: Bundle) -> str:
    return json.dumps(bundle, indent=1, ensure_ascii=False) + "\n"


def write_gzip_json(bundle: Bundle, path: Path) -> None:
    """Compact JSON, gzip with a fixed header so that re-runs give identical bytes."""
    data = json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with (
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as handle,
    ):
        handle.write(data)
    tmp.replace(path)


# --------------------------------------------------------------------------- selection


def scan(paths: Sequence[Path], window: tuple[dt.date, dt.date]) -> list[PatientRecord]:
    records: list[PatientRecord] = []
    for path in paths:
        bundle = load_bundle(path)
        patient = find_patient(bundle)
        if patient is None:  # hospital/practitioner information files
            continue
        sle = has_sle(bundle)
        records.append(
            PatientRecord(
                path=path,
                patient_id=str(patient["id"]),
                entry_count=len(bundle.get("entry", [])),
                byte_size=path.stat().st_size,
                has_sle=sle,
                fixture=trim_bundle(bundle, window) if sle else {},
            )
        )
    return records


def largest(records: Iterable[PatientRecord]) -> PatientRecord:
    """The largest record: most resources, then most bytes, then lowest id."""
    return min(records, key=lambda r: (-r.entry_count, -r.byte_size, r.patient_id))


def choose_fixtures(
    records: Iterable[PatientRecord], count: int, budget: int
) -> list[tuple[PatientRecord, str]]:
    """Smallest trimmed patients first, while the total stays within ``budget`` bytes."""
    rendered = sorted(
        ((r, r.fixture_text) for r in records),
        key=lambda pair: (len(pair[1].encode("utf-8")), pair[0].patient_id),
    )
    chosen: list[tuple[PatientRecord, str]] = []
    total = 0
    for record, text in rendered:
        size = len(text.encode("utf-8"))
        if len(chosen) >= count or total + size > budget:
            break
        chosen.append((record, text))
        total += size
    return chosen


def write_fixtures(chosen: Sequence[tuple[PatientRecord, str]], fixtures_dir: Path) -> list[Path]:
    """Write the fixtures and remove stale ``*.json`` ones from an earlier run."""
    fixtures_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for record, text in chosen:
        path = fixtures_dir / f"{record.patient_id}.json"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in sorted(set(fixtures_dir.glob("*.json")) - set(written)):
        stale.unlink()
    return written


def format_counts(counts: Counter[str]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.most_common())


# --------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--input", type=Path, required=True, help="Synthea output folder")
    parser.add_argument(
        "--reference-date", required=True, help="Synthea's -r date, YYYYMMDD or YYYY-MM-DD"
    )
    parser.add_argument("--large-out", type=Path, required=True, help="benchmark .json.gz")
    parser.add_argument("--fixtures-dir", type=Path, required=True, help="fixture folder")
    parser.add_argument("--fixture-count", type=int, default=DEFAULT_FIXTURE_COUNT)
    parser.add_argument(
        "--fixture-budget", type=int, default=DEFAULT_FIXTURE_BUDGET, help="total bytes"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reference = parse_reference_date(args.reference_date)
    window = (years_before(reference, OBSERVATION_WINDOW_YEARS), reference)

    paths = patient_files(args.input)
    records = scan(paths, window)
    sle_records = [r for r in records if r.has_sle]
    print(f"{len(records)} patients, {len(sle_records)} with SLE ({SNOMED}|{SLE_CODE})")
    for record in records:
        print(
            f"  {record.patient_id}  entries={record.entry_count:5d}  "
            f"bytes={record.byte_size:9d}  sle={'yes' if record.has_sle else 'no'}"
        )
    if not sle_records:
        print("error: no patient with SLE in the cohort", file=sys.stderr)
        return 1

    big = largest(sle_records)
    big_bundle = as_collection(load_bundle(big.path).get("entry", []))
    write_gzip_json(big_bundle, args.large_out)
    print(
        f"benchmark: {big.patient_id} ({big.entry_count} resources, {big.byte_size} bytes raw)"
        f" -> {args.large_out} ({args.large_out.stat().st_size} bytes)"
    )
    print(f"  {format_counts(resource_counts(big_bundle))}")

    chosen = choose_fixtures(sle_records, args.fixture_count, args.fixture_budget)
    written = write_fixtures(chosen, args.fixtures_dir)
    total = 0
    print(f"fixtures (Observations {window[0]}..{window[1]}) -> {args.fixtures_dir}")
    for (record, _), path in zip(chosen, written, strict=True):
        size = path.stat().st_size
        total += size
        print(f"  {path.name}  {size} bytes  {format_counts(resource_counts(record.fixture))}")
    print(f"  total {total} bytes in {len(written)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
