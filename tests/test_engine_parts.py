"""The engine's building blocks: three-valued logic, windows, ages, comparisons, units."""

from datetime import date

import pytest

from app.catalog.loader import Catalog
from app.catalog.schema import Duration
from app.engine.compare import satisfies, satisfies_censored
from app.engine.record import Patient
from app.engine.results import Status, kleene_all, kleene_any

M, N, U, NA = Status.MET, Status.NOT_MET, Status.UNKNOWN, Status.NOT_APPLICABLE


@pytest.mark.parametrize(
    ("statuses", "all_of", "any_of"),
    [
        ([M, M], M, M),
        ([M, N], N, M),
        ([M, U], U, M),
        ([N, U], N, U),
        ([U, U], U, U),
        ([N, N], N, N),
        ([NA, M], M, M),
        ([NA, N], N, N),
        ([NA, NA], NA, NA),
    ],
)
def test_kleene_logic(statuses: list[Status], all_of: Status, any_of: Status) -> None:
    assert kleene_all(statuses) == all_of
    assert kleene_any(statuses) == any_of


@pytest.mark.parametrize(
    ("duration", "day", "expected"),
    [
        (Duration(days=28), date(2026, 6, 1), date(2026, 5, 4)),
        (Duration(weeks=2), date(2026, 1, 10), date(2025, 12, 27)),
        (Duration(months=6), date(2026, 8, 31), date(2026, 2, 28)),
        (Duration(months=6), date(2024, 8, 31), date(2024, 2, 29)),
        (Duration(years=2), date(2026, 2, 28), date(2024, 2, 28)),
        (Duration(months=1), date(2026, 1, 15), date(2025, 12, 15)),
    ],
)
def test_windows_count_back_by_calendar(duration: Duration, day: date, expected: date) -> None:
    assert duration.before(day) == expected


@pytest.mark.parametrize(
    ("born", "on", "age"),
    [
        (date(2008, 6, 1), date(2026, 6, 1), 18),
        (date(2008, 6, 1), date(2026, 5, 31), 17),
        (date(2008, 2, 29), date(2026, 2, 28), 17),
        (date(2008, 2, 29), date(2026, 3, 1), 18),
    ],
)
def test_age_counts_the_birthday_itself(born: date, on: date, age: int) -> None:
    assert Patient("Patient/p", born, "female").age_on(on) == age


def test_boundaries_keep_their_strictness() -> None:
    assert satisfies(1.5, ">=", 1.5)
    assert not satisfies(2.0, "<", 2.0)
    assert satisfies(2.0, "<=", 2.0)
    # conversion noise does not move a value across the boundary
    assert satisfies(8.0 * 10.000000000001, ">=", 80)
    assert not satisfies(34.2 / 17.1 + 1e-14, "<", 2.0)


def test_censored_results_are_decided_only_when_the_bound_settles_it() -> None:
    assert satisfies_censored(0.2, "<", "<", 2.0) is True
    assert satisfies_censored(0.2, "<", ">=", 2.0) is False
    assert satisfies_censored(5.0, "<", "<", 2.0) is None
    assert satisfies_censored(90, ">", ">=", 80) is True


def test_unit_conversions(catalog: Catalog) -> None:
    analytes = catalog.mappings.analytes
    assert analytes["hemoglobin"].to_canonical(8.0, "g/dL") == pytest.approx(80)
    assert analytes["hemoglobin"].to_canonical(5.0, "mmol/L") == pytest.approx(80.5)
    assert analytes["anc"].to_canonical(1500, "/uL") == pytest.approx(1.5)
    assert analytes["creatinine"].to_canonical(88.4, "umol/L") == pytest.approx(1.0, rel=1e-3)
    assert analytes["bilirubin_total"].to_canonical(34.2, "umol/L") == pytest.approx(2.0, rel=1e-3)
    assert analytes["lvef"].to_canonical(0.45, "1") == pytest.approx(45)
    # UCUM by meaning: "l" and "L" are both the litre (issue 10), a non-UCUM unit is refused
    assert analytes["hemoglobin"].to_canonical(8.0, "g/dl") == pytest.approx(80)
    assert analytes["hemoglobin"].to_canonical(8.0, "G/DL") is None
    assert analytes["sledai_2k"].to_canonical(8, "") == 8  # valueInteger, no unit
