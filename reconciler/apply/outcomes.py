"""What an apply returns: per activation its status, counts and audiences
(:class:`ActivationOutcome`), and for the run whether it completed (:class:`ApplyResult`).
Built by :class:`reconciler.apply.applier.Applier`, read by the CLI's summary and progress."""

from __future__ import annotations

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
