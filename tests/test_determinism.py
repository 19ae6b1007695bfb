"""The same record gets the same answer in every process.

Code sets are sets, and Python randomises string hashing per process (PYTHONHASHSEED): anything
the engine orders by a set's iteration (which of two same-day results it reads, which evidence it
cites first) changes between processes. This screens every golden case in two processes with
different hash seeds and compares every result, reason and evidence list."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = """
import json, sys
from app.catalog.loader import load_catalog
from app.core.settings import Settings
from app.engine import evaluate
from app.fhir_io.bundle_reader import read_bundle
from tests.golden_cases import load_cases

catalog = load_catalog(Settings())
out = {}
for case in load_cases():
    screening = evaluate(catalog.trials[case.trial], read_bundle(case.bundle), case.as_of)
    out[f"{case.trial}: {case.name}"] = [
        [r.id, r.status.value, r.reason, list(r.evidence), list(r.review)]
        for c in screening.criteria
        for r in c.result.walk()
    ] + [screening.eligibility.value]
json.dump(out, sys.stdout)
"""


def _screened_with(seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": seed}
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return done.stdout


def test_every_golden_case_gets_the_same_answer_under_different_hash_seeds() -> None:
    # Seeds 4 and 6 gave other answers than 0 when same-day results followed a code set's
    # iteration order (two creatinine codes at one instant): keep them in the comparison.
    first, *others = (_screened_with(seed) for seed in ("0", "4", "6"))
    assert len(json.loads(first)) > 100  # the script screened the golden cases
    assert all(other == first for other in others)
