"""spec + membership + state -> Plan. Reads through a StateReader, stages member changes in
the engine session's staging tables, and writes nothing to destinations or state."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb

from destinations.base import AudienceRef
from reconciler.enginedb import Session
from reconciler.errors import ConfigError, DestinationError, ReconcileError, SegmentError
from reconciler.integrations import Connections
from reconciler.plan import attributes, membership, splits, state_loss
from reconciler.plan.exports import plan_export
from reconciler.plan.held import Held
from reconciler.plan.model import (
    ActivationPlan,
    AudienceChange,
    Change,
    Plan,
    SegmentInfo,
    summarise,
)
from reconciler.plan.recorded import config_diff, digest, recorded_spec
from reconciler.plan.schedule import is_due, last_refresh
from reconciler.plan.segments import SegmentRunner
from reconciler.sources import sql_policy, writeback
from reconciler.sources.engine_errors import safe_engine_error
from reconciler.sources.limits import query_timeout, time_limit
from reconciler.state.attributes import relation as recorded_attributes
from reconciler.state.store import RecordedActivation, StateReader
from reconciler.workspace.activation_spec import ActionMode, Goal, ResolvedActivation
from reconciler.workspace.loader import Workspace
from reconciler.workspace.templating import DEFAULT_NAME, TemplateFailed, local_date, render_name


@dataclass
class Drift:
    """What a refresh found: groups whose audience was deleted at the destination, current
    names of audiences renamed there, and notes for the plan."""

    gone: set[str] = field(default_factory=set)
    names: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlanRequest:
    targets: tuple[str, ...] = ()
    include_inactive: bool = False  # `reconcile run NAME`: once activations that ran too
    due_only: bool = False
    refresh: bool = True  # contact destinations to resolve existing lists
    #: told which activation (and its segments) is being computed, for the CLI's progress
    announce: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


class Planner:
    def __init__(
        self,
        ws: Workspace,
        session: Session,
        connections: Connections,
        as_of: datetime,
        request: PlanRequest,
    ):
        self.ws, self.session, self.conns = ws, session, connections
        self.as_of, self.req = as_of, request
        self.con = session.con
        self.state: StateReader = session.state_reader()
        self.profiles = ws.config.source.profiles
        self.policy = sql_policy(ws.config.source)
        self.segments = SegmentRunner(ws, self.con, as_of, session.source.dialect, session.source)
        #: the membership diff runs in the PostgreSQL source (None: in the engine)
        self.pushdown = getattr(session.source, "pushdown", None)

    # ------------------------------------------------------------------ entry point
    def build(self) -> Plan:
        recorded = self.state.activations()
        moved_away = {a.moved_from for a in self.ws.activations.values() if a.moved_from}
        ids = sorted(set(self.ws.activations) | (set(recorded) - moved_away))
        if self.req.targets:
            unknown = [t for t in self.req.targets if t not in ids]
            if unknown:
                raise ConfigError(
                    f"unknown activation(s) {unknown}; known: {', '.join(ids) or 'none'}"
                )
            ids = [i for i in ids if i in self.req.targets]
        # suppression segments run first (their errors come first); with the diff in
        # PostgreSQL their keys stay there unless an activation is planned in the engine
        self.suppression = [self.segments.run(n) for n in self.ws.config.suppression]
        suppressed = None if self.pushdown is not None else self.segments.suppressed_table()
        self.last_refresh = last_refresh(
            self.con,
            self.ws.config.source.freshness_sql,
            as_of=self.as_of,
            timezone=self.ws.config.timezone,
            dialect=self.session.source.dialect,
            where=str(self.ws.config_location("source", "freshness_sql")),
            policy=self.policy,
            timeout=query_timeout(self.ws.config.source),
            fetch=getattr(self.session.source, "fetch", None),
        )
        plans = []
        for aid in ids:
            act = self.ws.activations.get(aid)
            if act is None:
                plans.append(self._plan_delete(recorded[aid]))
                continue
            if self.req.announce is not None:
                self.req.announce(f"planning {aid}: segments {', '.join(act.segments)}")
            base = recorded.get(aid) or (recorded.get(act.moved_from) if act.moved_from else None)
            p = self._plan_activation(aid, act.resolved(self.ws.config.defaults), base, suppressed)
            if self.req.due_only and not p.due:
                continue
            plans.append(p)
        now = datetime.now(UTC)
        return Plan(
            plan_id=uuid.uuid4().hex[:12],
            as_of=self.as_of,
            created_at=now,
            workspace=self.ws.root.name,
            targets=list(self.req.targets),
            include_inactive=self.req.include_inactive,
            state_lineage=self.state.lineage(),
            activations=plans,
            summary=summarise(plans),
            # empty: no run was ever recorded (audiences recorded by `reconcile import` only)
            state_loss=state_loss.conflicts(plans, state_is_empty=not self.state.last_runs()),
            state_notice=self.session.state_notice,
        )

    def _consent(self, integ, name: str) -> str:
        """The integration's consent condition as SQL over ``p``; a source that evaluated it
        itself (PostgreSQL, at attach) names the column holding the result."""
        evaluated = getattr(self.session.source, "consent_expression", None)
        if evaluated is not None:
            return evaluated(name)
        return membership.consent_sql(
            integ,
            str(self.ws.location("integrations", name, "consent")),
            self.session.source.dialect,
            self.con,
            self.profiles,
            self.policy,
        )

    # ------------------------------------------------------------------ one activation
    def _plan_activation(
        self,
        aid: str,
        act: ResolvedActivation,
        rec: RecordedActivation | None,
        suppressed: str | None,
    ) -> ActivationPlan:
        integ = self.ws.integrations[act.destination]
        dest = self.conns.get(act.destination)
        spec = recorded_spec(self.ws, act)
        spec_digest = digest(spec)
        baseline = rec.id if rec else aid
        seed = rec.split_seed if rec else aid
        notes: list[str] = []
        if act.moved_from and rec is not None and rec.id == act.moved_from:
            notes.append(f"moved from {act.moved_from!r}: its state and audiences carry over")
        ran_once = rec is not None and rec.ran and act.frequency == "once"
        frozen = act.paused or (ran_once and not self.req.include_inactive)
        if act.paused:
            notes.append("paused (Stop Updates): only exclusions are applied")
        elif frozen:
            notes.append("one-time activation already ran: `reconcile run` re-runs it")

        seg_results = self.segments.for_activation(list(act.segments))
        for r in seg_results:
            if r.repeated:
                notes.append(
                    f"segment {r.name!r} returned {r.repeated:,} key(s) more than once; "
                    "each is counted once"
                )
        old_sql = rec.spec.get("segment_sql", {}) if rec else {}
        seg_info = [
            SegmentInfo(
                name=r.name,
                size=r.size,
                changed=rec is not None and old_sql.get(r.name) != spec["segment_sql"][r.name],
            )
            for r in seg_results
        ]
        consent = self._consent(integ, act.destination)
        ids = dest.identity.accepted
        drift = self._refresh(act, rec, dest) if rec is not None and not frozen else Drift()
        notes += drift.notes
        attr_cols = [integ.attributes[f] for f in act.attributes]
        mapping = {f: integ.attributes[f] for f in act.attributes}
        syncs = act.goal is Goal.SYNC_ATTRIBUTES
        consent_where = str(self.ws.location("integrations", act.destination, "consent"))
        try:
            with time_limit(
                self.con,
                query_timeout(self.ws.config.source),
                consent_where,
                "the audience query (consent condition)",
            ):
                pushdown = self.pushdown
                if pushdown is not None and _in_source().can_stage(
                    pushdown, act, self.profiles, ids, attr_cols
                ):
                    staged = _in_source().stage(
                        pushdown,
                        self.state,
                        act=act,
                        baseline=baseline,
                        seed=seed,
                        segments=seg_results,
                        suppression=self.suppression,
                        consent=pushdown.source.consent_condition(act.destination),
                        identifier_types=ids,
                        attribute_columns=attr_cols,
                        gone=sorted(drift.gone),
                        frozen=frozen,
                        where=consent_where,
                    )
                    counts, held = staged.counts, Held(staged.duplicates, staged.sample)
                    if self.req.announce is not None:
                        self.req.announce(
                            f"{aid}: membership diffed in PostgreSQL (recorded members "
                            f"{'read there' if staged.in_state else 'sent as fingerprints'}); "
                            f"{staged.shipped:,} row(s) of changing members copied in"
                        )
                    recorded, suppressed = staged.recorded, staged.suppressed
                else:
                    if self.pushdown is not None:  # this one is diffed in the engine
                        self.pushdown.ship_all_profiles()
                        suppressed = self.segments.suppressed_table()
                    recorded = self.state.members_sql(baseline)
                    counts, held = membership.stage_desired(
                        self.con,
                        profiles=self.profiles,
                        segment_tables=[self.segments.local(r) for r in seg_results],
                        suppressed=suppressed,
                        consent=consent,
                        group_expr=membership.group_expression(act, seed),
                        fingerprint=membership.fingerprint_sql(
                            self.profiles, ids, attr_cols, self.profiles.default_phone_country
                        ),
                        matchable=membership.matchable_sql(self.profiles, ids),
                        attribute_fps=attributes.fingerprints_sql(self.profiles, mapping)
                        if syncs
                        else None,
                    )
                held = membership.stage_changes(
                    self.con,
                    activation_id=aid,
                    recorded=recorded,
                    gone=sorted(drift.gone),
                    act=act,
                    frozen=frozen,
                    profiles=self.profiles,
                    suppressed=suppressed,
                    held=held,
                    consent=consent,
                )
        except ReconcileError:
            raise
        except duckdb.Error as exc:  # the consent condition fails on the data
            detail = safe_engine_error(exc, integ.consent or "")[0]
            raise SegmentError(
                f"{consent_where}: computing the audience of {aid!r} failed: {detail}"
            ) from exc
        if counts["unknown"]:
            notes.append(f"{counts['unknown']:,} segment key(s) are not in the profiles table")
        changes = membership.change_counts(self.con, aid)
        warnings: list[str] = []
        if counts["held"] and held.table:
            n_dups = self.con.execute(f"SELECT count(*) FROM {held.table}").fetchall()[0][0]
            warnings.append(
                f"{counts['held']:,} of its profiles held: {n_dups:,} key(s) appear more than "
                f"once in the profiles table {self.profiles.table!r} "
                f"(e.g. {', '.join(held.sample)}); profiles with such a key are held (neither "
                "added, updated nor removed) until the source is fixed"
            )
        audiences = self._audiences(aid, act, rec, changes, warnings, drift)
        if syncs:
            audiences, said = attributes.with_value_counts(
                self.con,
                aid,
                audiences,
                recorded=self.state.members_sql(baseline),
                recorded_attributes=recorded_attributes(self.con, self.state.c, baseline),
                fields=list(mapping),
            )
            notes += said
        if not self.req.refresh:
            notes.append("--refresh=false: destination lists were not checked")
        config_changes = config_diff(rec.spec if rec else None, spec)
        pending = 0
        if rec is not None and getattr(self.ws.config.source, "writable", False):
            pending = writeback.pending_rows(
                self.con,
                source_catalog=self.session.source.catalog,
                members=self.state.members_sql(baseline),
                activation_id=aid,
                enabled=bool(rec.spec.get("append_to_profiles")),
                notes=notes,
            )
        if rec is None:
            change = Change.CREATE
        elif act.paused and not any(a.has_changes for a in audiences) and not config_changes:
            change = Change.PAUSED
        elif (
            rec.spec_digest != spec_digest
            or any(a.has_changes for a in audiences)
            or rec.id != aid
            or pending
        ):
            change = Change.UPDATE
        else:
            change = Change.PAUSED if act.paused else Change.NOOP
        export = None
        if act.goal is Goal.EXPORT_DATA:
            export = plan_export(
                self.state,
                dest,
                aid,
                baseline,
                act,
                audiences,
                as_of=self.as_of,
                timezone=self.ws.config.timezone,
            )
            if export.resume:
                change = Change.UPDATE if change is Change.NOOP else change
                notes.append(f"an interrupted export ({export.resume}) is written again")
        return ActivationPlan(
            id=aid,
            change=change,
            destination=act.destination,
            destination_type=integ.type,
            goal=act.goal.value,
            action=act.action.value,
            frequency=act.frequency,
            paused=act.paused,
            moved_from=act.moved_from if rec and rec.id != aid else None,
            file=self.ws.file_of("activations", aid),
            spec_digest=spec_digest,
            state_serial=rec.serial if rec else 0,
            config_changes=config_changes,
            segments=seg_info,
            audience_size=counts["eligible"],
            matchable=counts["matchable"],
            excluded={
                rule: counts[k]
                for rule, k in (
                    ("suppression", "suppression"),
                    ("consent", "consent"),
                    ("duplicate key", "held"),
                )
                if counts[k]
            },
            audiences=audiences,
            notes=notes,
            warnings=warnings,
            max_removal_share=act.max_removal_share,
            on_delete=act.on_delete,
            export=export,
            writeback_pending=pending,
            due=(
                not act.paused
                and is_due(
                    rec, act.frequency, self.as_of, self.ws.config.timezone, self.last_refresh
                )
            ),
        )

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
        groups = splits.groups(act.split)
        # groups that exist only in the state (the split changed) still need their leavers
        groups += [g for g in sorted(set(recorded_aud) | set(sizes)) if g not in groups]
        out = []
        for grp in groups:
            c = {
                op: changes.get((grp, op), 0)
                for op in ("add", "remove", "update", "purge", "forget")
            }
            before = 0 if grp in drift.gone else sizes.get(grp, 0)
            ra = recorded_aud.get(grp)
            target = self._audience_target(aid, act, grp, ra, date_created)
            name, resource_id, create, rename_from, taken_by = target
            sent = splits.sent(grp)
            removed = c["remove"]
            forgotten = 0 if grp in drift.gone else c["forget"]
            after = before + c["add"] + c["purge"] - removed - forgotten
            mass = (
                sent
                and act.action is not ActionMode.REMOVE
                and before > 0
                and removed > 0
                and (after == 0 or removed > act.max_removal_share * before)
            )
            if grp not in splits.groups(act.split) and not any(c.values()) and before == 0:
                continue
            adopt = bool(create and taken_by and act.adopt)
            if create and taken_by and sent and not adopt:
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
                    rename_from=rename_from if sent else None,
                    name_taken_by=taken_by if sent else None,
                    adopt=adopt and sent,
                    add=c["add"],
                    remove=removed + c["purge"],
                    update=c["update"],
                    forget=c["forget"],
                    size_before=before,
                    size_after=after,
                    mass_removal=mass,
                )
            )
        return out

    def _audience_target(
        self, aid: str, act: ResolvedActivation, grp: str, ra, date_created
    ) -> tuple[str, str | None, bool, str | None, str | None]:
        """(name, resource id, create?, renamed from, id of a foreign audience of that name)."""
        if grp not in splits.groups(act.split) and ra is not None:
            # a group of an earlier split: drained of its members, never renamed
            return ra.name, ra.resource_id, False, None, None
        existing = act.target.existing
        if existing is not None:
            wanted = existing[grp] if isinstance(existing, dict) else existing  # type: ignore[index]
            if ra is not None and ra.resource_id and wanted in (ra.resource_id, ra.name):
                return ra.name, ra.resource_id, False, None, None
            if not self.req.refresh:
                return wanted, None, False, None, None
            found = self.conns.get(act.destination).find_audience(wanted)
            if found is None:
                where = self.ws.location("activations", aid, "list", "existing")
                raise ConfigError(
                    f"the destination {act.destination!r} has no list {wanted!r}; "
                    f"`reconcile lists {act.destination}` shows the lists it has",
                    where,
                )
            return found.name, found.id, False, None, None
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
        name = splits.audience_name(base, act.split, grp)
        if ra is not None and ra.resource_id:
            return name, ra.resource_id, False, (ra.name if ra.name != name else None), None
        return name, None, True, None, self._name_taken(aid, act, grp, name)

    def _refresh(self, act: ResolvedActivation, rec: RecordedActivation, dest) -> Drift:
        """Read each managed audience back (``--refresh=false`` skips it): one deleted at the
        destination is created again with its members; one renamed there is renamed back."""
        drift = Drift()
        if not self.req.refresh or act.action is ActionMode.REMOVE or not dest.capabilities.refresh:
            return drift
        for grp, ra in self.state.audiences(rec.id).items():
            if not ra.sent or not ra.resource_id:
                continue
            try:
                now = dest.read_audience(AudienceRef(ra.resource_id, ra.name))
            except DestinationError as exc:  # the plan itself needs no destination
                drift.notes.append(f"audience {ra.name!r} could not be read back: {exc}")
                continue
            if now is None:
                drift.gone.add(grp)
                drift.notes.append(
                    f"audience {ra.name!r} ({ra.resource_id}) was deleted at the destination: "
                    "it will be created again and its members sent again"
                )
            elif now.name != ra.name:
                drift.names[grp] = now.name
                drift.notes.append(
                    f"audience {ra.name!r} was renamed to {now.name!r} at the destination"
                )
        return drift

    def _name_taken(self, aid: str, act: ResolvedActivation, grp: str, name: str) -> str | None:
        """The id of an audience of this name at the destination that this activation did not
        create (a creation interrupted by a crash is its own: apply resolves it)."""
        if not self.req.refresh or not splits.sent(grp):
            return None
        if self.state.pending_create(aid, grp) is not None:
            return None
        try:
            found = self.conns.get(act.destination).find_audience(name)
        except DestinationError:  # reported by apply; the plan itself needs no destination
            return None
        return found.id if found is not None and found.name == name else None

    # ------------------------------------------------------------------ deleted files
    def _plan_delete(self, rec: RecordedActivation) -> ActivationPlan:
        clear = rec.spec.get("on_delete") == "clear"
        if clear:
            membership.stage_all(self.con, rec.id, self.state.members_sql(rec.id), "remove")
        changes = membership.change_counts(self.con, rec.id)
        sizes = self.state.member_counts(rec.id)
        audiences = []
        for grp, ra in sorted(self.state.audiences(rec.id).items()):
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
        return ActivationPlan(
            id=rec.id,
            change=Change.DELETE,
            destination=rec.destination,
            destination_type=rec.spec.get("_type", ""),
            goal=rec.spec.get("goal", ""),
            action=rec.spec.get("action", ""),
            frequency=rec.frequency,
            paused=rec.paused,
            spec_digest=None,
            state_serial=rec.serial,
            audiences=audiences,
            notes=[note],
            max_removal_share=rec.spec.get("max_removal_share", 0.5),
            on_delete="clear" if clear else "keep",
            due=True,
        )


def plan_as_of(now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)


def _in_source():
    """The in-PostgreSQL diff (imports psycopg: loaded only for a PostgreSQL source)."""
    from reconciler.plan import in_source

    return in_source
