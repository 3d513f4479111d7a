"""Plan -> destination calls -> state, in confirmed steps.

For each activation with changes: create (or find) its audiences, then per audience the
removals, updates and additions in batches. Before each destination call an intent is
journaled with a fresh batch id (the idempotency key); the members of a batch are recorded
only after the destination confirmed it, in the same transaction that closes the intent. A
crash or kill at any point therefore loses nothing: the next plan sees exactly what was not
recorded and the next apply sends it (destinations treat re-sent members as no-ops).

Each audience's steps (its audience recorded, adopted or created, resuming a creation a run
that died had journaled; then its members sent, or its files exported) are
:mod:`reconciler.apply.audience_steps`; what a run returns is :mod:`reconciler.apply.outcomes`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

from destinations.base import AudienceRef, Destination
from reconciler.apply import refusals
from reconciler.apply.audience_steps import AudienceSteps
from reconciler.apply.batches import CHANGES, BatchRunner
from reconciler.apply.calls import Interrupted, finish_job
from reconciler.apply.interrupts import InterruptGuard
from reconciler.apply.notifications import FinishedRun, notify_finished
from reconciler.apply.outcomes import (
    ActivationOutcome,
    ApplyResult,
    internal_error,
    interrupted,
)
from reconciler.apply.profile_writes import record_attribute_hashes, write_back
from reconciler.apply.progress import Progress
from reconciler.enginedb import Session
from reconciler.errors import (
    AudienceGone,
    CredentialsRefused,
    DestinationError,
    MassRemovalRefused,
    ReconcileError,
    stops_the_run,
)
from reconciler.integrations import Connections
from reconciler.plan import membership
from reconciler.plan.model import ActivationPlan, Change, Plan, Status
from reconciler.plan.recorded import digest, frozen, recorded_spec
from reconciler.plan.segments import SegmentRunner
from reconciler.plan.terms import source_consent
from reconciler.sources import sql_policy
from reconciler.state.attributes import forget as forget_attribute_hashes
from reconciler.state.schema import CATALOG
from reconciler.state.writer import StateStore
from reconciler.workspace.activation_spec import ResolvedActivation
from reconciler.workspace.loader import Workspace
from reconciler.workspace.spec import Integration
from reconciler.workspace.templating import local_date


@dataclass
class ApplyOptions:
    allow_mass_removal: bool = False
    trigger: str = "apply"  # apply | run | schedule
    from_plan_file: bool = False
    #: activations of a saved plan that no longer match the plan made now (saved_check)
    refused: dict[str, str] = field(default_factory=dict)
    progress: Progress | None = None


class Applier(AudienceSteps):
    def __init__(
        self,
        ws: Workspace,
        plan: Plan,
        session: Session,
        conns: Connections,
        options: ApplyOptions,
        guard: InterruptGuard,
        echo: Callable[[str], None] | None = None,
    ):
        self.ws, self.plan, self.session, self.conns = ws, plan, session, conns
        self.opts, self.guard, self.echo = options, guard, echo
        self.state: StateStore = session.state_store()
        self.reader = session.cursor()  # streams staged changes while `state` writes

    def run(self) -> ApplyResult:
        result = ApplyResult()
        self.finished: list[FinishedRun] = []
        self.state.close_interrupted_batches()
        self._resume_jobs()
        try:
            self._run_all(result)
            # Ctrl-C (or SIGTERM) during the last activation, which then finished anyway (an
            # export writes its files whole): still a run the user stopped, exit non-zero
            result.interrupted |= self.guard.stop_requested
        finally:
            if self.finished:
                notify_finished(self.ws, self.finished, self.opts.trigger, self.state, self.echo)
        return result

    def _resume_jobs(self) -> None:
        """Jobs a run that died had submitted: polled to their end and recorded, never sent
        again (their members are not in this plan's changes: they were not recorded yet, so
        the plan may list them too; the destination de-duplicates)."""
        for job in self.state.pending_jobs():
            if job["destination"] not in self.ws.integrations:
                continue
            dest = self.conns.get(job["destination"])
            policy = dest.retry_policy.with_hooks(interrupt=lambda: self.guard.stop_requested)
            finish_job(self.state, dest, job, self.guard, policy.call)
            # the plan staged these members again: they are recorded now
            op = "remove" if job["op"] == "remove" else "add"
            self.state.drop_staged(CHANGES, job["activation_id"], job["grp"], op, job["keys"])

    def _run_all(self, result: ApplyResult) -> None:
        for ap in self.plan.activations:
            if self.guard.stop_requested:
                result.interrupted = True
                break
            if (
                not ap.has_changes
                and not (ap.due and self.opts.trigger != "apply")
                and not interrupted(self.state, ap.id)
            ):
                continue
            try:
                outcome = self._activation(ap)
            except Interrupted:
                result.interrupted = True
                break
            result.outcomes.append(outcome)

    # ------------------------------------------------------------------ one activation
    def _activation(self, ap: ActivationPlan) -> ActivationOutcome:
        refusal = refusals.refusal(ap, self.opts.allow_mass_removal, self.opts.refused)
        self._started = _now()
        if refusal:
            outcome = ActivationOutcome(ap.id, Status.REFUSED, error=refusal)
            run_id = None
            if ap.mass_removal and not self.opts.allow_mass_removal:
                run_id = self._run_id = _run_id()
                if not refusals.record_refusal(self.state, ap, refusal, run_id, self.opts.trigger):
                    run_id = None
            if ap.mass_removal:  # `notify: {on: [mass_removal]}` hears about it
                self.finished.append(
                    FinishedRun(run_id, ap, Status.REFUSED, self._started, _now(), (), refusal)
                )
            return outcome
        if ap.change is Change.DELETE:
            return self._delete(ap)
        act = self.ws.activations[ap.id].resolved(self.ws.config.defaults)
        if ap.moved_from:
            self.state.move_activation(ap.moved_from, ap.id)
            forget_attribute_hashes(self.session.con, CATALOG, ap.moved_from)  # recorded anew
        self.state.ensure_activation(
            ap.id,
            destination=act.destination,
            frequency=act.frequency,
            date_created=local_date(self.plan.as_of, self.ws.config.timezone),
        )
        run_id = self._run_id = _run_id()
        self.state.start_run(run_id, ap.id, self.opts.trigger)
        self.state.set_status(ap.id, Status.RUNNING)
        # any apply that may record something moves the state: a plan saved before is stale
        self.state.bump_serial(ap.id)
        outcome = ActivationOutcome(ap.id, Status.COMPLETE)
        runner = None
        try:
            dest = self.conns.get(act.destination)
            integ = self.ws.integrations[act.destination]
            profiles = self.ws.config.source.profiles
            fp = membership.fingerprint_sql(
                profiles,
                dest.identity.accepted,
                [integ.attributes[f] for f in act.attributes],
                profiles.default_phone_country,
            )
            attribute_map = {f: integ.attributes[f] for f in act.attributes}
            runner = self._runner(
                dest,
                run_id,
                ap.id,
                fp,
                attribute_map,
                consent=self._consent(integ, act.destination),
                suppressed=self._suppressed,
            )
            if ap.export is not None:  # goal: export_data: files, not member calls
                self._export(ap, act, dest, runner, fp, attribute_map, outcome)
            for aud in ap.audiences if ap.export is None else ():
                self._audience(ap, aud, dest, runner, outcome)
            record_attribute_hashes(self.session, self.ws, ap.id, act, fp)
        except Interrupted:
            self._finish(run_id, ap, outcome, Status.PENDING, "interrupted; the next apply resumes")
            raise
        except CredentialsRefused as exc:
            outcome.status, outcome.error = Status.DISABLED, str(exc)
        except MassRemovalRefused as exc:  # found once the members were read: nothing sent
            outcome.status, outcome.error = Status.REFUSED, str(exc)
        except AudienceGone as exc:
            outcome.status, outcome.error = Status.FAILED, str(exc)
            if act.target.existing is not None:  # not its own list: never created again
                outcome.error = (
                    "the list that `list: existing` names is gone from the destination "
                    "(deleted there): nothing can be sent to it. Send to another list by "
                    "giving the activation a new id (rename its file), or delete the activation"
                )
        except (DestinationError, ReconcileError) as exc:
            outcome.status, outcome.error = Status.FAILED, str(exc)
        except Exception as exc:  # a bug: this activation fails, the others still run
            if stops_the_run(exc):
                raise
            outcome.status, outcome.error = Status.FAILED, internal_error(exc)
        if outcome.status is Status.COMPLETE and outcome.failed:
            text = refusals.refused_members(outcome, act.max_rejected_share, runner)
            if outcome.failed > act.max_rejected_share * max(outcome.attempted, 1):
                outcome.status, outcome.error = Status.FAILED, text
            else:
                outcome.warning = text
        skipped = sum(a.get("drift", 0) for a in outcome.audiences)
        if outcome.status is Status.COMPLETE and skipped:
            text = (
                f"{skipped:,} planned member(s) not sent: since the plan they left the source, "
                "now share their key with another profile row, withdrew consent or were "
                "suppressed; the next plan shows them again if they are still due"
            )
            outcome.warning = f"{outcome.warning}; {text}" if outcome.warning else text
        if outcome.status is Status.COMPLETE:
            try:  # before the spec is recorded: a failed write-back is planned again
                write_back(self.session, self.ws, ap, act)
            except ReconcileError as exc:
                outcome.status, outcome.error = Status.FAILED, str(exc)
        if outcome.status is Status.COMPLETE:
            spec = self._spec_to_record(ap, act)
            self.state.record_spec(
                ap.id,
                spec,
                digest(spec),
                frequency=act.frequency,
                paused=act.paused,
                destination=act.destination,
            )
        self._finish(run_id, ap, outcome, outcome.status, outcome.error)
        return outcome

    def _spec_to_record(self, ap: ActivationPlan, act: ResolvedActivation) -> dict:
        """The spec a complete run records. A frozen run (paused, or a one-time activation
        that ran) sent no update: the attribute mapping and identifier rules its members
        were sent with stay recorded, so the run that sends again updates them."""
        spec = recorded_spec(self.ws, act, self.conns.get(act.destination).identity)
        rec = self.state.activation(ap.id)
        if rec is None or not rec.spec or not frozen(act, rec, self.plan.include_inactive):
            return spec
        for owed in ("attribute_mapping", "identity_rules", "sent_as"):
            if owed in rec.spec:
                spec[owed] = rec.spec[owed]
            else:
                spec.pop(owed, None)
        return spec

    def _runner(
        self,
        dest: Destination,
        run_id: str,
        activation_id: str,
        fingerprint: str,
        attribute_map: dict[str, str],
        *,
        consent: str = "TRUE",
        suppressed: str | None = None,
    ) -> BatchRunner:
        """The sender of one activation; ``consent`` and ``suppressed`` are checked again
        as its members are read to be sent (:func:`reconciler.apply.encode.build`)."""
        return BatchRunner(
            self.state,
            self.reader,
            self.ws.config.source.profiles,
            dest,
            self.guard,
            run_id,
            activation_id,
            fingerprint,
            attribute_map,
            self.opts.progress,
            sending=self.session.sending,
            consent=consent,
            suppressed=suppressed,
        )

    def _consent(self, integ: Integration, name: str) -> str:
        """The integration's consent condition as SQL over ``p``, checked again as members
        are read to be sent (the plan checked and bound it when it was made)."""
        where = str(self.ws.location("integrations", name, "consent"))
        policy = sql_policy(self.ws.config.source)
        return source_consent(self.session.source, integ, name, where, policy)

    @cached_property
    def _suppressed(self) -> str | None:
        """The table of the suppression segments' keys now, for a saved plan applied later
        (made once per apply): a profile suppressed since the plan is not sent. A plan made
        by this apply has just excluded them: None."""
        if not self.opts.from_plan_file or not self.ws.config.suppression:
            return None
        return SegmentRunner(
            self.ws,
            self.state.con,
            self.plan.as_of,
            self.session.source.dialect,
            self.session.source,
        ).suppressed_table()

    def _finish(
        self,
        run_id: str,
        ap: ActivationPlan,
        o: ActivationOutcome,
        status: Status,
        error: str | None,
    ) -> None:
        o.status, o.error = status, error
        self.state.finish_run(run_id, status, audiences=o.audiences, error=error or o.warning)
        # again at the end: a plan saved while this ran (it read what was recorded so far from
        # a PostgreSQL state) is stale now
        self.state.bump_serial(ap.id)
        done = status is Status.COMPLETE
        self.state.set_status(ap.id, status, error, success=done, ran=done)
        self.finished.append(
            FinishedRun(run_id, ap, status, self._started, _now(), tuple(o.audiences), error)
        )

    # ------------------------------------------------------------------ deleted files
    def _delete(self, ap: ActivationPlan) -> ActivationOutcome:
        self._started = _now()
        run_id = self._run_id = _run_id()
        self.state.start_run(run_id, ap.id, self.opts.trigger)
        # like any run: a kill part-way shows the activation Pending, not its last status
        self.state.set_status(ap.id, Status.RUNNING)
        outcome = ActivationOutcome(ap.id, Status.COMPLETE)
        runner = None
        if any(a.remove for a in ap.audiences):
            try:
                dest = self.conns.get(ap.destination)
                runner = self._runner(dest, run_id, ap.id, "0::UBIGINT", {})
                for aud in ap.audiences:
                    ref = AudienceRef(aud.resource_id or "", aud.name) if aud.sent else None
                    c = runner.run_audience(aud.group, ref, sent=aud.sent, name=aud.name)
                    outcome.removed += c.remove
                    outcome.failed += c.failed_removals
                    outcome.attempted += c.remove + c.failed_removals
            except Interrupted:
                self._finish(
                    run_id, ap, outcome, Status.PENDING, "interrupted; the next apply resumes"
                )
                raise
            except CredentialsRefused as exc:
                outcome.status, outcome.error = Status.DISABLED, str(exc)
            except (DestinationError, ReconcileError) as exc:
                outcome.status, outcome.error = Status.FAILED, str(exc)
            except Exception as exc:  # a bug: this deletion fails, the others still run
                if stops_the_run(exc):
                    raise
                outcome.status, outcome.error = Status.FAILED, internal_error(exc)
            if outcome.failed and outcome.status is Status.COMPLETE:
                outcome.status = Status.FAILED
                outcome.error = refusals.refused_members(outcome, 0.0, runner)
        if outcome.status is Status.COMPLETE:
            try:
                write_back(self.session, self.ws, ap, None)
            except ReconcileError as exc:
                outcome.status, outcome.error = Status.FAILED, str(exc)
        self._finish(run_id, ap, outcome, outcome.status, outcome.error)
        if outcome.status is Status.COMPLETE:
            self.state.forget_activation(ap.id)
            forget_attribute_hashes(self.session.con, CATALOG, ap.id)
        return outcome


def _now() -> datetime:
    return datetime.now(UTC)


def _run_id() -> str:
    return datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
