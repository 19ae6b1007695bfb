"""A population run's outputs, written from a stream of :class:`PatientResult` (both engines share
this writer), in the run folder:

- ``screenings.ndjson``: one GuidanceResponse per patient and trial, as ``$screen`` gives it;
- ``candidates.csv``: one row per patient and trial, ranked per trial: eligible, then
  needs-review, then needs-data by fewest missing items, then ineligible (ties: fewer review
  items, then patient id); criterion columns and the data to collect;
- ``funnel.json``: per trial, ATLAS-style attrition (patients remaining after each criterion in
  protocol order, a patient being turned away at the first criterion that makes them ineligible),
  per-criterion met / not-met / unknown / not-applicable counts and the data-request summary;
- ``funnel.parameters.json``: the same as a FHIR ``Parameters`` (one ``trial`` parameter per
  trial; parts ``study``, ``asOf``, ``patients``, ``outcome`` (name = result, valueInteger),
  ``step`` (criterion, kind, remaining, met, notMet, unknown, notApplicable) and ``dataRequest``
  (check, criterion, request, patients));
- ``Group-{trial}.json``: a FHIR Group (actual, person) of the trial's candidates (every patient
  not ineligible), each member's result in the ``prescreen-result`` extension; its members can
  be the input of a targeted ``$export``.

Memory stays flat in the population: reports are written as they come, ranking rows go to a
scratch NDJSON file that DuckDB sorts (out of core) at the end, the funnel is a set of counters.
"""

import csv
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any

import duckdb
import orjson

from app.catalog.trial import LoadedTrial
from app.population.patient_run import PatientResult

Json = dict[str, Any]
RESULTS = ("eligible", "needs-review", "needs-data", "ineligible")
_STATUS_KEYS = {
    "met": "met",
    "not-met": "notMet",
    "unknown": "unknown",
    "not-applicable": "notApplicable",
}
RESULT_EXTENSION = "StructureDefinition/prescreen-result"


@dataclass
class _Funnel:
    trial: LoadedTrial
    patients: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    turned_away: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    requests: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, r: PatientResult) -> None:
        self.patients += 1
        self.outcomes[r.result] += 1
        for cid, status in r.criteria.items():
            self.statuses.setdefault(cid, Counter())[status] += 1
        for c in protocol_order(self.trial):
            status = r.criteria.get(c.id, "")
            if (c.kind == "inclusion" and status == "not-met") or (
                c.kind == "exclusion" and status == "met"
            ):
                self.turned_away[c.id] += 1
                break
        self.requests.update(dict.fromkeys(r.data_requests, 1))

    def render(self, as_of: date) -> Json:
        spec = self.trial.spec
        remaining = self.patients
        steps = []
        for c in protocol_order(self.trial):
            remaining -= self.turned_away[c.id]
            counts = self.statuses.get(c.id, Counter())
            steps.append(
                {
                    "criterion": c.id,
                    "kind": c.kind,
                    "text": c.text,
                    "remaining": remaining,
                    **{key: counts[status] for status, key in _STATUS_KEYS.items()},
                }
            )
        requests = sorted(self.requests.items(), key=lambda kv: (-kv[1], kv[0]))
        return {
            "trial": spec.id,
            "title": f"{spec.acronym}: {spec.title}",
            "asOf": as_of.isoformat(),
            "patients": self.patients,
            "outcomes": {o: self.outcomes[o] for o in RESULTS},
            "steps": steps,
            "dataRequests": [
                {"check": check, "criterion": cid, "request": text, "patients": n}
                for (check, cid, text), n in requests
            ],
        }


def protocol_order(trial: LoadedTrial) -> list[Any]:
    """Inclusions then exclusions, each in the protocol's order."""
    criteria = trial.spec.criteria
    return [c for c in criteria if c.kind == "inclusion"] + [
        c for c in criteria if c.kind == "exclusion"
    ]


class OutputWriter:
    """Writes a run's outputs from results given one at a time (``add``) and ``close``."""

    def __init__(
        self,
        folder: Path,
        trials: Sequence[LoadedTrial],
        as_of: date,
        canonical_base: str,
        run_id: str = "run",
    ) -> None:
        self.folder = folder
        self.trials = list(trials)
        self.as_of = as_of
        self.canonical_base = canonical_base.rstrip("/")
        self.run_id = run_id
        folder.mkdir(parents=True, exist_ok=True)
        self._funnels = {t.id: _Funnel(t) for t in self.trials}
        self._screenings: IO[bytes] = (folder / "screenings.ndjson").open("wb")
        self._rows_path = folder / ".rows.ndjson"
        self._rows: IO[bytes] = self._rows_path.open("wb")
        self.problems: Counter[str] = Counter()

    def add(self, result: PatientResult) -> None:
        if result.guidance:  # a prefiltered patient has no full screening
            self._screenings.write(orjson.dumps(result.guidance) + b"\n")
        self._funnels[result.trial].add(result)
        row = {
            "trial": result.trial,
            "patient": result.patient,
            "result": result.result,
            "rank": RESULTS.index(result.result),
            "missing": len(result.data_requests),
            "review": result.review,
            "criteria": orjson.dumps(result.criteria).decode(),
            "requests": "; ".join(dict.fromkeys(text for _, _, text in result.data_requests)),
        }
        self._rows.write(orjson.dumps(row) + b"\n")

    def add_all(self, results: Iterable[PatientResult]) -> None:
        for r in results:
            self.add(r)

    def funnel(self) -> list[Json]:
        return [self._funnels[t.id].render(self.as_of) for t in self.trials]

    def close(self) -> list[Json]:
        """Finish every file; returns the funnel."""
        self._screenings.close()
        self._rows.close()
        funnel = self.funnel()
        (self.folder / "funnel.json").write_bytes(
            orjson.dumps(funnel, option=orjson.OPT_INDENT_2) + b"\n"
        )
        (self.folder / "funnel.parameters.json").write_bytes(
            orjson.dumps(funnel_parameters(funnel), option=orjson.OPT_INDENT_2) + b"\n"
        )
        self._ranked()
        self._rows_path.unlink(missing_ok=True)
        return funnel

    def _ranked(self) -> None:
        """candidates.csv and the Groups, from the rows sorted by DuckDB."""
        columns: dict[str, None] = {}
        for t in self.trials:
            columns.update(dict.fromkeys(c.id for c in protocol_order(t)))
        order = {t.id: i for i, t in enumerate(self.trials)}
        groups: dict[str, list[Json]] = {t.id: [] for t in self.trials}
        db = duckdb.connect()
        try:
            db.execute("SET preserve_insertion_order = true")
            if self._rows_path.stat().st_size:
                cursor = db.execute(
                    "SELECT trial, patient, result, missing, review, criteria, requests "
                    "FROM read_json(?, format='newline_delimited', columns={trial: 'VARCHAR', "
                    "patient: 'VARCHAR', result: 'VARCHAR', rank: 'INTEGER', missing: "
                    "'INTEGER', review: 'INTEGER', criteria: 'VARCHAR', requests: 'VARCHAR'}) "
                    "ORDER BY list_position(?, trial), rank, "
                    "CASE WHEN rank = 2 THEN missing ELSE 0 END, review, patient",
                    [str(self._rows_path), list(order)],
                )
            else:
                cursor = None
            with (self.folder / "candidates.csv").open("w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                head = ("rank", "trial", "patient", "result", "missing", "review")
                writer.writerow([*head, *columns, "data_to_collect"])
                rank: Counter[str] = Counter()
                while cursor is not None and (rows := cursor.fetchmany(10_000)):
                    for trial, patient, result, missing, review, criteria, requests in rows:
                        rank[trial] += 1
                        statuses = orjson.loads(criteria)
                        writer.writerow(
                            [rank[trial], trial, patient, result, missing, review]
                            + [statuses.get(c, "") for c in columns]
                            + [requests]
                        )
                        if result != "ineligible":
                            groups[trial].append(self._member(patient, result))
        finally:
            db.close()
        for trial in self.trials:
            group = self.group(trial, groups[trial.id])
            (self.folder / f"Group-{trial.id}.json").write_bytes(
                orjson.dumps(group, option=orjson.OPT_INDENT_2) + b"\n"
            )

    def _member(self, patient: str, result: str) -> Json:
        return {
            "extension": [
                {"url": f"{self.canonical_base}/{RESULT_EXTENSION}", "valueCode": result}
            ],
            "entity": {"reference": patient},
        }

    def group(self, trial: LoadedTrial, members: list[Json]) -> Json:
        spec = trial.spec
        group: Json = {
            "resourceType": "Group",
            "id": group_id(self.run_id, spec.id),
            "identifier": [
                {
                    "system": f"{self.canonical_base}/population-run",
                    "value": f"{self.run_id}/{spec.id}",
                }
            ],
            "type": "person",
            "actual": True,
            "name": f"{spec.acronym} ({spec.id}) pre-screening candidates as of "
            f"{self.as_of.isoformat()}",
            "quantity": len(members),
        }
        if members:
            group["member"] = members
        return group


def group_id(run_id: str, trial_id: str) -> str:
    """A FHIR id (64 characters at most, [A-Za-z0-9-.])."""
    return f"prescreen-{run_id}-{trial_id}"[:64]


def funnel_parameters(funnel: list[Json]) -> Json:
    """The funnel as a FHIR Parameters resource (see the module docstring)."""

    def trial_part(f: Json) -> Json:
        parts: list[Json] = [
            {"name": "study", "valueString": f["trial"]},
            {"name": "asOf", "valueDate": f["asOf"]},
            {"name": "patients", "valueInteger": f["patients"]},
        ]
        parts += [
            {"name": "outcome", "part": [{"name": k, "valueInteger": v}]}
            for k, v in f["outcomes"].items()
        ]
        for step in f["steps"]:
            parts.append(
                {
                    "name": "step",
                    "part": [
                        {"name": "criterion", "valueString": step["criterion"]},
                        {"name": "kind", "valueCode": step["kind"]},
                        *(
                            {"name": k, "valueInteger": step[k]}
                            for k in ("remaining", "met", "notMet", "unknown", "notApplicable")
                        ),
                    ],
                }
            )
        for req in f["dataRequests"]:
            parts.append(
                {
                    "name": "dataRequest",
                    "part": [
                        {"name": "check", "valueString": req["check"]},
                        {"name": "criterion", "valueString": req["criterion"]},
                        {"name": "request", "valueString": req["request"]},
                        {"name": "patients", "valueInteger": req["patients"]},
                    ],
                }
            )
        return {"name": "trial", "part": parts}

    return {"resourceType": "Parameters", "parameter": [trial_part(f) for f in funnel]}


def write_outputs(
    folder: Path,
    trials: Sequence[LoadedTrial],
    as_of: date,
    results: Iterable[PatientResult],
    canonical_base: str,
    run_id: str = "run",
) -> list[Json]:
    """Every output of a run from its results; returns the funnel."""
    writer = OutputWriter(folder, trials, as_of, canonical_base, run_id)
    writer.add_all(results)
    return writer.close()
