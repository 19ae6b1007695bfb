"""The schema of a trial file (``criteria/<NCT id>.yaml``).

A trial is a list of criteria in protocol order; each criterion keeps its verbatim text and combines
named checks (``I7.anc``) by ``all`` / ``any`` / ``all_available``. Every check kind is a frozen
model with ``extra="forbid"`` and a ``check`` discriminator, so a misspelt key fails at load.
Windows are durations back from the as-of date; comparators keep the protocol's strictness.
"""

import calendar
from datetime import date, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Comparator = Literal["<", "<=", ">", ">="]
Sex = Literal["female", "male"]
_ID = r"^[IE][0-9]+(\.[a-z0-9_]+)*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Duration(_Strict):
    days: int = Field(default=0, ge=0)
    weeks: int = Field(default=0, ge=0)
    months: int = Field(default=0, ge=0)
    years: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _positive(self) -> "Duration":
        if not (self.days or self.weeks or self.months or self.years):
            raise ValueError("a duration must be longer than zero")
        return self

    def before(self, day: date) -> date:
        """The day this long before ``day`` (calendar months; the 31st falls back to month end)."""
        months = day.month - 1 - self.months - 12 * self.years
        year, month = day.year + months // 12, months % 12 + 1
        shifted = date(year, month, min(day.day, calendar.monthrange(year, month)[1]))
        return shifted - timedelta(days=self.days + 7 * self.weeks)

    def __str__(self) -> str:
        parts = [
            f"{n} {unit}{'s' if n != 1 else ''}"
            for n, unit in (
                (self.years, "year"),
                (self.months, "month"),
                (self.weeks, "week"),
                (self.days, "day"),
            )
            if n
        ]
        return " ".join(parts)


class _Check(_Strict):
    id: str = Field(pattern=_ID)
    label: str = Field(min_length=1)
    """What the check tests, in words a coordinator reads."""
    review: tuple[str, ...] = ()
    """Points only a clinician can judge; listed for review whatever the data says."""
    applies_to: Sex | None = None
    """Only for patients of this administrative sex; not-applicable for the other."""
    expect: Literal["present", "absent"] = "present"
    """``absent``: the check is met when what it looks for is not found (Kleene negation)."""


class _Matching(_Check):
    on_match: Literal["met", "review"] = "met"
    """``review``: a match is for a clinician to judge (unknown + review item), not a verdict."""


class AgeCheck(_Check):
    check: Literal["age"]
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)
    """Both bounds inclusive, in completed years at the as-of date."""


class ConditionCheck(_Matching):
    check: Literal["condition"]
    codes: tuple[str, ...] = Field(min_length=1)
    except_codes: tuple[str, ...] = ()
    """Code sets that do not count even when ``codes`` match (the protocol's listed exceptions)."""
    within: Duration | None = None
    """Onset (or recorded date) inside the window; None: any time before the as-of date."""
    or_active: bool = False
    """Also count a condition present during the window whatever its onset: still active at the
    as-of date, or abated inside the window."""
    active_only: bool = False
    """Only conditions whose clinical status is active / recurrence / relapse count."""
    onset_at_least: Duration | None = None
    """The earliest matching onset must be at least this long before the as-of date."""
    current_within: Duration | None = None
    """For states that end by themselves (pregnancy, lactation): an entry counts as current only
    when dated inside this window (replaces ``within``); an older one still marked active goes to
    review, an older one without a clinical status has lapsed."""


class ProcedureCheck(_Matching):
    check: Literal["procedure"]
    codes: tuple[str, ...] = Field(min_length=1)
    except_codes: tuple[str, ...] = ()
    """Code sets that do not count even when ``codes`` match (left to a sibling review check)."""
    within: Duration | None = None
    """Performed inside the window (a performedPeriod that overlaps it, or in progress)."""


class ImmunizationCheck(_Matching):
    check: Literal["immunization"]
    codes: tuple[str, ...] = Field(min_length=1)
    within: Duration | None = None


class MedicationCheck(_Matching):
    check: Literal["medication"]
    classes: tuple[str, ...] = Field(min_length=1)
    within: Duration | None = None
    """Started or in use inside the window; None: any time before the as-of date."""
    current: bool = False
    """Only medications in use at the as-of date."""
    started_at_least: Duration | None = None
    """The earliest use of the matching ingredient is at least this long before the as-of date."""
    route: Literal["oral", "intravenous"] | None = None
    """Only uses by this route (from the dosage, else from the product)."""


class AllergyCheck(_Matching):
    check: Literal["allergy"]
    substances: tuple[str, ...] = ()
    """Drug classes whose ingredients count as the allergen; empty: any substance."""
    severe: bool = False
    """Only allergies with a severe reaction or anaphylaxis recorded count; high criticality alone
    (a potential, not a reaction) goes to review."""
    reaction: Literal["severe_or_anaphylaxis", "anaphylaxis"] = "severe_or_anaphylaxis"
    """With ``severe``: what the protocol calls severe. ``anaphylaxis``: only an anaphylactic
    reaction counts; a severe reaction of another kind goes to review."""


class PercentOf(_Strict):
    """``value = percent / 100 x total``, both results of the same draw (same calendar day)."""

    percent: str
    """Analyte reported in %."""
    total: str
    """Analyte the percentage is of (e.g. absolute lymphocytes)."""


class SupplementalOxygen(_Strict):
    """A result that shows oxygen being given: its value (canonical unit of ``unit``) above this."""

    analyte: str
    above: float
    unit: str


class RoomAir(_Strict):
    """The measurement counts only on room air (HN2301 I7 SpO2 "while breathing indoor air")."""

    codes: str
    """Code set of result codes that say "on room air" themselves (LOINC 59410-1)."""
    supplemental_oxygen: tuple[SupplementalOxygen, ...] = Field(min_length=1)
    """Inspired-oxygen results that, as a component of the reading or as a result of the same
    day, show supplemental oxygen (not comparable) or room air (at or below the limit)."""


class MeasurementCheck(_Check):
    check: Literal["measurement"]
    analyte: str
    comparator: Comparator
    value: float
    unit: str | None = None
    """Unit of ``value``; must be one the analyte converts. Omit with ``uln_multiple``."""
    uln_multiple: bool = False
    """``value`` is a multiple of the upper limit of normal from the result's referenceRange."""
    within: Duration | None = None
    """None: the trial's screening window."""
    percent_of: "PercentOf | None" = None
    """Also derive the value from a percentage and a total of the same draw (same day)."""
    room_air: RoomAir | None = None
    """Only readings on room air are compared (see :class:`RoomAir`)."""
    repeated: int | None = Field(default=None, ge=2)
    """``met`` needs this many of the latest readings, on different days, all satisfying it; a
    single one is unknown with a review item (e.g. "poorly controlled" blood pressure)."""

    @model_validator(mode="after")
    def _unit_or_uln(self) -> "MeasurementCheck":
        if self.uln_multiple == (self.unit is not None):
            raise ValueError(f"{self.id}: give either unit or uln_multiple: true")
        return self


class LabFindingCheck(_Matching):
    check: Literal["lab_finding"]
    analytes: tuple[str, ...] = Field(min_length=1)
    finding: Literal["positive", "low", "coded"]
    """positive: positive / reactive / detected (or above the lab's upper reference limit);
    low: below the lab's lower reference limit; coded: the result's code is in ``result_codes``."""
    result_codes: str | None = None
    numeric: Literal["above_reference", "detected"] = "above_reference"
    """How a numeric result reads: above the lab's upper reference limit (antibodies), or
    detected whenever a value is measured rather than reported below the limit (viral loads)."""
    titer_cutoff: float | None = Field(default=None, gt=0)
    """A titer "1:N" is positive when N reaches this (e.g. 80 for ANA, the 2019 EULAR/ACR entry)."""
    within: Duration | None = None
    negative_codes: str | None = None
    """For ``coded``: the answers that read as not the finding; any other answer is unclear
    (e.g. pregnancy status "unknown"). Without it, every other answer reads as not the finding."""
    history: bool = False
    """Every result in the window counts, not only the latest ("history of ... within")."""
    if_none: Literal["unknown", "not_met"] = "unknown"
    """No result in the window: ``unknown`` (ask for one), or ``not_met`` where a result is only
    counter-evidence that is not expected to exist (a pregnancy status beside a required test)."""

    @model_validator(mode="after")
    def _coded_needs_codes(self) -> "LabFindingCheck":
        if (self.finding == "coded") != (self.result_codes is not None):
            raise ValueError(f"{self.id}: result_codes is given exactly when finding is coded")
        if self.negative_codes is not None and self.finding != "coded":
            raise ValueError(f"{self.id}: negative_codes only with finding: coded")
        return self


class CreatinineClearanceCheck(_Check):
    check: Literal["creatinine_clearance"]
    comparator: Comparator
    value: float
    unit: Literal["mL/min"]
    within: Duration | None = None


class PrednisoneDoseCheck(_Check):
    check: Literal["prednisone_dose"]
    glucocorticoids: str
    """Drug class of systemic glucocorticoids (each ingredient carries its prednisone factor)."""
    min: float = Field(ge=0)
    max: float = Field(gt=0)
    unit: Literal["mg/d"]
    min_waived_with: tuple[str, ...] = ()
    """Drug classes that, in use at the as-of date, lift the minimum dose."""


class DistinctDrugsCheck(_Check):
    check: Literal["distinct_drugs"]
    classes: tuple[str, ...] = Field(min_length=1)
    at_least: int = Field(ge=1)


class JudgementCheck(_Check):
    check: Literal["judgement"]
    """Nothing to compute: always unknown, with the review items as the request."""

    @model_validator(mode="after")
    def _has_review(self) -> "JudgementCheck":
        if not self.review:
            raise ValueError(f"{self.id}: a judgement check lists what to review")
        return self


class GroupCheck(_Check):
    check: Literal["all", "any", "all_available"]
    """all / any: Kleene and / or. all_available: every child with data must be met; children
    unknown for lack of data are set aside while at least one child has data."""
    checks: tuple["Check", ...] = Field(min_length=1)
    review_not_met: bool = False
    """For ``any``: when a child meets it, each child that does not is listed for review (the
    protocol's "INR or APTT" is met by one, but a failing other test is for a clinician)."""


Check = Annotated[
    AgeCheck
    | ConditionCheck
    | ProcedureCheck
    | ImmunizationCheck
    | MedicationCheck
    | AllergyCheck
    | MeasurementCheck
    | LabFindingCheck
    | CreatinineClearanceCheck
    | PrednisoneDoseCheck
    | DistinctDrugsCheck
    | JudgementCheck
    | GroupCheck,
    Field(discriminator="check"),
]
GroupCheck.model_rebuild()


class Criterion(_Strict):
    id: str = Field(pattern=r"^[IE][0-9]+$")
    kind: Literal["inclusion", "exclusion"]
    text: str = Field(min_length=1)
    """Verbatim protocol text."""
    match: Literal["all", "any", "all_available"] = "all"
    checks: tuple[Check, ...] = Field(min_length=1)
    review: tuple[str, ...] = ()


class Trial(_Strict):
    id: str = Field(pattern=r"^NCT[0-9]{8}$")
    version: str = Field(min_length=1)
    """Version of this encoding; part of the PlanDefinition canonical a screening cites."""
    acronym: str
    title: str
    sponsor: str
    status: Literal[
        "active", "approved", "completed", "closed-to-accrual", "in-review", "withdrawn"
    ]
    """ResearchStudy.status (R4): recruiting is ``active``, not yet recruiting ``approved``."""
    conditions: tuple[str, ...]
    source: str
    """Where the verbatim texts come from."""
    screening_window: Duration
    """Default look-back for screening measurements (protocol's screening period)."""
    criteria: tuple[Criterion, ...] = Field(min_length=1)
