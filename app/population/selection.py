"""What of a patient's lines a population run may leave out, as DuckDB SQL: only what provably
cannot change the patient's screening, so that the answer is the one ``$screen`` gives for the
whole record (tests/test_population_selection.py proves it on every golden case and fuzzes every
element of each type).

- An Observation, by the rule ``$screen``'s reader applies (``bundle_reader.beyond_criteria``):
  its code and every component's code carry a non-empty list of codings, each an object with a
  string system and code, one of them LOINC, none a code the criteria read (by code string: a
  wider net than the reader's pairs). One known only by its name (text, a local code) is kept
  for the name safety net; one whose code cannot be read is kept: it may be about anything.
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

Every other type is kept whole. A line with a key twice is kept (DuckDB reads the first, the
reader the last). All of it is one scan: :class:`Selection` gives the columns and the status
branches of the query that reads the files (``ndjson_source``).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass

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
        key=lambda a: (-len(a), a),
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
    f"""CREATE OR REPLACE TEMP MACRO code_normal(c) AS
        (upper(regexp_replace(c, '[{_ASCII_SPACE}.*†+!]', '', 'g')))""",
)
"""Run once per connection, before :func:`Selection.columns` and :func:`Selection.status`."""


@dataclass(frozen=True, slots=True)
class Selection:
    """The SQL of one scan over the lines (columns ``j``, ``rt``, ``ok``): :meth:`columns` are
    computed per line (each JSON function once: DuckDB would compute an expression again for
    each place a subquery's column is used), :meth:`status` then says, per line of a selected
    type, whether it may be left out. Patterns are SQL literals (RE2 compiles them once)."""

    observation_codes: tuple[str, ...]
    history: tuple[HistorySelection, ...]

    def columns(self) -> list[str]:
        out = [
            "CASE WHEN ok THEN json_keys(j) END AS sel_keys",
            "strlen(j) <> length(j) AS sel_wide",
            *self._observation_columns(),
        ]
        for h in self.history:
            out += _history_columns(h)
        return out

    def status(self) -> list[str]:
        """``WHEN ... THEN ...`` branches of the line's status (after the type and patient
        tests): 'not-needed' for an Observation beyond the criteria, 'left-out' for a history
        line no check knows."""
        distinct = "len(sel_keys) = list_unique(sel_keys)"
        every = "list_bool_and(list_transform({}, lambda x: x = '{}')) IS NOT false"
        wanted = _sql_list(self.observation_codes)
        observation = f"""WHEN rt = 'Observation' AND {distinct}
            AND regexp_full_match(obs_t, 'OBJECT,ARRAY,(NULL|ARRAY)')
            AND len(obs_items) > 0 AND {every.format("obs_items", "OBJECT")}
            AND len(obs_systems) = len(obs_items) AND {every.format("obs_systems", "VARCHAR")}
            AND len(obs_code_types) = len(obs_items)
            AND {every.format("obs_code_types", "VARCHAR")}
            AND list_contains(obs_system_values, 'http://loinc.org')
            AND NOT list_has_any(obs_code_values, {wanted})
            AND coalesce(obs_parts_beyond, true)
            THEN 'not-needed'"""
        return [observation, *(_history_status(h, distinct) for h in self.history)]

    def _observation_columns(self) -> list[str]:
        only = "CASE WHEN rt = 'Observation' AND ok THEN {} END"
        wanted = _sql_list(self.observation_codes)
        return [
            only.format(
                "array_to_string(list_transform(json_type(j, ['$.code', '$.code.coding', "
                "'$.component']), lambda x: coalesce(x, 'NULL')), ',')"
            )
            + " AS obs_t",
            only.format("json_type(j, '$.code.coding[*]')") + " AS obs_items",
            only.format("json_type(j, '$.code.coding[*].system')") + " AS obs_systems",
            only.format("json_type(j, '$.code.coding[*].code')") + " AS obs_code_types",
            only.format("json_extract_string(j, '$.code.coding[*].system')")
            + " AS obs_system_values",
            only.format("json_extract_string(j, '$.code.coding[*].code')") + " AS obs_code_values",
            only.format(
                "CASE WHEN json_type(j, '$.component') = 'ARRAY' THEN coalesce(list_bool_and("
                "list_transform(json_extract(j, '$.component[*]'), lambda c: "
                f"json_type(c) = 'OBJECT' AND coded_beyond(json_extract(c, '$.code'), {wanted}))"
                "), true) END"
            )
            + " AS obs_parts_beyond",
        ]


def _prefix(h: HistorySelection) -> str:
    return f"sel_{h.resource_type.lower()}"


def _elements(kind: str) -> list[tuple[str, str]]:
    """(JSON path, the JSON types the reader accepts there) of every element it reads of the
    type, in one order: the paths of the ``_t`` column and the pattern its value must match."""
    read = _READ[kind]
    out: list[tuple[str, str]] = []
    for k in read["concepts"]:
        out += [(f"$.{k}", "OBJECT"), (f"$.{k}.text", "VARCHAR"), (f"$.{k}.coding", "ARRAY")]
    out += [(f"$.{k}", "VARCHAR") for k in read["dates"]]
    for k in read["periods"]:
        out += [(f"$.{k}", "OBJECT"), (f"$.{k}.start", "VARCHAR"), (f"$.{k}.end", "VARCHAR")]
    out += [(f"$.{k}", "VARCHAR") for k in read["strings"]]
    return out


def _history_columns(h: HistorySelection) -> list[str]:
    """Per line of the type: the JSON type of each element the reader reads (one string), the
    date strings, each CodeableConcept's coding types and system types, the words found, the
    codes known."""
    kind, read, key, c = (
        h.resource_type,
        _READ[h.resource_type],
        _CODE_KEY[h.resource_type],
        _prefix(h),
    )
    only = f"CASE WHEN rt = '{kind}' AND ok THEN {{}} END"
    out = []
    for k in read["concepts"]:
        out.append(only.format(f"json_type(j, '$.{k}.coding[*]')") + f" AS {c}_{k}_items")
        out.append(only.format(f"json_type(j, '$.{k}.coding[*].system')") + f" AS {c}_{k}_systems")
    paths = [path for path, _ in _elements(kind)]
    dates = [f"$.{k}" for k in read["dates"]]
    dates += [f"$.{k}.{end}" for k in read["periods"] for end in ("start", "end")]
    out.append(
        only.format(
            f"array_to_string(list_transform(json_type(j, {_sql_list(paths)}), "
            "lambda x: coalesce(x, 'NULL')), ',')"
        )
        + f" AS {c}_t"
    )
    out.append(only.format(f"json_extract_string(j, {_sql_list(dates)})") + f" AS {c}_dates")
    named = (
        "false"
        if h.words is None
        else f"""regexp_matches(
            coalesce(json_extract_string(j, '$.{key}.text'), '') || chr(1) ||
            coalesce(array_to_string(json_extract_string(j, '$.{key}.coding[*].display'),
                                     chr(1)), ''), '{_sql_string(h.words)}')"""
    )
    out.append(only.format(named) + f" AS {c}_named")
    known = [
        f"regexp_full_match(code_normal(x), '{_sql_string(_alternatives(h.codes))}')"
        if h.codes
        else "false",
        f"regexp_matches(code_normal(x), '^{_sql_string(_alternatives(h.prefixes))}')"
        if h.prefixes
        else "false",
    ]
    out.append(
        only.format(
            "list_bool_or(list_transform(coalesce(json_extract_string(j, "
            f"'$.{key}.coding[*].code'), []), lambda x: x IS NOT NULL AND ({' OR '.join(known)})))"
        )
        + f" AS {c}_known"
    )
    return out


def _history_status(h: HistorySelection, distinct: str) -> str:
    kind, read, c = h.resource_type, _READ[h.resource_type], _prefix(h)
    shape = [f"(NULL|{allowed})" for _, allowed in _elements(kind)]
    codings = " AND ".join(
        f"list_bool_and(list_transform({c}_{k}_items, lambda x: x = 'OBJECT')) IS NOT false "
        f"AND list_bool_and(list_transform({c}_{k}_systems, lambda x: x IN ('VARCHAR', 'NULL'))) "
        "IS NOT false"
        for k in read["concepts"]
    )
    return f"""WHEN rt = '{kind}' AND NOT sel_wide AND {distinct}
            AND regexp_full_match({c}_t, '{",".join(shape)}')
            AND {codings}
            AND list_bool_and(list_transform({c}_dates, lambda x: x IS NULL OR day_ok(x)))
                IS NOT false
            AND NOT {c}_named AND NOT coalesce({c}_known, false)
            THEN 'left-out'"""


def _alternatives(items: Iterable[str]) -> str:
    return "(?:" + "|".join(re.escape(i) for i in items) + ")"


def _sql_list(items: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{_sql_string(i)}'" for i in items) + "]::VARCHAR[]"


def _sql_string(text: str) -> str:
    return text.replace("'", "''")
