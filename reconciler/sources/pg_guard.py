"""The guard for untrusted SQL that runs in PostgreSQL: the same rules as for DuckDB
(:mod:`reconciler.sources.guard`), walked on sqlglot's PostgreSQL parse tree.

- one SELECT (the shape check of ``guard`` runs first), no ``FOR UPDATE``/``FOR SHARE``, no
  ``TABLESAMPLE`` (a plan must not change between runs);
- every table is the profiles table, a table listed under ``source.tables`` (in the
  source's schema unless written ``schema.name``) or a CTE in scope where it is read;
  nothing from ``pg_catalog``, ``information_schema`` or another database;
- no table functions (``FROM dblink(...)``, ``generate_series``), no qualified function
  names, only the functions of :data:`ALLOWED` and no cast to a catalog type (``regclass``).

PostgreSQL never sees the text the user wrote: it runs the query *regenerated from the
tree the guard checked*, every identifier quoted (after PostgreSQL's own lower-casing of
unquoted names), so a comment, quote or keyword the two parsers read differently cannot
hide a call — and a bare ``user`` is the column "user", not the ``current_user`` function.
Underneath, the source runs it in a READ ONLY transaction with a statement timeout.
"""

from __future__ import annotations

import re
from typing import Any

from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from reconciler.sources.functions import MAX_PAD

__all__ = ["ALLOWED", "check_postgres_tree"]

DOCS = "docs/segment-sql.md"

#: PostgreSQL functions untrusted SQL may call, by the name PostgreSQL runs. Left out: the
#: catalog, settings and session (``current_setting``, ``set_config``, ``pg_*``, ``version``,
#: ``current_user``), files and large objects (``pg_read_file``, ``lo_import``), other
#: servers (``dblink``), sequences, ``pg_sleep``, random numbers and the amplifiers
#: (``repeat``, ``generate_series``, ``format`` widths) -- see docs/segment-sql.md.
_NAMES = """
    lower upper initcap length char_length character_length octet_length bit_length concat
    concat_ws substring substr left right trim btrim ltrim rtrim lpad rpad replace reverse
    strpos position starts_with split_part regexp_replace regexp_match regexp_like
    regexp_count regexp_instr regexp_substr ascii chr translate md5 sha224 sha256 sha384
    sha512 to_hex encode decode quote_literal quote_ident string_to_array array_to_string
    abs ceil ceiling floor round trunc sign sqrt cbrt exp ln log log10 power pow mod div
    greatest least pi degrees radians sin cos tan asin acos atan atan2 cot sinh cosh tanh
    width_bucket gcd lcm
    now current_date current_timestamp localtimestamp date_part date_trunc extract age
    make_date make_time make_timestamp make_timestamptz make_interval to_char to_date
    to_timestamp to_number date_bin justify_days justify_hours justify_interval isfinite
    timezone
    coalesce nullif cast
    count sum avg min max bool_and bool_or every string_agg array_agg percentile_cont
    percentile_disc mode stddev stddev_pop stddev_samp variance var_pop var_samp corr
    covar_pop covar_samp regr_count regr_slope regr_intercept regr_r2 bit_and bit_or
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value
    last_value nth_value
    array_length array_position array_positions cardinality array_cat array_append
    array_prepend array_remove array_lower array_upper
    json_extract_path json_extract_path_text jsonb_extract_path jsonb_extract_path_text
    json_array_length jsonb_array_length json_typeof jsonb_typeof to_json to_jsonb
    jsonb_exists
"""
ALLOWED = frozenset(_NAMES.split())

#: sqlglot nodes that PostgreSQL runs as an operator or a keyword, not a named call
_OPERATOR_FORMS = (
    exp.Binary,
    exp.Unary,
    exp.Case,
    exp.Exists,
    exp.If,
    exp.Array,
    exp.CurrentDate,
    exp.CurrentTimestamp,
    exp.CurrentTime,
    exp.Interval,
    exp.RegexpLike,
    exp.RegexpILike,
    exp.JSONExtract,
    exp.JSONExtractScalar,
    exp.JSONBExtract,
    exp.JSONBExtractScalar,
    exp.JSONBContains,
    exp.ArrayContains,
    exp.ArrayContainsAll,
    exp.ArrayOverlaps,
)
_SIZE_ARGUMENT = {"lpad": 1, "rpad": 1}
_METADATA_SCHEMAS = {"pg_catalog", "information_schema", "pg_toast"}
_CALL = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(")


class Rejected(Exception):
    """A rule broken; ``guard.check_segment_sql`` turns it into ``SqlRejected``."""


def check_postgres_tree(query: Any, readable: list[str], schema: str) -> str:
    """Check a parsed SELECT (dialect postgres) and return the SQL PostgreSQL should run:
    regenerated from the checked tree with every identifier quoted. ``readable``: the
    profiles table and ``source.tables`` entries; ``schema``: the source's schema."""
    for node in query.walk():
        _check_node(node, readable, schema)
    normalised = normalize_identifiers(query.copy(), dialect="postgres")
    return normalised.sql(dialect="postgres", identify=True, comments=False)


def _check_node(node: Any, readable: list[str], schema: str) -> None:
    if isinstance(node, exp.Lock):
        raise Rejected("FOR UPDATE / FOR SHARE is not allowed in segment SQL")
    if isinstance(node, exp.TableSample):
        raise Rejected(
            "TABLESAMPLE is not allowed in segment SQL: a sample picks other rows on every run, "
            f"and a plan must not change between runs; see {DOCS}"
        )
    if isinstance(node, exp.Placeholder | exp.Parameter):
        raise Rejected("parameters are not allowed in segment SQL")
    if (
        isinstance(node, exp.Lateral | exp.Unnest)
        and isinstance(node.parent, exp.From | exp.Join)
        # a LATERAL subquery reads tables like any subquery (its contents are checked)
        and not (isinstance(node, exp.Lateral) and isinstance(node.this, exp.Subquery))
    ):
        raise Rejected("table functions are not allowed in segment SQL; read tables only")
    if isinstance(node, exp.Table):
        _check_table(node, readable, schema)
    elif isinstance(node, exp.Cast):
        target = node.to.sql(dialect="postgres").lower()
        if target.startswith("reg") or target in ("pg_lsn", "txid_snapshot"):
            raise Rejected(f"a cast to {target} reads the catalog; it is not allowed")
    if isinstance(node, exp.Func):
        _check_function(node)


def _check_table(table: exp.Table, readable: list[str], schema: str) -> None:
    if not isinstance(table.this, exp.Identifier):
        fn = table.this.sql(dialect="postgres").split("(")[0] if table.this else "?"
        raise Rejected(
            f"table functions are not allowed in segment SQL (found {fn.lower()!r}); read "
            "tables of the source only"
        )
    name, db, catalog = table.name, table.db, table.catalog
    full = ".".join(p for p in (catalog, db, name) if p)
    if catalog:
        raise Rejected(f"table {full!r}: segment SQL may not name another database")
    if not db and name.lower() in _ctes_in_scope(table):
        return
    lname, ldb = name.lower(), db.lower()
    for entry in readable:
        want_schema, _, want_name = entry.lower().rpartition(".")
        if lname == want_name and ldb in ((want_schema,) if want_schema else ("", schema.lower())):
            return
    if ldb in _METADATA_SCHEMAS or lname.startswith(("pg_", "information_schema")):
        raise Rejected(
            f"segment SQL may not read the database's catalog ({full!r}); read tables of the "
            "source only"
        )
    declared = ", ".join(repr(t) for t in readable[1:]) or "none"
    raise Rejected(
        f"table {full!r} is not allowed in segment SQL; it may read the profiles table "
        f"{readable[0]!r}, the tables listed under `source.tables` ({declared}) and CTEs the "
        "query defines"
    )


def _ctes_in_scope(node: Any) -> set[str]:
    """CTE names visible where ``node`` is: those of every enclosing WITH — inside a CTE's
    own body only the ones defined before it (and itself, when the WITH is RECURSIVE)."""
    names: set[str] = set()
    child: Any = node
    parent: Any = node.parent
    while parent is not None:
        if isinstance(parent, exp.With):
            ctes: list[Any] = list(parent.expressions)
            own = child if isinstance(child, exp.CTE) else None
            for cte in ctes:
                if own is not None and cte is own:
                    if parent.args.get("recursive"):
                        names.add(cte.alias_or_name.lower())
                    break
                names.add(cte.alias_or_name.lower())
        elif isinstance(parent, exp.Query) and not isinstance(child, exp.With):
            with_ = parent.args.get("with") or parent.args.get("with_")
            if isinstance(with_, exp.With):
                names |= {c.alias_or_name.lower() for c in with_.expressions if c is not None}
        child, parent = parent, parent.parent
    return names


def _check_function(node: exp.Func) -> None:
    if isinstance(node, _OPERATOR_FORMS):
        return
    if isinstance(node.parent, exp.Dot) and node.parent.expression is node:
        raise Rejected(
            "qualified function names are not allowed in segment SQL: call functions by "
            f"their plain name; allowed: see {DOCS}"
        )
    rendered = node.sql(dialect="postgres")
    m = _CALL.match(rendered)
    if m is None:
        raise Rejected(f"{rendered.split()[0]} is not allowed in segment SQL; see {DOCS}")
    name = m.group(1).lower()
    if name not in ALLOWED:
        raise Rejected(f"function {name} is not allowed in segment SQL; allowed: see {DOCS}")
    if name in _SIZE_ARGUMENT:
        args = [a for a in node.args.values() if isinstance(a, exp.Expression)]
        size = args[_SIZE_ARGUMENT[name]] if len(args) > _SIZE_ARGUMENT[name] else None
        if not (isinstance(size, exp.Literal) and size.is_int and int(size.name) <= MAX_PAD):
            raise Rejected(
                f"function {name} needs a literal length of at most {MAX_PAD} in segment SQL "
                f"(a larger or computed length can exhaust memory); see {DOCS}"
            )
