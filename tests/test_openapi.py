from app.api.openapi import PATH, render
from app.main import create_app


def test_openapi_file_matches_the_app() -> None:
    assert PATH.read_text(encoding="utf-8") == render(create_app()), (
        "openapi/openapi.json is out of date: run python -m app.openapi_document"
    )
