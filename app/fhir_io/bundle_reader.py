"""Read one patient's record out of a FHIR R4 Bundle (already JSON-decoded) into the lean record.

Only the fields the engine uses are read; everything else is left alone, so a full Synthea record
of thousands of resources reads in milliseconds. A resource with a field of the wrong shape does
not sink the record: it is kept as :class:`Unreadable` (with its path and whatever codes could be
read), and the checks it may bear on are left undecided. Only a Bundle that is not a Bundle, or
that does not hold exactly one Patient, is refused.
"""

import calendar
import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

import orjson

from app.core.errors import InvalidInput, UnprocessableInput
from app.core.fhir_dates import parse_fhir_date, parse_fhir_date_range
from app.engine.record import (
    Allergy,
    Coding,
    Condition,
    Dose,
    Immunization,
    MedicationUse,
    Observation,
    Patient,
    PatientRecord,
    Procedure,
    Quantity,
    Strength,
    Unreadable,
)
from app.engine.sources import MEDICATIONS

_UCUM = "http://unitsofmeasure.org"
_OBSERVATION_COUNTS = {"final", "amended", "corrected"}
_CONDITION_VOID = {"refuted", "entered-in-error"}
_MEDICATION_VOID = {"entered-in-error", "cancelled", "draft", "not-taken", "not-done"}
_MEDICATION_USES = {"MedicationRequest", "MedicationStatement", "MedicationAdministration"}
_EVENT_VOID = {"entered-in-error", "not-done", "preparation", "cancelled"}

Json = dict[str, Any]


class _Reader:
    """Field access with the path of the resource being read, for error messages. The path is
    put together only when a message needs it: most resources read without one."""

    __slots__ = ("_key", "_parent", "_where", "ref")

    def __init__(self, where: str, ref: str = "") -> None:
        self._where: str | None = where
        self._parent: _Reader | None = None
        self._key: str | int = ""
        self.ref = ref
        """How the results cite the resource: ``Type/id``, else the entry's fullUrl."""

    @classmethod
    def entry(cls, index: int, ref: str) -> "_Reader":
        """The reader of ``Bundle.entry[index].resource``."""
        read = cls.__new__(cls)
        read._where, read._parent, read._key, read.ref = None, None, index, ref
        return read

    @property
    def where(self) -> str:
        if self._where is None:
            parent = self._parent
            if parent is None:
                self._where = f"Bundle.entry[{self._key}].resource"
            else:
                self._where = f"{parent.where}.{self._key}"
        return self._where

    def at(self, key: str) -> "_Reader":
        read = _Reader.__new__(_Reader)
        read._where, read._parent, read._key, read.ref = None, self, key, self.ref
        return read

    def fail(self, field: str, expected: str) -> InvalidInput:
        return InvalidInput(
            f"{self.where}.{field} must be {expected}.", expression=f"{self.where}.{field}"
        )

    def obj(self, data: Json, key: str) -> Json | None:
        value = data.get(key)
        if value is None or isinstance(value, dict):
            return value
        raise self.fail(key, "an object")

    def objs(self, data: Json, key: str) -> list[Json]:
        value = data.get(key)
        if value is None:
            return []
        if isinstance(value, list):
            for v in value:
                if not isinstance(v, dict):
                    raise self.fail(key, "an array of objects")
            return value
        raise self.fail(key, "an array of objects")

    def text(self, data: Json, key: str) -> str | None:
        value = data.get(key)
        if value is None or isinstance(value, str):
            return value
        raise self.fail(key, "a string")

    def number(self, data: Json, key: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise self.fail(key, "a number")

    def day(self, data: Json, key: str) -> date | None:
        value = self.text(data, key)
        if value is None:
            return None
        try:
            return parse_fhir_date(value)
        except ValueError:
            raise self.fail(key, f"a FHIR date or dateTime (got {value!r})") from None

    def last_day(self, data: Json, key: str) -> date | None:
        """The last day a partial date ("2024", "2024-05") can stand for; None when the day is
        written (or the field is absent). ``day`` gives the first: together, the span."""
        value = self.text(data, key)
        if value is None or len(value) not in (4, 7):
            return None
        first = self.day(data, key)
        if first is None:
            return None
        month = 12 if len(value) == 4 else first.month
        return date(first.year, month, calendar.monthrange(first.year, month)[1])

    def period_start(self, data: Json, key: str) -> date | None:
        period = self.obj(data, key)
        return None if period is None else self.at(key).day(period, "start")

    def period_end(self, data: Json, key: str) -> date | None:
        period = self.obj(data, key)
        return None if period is None else self.at(key).day(period, "end")

    def concept(self, data: Json, key: str) -> tuple[tuple[Coding, ...], str]:
        """The codings that have a code, and the text (else the first coding display)."""
        cc = self.obj(data, key)
        if cc is None:
            return (), ""
        items = cc.get("coding")
        codings: list[Coding] = []
        if items is not None:
            # As objs(): every item an object, checked before any is read.
            if not isinstance(items, list):
                raise self.at(key).fail("coding", "an array of objects")
            for c in items:
                if not isinstance(c, dict):
                    raise self.at(key).fail("coding", "an array of objects")
            for c in items:
                code = c.get("code")
                if isinstance(code, str):
                    system = c.get("system")
                    if system is not None and not isinstance(system, str):
                        raise self.at(key).fail("system", "a string")
                    codings.append((system or "", code))
        label = cc.get("text")
        if label is not None and not isinstance(label, str):
            raise self.at(key).fail("text", "a string")
        if not label:
            label = next(
                (c["display"] for c in items or () if isinstance(c.get("display"), str)), ""
            )
        return tuple(codings), label

    def coded(self, data: Json, key: str) -> tuple[tuple[Coding, ...], str, tuple[str, ...]]:
        """``concept`` and ``displays`` of one CodeableConcept, read in one pass (the same
        answers and the same errors as the two)."""
        codings, label = self.concept(data, key)
        cc = data.get(key)
        if not cc:
            return codings, label, ()
        items = cc.get("coding") or ()
        return (
            codings,
            label,
            tuple(d for c in items if isinstance(d := c.get("display"), str) and d),
        )

    def displays(self, data: Json, key: str) -> tuple[str, ...]:
        """Every coding display of a CodeableConcept (``concept`` keeps only one label): an EHR
        may put the words that name the concept in any of them."""
        cc = self.obj(data, key)
        if cc is None:
            return ()
        return tuple(
            c["display"]
            for c in self.at(key).objs(cc, "coding")
            if isinstance(c.get("display"), str) and c["display"]
        )

    def concepts(self, data: Json, key: str) -> tuple[Coding, ...]:
        if data.get(key) is None:
            return ()
        out: list[Coding] = []
        inner = self.at(key)
        for cc in self.objs(data, key):
            out.extend(
                (inner.text(c, "system") or "", c["code"])
                for c in inner.objs(cc, "coding")
                if isinstance(c.get("code"), str)
            )
        return tuple(out)

    def quantity(self, data: Json, key: str) -> Quantity | None:
        q = self.obj(data, key)
        if q is None:
            return None
        number = q.get("value")
        if number is None:
            return None
        # The fields checked in the order, and with the messages, of number() and text().
        if not isinstance(number, int | float) or isinstance(number, bool):
            raise self.at(key).fail("value", "a number")
        code = q.get("code")
        if code is not None and not isinstance(code, str):
            raise self.at(key).fail("code", "a string")
        unit: str | None = code
        if code is None or q.get("system", _UCUM) != _UCUM:
            unit = q.get("unit")
            if unit is not None and not isinstance(unit, str):
                raise self.at(key).fail("unit", "a string")
        comparator = q.get("comparator")
        if comparator is not None and not isinstance(comparator, str):
            raise self.at(key).fail("comparator", "a string")
        return Quantity(float(number), unit or "", comparator)

    def status_code(self, data: Json, key: str) -> str | None:
        codings, _ = self.concept(data, key)
        return codings[0][1] if codings else None

    def day_range(self, data: Json, key: str) -> tuple[date, date] | None:
        """The first and last day a (possibly partial) date may be."""
        value = self.text(data, key)
        if value is None:
            return None
        try:
            return parse_fhir_date_range(value)
        except ValueError:
            raise self.fail(key, f"a FHIR date or dateTime (got {value!r})") from None


def read_bundle(
    bundle: Any, observation_codes: frozenset[tuple[str, str]] | None = None
) -> PatientRecord:
    """The record of the one patient the Bundle is about. With ``observation_codes`` (every
    code the loaded criteria look Observations up by: the fetch plan's), an Observation that
    provably cannot bear on any check is not decoded (see :func:`beyond_criteria`)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidInput("The 'bundle' parameter must hold a FHIR Bundle resource.")
    resources: list[tuple[_Reader, Json]] = []
    medications: dict[str, Json] = {}
    unreadable: list[Unreadable] = []
    for i, entry in enumerate(_Reader("Bundle").objs(bundle, "entry")):
        resource = entry.get("resource")
        if resource is None:
            continue
        kind = resource.get("resourceType") if isinstance(resource, dict) else None
        if not isinstance(kind, str):
            # Not even its type is known: it may be about anything the criteria read.
            problem = f"Bundle.entry[{i}].resource is not a FHIR resource (no resourceType)."
            unreadable.append(Unreadable("", None, (), "", problem))
            continue
        if kind not in _READ:
            continue  # an Encounter, a Claim...: nothing the criteria read
        if (
            kind == "Observation"
            and observation_codes is not None
            and beyond_criteria(resource, observation_codes)
        ):
            continue
        full_url = entry.get("fullUrl")
        if not isinstance(full_url, str):
            full_url = None
        rid = resource.get("id")
        ref = f"{kind}/{rid}" if isinstance(rid, str) else full_url
        # A resource with neither id nor fullUrl cannot be cited; its results carry no reference.
        resources.append((_Reader.entry(i, ref or ""), resource))
        if kind == "Medication":
            for key in (ref, full_url):
                if key:
                    medications[key] = resource

    patients = [(w, r) for w, r in resources if r["resourceType"] == "Patient"]
    if len(patients) != 1:
        found = "no Patient" if not patients else f"{len(patients)} Patients"
        raise UnprocessableInput(
            f"The Bundle must hold exactly one Patient resource; it holds {found}.",
            expression="Bundle.entry",
        )
    by_kind: dict[str, list[Any]] = {kind: [] for kind in (*_READERS, MEDICATIONS)}
    for read, resource in resources:
        kind = resource["resourceType"]
        try:
            if kind in _MEDICATION_USES:
                by_kind[MEDICATIONS].extend(_medication(read, resource, medications))
            elif (reader := _READERS.get(kind)) is not None:
                by_kind[kind].extend(reader(read, resource))
        except InvalidInput as exc:
            unreadable.append(_unreadable(read, resource, exc))
    read, resource = patients[0]
    try:
        patient = _patient(read, resource)
    except InvalidInput as exc:
        unreadable.append(_unreadable(read, resource, exc))
        gender = resource.get("gender")
        patient = Patient(read.ref, None, gender if isinstance(gender, str) else None)
    return PatientRecord(
        patient=patient,
        observations=tuple(by_kind["Observation"]),
        conditions=tuple(by_kind["Condition"]),
        medications=tuple(by_kind[MEDICATIONS]),
        immunizations=tuple(by_kind["Immunization"]),
        procedures=tuple(by_kind["Procedure"]),
        allergies=tuple(by_kind["AllergyIntolerance"]),
        unreadable=tuple(unreadable),
    )


_CODE_KEYS = {
    "Observation": "code",
    "Condition": "code",
    "Procedure": "code",
    "Immunization": "vaccineCode",
    "AllergyIntolerance": "code",
    "MedicationRequest": "medicationCodeableConcept",
    "MedicationStatement": "medicationCodeableConcept",
    "MedicationAdministration": "medicationCodeableConcept",
}


def _unreadable(read: _Reader, resource: Json, exc: InvalidInput) -> Unreadable:
    """What can still be said of a resource that failed to read: its part of the record and,
    if they are well-formed, its codes (so that only the checks they bear on are held back)."""
    kind = resource["resourceType"]
    try:
        codes, text = read.concept(resource, _CODE_KEYS.get(kind, "code"))
    except InvalidInput:
        codes, text = (), ""
    source = MEDICATIONS if kind in _MEDICATION_USES else kind
    return Unreadable(read.ref, source, codes, text, exc.message)


def _patient(read: _Reader, r: Json) -> Patient:
    born = read.day_range(r, "birthDate")
    if born is None:
        return Patient(read.ref, None, read.text(r, "gender"))
    first, last = born
    return Patient(read.ref, first, read.text(r, "gender"), last if last != first else None)


def _observations(read: _Reader, r: Json) -> list[Observation]:
    if read.text(r, "status") not in _OBSERVATION_COUNTS:
        return []
    # A partial effectiveDateTime ("2026-05") keeps its last possible day too: the engine does
    # not place it inside a window on a day the source did not write.
    span = read.day_range(r, "effectiveDateTime")
    period = read.obj(r, "effectivePeriod")
    if span is None and period is not None:
        span = read.at("effectivePeriod").day_range(period, "start")
    when = span[0] if span else read.day(r, "effectiveInstant") or read.day(r, "issued")
    if when is None:
        # A result with no date cannot be placed in any window, but it is not nothing: it may
        # be the newest result or the positive one. Kept as unreadable, it holds back the checks
        # its code bears on (unknown + review) instead of vanishing.
        raise read.fail("effective[x]", "a date (effective[x] or issued) for a final result")
    when_latest = span[1] if span and span[1] != span[0] else None
    ref = read.ref
    ranges = read.objs(r, "referenceRange")
    low = read.quantity(ranges[0], "low") if ranges else None
    high = read.quantity(ranges[0], "high") if ranges else None
    interpretation = read.concepts(r, "interpretation")
    codes, text = read.concept(r, "code")
    out = [_observation(read, r, ref, codes, text, when, interpretation, low, high, when_latest)]
    for i, component in enumerate(read.objs(r, "component")):
        sub = read.at(f"component[{i}]")
        c_codes, c_text = sub.concept(component, "code")
        c_ranges = sub.objs(component, "referenceRange")
        out.append(
            _observation(
                sub,
                component,
                ref,
                c_codes,
                c_text,
                when,
                sub.concepts(component, "interpretation"),
                sub.quantity(c_ranges[0], "low") if c_ranges else None,
                sub.quantity(c_ranges[0], "high") if c_ranges else None,
                when_latest,
            )
        )
    return out


def _observation(
    read: _Reader,
    data: Json,
    ref: str,
    codes: tuple[Coding, ...],
    text: str,
    when: date,
    interpretation: tuple[Coding, ...],
    low: Quantity | None,
    high: Quantity | None,
    when_latest: date | None = None,
) -> Observation:
    quantity = read.quantity(data, "valueQuantity")
    integer = data.get("valueInteger")
    if quantity is None and integer is not None:
        number = read.number(data, "valueInteger")
        quantity = None if number is None else Quantity(number, "")
    value_codes, value_label = read.concept(data, "valueCodeableConcept")
    value_text = read.text(data, "valueString") or value_label or None
    ratio = read.obj(data, "valueRatio")
    if ratio is not None:
        num, den = read.quantity(ratio, "numerator"), read.quantity(ratio, "denominator")
        if num is not None and den is not None:
            # A titer as a ratio; a censored one ("<1:40") keeps its comparator.
            value_text = f"{num.comparator or ''}{num.value:g}:{den.value:g}"
    flag = data.get("valueBoolean")
    if flag is not None and not isinstance(flag, bool):
        raise read.fail("valueBoolean", "true or false")
    return Observation(
        ref=ref,
        codes=codes,
        text=text,
        when=when,
        quantity=quantity,
        value_codes=value_codes,
        value_text=value_text.strip() or None if value_text else None,
        value_bool=flag,
        interpretation=interpretation,
        ref_low=low,
        ref_high=high,
        when_latest=when_latest,
    )


def _conditions(read: _Reader, r: Json) -> list[Condition]:
    verification = read.status_code(r, "verificationStatus")
    if verification in _CONDITION_VOID:
        return []
    codes, text, displays = read.coded(r, "code")
    onset = read.day(r, "onsetDateTime") or read.period_start(r, "onsetPeriod")
    # A partial abatement ("2026") is not known to have come before any day of its span: it is
    # read as the span's last day, so the condition is not ended early on a guess.
    abated = (
        read.last_day(r, "abatementDateTime")
        or read.day(r, "abatementDateTime")
        or read.period_end(r, "abatementPeriod")
    )
    if onset is not None:
        period = read.obj(r, "onsetPeriod")
        latest = read.last_day(r, "onsetDateTime") or (
            read.at("onsetPeriod").last_day(period, "start") if period else None
        )
    else:
        latest = read.last_day(r, "recordedDate")
    return [
        Condition(
            ref=read.ref,
            codes=codes,
            text=text,
            onset=onset,
            recorded=read.day(r, "recordedDate"),
            abated=abated,
            clinical_status=read.status_code(r, "clinicalStatus"),
            verification=verification,
            displays=displays,
            latest=latest,
        )
    ]


def _medication(read: _Reader, r: Json, medications: dict[str, Json]) -> list[MedicationUse]:
    kind = r["resourceType"]
    status = read.text(r, "status") or "unknown"
    if status in _MEDICATION_VOID:
        return []
    codes, text = read.concept(r, "medicationCodeableConcept")
    labels = _concept_words(read, r, "medicationCodeableConcept")
    strengths: tuple[Strength, ...] = ()
    unresolved = None
    reference = read.obj(r, "medicationReference")
    if reference is not None:
        m_read = read.at("medicationReference")
        target_ref = m_read.text(reference, "reference")
        target = None if target_ref is None else _resolve(target_ref, r, medications)
        labels += tuple(x.lower() for x in (m_read.text(reference, "display"),) if x)
        text = text or m_read.text(reference, "display") or ""
        if target is None:
            # Not in the record (or only a display): the drug is unknown, not absent.
            unresolved = target_ref or "a medicationReference without a reference"
        else:
            codes, text = m_read.concept(target, "code")
            labels += _concept_words(m_read, target, "code")
            labels += _concept_words(m_read, target, "form")
            strengths = _strengths(m_read, target)
            if not codes:
                # A compounded or local product known only by its ingredients.
                for i, ing in enumerate(m_read.objs(target, "ingredient")):
                    item_codes, item_text = m_read.at(f"ingredient[{i}]").concept(
                        ing, "itemCodeableConcept"
                    )
                    codes += item_codes
                    text = text or item_text
                    labels += tuple(x for x in (item_text.lower(),) if x)
    start = (
        read.day(r, "authoredOn")
        or read.day(r, "effectiveDateTime")
        or read.period_start(r, "effectivePeriod")
        or read.day(r, "dateAsserted")
    )
    end = read.period_end(r, "effectivePeriod")
    routes: tuple[Coding, ...] = ()
    steps: list[tuple[Dose, float | None]] = []
    problem = None
    key = "dosageInstruction" if kind == "MedicationRequest" else "dosage"
    for i, dosage in enumerate(_dosages(read, r, key)):
        d_read = read.at(f"{key}[{i}]")
        d_routes, d_labels, dose, days = _dosage(d_read, dosage, kind == "MedicationAdministration")
        routes += d_routes
        labels += d_labels
        if dose is None:
            problem = problem or f"{key}[{i}] gives no dose"
        else:
            steps.append((dose, days))
    doses = _bounded(steps, start)
    if start is None and doses and all(d.start is not None for d in doses):
        start = min(d.start for d in doses if d.start is not None)
    if end is None and doses and all(d.end is not None for d in doses):
        # The dosage's bounds end the exposure (timing.repeat.boundsPeriod / boundsDuration).
        end = max(d.end for d in doses if d.end is not None)
    dispense = read.obj(r, "dispenseRequest")
    if end is None and dispense is not None:
        end = read.period_end(dispense, "validityPeriod")
    return [
        MedicationUse(
            read.ref,
            codes,
            text,
            status,
            start,
            end,
            routes,
            tuple(doses),
            strengths,
            kind=kind,
            intent=read.text(r, "intent"),
            labels=tuple(dict.fromkeys(x for x in labels if x)),
            unresolved=unresolved,
            dosage_problem=problem,
            replaces=_reference(read, r, "priorPrescription"),
        )
    ]


def _reference(read: _Reader, r: Json, key: str) -> str | None:
    target = read.obj(r, key)
    return None if target is None else read.at(key).text(target, "reference")


def _concept_words(read: _Reader, data: Json, key: str) -> tuple[str, ...]:
    """The text and every coding display of a CodeableConcept, lower-cased."""
    cc = read.obj(data, key)
    if cc is None:
        return ()
    inner = read.at(key)
    out = [inner.text(cc, "text")]
    out += [inner.text(c, "display") for c in inner.objs(cc, "coding")]
    return tuple(x.strip().lower() for x in out if x and x.strip())


def _dosages(read: _Reader, r: Json, key: str) -> list[Json]:
    """The dosage elements, whatever the resource type: MedicationRequest.dosageInstruction and
    MedicationStatement.dosage are arrays, MedicationAdministration.dosage is one object."""
    value = r.get(key)
    if isinstance(value, dict):
        return [value]
    return read.objs(r, key)


def _resolve(reference: str, owner: Json, medications: dict[str, Json]) -> Json | None:
    """The Medication a reference points to: contained ("#id"), by fullUrl, or relative."""
    if reference.startswith("#"):
        contained = owner.get("contained")
        if isinstance(contained, list):
            for item in contained:
                if isinstance(item, dict) and f"#{item.get('id')}" == reference:
                    return item
        return None
    return medications.get(reference) or medications.get("/".join(reference.split("/")[-2:]))


_MG = {"mg": 1.0, "g": 1000.0, "ug": 0.001, "mcg": 0.001}
_ML = {"mL": 1.0, "ml": 1.0, "L": 1000.0}
_ONE_UNIT = {"1", "", "{tbl}", "{tablet}", "{capsule}", "{cap}", "tablet", "tab", "capsule"}


def _strengths(read: _Reader, medication: Json) -> tuple[Strength, ...]:
    """Strength per tablet (mg per 1 unit) or per volume (e.g. 5 mg / 5 mL) of a single-ingredient
    Medication; none for a combination product, whose strengths belong to different drugs."""
    out = []
    ingredients = read.objs(medication, "ingredient")
    for i, ing in enumerate(ingredients):
        inner = read.at(f"ingredient[{i}]")
        ratio = inner.obj(ing, "strength")
        if ratio is None:
            continue
        num = inner.at("strength").quantity(ratio, "numerator")
        den = inner.at("strength").quantity(ratio, "denominator")
        if num is None or num.unit not in _MG:
            continue
        mg = num.value * _MG[num.unit]
        if den is None or (den.unit in _ONE_UNIT and den.value > 0):
            out.append(Strength(mg / (den.value if den else 1.0)))
        elif den.unit in _ML and den.value > 0:
            out.append(Strength(mg, den.value * _ML[den.unit], "mL"))
    active = [ing for ing in ingredients if ing.get("isActive") is not False]
    return tuple(out) if len(active) <= 1 else ()


_GTS = {
    "",
    "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation",
    "http://hl7.org/fhir/v3/GTSAbbreviation",
}
"""Systems of ``Timing.code`` read as HL7 v3 GTS abbreviations (R4 timing-abbreviation)."""
_TIMING_CODES: dict[str, tuple[int, float, str]] = {
    "QD": (1, 1, "d"),
    "AM": (1, 1, "d"),
    "PM": (1, 1, "d"),
    "BED": (1, 1, "d"),
    "HS": (1, 1, "d"),  # EventTiming "at bedtime", sent as a Timing.code by some EHRs
    "BID": (2, 1, "d"),
    "TID": (3, 1, "d"),
    "QID": (4, 1, "d"),
    "QOD": (1, 2, "d"),
    "Q1H": (1, 1, "h"),
    "Q2H": (1, 2, "h"),
    "Q3H": (1, 3, "h"),
    "Q4H": (1, 4, "h"),
    "Q6H": (1, 6, "h"),
    "Q8H": (1, 8, "h"),
    "Q12H": (1, 12, "h"),
    "WK": (1, 1, "wk"),
    "MO": (1, 1, "mo"),
}
"""GTS abbreviation -> (frequency, period, periodUnit)."""
_DURATION_DAYS = {"d": 1.0, "wk": 7.0, "mo": 30.0, "a": 365.0, "h": 1 / 24}


def _dosage(
    read: _Reader, dosage: Json, administration: bool
) -> tuple[tuple[Coding, ...], tuple[str, ...], Dose | None, float | None]:
    """Routes, route words, the dose and its boundsDuration in days of one Dosage (or of
    MedicationAdministration.dosage, which has ``dose`` and no timing: one administration,
    not a regimen)."""
    routes, _ = read.concept(dosage, "route")
    labels = _concept_words(read, dosage, "route")
    low = high = None
    for i, dr in enumerate(read.objs(dosage, "doseAndRate")):
        high = read.at(f"doseAndRate[{i}]").quantity(dr, "doseQuantity")
        if high is None and (dose_range := read.at(f"doseAndRate[{i}]").obj(dr, "doseRange")):
            # A range: the upper bound is checked against a maximum, the lower one against a
            # minimum; a range without an upper bound cannot be checked against anything.
            inner = read.at(f"doseAndRate[{i}].doseRange")
            low, high = inner.quantity(dose_range, "low"), inner.quantity(dose_range, "high")
            if low is not None and high is not None and low.unit != high.unit:
                low = high = None
        if high is not None:
            break
    high = high or read.quantity(dosage, "dose")
    if high is None:
        return routes, labels, None, None
    low_value = low.value if low is not None else None
    if dosage.get("asNeededBoolean") is True or dosage.get("asNeededCodeableConcept"):
        low_value = 0.0  # as needed: some days none is taken
    timing = None if administration else read.obj(dosage, "timing")
    repeat = read.obj(timing, "repeat") if timing else None
    t_read = read.at("timing.repeat")
    frequency: int | None = None
    period, unit, frequency_max, period_max = 1.0, "d", None, None
    if repeat is not None and read.number(repeat, "period") is not None:
        frequency = int(t_read.number(repeat, "frequency") or 1)
        period = t_read.number(repeat, "period") or 1.0
        unit = t_read.text(repeat, "periodUnit") or ""
        fmax, pmax = t_read.number(repeat, "frequencyMax"), t_read.number(repeat, "periodMax")
        frequency_max = int(fmax) if fmax is not None else None
        period_max = pmax
    elif timing is not None and (code := _timing_code(read.at("timing"), timing)) is not None:
        frequency, period, unit = code
    elif repeat is not None and (times := _times_a_day(repeat)) > 0:
        frequency = times  # "when" / "timeOfDay" without a period: that many times a day
    start = end = None
    bound_days = None
    if repeat is not None:
        start = t_read.period_start(repeat, "boundsPeriod")
        end = t_read.period_end(repeat, "boundsPeriod")
        duration = t_read.quantity(repeat, "boundsDuration")
        if duration is not None and duration.unit in _DURATION_DAYS:
            bound_days = duration.value * _DURATION_DAYS[duration.unit]
    sequence = read.number(dosage, "sequence")
    dose = Dose(
        high.value,
        high.unit,
        frequency,
        period,
        unit,
        low=low_value,
        frequency_max=frequency_max,
        period_max=period_max,
        start=start,
        end=end,
        sequence=int(sequence) if sequence is not None else None,
    )
    return routes, labels, dose, bound_days


def _times_a_day(repeat: Json) -> int:
    return max(
        len(v) if isinstance(v, list) else 0 for v in (repeat.get("when"), repeat.get("timeOfDay"))
    )


def _timing_code(read: _Reader, timing: Json) -> tuple[int, float, str] | None:
    codings, _ = read.concept(timing, "code")
    for system, code in codings:
        if system in _GTS and code.upper() in _TIMING_CODES:
            return _TIMING_CODES[code.upper()]
    return None


def _bounded(steps: list[tuple[Dose, float | None]], start: date | None) -> list[Dose]:
    """Give boundsDuration steps their dates: the first from the order's start, each later
    step (by sequence) from the end of the one before."""
    if all(days is None for _, days in steps):
        return [d for d, _ in steps]
    out = []
    cursor = start
    for d, days in sorted(steps, key=lambda s: s[0].sequence or 0):
        begin = d.start or cursor
        if days is not None and begin is not None and d.end is None:
            d = replace(d, start=begin, end=begin + timedelta(days=max(days - 1, 0)))
        cursor = d.end + timedelta(days=1) if d.end is not None else None
        out.append(d)
    return out


def _immunizations(read: _Reader, r: Json) -> list[Immunization]:
    if read.text(r, "status") in _EVENT_VOID:
        return []
    # Only occurrenceString: the vaccine was given, when is not machine-readable. It is kept
    # undated (a check with a window then asks for review), never dropped as if absent.
    when = read.day(r, "occurrenceDateTime") or read.day(r, "recorded")
    key = "occurrenceDateTime" if r.get("occurrenceDateTime") is not None else "recorded"
    codes, text, displays = read.coded(r, "vaccineCode")
    return [Immunization(read.ref, codes, text, when, displays, read.last_day(r, key))]


def _procedures(read: _Reader, r: Json) -> list[Procedure]:
    status = read.text(r, "status")
    if status in _EVENT_VOID:
        return []
    when = read.day(r, "performedDateTime") or read.period_start(r, "performedPeriod")
    end = read.period_end(r, "performedPeriod")
    codes, text, displays = read.coded(r, "code")
    # The latest day it may have been going on, when the record does not say exactly: the end of
    # a partial date's span, or (a period with a start and no end) any day up to now.
    latest = read.last_day(r, "performedDateTime")
    if (period := read.obj(r, "performedPeriod")) is not None:
        inner = read.at("performedPeriod")
        spans = [d for d in (inner.last_day(period, "start"), inner.last_day(period, "end")) if d]
        if when is not None and period.get("end") is None:
            spans.append(date.max)
        latest = max(spans, default=None)
    return [Procedure(read.ref, codes, text, when, end, status, displays, latest)]


def _allergies(read: _Reader, r: Json) -> list[Allergy]:
    if read.status_code(r, "verificationStatus") in _CONDITION_VOID:
        return []
    codes, text = read.concept(r, "code")
    reactions = read.objs(r, "reaction")
    manifestations = tuple(
        m for x in reactions for m in read.at("reaction").concepts(x, "manifestation")
    )
    substances = tuple(c for x in reactions for c in read.concept(x, "substance")[0])
    reaction = read.at("reaction")
    manifestation_text: list[str] = []
    displays = list(read.displays(r, "code"))
    for x in reactions:
        for cc in reaction.objs(x, "manifestation"):
            manifestation_text.extend(_labels(reaction.at("manifestation"), cc))
        if (substance := reaction.obj(x, "substance")) is not None:
            displays.extend(_labels(reaction.at("substance"), substance))
    return [
        Allergy(
            ref=read.ref,
            codes=codes + substances,
            text=text,
            when=read.day(r, "onsetDateTime") or read.day(r, "recordedDate"),
            criticality=read.text(r, "criticality"),
            severe_reaction=any(x.get("severity") == "severe" for x in reactions),
            manifestations=manifestations,
            clinical_status=read.status_code(r, "clinicalStatus"),
            verification=read.status_code(r, "verificationStatus"),
            displays=tuple(displays),
            manifestation_text=tuple(manifestation_text),
        )
    ]


def _labels(read: _Reader, cc: Json) -> list[str]:
    """The text and every coding display of one CodeableConcept."""
    text = read.text(cc, "text")
    displays = [c["display"] for c in read.objs(cc, "coding") if isinstance(c.get("display"), str)]
    return ([text] if text else []) + displays


_READERS: dict[str, Callable[[_Reader, Json], list[Any]]] = {
    "Observation": _observations,
    "Condition": _conditions,
    "Immunization": _immunizations,
    "Procedure": _procedures,
    "AllergyIntolerance": _allergies,
}


_READ = frozenset({"Patient", "Medication", *_MEDICATION_USES, *_READERS})
"""The resource types read into the record; a Bundle's others are passed over."""


def record_digest(bundle: dict[str, Any]) -> str:
    """SHA-256 of the record as received (keys sorted), kept with each screening."""
    return hashlib.sha256(orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS)).hexdigest()


_LOINC = "http://loinc.org"


def beyond_criteria(resource: Json, wanted: frozenset[tuple[str, str]]) -> bool:
    """Whether an Observation cannot bear on any check: its code and every component's code
    carry a LOINC coding (so it is not a result known only by its name, which the name safety
    net reads) and no coding the criteria look results up by (so no check finds it, and were it
    unreadable it would hold none back). Anything shaped otherwise is read as usual."""
    components = resource.get("component") or []
    if not isinstance(components, list):
        return False
    if not _coded_beyond(resource, wanted):
        return False
    return all(_coded_beyond(part, wanted) for part in components)


def _coded_beyond(part: Any, wanted: frozenset[tuple[str, str]]) -> bool:
    """Whether one code (an Observation's or a component's) has a LOINC coding and no coding
    the criteria look results up by, every coding well-formed."""
    if not isinstance(part, dict):
        return False
    concept = part.get("code")
    codings = concept.get("coding") if isinstance(concept, dict) else None
    if not isinstance(codings, list) or not codings:
        return False
    loinc = False
    for coding in codings:
        if not isinstance(coding, dict):
            return False
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str) or (system, code) in wanted:
            return False
        if system == _LOINC:
            loinc = True
    return loinc
