"""A fresh screening of every snapshot record gives exactly the stored GuidanceResponse (see
tests/screen_snapshot.py): speed work must not move any answer, reason, evidence or review item."""

from typing import Any

import orjson
import pytest

from app.catalog.loader import Catalog
from app.core.settings import Settings
from tests.screen_snapshot import kept, screens, stored


@pytest.fixture(scope="module")
def fresh(catalog: Catalog, settings: Settings) -> dict[str, Any]:
    return kept(screens(catalog, settings))


@pytest.fixture(scope="module")
def before() -> dict[str, Any]:
    return stored()


def test_the_snapshot_covers_every_record(fresh: dict[str, Any], before: dict[str, Any]) -> None:
    assert sorted(fresh) == sorted(before)
    assert any(k.startswith("synthea-sle-large") for k in before)
    assert sum(k.startswith("demo ") for k in before) >= 5 * 2 * 2
    assert sum(k.startswith("golden ") for k in before) > 1000


@pytest.mark.parametrize("kind", ["golden ", "demo ", "synthea-"])
def test_every_guidance_response_is_unchanged(
    kind: str, fresh: dict[str, Any], before: dict[str, Any]
) -> None:
    keys = [k for k in before if k.startswith(kind)]
    changed = [k for k in keys if orjson.loads(orjson.dumps(fresh[k])) != before[k]]
    assert keys and not changed, f"{len(changed)} screenings changed, first: {changed[:3]}"
