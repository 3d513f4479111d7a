"""A saved plan checked against the same plan made now, before it is applied.

A plan file is untrusted input (a CI artifact, a file passed around): its checksums show it
is whole, not who wrote it. So ``apply PLANFILE`` does not take its word for anything it
can work out again. It plans again from the workspace, the state and the data, as of the
saved plan's own ``as_of`` (so dates in templates and segment SQL mean what they meant), and
applies the saved plan's member changes **only where the plan made now has them too**:

- every add, removal and update applied is one the workspace and the data call for now;
  an edited plan can leave changes out, never add a member outside the segment, remove one
  still in it, or send to a paused activation;
- what the plan says *about* an activation (created, deleted, paused, its destination, its
  audiences' names, the export location) must be what it would say now, else that activation
  is refused as stale; what is applied is taken from the plan made now, so a forged name,
  destination or location is never used;
- the mass-removal guard is worked out again from the recorded sizes;
- a plan made before its activation's spec or recorded state moved is refused as stale.

A change of the saved plan that no longer holds (the data moved since the plan, a profile
left the segment or withdrew consent) is not applied and is counted; the next plan shows what
remains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from reconciler.enginedb import STAGING
from reconciler.plan.membership import CHANGES_DDL
from reconciler.plan.model import (
    ActivationPlan,
    AudienceChange,
    Change,
    Plan,
    summarise,
    trips_mass_removal,
)

#: the kinds of change that say what happens to the activation itself
_KINDS = {Change.CREATE, Change.DELETE, Change.PAUSED}


@dataclass
class Verified:
    """What ``apply PLANFILE`` applies: ``plan`` (the plan made now, limited to the saved
    plan's activations and member changes), ``refused`` (activation -> why the saved plan no
    longer matches it) and ``dropped`` (activation -> saved member changes that no longer
    hold, left out)."""

    plan: Plan
    refused: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)


def verify(
    saved: Plan,
    saved_staging: Path,
    fresh: Plan,
    fresh_staging: Path,
    today_staging: Path | None = None,
) -> Verified:
    """The saved plan against the fresh one; ``fresh_staging`` is left holding only the
    member changes both have (the ones the apply sends) and, with ``today_staging`` (the
    member changes of a plan made as of now, when the saved plan is of another day), that
    one has too."""
    refused: dict[str, str] = {}
    for ap in saved.activations:
        fa = _find(fresh, ap.id)
        if stale := _stale(ap, fa):
            refused[ap.id] = stale
            continue
        why = _mismatch(ap, fa) if fa is not None else "it is not in the workspace or the state"
        if why:
            refused[ap.id] = (
                f"the saved plan no longer matches the workspace and the state: {why}; "
                "run `reconcile plan` again"
            )
    keep = [a.id for a in saved.activations if a.id not in refused]
    counts, dropped = _intersect(saved_staging, fresh_staging, keep, today_staging)
    activations = []
    for ap in saved.activations:
        fa = _find(fresh, ap.id)
        if ap.id in refused or fa is None:
            activations.append(ap)  # refused as it is: shown, never applied
            continue
        activations.append(_limited(fa, counts))
    plan = fresh.model_copy(
        update={
            "plan_id": saved.plan_id,
            "targets": saved.targets,
            "activations": activations,
            "summary": summarise(activations),
        }
    )
    return Verified(plan, refused, {a: n for a, n in dropped.items() if n})


def _find(plan: Plan, activation_id: str) -> ActivationPlan | None:
    return next((a for a in plan.activations if a.id == activation_id), None)


def _stale(ap: ActivationPlan, fa: ActivationPlan | None) -> str | None:
    """The saved plan was made against another state or spec of the activation than the plan
    made now read (``fa``; None: neither a file nor a record of it is left): refused as
    stale, naming what may have changed (a CI job plans again on these words)."""
    serial = fa.state_serial if fa is not None else 0
    if serial != ap.state_serial:
        return (
            f"the saved plan is stale: the state of {ap.id!r} moved since the plan "
            f"(serial {ap.state_serial} -> {serial}); run `reconcile plan` again"
        )
    if ap.change is Change.DELETE:
        return None
    if fa is None or fa.change is Change.DELETE:
        return (
            f"the saved plan is stale: {ap.file or ap.id} was deleted since the plan; "
            "run `reconcile plan` again"
        )
    if fa.spec_digest != ap.spec_digest:
        segments = ", ".join(f"segments/{s.name}.yaml" for s in fa.segments)
        return (
            f"the saved plan is stale: {ap.file or ap.id} or what it uses ({segments}, "
            f"integrations/{fa.destination}.yaml, the defaults in reconcile.yaml) "
            "changed since the plan; run `reconcile plan` again"
        )
    return None


def _mismatch(ap: ActivationPlan, fa: ActivationPlan) -> str | None:
    """What the saved plan says about the activation that the plan made now does not."""
    if (ap.change in _KINDS or fa.change in _KINDS) and ap.change != fa.change:
        return f"{ap.id!r} is planned as {ap.change.value}, now it is {fa.change.value}"
    for name in ("paused", "destination", "destination_type", "goal", "action", "on_delete",
                 "moved_from"):  # fmt: skip
        was, now = getattr(ap, name), getattr(fa, name)
        if was != now:
            return f"{ap.id!r} has {name} {was!r} in the plan, {now!r} now"
    if (ap.export and ap.export.location) != (fa.export and fa.export.location):
        return f"{ap.id!r} exports to another location in the plan than now"
    # an audience deleted at the destination since the plan is created again now, and all of
    # its members sent again: the saved plan's changes alone would leave it nearly empty
    saved_creates = {a.group: a.create for a in ap.audiences}
    for au in fa.audiences:
        if au.create and not saved_creates.get(au.group, False):
            return (
                f"audience {au.name!r} (group {au.group!r}) of {ap.id!r} is gone from the "
                "destination since the plan: it is to be created again, with every member"
            )
    saved_aud = sorted((a.group, a.name, a.sent) for a in ap.audiences if a.has_changes)
    now_aud = {(a.group, a.name, a.sent) for a in fa.audiences}
    for group, name, sent in saved_aud:
        if (group, name, sent) not in now_aud:
            return f"audience {name!r} (group {group!r}) of {ap.id!r} is not what it plans now"
    return None


def _intersect(
    saved_staging: Path, fresh_staging: Path, keep: list[str], today_staging: Path | None
) -> tuple[dict[tuple[str, str, str], int], dict[str, int]]:
    """Leave in the fresh staging only the changes of ``keep`` the saved plan (and the plan
    of today, when given) has too; the rows left per (activation, group, op), and the saved
    rows dropped per activation."""
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{_q(fresh_staging)}' AS fresh")
        con.execute(f"ATTACH '{_q(saved_staging)}' AS saved (READ_ONLY)")
        con.execute(CHANGES_DDL.replace(STAGING, "fresh"))
        if today_staging is not None:  # a change must hold today too
            con.execute(f"ATTACH '{_q(today_staging)}' AS today (READ_ONLY)")
            today_rows = (
                "today.changes" if _has_changes(con, "today") else "fresh.changes WHERE FALSE"
            )
            con.execute(
                f"""DELETE FROM fresh.changes f
                WHERE NOT EXISTS (SELECT 1 FROM (SELECT * FROM {today_rows}) t
                                  WHERE t.activation_id = f.activation_id AND t.grp = f.grp
                                    AND t.op = f.op AND t.key = f.key)"""
            )
        saved_rows = "saved.changes" if _has_changes(con, "saved") else "fresh.changes WHERE FALSE"
        con.execute(
            f"""DELETE FROM fresh.changes f
            WHERE NOT list_contains($keep, f.activation_id)
               OR NOT EXISTS (SELECT 1 FROM (SELECT * FROM {saved_rows}) s
                              WHERE s.activation_id = f.activation_id AND s.grp = f.grp
                                AND s.op = f.op AND s.key = f.key)""",
            {"keep": keep},
        )
        counts = {
            (a, g, o): n
            for a, g, o, n in con.execute(
                "SELECT activation_id, grp, op, count(*) FROM fresh.changes GROUP BY ALL"
            ).fetchall()
        }
        dropped = dict(
            con.execute(
                f"""SELECT s.activation_id, count(*) FROM (SELECT * FROM {saved_rows}) s
                WHERE list_contains($keep, s.activation_id)
                  AND NOT EXISTS (SELECT 1 FROM fresh.changes f
                                  WHERE s.activation_id = f.activation_id AND s.grp = f.grp
                                    AND s.op = f.op AND s.key = f.key)
                GROUP BY ALL""",
                {"keep": keep},
            ).fetchall()
        )
    finally:
        con.close()
    return counts, dropped


def _has_changes(con: duckdb.DuckDBPyConnection, database: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? "
            "AND table_name = 'changes'",
            [database],
        ).fetchall()[0][0]
    )


def _limited(fa: ActivationPlan, counts: dict) -> ActivationPlan:
    """The activation as planned now, with only the member changes both plans have, and the
    mass-removal guard worked out from the recorded sizes (serial and spec digest are the
    saved plan's: a stale plan was refused)."""
    return fa.model_copy(update={"audiences": [_audience(fa, au, counts) for au in fa.audiences]})


def _audience(fa: ActivationPlan, au: AudienceChange, counts: dict) -> AudienceChange:
    c = {op: counts.get((fa.id, au.group, op), 0) for op in ("add", "remove", "update", "purge")}
    # a deleted activation forgets its records without a row each
    forget = au.forget if fa.change is Change.DELETE else counts.get((fa.id, au.group, "forget"), 0)
    before = au.size_before
    after = before + c["add"] + c["purge"] - c["remove"] - forget
    if fa.change is Change.DELETE:
        after = au.size_after
        mass = au.sent and c["remove"] > 0
    else:
        mass = (
            au.sent
            and fa.action != "remove"
            and trips_mass_removal(before, c["remove"], after, fa.max_removal_share)
        )
    return au.model_copy(
        update={
            "add": c["add"],
            "remove": c["remove"] + c["purge"],
            "update": c["update"],
            "forget": forget,
            "size_after": after,
            "mass_removal": mass,
        }
    )


def _q(path: Path) -> str:
    return str(path).replace("'", "''")
