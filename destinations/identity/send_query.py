"""The send table's query (:mod:`reconciler.apply.encode`): a member's records and the values
each encoding sends, every identifier normalised once and every hash computed once, in layers
of one query, by the rules of :mod:`destinations.identity.sql`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from destinations.identity.rules import Encoding, Hash, RuleSet
from destinations.identity.sql import (
    _form,
    _phone_steps,
    _q,
    identifier_source,
    normalised_sql,
)

__all__ = ["send_sql"]


def send_sql(
    source: str,
    encodings: Sequence[Encoding],
    accepted: Sequence[str],
    rules: RuleSet,
    columns: Mapping[str, str],
    default_country: str = "US",
) -> str:
    """A query over the relation ``source`` keeping all of its columns and adding ``rec``
    (what :func:`records_sql` gives) and ``v0 .. vN`` (what :func:`value_sql` gives for each
    of ``encodings``, ``NULL`` for a type without a column) — with each identifier normalised
    once and each hash computed once, however many encodings and records use them.

    ``columns`` maps identifier types to columns of ``source`` (bare names)."""
    canon: dict[tuple[str, str], str] = {}  # (type, column) -> __cN
    coded: dict[tuple[str, str, str, str], str] = {}  # (type, column, form, how) -> __hN
    inner: list[str] = []
    middle: list[str] = []

    steps: list[list[str]] = [[], [], []]  # a phone's first three steps, a layer each
    stepped: list[str] = []

    def canonical(name: str, column: str) -> str:
        if (name, column) not in canon:
            alias = canon[name, column] = f"__c{len(canon)}"
            if name == "phone":  # the lambdas binding its steps cost a fifth of its CPU
                names = (f"{alias}_u", f"{alias}_d", f"{alias}_n")
                *first, last = _phone_steps(f"CAST({column} AS VARCHAR)", default_country, *names)
                for layer, expr, step in zip(steps, first, names, strict=True):
                    layer.append(f"{expr} AS {step}")
                stepped.extend(names)
                inner.append(f"{last} AS {alias}")
            else:
                inner.append(f"{normalised_sql(name, column, default_country)} AS {alias}")
        return canon[name, column]

    def encoded(name: str, column: str, form: str, how: str) -> str:
        """``how``: sha256 | md5 | none (the form itself) of the formed canonical value."""
        key = (name, column, form, how)
        if key not in coded:
            formed = _form(name, form, canonical(name, column))
            expr = f"{how}({formed})" if how != "none" else formed
            coded[key] = f"__h{len(coded)}"
            middle.append(f"{expr} AS {coded[key]}")
        return coded[key]

    def sent(e: Encoding, column: str) -> str:
        how = {Hash.SHA256: "sha256", Hash.MD5: "md5"}.get(e.hash, "none")
        return encoded(e.identifier, column, e.form, how)

    def kept(e: Encoding, column: str) -> str:
        if e.hash in (Hash.SHA256, Hash.RAW):  # a raw value is recorded as its SHA-256
            value = encoded(e.identifier, column, e.form, "sha256")
        else:
            value = sent(e, column)
        return f"{_q(e.prefix + ':')} || {value}"

    # where each type's value is read from, once for the values and the records alike
    names = {*accepted, *(e.identifier for e in encodings)}
    sources = {name: identifier_source(name, columns) for name in names}
    values = [
        sent(e, src) if (src := sources[e.identifier]) is not None else "NULL" for e in encodings
    ]
    items = []
    anchors = []  # the records of identifiers that match by themselves (rules.anchors)
    for name in accepted:
        column = sources[name]
        if column is not None:
            kept_items = [kept(e, column) for e in rules.for_identifier(name)]
            items += kept_items
            anchors += kept_items if rules.anchors is not None and name in rules.anchors else []
    rec = f"list_filter([{', '.join(items)}], lambda __r: __r IS NOT NULL)" if items else None
    if rules.anchors is not None:
        # a member with none of those has no records and sends no value (names, a postcode
        # travel with one of them, never alone)
        ok = " OR ".join(f"({a}) IS NOT NULL" for a in anchors) or "FALSE"
        rec = f"CASE WHEN {ok} THEN {rec} ELSE []::VARCHAR[] END" if rec and anchors else None
        values = [f"CASE WHEN {ok} THEN {v} END" for v in values]
    outer = [f"{rec or '[]::VARCHAR[]'} AS rec", *(f"{v} AS v{i}" for i, v in enumerate(values))]
    hidden = [*stepped, *canon.values(), *coded.values()]
    exclude = f" EXCLUDE ({', '.join(hidden)})" if hidden else ""
    relation = source
    for layer in [*steps, inner]:
        if layer:
            relation = f"(SELECT *{''.join(', ' + x for x in layer)} FROM {relation})"
    return (
        f"SELECT *{exclude}, {', '.join(outer)} FROM ("
        f"SELECT *{''.join(', ' + m for m in middle)} FROM {relation})"
    )
