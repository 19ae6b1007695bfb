"""Optional FHIR terminology server (``TRIALSCREEN_TERMINOLOGY_URL``) for codes the shipped value
set expansions (fhir_mappings/valuesets/) do not hold.

The checked-in expansions are a snapshot of published value sets. Before a record is screened,
each coding of its conditions, procedures and immunizations that a trial's code set does not
already recognise (and whose system the set's value sets use) is put to the server as
``ValueSet/$validate-code?url=<the value set's canonical>&system=&code=``: the server may know a
newer version of the same value set. A code the server places in it joins the code set for this
screening, with the curation of the code set kept: the code set's exclusion rows still win, a
code the rule of an excluded subset selects (by the display the server returns) stays out, and a
set built on a subset takes the code only when the subset's rule selects it. Answers are cached
(per value set, system and code); the whole consultation has a time budget, and a server that is
slow, down or answers anything but a boolean ``result`` leaves the shipped expansions to decide.
The engine stays pure: it receives the trial with the learned codes in its code sets.
"""

import asyncio
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import httpx

from app.catalog.mappings import CodeSet, Mappings, ValueSet
from app.catalog.schema import (
    Check,
    ConditionCheck,
    GroupCheck,
    ImmunizationCheck,
    ProcedureCheck,
)
from app.catalog.trial import LoadedTrial
from app.engine.record import Coding, PatientRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Answer:
    member: bool
    display: str


class TerminologyServer:
    """A FHIR R4 terminology server asked ``ValueSet/$validate-code``, with a per-screening time
    budget and a cache of its answers."""

    def __init__(
        self, base_url: str, budget: float, http: httpx.AsyncClient, cache_size: int = 20_000
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.budget = budget
        self.http = http
        self.cache_size = cache_size
        self._cache: dict[tuple[str, str, str], Answer | None] = {}

    async def recognise(self, trial: LoadedTrial, record: PatientRecord) -> LoadedTrial:
        """The trial with the codes the server places in its code sets' value sets added."""
        m = trial.mappings
        wanted = list(_questions(trial, record))
        todo = {q for _, _, q in wanted if q not in self._cache}
        if todo:
            tasks = [asyncio.ensure_future(self._ask(*q)) for q in todo]
            _, pending = await asyncio.wait(tasks, timeout=self.budget)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("terminology server: %d question(s) over the budget", len(pending))
        learned: dict[str, set[Coding]] = {}
        for name, coding, question in wanted:
            if name not in m.code_sets:
                continue  # asked for an excluded value set's rule, not to include
            answer = self._cache.get(question)
            if answer is not None and answer.member:
                learned.setdefault(name, set()).add(coding)
        kept = {
            name: frozenset(c for c in codings if _fits(m.code_sets[name], m, c, self._cache))
            for name, codings in learned.items()
        }
        kept = {name: codes for name, codes in kept.items() if codes}
        if not kept:
            return trial
        return replace(trial, mappings=m.with_codes(kept))

    async def _ask(self, url: str, system: str, code: str) -> None:
        params = {"url": url, "system": system, "code": code}
        try:
            response = await self.http.get(
                f"{self.base_url}/ValueSet/$validate-code",
                params=params,
                headers={"Accept": "application/fhir+json"},
            )
            answer = _answer(response)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("terminology server: %s for %s|%s in %s", exc, system, code, url)
            return  # not cached: asked again next time
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[(url, system, code)] = answer


def _answer(response: httpx.Response) -> Answer | None:
    """The ``result`` (and ``display``) of a $validate-code Parameters; None if unusable."""
    if response.status_code != 200:
        return None
    body = response.json()
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        return None
    params = {p.get("name"): p for p in body.get("parameter", []) if isinstance(p, dict)}
    result = params.get("result", {}).get("valueBoolean")
    if not isinstance(result, bool):
        return None
    display = params.get("display", {}).get("valueString")
    return Answer(result, display if isinstance(display, str) else "")


def _code_set_names(checks: Iterable[Check]) -> Iterator[tuple[str, str]]:
    """(code set name, record part) of every code set the checks read."""
    for check in checks:
        if isinstance(check, GroupCheck):
            yield from _code_set_names(check.checks)
        elif isinstance(check, ConditionCheck):
            for name in (*check.codes, *check.except_codes):
                yield name, "conditions"
        elif isinstance(check, ProcedureCheck):
            for name in check.codes:
                yield name, "procedures"
        elif isinstance(check, ImmunizationCheck):
            for name in check.codes:
                yield name, "immunizations"


def _sources(code_set: CodeSet, m: Mappings) -> Iterator[ValueSet]:
    """The published value sets behind a code set: those it includes, and the parents of the
    subsets it includes (a subset has no canonical a server knows)."""
    for vs in code_set.value_sets:
        parent = vs.spec.subset_of
        yield vs if parent is None else m.value_sets[parent]


def _questions(
    trial: LoadedTrial, record: PatientRecord
) -> Iterator[tuple[str, Coding, tuple[str, str, str]]]:
    m = trial.mappings
    parts: dict[str, tuple[Coding, ...]] = {
        "conditions": tuple(c for r in record.conditions for c in r.codes),
        "procedures": tuple(c for r in record.procedures for c in r.codes),
        "immunizations": tuple(c for r in record.immunizations for c in r.codes),
    }
    seen: set[tuple[str, Coding, tuple[str, str, str]]] = set()
    for criterion in trial.spec.criteria:
        for name, part in _code_set_names(criterion.checks):
            code_set = m.code_sets[name]
            for vs in _sources(code_set, m):
                systems = {s for s, _, _ in vs.codes}
                for coding in parts[part]:
                    if coding[0] not in systems or code_set.matcher.matches(*coding):
                        continue
                    if code_set.matcher.excluded(*coding):
                        continue
                    item = (name, coding, (vs.spec.url, coding[0], coding[1]))
                    if item not in seen:
                        seen.add(item)
                        yield item
            for vs in code_set.excluded_value_sets:  # for the excluded subsets' rules
                parent = m.value_sets[vs.spec.subset_of] if vs.spec.subset_of else vs
                for coding in parts[part]:
                    item = (f"-{name}", coding, (parent.spec.url, coding[0], coding[1]))
                    if coding[0] in {s for s, _, _ in parent.codes} and item not in seen:
                        seen.add(item)
                        yield item


def _fits(
    code_set: CodeSet,
    m: Mappings,
    coding: Coding,
    answers: dict[tuple[str, str, str], Answer | None],
) -> bool:
    """Whether a code the server placed in one of the set's value sets belongs to the set: not
    removed by an exclusion row (the matcher's), selected by the rule of an included subset when
    it came through one, and not selected by the rule of an excluded subset."""
    system, code = coding
    short = {uri: name for name, uri in m.systems.items()}.get(system, "")
    if code_set.matcher.excluded(system, code):
        return False

    def placed(vs: ValueSet) -> bool | None:
        """Whether the server placed the code in ``vs`` (a subset: in its parent, and its rule
        selects the code's display); None when that cannot be told (no answer, no display)."""
        parent = m.value_sets[vs.spec.subset_of] if vs.spec.subset_of else vs
        answer = answers.get((parent.spec.url, system, code))
        if answer is None:
            return None
        if not answer.member or vs.spec.select is None:
            return answer.member
        if not answer.display:
            return None
        return vs.spec.select.selects(short, answer.display)

    if not any(placed(vs) for vs in code_set.value_sets):
        return False
    # an excluded value set that may hold the code keeps it out (unknown fit -> not learned)
    return all(placed(vs) is False for vs in code_set.excluded_value_sets)


async def recognised(
    server: TerminologyServer | None, trial: LoadedTrial, record: PatientRecord
) -> LoadedTrial:
    """The trial as the terminology server completes it; the trial itself without a server."""
    return trial if server is None else await server.recognise(trial, record)
