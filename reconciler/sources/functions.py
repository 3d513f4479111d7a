"""The functions untrusted SQL (segments, consent conditions, ``freshness_sql``) may call.

An allow-list, by DuckDB's own function names (what its parser reports, e.g. ``~~`` for
LIKE, ``array_extract`` for ``x[1]``). Every entry is a plain scalar, aggregate, window or
list function that computes over the values it is given: none reads a file, a setting, the
environment, the catalog or another query's data. Names not listed are refused by name;
docs/segment-sql.md is the user's copy of this list and says why.

Left out on purpose: anything naming the engine or its settings (``current_setting``,
``getenv``, ``getvariable``, ``version``, ``duckdb_*``, ``pragma_*``, ``stats``), table and
file functions, sequences (``nextval``), ``error``, random numbers, and the *amplifiers* —
functions that build a value far larger than their input from a number (``repeat``,
``range``, ``generate_series``, ``list_resize``, ``printf``/``format`` widths, ``bar``):
DuckDB's ``memory_limit`` does not bound a single giant string, and a running function
cannot be interrupted, so ``repeat('x', 2e9)`` would eat the machine before any time limit
fires. ``lpad``/``rpad`` are allowed with a literal length of at most :data:`MAX_PAD`.

``replace`` and ``regexp_replace`` are amplifiers too — ``regexp_replace(s, '', r, 'g')``
puts ``r`` between every two characters of ``s``, and nested calls multiply — but cleaning
phones and e-mails needs them, so they are bounded instead of refused: a call that can make
a string longer is run only when its result cannot exceed :data:`MAX_BUILT` bytes
(:func:`bound_lengthening`); ``replace(phone, ' ', '')`` cannot lengthen and runs as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

#: operators as DuckDB's parser names them (LIKE is ``~~``, GLOB ``~~~``, ``^@`` starts_with)
_OPERATORS = (
    "+ - * / // % ** ^ || ~~ !~~ ~~* !~~* ~~~ !~~~ ^@ & | << >> ~ ! !__postfix @ @> <@ && -> ->>"
)
OPERATORS = frozenset(_OPERATORS.split())

STRING = """
    lower upper lcase ucase length len strlen char_length character_length octet_length
    bit_length concat concat_ws substr substring substring_grapheme left right
    left_grapheme right_grapheme trim ltrim rtrim lpad rpad replace reverse strpos instr
    position contains starts_with prefix suffix ends_with like_escape not_like_escape
    ilike_escape not_ilike_escape regexp_matches regexp_full_match regexp_replace
    regexp_extract regexp_extract_all regexp_split_to_array regexp_escape split_part
    string_split str_split string_to_array split string_split_regex str_split_regex ascii
    chr unicode ord md5 md5_number md5_number_lower md5_number_upper sha1 sha256 hash
    strip_accents nfc_normalize levenshtein damerau_levenshtein hamming mismatches jaccard
    jaro_similarity jaro_winkler_similarity editdist3 translate to_base64 from_base64
    base64 hex unhex to_hex from_hex url_encode url_decode array_to_string
"""

MATH = """
    abs ceil ceiling floor round round_even roundbankers trunc sign signbit sqrt cbrt exp
    ln log log2 log10 pow power mod greatest least pi degrees radians sin cos tan asin acos
    atan atan2 cot sinh cosh tanh asinh acosh atanh gcd lcm greatest_common_divisor
    least_common_multiple isnan isinf isfinite even gamma lgamma bit_count xor add subtract
    multiply divide fdiv fmod
"""

DATETIME = """
    today now current_date current_timestamp get_current_timestamp get_current_time
    current_localtimestamp current_localtime transaction_timestamp date_part datepart
    date_trunc datetrunc date_diff datediff date_sub datesub date_add extract year month
    day dayofweek dayofyear dayofmonth week weekofyear weekday isodow isoyear yearweek
    quarter hour minute second millisecond microsecond nanosecond epoch epoch_ms epoch_us
    epoch_ns make_date make_time make_timestamp make_timestamptz make_timestamp_ns last_day
    monthname dayname strftime strptime try_strptime to_timestamp to_days to_months
    to_years to_hours to_minutes to_seconds to_weeks to_milliseconds to_microseconds
    to_centuries to_decades to_millennia to_quarters age century decade era millennium
    time_bucket timezone julian timezone_hour timezone_minute
"""

CONDITIONAL = """
    coalesce ifnull nullif if typeof
"""

AGGREGATE = """
    count count_star sum avg mean min max any_value arbitrary first last string_agg
    group_concat listagg list array_agg bool_and bool_or bit_and bit_or bit_xor median mode
    quantile quantile_cont quantile_disc approx_count_distinct approx_quantile stddev
    stddev_pop stddev_samp variance var_pop var_samp corr covar_pop covar_samp arg_max
    arg_min argmax argmin max_by min_by product fsum kahan_sum sumkahan favg entropy
    kurtosis kurtosis_pop skewness count_if countif regr_count regr_slope
    regr_intercept regr_r2 regr_avgx regr_avgy
"""

WINDOW = """
    row_number rank dense_rank rank_dense percent_rank cume_dist ntile lag lead
    first_value last_value nth_value
"""

LIST = """
    list_value list_pack list_extract list_element array_extract list_slice array_slice
    list_contains list_has array_contains array_has list_position list_indexof
    array_position array_indexof array_length list_concat list_cat array_concat array_cat
    list_append array_append array_push_back list_prepend array_prepend array_push_front
    list_distinct array_distinct list_unique array_unique list_sort array_sort
    list_reverse_sort array_reverse_sort list_filter array_filter filter list_transform
    array_transform apply list_apply array_apply list_reduce array_reduce reduce
    list_aggregate list_aggr aggregate array_aggregate array_aggr list_sum list_min
    list_max list_count list_avg list_first list_last list_has_any list_has_all
    array_has_any array_has_all flatten unnest list_zip list_intersect array_intersect
    list_where list_select array_where array_select list_grade_up array_grade_up
    list_reverse array_reverse cardinality struct_pack struct_extract struct_insert row
    map map_extract map_extract_value element_at map_keys map_values map_entries
    map_from_entries map_contains
"""

JSON = """
    json_extract json_extract_string json_extract_path json_extract_path_text json_valid
    json_type json_array_length json_contains json_keys json_value json_exists
"""

ALLOWED_FUNCTIONS = frozenset(
    " ".join((STRING, MATH, DATETIME, CONDITIONAL, AGGREGATE, WINDOW, LIST, JSON)).split()
)

#: functions whose size argument (0-based position) must be a literal of at most MAX_PAD
SIZE_ARGUMENT = {"lpad": 1, "rpad": 1}
MAX_PAD = 1000


def size_allowed(name: str, args: list[Any]) -> bool:
    """False when ``name`` takes a size (:data:`SIZE_ARGUMENT`) and ``args`` give it as
    anything but an integer literal of at most :data:`MAX_PAD`."""
    if name not in SIZE_ARGUMENT:
        return True
    pos = SIZE_ARGUMENT[name]
    node = args[pos] if len(args) > pos else None
    if not isinstance(node, dict) or node.get("class") != "CONSTANT":
        return False
    literal = node.get("literal") or node.get("value") or {}
    try:
        return int(str(literal.get("text"))) <= MAX_PAD
    except (TypeError, ValueError, AttributeError):
        return False


# ------------------------------------------------------------------ calls that lengthen strings
#: functions that copy an argument (by position: the replacement) into their result once per
#: match, so that the result can be many times longer than the input
LENGTHENING = {"replace": 2, "regexp_replace": 2}
#: the most bytes a call that lengthens a string may build, per value. The engine builds a
#: value for each of up to 2,048 rows of a vector at once: 100 kB each is ~200 MB, within its
#: memory budget, while cleaning phones, e-mails and names stays far below it
MAX_BUILT = 100_000

_LOCATION = ("query_location", "query_location_length")
_RESERVED = "__reconcile"  # the placeholders and the lambda parameter of the checks

Parse = Callable[[str], dict]
Render = Callable[[dict], str | None]


class Unbounded(Exception):
    """A lengthening call the rewrite could not bound: the guard refuses the SQL."""


def arguments(node: dict) -> list[Any]:
    """The argument expressions of a FUNCTION node of DuckDB's parse tree."""
    args = node.get("arguments") or node.get("children") or []
    return [a.get("expression", a) if isinstance(a, dict) else a for a in args]


def _string(node: object) -> str | None:
    if not isinstance(node, dict) or node.get("class") != "CONSTANT":
        return None
    literal = node.get("literal") or {}
    return str(literal.get("text")) if literal.get("kind") == "STRING" else None


def lengthens(name: str, args: list[Any]) -> bool:
    """Whether a call can return a string longer than its input by more than a constant
    written in the SQL. ``replace(phone, ' ', '')`` and ``regexp_replace(email, '\\s+', '',
    'g')`` cannot (nothing longer replaces what they match), nor ``regexp_replace(phone,
    '^0', '+61')`` (one match: 3 bytes more at most); ``replace(s, '&', ' and ')`` and
    ``regexp_replace(s, '', 'x', 'g')`` can, and nested calls multiply."""
    texts = [_string(a) for a in args]
    if name == "replace":
        if len(texts) != 3:
            return True
        source, target = texts[1], texts[2]
        if target == "" or source == "":  # DuckDB's replace() ignores an empty `source`
            return False
        return source is None or target is None or len(target.encode()) > len(source.encode())
    if len(texts) not in (3, 4) or texts[2] is None:
        return True
    options = texts[3] if len(texts) == 4 else ""
    if options is None:
        return True
    copies = len(re.findall(r"\\[0-9]", texts[2]))  # \0 to \9: the match or a group of it
    written = len(texts[2].encode()) - 2 * copies
    if "g" in options:  # every match; an empty pattern matches between any two characters
        return written > 0 or copies > 1
    return copies > 1  # the first match only: `written` bytes more with one copy


def bound_lengthening(
    sql: str, statement: dict, parse: Parse, render: Render
) -> tuple[str, list[str]]:
    """``sql`` with every call that can lengthen a string (:func:`lengthens`) inside a
    ``CASE`` that raises an error, naming the function and :data:`MAX_BUILT`, instead of
    building a result that could be longer; and the names of the functions so bounded.

    ``statement`` is DuckDB's parse tree of ``sql``; ``parse`` and ``render`` turn SQL into
    such a tree and back. The SQL returned is the user's text with the calls replaced in
    place (the other lines keep their numbers), else the rewritten tree rendered whole --
    either only once DuckDB's parser reads it back as exactly the rewritten tree, so what
    runs is what the guard checked, plus the checks."""
    bounder = _Bounder(parse)
    tree = bounder.rewrite(statement)
    if not bounder.spans:
        return sql, []
    names = sorted({name for name, *_ in bounder.spans})
    if bounder.reserved:  # a name of the user's that the checks would shadow
        raise Unbounded(", ".join(names))
    wanted = _without_locations(tree)
    for candidate in (bounder.splice(sql, render), render({"statements": [tree]})):
        if candidate and _without_locations(_statement(parse, candidate)) == wanted:
            return candidate, names
    raise Unbounded(", ".join(names))


def limit_message(name: str) -> str:
    return (
        f"{name} could build a string of more than {MAX_BUILT} bytes here, the limit of "
        "segment SQL for a call that lengthens a string (see docs/segment-sql.md)"
    )


def exceeded(message: str) -> str | None:
    """The limit a check reported in an engine error's ``message``, if that is what it is."""
    m = re.search(r"'(\w+ could build a string of more than \d+ bytes here[^']*)'", message)
    return m.group(1) if m else None


def _check(name: str, s: str, t: str) -> str:
    """The check around a call of ``name``: the worst case of its result from the lengths of
    the string it works on (``s``) and of its replacement (``t``) -- at most len(s) + 1
    matches, each replaced by ``t`` (a back reference copies at most the match it stands
    in), plus what is not matched. Past the limit it fails the cast of the message to a
    number: ``error()`` would do, but it is volatile, which ``PARTITION BY`` refuses."""
    return (
        f"CASE WHEN (strlen(CAST({s} AS VARCHAR)) + 1) * (strlen(CAST({t} AS VARCHAR)) + 1) > "
        f"{MAX_BUILT} THEN CAST(CAST('{limit_message(name)}' AS INTEGER) AS VARCHAR) "
        "ELSE __reconcile_call END"
    )


class _Bounder:
    def __init__(self, parse: Parse):
        self.parse = parse
        self._templates: dict[tuple[str, bool], dict] = {}
        #: (function, location, length, checked node) of every call bounded
        self.spans: list[tuple[str, int, int, dict]] = []
        self.reserved = False

    def rewrite(self, node: Any) -> Any:
        """``node`` with its lengthening calls checked (a copy: the tree is left as it is)."""
        if isinstance(node, list):
            return [self.rewrite(item) for item in node]
        if not isinstance(node, dict):
            return node
        names = node.get("column_names") if node.get("class") == "COLUMN_REF" else None
        self.reserved |= any(str(n).lower().startswith(_RESERVED) for n in names or ())
        before = len(self.spans)
        out = {key: self.rewrite(value) for key, value in node.items()}
        name = str(out.get("function_name") or "").lower()
        if name not in LENGTHENING or out.get("is_operator") or not lengthens(name, arguments(out)):
            return out
        # nested: s and t are computed once, into the argument of a lambda; copying them into
        # the check would double the query at every level of nesting
        checked = self._check(name, out, nested=len(self.spans) > before)
        where, length = node.get("query_location"), node.get("query_location_length")
        if not (isinstance(where, int) and isinstance(length, int) and length > 0):
            where, length = -1, 0  # no place in the text: splice() gives up
        self.spans.append((name, where, length, checked))
        return checked

    def template(self, name: str, nested: bool) -> dict:
        """The check around a call of ``name`` as a parse tree: ``__reconcile_s``,
        ``__reconcile_t`` and ``__reconcile_call`` are the places of the call's string,
        replacement and the call itself (there reading ``__reconcile_v.s`` and ``.t``)."""
        if (name, nested) not in self._templates:
            sql = "SELECT " + _check(name, "__reconcile_s", "__reconcile_t")
            if nested:
                sql = (
                    "SELECT list_transform([struct_pack(s := __reconcile_s, t := "
                    "__reconcile_t)], lambda __reconcile_v: "
                    f"{_check(name, '__reconcile_v.s', '__reconcile_v.t')})[1]"
                )
            self._templates[name, nested] = _statement(self.parse, sql)
        return self._templates[name, nested]

    def _check(self, name: str, call: dict, *, nested: bool) -> dict:
        pos = LENGTHENING[name]
        args = arguments(call)
        if len(args) <= pos:
            raise Unbounded(name)
        template = self.template(name, nested)["node"]["select_list"][0]
        holes = {"s": args[0], "t": args[pos]}
        if nested:  # the call reads s and t from the lambda's argument
            refs = _placeholders(template)
            call = _copy(call)
            slots: list[Any] = call.get("arguments") or call.get("children") or []
            for index, key in ((0, "v.s"), (pos, "v.t")):
                if isinstance(slots[index], dict) and "expression" in slots[index]:
                    slots[index]["expression"] = _copy(refs[key])
                else:
                    slots[index] = _copy(refs[key])
        holes["call"] = {**call, "alias": ""}  # `AS name` names the check, not the call
        return {**_fill(template, holes), "alias": call.get("alias", "")}

    def splice(self, sql: str, render: Render) -> str | None:
        """``sql`` with the text of each outermost bounded call replaced by its check, and the
        line breaks the call spanned after it (so that later lines keep their numbers); None
        when a call has no place in the text."""
        spans = [s for s in self.spans if s[1] >= 0]
        if len(spans) != len(self.spans):
            return None
        outer = [
            s
            for s in spans
            if not any(o is not s and o[1] <= s[1] and s[1] + s[2] <= o[1] + o[2] for o in spans)
        ]
        text = sql.encode()
        for _, start, length, node in sorted(outer, key=lambda s: -s[1]):
            skeleton = _statement(self.parse, "SELECT NULL")  # a SELECT of the check alone
            skeleton["node"]["select_list"] = [{**node, "alias": ""}]
            rendered = render({"statements": [skeleton]})
            if rendered is None or not rendered.startswith("SELECT "):
                return None
            breaks = text[start : start + length].count(b"\n")
            replacement = (rendered.removeprefix("SELECT ") + "\n" * breaks).encode()
            text = text[:start] + replacement + text[start + length :]
        return text.decode()


def _statement(parse: Parse, sql: str) -> dict:
    statements = parse(sql).get("statements") or []
    return statements[0] if len(statements) == 1 else {}


def _copy(node: Any) -> Any:
    return json.loads(json.dumps(node))


def _placeholders(node: Any, found: dict | None = None) -> dict[str, dict]:
    """The placeholder column references of a template by name: ``__reconcile_v.s`` is
    ``v.s``."""
    found = {} if found is None else found
    if isinstance(node, list):
        for item in node:
            _placeholders(item, found)
    elif isinstance(node, dict):
        names = node.get("column_names") if node.get("class") == "COLUMN_REF" else None
        if names and str(names[0]).startswith(_RESERVED):
            found[".".join(names).replace(_RESERVED + "_", "")] = node
        for value in node.values():
            _placeholders(value, found)
    return found


def _fill(node: Any, holes: dict[str, Any]) -> Any:
    """The template with a copy of each hole in place of its placeholder."""
    if isinstance(node, list):
        return [_fill(item, holes) for item in node]
    if not isinstance(node, dict):
        return node
    names = node.get("column_names") if node.get("class") == "COLUMN_REF" else None
    key = str(names[0]).removeprefix(_RESERVED + "_") if names and len(names) == 1 else None
    if key in holes:
        hole = _copy(holes[key])
        return {**hole, "alias": node["alias"]} if node.get("alias") else hole  # s := ...
    return {k: _fill(value, holes) for k, value in node.items()}


def _without_locations(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_locations(item) for item in node]
    if isinstance(node, dict):
        return {k: _without_locations(v) for k, v in node.items() if k not in _LOCATION}
    return node
