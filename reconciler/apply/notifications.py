"""After an apply: tell the people each activation's ``notify:`` names about its run.

A failure to notify is retried briefly by :mod:`reconciler.notify`, then written into the
run's log (and shown); it never fails the run nor touches what was recorded."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from reconciler.plan.model import ActivationPlan, Status
from reconciler.state.writer import StateStore
from reconciler.workspace.loader import Workspace


@dataclass(frozen=True)
class FinishedRun:
    """One activation's run as apply ended it (``run_id`` None: refused before it started)."""

    run_id: str | None
    plan: ActivationPlan
    status: Status
    started: datetime
    finished: datetime
    audiences: tuple[dict, ...]
    error: str | None


def notify_finished(
    ws: Workspace,
    runs: list[FinishedRun],
    trigger: str,
    state: StateStore,
    echo: Callable[[str], None] | None = None,
) -> None:
    """Send the notifications of ``runs``; log failures in each run's log."""

    def asks(activation_id: str) -> bool:
        act = ws.activations.get(activation_id)
        return act is not None and bool(act.notify.email or act.notify.webhook)

    if not any(asks(r.plan.id) for r in runs):
        return
    from reconciler.notify import AudienceCounts, RunReport, notify_runs

    reports, by_activation = [], {}
    for r in runs:
        by_activation[r.plan.id] = r
        reports.append(
            RunReport(
                activation=r.plan.id,
                file=ws.file_of("activations", r.plan.id),
                trigger=trigger,
                status=str(r.status),
                started=r.started,
                finished=r.finished,
                audiences=tuple(
                    AudienceCounts(a["name"], a["group"], a["add"], a["remove"], a["update"])
                    for a in r.audiences
                    if a.get("sent", True)
                ),
                error=r.error,
                mass_removal=r.plan.mass_removal,
            )
        )
    for result in notify_runs(ws, reports, os.environ):
        if result.delivered:
            continue
        run = by_activation[result.activation]
        if run.run_id is not None:
            state.add_run_note(run.run_id, f"notification not delivered: {result}")
        if echo is not None:
            echo(f"Warning: {result}")
