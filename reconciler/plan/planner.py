"""spec + membership + state -> Plan. Reads through a StateReader, stages member changes in
the engine session's staging tables, and writes nothing to destinations or state.

Each activation's plan is put together here; its parts come in layers: ``staging`` (the
consent condition and the membership diff, in the engine or in a PostgreSQL source) and
``audiences`` (each group's audience at the destination and the drift a refresh reads
back). An activation whose file was deleted is planned by ``deleted``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from destinations.identity.rules import RULES_VERSION
from reconciler.enginedb import Session
from reconciler.errors import ConfigError, printable
from reconciler.integrations import Connections
from reconciler.plan import attributes, membership, sendable, state_loss
from reconciler.plan.audiences import AudienceTargeting, Drift, warn_shared_audiences
from reconciler.plan.deleted import plan_delete
from reconciler.plan.exports import export_changes, export_columns, plan_export
from reconciler.plan.held import shown
from reconciler.plan.model import ActivationPlan, Change, Plan, SegmentInfo, summarise
from reconciler.plan.recorded import (
    check_goal_change,
    comparable,
    config_diff,
    digest,
    recorded_spec,
    sent_anew,
)
from reconciler.plan.recorded import frozen as recorded_frozen
from reconciler.plan.schedule import is_due, last_refresh
from reconciler.plan.segments import SegmentRunner
from reconciler.plan.staging import MembershipStaging
from reconciler.plan.terms import undeclared_identifiers
from reconciler.sources import sql_policy, writeback
from reconciler.sources.limits import query_timeout
from reconciler.state.attributes import relation as recorded_attributes
from reconciler.state.store import RecordedActivation, StateReader
from reconciler.workspace.activation_spec import Goal, ResolvedActivation
from reconciler.workspace.loader import Workspace


@dataclass(frozen=True)
class PlanRequest:
    targets: tuple[str, ...] = ()
    include_inactive: bool = False  # `reconcile run NAME`: once activations that ran too
    due_only: bool = False
    refresh: bool = True  # contact destinations to resolve existing lists
    #: told which activation (and its segments) is being computed, for the CLI's progress
    announce: Callable[[str], None] | None = field(default=None, compare=False, repr=False)


class Planner(AudienceTargeting, MembershipStaging):
    def __init__(
        self,
        ws: Workspace,
        session: Session,
        connections: Connections,
        as_of: datetime,
        request: PlanRequest,
    ):
        self.ws, self.session, self.conns = ws, session, connections
        self._listed = {}
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
                rec = recorded[aid]
                integ = self.ws.integrations.get(rec.destination)
                kind = integ.type if integ is not None else ""
                deleted = plan_delete(self.con, self.state, rec, kind)
                if warning := self._in_flight_warning(aid):
                    deleted = deleted.model_copy(update={"warnings": [*deleted.warnings, warning]})
                plans.append(deleted)
                continue
            if self.req.announce is not None:
                self.req.announce(f"planning {aid}: segments {', '.join(act.segments)}")
            base = recorded.get(aid) or (recorded.get(act.moved_from) if act.moved_from else None)
            p = self._plan_activation(aid, act.resolved(self.ws.config.defaults), base, suppressed)
            if self.req.due_only and not p.due:
                continue
            plans.append(p)
        warn_shared_audiences(
            plans,
            {
                aid: [
                    (rec.destination, ra.resource_id)
                    for ra in self.state.audiences(aid).values()
                    if ra.sent and ra.resource_id
                ]
                for aid, rec in recorded.items()
            },
        )
        now = datetime.now(UTC)
        return Plan(
            plan_id=uuid.uuid4().hex[:12],
            as_of=self.as_of,
            created_at=now,
            # shown in plans and PR comments: a folder name's escapes escaped (the plan
            # file's checks refuse control characters, so the plan could never be applied)
            workspace=printable(self.ws.root.name),
            targets=list(self.req.targets),
            include_inactive=self.req.include_inactive,
            state_lineage=self.state.lineage(),
            activations=plans,
            summary=summarise(plans),
            # empty: no run was ever recorded (audiences recorded by `reconcile import` only)
            state_loss=state_loss.conflicts(plans, state_is_empty=not self.state.last_runs()),
            state_notice=self.session.state_notice,
        )

    def _synced(self, rec: RecordedActivation) -> bool:
        """Whether the state holds attribute hashes of the activation (it synced attributes)."""
        rel = recorded_attributes(self.con, self.state.c, rec.id)
        return bool(self.con.execute(f"SELECT EXISTS (SELECT 1 FROM {rel})").fetchall()[0][0])

    def _in_flight_warning(self, *ids: str | None) -> str | None:
        """Members of calls a run that died left unanswered, under these activation ids (its
        own, the one it moved from): the next apply records them first (recover_calls)."""
        if self.session.state_notice:  # an apply is running: its calls are in flight
            return None
        n = sum(self.state.in_flight(i) for i in dict.fromkeys(ids) if i)
        if not n:
            return None
        return (
            f"{n:,} member(s) were in calls whose answers a run that stopped never recorded: "
            "the next apply records them as possibly sent and plans them again first, so it "
            "may send or remove more than this plan shows"
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
        spec = recorded_spec(self.ws, act, dest.identity)
        # what the recorded spec is compared with (the keys it predates left out), and its
        # digest, which a saved plan carries (one saved before an upgrade still matches)
        compared = comparable(rec.spec if rec else None, spec)
        spec_digest = digest(compared)
        baseline = rec.id if rec else aid
        seed = rec.split_seed if rec else aid
        check_goal_change(
            self.ws, aid, act, rec, synced=rec is not None and not rec.spec and self._synced(rec)
        )
        notes: list[str] = []
        if act.moved_from and rec is not None and rec.id == act.moved_from:
            notes.append(f"moved from {act.moved_from!r}: its state and audiences carry over")
        frozen = recorded_frozen(act, rec, self.req.include_inactive)
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
                # an activation whose first run did not complete has no spec recorded yet
                # (a segment newly added to the activation is not one whose definition moved)
                changed=bool(rec and rec.spec)
                and r.name in old_sql
                and old_sql[r.name] != spec["segment_sql"][r.name],
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
        remapped, said = sent_anew(rec, spec, act, frozen=frozen)
        notes += said
        # members recorded under older normalisation rules: those whose identifiers now
        # normalise differently (a BOM in an e-mail, a float's ".0" in a phone) are updated
        rules = rec.spec.get("identity_rules", 1) if rec and rec.spec else RULES_VERSION
        recheck = rules != RULES_VERSION and act.goal is not Goal.EXPORT_DATA and not frozen
        if recheck:
            notes.append(
                f"its members were recorded under older identifier rules (version {rules}, "
                f"now {RULES_VERSION}): those whose identifiers now normalise differently "
                "are updated"
            )
        counts, held = self._stage_membership(
            aid,
            act,
            integ,
            remapped=remapped,
            recheck=dest.identity if recheck else None,
            baseline=baseline,
            seed=seed,
            seg_results=seg_results,
            consent=consent,
            identifier_types=ids,
            attribute_columns=attr_cols,
            mapping=mapping,
            syncs=syncs,
            gone=drift.gone,
            frozen=frozen,
            suppressed=suppressed,
        )
        none_known = counts["unknown"] and not any(
            counts[c] for c in ("held", "suppression", "consent", "eligible")
        )
        if counts["unknown"] and not none_known:
            notes.append(f"{counts['unknown']:,} segment key(s) are not in the profiles table")
        changes = membership.change_counts(self.con, aid)
        unsendable = None
        if act.goal is not Goal.EXPORT_DATA:
            unsendable = sendable.check(
                self.con,
                changes,
                notes,
                activation_id=aid,
                destination_type=integ.type,
                identity=dest.identity,
                profiles=self.profiles,
                recorded=self.state.members_sql(baseline),
                pushdown=self.pushdown is not None,
                frozen=frozen,
            )
        warnings = [*undeclared_identifiers(integ.config, self.profiles), *drift.warnings]
        if none_known:
            names = ", ".join(repr(r.name) for r in seg_results)
            warnings.append(
                f"none of the {counts['unknown']:,} key(s) its segment(s) {names} returned is "
                f"a key of the profiles table {self.profiles.table!r} (column "
                f"{self.profiles.key!r}), so nothing of them can be sent: does the segment's "
                "SELECT return the profile key (not an e-mail or another column)?"
            )
        if warning := self._in_flight_warning(aid, act.moved_from):
            warnings.append(warning)
        if counts["held"] and held.table:
            n_dups = self.con.execute(f"SELECT count(*) FROM {held.table}").fetchall()[0][0]
            key = self.profiles.key
            keys, masked = shown(held.sample, key in self.profiles.identifiers.values())
            find = (
                f"; find them with SELECT {key} FROM {self.profiles.table} GROUP BY {key} "
                "HAVING count(*) > 1"
                if masked
                else ""
            )
            warnings.append(
                f"{counts['held']:,} of its profiles held: {n_dups:,} key(s) appear more than "
                f"once in the profiles table {self.profiles.table!r} (e.g. {keys}); profiles "
                "with such a key are held (neither added, updated nor removed) until the "
                f"source is fixed{find}"
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
        config_changes = config_diff(rec.spec or None if rec else None, compared)
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
        tz, refresh = self.ws.config.timezone, self.last_refresh
        # a merged change the merge's own apply did not make is due at the next scheduled run
        edited = rec is not None and (rec.spec_digest != spec_digest or rec.id != aid)
        due = not act.paused and (
            is_due(rec, act.frequency, self.as_of, tz, refresh)
            or (edited and act.frequency != "once")
        )
        export = None
        if act.goal is Goal.EXPORT_DATA:
            try:
                export_columns(
                    self.profiles.key, dest.identity, self.profiles.identifiers, act.attributes
                )
            except ConfigError as exc:  # named where the mapping is
                where = self.ws.location("integrations", act.destination, "attributes")
                raise ConfigError(exc.message, where) from None
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
            change, due = export_changes(export, change, due, act.paused, notes, warnings)
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
            unsendable=unsendable,
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
            # a paused or finished one-time activation still removes the profiles suppressed
            # or without consent since: a scheduled `apply --due` makes those removals too
            due=due or (frozen and any(au.remove for au in audiences if au.sent)),
        )


def plan_as_of(now: datetime | None = None) -> datetime:
    return (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
