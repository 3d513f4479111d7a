"""What an apply refuses and says so: an activation the mass-removal guard or a saved plan's
check stops before anything is sent (recorded as ``Refused``), and the members a destination
refused (the message a Failed run carries, with its first reasons)."""

from __future__ import annotations

from reconciler.apply.batches import BatchRunner
from reconciler.apply.outcomes import ActivationOutcome
from reconciler.plan.model import ActivationPlan, Status
from reconciler.state.writer import StateStore


def refusal(ap: ActivationPlan, allow_mass_removal: bool, refused: dict[str, str]) -> str | None:
    """Why ``ap`` is not applied, or None: the mass-removal guard (unless allowed), or a
    saved plan's activation that no longer matches the workspace, the state or the data
    (stale ones included; found before the apply by ``saved_check.verify``: ``refused``)."""
    if ap.mass_removal and not allow_mass_removal:
        worst = max((a for a in ap.audiences if a.mass_removal), key=lambda a: a.remove + a.lose)
        return (
            f"refused by the mass-removal guard: audience {worst.name!r} would lose "
            f"{worst.remove + worst.lose:,} of {worst.size_before:,} members (max_removal_share "
            f"{ap.max_removal_share:.0%}); re-run with --allow-mass-removal if intended"
        )
    return refused.get(ap.id)


def record_refusal(
    state: StateStore, ap: ActivationPlan, refusal: str, run_id: str, trigger: str
) -> bool:
    """Record a run the mass-removal guard stopped before anything was sent as ``Refused``
    (``status`` and ``log`` show it; a scheduled job stays visibly blocked); False for an
    activation the state does not know (nothing to record it on). The serial is left alone:
    the same saved plan can be applied again with ``--allow-mass-removal``."""
    if state.activation(ap.id) is None:
        return False
    state.start_run(run_id, ap.id, trigger)
    state.finish_run(run_id, Status.REFUSED, audiences=[], error=refusal)
    state.set_status(ap.id, Status.REFUSED, refusal)
    return True


def refused_members(o: ActivationOutcome, share: float, runner: BatchRunner | None) -> str:
    """What a run whose members the destination refused says, with its first reasons."""
    sample = "; ".join(runner.errors[:3]) if runner else ""
    text = (
        f"{o.failed:,} of {o.attempted:,} member(s) refused by the destination "
        f"(max_rejected_share {share:.1%}; `reconcile log ID --rejected` lists them)"
    )
    if o.unidentified:
        text += (
            f"; {o.unidentified:,} of them the destination counted as invalid without naming "
            "them: they stay recorded as sent, and are not listed"
        )
    return text + (f", e.g. {sample}" if sample else "")
