"""The patient record as the engine sees it: lean, typed, and only the fields the criteria use.

Every input path (a posted Bundle, later an EHR fetch or CDS Hooks prefetch) converges on
:class:`PatientRecord`, so there is one evaluation path. Resources whose status says they do not
count (entered-in-error, cancelled, refuted, not-done) never get here.
"""

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date

Coding = tuple[str, str]
"""(system URI, code)."""

TENTATIVE = frozenset({"unconfirmed", "provisional", "differential", "presumed"})
"""Condition / AllergyIntolerance verificationStatus codes that do not establish the entry
(condition-ver-status and allergyintolerance-verification; ``presumed`` is the R5 child of
unconfirmed some servers already send)."""


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float
    unit: str
    """The UCUM code when the quantity carries one, else its human-readable unit ("" if none)."""
    comparator: str | None = None


@dataclass(frozen=True, slots=True)
class Observation:
    ref: str
    codes: tuple[Coding, ...]
    text: str
    when: date
    quantity: Quantity | None = None
    value_codes: tuple[Coding, ...] = ()
    value_text: str | None = None
    """valueString, valueCodeableConcept.text or a titer written as "1:160", as written (read by
    :mod:`app.engine.result_text`)."""
    value_bool: bool | None = None
    interpretation: tuple[Coding, ...] = ()
    ref_low: Quantity | None = None
    ref_high: Quantity | None = None
    when_latest: date | None = None
    """Set when the effective date is partial ("2026-05"): the last day it may be (``when`` is
    the first). Such a result cannot be placed inside or outside a window by one day."""


@dataclass(frozen=True, slots=True)
class Condition:
    ref: str
    codes: tuple[Coding, ...]
    text: str
    onset: date | None
    recorded: date | None
    abated: date | None
    clinical_status: str | None
    verification: str | None = None
    """verificationStatus code; None when not recorded (read as confirmed)."""
    displays: tuple[str, ...] = ()
    """Every coding display, beside ``text``: what the text safety net reads."""
    latest: date | None = None
    """The last day ``when`` can stand for when it is a partial date ("2024", "2024-05")."""

    @property
    def when(self) -> date | None:
        return self.onset or self.recorded

    @property
    def tentative(self) -> bool:
        """Recorded as unconfirmed, provisional or differential: not a diagnosis yet."""
        return self.verification in TENTATIVE

    def active_on(self, day: date) -> bool:
        """Active on ``day``: a recorded abatement decides (an illness that abated later was
        still active then); otherwise the clinical status as recorded. A diagnosis recorded
        without any clinical status (common for encounter diagnoses) counts as active: it was
        never marked resolved, and an exclusion must not be missed for want of a status."""
        if self.abated is not None:
            return self.abated > day
        return self.clinical_status in {None, "active", "recurrence", "relapse"}


@dataclass(frozen=True, slots=True)
class Dose:
    """One dosage step as written: the amount per administration and how often.

    ``value`` is the amount (the upper bound of a ``doseRange``, whose lower bound is ``low``);
    ``frequency`` administrations every ``period`` ``period_unit`` (``frequency_max`` /
    ``period_max`` when the timing gives a range). ``frequency`` is None when the dosage says
    nothing about how often (no timing): the daily dose is then unknown, never "once daily".
    ``start`` / ``end`` bound the step (``timing.repeat.boundsPeriod`` / ``boundsDuration``);
    ``sequence`` orders the steps of a taper (steps sharing one are taken together)."""

    value: float
    unit: str
    frequency: int | None = 1
    period: float = 1.0
    period_unit: str = "d"
    low: float | None = None
    frequency_max: int | None = None
    period_max: float | None = None
    start: date | None = None
    end: date | None = None
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class Strength:
    """Amount of the active ingredient per unit of the product (``Medication.ingredient.strength``):
    ``mg`` per ``per`` of ``per_unit`` ("1" for a tablet / capsule / unit dose, "mL" for a
    liquid)."""

    mg: float
    per: float = 1.0
    per_unit: str = "1"


@dataclass(frozen=True, slots=True)
class MedicationUse:
    """A MedicationRequest, MedicationStatement or MedicationAdministration."""

    ref: str
    codes: tuple[Coding, ...]
    text: str
    status: str
    start: date | None
    end: date | None
    routes: tuple[Coding, ...] = ()
    doses: tuple[Dose, ...] = ()
    strengths: tuple[Strength, ...] = ()
    """Per-unit strengths from a Medication resource's ingredients, when the record has them."""
    kind: str = "MedicationRequest"
    intent: str | None = None
    labels: tuple[str, ...] = ()
    """Every name the resource gives the drug (code text, coding displays, route and dose-form
    words), lower-cased: what a review of an unrecognised entry can go by."""
    unresolved: str | None = None
    """A ``medicationReference`` that points to no Medication in the record: the drug is unknown."""
    dosage_problem: str | None = None
    """Why the dosage steps cannot be read as one regimen (e.g. several steps without order)."""
    replaces: str | None = None
    """The order this one renews or changes (``MedicationRequest.priorPrescription``)."""

    @property
    def is_order(self) -> bool:
        """A prescription actually made (not a plan, proposal or option), or a record of use."""
        return self.intent not in {"plan", "proposal", "option"}

    def is_current(self, as_of: date) -> bool:
        """In use at the as-of date: started by then and not known to have ended before it."""
        if self.start is None or self.start > as_of:
            return False
        if self.end is not None:
            return self.end >= as_of
        return self.status in {"active", "on-hold", "intended", "in-progress"}


@dataclass(frozen=True, slots=True)
class Immunization:
    ref: str
    codes: tuple[Coding, ...]
    text: str
    when: date | None
    """None when the date is only written as text (occurrenceString): present, not placeable."""
    displays: tuple[str, ...] = ()
    latest: date | None = None
    """The last day ``when`` can stand for when it is a partial date ("2024", "2024-05")."""


@dataclass(frozen=True, slots=True)
class Procedure:
    ref: str
    codes: tuple[Coding, ...]
    text: str
    when: date | None
    """performedDateTime, or the start of performedPeriod."""
    end: date | None = None
    """The end of performedPeriod: the procedure counts over the whole period."""
    status: str | None = None
    displays: tuple[str, ...] = ()
    latest: date | None = None
    """The latest day it may have been going on when the record does not say exactly: the end of
    a partial date's span, or ``date.max`` for a period with a start and no end."""

    def ongoing(self) -> bool:
        """In progress by its status: happening at the as-of date whatever its start."""
        return self.status == "in-progress"


@dataclass(frozen=True, slots=True)
class Allergy:
    ref: str
    codes: tuple[Coding, ...]
    text: str
    when: date | None
    criticality: str | None
    severe_reaction: bool
    manifestations: tuple[Coding, ...]
    clinical_status: str | None = None
    verification: str | None = None
    displays: tuple[str, ...] = ()
    """Code and substance displays, beside ``text``."""
    manifestation_text: tuple[str, ...] = ()
    """Reaction manifestation texts and displays."""

    @property
    def tentative(self) -> bool:
        return self.verification in TENTATIVE


@dataclass(frozen=True, slots=True)
class Patient:
    ref: str
    birth_date: date | None
    gender: str | None
    birth_latest: date | None = None
    """Set when ``birthDate`` is partial ("1956", "2008-03"): the last day the birthday may be
    (``birth_date`` is the first)."""

    def age_on(self, day: date) -> int | None:
        """Completed years on ``day``: the birthday itself counts (a Feb 29 birthday falls on
        Mar 1 in other years). With a partial birth date, the oldest the patient may be; use
        :meth:`age_range_on` to decide anything on it."""
        if self.birth_date is None:
            return None
        return _completed_years(self.birth_date, day)

    def age_range_on(self, day: date) -> tuple[int, int] | None:
        """(youngest, oldest) completed years on ``day`` the recorded birth date allows."""
        if self.birth_date is None:
            return None
        oldest = _completed_years(self.birth_date, day)
        youngest = oldest if self.birth_latest is None else _completed_years(self.birth_latest, day)
        return youngest, oldest


def _completed_years(born: date, day: date) -> int:
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A resource the reader could not read as FHIR says it should be. It is kept, not dropped:
    the checks that read its part of the record (and, when its codes could be read, only those
    its codes bear on) cannot rule it out, so they are not decided on the rest alone."""

    ref: str
    source: str | None
    """The part of the record it belongs to (a resource type, or "Medication"); None when not
    even its type is known."""
    codes: tuple[Coding, ...]
    """Its codes where they could still be read; empty means it may be about anything."""
    text: str
    problem: str

    def describe(self) -> str:
        label = f"{self.text} " if self.text else ""
        return f"{label}({self.ref or 'a resource without id'}): {self.problem}"


@dataclass(frozen=True, slots=True)
class PatientRecord:
    patient: Patient
    observations: tuple[Observation, ...] = ()
    conditions: tuple[Condition, ...] = ()
    medications: tuple[MedicationUse, ...] = ()
    immunizations: tuple[Immunization, ...] = ()
    procedures: tuple[Procedure, ...] = ()
    allergies: tuple[Allergy, ...] = ()
    incomplete: Mapping[str, str] = field(default_factory=dict)
    """Parts of the record the EHR did not fully deliver (source -> what went wrong)."""
    unreadable: tuple[Unreadable, ...] = ()
    _by_code: Mapping[Coding, tuple[int, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )

    def observations_with(self, codes: Iterable[Coding]) -> list[Observation]:
        """Observations carrying any of the codes, newest first; those of the same day in record
        order (never in the order of ``codes``, which may be a set: the same record must give
        the same answer in every process)."""
        if not self._by_code:
            object.__setattr__(self, "_by_code", _index(self.observations))
        found = sorted({p for c in codes for p in self._by_code.get(c, ())})
        # sorted() is stable with reverse=True too: same-day results keep record order.
        return sorted((self.observations[p] for p in found), key=lambda o: o.when, reverse=True)

    def as_of(self, day: date) -> "PatientRecord":
        """The record as it stood on ``day``: anything dated after it is dropped."""

        def kept(d: date | None) -> bool:
            return d is None or d <= day

        return replace(
            self,
            observations=tuple(o for o in self.observations if o.when <= day),
            conditions=tuple(c for c in self.conditions if kept(c.when) and kept(c.recorded)),
            medications=tuple(m for m in self.medications if kept(m.start)),
            immunizations=tuple(i for i in self.immunizations if kept(i.when)),
            procedures=tuple(p for p in self.procedures if kept(p.when)),
            allergies=tuple(a for a in self.allergies if kept(a.when)),
            _by_code={},
        )


def _index(observations: Iterable[Observation]) -> dict[Coding, tuple[int, ...]]:
    """Each code's observations, as positions in the record."""
    index: defaultdict[Coding, list[int]] = defaultdict(list)
    for position, obs in enumerate(observations):
        for coding in obs.codes:
            index[coding].append(position)
    return {k: tuple(v) for k, v in index.items()}
