"""The engine's error message for untrusted SQL that failed, without data from the rows.

A pull request's plan job prints errors to a CI log anyone on the repository can read, and an
execution error can quote the value it failed on: ``CAST(string_agg(email, ';') AS INT)``
puts every address into a conversion error. The rule:

- errors about the query *text* — Parser, Binder, Catalog — are kept: they name the SQL,
  columns and types, never row values (the guard refuses unknown tables and functions
  before anything runs, so no catalog listing can show up in them either);
- any other error (Conversion, Invalid Input, Out of Range, ...) is kept only when every
  word in it is accounted for: each quoted fragment occurs in the SQL text, and every other
  word occurs in the SQL text or in the vocabulary of the engine's own message templates.
  One unaccounted word (a name, a number, a fragment of an address) and the message is
  replaced by its class ("Conversion Error") and a note saying why.

It errs on the side of hiding: a scrubbed message still names the segment file and line.
"""

from __future__ import annotations

import re

import duckdb

__all__ = ["safe_engine_error"]

#: error classes about the query text, not its data
_QUERY_TEXT = {"Parser", "Syntax", "Binder", "Catalog"}

#: words of the engine's own message templates (lower case)
_TEMPLATES = """
    could not convert string to when casting from source column type with value can't be
    cast because the value is out of range for destination division by zero in expression
    use try return null this or set error_on_division_by_zero false all divisions invalid
    field format expected yyyy mm dd hh ss us zone overflow multiplication addition
    subtraction negation of a an and input error cannot access file system operations are
    disabled configuration
"""
_TEMPLATE_WORDS = frozenset(_TEMPLATES.split())
_TYPE_WORD = re.compile(
    r"^(u?(tiny|small|big|huge)?int(\d+)?|int128|uint128|integer|decimal|numeric|double|"
    r"float|real|varchar|text|bool|boolean|date|time|timestamp|timestamptz|interval|uuid|"
    r"blob|json|bit|enum|struct|map|list)$"
)
_QUOTED = re.compile(r"'((?:[^']|'')*)'|\"((?:[^\"]|\"\")*)\"")
_WORD = re.compile(r"[^\s(),.!:;\[\]{}<>=*/+\-|^~`]+")
_PREFIX = re.compile(r"^\s*([A-Za-z][A-Za-z ]*?) Error:\s*")


def safe_engine_error(exc: duckdb.Error | str, sql: str) -> tuple[str, int | None]:
    """``(detail, line)``: the engine's message (its ``LINE n:`` excerpt of the wrapping
    query left out) or, when it may carry data, only its class; ``line`` is the SQL line
    the engine named, if any."""
    text = str(exc)
    m = re.search(r"\n\s*LINE (\d+):", text)
    line = int(m.group(1)) if m else None
    message = " ".join((text[: m.start()] if m else text).split()).rstrip(".")
    prefix = _PREFIX.match(message)
    cls = prefix.group(1) if prefix else _class_from_type(exc)
    if isinstance(exc, duckdb.OutOfMemoryException) or cls == "Out of Memory":
        return (
            "Out of Memory Error: the query needs more memory than `source.memory_limit` "
            "allows, even spilling to disk within `source.max_temp_directory_size`",
            line,
        )
    if cls in _QUERY_TEXT or _accounted_for(message[prefix.end() if prefix else 0 :], sql):
        return message, line
    return (
        f"{cls} Error (the engine's message is not shown: it may quote values from the data; "
        "run the query on the data yourself to see it)",
        line,
    )


def _class_from_type(exc: duckdb.Error | str) -> str:
    name = type(exc).__name__.removesuffix("Exception") if not isinstance(exc, str) else ""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name) or "Database"


def _accounted_for(message: str, sql: str) -> bool:
    """True when every quoted fragment of ``message`` occurs in ``sql`` and every other word
    occurs in ``sql`` or is a template or type word."""
    sql_words = {w.lower() for w in _WORD.findall(sql)}
    for single, double in _QUOTED.findall(message):
        fragment = (single or double).replace("''", "'").replace('""', '"')
        if fragment and fragment not in sql:
            return False
    rest = _QUOTED.sub(" ", message)
    for word in _WORD.findall(rest):
        w = word.lower().strip("'\"")
        if not w or w in sql_words or w in _TEMPLATE_WORDS or _TYPE_WORD.match(w):
            continue
        return False
    return True
