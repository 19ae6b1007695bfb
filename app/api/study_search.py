"""The search parameters of the screened trials (ResearchStudy), matched in memory: the catalog
holds a handful of studies."""

from app.api.search import Json, Param, Search, SearchSpec, split, standard, token

STUDY = SearchSpec(
    resource="ResearchStudy",
    params=(
        Param("_id", "token", "Logical id (the NCT number)", standard("Resource", "id")),
        Param(
            "identifier",
            "token",
            "Business identifier: https://clinicaltrials.gov|{NCT number}",
            standard("ResearchStudy", "identifier"),
        ),
        Param(
            "status",
            "token",
            "Study status (ResearchStudy.status)",
            standard("ResearchStudy", "status"),
        ),
        Param(
            "title",
            "string",
            "Title: starts with, ignoring case (:contains, :exact)",
            standard("ResearchStudy", "title"),
            modifiers=frozenset({"contains", "exact"}),
        ),
    ),
    sorts=("_id", "title", "status"),
    default_sort="_id",
    default_count=50,
    max_count=200,
    summary=frozenset(
        {"category", "condition", "contact", "enrollment", "focus", "identifier", "keyword"}
        | {"location", "partOf", "period", "phase", "primaryPurposeType", "implicitRules"}
        | {"principalInvestigator", "protocol", "reasonStopped", "site", "sponsor", "status"}
        | {"title"}
    ),
    mandatory=frozenset({"status"}),
)


def find_studies(studies: list[Json], search: Search) -> tuple[int, list[Json]]:
    """(total, the page) of the studies matching every parameter (repeats AND, commas OR)."""
    matching = [s for s in studies if all(_matches(s, n, m, v) for n, m, v in search.filters)]
    key = search.sort.lstrip("-")
    matching.sort(key=lambda s: str(s.get(key.removeprefix("_"), "")).casefold())
    if search.sort.startswith("-"):
        matching.reverse()
    page = [] if search.total_only else matching[search.offset : search.offset + search.count]
    return len(matching), page


def _matches(study: Json, name: str, modifier: str | None, value: str) -> bool:
    alternatives = split(value)
    if name == "_id":
        return study["id"] in alternatives
    if name == "identifier":
        return any(_identifier(study, v) for v in alternatives)
    if name == "status":
        return any(_status(study, v) for v in alternatives)
    title = str(study.get("title", ""))
    if modifier == "exact":
        return title in alternatives
    if modifier == "contains":
        return any(v.casefold() in title.casefold() for v in alternatives)
    return any(title.casefold().startswith(v.casefold()) for v in alternatives)


def _identifier(study: Json, value: str) -> bool:
    system, code = token(value)
    for identifier in study.get("identifier", []):
        if system is not None and identifier.get("system", "") != system:
            continue
        if code is None or identifier.get("value") == code:
            return True
    return False


def _status(study: Json, value: str) -> bool:
    system, code = token(value)
    if system not in (None, "http://hl7.org/fhir/research-study-status"):
        return False
    return study.get("status") == code
