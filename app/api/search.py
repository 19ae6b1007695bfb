"""FHIR search, the parts every searchable type shares: reading the query (declared
parameters, modifiers, ``_count``, ``_offset``, ``_sort``, ``_total``, ``_summary``,
``_elements``, ``Prefer: handling``), the value syntaxes (token, reference, date, string), and
the searchset Bundle (``self``/``next``/``previous`` links, absolute ``fullUrl``s, ``total``).

No parameter is ignored silently: one the resource does not declare is refused under
``Prefer: handling=strict`` and otherwise left out of the ``self`` link and named in an
OperationOutcome entry (search mode ``outcome``), as FHIR R4 search §3.1.1.4 asks.
"""

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from starlette.requests import Request

from app.core.errors import InvalidInput

Json = dict[str, Any]
Kind = Literal["token", "string", "reference", "date", "uri"]
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_SPEC = "http://hl7.org/fhir/SearchParameter"
_CONTROL = ("_count", "_offset", "_sort", "_total", "_summary", "_elements")
_QUIET = ("_format", "_pretty")
"""Accepted anywhere; ``_format`` is negotiated before the search runs."""
_SUMMARY = ("true", "false", "text", "data", "count")
_DATE = re.compile(
    r"^(?P<prefix>eq|ne|lt|gt|le|ge|sa|eb|ap)?"
    r"(?P<value>\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?)$"
)


@dataclass(frozen=True, slots=True)
class Param:
    """A search parameter a resource type serves (and declares in the CapabilityStatement)."""

    name: str
    kind: Kind
    documentation: str
    definition: str | None = None
    """The SearchParameter it implements, when it is one the FHIR specification defines."""
    target: str | None = None
    """For a reference to one resource type: that type (a bare id then means ``target/id``)."""
    modifiers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class SearchSpec:
    resource: str
    params: tuple[Param, ...]
    sorts: tuple[str, ...]
    """Keys ``_sort`` accepts (each also descending with ``-``)."""
    default_sort: str
    default_count: int
    max_count: int
    summary: frozenset[str]
    """Elements ``_summary=true`` keeps (the spec's summary elements of the type)."""
    mandatory: frozenset[str]
    """Elements always kept by ``_elements`` (the type's required ones)."""
    note: str = ""
    """What else a client must know to search (stated in the CapabilityStatement)."""

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def standard(resource: str, code: str) -> str:
    """The canonical of a SearchParameter the FHIR R4 specification defines."""
    return f"{_SPEC}/{resource}-{code}"


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed search: what to match, which page, and how to shape what is returned."""

    filters: tuple[tuple[str, str | None, str], ...]
    """(parameter, modifier, value); repeated parameters AND, commas inside a value OR."""
    count: int
    offset: int
    sort: str
    summary: str | None
    elements: tuple[str, ...]
    total_only: bool
    used: tuple[tuple[str, str], ...]
    """The query parameters that took part, for the ``self`` link."""
    ignored: tuple[str, ...] = field(default=())

    def values(self, name: str) -> list[tuple[str | None, list[str]]]:
        """Each occurrence of ``name``: (modifier, its comma-separated alternatives)."""
        return [(m, split(v)) for n, m, v in self.filters if n == name]


def parse_search(request: Request, spec: SearchSpec) -> Search:
    strict = _handling(request.headers.get("prefer", "")) == "strict"
    filters: list[tuple[str, str | None, str]] = []
    used: list[tuple[str, str]] = []
    ignored: list[str] = []
    control: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in _QUIET:
            continue
        if key in _CONTROL:
            if value == "":  # FHIR: a parameter with an empty value is ignored
                continue
            if key in control:
                raise InvalidInput(f"{key} is given more than once.", expression=key)
            control[key] = value
            continue
        name, _, modifier = key.partition(":")
        param = spec.param(name)
        if param is None:
            if strict:
                known = ", ".join(p.name for p in spec.params)
                raise InvalidInput(
                    f"{spec.resource} has no search parameter {key!r} (known: {known}; and "
                    f"{', '.join(_CONTROL)}).",
                    expression=key,
                )
            ignored.append(key)
            continue
        if modifier and modifier not in param.modifiers:
            allowed = ", ".join(sorted(param.modifiers)) or "none"
            raise InvalidInput(
                f"The modifier :{modifier} is not supported on {name} (supported: {allowed}).",
                expression=key,
            )
        if value == "":  # FHIR: a parameter with an empty value is ignored
            continue
        filters.append((name, modifier or None, value))
        used.append((key, value))
    count = _integer(control.get("_count"), "_count", spec.default_count)
    offset = _integer(control.get("_offset"), "_offset", 0)
    if offset > 1_000_000:
        raise InvalidInput("_offset must be at most 1000000.", expression="_offset")
    sort = _sort(control.get("_sort"), spec)
    summary = control.get("_summary")
    if summary is not None and summary not in _SUMMARY:
        raise InvalidInput(f"_summary must be one of {', '.join(_SUMMARY)}.", expression="_summary")
    if control.get("_total", "accurate") not in ("none", "estimate", "accurate"):
        raise InvalidInput("_total must be none, estimate or accurate.", expression="_total")
    elements = tuple(e.strip() for e in control.get("_elements", "").split(",") if e.strip())
    for element in elements:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", element):
            raise InvalidInput(
                f"_elements names top-level elements only (got {element!r}).",
                expression="_elements",
            )
    for key in ("_summary", "_elements", "_total"):
        if key in control:
            used.append((key, control[key]))
    return Search(
        filters=tuple(filters),
        count=min(count, spec.max_count),
        offset=offset,
        sort=sort,
        summary=summary,
        elements=elements,
        total_only=count == 0 or summary == "count",
        used=tuple(used),
        ignored=tuple(ignored),
    )


def _handling(prefer: str) -> str:
    for part in prefer.split(","):
        for item in part.split(";"):
            key, _, value = item.strip().partition("=")
            if key.strip().lower() == "handling":
                return value.strip().strip('"').lower()
    return "lenient"


def _integer(text: str | None, name: str, default: int) -> int:
    if text is None:
        return default
    if not text.strip().isdigit():
        raise InvalidInput(f"{name} must be a whole number of 0 or more.", expression=name)
    return int(text.strip())


def _sort(text: str | None, spec: SearchSpec) -> str:
    if text is None:
        return spec.default_sort
    keys = [k.strip() for k in text.split(",") if k.strip()]
    allowed = ", ".join(f"{k} or -{k}" for k in spec.sorts)
    if len(keys) != 1 or keys[0].lstrip("-") not in spec.sorts:
        raise InvalidInput(
            f"{spec.resource} can be sorted by one key: {allowed}.", expression="_sort"
        )
    return keys[0]


def split(value: str) -> list[str]:
    """Comma-separated alternatives; ``\\,`` is a literal comma (FHIR search escaping)."""
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$") for p in parts]


def token(value: str) -> tuple[str | None, str | None]:
    """``system|code``, ``|code`` (no system: returned as ``""``), ``system|`` or ``code``."""
    if "|" not in value.replace("\\|", ""):
        return None, value
    system, _, code = value.partition("|")
    return system, code or None


def reference(value: str, param: Param) -> str:
    """``Type/id`` for a reference value: a bare id gets the parameter's target type (the one
    type such references hold here); an absolute URL keeps its last two segments. Another type
    is kept as given: it matches nothing, which is the true answer."""
    value = value.rstrip("/")
    if "://" in value:
        value = "/".join(value.split("/")[-2:])
    if "/" not in value:
        if param.target is None:
            raise InvalidInput(
                f"{param.name} needs a Type/id reference (got {value!r}).", expression=param.name
            )
        return f"{param.target}/{value}"
    kind, _, ident = value.partition("/")
    if not re.fullmatch(r"[A-Za-z]+", kind) or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", ident):
        raise InvalidInput(f"{param.name}: {value!r} is not a reference.", expression=param.name)
    return value


@dataclass(frozen=True, slots=True)
class DateRange:
    """A date search value: its prefix and the instants [start, end) its precision spans."""

    prefix: str
    start: datetime
    end: datetime


def date_range(value: str, name: str) -> DateRange:
    match = _DATE.match(value)
    if match is None:
        raise InvalidInput(
            f"{name} takes a date like ge2026-01-01 or lt2026-06-01T12:00:00Z (got {value!r}).",
            expression=name,
        )
    prefix = match.group("prefix") or "eq"
    if prefix in ("sa", "eb", "ap"):
        raise InvalidInput(f"{name}: the prefix {prefix} is not supported.", expression=name)
    text = match.group("value")
    if len(text) == 4:
        start = datetime(int(text), 1, 1, tzinfo=UTC)
        end = datetime(int(text) + 1, 1, 1, tzinfo=UTC)
    elif len(text) == 7:
        year, month = int(text[:4]), int(text[5:7])
        start = datetime(year, month, 1, tzinfo=UTC)
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    elif len(text) == 10:
        start = datetime.fromisoformat(text).replace(tzinfo=UTC)
        end = start + timedelta(days=1)
    else:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        start = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        end = start + (timedelta(milliseconds=1) if "." in text else timedelta(seconds=1))
        if text.count(":") == 1 or (text.count(":") == 2 and text[-6] in "+-"):
            end = start + timedelta(minutes=1)
    return DateRange(prefix, start, end)


def searchset(
    base: str, spec: SearchSpec, search: Search, resources: list[Json], total: int
) -> Json:
    """The searchset Bundle: ``base`` is what the client used (see app.core.base_url)."""
    endpoint = f"{base}/fhir/{spec.resource}"

    def page(at: int) -> str:
        paging = [("_sort", search.sort), ("_count", search.count), ("_offset", at)]
        return f"{endpoint}?{urlencode([*search.used, *paging])}"

    if search.total_only:
        counting = [] if ("_summary", "count") in search.used else [("_summary", "count")]
        links = [{"relation": "self", "url": f"{endpoint}?{urlencode([*search.used, *counting])}"}]
    else:
        links = [{"relation": "self", "url": page(search.offset)}]
        if search.offset + search.count < total:
            links.append({"relation": "next", "url": page(search.offset + search.count)})
        if search.offset > 0:
            links.append(
                {"relation": "previous", "url": page(max(0, search.offset - search.count))}
            )
    entries: list[Json] = (
        []
        if search.total_only
        else [
            {
                "fullUrl": f"{endpoint}/{r['id']}",
                "resource": shape(r, search, spec),
                "search": {"mode": "match"},
            }
            for r in resources
        ]
    )
    if search.ignored:
        entries.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {
                            "severity": "warning",
                            "code": "not-supported",
                            "diagnostics": f"Search parameter {name!r} is not supported by "
                            f"{spec.resource} and was ignored (send Prefer: handling=strict to "
                            "have it refused).",
                        }
                        for name in search.ignored
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    bundle: Json = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def shape(resource: Json, search: Search, spec: SearchSpec) -> Json:
    """The resource as ``_summary`` / ``_elements`` ask, tagged SUBSETTED when cut."""
    if search.summary in (None, "false") and not search.elements:
        return resource
    keep: set[str] | None
    if search.summary == "true":
        keep = set(spec.summary)
    elif search.summary == "text":
        keep = {"text", *spec.mandatory}
    elif search.summary == "data":
        keep = set(resource) - {"text"}
    else:
        keep = {*search.elements, *spec.mandatory}
    cut = {k: v for k, v in resource.items() if k in keep or k in ("resourceType", "id", "meta")}
    if cut.keys() == resource.keys():
        return resource
    meta = dict(cut.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    cut["meta"] = meta
    return cut


def openapi_parameters(spec: SearchSpec) -> list[Json]:
    """The search as the OpenAPI document states it: each declared parameter (and modifier),
    the result controls, and the ``Prefer`` header."""

    def query(name: str, description: str, schema: Json) -> Json:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": description,
            "schema": schema,
        }

    text = {"type": "string"}
    declared = [
        query(f"{p.name}{':' + m if m else ''}", p.documentation, text)
        for p in spec.params
        for m in ("", *sorted(p.modifiers))
    ]
    sorts = [k for key in spec.sorts for k in (key, f"-{key}")]
    return [
        *declared,
        query(
            "_count",
            f"Page size (default {spec.default_count}; above {spec.max_count} it is capped; 0 "
            "gives the total only)",
            {"type": "integer", "minimum": 0},
        ),
        query(
            "_offset",
            "Where the page starts (next links carry it)",
            {"type": "integer", "minimum": 0, "maximum": 1_000_000},
        ),
        query("_sort", f"Order (default {spec.default_sort})", {"type": "string", "enum": sorts}),
        query(
            "_summary",
            "Subset of each resource, or count only",
            {"type": "string", "enum": list(_SUMMARY)},
        ),
        query("_elements", "Top-level elements to return (comma-separated)", text),
        query(
            "_total",
            "Accepted; the total is always exact",
            {"type": "string", "enum": ["none", "estimate", "accurate"]},
        ),
        query("_format", "json only (xml: 406)", text),
        {
            "name": "Prefer",
            "in": "header",
            "required": False,
            "description": "handling=strict refuses a parameter the resource does not declare; "
            "handling=lenient (the default) ignores it and says so in an outcome entry",
            "schema": text,
        },
    ]
