"""Build real FHIR R4 resources from the compact shorthand of the golden case files.

Shorthand (each list item has exactly one key):
  lab:          {code, system=loinc, date, value?, unit?, comparator?, value_code?,
                 value_system=snomed, value_string?, value_bool?, interpretation?, ref_low?,
                 ref_high?, ref_unit?, status=final,
                 components?: [{code, system=loinc, value, unit}], id?}
  condition:    {code, system=snomed, onset?, recorded?, abated?, status=active,
                 verification=confirmed, id?}
  medication:   {code, system=rxnorm, resource=MedicationRequest, status=active, start, end?,
                 route? (oral|intravenous), dose?, dose_unit=mg, frequency=1, period=1,
                 period_unit=d, id?}
  immunization: {code, system=cvx, date, status=completed, id?}
  procedure:    {code, system=snomed, date?, status=completed, id?}
  allergy:      {code, system=rxnorm, criticality?, severity?, manifestation?, date?,
                 verification=confirmed, id?}
  resource:     any FHIR resource, as is
"""

from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import yaml

Json = dict[str, Any]
_ROOT = Path(__file__).resolve().parent.parent
SYSTEMS: dict[str, str] = {
    k: v.replace("{canonical}", "https://trialscreen.org/fhir")
    for k, v in yaml.safe_load((_ROOT / "fhir_mappings" / "systems.yaml").read_text()).items()
}
_ROUTES = {"oral": "26643006", "intravenous": "47625008"}
_ids = count(1)


def _coding(code: str, system: str) -> Json:
    return {"coding": [{"system": SYSTEMS.get(system, system), "code": str(code)}]}


def _quantity(value: float, unit: str | None, comparator: str | None = None) -> Json:
    q: Json = {"value": value}
    if unit is not None:
        q |= {"unit": unit, "system": SYSTEMS["ucum"], "code": unit}
    if comparator:
        q["comparator"] = comparator
    return q


def _id(spec: Json, prefix: str) -> str:
    return str(spec.get("id") or f"{prefix}{next(_ids)}")


def lab(spec: Json) -> Json:
    obs: Json = {
        "resourceType": "Observation",
        "id": _id(spec, "obs"),
        "status": spec.get("status", "final"),
        "code": _coding(spec["code"], spec.get("system", "loinc")),
        "subject": {"reference": "Patient/p"},
        "effectiveDateTime": str(spec["date"]),
    }
    _value_into(obs, spec)
    if "interpretation" in spec:
        obs["interpretation"] = [_coding(spec["interpretation"], "v3-interpretation")]
    ref: Json = {}
    unit = spec.get("ref_unit", spec.get("unit"))
    if "ref_low" in spec:
        ref["low"] = _quantity(spec["ref_low"], unit)
    if "ref_high" in spec:
        ref["high"] = _quantity(spec["ref_high"], unit)
    if ref:
        obs["referenceRange"] = [ref]
    if "components" in spec:
        obs["component"] = []
        for c in spec["components"]:
            comp: Json = {"code": _coding(c["code"], c.get("system", "loinc"))}
            _value_into(comp, c)
            obs["component"].append(comp)
    return obs


def _value_into(target: Json, spec: Json) -> None:
    if "value" in spec:
        if isinstance(spec["value"], int) and spec.get("unit") is None and spec.get("integer"):
            target["valueInteger"] = spec["value"]
        else:
            target["valueQuantity"] = _quantity(
                spec["value"], spec.get("unit"), spec.get("comparator")
            )
    if "value_code" in spec:
        target["valueCodeableConcept"] = _coding(
            spec["value_code"], spec.get("value_system", "snomed")
        )
    if "value_string" in spec:
        target["valueString"] = spec["value_string"]
    if "value_bool" in spec:
        target["valueBoolean"] = spec["value_bool"]


def condition(spec: Json) -> Json:
    res: Json = {
        "resourceType": "Condition",
        "id": _id(spec, "cond"),
        "clinicalStatus": _coding(
            spec.get("status", "active"),
            "http://terminology.hl7.org/CodeSystem/condition-clinical",
        ),
        "verificationStatus": _coding(
            spec.get("verification", "confirmed"),
            "http://terminology.hl7.org/CodeSystem/condition-ver-status",
        ),
        "code": _coding(spec["code"], spec.get("system", "snomed")),
        "subject": {"reference": "Patient/p"},
    }
    for key, field in (("onset", "onsetDateTime"), ("recorded", "recordedDate")):
        if key in spec:
            res[field] = str(spec[key])
    if "abated" in spec:
        res["abatementDateTime"] = str(spec["abated"])
    return res


def medication(spec: Json) -> Json:
    kind = spec.get("resource", "MedicationRequest")
    res: Json = {
        "resourceType": kind,
        "id": _id(spec, "med"),
        "status": spec.get("status", "active"),
        "medicationCodeableConcept": _coding(spec["code"], spec.get("system", "rxnorm")),
        "subject": {"reference": "Patient/p"},
    }
    if kind == "MedicationRequest":
        res["intent"] = "order"
        res["authoredOn"] = str(spec["start"])
        if "end" in spec:
            res["dispenseRequest"] = {"validityPeriod": {"end": str(spec["end"])}}
    else:
        period: Json = {"start": str(spec["start"])}
        if "end" in spec:
            period["end"] = str(spec["end"])
        res["effectivePeriod"] = period
    dosage: Json = {}
    if "route" in spec:
        dosage["route"] = _coding(_ROUTES[spec["route"]], "snomed")
    if "dose" in spec:
        dosage["doseAndRate"] = [
            {"doseQuantity": _quantity(spec["dose"], spec.get("dose_unit", "mg"))}
        ]
        dosage["timing"] = {
            "repeat": {
                "frequency": spec.get("frequency", 1),
                "period": spec.get("period", 1),
                "periodUnit": spec.get("period_unit", "d"),
            }
        }
    if dosage:
        res["dosageInstruction" if kind == "MedicationRequest" else "dosage"] = [dosage]
    return res


def immunization(spec: Json) -> Json:
    return {
        "resourceType": "Immunization",
        "id": _id(spec, "imm"),
        "status": spec.get("status", "completed"),
        "vaccineCode": _coding(str(spec["code"]), spec.get("system", "cvx")),
        "patient": {"reference": "Patient/p"},
        "occurrenceDateTime": str(spec["date"]),
    }


def procedure(spec: Json) -> Json:
    res: Json = {
        "resourceType": "Procedure",
        "id": _id(spec, "proc"),
        "status": spec.get("status", "completed"),
        "code": _coding(spec["code"], spec.get("system", "snomed")),
        "subject": {"reference": "Patient/p"},
    }
    if "date" in spec:
        res["performedDateTime"] = str(spec["date"])
    return res


def allergy(spec: Json) -> Json:
    res: Json = {
        "resourceType": "AllergyIntolerance",
        "id": _id(spec, "alg"),
        "verificationStatus": _coding(
            spec.get("verification", "confirmed"),
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
        ),
        "code": _coding(spec["code"], spec.get("system", "rxnorm")),
        "patient": {"reference": "Patient/p"},
    }
    if "criticality" in spec:
        res["criticality"] = spec["criticality"]
    reaction: Json = {}
    if "severity" in spec:
        reaction["severity"] = spec["severity"]
    if "manifestation" in spec:
        reaction["manifestation"] = [_coding(spec["manifestation"], "snomed")]
    if reaction:
        reaction.setdefault("manifestation", [{"text": "reaction"}])
        res["reaction"] = [reaction]
    if "date" in spec:
        res["recordedDate"] = str(spec["date"])
    return res


_BUILDERS = {
    "lab": lab,
    "condition": condition,
    "medication": medication,
    "immunization": immunization,
    "procedure": procedure,
    "allergy": allergy,
}


def resources(items: list[Json]) -> Iterator[Json]:
    for item in items:
        ((kind, spec),) = item.items()
        yield spec if kind == "resource" else _BUILDERS[kind](spec)


def bundle(patient: Json, items: list[Json]) -> Json:
    pat = {"resourceType": "Patient", "id": "p", **patient}
    entries = [pat, *resources(items)]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"urn:uuid:{r['resourceType']}-{r.get('id')}", "resource": r}
            for r in entries
        ],
    }
