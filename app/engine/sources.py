"""Which part of the record each kind of check reads, so that a part the EHR could not deliver
makes exactly the checks that depend on it unknown."""

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
