"""What of a patient's lines a population run may leave out, as DuckDB SQL: only what provably
cannot change the patient's screening, so that the answer is the one ``$screen`` gives for the
whole record (tests/test_population_selection.py proves it on every golden case and fuzzes every
element of each type).

- An Observation: by the rule ``$screen``'s reader applies (``bundle_reader.beyond_criteria``):
  :func:`observations_beyond`.
- A Condition, Procedure or Immunization, when every check reading its type matches by code set
  (``fetch_plan.history_code_sets``): left out only when all three hold:

  1. *read without fault*: each element the reader reads (listed in ``_READ``, mirroring
     ``bundle_reader._conditions`` / ``_procedures`` / ``_immunizations``) is absent, null or of
     the shape the reader accepts (dates by ``fhir_dates``' own pattern), so it would not become
     an unreadable resource (which holds checks back and is named in the report);
  2. *no code a check knows*: no coding's code, normalised as the matchers normalise ICD-10
     (case, dots, spaces, dagger and asterisk marks; for every system, a wider net), equals a
     code of those code sets (included or excluded) or starts with one of their prefixes;
  3. *no words a check knows*: no term of those code sets (their words and row displays) appears
     in the code's text or a display, as the safety net's whole-word, case-insensitive search
     finds it (RE2 here; any line holding a character beyond ASCII is kept, for Unicode case
     folding and word characters differ between the two engines).

Every other type is kept whole.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.catalog.mappings import Mappings
from app.core.fhir_dates import DATE_PATTERN
from app.ehr.fetch_plan import FetchPlan

_ASCII_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f "
"""Python's whitespace among ASCII characters (``str.split``, ``\\s``): RE2's ``\\s`` lacks some."""
_NORMAL = re.compile(rf"[{_ASCII_SPACE}.*†+!]")


def normal(code: str) -> str:
    """A code as compared here: upper case, without spaces, dots and ICD-10 dagger/asterisk
    marks. ``icd_code`` only moves these, so an ICD code the matchers take compares equal."""
    return _NORMAL.sub("", code).upper()


@dataclass(frozen=True, slots=True)
class HistorySelection:
    """One history type the run selects from: what its checks know."""

    resource_type: str
    codes: tuple[str, ...]
    """Normalised codes of the code sets (included and excluded rows, value set codes)."""
    prefixes: tuple[str, ...]
    """Normalised code prefixes of the code sets (included and excluded)."""
    words: str | None
    """RE2 pattern finding any of the code sets' terms as the safety net does; None: no terms."""


_CODE_KEY = {"Condition": "code", "Procedure": "code", "Immunization": "vaccineCode"}

_READ: dict[str, dict[str, tuple[str, ...]]] = {
    "Condition": {
        "concepts": ("code", "clinicalStatus", "verificationStatus"),
        "dates": ("onsetDateTime", "abatementDateTime", "recordedDate"),
        "periods": ("onsetPeriod", "abatementPeriod"),
        "strings": (),
    },
    "Procedure": {
        "concepts": ("code",),
        "dates": ("performedDateTime",),
        "periods": ("performedPeriod",),
        "strings": ("status",),
    },
    "Immunization": {
        "concepts": ("vaccineCode",),
        "dates": ("occurrenceDateTime", "recorded"),
        "periods": (),
        "strings": ("status",),
    },
}
"""The elements ``bundle_reader`` reads of each type, by the shape it requires of them."""


def history_selections(plan: FetchPlan, mappings: Mappings) -> tuple[HistorySelection, ...]:
    out = []
    for kind, names in plan.history_code_sets:
        if names is None or kind not in _READ:
            continue
        sets = [mappings.code_sets[n] for n in names]
        codes = {normal(c) for s in sets for _, c in (*s.matcher.exact, *s.matcher.excluded_exact)}
        prefixes = {
            normal(p) for s in sets for _, p in (*s.matcher.prefixes, *s.matcher.excluded_prefixes)
        }
        terms = dict.fromkeys(t for s in sets for t in s.terms.terms)
        out.append(
            HistorySelection(kind, tuple(sorted(codes)), tuple(sorted(prefixes)), _words(terms))
        )
    return tuple(out)


def _words(terms: Iterable[str]) -> str | None:
    """The safety net's TermMatcher pattern in RE2: a term's words joined by runs of whitespace
    or hyphens, not inside a longer word (ASCII word characters: non-ASCII lines are kept)."""
    alternatives = sorted(
        {rf"[{_ASCII_SPACE}\-]+".join(re.escape(w) for w in t.split()) for t in terms},
        key=len,
        reverse=True,
    )
    if not alternatives:
        return None
    return r"(?i)(?:^|[^A-Za-z0-9_])(?:" + "|".join(alternatives) + r")(?:[^A-Za-z0-9_]|$)"


MACROS = (
    # A CodeableConcept that cannot bear on any check: a non-empty coding list, every coding an
    # object with a string system and code, none of them a code the criteria read (by code
    # string alone: a wider net than the reader's system-and-code pairs), one of them LOINC.
    """CREATE OR REPLACE TEMP MACRO coded_beyond(cc, wanted) AS (
        coalesce(json_type(cc, '$.coding') = 'ARRAY', false)
        AND coalesce(json_array_length(cc, '$.coding') > 0, false)
        AND coalesce(list_bool_and(list_transform(json_extract(cc, '$.coding[*]'), lambda x:
            json_type(x) = 'OBJECT'
            AND coalesce(json_type(x, '$.system') = 'VARCHAR', false)
            AND coalesce(json_type(x, '$.code') = 'VARCHAR', false)
            AND NOT list_contains(wanted, json_extract_string(x, '$.code')))), false)
        AND coalesce(list_contains(json_extract_string(cc, '$.coding[*].system'),
                                   'http://loinc.org'), false))""",
    # A date or dateTime parse_fhir_date takes: its pattern, a year from 1, a real calendar day.
    f"""CREATE OR REPLACE TEMP MACRO day_ok(s) AS (
        regexp_full_match(s, '{DATE_PATTERN}')
        AND left(s, 4) <> '0000'
        AND try_cast(left(s, 4) || '-' || coalesce(nullif(substr(s, 6, 2), ''), '01') || '-'
                     || coalesce(nullif(substr(s, 9, 2), ''), '01') AS DATE) IS NOT NULL)""",
)


def observations_beyond(wanted: list[str]) -> list[tuple[str, list[Any]]]:
    """SQL statements listing in table ``observations_out(f, n)`` the Observations of table
    ``scanned`` that cannot bear on any check, by the rule ``$screen``'s reader applies
    (``bundle_reader.beyond_criteria``): the code and every component's code carry a non-empty
    coding list of objects with a string system and code, one of them LOINC, none a code the
    criteria read (``wanted``, by code string alone: a wider net than the reader's pairs). One
    known only by its name (text, a local code) is kept for the name safety net; one whose code
    cannot be read is kept, for it may be about anything. The parts of each line are computed
    once (a handful of JSON parses), then tested."""
    every = "list_bool_and(list_transform({}, lambda x: x = '{}')) IS NOT false"
    return [
        (
            """CREATE OR REPLACE TEMP TABLE observation_shape AS
            WITH parts AS (
                SELECT f, n, json_keys(j) AS keys,
                    json_extract(j, ['$.code', '$.component']) AS p
                FROM scanned WHERE status = 'keep' AND rt = 'Observation'
            )
            SELECT f, n, keys,
                [json_type(p[1]), json_type(p[1], '$.coding'), json_type(p[2])] AS t,
                json_type(p[1], '$.coding[*]') AS items,
                json_type(p[1], '$.coding[*].system') AS systems,
                json_type(p[1], '$.coding[*].code') AS code_types,
                json_extract_string(p[1], '$.coding[*].system') AS system_values,
                json_extract_string(p[1], '$.coding[*].code') AS code_values,
                CASE WHEN json_type(p[2]) = 'ARRAY' THEN coalesce(list_bool_and(
                    list_transform(json_extract(p[2], '$[*]'), lambda c:
                        json_type(c) = 'OBJECT' AND coded_beyond(json_extract(c, '$.code'), ?))),
                    true) END AS parts_beyond
            FROM parts""",
            [wanted],
        ),
        (
            f"""CREATE OR REPLACE TEMP TABLE observations_out AS
            SELECT f, n FROM observation_shape
            WHERE t[1] = 'OBJECT' AND t[2] = 'ARRAY' AND len(items) > 0
                AND {every.format("items", "OBJECT")}
                AND len(systems) = len(items) AND {every.format("systems", "VARCHAR")}
                AND len(code_types) = len(items) AND {every.format("code_types", "VARCHAR")}
                AND list_contains(system_values, 'http://loinc.org')
                AND NOT list_has_any(code_values, ?)
                AND (coalesce(t[3], 'NULL') = 'NULL' OR coalesce(parts_beyond, false))
                AND len(keys) = len(list_distinct(keys))""",
            [wanted],
        ),
    ]


def leave_out(selections: Iterable[HistorySelection]) -> list[tuple[str, list[str]]]:
    """SQL statements (with their parameters) listing in table ``left_out(f, n)`` the history
    lines of table ``scanned`` (columns f, n, rt, status, j) that may be left out; tables
    ``wanted_history_codes(kind, code)`` and ``wanted_history_prefixes(kind, prefix)`` hold the
    selections' codes and prefixes."""
    statements: list[tuple[str, list[str]]] = [
        (
            "CREATE OR REPLACE TEMP TABLE history_out "
            "(f INTEGER, n BIGINT, rt VARCHAR, codes VARCHAR[])",
            [],
        )
    ]
    for selection in selections:
        statements += _read_without_fault(selection)
    statements.append(
        (
            """CREATE OR REPLACE TEMP TABLE history_known AS
            WITH codes AS (SELECT f, n, rt, code_normal(unnest(codes)) AS code FROM history_out)
            SELECT f, n FROM codes JOIN wanted_history_codes w
                ON w.kind = codes.rt AND w.code = codes.code
            UNION
            SELECT f, n FROM (SELECT f, n, rt, code, unnest(range(1, length(code) + 1)) AS k
                              FROM codes) AS p
                JOIN wanted_history_prefixes w ON w.kind = p.rt AND w.prefix = left(p.code, p.k)""",
            [],
        )
    )
    statements.append(
        (
            """CREATE OR REPLACE TEMP TABLE left_out AS
            SELECT f, n FROM history_out EXCEPT SELECT f, n FROM history_known""",
            [],
        )
    )
    return statements


def _read_without_fault(selection: HistorySelection) -> list[tuple[str, list[str]]]:
    """The lines of the selection's type that the reader reads without fault and whose words no
    check knows, with their codes (matched against the code sets in the next statement). First
    what each line is made of, computed once (one JSON parse for the types of every element read,
    one for the date strings, two per CodeableConcept for its codings), then the tests on it."""
    kind = selection.resource_type
    read = _READ[kind]
    key = _CODE_KEY[kind]
    paths: list[str] = []
    dates: list[str] = []
    items: list[str] = []
    tests: list[str] = []

    def typed(path: str, *allowed: str) -> str:
        paths.append(path)
        i = len(paths)
        return f"coalesce(t[{i}], 'NULL') IN ({', '.join(repr(a) for a in ('NULL', *allowed))})"

    def day(path: str) -> str:
        dates.append(path)
        return f"(coalesce(t[{len(paths)}], 'NULL') <> 'VARCHAR' OR day_ok(s[{len(dates)}]))"

    def every(path: str, *allowed: str) -> str:
        items.append(f"json_type(j, '{path}') AS w{len(items) + 1}")
        listed = ", ".join(repr(a) for a in allowed)
        return (
            f"list_bool_and(list_transform(w{len(items)}, lambda x: x IN ({listed}))) IS NOT false"
        )

    for k in read["concepts"]:
        tests += [typed(f"$.{k}", "OBJECT"), typed(f"$.{k}.text", "VARCHAR")]
        tests.append(typed(f"$.{k}.coding", "ARRAY"))
        tests.append(every(f"$.{k}.coding[*]", "OBJECT"))
        tests.append(every(f"$.{k}.coding[*].system", "VARCHAR", "NULL"))
    for k in read["dates"]:
        tests.append(typed(f"$.{k}", "VARCHAR"))
        tests.append(day(f"$.{k}"))
    for k in read["periods"]:
        tests.append(typed(f"$.{k}", "OBJECT"))
        for end in ("start", "end"):
            tests.append(typed(f"$.{k}.{end}", "VARCHAR"))
            tests.append(day(f"$.{k}.{end}"))
    for k in read["strings"]:
        tests.append(typed(f"$.{k}", "VARCHAR"))
    named = (
        "false"
        if selection.words is None
        else f"""regexp_matches(
        coalesce(json_extract_string(j, '$.{key}.text'), '') || chr(1) ||
        coalesce(array_to_string(json_extract_string(j, '$.{key}.coding[*].display'),
                                 chr(1)), ''), ?)"""
    )
    shape = f"""CREATE OR REPLACE TEMP TABLE history_shape AS
        SELECT f, n, rt, json_type(j, {_paths(paths)}) AS t,
            json_extract_string(j, {_paths(dates)}) AS s, json_keys(j) AS keys,
            {", ".join(items)},
            strlen(j) <> length(j) AS wide, {named} AS named,
            coalesce(json_extract_string(j, '$.{key}.coding[*].code'), []) AS codes
        FROM scanned WHERE status = 'keep' AND rt = '{kind}'"""
    out = f"""INSERT INTO history_out SELECT f, n, rt, codes FROM history_shape
        WHERE NOT wide AND NOT named AND len(keys) = len(list_distinct(keys))
            AND {" AND ".join(tests)}"""
    return [(shape, [] if selection.words is None else [selection.words]), (out, [])]


def _paths(paths: list[str]) -> str:
    return "[" + ", ".join(f"'{p}'" for p in paths) + "]" if paths else "['$.none']"


CODE_NORMAL = (
    "CREATE OR REPLACE TEMP MACRO code_normal(c) AS "
    f"(upper(regexp_replace(c, '[{_ASCII_SPACE}.*†+!]', '', 'g')))"
)


def _sql_string(text: str) -> str:
    return text.replace("'", "''")
