"""The plan of an activation whose file was deleted: it leaves management, and its audiences
at the destination are kept (``on_delete: keep``, the default) or emptied of the members it
recorded (``on_delete: clear``)."""

from __future__ import annotations

import duckdb

from reconciler.plan import membership
from reconciler.plan.model import ActivationPlan, AudienceChange, Change
from reconciler.state.store import RecordedActivation, StateReader


def plan_delete(
    con: duckdb.DuckDBPyConnection,
    state: StateReader,
    rec: RecordedActivation,
    destination_type: str = "",
) -> ActivationPlan:
    """The plan of a recorded activation whose file is gone: with ``on_delete: clear`` its
    recorded members are staged for removal. ``destination_type``: its integration's type,
    when the integration is still there."""
    clear = rec.spec.get("on_delete") == "clear"
    if clear:  # members recorded with nothing sent (rejected, no usable identifier) are not
        # at the destination: they are forgotten with the rest, not counted as removals
        sent = f"(SELECT * FROM {state.members_sql(rec.id)} WHERE len(record) > 0)"
        membership.stage_all(con, rec.id, sent, "remove")
    changes = membership.change_counts(con, rec.id)
    sizes = state.member_counts(rec.id)
    audiences = []
    for grp, ra in sorted(state.audiences(rec.id).items()):
        before = sizes.get(grp, 0)
        removed = changes.get((grp, "remove"), 0)
        audiences.append(
            AudienceChange(
                group=grp,
                name=ra.name,
                sent=ra.sent,
                resource_id=ra.resource_id,
                remove=removed,
                forget=before - removed,
                size_before=before,
                size_after=0,
                mass_removal=ra.sent and removed > 0,
            )
        )
    note = (
        "on_delete: clear: recorded members are removed from the destination"
        if clear
        else "the audience at the destination is kept (on_delete: keep)"
    )
    notes = [note]
    if clear and rec.spec.get("goal") == "sync_attributes":
        # sync_attributes forgets the profiles that leave (it never removes them): the
        # state no longer knows them, so clearing cannot reach them
        notes.append(
            "a sync_attributes activation left at the destination the profiles that left it "
            "earlier (they were forgotten, not removed): clearing removes only the recorded "
            "members, and those stay"
        )
    return ActivationPlan(
        id=rec.id,
        change=Change.DELETE,
        destination=rec.destination,
        destination_type=destination_type or "unknown",
        goal=rec.spec.get("goal", ""),
        action=rec.spec.get("action", ""),
        frequency=rec.frequency,
        paused=rec.paused,
        spec_digest=None,
        state_serial=rec.serial,
        audiences=audiences,
        notes=notes,
        max_removal_share=rec.spec.get("max_removal_share", 0.5),
        on_delete="clear" if clear else "keep",
        due=True,
    )
