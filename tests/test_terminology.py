"""The terminology model: published value set expansions (fhir_mappings/valuesets/) expanded
into the code sets with their exclusions, WHO ICD-10 read through the ICD-10-CM rows, HL7 v3
routes beside SNOMED CT routes, UCUM units compared by meaning, and the lint on missing or empty
value sets."""

import json
import re
import shutil
from pathlib import Path

import pytest

from app.catalog.loader import Catalog, load_catalog
from app.catalog.mappings import ICD10_WHO, ICD10CM, icd_code, ucum_ratio
from app.catalog.publication import value_set
from app.core.errors import CatalogError
from app.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SNOMED = "http://snomed.info/sct"
PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
V3_ROUTE = "http://terminology.hl7.org/CodeSystem/v3-RouteOfAdministration"
VALUESETS = ROOT / "fhir_mappings" / "valuesets"


def _matches(catalog: Catalog, code_set: str, system: str, code: str) -> bool:
    return catalog.mappings.code_sets[code_set].matcher.matches(system, code)


# --- expansions --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code_set", "system", "code"),
    [
        ("malignancy", SNOMED, "254637007"),  # Non-small cell lung cancer
        ("heart_failure", ICD10CM, "I11.0"),  # Hypertensive heart disease with heart failure
        ("myocardial_infarction", SNOMED, "1204152002"),  # Acute inferior NSTEMI
        ("cns_involvement", SNOMED, "230698000"),  # Lacunar infarction
        ("cns_involvement", ICD10CM, "G40.A09"),  # Absence epilepsy (Epilepsy expansion)
        ("major_organ_transplant_status", SNOMED, "213151004"),  # Heart transplant failure
        ("hematopoietic_transplant", PCS, "30243X3"),  # Allogeneic unrelated cord blood
        ("dialysis", SNOMED, "233575001"),  # Intermittent hemodialysis
        ("transfusion_rbc", PCS, "30233N0"),  # Autologous red blood cells
        ("hiv_infection", ICD10CM, "B97.35"),  # HIV-2 as the cause of disease
    ],
)
def test_a_code_only_the_expansion_holds_now_matches(
    catalog: Catalog, code_set: str, system: str, code: str
) -> None:
    assert _matches(catalog, code_set, system, code)
    hand_listed = {
        (catalog.mappings.systems[r.system], r.code)
        for r in catalog.mappings.code_sets[code_set].rows
    }
    assert (system, code) not in hand_listed  # it comes from a value set, not a hand row


@pytest.mark.parametrize(
    ("code_set", "system", "code", "why"),
    [
        (
            "malignancy",
            SNOMED,
            "402507001",
            "basal cell carcinoma: excepted tumour, not malignancy",
        ),
        ("malignancy", SNOMED, "838352004", "adenocarcinoma in situ is not a malignancy"),
        ("sle", SNOMED, "54912002", "drug-induced lupus is not SLE"),
        ("sle", SNOMED, "239888002", "lupus panniculitis is cutaneous LE"),
        ("sle", ICD10CM, "M32.0", "drug-induced SLE"),
        ("myocardial_infarction", SNOMED, "32574007", "a past MI is not an acute event"),
        ("cns_involvement", ICD10CM, "G45.9", "a TIA is not a stroke"),
        ("cns_involvement", ICD10CM, "G31.84", "mild cognitive impairment is not dementia"),
        ("major_organ_transplant_status", ICD10CM, "Z94.7", "corneal graft is not a major organ"),
        ("major_organ_transplant_status", ICD10CM, "Z94.5", "skin graft is not a major organ"),
        ("kidney_transplant", SNOMED, "175899003", "autotransplant is not a graft"),
        ("dialysis", "http://www.ama-assn.org/go/cpt", "90997", "hemoperfusion is not dialysis"),
        ("hematopoietic_transplant", PCS, "30233AZ", "embryonic stem cells are not HSCT"),
        ("lactation", SNOMED, "169643005", "an intention to breastfeed is not lactation"),
    ],
)
def test_an_excluded_code_does_not_match(
    catalog: Catalog, code_set: str, system: str, code: str, why: str
) -> None:
    assert not _matches(catalog, code_set, system, code), why


def test_excepted_tumours_take_the_skin_and_prostate_codes_the_expansion_adds(
    catalog: Catalog,
) -> None:
    # what malignancy leaves out must land in malignancy_excepted (review), not in "no record"
    assert _matches(catalog, "malignancy_excepted", SNOMED, "402507001")
    assert _matches(catalog, "malignancy_excepted", SNOMED, "399490008")  # prostate adenoca
    # skin cancer of unstated type is ICD-10-CM C44 territory: review, like C44
    assert _matches(catalog, "malignancy_excepted", SNOMED, "372130007")
    assert not _matches(catalog, "malignancy", SNOMED, "372130007")
    assert _matches(catalog, "malignancy", SNOMED, "449309003")  # skin of scrotum is C63
    assert not _matches(catalog, "malignancy_excepted", SNOMED, "254637007")


def test_every_checked_in_value_set_names_its_provenance_and_is_referenced(
    catalog: Catalog,
) -> None:
    used = {
        vs.spec.id
        for cs in catalog.mappings.code_sets.values()
        for vs in (*cs.value_sets, *cs.excluded_value_sets)
    }
    for vs in catalog.mappings.value_sets.values():
        spec = vs.spec
        assert vs.codes, spec.id
        if spec.source is not None:
            assert spec.source.repository.startswith("cqframework/")
            assert spec.url.endswith(spec.id) and spec.version and spec.expansion_timestamp
        else:
            assert spec.subset_of in catalog.mappings.value_sets and spec.rule
        assert spec.id in used, f"{spec.id} is checked in but no code set uses it"


def _broken(tmp_path: Path) -> Path:
    target = tmp_path / "fhir_mappings"
    shutil.copytree(ROOT / "fhir_mappings", target)
    return target


def test_the_lint_fails_on_a_referenced_value_set_that_is_missing(tmp_path: Path) -> None:
    target = _broken(tmp_path)
    (target / "valuesets" / "2.16.840.1.113883.3.526.3.376.json").unlink()
    with pytest.raises(
        CatalogError, match=re.escape("unknown value set '2.16.840.1.113883.3.526.3.376'")
    ):
        load_catalog(Settings(mappings_dir=target))


def test_the_lint_fails_on_an_empty_value_set(tmp_path: Path) -> None:
    target = _broken(tmp_path)
    path = target / "valuesets" / "2.16.840.1.113883.3.526.3.376.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, "codes": []}), encoding="utf-8")
    with pytest.raises(CatalogError, match="codes"):
        load_catalog(Settings(mappings_dir=target))


def test_the_lint_fails_on_a_value_set_without_provenance(tmp_path: Path) -> None:
    target = _broken(tmp_path)
    path = target / "valuesets" / "2.16.840.1.113883.3.526.3.376.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["source"]
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CatalogError, match="names its source"):
        load_catalog(Settings(mappings_dir=target))


def test_the_lint_fails_on_a_subset_code_its_parent_does_not_hold(tmp_path: Path) -> None:
    target = _broken(tmp_path)
    path = target / "valuesets" / "trialscreen-mi-past.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["codes"].append("snomed|1755008|Old myocardial infarction")
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CatalogError, match="codes not in"):
        load_catalog(Settings(mappings_dir=target))


def test_the_lint_fails_on_a_subset_its_rule_does_not_reproduce(tmp_path: Path) -> None:
    target = _broken(tmp_path)
    path = target / "valuesets" / "trialscreen-cancer-nmsc.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["codes"] = data["codes"][1:]  # a hand edit that drops a code the rule selects
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(CatalogError, match="does not select exactly its codes"):
        load_catalog(Settings(mappings_dir=target))


def test_the_published_value_set_says_what_it_includes_and_expands_it(catalog: Catalog) -> None:
    m = catalog.mappings
    vs = value_set(m.code_sets["malignancy"], m, "https://example.org/fhir")
    assert {
        "valueSet": ["http://cts.nlm.nih.gov/fhir/ValueSet/2.16.840.1.113762.1.4.1111.161"]
    } in (vs["compose"]["include"])
    assert {"valueSet": ["urn:trialscreen:valueset:trialscreen-cancer-nmsc"]} in vs["compose"][
        "exclude"
    ]
    codes = {(c["system"], c["code"]) for c in vs["expansion"]["contains"]}
    assert (SNOMED, "254637007") in codes
    assert (SNOMED, "402507001") not in codes  # excluded
    assert vs["expansion"]["total"] == len(codes)
    assert vs["expansion"]["parameter"][0]["valueUri"].endswith("|20200310")


# --- WHO ICD-10 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code_set", "code", "expected"),
    [
        ("heart_failure", "I50.0", True),  # WHO congestive HF, through the I50 prefix row
        ("malignancy", "C34.1", True),  # through the C3 prefix row
        ("malignancy", "C44.3", False),  # NMSC exclusion applies to WHO too
        ("mobitz2_or_complete_av_block", "I44.2", True),  # exact row of WHO length
        ("major_organ_transplant_status", "Z94.0", True),
        ("major_organ_transplant_status", "Z94.7", False),
        ("cns_involvement", "I63.9", True),
        ("cns_involvement", "G45.9", False),
        ("asthma", "J45.0", True),  # WHO-only subcategory, through the J45 prefix row
        ("sle", "M32.0", False),
        ("hiv_infection", "B20.1", True),  # WHO subdivision of the ICD-10-CM category B20
        ("hiv_infection", "B24", True),  # WHO-only category (icd10 row)
        ("cns_involvement", "F05.1", True),  # WHO subdivision of F05 (Dementia expansion)
        ("malignancy_excepted", "C61", True),
    ],
)
def test_a_who_icd10_coding_is_read_through_the_icd10cm_rows(
    catalog: Catalog, code_set: str, code: str, expected: bool
) -> None:
    assert _matches(catalog, code_set, ICD10_WHO, code) is expected


def test_icd10cm_codes_longer_than_who_codes_are_not_twinned(catalog: Catalog) -> None:
    # G31.83 (Lewy body neurocognitive disorder, Dementia expansion) is an ICD-10-CM code of six
    # characters: WHO ICD-10 has no such code, so a WHO coding of it is not read as one
    assert _matches(catalog, "cns_involvement", ICD10CM, "G31.83")
    assert not _matches(catalog, "cns_involvement", ICD10_WHO, "G31.83")


@pytest.mark.parametrize(
    ("raw", "normal"), [("i509", "I50.9"), ("I50.9", "I50.9"), ("G01*", "G01"), (" c61 ", "C61")]
)
def test_icd_codes_are_normalised_before_matching(raw: str, normal: str) -> None:
    assert icd_code(raw) == normal


def test_an_icd_code_sent_without_its_dot_matches(catalog: Catalog) -> None:
    assert _matches(catalog, "heart_failure", ICD10CM, "I5022")


# --- routes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "route"),
    [
        ("PO", "oral"),
        ("IV", "intravenous"),
        ("IVINJ", "intravenous"),
        ("SQ", "subcutaneous"),
        ("TOPICAL", "topical"),
        ("NEB", "inhaled"),
    ],
)
def test_a_v3_route_means_what_its_snomed_twin_means(
    catalog: Catalog, code: str, route: str
) -> None:
    m = catalog.mappings
    assert m.route_of([(V3_ROUTE, code)]) == route
    twins = {
        "oral": "26643006",
        "intravenous": "47625008",
        "subcutaneous": "34206005",
        "topical": "6064005",
    }
    if route in twins:
        assert m.route_of([(SNOMED, twins[route])]) == route


def test_an_unknown_route_code_is_not_recognised(catalog: Catalog) -> None:
    assert catalog.mappings.route_of([(V3_ROUTE, "IM")]) is None  # no route name yet: 'other'


# --- UCUM by meaning ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("analyte", "unit", "listed"),
    [
        ("hemoglobin", "g/dl", "g/dL"),
        ("hemoglobin", "mmol/l", "mmol/L"),
        ("cd19_absolute", "{cells}/uL", "/uL"),
        ("platelets", "10*3/mm3", "10*3/uL"),
    ],
)
def test_an_equivalent_ucum_spelling_has_the_listed_factor(
    catalog: Catalog, analyte: str, unit: str, listed: str
) -> None:
    a = catalog.mappings.analytes[analyte]
    assert a.factor(unit) == pytest.approx(a.factors[listed])


def test_a_unit_of_the_same_dimension_converts_exactly(catalog: Catalog) -> None:
    hb = catalog.mappings.analytes["hemoglobin"]
    assert "mg/dL" not in hb.factors
    assert hb.to_canonical(11500, "mg/dL") == pytest.approx(115.0)  # 11.5 g/dL = 115 g/L
    assert catalog.mappings.analytes["platelets"].to_canonical(180, "/nL") == pytest.approx(180)
    # a molar unit converts only to a listed molar unit (the molar mass lives in mmol/L's factor)
    assert hb.factor("umol/L") == pytest.approx(hb.factors["mmol/L"] / 1000)


@pytest.mark.parametrize(
    ("analyte", "unit"),
    [
        ("hemoglobin", "grams per decilitre"),  # not UCUM
        ("hemoglobin", "mg"),  # another dimension
        ("hemoglobin", ""),  # no unit
    ],
)
def test_an_unknown_unit_is_never_silently_used(catalog: Catalog, analyte: str, unit: str) -> None:
    assert catalog.mappings.analytes[analyte].factor(unit) is None


def test_annotations_that_change_meaning_are_not_ignored() -> None:
    assert ucum_ratio("{cells}/uL", "/uL") == pytest.approx(1)
    assert ucum_ratio("mL/min/{1.73_m2}", "mL/min") is None  # BSA-normalised is not absolute
    assert ucum_ratio("g/dl", "g/L") == pytest.approx(10)
    assert ucum_ratio("mg/dL", "umol/L") is None  # needs a molar mass


def test_a_dimensionless_analyte_takes_only_its_own_units(catalog: Catalog) -> None:
    scores = [a for a in catalog.mappings.analytes.values() if a.unit and a.unit.startswith("{")]
    assert scores
    for a in scores:
        assert a.factor("%") is None
        assert a.factor("") == 1.0


def test_every_published_value_set_is_valid_r4(catalog: Catalog) -> None:
    from fhir.resources.R4B.valueset import ValueSet

    m = catalog.mappings
    for code_set in m.code_sets.values():
        resource = value_set(code_set, m, "https://example.org/fhir")
        ValueSet.model_validate(resource)
        if code_set.value_sets:
            assert resource["expansion"]["contains"], code_set.name
