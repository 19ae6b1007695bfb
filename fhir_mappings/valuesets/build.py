"""Rebuild the checked-in value set expansions of this folder from a published repository.

    python fhir_mappings/valuesets/build.py /work/.mirror/cqframework+ecqm-content-qicore-2024/repo

Reads ``sources.yaml``: every ``import`` id is read with ``git show <commit>:<path>`` from the
mirror (a bare or working git directory of the named repository) and written as ``<id>.json``;
every ``subsets`` entry is selected from an imported expansion by its display and written the
same way with ``subset_of`` and ``rule``. Codes are stored as ``system|code|display`` with the
short system names of ``../systems.yaml``, one per line, sorted, so a new release diffs cleanly.
"""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent


def _short_names() -> dict[str, str]:
    systems = yaml.safe_load((HERE.parent / "systems.yaml").read_text(encoding="utf-8"))
    short = {str(uri): str(name) for name, uri in systems.items()}
    # VSAC writes HCPCS with the UMLS URI; FHIR (terminology.hl7.org) names the CMS one.
    short["http://www.nlm.nih.gov/research/umls/hcpcs"] = "hcpcs"
    return short


def _write(path: Path, header: dict[str, Any], codes: list[str]) -> None:
    lines = ["{"]
    lines += [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in header.items()]
    lines.append('  "codes": [')
    lines += [f"    {json.dumps(c, ensure_ascii=False)}," for c in codes]
    lines[-1] = lines[-1].rstrip(",")
    lines += ["  ]", "}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(mirror: str) -> int:
    sources = yaml.safe_load((HERE / "sources.yaml").read_text(encoding="utf-8"))
    short = _short_names()
    imported: dict[str, tuple[dict[str, Any], list[str]]] = {}
    for vs_id in sources["import"]:
        path = sources["path"].format(id=vs_id)
        raw = subprocess.run(
            ["git", "-C", mirror, "show", f"{sources['commit']}:{path}"],
            check=True,
            capture_output=True,
        ).stdout
        vs = json.loads(raw)
        codes = []
        for c in vs["expansion"]["contains"]:
            if c["system"] not in short:
                raise SystemExit(f"{vs_id}: system {c['system']} is not in systems.yaml")
            codes.append(f"{short[c['system']]}|{c['code']}|{c.get('display', '')}")
        header = {
            "id": vs_id,
            "url": vs["url"],
            "name": vs["name"],
            "title": vs.get("title", vs["name"]),
            "version": vs["version"],
            "expansion_timestamp": vs["expansion"]["timestamp"],
            "source": {
                "repository": sources["repository"],
                "path": path,
                "commit": sources["commit"],
            },
        }
        imported[vs_id] = (header, sorted(set(codes)))
        _write(HERE / f"{vs_id}.json", header, imported[vs_id][1])
    for sub_id, rule in sources["subsets"].items():
        parent_header, parent_codes = imported[rule["subset_of"]]
        match = re.compile(rule["match"], re.IGNORECASE)
        unless = re.compile(rule["unless"], re.IGNORECASE) if rule.get("unless") else None
        systems = set(rule.get("systems", []))
        chosen = []
        for entry in parent_codes:
            system, _, display = entry.split("|", 2)
            if systems and system not in systems:
                continue
            if match.search(display) and not (unless and unless.search(display)):
                chosen.append(entry)
        described = f"display matches /{rule['match']}/i"
        if rule.get("unless"):
            described += f" and not /{rule['unless']}/i"
        if systems:
            described += f"; systems {sorted(systems)}"
        header = {
            "id": sub_id,
            "url": f"urn:trialscreen:valueset:{sub_id}",
            "name": sub_id,
            "title": rule["title"],
            "version": parent_header["version"],
            "expansion_timestamp": parent_header["expansion_timestamp"],
            "subset_of": rule["subset_of"],
            "rule": described,
            "select": {
                "match": rule["match"],
                "unless": rule.get("unless", ""),
                "systems": sorted(systems),
            },
        }
        _write(HERE / f"{sub_id}.json", header, chosen)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
