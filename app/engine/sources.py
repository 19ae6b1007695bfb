"""Which part of the record each kind of check reads, so that a part the EHR could not deliver,
or a resource that could not be read, makes exactly the checks that depend on it unknown."""

from app.catalog.mappings import Mappings
from app.catalog.schema import (
    AgeCheck,
    AllergyCheck,
    Check,
    ConditionCheck,
    CreatinineClearanceCheck,
    DistinctDrugsCheck,
    ImmunizationCheck,
    LabFindingCheck,
    MeasurementCheck,
    MedicationCheck,
    PrednisoneDoseCheck,
    ProcedureCheck,
)

MEDICATIONS = "Medication"
"""Stands for every medication resource type (MedicationRequest, -Administration, -Statement)."""

_SOURCES: dict[type, str] = {
    AgeCheck: "Patient",
    MeasurementCheck: "Observation",
    LabFindingCheck: "Observation",
    CreatinineClearanceCheck: "Observation",
    ConditionCheck: "Condition",
    ProcedureCheck: "Procedure",
    ImmunizationCheck: "Immunization",
    AllergyCheck: "AllergyIntolerance",
    MedicationCheck: MEDICATIONS,
    PrednisoneDoseCheck: MEDICATIONS,
    DistinctDrugsCheck: MEDICATIONS,
}


def source_of(check: Check) -> str | None:
    """The record part a leaf check reads; None for groups and judgements."""
    return _SOURCES.get(type(check))


def analytes_of(check: Check) -> tuple[str, ...]:
    """The analytes a measurement-type check reads (by name)."""
    if isinstance(check, MeasurementCheck):
        extra: tuple[str, ...] = ()
        if check.percent_of is not None:
            extra = (check.percent_of.percent, check.percent_of.total)
        if check.room_air is not None:
            extra += tuple(o.analyte for o in check.room_air.supplemental_oxygen)
        return (check.analyte, *extra)
    if isinstance(check, LabFindingCheck):
        return check.analytes
    if isinstance(check, CreatinineClearanceCheck):
        return ("creatinine_clearance_cg", "creatinine", "body_weight")
    return ()


def bears_on(check: Check, codes: tuple[tuple[str, str], ...], m: Mappings) -> bool:
    """Whether a resource of the check's part with these codes could change its answer. Without
    codes, or with codes nothing here recognises, it could be anything: it bears on the check."""
    if not codes:
        return True
    if isinstance(check, ConditionCheck | ProcedureCheck | ImmunizationCheck):
        return any(m.code_sets[name].matcher.matches_any(codes) for name in check.codes)
    if isinstance(check, MeasurementCheck | LabFindingCheck | CreatinineClearanceCheck):
        return any(c in m.analytes[name].codes for name in analytes_of(check) for c in codes)
    classes: tuple[str, ...] = ()
    if isinstance(check, MedicationCheck | DistinctDrugsCheck):
        classes = check.classes
    elif isinstance(check, PrednisoneDoseCheck):
        classes = (check.glucocorticoids, *check.min_waived_with)
    if classes:
        ingredient = m.ingredient_of(codes)
        return ingredient is None or any(m.in_class(ingredient, codes, c) for c in classes)
    return True
