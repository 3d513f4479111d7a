"""Cross-file rules of the two goals that need more than one file to check:
``goal: sync_attributes`` (attributes selected, a destination that takes them) and
``append_to_profiles`` (a writable source, and no loop: an activation whose membership reads
its own write-back would change its audience by being applied).

Each rule returns :class:`~reconciler.errors.ConfigError` values naming file, line and field;
the loader collects them with every other problem.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from reconciler.errors import ConfigError
from reconciler.workspace.activation_spec import ActionMode, Activation, Goal
from reconciler.workspace.spec import PostgresSource

if TYPE_CHECKING:
    from reconciler.workspace.loader import Workspace

#: the write-back table in the source (``reconciler.sources.writeback`` maintains it)
WRITEBACK_TABLE = "included_in_audience"
#: its columns that say whose write-back a row is
_OWNER_COLUMNS = {"activation_id", "activation_name"}


def goal_errors(ws: Workspace, aid: str, act: Activation, caps: Any) -> list[ConfigError]:
    """``sync_attributes`` needs selected attributes and a destination that takes them;
    ``append_to_profiles`` needs a writable source and must not read its own write-back."""
    doc = ws.doc("activations", aid)
    out = []
    if act.goal is Goal.SYNC_ATTRIBUTES:
        if caps is not None and not caps.attributes:
            out.append(
                doc.error(
                    f"`goal: sync_attributes` sends attribute values, but destination "
                    f"{act.destination!r} does not take attributes; use `goal: send_segments` "
                    "or an integration whose destination supports attributes",
                    ("goal",),
                )
            )
        elif not act.attributes:
            integ = ws.integrations.get(act.destination)
            allowed = sorted(integ.attributes) if integ is not None else []
            field = ("attributes",) if "attributes" in doc.data else ("goal",)
            out.append(
                doc.error(
                    "`goal: sync_attributes` needs at least one attribute: list the destination "
                    f"fields to sync under `attributes` (integration {act.destination!r} maps: "
                    f"{', '.join(allowed) or 'none; add a mapping to the integration'})",
                    field,
                )
            )
    if act.append_to_profiles and act.action is ActionMode.REMOVE:
        out.append(
            doc.error(
                "`append_to_profiles` records the profiles an audience includes, but `action: "
                "remove` takes its segments' profiles out of the list: they would be written "
                "as included in it. Remove `append_to_profiles`",
                ("append_to_profiles",),
            )
        )
    if "max_removal_share" in doc.data and act.action is ActionMode.REMOVE:
        out.append(
            doc.error(
                "`max_removal_share` guards audiences this tool fills; `action: remove` removes "
                "its segments' profiles from the list by design, and no guard applies. Remove "
                "`max_removal_share` (or use `action: maintain`)",
                ("max_removal_share",),
            )
        )
    if act.append_to_profiles:
        source = ws.config.source
        if isinstance(source, PostgresSource):
            out.append(
                doc.error(
                    "`append_to_profiles` writes the activation name into the source (table "
                    f"{WRITEBACK_TABLE}), which only a DuckDB source allows (`source.writable: "
                    "true`): a PostgreSQL source is never written to. Remove "
                    "`append_to_profiles`",
                    ("append_to_profiles",),
                )
            )
        elif not getattr(source, "writable", False):
            out.append(
                doc.error(
                    "`append_to_profiles` writes the activation name into the source (table "
                    f"{WRITEBACK_TABLE}), but the source is read-only: set `source.writable: "
                    "true` in reconcile.yaml to allow it, or remove `append_to_profiles`",
                    ("append_to_profiles",),
                )
            )
        out += _loop_errors(ws, aid, act)
    return out


def _loop_errors(ws: Workspace, aid: str, act: Activation) -> list[ConfigError]:
    """An activation whose segments (or the workspace's suppression segments) read its own
    rows of the write-back table: each apply would change the membership it is computed from."""
    from reconciler.workspace.templating import TemplateFailed, render_sql

    now = datetime.now(UTC)
    doc = ws.doc("activations", aid)
    out = []
    checked: list[tuple[str, tuple[str | int, ...]]]
    checked = [(s, ("segments", i)) for i, s in enumerate(act.segments)]
    checked += [(s, ("append_to_profiles",)) for s in ws.config.suppression]
    for seg_name, loc in checked:
        seg = ws.segments.get(seg_name)
        if seg is None:
            continue
        try:
            sql = render_sql(seg.sql, now, ws.config.timezone)
        except TemplateFailed:  # reported by the template check
            continue
        if reads_own_writeback(sql, aid, act.name):
            kind = "segment" if loc[0] == "segments" else "suppression segment"
            out.append(
                doc.error(
                    f"{kind} {seg_name!r} reads this activation's own write-back "
                    f"({WRITEBACK_TABLE}) and `append_to_profiles` is on: every apply would "
                    "change the audience it is computed from (a loop). Filter the segment "
                    f"on another activation (`WHERE activation_id = 'other-id'`) or remove "
                    "`append_to_profiles`",
                    loc,
                )
            )
    return out


def reads_own_writeback(
    sql: str, activation_id: str, name: str | None, dialect: str = "duckdb"
) -> bool:
    """Whether ``sql`` reads rows of the write-back table that may be ``activation_id``'s.
    Every read of the table must sit in a SELECT whose WHERE has, as one of its top-level
    ``AND`` terms, ``activation_id = '<other>'`` (or ``IN (...)``, or the same on
    ``activation_name``) naming other activations only; a restriction under ``OR`` or
    ``NOT``, or on another SELECT of a ``UNION``, restricts nothing."""
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except SqlglotError:  # refused by the SQL guard, with its own message
        return False
    own = {activation_id} | ({name} if name else set())
    for table in tree.find_all(exp.Table):
        if table.name.lower() != WRITEBACK_TABLE:
            continue
        select = table.find_ancestor(exp.Select)
        roots = [select.args.get("where") if select is not None else None]
        if isinstance(table.parent, exp.Join):  # JOIN included_in_audience i ON ...
            roots.append(table.parent.args.get("on"))
        named = _named_owners([r.this if isinstance(r, exp.Where) else r for r in roots if r])
        if not named or named & own:
            return True
    return False


def _named_owners(conditions: list[exp.Expression]) -> set[str]:
    """The activations ``conditions`` (a WHERE, a JOIN's ON) restrict rows to: the string
    literals of the ``activation_id``/``activation_name`` = or IN terms joined to the rest by
    ``AND`` only."""
    terms, named = list(conditions), set()
    while terms:
        node = terms.pop()
        if isinstance(node, exp.Paren):
            terms.append(node.this)
        elif isinstance(node, exp.And):
            terms += [node.this, node.expression]
        elif isinstance(node, exp.EQ | exp.In):
            if isinstance(node, exp.EQ):
                sides = [(node.this, [node.expression]), (node.expression, [node.this])]
            else:
                sides = [(node.this, list(node.expressions))]
            for column, values in sides:
                if not isinstance(column, exp.Column) or column.name.lower() not in _OWNER_COLUMNS:
                    continue
                if values and all(isinstance(v, exp.Literal) and v.is_string for v in values):
                    named |= {v.this for v in values}
    return named
