"""``reconcile import``: record an audience that already exists at the destination as an
activation's own, so the next apply sends to it instead of creating another one of that name
(the way out of a lost state, or of a name taken by an audience made by hand).

The audience is found by the id given, or by the name the activation would give it. It is
recorded under the state lock with no members: the next plan sends the whole audience to it
(the destination treats members it already holds as no-ops) and records them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from destinations.base import AudienceRef
from reconciler.errors import ConfigError, DestinationError, ReconcileError
from reconciler.integrations import Connections
from reconciler.plan import splits, twins
from reconciler.plan.planner import plan_as_of
from reconciler.state.store import StateReader
from reconciler.state.writer import StateStore
from reconciler.workspace.activation_spec import Goal, ResolvedActivation
from reconciler.workspace.loader import Workspace
from reconciler.workspace.templating import DEFAULT_NAME, TemplateFailed, local_date, render_name


@dataclass(frozen=True)
class Imported:
    activation: str
    group: str
    audience: AudienceRef
    destination: str
    frequency: str
    date_created: date


def find_import(
    ws: Workspace,
    state: StateReader,
    activation_id: str,
    *,
    group: str | None = None,
    audience_id: str | None = None,
    as_of: datetime | None = None,
) -> Imported:
    """What importing would record (read-only: refused imports write nothing)."""
    spec = ws.activations.get(activation_id)
    if spec is None:
        known = ", ".join(sorted(ws.activations)) or "none"
        raise ReconcileError(f"unknown activation {activation_id!r}; known: {known}")
    act = spec.resolved(ws.config.defaults)
    where = ws.file_of("activations", activation_id)
    if act.goal is Goal.EXPORT_DATA:
        raise ConfigError(
            f"{activation_id!r} exports files (`goal: export_data`): it has no audience at the "
            "destination to import; its files are written again by the next apply",
            ws.location("activations", activation_id, "goal"),
        )
    if act.target.existing is not None:
        raise ConfigError(
            f"{activation_id!r} sends to `list: {{existing: ...}}`: that list is already the "
            "audience it uses; there is nothing to import",
            ws.location("activations", activation_id, "list"),
        )
    grp = _group(act, group, where)
    rec = state.activation(activation_id)
    recorded = state.audiences(activation_id).get(grp) if rec else None
    if recorded is not None and recorded.resource_id:
        raise ReconcileError(
            f"the state already records audience {recorded.name!r} (id {recorded.resource_id}) "
            f"for {activation_id!r}" + ("" if grp == splits.ALL else f" group {grp}")
        )
    as_of = plan_as_of(as_of)
    date_created = rec.date_created if rec else local_date(as_of, ws.config.timezone)
    name = _name(ws, act, activation_id, grp, as_of, date_created)
    pattern = twins.dated_pattern(lambda day: _name(ws, act, activation_id, grp, as_of, day))
    found = _find(ws, act.destination, name, audience_id, pattern)
    for other, orec in state.activations().items():  # one audience, one manager
        if other != activation_id and orec.destination == act.destination:
            for ogrp, ra in state.audiences(other).items():
                if ra.resource_id == found.id:
                    raise ReconcileError(
                        f"audience {found.name!r} (id {found.id}) is recorded for "
                        f"{other!r}"
                        + ("" if ogrp == splits.ALL else f" group {ogrp}")
                        + ": two activations managing one audience undo each other's "
                        "changes; import another audience"
                    )
    if rec is None and pattern is not None:  # the date it was made on, from its name
        date_created = twins.created_on(pattern, found.name) or date_created
    return Imported(activation_id, grp, found, act.destination, act.frequency, date_created)


def record_import(state: StateStore, found: Imported) -> None:
    """Record what :func:`find_import` found."""
    with state.transaction():
        state.ensure_activation(
            found.activation,
            destination=found.destination,
            frequency=found.frequency,
            date_created=found.date_created,
        )
        state.record_audience(
            found.activation, found.group, found.audience.name, found.audience.id, True
        )
        state.bump_serial(found.activation)  # plans saved before this are stale


def _group(act: ResolvedActivation, group: str | None, where: str) -> str:
    sent = [g for g in splits.groups(act.split) if splits.sent(g)]
    if group is None:
        if len(sent) > 1:
            raise ReconcileError(
                f"{where} splits its audience ({', '.join(sent)}): say which group's audience "
                "this is with --group"
            )
        return sent[0]
    if group not in sent:
        raise ReconcileError(
            f"{where} has no group {group!r} that is sent; its groups: {', '.join(sent)}"
        )
    return group


def _name(
    ws: Workspace, act: ResolvedActivation, aid: str, grp: str, as_of: datetime, date_created
) -> str:
    try:
        base = render_name(
            act.name or DEFAULT_NAME,
            as_of=as_of,
            timezone=ws.config.timezone,
            date_created=date_created,
            activation=aid,
            segments=act.segments,
        )
    except TemplateFailed as exc:
        raise ConfigError(str(exc), ws.location("activations", aid, "name")) from exc
    return splits.audience_name(base, act.split, grp)


def _find(
    ws: Workspace,
    destination: str,
    name: str,
    audience_id: str | None,
    pattern: re.Pattern[str] | None = None,
) -> AudienceRef:
    conns = Connections(ws)
    dated: list[AudienceRef] = []
    try:
        dest = conns.get(destination)
        try:
            found = dest.find_audience(audience_id or name)
            # by name: which of several audiences of that name is meant is not guessed
            listed = [] if audience_id else dest.list_audiences()
            named = [a.id for a in listed if a.name == name]
            if pattern is not None:  # the same name made on other dates: named in the error
                dated = twins.earlier_twins(listed, pattern, name)
        except DestinationError as exc:
            raise ReconcileError(f"cannot look the audience up at {destination!r}: {exc}") from exc
    finally:
        conns.close()
    if len(named) > 1:
        raise ReconcileError(
            f"{len(named)} audiences at {destination!r} are named {name!r} ({', '.join(named)}); "
            f"give the id of the one to import: `reconcile import ACTIVATION ID`"
        )
    if audience_id is not None:
        if found is None or found.id != audience_id:
            raise ReconcileError(
                f"the destination {destination!r} has no audience with id {audience_id!r}; "
                f"`reconcile lists {destination}` shows the audiences it has"
            )
        return found
    if found is None or found.name != name:
        hint = f"`reconcile lists {destination}` shows the audiences it has"
        if dated:
            hint = "the name made on another date: " + ", ".join(
                f"{a.name!r} (id {a.id})" for a in dated[:5]
            )
        raise ReconcileError(
            f"the destination {destination!r} has no audience named {name!r} (the name this "
            f"activation gives its audience); give the audience's id ({hint})"
        )
    return found
