"""Per-attribute change counts of ``goal: sync_attributes`` ("Sync Profile Attributes").

Which profiles are sent is decided by the member fingerprint (identifiers and mapped
attributes, :func:`reconciler.plan.membership.fingerprint_sql`). To show *which values*
change, each member also has a fingerprint per destination field: a 64-bit hash of the
profile key, the field and the value (NULL for a NULL value), so the state holds hashes
salted per profile, never a raw value. The state keeps them per member in
``member_attributes`` (:mod:`reconciler.state.attributes`), stamped with the member
fingerprint they belong to; a row whose stamp differs from the member's fingerprint (a run
that died between recording the members and their attribute hashes) counts every field of
that member as changing.

Counts per field: an entering profile counts for each field it has a value for (it gets all
mapped values); a changed profile counts for each field whose hash differs.
"""

from __future__ import annotations

import duckdb

from reconciler.enginedb import STAGING
from reconciler.plan.membership import DESIRED, _ident, _lit
from reconciler.plan.model import AudienceChange
from reconciler.workspace.spec import ProfilesTable


def fingerprints_sql(profiles: ProfilesTable, mapping: dict[str, str], row: str = "p") -> str:
    """A ``MAP(VARCHAR, UBIGINT)`` of destination field -> hash of the value, over the
    profiles row ``row``; the hash is salted with the profile key and the field."""
    if not mapping:
        return "MAP([]::VARCHAR[], []::UBIGINT[])"
    key = f"CAST({row}.{_ident(profiles.key)} AS VARCHAR)"
    hashes = []
    for field, column in mapping.items():
        value = f"CAST({row}.{_ident(column)} AS VARCHAR)"
        hashes.append(
            f"CASE WHEN {value} IS NULL THEN NULL ELSE "
            f"(md5_number(concat_ws(chr(31), {key}, {_lit(field)}, {value})) >> 64)::UBIGINT END"
        )
    fields = ", ".join(_lit(f) for f in mapping)
    return f"MAP([{fields}], [{', '.join(hashes)}]::UBIGINT[])"


def value_changes(
    con: duckdb.DuckDBPyConnection,
    *,
    activation_id: str,
    recorded: str,
    recorded_attributes: str,
    fields: list[str],
) -> dict[str, dict[str, int]]:
    """Per group, per destination field: how many values the staged ``add`` and ``update``
    changes send that the destination does not hold yet. ``recorded`` is the members
    relation ``(key, grp, fp, ...)``; ``recorded_attributes`` the relation
    ``(key, grp, fp, afp)`` of :mod:`reconciler.state.attributes`."""
    if not fields:
        return {}
    rows = con.execute(
        f"""WITH c AS (SELECT key, grp, op FROM {STAGING}.changes
                       WHERE activation_id = $aid AND op IN ('add', 'update')),
                 x AS (SELECT c.op, c.grp, d.afp AS new, a.afp AS old, a.key IS NULL AS unknown
                       FROM c JOIN {DESIRED} d ON d.key = c.key AND d.grp = c.grp
                       LEFT JOIN {recorded} m ON m.key = c.key AND m.grp = c.grp
                       LEFT JOIN {recorded_attributes} a
                         ON a.key = c.key AND a.grp = c.grp AND a.fp = m.fp)
            SELECT grp, f, count(*) FROM x, (SELECT unnest($fields::VARCHAR[]) AS f)
            WHERE CASE WHEN op = 'add' THEN new[f] IS NOT NULL
                       WHEN unknown THEN TRUE
                       ELSE new[f] IS DISTINCT FROM old[f] END
            GROUP BY ALL""",
        {"aid": activation_id, "fields": fields},
    ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for grp, field, n in rows:
        out.setdefault(grp, {f: 0 for f in fields})[field] = n
    return out


def with_value_counts(
    con: duckdb.DuckDBPyConnection,
    activation_id: str,
    audiences: list[AudienceChange],
    *,
    recorded: str,
    recorded_attributes: str,
    fields: list[str],
) -> tuple[list[AudienceChange], list[str]]:
    """The audiences with their per-field value counts (:func:`value_changes`), and the
    plan's note about profiles that left (their fields stay at the destination)."""
    values = value_changes(
        con,
        activation_id=activation_id,
        recorded=recorded,
        recorded_attributes=recorded_attributes,
        fields=fields,
    )
    out = [
        au.model_copy(update={"attributes": values.get(au.group, {})})
        if au.add or au.update
        else au
        for au in audiences
    ]
    left = sum(au.forget for au in out)
    notes = (
        [
            f"{left:,} profile(s) left the audience (the segment, or excluded by consent or "
            "suppression): their attribute values stay at the destination (leaving never "
            "clears fields)"
        ]
        if left
        else []
    )
    return out, notes
