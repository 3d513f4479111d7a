"""What an apply returns: per activation its status, counts and audiences
(:class:`ActivationOutcome`), and for the run whether it completed (:class:`ApplyResult`).
Built by :class:`reconciler.apply.applier.Applier`, read by the CLI's summary and progress;
also whether an activation's last run was interrupted, and what a bug that failed one says."""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field

from reconciler.plan.model import Status


@dataclass
class ActivationOutcome:
    id: str
    status: Status
    added: int = 0
    removed: int = 0
    updated: int = 0
    failed: int = 0  # rejected members and refused removals
    unidentified: int = 0  # of ``failed``: refused by the destination's count, unnamed
    retry: int = 0  # members the destination asked to send again later
    attempted: int = 0  # members sent (accepted + rejected + retry)
    error: str | None = None
    warning: str | None = None  # e.g. rejections below max_rejected_share
    audiences: list[dict] = field(default_factory=list)


@dataclass
class ApplyResult:
    outcomes: list[ActivationOutcome] = field(default_factory=list)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.status is Status.COMPLETE for o in self.outcomes)


#: statuses of an activation whose last run stopped before it finished
INTERRUPTED = (Status.PENDING.value, Status.RUNNING.value)


def interrupted(state, activation_id: str) -> bool:
    """Whether the activation's last run was interrupted: the next apply runs it even when
    nothing is left to send, so that its status says it finished (it stayed Pending)."""
    rec = state.activation(activation_id)
    return rec is not None and rec.status in INTERRUPTED


def internal_error(exc: Exception) -> str:
    """The message of an unexpected exception (a bug) that failed one activation; with
    ``RECONCILE_DEBUG=1`` its traceback is printed too."""
    if os.environ.get("RECONCILE_DEBUG") == "1":
        traceback.print_exception(exc, file=sys.stderr)
    return (
        f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:500]}; please "
        "report it (RECONCILE_DEBUG=1 shows the traceback); calls it made are recovered by "
        "the next apply"
    )
