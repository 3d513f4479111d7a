"""Where an activation's membership diff runs: inside a PostgreSQL source when it can
(:mod:`reconciler.plan.in_source`, next to the data), otherwise in the engine
(:func:`reconciler.plan.membership.stage_desired`); either way its member changes end up in
the engine session's staging table (:func:`reconciler.plan.membership.stage_changes`). The
membership side of :class:`reconciler.plan.planner.Planner`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import duckdb

from destinations.base import Identity
from destinations.identity.sql import records_sql
from reconciler.enginedb import Session
from reconciler.errors import ReconcileError, SegmentError
from reconciler.plan import attributes, membership
from reconciler.plan.held import Held
from reconciler.plan.segments import SegmentResult, SegmentRunner
from reconciler.plan.terms import _ident, source_consent
from reconciler.sources.engine_errors import safe_engine_error
from reconciler.sources.guard import SqlPolicy
from reconciler.sources.limits import query_timeout, time_limit
from reconciler.state.store import StateReader
from reconciler.workspace.activation_spec import ResolvedActivation
from reconciler.workspace.loader import Workspace
from reconciler.workspace.spec import Integration, ProfilesTable

if TYPE_CHECKING:
    from reconciler.plan.planner import PlanRequest
    from reconciler.sources.pg_pushdown import Pushdown


class MembershipStaging:
    """The consent condition and the staged membership diff of one activation (a mixin of
    :class:`~reconciler.plan.planner.Planner`)."""

    # set by Planner.__init__ (suppression by Planner.build)
    ws: Workspace
    session: Session
    con: duckdb.DuckDBPyConnection
    state: StateReader
    profiles: ProfilesTable
    policy: SqlPolicy
    segments: SegmentRunner
    pushdown: Pushdown | None
    suppression: list[SegmentResult]
    req: PlanRequest

    def _consent(self, integ, name: str) -> str:
        """The integration's consent condition as SQL over ``p``, bound against the profiles
        table (:func:`~reconciler.plan.terms.source_consent`)."""
        where = str(self.ws.location("integrations", name, "consent"))
        return source_consent(
            self.session.source, integ, name, where, self.policy, self.con, self.profiles
        )

    def _stage_membership(
        self,
        aid: str,
        act: ResolvedActivation,
        integ: Integration,
        *,
        baseline: str,
        seed: str,
        seg_results: Sequence[SegmentResult],
        consent: str,
        identifier_types: tuple[str, ...],
        attribute_columns: list[str],
        mapping: dict[str, str],
        syncs: bool,
        gone: set[str],
        frozen: bool,
        suppressed: str | None,
        remapped: bool = False,
        recheck: Identity | None = None,
    ) -> tuple[dict[str, int], Held]:
        """Diff the activation's desired members against those recorded under ``baseline``
        and stage the changes, under the source's query time limit; return the exclusion
        counts and the held keys. ``gone`` are the groups whose audience was deleted at the
        destination; a ``frozen`` activation (paused, or a one-time one that ran) stages
        only its exclusions; with ``syncs`` (``goal: sync_attributes``) each member also gets
        a hash per field of ``mapping`` (destination field -> profile column). A failure of
        the consent condition on the data is a :class:`SegmentError` naming it. ``remapped``
        (the attribute mapping changed since the members were recorded): every recorded
        member still wanted is staged as an update (its fingerprint is ignored). ``recheck`` (the members were recorded
        under older identifier rules): those whose records, by its rules now, differ from the
        recorded ones are staged as updates."""
        consent_where = str(self.ws.location("integrations", act.destination, "consent"))
        try:
            with time_limit(
                self.con,
                query_timeout(self.ws.config.source),
                consent_where,
                "the audience query (consent condition)",
            ):
                pushdown = self.pushdown
                if (
                    pushdown is not None
                    and not remapped
                    and recheck is None
                    and _in_source().can_stage(
                        pushdown, act, self.profiles, identifier_types, attribute_columns
                    )
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
                        identifier_types=identifier_types,
                        attribute_columns=attribute_columns,
                        gone=sorted(gone),
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
                    if remapped:
                        recorded = f"(SELECT key, grp, NULL::UBIGINT AS fp, record FROM {recorded})"
                    elif recheck is not None:
                        recorded = self._rechecked(recorded, recheck)
                    # nothing recorded yet (a first apply): every member the diff finds is an
                    # addition, whose fingerprint the send table computes as it is sent, so
                    # the diff needs none (~0.3 us of CPU a member)
                    fingerprint = (
                        membership.fingerprint_sql(
                            self.profiles,
                            identifier_types,
                            attribute_columns,
                            self.profiles.default_phone_country,
                        )
                        if self.state.any_member(baseline)
                        else membership.NO_FINGERPRINT
                    )
                    counts, held = membership.stage_desired(
                        self.con,
                        profiles=self.profiles,
                        segment_tables=[self.segments.local(r) for r in seg_results],
                        suppressed=suppressed,
                        consent=consent,
                        group_expr=membership.group_expression(act, seed),
                        fingerprint=fingerprint,
                        matchable=membership.matchable_sql(self.profiles, identifier_types),
                        attribute_fps=attributes.fingerprints_sql(self.profiles, mapping)
                        if syncs
                        else None,
                    )
                held = membership.stage_changes(
                    self.con,
                    activation_id=aid,
                    recorded=recorded,
                    gone=sorted(gone),
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
            # ... or the state it reads is damaged: then that is what the user must fix
            self.state.read_every_block(schema=True)
            detail = safe_engine_error(exc, integ.consent or "")[0]
            raise SegmentError(
                f"{consent_where}: computing the audience of {aid!r} failed: {detail}"
            ) from exc
        return counts, held

    def _rechecked(self, recorded: str, identity: Identity) -> str:
        """``recorded`` (key, grp, fp, record) with no fingerprint for the members whose
        recorded strings differ from those their identifiers give by ``identity``'s rules now:
        the diff stages them as updates (one profile row per key: a held key's first)."""
        profiles = self.profiles
        columns = {t: f"p.{_ident(c)}" for t, c in profiles.identifiers.items()}
        now = records_sql(
            identity.accepted, identity.rules, columns, profiles.default_phone_country
        )
        key = f"CAST(p.{_ident(profiles.key)} AS VARCHAR)"
        return f"""(SELECT m.key, m.grp,
                CASE WHEN list_sort(m.record) IS NOT DISTINCT FROM list_sort({now})
                     THEN m.fp END AS fp,
                m.record
            FROM {recorded} m LEFT JOIN {_ident(profiles.table)} p ON {key} = m.key
            QUALIFY row_number() OVER (PARTITION BY m.key, m.grp) = 1)"""


def _in_source():
    """The in-PostgreSQL diff (imports psycopg: loaded only for a PostgreSQL source)."""
    from reconciler.plan import in_source

    return in_source
