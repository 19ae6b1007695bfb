"""The trials pages: the list, and one trial's criteria in protocol order with their verbatim
text, sub-checks, thresholds, windows and links to the published code sets."""

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from app.catalog.loader import Catalog
from app.catalog.mappings import Mappings
from app.catalog.publication import value_set, value_set_id
from app.catalog.schema import (
    AgeCheck,
    AllergyCheck,
    Check,
    ConditionCheck,
    CreatinineClearanceCheck,
    DistinctDrugsCheck,
    Duration,
    GroupCheck,
    ImmunizationCheck,
    LabFindingCheck,
    MeasurementCheck,
    MedicationCheck,
    PrednisoneDoseCheck,
    ProcedureCheck,
)
from app.ui.rendering import PageNotFound, render
from app.ui.session import UiUser, current_user

router = APIRouter(prefix="/ui")
User = Annotated[UiUser, Depends(current_user)]


@dataclass
class CheckView:
    id: str
    label: str
    kind: str
    depth: int
    facts: list[str] = field(default_factory=list)
    code_sets: list[tuple[str, str]] = field(default_factory=list)
    """(name, link to the published ValueSet)."""
    review: tuple[str, ...] = ()


_GROUP_WORDS = {
    "all": "all of these",
    "any": "any one of these",
    "all_available": "all of these that have data",
}


def _words(names: tuple[str, ...]) -> str:
    """Drug class names as words (``conventional_immunosuppressants``: conventional
    immunosuppressants)."""
    return ", ".join(n.replace("_", " ") for n in names)


def _window(name: str, d: Duration | None) -> list[str]:
    return [f"{name} {d}"] if d is not None else []


def _facts(check: Check, m: Mappings, trial_window: Duration) -> list[str]:
    """Thresholds and windows of one check, in words."""
    facts: list[str] = []
    if check.applies_to:
        facts.append(f"only for {check.applies_to} patients")
    if check.expect == "absent":
        facts.append("met when nothing is found")
    if isinstance(check, AgeCheck):
        facts.append(
            f"age {check.min if check.min is not None else 0}-"
            f"{check.max if check.max is not None else '∞'} years, inclusive"
        )
    elif isinstance(check, MeasurementCheck):
        analyte = m.analytes.get(check.analyte)
        name = analyte.display if analyte else check.analyte
        unit = "× ULN" if check.uln_multiple else check.unit
        facts.append(f"{name} {check.comparator} {check.value:g} {unit}")
        facts += _window("within", check.within) or [f"within {trial_window} (screening window)"]
        if check.repeated:
            facts.append(f"{check.repeated} latest readings on different days")
        if check.room_air:
            facts.append("on room air only")
    elif isinstance(check, CreatinineClearanceCheck):
        facts.append(
            f"creatinine clearance (Cockcroft-Gault) {check.comparator} "
            f"{check.value:g} {check.unit}"
        )
        facts += _window("within", check.within) or [f"within {trial_window} (screening window)"]
    elif isinstance(check, PrednisoneDoseCheck):
        facts.append(f"prednisone-equivalent {check.min:g}-{check.max:g} {check.unit}")
        if check.min_waived_with:
            facts.append("no minimum with " + _words(check.min_waived_with))
    elif isinstance(check, LabFindingCheck):
        names = [m.analytes[a].display if a in m.analytes else a for a in check.analytes]
        facts.append(f"{check.finding} result of " + ", ".join(names))
        if check.titer_cutoff:
            facts.append(f"titer at least 1:{check.titer_cutoff:g}")
        facts += _window("within", check.within)
    elif isinstance(check, MedicationCheck):
        facts.append("drug classes: " + _words(check.classes))
        facts += _window("within", check.within)
        facts += _window("first started at least", check.started_at_least)
        if check.current:
            facts.append("in use at the as-of date")
        if check.route:
            facts.append(f"route {check.route}")
    elif isinstance(check, DistinctDrugsCheck):
        facts.append(f"at least {check.at_least} distinct drugs of: " + _words(check.classes))
    elif isinstance(check, AllergyCheck):
        facts.append("allergy to " + (_words(check.substances) or "any substance"))
        if check.severe:
            facts.append(f"severe reaction ({check.reaction.replace('_', ' ')})")
    elif isinstance(check, ConditionCheck):
        facts += _window("onset within", check.within)
        facts += _window("onset at least", check.onset_at_least)
        facts += _window("current within", check.current_within)
        if check.active_only:
            facts.append("active conditions only")
    elif isinstance(check, ProcedureCheck | ImmunizationCheck):
        facts += _window("within", check.within)
    elif isinstance(check, GroupCheck):
        facts.append(_GROUP_WORDS[check.check])
    if getattr(check, "on_match", "met") == "review":
        facts.append("a match goes to the investigator")
    return facts


def _code_sets(check: Check) -> list[str]:
    names: list[str] = []
    for attribute in ("codes", "except_codes"):
        value = getattr(check, attribute, ())
        names += list(value)
    for attribute in ("result_codes", "negative_codes"):
        value = getattr(check, attribute, None)
        if value:
            names.append(value)
    if isinstance(check, MeasurementCheck) and check.room_air:
        names.append(check.room_air.codes)
    return names


def _checks(
    checks: tuple[Check, ...], m: Mappings, window: Duration, depth: int, into: list[CheckView]
) -> None:
    for check in checks:
        into.append(
            CheckView(
                id=check.id,
                label=check.label,
                kind=check.check,
                depth=depth,
                facts=_facts(check, m, window),
                code_sets=[
                    (name.replace("_", " "), f"/ui/code-sets/{value_set_id(name)}")
                    for name in _code_sets(check)
                ],
                review=check.review,
            )
        )
        if isinstance(check, GroupCheck):
            _checks(check.checks, m, window, depth + 1, into)


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, user: User) -> HTMLResponse:
    return await trials(request, user)


@router.get("/trials", response_class=HTMLResponse)
async def trials(request: Request, user: User) -> HTMLResponse:
    catalog: Catalog = request.app.state.catalog
    listed = [catalog.trials[t].spec for t in catalog.trials]
    return render(request, "trials.html", user, title="Trials", trials=listed)


@router.get("/trials/{trial_id}", response_class=HTMLResponse)
async def trial(trial_id: str, request: Request, user: User) -> HTMLResponse:
    catalog: Catalog = request.app.state.catalog
    loaded = catalog.get(trial_id)
    if loaded is None:
        raise PageNotFound(f"No trial {trial_id!r}.")
    spec = loaded.spec
    criteria = []
    for criterion in spec.criteria:
        views: list[CheckView] = []
        _checks(criterion.checks, loaded.mappings, spec.screening_window, 0, views)
        criteria.append((criterion, views))
    return render(
        request, "trial.html", user, title=f"{spec.acronym} criteria", trial=spec, criteria=criteria
    )


@router.get("/code-sets/{name}", response_class=HTMLResponse)
async def code_set(name: str, request: Request, user: User) -> HTMLResponse:
    """A code set as the service publishes it (the ValueSet): what it includes and excludes,
    and every code of its expansion."""
    catalog: Catalog = request.app.state.catalog
    found = catalog.mappings.code_sets.get(name.replace("-", "_"))
    if found is None:
        raise PageNotFound(f"No code set {name!r}.")
    published = value_set(found, catalog.mappings, request.app.state.settings.canonical_base)
    return render(
        request,
        "code_set.html",
        user,
        title=f"Code set {found.name.replace('_', ' ')}",
        name=found.name.replace("_", " "),
        vs=published,
        json_link=f"/fhir/ValueSet/{value_set_id(found.name)}?_format=json",
    )
