"""State schema versions and lineage, shared by every backend.

Every state records ``schema_version`` and a ``lineage`` id (made once, when the state is
created) in its ``meta`` table. On open, a state newer than this release understands is
refused with the version it needs; an older one is migrated forward by the writer, each step
in the same transaction as the version it sets — a migration killed half-way leaves the old
version, and the next run does it again from there. Saved plans carry the lineage, so a plan
made against another state is refused (:func:`check_plan_lineage`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reconciler.errors import PlanError, StateError

#: the schema version this release writes (3: the members of calls in flight, ``inflight``;
#: a release before it would close a killed run's calls without recording their members)
SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Step:
    """Bring a state from ``version - 1`` to ``version``."""

    version: int
    what: str
    statements: Sequence[str]  # formatted with {c} (the state's catalog or schema), {lineage}


#: the embedded backend's migrations (version 1: before lineage ids)
EMBEDDED_STEPS: tuple[Step, ...] = (
    Step(2, "lineage id", ["INSERT OR IGNORE INTO {c}.meta VALUES ('lineage', '{lineage}')"]),
    # the table itself is made by the schema's DDL (every table is, if it is missing)
    Step(3, "calls in flight", []),
)


#: the PostgreSQL backend's migrations (its first release wrote version 2; the lineage step
#: is kept so a state at version 1 of either shape migrates the same way)
POSTGRES_STEPS: tuple[Step, ...] = (
    Step(
        2,
        "lineage id",
        ["INSERT INTO {c}.meta VALUES ('lineage', '{lineage}') ON CONFLICT (k) DO NOTHING"],
    ),
    Step(
        3,
        "calls in flight",
        [
            "CREATE TABLE IF NOT EXISTS {c}.inflight (batch_id text, key text, record text[])",
            "CREATE INDEX IF NOT EXISTS inflight_idx ON {c}.inflight (batch_id)",
        ],
    ),
)


def new_lineage() -> str:
    return uuid.uuid4().hex


def parse_version(value: str | None, where: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise StateError(
            f"{where} has an unreadable schema version {value[:20]!r}; restore it from a backup"
        ) from None


def refuse_newer(found: int | None, where: str) -> None:
    """An older reconcile never reads (or writes) a state a newer one migrated."""
    if found is not None and found > SCHEMA_VERSION:
        raise StateError(
            f"{where} has state schema version {found}, but this reconcile reads versions up "
            f"to {SCHEMA_VERSION}; upgrade reconcile to a release that supports state schema "
            f"version {found} (a newer one wrote it)"
        )


def run_steps(
    execute: Callable[[str], object],
    found: int,
    steps: Sequence[Step],
    *,
    catalog: str,
    lineage: str,
) -> int:
    """Run the steps after ``found`` through ``execute`` (inside the caller's transaction);
    returns the version reached."""
    version = found
    for step in steps:
        if step.version <= version:
            continue
        for stmt in step.statements:
            execute(stmt.format(c=catalog, lineage=lineage))
        version = step.version
    return max(version, found)


def check_plan_lineage(plan_lineage: str | None, state_lineage: str | None, path: str) -> None:
    """Refuse a saved plan made against another state, or against a state this workspace
    does not have. A plan made when there was no state yet (no lineage) is checked by the
    activations' serials instead."""
    if plan_lineage and state_lineage is None:
        raise PlanError(
            f"{path} was made against a state (lineage {plan_lineage[:12]}), but this "
            "workspace has none (another workspace, or its state was deleted or moved); make "
            "the plan again here with `reconcile plan --out`"
        )
    if plan_lineage and state_lineage and plan_lineage != state_lineage:
        raise PlanError(
            f"{path} was made against another state (lineage {plan_lineage[:12]}, this "
            f"workspace's state is {state_lineage[:12]}); make the plan again against this "
            "state with `reconcile plan --out`"
        )
