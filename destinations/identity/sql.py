"""The normalisation and hashing of :mod:`destinations.identity`, as DuckDB SQL expressions.

Each function takes a SQL expression for the raw value (a column, ``p.email``) and returns
an expression giving exactly what the Python normaliser gives, ``NULL`` for ``None``, so the
engine can compute the records of millions of members in one query::

    SELECT key, {records_sql(("email", "phone"), SANDBOX, {"email": "p.email",
                                                            "phone": "p.phone"}, "AU")}
    FROM profiles p

``tests/test_identity_sql.py`` proves SQL == Python on the published test vectors and on
generated messy values. Intermediate values are bound once with
``list_transform([value], lambda v: ...)[1]`` (DuckDB has no ``LET``), so the SQL grows
linearly with the rules, not exponentially. Phone rules are generated for one default
country. Uses ``lambda`` syntax, ``sha256`` and ``nfc_normalize`` (DuckDB 1.3 or later; the project
requires 2.0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from destinations.identity.phones import (
    EXTENSION_PATTERN,
    FLOAT_DIGITS,
    PHONE_PATTERN,
    SEPARATORS_FROM,
    SEPARATORS_TO,
    ZERO_TRUNK_CODES,
    country_rules,
)
from destinations.identity.rules import Encoding, Hash, RuleSet
from destinations.identity.text import INVISIBLE, WHITESPACE, char_class, sql_string
from destinations.identity.types import (
    CANONICAL,
    DATE_PATTERN,
    GMAIL_DOMAINS,
    TYPES,
    US_STATES,
    email_pattern,
)

__all__ = [
    "email_sql",
    "normalised_sql",
    "phone_sql",
    "record_sql",
    "records_sql",
    "value_sql",
]

_WS_CLASS = char_class(WHITESPACE, sql=True)


def _q(text: str) -> str:
    return sql_string(text)


def _let(value: str, var: str, body: str) -> str:
    """``body`` with ``var`` bound to ``value`` (evaluated once)."""
    return f"list_transform([{value}], lambda {var}: {body})[1]"


def _in(expr: str, values: Sequence[str | int]) -> str:
    items = ", ".join(_q(v) if isinstance(v, str) else str(v) for v in values)
    return f"{expr} IN ({items})" if values else "false"


def _translated(x: str, source: str, target: str = "") -> str:
    """``translate(x, source, target)`` for a value that is not ASCII (each character of
    ``source`` becomes the one at its place in ``target``, or goes); an ASCII value, almost
    every one, as it is: translate costs ~1.7 us a value, the test of the lengths nothing."""
    translated = f"translate({x}, {sql_string(source)}, {sql_string(target)})"
    return f"(CASE WHEN strlen({x}) = length({x}) THEN {x} ELSE {translated} END)"


def _trim(x: str) -> str:
    # an anchored regexp_replace is about 7x cheaper than trim() with a 30-character set
    return f"regexp_replace({x}, {_q('^' + _WS_CLASS + '+|' + _WS_CLASS + '+$')}, '', 'g')"


def _lower(x: str) -> str:
    return f"lower({x})"


# --- canonical forms -----------------------------------------------------------------------


def email_sql(column: str) -> str:
    """Trimmed, lowercased e-mail of the shape ``local@domain.tld`` without invisible
    formatting characters (:data:`~destinations.identity.text.INVISIBLE`), else ``NULL``.

    The shape allows no whitespace anywhere (and lowercasing makes none), so a value whose
    lowercase form has the shape already is its own trimmed form: that common case skips the
    trimming expression (a third of the cost)."""
    shape = _q(email_pattern(sql=True))
    body = f"CASE WHEN regexp_full_match(__e, {shape}) THEN __e END"
    lowered = _lower(column)
    full = _let(_lower(_trim(_translated(column, INVISIBLE))), "__e", body)
    return f"CASE WHEN regexp_full_match({lowered}, {shape}) THEN {lowered} ELSE {full} END"


def phone_sql(column: str, default_country: str) -> str:
    """E.164 with ``+`` for national numbers of ``default_country`` and for international
    ones (``+``, ``00``, the country's dialling prefix, a ``(0)`` after the code)."""
    shaped, digits, number, checked = _phone_steps(column, default_country)
    return _let(shaped, "__u", _let(digits, "__d", _let(number, "__n", checked)))


def _phone_steps(
    column: str, default_country: str, u: str = "__u", d: str = "__d", n: str = "__n"
) -> tuple[str, str, str, str]:
    """:func:`phone_sql` in four steps, each over the value of the one before, named ``u``,
    ``d`` and ``n``: the text that has the shape, its digits (with the ``+``), the number
    without ``+``, and the E.164 number. :func:`phone_sql` binds them with lambdas;
    the send query (:mod:`destinations.identity.send_query`) computes each step as a column of
    its own query layer (no lambda)."""
    cc, trunk, idd, lengths = country_rules(default_country)
    allowed = sorted(lengths)
    # other spaces and dashes read as " " and "-", invisible characters dropped
    column = _translated(column, SEPARATORS_FROM, SEPARATORS_TO)
    # u: the text that passed the shape check, with a trailing extension cut off if needed
    shape = _q(PHONE_PATTERN)
    cut = f"regexp_replace(__t, {_q(EXTENSION_PATTERN)}, '')"
    text = (
        f"CASE WHEN regexp_full_match(__t, {shape}) THEN __t "
        f"WHEN regexp_full_match({cut}, {shape}) THEN {cut} END"
    )
    # d: the digits, with a leading "+" when the number was written with one. u has the
    # shape, whose only place for a "+" is its optional group after the leading spaces and
    # "(": so it contains a "+" exactly when the number starts with one (a third of the
    # cost of trimming the start and testing it)
    # Most numbers hold nothing but digits, spaces and that "+": dropping the spaces is their
    # digits, at a third of the cost of the global regexp_replace the others go through
    plus = f"contains({u}, '+')"
    spelled = f"CASE WHEN {plus} THEN '+' ELSE '' END || regexp_replace({u}, '[^0-9]', '', 'g')"
    digits = (
        f"CASE WHEN regexp_matches({u}, '[^0-9+ ]') THEN {spelled} ELSE replace({u}, ' ', '') END"
    )
    # international: drop "+", "00" or the dialling prefix, then a zero trunk after the code
    intl = (
        f"CASE WHEN starts_with({d}, '+') THEN substr({d}, 2) "
        f"WHEN starts_with({d}, {_q(idd)}) THEN substr({d}, {len(idd) + 1}) "
        f"ELSE substr({d}, 3) END"
    )
    zero_trunk = " ".join(
        f"WHEN substr(__i, {size + 1}, 1) = '0' AND "
        f"{_in(f'substr(__i, 1, {size})', codes)} "
        f"THEN substr(__i, 1, {size}) || substr(__i, {size + 2})"
        for size in (1, 2, 3)
        if (codes := sorted(c for c in ZERO_TRUNK_CODES if len(c) == size))
    )
    international = _let(intl, "__i", f"CASE {zero_trunk} ELSE __i END")
    # national: drop one trunk prefix (or a calling code that only makes sense that way)
    whens = []
    if trunk:
        condition = f"starts_with({d}, {_q(trunk)})"
        if trunk[0] != "0":
            condition += f" AND {_in(f'length({d}) - {len(trunk)}', allowed)}"
        whens.append(f"WHEN {condition} THEN substr({d}, {len(trunk) + 1})")
    cc_condition = (
        f"starts_with({d}, {_q(cc)}) AND NOT {_in(f'length({d})', allowed)} "
        f"AND {_in(f'length({d}) - {len(cc)}', allowed)}"
    )
    if trunk:
        cc_condition = f"NOT starts_with({d}, {_q(trunk)}) AND {cc_condition}"
    whens.append(f"WHEN {cc_condition} THEN substr({d}, {len(cc) + 1})")
    national = _let(
        f"CASE {' '.join(whens)} ELSE {d} END",
        "__s",
        f"CASE WHEN {_in('length(__s)', allowed)} THEN {_q(cc)} || __s END",
    )
    is_international = (
        f"starts_with({d}, '+') OR starts_with({d}, '00') OR starts_with({d}, {_q(idd)})"
    )
    number = f"CASE WHEN {is_international} THEN {international} ELSE {national} END"
    checked = (
        f"CASE WHEN length({n}) BETWEEN 8 AND 15 AND NOT starts_with({n}, '0') THEN '+' || {n} END"
    )
    # a value that has the shape untrimmed differs from its trimmed form only by ASCII spaces
    # at its ends, which neither the "+" test nor the digits see: it skips the trimming
    untrimmed = f"regexp_full_match({column}, {shape})"
    # a number that went through a float column on its way ("61412345678.0"): its digits
    floated = f"contains({column}, '.') AND regexp_full_match({column}, {_q(FLOAT_DIGITS)})"
    shaped = (
        f"CASE WHEN {floated} THEN split_part({_trim(column)}, '.', 1) "
        f"WHEN {untrimmed} THEN {column} ELSE {_let(_trim(column), '__t', text)} END"
    )
    return shaped, digits, number, checked


def _madid(column: str, default_country: str) -> str:
    pattern = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    body = (
        f"CASE WHEN __m <> '00000000-0000-0000-0000-000000000000' "
        f"AND regexp_full_match(__m, {_q(pattern)}) THEN __m END"
    )
    return _let(_lower(_trim(column)), "__m", body)


def _external_id(column: str, default_country: str) -> str:
    return f"nullif({_trim(column)}, '')"


def _name(column: str, default_country: str = "") -> str:
    # letters and combining marks (Indic vowel signs and viramas), as in Python
    not_letter = "[^\\pL\\pM" + _WS_CLASS[1:-1] + "]"
    # NUL is not a letter either; dropped first because nfc_normalize stops at it
    composed = f"nfc_normalize(replace({column}, chr(0), ''))"
    letters = f"regexp_replace(lower({composed}), {_q(not_letter)}, '', 'g')"
    spaced = f"regexp_replace({letters}, {_q(_WS_CLASS + '+')}, ' ', 'g')"
    kept = f"nullif(trim({spaced}, ' '), '')"
    # marks alone are no name
    return _let(kept, "__n", "CASE WHEN regexp_matches(__n, '\\pL') THEN __n END")


def _first_initial(column: str, default_country: str) -> str:
    return f"nullif(substr(replace({_name(column)}, ' ', ''), 1, 1), '')"


def _gender(column: str, default_country: str) -> str:
    body = (
        f"CASE WHEN {_in('__g', ['m', 'male', 'man'])} THEN 'm' "
        f"WHEN {_in('__g', ['f', 'female', 'woman'])} THEN 'f' END"
    )
    return _let(_lower(_trim(column)), "__g", body)


def _date(column: str, default_country: str) -> str:
    anchored = _q("^" + DATE_PATTERN)
    parts = " || '-' || ".join(f"regexp_extract(__b, {anchored}, {i})" for i in (1, 2, 3))
    date = f"try_cast({parts} AS DATE)"
    valid = _let(
        date, "__v", "CASE WHEN year(__v) BETWEEN 1900 AND 2099 THEN CAST(__v AS VARCHAR) END"
    )
    body = f"CASE WHEN regexp_full_match(__b, {_q(DATE_PATTERN)}) THEN {valid} END"
    return _let(_trim(column), "__b", body)


def _postal_code(column: str, default_country: str) -> str:
    collapsed = f"trim(regexp_replace({column}, {_q(_WS_CLASS + '+')}, ' ', 'g'), ' ')"
    pattern = _q("[0-9A-Za-z]+(?:[ \\-][0-9A-Za-z]+)*")
    body = f"CASE WHEN length(__z) <= 16 AND regexp_full_match(__z, {pattern}) THEN upper(__z) END"
    return _let(collapsed, "__z", body)


def _country(column: str, default_country: str) -> str:
    body = "CASE WHEN regexp_full_match(__k, '[A-Za-z]{2}') THEN lower(__k) END"
    return _let(_trim(column), "__k", body)


_CANONICAL: Mapping[str, Callable[[str, str], str]] = {
    "email": lambda column, _country: email_sql(column),
    "phone": phone_sql,
    "madid": _madid,
    "external_id": _external_id,
    "first_name": _name,
    "last_name": _name,
    "first_initial": _first_initial,
    "gender": _gender,
    "date_of_birth": _date,
    "city": _name,
    "state": _name,
    "postal_code": _postal_code,
    "country": _country,
}

# --- platform forms (functions of the canonical value) -------------------------------------


def _google_email(c: str) -> str:
    local = "replace(split_part(split_part(__f, '@', 1), '+', 1), '.', '')"
    gmail = _in("split_part(__f, '@', 2)", list(GMAIL_DOMAINS))
    body = (
        f"CASE WHEN {gmail} THEN CASE WHEN {local} <> '' "
        f"THEN {local} || '@' || split_part(__f, '@', 2) END ELSE __f END"
    )
    return _let(c, "__f", body)


def _meta_state(c: str) -> str:
    cases = " ".join(f"WHEN {_q(name)} THEN {_q(code)}" for name, code in US_STATES.items())
    return _let(f"replace({c}, ' ', '')", "__l", f"CASE __l {cases} ELSE nullif(__l, '') END")


_FORMS: Mapping[tuple[str, str], Callable[[str], str]] = {
    ("email", "google"): _google_email,
    ("phone", "digits"): lambda c: f"substr({c}, 2)",
    **{
        (name, "letters"): lambda c: f"nullif(replace({c}, ' ', ''), '')"
        for name in ("first_name", "last_name", "city")
    },
    ("state", "meta"): _meta_state,
    ("postal_code", "meta"): lambda c: (
        f"nullif(lower(replace(split_part({c}, '-', 1), ' ', '')), '')"
    ),
    ("date_of_birth", "year"): lambda c: f"substr({c}, 1, 4)",
    ("date_of_birth", "month"): lambda c: f"substr({c}, 6, 2)",
    ("date_of_birth", "day"): lambda c: f"substr({c}, 9, 2)",
    ("country", "upper"): lambda c: f"upper({c})",
}


def _form(identifier: str, form: str, canonical: str) -> str:
    if form == CANONICAL:
        return canonical
    try:
        return _FORMS[identifier, form](canonical)
    except KeyError:
        raise ValueError(f"no SQL for form {form!r} of identifier type {identifier!r}") from None


def normalised_sql(
    identifier: str, column: str, default_country: str = "US", form: str = CANONICAL
) -> str:
    """The normalised value of ``column`` as identifier type ``identifier`` (in ``form``),
    ``NULL`` when unusable; ``default_country`` matters for phones only."""
    if identifier not in _CANONICAL:
        raise ValueError(f"unknown identifier type {identifier!r}; known: {', '.join(TYPES)}")
    canonical = _CANONICAL[identifier](f"CAST({column} AS VARCHAR)", default_country)
    return _form(identifier, form, canonical)


def _encoded(encoding: Encoding, formed: str, *, record: bool) -> str:
    if encoding.hash is Hash.SHA256 or (record and encoding.hash is Hash.RAW):
        value = f"sha256({formed})"
    elif encoding.hash is Hash.MD5:
        value = f"md5({formed})"
    else:
        value = formed
    return f"{_q(encoding.prefix + ':')} || {value}" if record else value


def value_sql(encoding: Encoding, column: str, default_country: str = "US") -> str:
    """What an adapter sends for ``encoding`` (a hash, or the normalised value), or ``NULL``."""
    formed = normalised_sql(encoding.identifier, column, default_country, encoding.form)
    return _encoded(encoding, formed, record=False)


def record_sql(encoding: Encoding, column: str, default_country: str = "US") -> str:
    """The record string (``<prefix>:<...>``) for ``encoding``, or ``NULL``."""
    formed = normalised_sql(encoding.identifier, column, default_country, encoding.form)
    return _encoded(encoding, formed, record=True)


def identifier_source(name: str, columns: Mapping[str, str]) -> str | None:
    """The SQL a type's value is read from: its column, or — for a type with a ``fallback``
    (``first_initial`` from ``first_name``) — the fallback's column where the member has no
    value of its own, as :func:`rules.records` does in Python. None: no column at all."""
    column = columns.get(name)
    fallback = TYPES[name].fallback
    other = columns.get(fallback) if fallback is not None else None
    if column is not None and other is not None:
        return f"coalesce(CAST({column} AS VARCHAR), CAST({other} AS VARCHAR))"
    return column if column is not None else other


def records_sql(
    accepted: Sequence[str],
    rules: RuleSet,
    columns: Mapping[str, str],
    default_country: str = "US",
) -> str:
    """One ``VARCHAR[]`` expression: the member's records in ``accepted`` order (then rule
    order), unusable and missing values skipped — what :func:`rules.records` returns.
    ``columns`` maps identifier types to column expressions; a type without a column counts
    as missing (``first_initial`` falls back to the ``first_name`` column, as in Python)."""
    lists = []
    anchors: list[str] = []  # record prefixes of identifiers that match by themselves
    for name in accepted:
        encodings = rules.for_identifier(name)
        column = identifier_source(name, columns)
        if column is None:
            continue
        canonical = normalised_sql(name, column, default_country)
        items = ", ".join(_encoded(e, _form(name, e.form, "__c"), record=True) for e in encodings)
        lists.append(_let(canonical, "__c", f"[{items}]"))
        if rules.anchors is not None and name in rules.anchors:
            anchors += [e.prefix + ":" for e in encodings]
    if not lists:
        return "[]::VARCHAR[]"
    found = f"list_filter(flatten([{', '.join(lists)}]), lambda __r: __r IS NOT NULL)"
    if rules.anchors is None:
        return found
    if not anchors:  # nothing that matches a person by itself: no records
        return "[]::VARCHAR[]"
    anchored = " OR ".join(f"starts_with(__a, {_q(a)})" for a in sorted(set(anchors)))
    return _let(
        found,
        "__rs",
        f"CASE WHEN len(list_filter(__rs, lambda __a: {anchored})) > 0 "
        "THEN __rs ELSE []::VARCHAR[] END",
    )
