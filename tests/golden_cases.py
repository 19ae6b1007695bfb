"""Load the golden case files: record (shorthand) + as-of date + expected per-criterion results."""

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from tests import fhir_builders

GOLDEN = Path(__file__).resolve().parent / "golden"
_CASE_KEYS = {
    "name",
    "as_of",
    "patient",
    "baseline",
    "drop",
    "resources",
    "expect",
    "eligibility",
    "requests",
    "review",
}


@dataclass(frozen=True)
class GoldenCase:
    trial: str
    name: str
    as_of: date
    bundle: dict[str, Any]
    expect: dict[str, str]
    eligibility: str | None = None
    requests: tuple[str, ...] = ()
    """Codes that must appear in the screening's data requests."""
    review: tuple[str, ...] = field(default=())
    """Ids whose result must carry at least one review item."""


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_cases() -> list[GoldenCase]:
    cases: list[GoldenCase] = []
    for trial_dir in sorted(p for p in GOLDEN.iterdir() if p.is_dir()):
        baseline = _load(trial_dir / "baseline.yaml")
        for path in sorted(trial_dir.glob("*.yaml")):
            if path.name == "baseline.yaml":
                continue
            for raw in _load(path):
                unknown = set(raw) - _CASE_KEYS
                assert not unknown, f"{path.name}: {raw.get('name')}: unknown keys {unknown}"
                items: list[dict[str, Any]] = []
                patient = dict(baseline["patient"])
                if raw.get("baseline"):
                    dropped = set(raw.get("drop", []))
                    items = [
                        i
                        for i in baseline["resources"]
                        if next(iter(i.values())).get("id") not in dropped
                    ]
                patient.update(raw.get("patient", {}))
                items += raw.get("resources", [])
                cases.append(
                    GoldenCase(
                        trial=trial_dir.name,
                        name=f"{path.stem}: {raw['name']}",
                        as_of=date.fromisoformat(str(raw.get("as_of", baseline["as_of"]))),
                        bundle=fhir_builders.bundle(patient, items),
                        expect={str(k): str(v) for k, v in raw.get("expect", {}).items()},
                        eligibility=raw.get("eligibility"),
                        requests=tuple(str(c) for c in raw.get("requests", [])),
                        review=tuple(raw.get("review", [])),
                    )
                )
    return cases
