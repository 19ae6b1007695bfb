"""A stand-in for issue 14's population ``RunService`` (the contract in the pages' module
app/ui/population_pages.py), for the page tests only: it screens the bundled demo patients
with the real engine, writes the run's files in the contract's shapes, and advances one patient
each time the run's status is read, so a page can watch a run progress."""

from __future__ import annotations

import builtins
import csv
import threading
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from app.catalog.loader import Catalog
from app.core.errors import Forbidden
from app.demo import DEMO_PATIENTS
from app.engine import Screening, Status, evaluate
from app.fhir_io.bundle_reader import read_bundle
from app.fhir_io.report import guidance_response


@dataclass(frozen=True)
class RunSummary:
    id: str
    status: str
    trials: tuple[str, ...]
    as_of: date
    source: str
    created: datetime
    finished: datetime | None
    patients_total: int | None
    patients_done: int
    outcomes: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    who: str = ""


class FakeRunService:
    def __init__(self, catalog: Catalog, folder: Path) -> None:
        self.catalog = catalog
        self.folder = folder
        self.runs: dict[str, RunSummary] = {}
        self.screenings: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
        self.lock = threading.Lock()

    def start(self, trials: list[str], as_of: date, source: str, who: str) -> RunSummary:
        if source != "demo":
            raise Forbidden(f"Unknown source {source!r}: only 'demo' here.")
        run = RunSummary(
            id=uuid.uuid4().hex[:12],
            status="queued",
            trials=tuple(trials),
            as_of=as_of,
            source=source,
            created=datetime.now(UTC),
            finished=None,
            patients_total=len(list(DEMO_PATIENTS.glob("*.json"))),
            patients_done=0,
            who=who,
        )
        with self.lock:
            self.runs[run.id] = run
        return run

    def get(self, run_id: str) -> RunSummary | None:
        with self.lock:
            run = self.runs.get(run_id)
            if run is None or run.status not in ("queued", "running"):
                return run
            done = run.patients_done + 1
            assert run.patients_total is not None
            if done < run.patients_total:
                run = replace(run, status="running", patients_done=done)
            else:
                run = self._finish(run)
            self.runs[run_id] = run
            return run

    def list(self, limit: int = 50) -> list[RunSummary]:
        return sorted(self.runs.values(), key=lambda r: r.created, reverse=True)[:limit]

    def cancel(self, run_id: str) -> bool:
        with self.lock:
            run = self.runs.get(run_id)
            if run is None or run.status not in ("queued", "running"):
                return False
            self.runs[run_id] = replace(run, status="cancelled", finished=datetime.now(UTC))
            return True

    def funnel(self, run_id: str) -> builtins.list[dict[str, Any]]:
        data: builtins.list[dict[str, Any]] = orjson.loads(
            (self.folder / run_id / "funnel.json").read_bytes()
        )
        return data

    def candidates_csv_path(self, run_id: str) -> Path:
        return self.folder / run_id / "candidates.csv"

    def screening(self, run_id: str, trial: str, patient: str) -> dict[str, Any] | None:
        return self.screenings.get(run_id, {}).get((trial, patient))

    def _finish(self, run: RunSummary) -> RunSummary:
        """Screen every demo patient against the run's trials and write the run's files."""
        records = [
            read_bundle(orjson.loads(p.read_bytes())) for p in sorted(DEMO_PATIENTS.glob("*.json"))
        ]
        out = self.folder / run.id
        out.mkdir(parents=True)
        screenings = {
            t: [evaluate(self.catalog.trials[t], r, run.as_of) for r in records] for t in run.trials
        }
        kept: dict[tuple[str, str], dict[str, Any]] = {}
        outcomes: dict[str, int] = {}
        funnel = []
        criteria_ids = list(
            dict.fromkeys(c.id for t in run.trials for c in self.catalog.trials[t].spec.criteria)
        )
        rows = []
        for trial, done in screenings.items():
            ranked = sorted(done, key=_rank_key)
            for rank, s in enumerate(ranked, start=1):
                patient = s.patient_ref or ""
                kept[(trial, patient)] = guidance_response(
                    s,
                    response_id=str(uuid.uuid4()),
                    canonical_base="https://trialscreen.org/fhir",
                    issued=datetime.now(UTC),
                )
                outcomes[s.eligibility.value] = outcomes.get(s.eligibility.value, 0) + 1
                results = {c.result.id: c.result.status.value for c in s.criteria}
                requests = list(
                    dict.fromkeys(r.label for c in s.criteria for r in c.result.open_requests())
                )
                review = sum(len(r.review) for c in s.criteria for r in c.result.walk())
                rows.append(
                    [rank, trial, patient, s.eligibility.value, len(requests), review]
                    + [results.get(c, "") for c in criteria_ids]
                    + ["; ".join(requests)]
                )
            funnel.append(_funnel(self.catalog, trial, run.as_of, done))
        with (out / "candidates.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                [
                    "rank",
                    "trial",
                    "patient",
                    "result",
                    "missing",
                    "review",
                    *criteria_ids,
                    "data_to_collect",
                ]
            )
            writer.writerows(rows)
        (out / "funnel.json").write_bytes(orjson.dumps(funnel))
        self.screenings[run.id] = kept
        return replace(
            run,
            status="completed",
            patients_done=run.patients_total or 0,
            outcomes=outcomes,
            finished=datetime.now(UTC),
        )


_ORDER = {"eligible": 0, "needs-review": 1, "needs-data": 2, "ineligible": 3}


def _rank_key(s: Screening) -> tuple[int, str]:
    return (_ORDER[s.eligibility.value], s.patient_ref or "")


def _turns_away(kind: str, status: Status) -> bool:
    return status is (Status.NOT_MET if kind == "inclusion" else Status.MET)


def _funnel(catalog: Catalog, trial: str, as_of: date, done: list[Screening]) -> dict[str, Any]:
    spec = catalog.trials[trial].spec
    remaining = list(done)
    steps = []
    for criterion in spec.criteria:
        statuses = [
            next(c.result.status for c in s.criteria if c.result.id == criterion.id)
            for s in remaining
        ]
        remaining = [
            s
            for s, status in zip(remaining, statuses, strict=True)
            if not _turns_away(criterion.kind, status)
        ]
        steps.append(
            {
                "criterion": criterion.id,
                "kind": criterion.kind,
                "text": criterion.text,
                "remaining": len(remaining),
                "met": statuses.count(Status.MET),
                "notMet": statuses.count(Status.NOT_MET),
                "unknown": statuses.count(Status.UNKNOWN),
                "notApplicable": statuses.count(Status.NOT_APPLICABLE),
            }
        )
    counts: dict[tuple[str, str], int] = {}
    for s in done:
        for c in s.criteria:
            for r in dict.fromkeys((c.result.id, q.label) for q in c.result.open_requests()):
                counts[r] = counts.get(r, 0) + 1
    outcomes: dict[str, int] = {}
    for s in done:
        outcomes[s.eligibility.value] = outcomes.get(s.eligibility.value, 0) + 1
    return {
        "trial": trial,
        "title": f"{spec.acronym} {spec.title}",
        "asOf": as_of.isoformat(),
        "patients": len(done),
        "outcomes": outcomes,
        "steps": steps,
        "dataRequests": [
            {"check": cid, "criterion": cid.split(".")[0], "request": label, "patients": n}
            for (cid, label), n in sorted(counts.items(), key=lambda kv: -kv[1])
        ],
    }
