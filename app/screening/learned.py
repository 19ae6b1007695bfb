"""A trial as the terminology server completed it, in the form a screening worker receives it.

A completed trial differs from the loaded one only by the few codes the server placed in some of
its code sets (ehr/terminology.py); pickled whole, a trial is about a megabyte, sent with every
screening. So the service sends a worker the trial's id and those codes (:class:`LearnedCodes`),
and the worker, which loaded the same catalog at its start, puts them back into its own copy.
"""

from dataclasses import dataclass, replace

from app.catalog.loader import Catalog
from app.catalog.trial import LoadedTrial
from app.ehr.terminology import TerminologyServer, recognised
from app.engine.record import PatientRecord


@dataclass(frozen=True, slots=True)
class LearnedCodes:
    """The codes a terminology server added to one trial's code sets, by code set."""

    trial_id: str
    codes: tuple[tuple[str, frozenset[tuple[str, str]]], ...]

    def applied(self, catalog: Catalog) -> LoadedTrial:
        trial = catalog.trials[self.trial_id]
        return replace(trial, mappings=trial.mappings.with_codes(dict(self.codes)))


TrialRef = str | LearnedCodes
"""A trial as a job names it: its id (as loaded), or its id and what the server added."""


def learned(loaded: LoadedTrial, completed: LoadedTrial) -> TrialRef:
    """What the server added to ``loaded`` to make ``completed`` (a trial Mappings.with_codes
    made from it): only code sets' exact members can differ."""
    if completed is loaded:
        return loaded.id
    before, after = loaded.mappings.code_sets, completed.mappings.code_sets
    codes = tuple(
        (name, frozenset(cs.matcher.exact - before[name].matcher.exact))
        for name, cs in after.items()
        if cs is not before[name] and cs.matcher.exact != before[name].matcher.exact
    )
    if not codes:
        return loaded.id
    if completed != replace(loaded, mappings=loaded.mappings.with_codes(dict(codes))):
        # Anything else changed: this form cannot carry it (a new kind of learning in
        # ehr/terminology.py must extend LearnedCodes too).
        raise ValueError(f"{loaded.id}: the completed trial differs by more than learned codes")
    return LearnedCodes(loaded.id, codes)


def trial_of(catalog: Catalog, ref: TrialRef) -> LoadedTrial:
    """The trial a job names, in the worker's own catalog."""
    return catalog.trials[ref] if isinstance(ref, str) else ref.applied(catalog)


async def recognised_refs(
    server: TerminologyServer | None,
    catalog: Catalog,
    trial_ids: list[str],
    record: PatientRecord,
) -> list[TrialRef]:
    """Each trial as the terminology server completes it for this record, as a worker receives
    it (only the learned codes)."""
    refs: list[TrialRef] = []
    for trial_id in trial_ids:
        loaded = catalog.trials[trial_id]
        refs.append(learned(loaded, await recognised(server, loaded, record)))
    return refs
