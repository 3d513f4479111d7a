"""The audiences of an activation's plan: for each split group the audience its members go
to at the destination (the rendered name, a list named by ``list: {existing: ...}``, one to
rename back, adopt or create) with its counts, and the drift a refresh reads back from the
destination (audiences deleted or renamed there). The audience side of
:class:`reconciler.plan.planner.Planner`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from destinations.base import AudienceRef
from reconciler.errors import ConfigError, DestinationError, printable
from reconciler.integrations import Connections
from reconciler.plan import splits, twins
from reconciler.plan.model import AudienceChange, Change, trips_mass_removal
from reconciler.state.store import RecordedActivation, StateReader
from reconciler.workspace.activation_spec import ActionMode, ResolvedActivation
from reconciler.workspace.loader import Workspace
from reconciler.workspace.templating import DEFAULT_NAME, TemplateFailed, local_date, render_name

_T = TypeVar("_T")

if TYPE_CHECKING:
    from reconciler.plan.planner import PlanRequest


@dataclass
class Drift:
    """What a refresh found: groups whose audience was deleted at the destination, current
    names of audiences renamed there, and notes for the plan."""

    gone: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: audiences that could not be read back: the plan cannot say the destination matches
    warnings: list[str] = field(default_factory=list)


class AudienceTargeting:
    """Each group's target audience and the drift of the recorded ones (a mixin of
    :class:`~reconciler.plan.planner.Planner`)."""

    # set by Planner.__init__
    ws: Workspace
    conns: Connections
    state: StateReader
    as_of: datetime
    req: PlanRequest
    #: each destination's audiences, listed once a plan (:meth:`_earlier_twin`)
    _listed: dict[str, list[AudienceRef]]

    def _audiences(
        self,
        aid: str,
        act: ResolvedActivation,
        rec: RecordedActivation | None,
        changes: dict[tuple[str, str], int],
        warnings: list[str],
        drift: Drift,
    ) -> list[AudienceChange]:
        recorded_aud = self.state.audiences(rec.id) if rec else {}
        for grp, current in drift.names.items():  # renamed at the destination: rename back
            recorded_aud[grp] = dataclasses.replace(recorded_aud[grp], name=current)
        for grp in drift.gone:  # deleted at the destination: created again
            recorded_aud.pop(grp, None)
        sizes = self.state.member_counts(rec.id) if rec else {}
        date_created = rec.date_created if rec else local_date(self.as_of, self.ws.config.timezone)
        # the recorded spec sent to a `list: existing` (a list that is not the activation's)
        was_existing = bool(rec and (rec.spec.get("list") or {}).get("existing"))
        groups = splits.groups(act.split)
        # audiences of groups an earlier split had: drained of their members (id -> group)
        drained = {
            ra.resource_id: g
            for g, ra in recorded_aud.items()
            if g not in groups and ra.resource_id and ra.sent
        }
        # groups that exist only in the state (the split changed) still need their leavers
        groups += [g for g in sorted(set(recorded_aud) | set(sizes)) if g not in groups]
        out = []
        for grp in groups:
            c = {
                op: changes.get((grp, op), 0)
                for op in ("add", "remove", "update", "purge", "forget", "lose")
            }
            before = 0 if grp in drift.gone else sizes.get(grp, 0)
            ra = recorded_aud.get(grp)
            target = self._audience_target(aid, act, grp, ra, date_created, was_existing)
            name, resource_id, create, rename_from, taken_by = target
            sent = splits.sent(grp)
            removed = c["remove"]
            forgotten = 0 if grp in drift.gone else c["forget"]
            after = before + c["add"] + c["purge"] - removed - forgotten
            # updates that leave a member no usable identifier remove what was sent for it
            # (``sendable.unsendable``): to the guard, the destination loses them too
            mass = (
                sent
                and act.action is not ActionMode.REMOVE
                and trips_mass_removal(
                    before, removed + c["lose"], after - c["lose"], act.max_removal_share
                )
            )
            if grp not in splits.groups(act.split) and not any(c.values()) and before == 0:
                continue
            adopt = bool(create and taken_by and act.adopt)
            twin = None
            if create and sent and not taken_by:
                twin = self._earlier_twin(aid, act, grp, name)
            target_id = taken_by if adopt else resource_id
            if sent and grp not in drained.values() and target_id in drained:
                raise ConfigError(
                    splits.drained_target(grp, name, target_id, drained[target_id]),
                    self.ws.location("activations", aid, "split"),
                )
            if create and taken_by and sent and not adopt and taken_by in drained:
                warnings.append(splits.own_drained_name(grp, name, taken_by, drained[taken_by]))
            elif create and taken_by and sent and not adopt:
                warnings.append(
                    f"the destination already has an audience named {name!r} (id {taken_by}) "
                    "that this activation did not create; apply creates a second one with the "
                    "same name. Set `adopt: true` to take it over, `list: {existing: ...}` to "
                    "send to it, or change `name`"
                )
            out.append(
                AudienceChange(
                    group=grp,
                    name=name,
                    sent=sent,
                    resource_id=taken_by if adopt else resource_id,
                    create=create and sent and not adopt,
                    # what the destination calls them, escaped: a name set in its UI may hold
                    # control characters (the plan prints it, its file refuses them)
                    rename_from=printable(rename_from) if rename_from and sent else None,
                    name_taken_by=printable(taken_by) if taken_by and sent else None,
                    adopt=adopt and sent,
                    earlier_id=printable(twin.id) if twin else None,
                    earlier_name=printable(twin.name) if twin else None,
                    add=c["add"],
                    remove=removed + c["purge"],
                    update=c["update"],
                    lose=c["lose"],
                    forget=c["forget"],
                    size_before=before,
                    size_after=after,
                    mass_removal=mass,
                )
            )
        return out

    def _audience_target(
        self, aid: str, act: ResolvedActivation, grp: str, ra, date_created, was_existing=False
    ) -> tuple[str, str | None, bool, str | None, str | None]:
        """(name, resource id, create?, renamed from, id of a foreign audience of that name).
        ``was_existing``: the recorded spec sent to a `list: existing` (a list not ours)."""
        if grp not in splits.groups(act.split) and ra is not None:
            # a group of an earlier split: drained of its members, never renamed
            return ra.name, ra.resource_id, False, None, None
        if act.target.existing is not None:
            where = self.ws.location("activations", aid, "list", "existing")
            wanted = act.target.existing_for(grp)
            if wanted is None:  # {A: ..} without B: no list for that group
                raise ConfigError(f"`existing` names no list for group {grp!r}", where)
            if ra is not None and ra.resource_id and wanted in (ra.resource_id, ra.name):
                return ra.name, ra.resource_id, False, None, None
            if ra is not None and ra.resource_id and not self.req.refresh:
                raise self._moved_list(aid, ra, wanted, where)
            if not self.req.refresh:
                return wanted, None, False, None, None
            dest = self.conns.get(act.destination)
            found = retried(dest, dest.find_audience, wanted)
            if found is None:
                raise ConfigError(
                    f"the destination {act.destination!r} has no list {wanted!r}; "
                    f"`reconcile lists {act.destination}` shows the lists it has",
                    where,
                )
            if found.id != wanted:  # found by its name: no other list may have that name
                named = [a.id for a in retried(dest, dest.list_audiences) if a.name == wanted]
                if len(named) > 1:
                    raise ConfigError(
                        f"{len(named)} lists at the destination {act.destination!r} are named "
                        f"{wanted!r} ({', '.join(named)}); name the one to use by its id",
                        where,
                    )
            if ra is not None and ra.resource_id and found.id != ra.resource_id:
                raise self._moved_list(aid, ra, f"{found.name} ({found.id})", where)
            return found.name, found.id, False, None, None
        if ra is not None and ra.resource_id and was_existing:
            raise ConfigError(
                f"this activation sends to the existing list {ra.name!r} ({ra.resource_id}), "
                "which is not its own: `list: {create: true}` would rename that list, not "
                "create one. To send to a new list, give the activation a new id (rename "
                "its file; the old id is then deleted, its `on_delete` applies)",
                self.ws.location("activations", aid, "list"),
            )
        name = self._name(aid, act, grp, date_created)
        if ra is not None and ra.resource_id:
            return name, ra.resource_id, False, (ra.name if ra.name != name else None), None
        return name, None, True, None, self._name_taken(aid, act, grp, name)

    def _name(self, aid: str, act: ResolvedActivation, grp: str, date_created: date) -> str:
        """The name of the group's audience, rendered from the activation's template."""
        try:
            base = render_name(
                act.name or DEFAULT_NAME,
                as_of=self.as_of,
                timezone=self.ws.config.timezone,
                date_created=date_created,
                activation=aid,
                segments=act.segments,
            )
        except TemplateFailed as exc:
            raise ConfigError(str(exc), self.ws.location("activations", aid, "name")) from exc
        return splits.audience_name(base, act.split, grp)

    @staticmethod
    def _moved_list(aid: str, ra, wanted: str, where) -> ConfigError:
        return ConfigError(
            f"`existing` now names {wanted!r}, but the members of {aid!r} are recorded in "
            f"{ra.name!r} ({ra.resource_id}): a plan cannot move them to another list. To "
            "send to the other list, give the activation a new id (rename its file; the old "
            "id is then deleted, its `on_delete` applies)",
            where,
        )

    def _refresh(self, act: ResolvedActivation, rec: RecordedActivation, dest) -> Drift:
        """Read each managed audience back (``--refresh=false`` skips it): one deleted at the
        destination is created again with its members; one renamed there is renamed back."""
        drift = Drift()
        moved = rec.destination != act.destination  # the file now names another integration
        checkable = self.req.refresh and dest.capabilities.refresh
        recorded = self.state.audiences(rec.id)
        if act.action is not ActionMode.REMOVE and act.target.existing is None:
            # members recorded for an audience the state does not know (a damaged or edited
            # state): its creation must send them, not record an empty audience as full
            for grp, n in sorted(self.state.member_counts(rec.id).items()):
                if grp not in recorded and n and splits.sent(grp):
                    drift.gone.add(grp)
                    drift.notes.append(
                        f"the state records {n:,} member(s) of group {grp!r} but no audience "
                        "for them (a damaged or edited state): the audience is created and "
                        "its members sent again"
                    )
        if act.action is ActionMode.REMOVE or not (checkable or moved):
            return drift
        for grp, ra in recorded.items():
            if not ra.sent or not ra.resource_id:
                continue
            if moved and not checkable:  # another system, which cannot be asked: start anew
                drift.gone.add(grp)
                drift.notes.append(self._moved_note(ra, rec.destination, act.destination))
                continue
            try:
                now = retried(dest, dest.read_audience, AudienceRef(ra.resource_id, ra.name))
            except DestinationError as exc:  # the plan itself needs no destination
                drift.warnings.append(
                    f"audience {ra.name!r} could not be read back, so the destination was not "
                    f"checked: {exc}"
                )
                continue
            if now is None and act.target.existing is not None and not moved:
                # not the activation's own list: it cannot be created again. Its apply fails
                # (AudienceGone); the other activations are planned and applied as usual
                drift.warnings.append(
                    f"the list {ra.name!r} ({ra.resource_id}) that `list: existing` names is "
                    "gone from the destination (deleted there): nothing can be sent to it, so "
                    "its apply fails. Send to another list by giving the activation a new id "
                    "(rename its file), or delete the activation"
                )
                continue
            if now is None:
                drift.gone.add(grp)
                drift.notes.append(
                    self._moved_note(ra, rec.destination, act.destination)
                    if moved
                    else f"audience {ra.name!r} ({ra.resource_id}) was deleted at the "
                    "destination: it will be created again and its members sent again"
                )
            elif now.name != ra.name:
                drift.names[grp] = now.name
                drift.notes.append(
                    f"audience {ra.name!r} was renamed to {now.name!r} at the destination"
                )
        return drift

    @staticmethod
    def _moved_note(ra, was: str, now: str) -> str:
        return (
            f"the activation moved from destination {was!r} to {now!r}, which does not have "
            f"audience {ra.name!r} ({ra.resource_id}): it will be created there and every "
            f"member sent; the audience at {was!r} is left as it is (no longer managed)"
        )

    def _name_taken(self, aid: str, act: ResolvedActivation, grp: str, name: str) -> str | None:
        """The id of an audience of this name at the destination that this activation did not
        create (a creation interrupted by a crash is its own: apply resolves it)."""
        if not self.req.refresh or not splits.sent(grp):
            return None
        if self.state.pending_create(aid, grp) is not None:
            return None
        try:
            dest = self.conns.get(act.destination)
            found = retried(dest, dest.find_audience, name)
        except DestinationError:  # reported by apply; the plan itself needs no destination
            return None
        return found.id if found is not None and found.name == name else None

    def _earlier_twin(
        self, aid: str, act: ResolvedActivation, grp: str, name: str
    ) -> AudienceRef | None:
        """With an empty state (no run recorded: a lost state?), an audience at the
        destination whose name is this one made on another date (:mod:`twins`): a template
        using ``date_created``, the default one included, names a new audience anew each day,
        so the exact lookup of :meth:`_name_taken` cannot find the one made before."""
        if not self.req.refresh or not splits.sent(grp) or act.target.existing is not None:
            return None
        if self.state.last_runs() or self.state.pending_create(aid, grp) is not None:
            return None
        pattern = twins.dated_pattern(lambda day: self._name(aid, act, grp, day))
        if pattern is None:
            return None
        listed = self._listed.get(act.destination)
        if listed is None:
            try:
                dest = self.conns.get(act.destination)
                listed = retried(dest, dest.list_audiences)
            except DestinationError:  # reported by apply; the plan itself needs no destination
                listed = []
            self._listed[act.destination] = listed
        found = twins.earlier_twins(listed, pattern, name)
        return found[0] if found else None


def retried(dest: Any, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, a read of the destination, retried by the destination's retry policy
    as apply's calls are: one throttle must not hide an audience deleted there."""
    return dest.retry_policy.call(fn, *args)


def warn_shared_audiences(plans: list, recorded: dict[str, list[tuple[str, str]]]) -> None:
    """Warn on each planned activation that sends to an audience another activation manages
    too (recorded by it, or planned for it now: two `list: existing` of one list): each would
    remove what the other adds, and each plan would look right on its own.

    ``recorded``: activation id -> its recorded (destination, audience id) pairs."""
    owners: dict[tuple[str, str], set[str]] = {}
    leaving = {p.id for p in plans if p.change is Change.DELETE}  # deleted in this plan
    for aid, pairs in recorded.items():
        for pair in pairs if aid not in leaving else ():
            owners.setdefault(pair, set()).add(aid)
    for p in plans:
        for au in p.audiences if p.id not in leaving else ():
            if au.resource_id and au.sent:
                owners.setdefault((p.destination, au.resource_id), set()).add(p.id)
    for p in plans:
        if p.change is Change.DELETE:
            continue
        seen: set[str] = set()
        for au in p.audiences:
            others = owners.get((p.destination, au.resource_id or ""), set()) - {p.id}
            others -= {p.moved_from} if p.moved_from else set()
            if au.resource_id and au.sent and others and au.resource_id not in seen:
                seen.add(au.resource_id)
                p.warnings.append(
                    f"audience {au.name!r} ({au.resource_id}) is also managed by "
                    f"{', '.join(sorted(others))}: their changes to it can undo each other "
                    "(one removes what the other adds) and each plan looks right on its own; "
                    "give each its own audience"
                )
    _warn_same_names(plans)


def _warn_same_names(plans: list) -> None:
    """Warn on each planned activation whose audience has the name of another activation's
    audience at the same destination (two audiences, one name): `list: existing` by name and
    `reconcile import` can no longer tell them apart. One audience shared by id is warned of
    by :func:`warn_shared_audiences` instead."""
    users: dict[tuple[str, str], set[tuple[str, str]]] = {}
    live = [p for p in plans if p.change is not Change.DELETE]
    for p in live:
        for au in p.audiences:
            if au.sent:
                users.setdefault((p.destination, au.name), set()).add((p.id, au.resource_id or ""))
    for p in live:
        said: set[str] = set()
        for au in p.audiences:
            if not au.sent or au.name in said:
                continue
            others = {
                o
                for o, rid in users[(p.destination, au.name)]
                if o != p.id and o != p.moved_from and not (rid and rid == au.resource_id)
            }
            if others:
                said.add(au.name)
                p.warnings.append(
                    f"audience name {au.name!r} at {p.destination!r} is also the name of an "
                    f"audience of {', '.join(sorted(others))}: two audiences of one name "
                    "cannot be told apart by `list: {existing: name}` or `reconcile import`; "
                    "give each its own name"
                )
