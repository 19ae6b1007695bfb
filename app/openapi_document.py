"""The HTTP contract, ``openapi/openapi.json``, generated from the app.

``python -m app.openapi_document`` rewrites the file; a test fails when it is out of date.
"""

import json
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI

PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def render(app: FastAPI) -> str:
    document: dict[str, Any] = app.openapi()
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    from app.main import app

    PATH.write_text(render(app), encoding="utf-8")
    print(f"wrote {PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
