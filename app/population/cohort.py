"""Synthetic cohorts as Bulk Data NDJSON: the bundled demo patients (``app/demo/patients``, Synthea
lupus records) written as ``{Type}.ndjson`` files, and replicas of them for larger populations,
each with fresh ids and its dates shifted by a random number of days (the same shift for every
date of a patient, so the record keeps its own timeline)."""

import random
import re
import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import IO

import orjson

from app.demo import DEMO_PATIENTS

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_DAY = re.compile(rb'"(\d{4})-(\d{2})-(\d{2})(T[^"]*)?"')


def demo_records() -> list[list[bytes]]:
    """Each demo patient's resources, one serialized resource per item, in Bundle order."""
    out = []
    for path in sorted(DEMO_PATIENTS.glob("*.json")):
        bundle = orjson.loads(path.read_bytes())
        out.append([orjson.dumps(e["resource"]) for e in bundle["entry"]])
    return out


def write_demo(folder: Path) -> Path:
    """The demo patients as a Bulk Data folder; returns the folder."""
    return write_cohort(folder, 0, seed=0, originals=True)


def write_cohort(folder: Path, patients: int, seed: int = 14, originals: bool = False) -> Path:
    """``patients`` replicas of the demo patients (round robin) with fresh ids and jittered
    dates, after the originals themselves when ``originals``."""
    folder.mkdir(parents=True, exist_ok=True)
    records = demo_records()
    files: dict[str, IO[bytes]] = {}
    try:
        for lines in _records(records, patients, seed, originals):
            for line in lines:
                kind = str(orjson.loads(line)["resourceType"])
                out = files.get(kind)
                if out is None:
                    out = files[kind] = (folder / f"{kind}.ndjson").open("wb")
                out.write(line + b"\n")
    finally:
        for f in files.values():
            f.close()
    return folder


def _records(
    records: list[list[bytes]], patients: int, seed: int, originals: bool
) -> Iterator[list[bytes]]:
    if originals:
        yield from records
    rng = random.Random(seed)
    for i in range(patients):
        namespace = uuid.UUID(int=rng.getrandbits(128))
        shift = timedelta(days=rng.randint(-365, 365))
        yield [replicate(line, namespace, shift) for line in records[i % len(records)]]


def replicate(line: bytes, namespace: uuid.UUID, shift: timedelta) -> bytes:
    """The resource with every UUID replaced (the same way across a replica, so references
    still hold) and every full date moved by ``shift``."""

    def new_id(m: re.Match[bytes]) -> bytes:
        return str(uuid.uuid5(namespace, m.group(0).decode())).encode()

    def moved(m: re.Match[bytes]) -> bytes:
        try:
            day = date(int(m.group(1)), int(m.group(2)), int(m.group(3))) + shift
        except ValueError:
            return m.group(0)
        return b'"' + day.isoformat().encode() + (m.group(4) or b"") + b'"'

    return _DAY.sub(moved, _UUID.sub(new_id, line))
