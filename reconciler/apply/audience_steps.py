"""The steps of one activation's audiences: each one exported (``goal: export_data``: files,
not member calls) or sent to, after its audience at the destination is recorded, adopted or
created. The audience side of :class:`reconciler.apply.applier.Applier`.

An audience creation gets its own key, journaled before the call. A run that died between
the two resumes *that* creation: it asks the destination for the audience this key made and
creates it (same key) only if there is none — it never adopts an audience merely because it
has the name. A new or re-added activation creates new audiences unless its spec says
``adopt: true`` or ``list: {existing: ...}``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from destinations.base import AudienceRef, Destination
from reconciler.apply.batches import BatchRunner, RemovalGuard
from reconciler.apply.calls import new_batch_id
from reconciler.apply.export import ExportRunner
from reconciler.apply.outcomes import ActivationOutcome
from reconciler.errors import DestinationError, ReconcileError
from reconciler.plan import splits
from reconciler.plan.exports import export_path
from reconciler.plan.model import ActivationPlan, AudienceChange, Plan
from reconciler.state.writer import StateStore
from reconciler.workspace.activation_spec import ResolvedActivation
from reconciler.workspace.loader import Workspace

if TYPE_CHECKING:
    from reconciler.apply.applier import ApplyOptions


#: seconds between the lookups of an audience whose creation's answer was lost, before it is
#: created again: a timed-out create may still complete at the destination (Meta, seconds
#: later), and creating at once made a second audience with the same name and key
CREATION_LOOKUPS = (1.0, 2.0, 4.0, 8.0)


class AudienceSteps:
    """Export, or create (or find) and send to, each audience of an activation (a mixin of
    :class:`~reconciler.apply.applier.Applier`)."""

    # set by Applier.__init__ (_run_id per activation, by Applier._activation)
    ws: Workspace
    plan: Plan
    state: StateStore
    opts: ApplyOptions
    _run_id: str

    # ------------------------------------------------------------------ exports
    def _export(
        self,
        ap: ActivationPlan,
        act: ResolvedActivation,
        dest: Destination,
        runner: BatchRunner,
        fp: str,
        attribute_map: dict[str, str],
        outcome: ActivationOutcome,
    ) -> None:
        """Write the delta (and full) file of an ``export_data`` activation and record it."""
        export = ExportRunner(
            self.state,
            dest,
            self.ws.config.source.profiles,
            run_id=self._run_id,
            activation_id=ap.id,
            fingerprint=fp,
            attribute_map=attribute_map,
            call=runner.call,
            consent=runner.consent,
            suppressed=runner.suppressed,
        )
        assert ap.export is not None
        for aud in ap.audiences:
            self.state.record_audience(ap.id, aud.group, aud.name, ap.export.location, True)
            result = export.run(aud.group, ap.export, export_path(ap.id, act), self.plan.as_of)
            outcome.added += result.added
            outcome.removed += result.removed
            outcome.updated += result.updated
            outcome.attempted += result.added + result.removed + result.updated
            outcome.audiences.append(
                {"group": aud.group, "name": aud.name, "sent": True, **result.as_dict()}
            )

    # ------------------------------------------------------------------ one audience
    def _audience(
        self,
        ap: ActivationPlan,
        aud: AudienceChange,
        dest: Destination,
        runner: BatchRunner,
        outcome: ActivationOutcome,
    ) -> None:
        guard = None
        if aud.sent and ap.action != "remove" and not self.opts.allow_mass_removal:
            guard = RemovalGuard(aud.size_before, aud.add, ap.max_removal_share)
        ref = self._ensure_audience(ap, aud, dest, runner) if aud.sent else None
        try:
            runner.run_audience(aud.group, ref, sent=aud.sent, name=aud.name, guard=guard)
        finally:  # what was confirmed, also when interrupted or failed part-way
            c = runner.counts
            if aud.sent:  # a control group is recorded, never sent: not in the run's totals
                outcome.added += c.add
                outcome.removed += c.remove
                outcome.updated += c.update
                outcome.failed += c.rejected + c.failed_removals + c.unidentified
                outcome.unidentified += c.unidentified
                outcome.retry += c.retry
                outcome.attempted += c.add + c.update + c.remove + c.rejected + c.retry
                outcome.attempted += c.failed_removals
            outcome.audiences.append(
                {"group": aud.group, "name": aud.name, "sent": aud.sent, **c.as_dict()}
            )
        if aud.group not in splits.groups(self.ws.activations[ap.id].split) and aud.size_after == 0:
            self.state.drop_audience(ap.id, aud.group)

    def _ensure_audience(
        self, ap: ActivationPlan, aud: AudienceChange, dest: Destination, runner: BatchRunner
    ) -> AudienceRef:
        """The audience to send to: recorded (renamed if asked), adopted, or created — resuming
        a creation journaled by a run that died, never adopting one merely by its name.
        Destination calls are retried like member batches."""
        recorded = self.state.audiences(ap.id).get(aud.group)
        if self.opts.from_plan_file:
            self._check_planned_audience(ap, aud, dest, recorded)
        if aud.create and recorded is not None and recorded.resource_id:
            # deleted at the destination (the plan saw it gone): forget it, create anew
            self.state.drop_audience(ap.id, aud.group)
            recorded = None
        if aud.resource_id and not aud.create:
            ref = AudienceRef(aud.resource_id, recorded.name if recorded else aud.name)
            if aud.rename_from:
                runner.progress.at(ap.id, aud.name, "rename")  # its retries are labelled
                current = ref
                ref = runner.call(lambda: dest.rename_audience(current, aud.name))
            self.state.record_audience(ap.id, aud.group, ref.name, ref.id, True)
            return ref
        if recorded is not None and recorded.resource_id:
            return AudienceRef(recorded.resource_id, recorded.name)
        pending = self.state.pending_create(ap.id, aud.group)
        if pending is not None:
            key, name = pending[0], pending[1] or aud.name
        else:
            key, name = new_batch_id(), aud.name
            self.state.journal_intent(key, self._run_id, ap.id, aud.group, "create", 1, name)

        unanswered = False
        runner.progress.at(ap.id, name, "create")  # its retries are labelled

        def find_or_create() -> AudienceRef:
            # a creation that may have reached the destination (a run that died, or a lost
            # answer being retried) is looked up by its own key before creating again; after
            # an unanswered attempt the destination may still be creating it: looked up a
            # few times
            nonlocal unanswered
            found = dest.find_created_audience(name, idempotency_key=key)
            settles = getattr(dest, "creation_settles", True)
            for wait in CREATION_LOOKUPS if unanswered and settles else ():
                if found is not None:
                    break
                time.sleep(wait)
                found = dest.find_created_audience(name, idempotency_key=key)
            try:
                return found or dest.create_audience(name, idempotency_key=key)
            except DestinationError as exc:
                unanswered = exc.unanswered
                raise

        ref = runner.call(find_or_create)
        with self.state.transaction():
            self.state.record_audience(ap.id, aud.group, ref.name, ref.id, True)
            self.state.journal_outcome(key, "done", f"audience {ref.id}")
        return ref

    def _check_planned_audience(
        self, ap: ActivationPlan, aud: AudienceChange, dest: Destination, recorded
    ) -> None:
        """A saved plan is data from outside (a CI artifact): the audience id it names must be
        the recorded one, the list the activation says to take over (``list: existing``) or,
        with ``adopt: true``, the audience of its name; never any other audience at the
        destination. Creating one is refused for a ``list: existing`` activation, and while
        the recorded audience is still there (a plan creates one only when it saw it gone)."""
        spec = self.ws.activations[ap.id]
        if aud.create:
            gone = recorded is None or not recorded.resource_id
            if not gone:
                ref = AudienceRef(recorded.resource_id, recorded.name)
                gone = dest.read_audience(ref) is None
            if spec.target.existing is None and gone:
                return
            raise ReconcileError(
                f"the plan file creates audience {aud.name!r}, but the activation "
                + (
                    "sends to an existing list"
                    if spec.target.existing is not None
                    else f"has audience {recorded.resource_id!r} and it is still there"
                )
                + " (an edited plan?); make a new plan"
            )
        if not aud.resource_id:
            return
        if recorded is not None and recorded.resource_id:
            if aud.resource_id == recorded.resource_id:
                return
        else:
            wanted = spec.target.existing_for(aud.group)
            if wanted is not None:
                if aud.resource_id == wanted:
                    return
                found = dest.find_audience(str(wanted))
                if found is not None and found.id == aud.resource_id:
                    return
            elif spec.adopt:  # the audience of its name, taken over at creation
                found = dest.find_audience(aud.name)
                if found is not None and (found.id, found.name) == (aud.resource_id, aud.name):
                    return
        raise ReconcileError(
            f"the plan file sends audience {aud.name!r} to the destination's audience "
            f"{aud.resource_id!r}, which is neither the audience recorded for it nor the list "
            "the activation names (an edited plan?); make a new plan"
        )
