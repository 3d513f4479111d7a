"""Deterministic split groups.

A profile's bucket is ``md5(seed || ':' || key)`` reduced to 0..99, where ``seed`` is the
activation's split seed (its id when first applied; kept across ``moved_from`` renames).
The same function exists as SQL (used by planning over millions of rows) and in Python
(for tests and tools); they agree, so a profile never changes group between runs unless the
split itself changes.
"""

from __future__ import annotations

import hashlib

from reconciler.workspace.activation_spec import SplitMode

ALL = "all"


def bucket(seed: str, key: str) -> int:
    digest = hashlib.md5(f"{seed}:{key}".encode()).digest()
    # DuckDB's md5_number_lower(x) (in SQL: (md5_number(x) >> 64)::UBIGINT, the same value,
    # faster) is the little-endian integer of the digest's last 8 bytes
    return int.from_bytes(digest[8:], "little") % 100


def group(split: SplitMode, control_percent: int | None, seed: str, key: str) -> str:
    return _label(split, control_percent, bucket(seed, key))


def _label(split: SplitMode, control_percent: int | None, b: int) -> str:
    if split is SplitMode.AB:
        return "A" if b < 50 else "B"
    if split is SplitMode.CONTROL:
        return "control" if b < (control_percent or 10) else "experiment"
    return ALL


def groups(split: SplitMode) -> list[str]:
    return {SplitMode.AB: ["A", "B"], SplitMode.CONTROL: ["experiment", "control"]}.get(
        split, [ALL]
    )


def audience_name(base: str, split: SplitMode, group_name: str) -> str:
    """The destination audience name of one group: ``<name> - A`` / ``<name> - B`` for an A/B
    split, the name itself for the experiment group and an unsplit audience."""
    if split is SplitMode.NONE or group_name == "experiment":
        return base
    return f"{base} - {group_name}"


def sent(group_name: str) -> bool:
    """Whether a group's audience is sent to the destination (the control group is not)."""
    return group_name != "control"


def group_sql(split: SplitMode, control_percent: int | None, seed_param: str, key_expr: str) -> str:
    """SQL expression for the group of ``key_expr``; ``seed_param`` is a SQL string literal."""
    if split is SplitMode.NONE:
        return f"'{ALL}'"
    b = f"((md5_number({seed_param} || ':' || {key_expr}) >> 64)::UBIGINT % 100)"
    if split is SplitMode.AB:
        return f"CASE WHEN {b} < 50 THEN 'A' ELSE 'B' END"
    return f"CASE WHEN {b} < {int(control_percent or 10)} THEN 'control' ELSE 'experiment' END"


def drained_target(grp: str, name: str, audience_id: str, old_group: str) -> str:
    """Why a new group may not send to the audience a split change drains."""
    return (
        f"group {grp!r} would send to the audience {name!r} ({audience_id}) that the split "
        f"change empties (it holds group {old_group!r}): its members would be added, then "
        "removed with the old group's. Give the new group an audience of its own (another "
        "`name`, or a `list: existing` naming another list), or keep the split"
    )


def own_drained_name(grp: str, name: str, audience_id: str, old_group: str) -> str:
    """The warning for a new group whose name is the activation's own draining audience's."""
    return (
        f"the destination's audience named {name!r} (id {audience_id}) is this activation's "
        f"own, of group {old_group!r}, which the new split empties and keeps: apply creates a "
        f"second audience of that name for group {grp!r}. Give the new group another `name` "
        "to tell them apart"
    )
