"""``python -m app.openapi_document``: rewrite ``openapi/openapi.json`` from the app (the contract
itself is ``app.api.openapi``; this writer sits above ``app.main`` so that nothing imports back)."""

import sys

from app.api.openapi import PATH, render
from app.main import app


def main() -> int:
    PATH.write_text(render(app), encoding="utf-8")
    print(f"wrote {PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
