"""Print how many codes each code set holds, as a Markdown table (for fhir_mappings/README.md).

    .venv/bin/python fhir_mappings/valuesets/counts.py            # from the repository root

A code set's size is the number of distinct entries after exclusions: each hand-listed exact code,
each prefix row (an ICD-10-CM category counts once, however many codes it covers) and each code of
the value set expansions it includes. WHO ICD-10 twins of ICD-10-CM rows are not counted.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

from app.catalog.loader import load_catalog
from app.core.settings import Settings


def main() -> int:
    m = load_catalog(Settings()).mappings
    print("| code set | codes | prefix rows | value sets |")
    print("|---|---:|---:|---|")
    for name, cs in m.code_sets.items():
        entries = {(m.systems[r.system], r.code, r.match) for r in cs.rows}
        sets = getattr(cs, "value_sets", ())
        entries |= {(s, c, "exact") for vs in sets for s, c, _ in vs.codes}
        kept = [e for e in entries if e[2] == "prefix" or cs.matcher.matches(e[0], e[1])]
        prefixes = sum(1 for e in kept if e[2] == "prefix")
        names = ", ".join(f"{vs.spec.name} ({vs.spec.id})" for vs in sets) or "-"
        print(f"| {name} | {len(kept) - prefixes} | {prefixes} | {names} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
