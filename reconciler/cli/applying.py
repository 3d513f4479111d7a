"""`reconcile apply` and `reconcile run`: lock the state, plan (or load a saved plan), show it,
ask, apply, report each activation's outcome; exit 1 when one failed."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler.cli.common import Ctx, destination_calls
from reconciler.cli.lazy import LazyModule
from reconciler.errors import ReconcileError, StateError, StateLocked

if TYPE_CHECKING:
    from reconciler.apply.outcomes import ApplyResult
    from reconciler.cli.progress import Reporter

engine: Any = LazyModule("reconciler.engine")
render: Any = LazyModule("reconciler.render")


def apply_plan(
    c: Ctx,
    ws,
    planfile,
    request,
    trigger,
    auto_approve,
    allow_mass_removal,
    lock_timeout,
    allow_duplicate_audiences=False,
) -> None:
    import os

    from reconciler.plan import state_loss
    from reconciler.state.ephemeral import check_durable_state

    check_durable_state(ws, os.environ)
    lock = engine.state_lock(ws)
    operation = trigger if trigger != "schedule" else "apply --due"
    try:
        lock.acquire(operation, 0.0)
    except StateLocked as busy:
        if lock_timeout <= 0:
            raise
        click.echo(
            f"Waiting up to {lock_timeout:g}s for the state lock, held by {busy.holder}...",
            err=True,
        )
        try:
            lock.acquire(operation, lock_timeout)
        except StateLocked as still:
            raise StateError(f"waited {lock_timeout:g}s for the state lock: {still}") from None
    reporter = reporter_for(c)
    try:
        for aid in engine.recover_calls(ws):
            click.echo(
                f"{aid}: the last run stopped before the answers to some calls were recorded; "
                "their members are recorded as possibly sent, and planned again",
                err=True,
            )
        if planfile:
            staged = engine.load_plan(ws, Path(planfile))
        else:
            request = dataclasses.replace(request, announce=reporter.step)
            try:
                staged = engine.make_plan(ws, request)
            finally:
                reporter.close()
        refused: dict[str, str] = {}
        try:
            if planfile:
                engine.check_plan_state(ws, staged.plan, Path(planfile))
                try:
                    staged, refused, dropped = engine.verify_saved_plan(
                        ws, staged, Path(planfile), announce=reporter.step
                    )
                finally:
                    reporter.close()
                for aid, n in dropped.items():
                    click.echo(
                        f"Warning: {aid}: {n:,} member change(s) of the saved plan no longer "
                        "hold (the data changed since the plan) and are not applied; the "
                        "next plan shows what remains",
                        err=True,
                    )
                staged.plan = engine.recheck_state_loss(ws, staged.plan, set(refused))
            check_plan(ws, staged.plan)
            calls = destination_calls(ws, staged.plan)
            click.echo(render.render(staged.plan, "text", color=c.color, calls=calls))
            refusal = state_loss.refusal(staged.plan)
            if refusal and not allow_duplicate_audiences:
                raise ReconcileError(refusal)
            wanted = (
                staged.plan.has_changes
                or (trigger != "apply" and any(a.due for a in staged.plan.activations))
                or engine.any_interrupted(ws, staged.plan)
            )
            if not wanted:
                return
            if not auto_approve and not _confirm():
                click.echo("Apply cancelled; nothing was changed.")
                sys.exit(1)
            from reconciler.apply.applier import ApplyOptions
            from reconciler.apply.interrupts import InterruptGuard
            from reconciler.apply.progress import Progress

            options = ApplyOptions(
                allow_mass_removal=allow_mass_removal,
                trigger=trigger,
                from_plan_file=bool(planfile),
                refused=refused,
                progress=Progress(emit=reporter.event),
            )
            with InterruptGuard(lambda m: click.echo(m, err=True)) as guard:
                try:
                    result = engine.execute(
                        ws, staged, options, guard, lock_timeout, echo=reporter.message
                    )
                finally:
                    reporter.close()
        finally:
            staged.discard()
    finally:
        lock.release()
    for o in result.outcomes:
        reporter.outcome(o)
    _report(result, reporter)
    if not result.ok:
        sys.exit(1)


def reporter_for(c: Ctx) -> Reporter:
    from reconciler.cli.progress import make_reporter

    return make_reporter(log_format=c.log_format, verbose=c.verbose, color=c.color)


def check_plan(ws, plan) -> None:
    """What only the plan shows: a renamed audience at a destination that cannot rename."""
    from reconciler.plan.model import Change
    from reconciler.workspace.destination_checks import check_renames

    check_renames(
        ws,
        [
            a.id
            for a in plan.activations
            if a.change is not Change.DELETE and any(au.rename_from for au in a.audiences)
        ],
    )


def _confirm() -> bool:
    if not sys.stdin.isatty():
        raise ReconcileError(
            "apply needs confirmation but standard input is not a terminal; "
            "pass --auto-approve (e.g. in CI) or run it interactively"
        )
    return (
        click.prompt("Apply these changes? Only 'yes' is accepted", default="", show_default=False)
        == "yes"
    )


def _report(result: ApplyResult, reporter: Reporter) -> None:
    """The run's outcome: a line per activation on standard output; errors, warnings and an
    interruption on standard error through ``reporter`` (with ``--log-format json`` they are
    JSON events there too: every line of standard error is one)."""
    for o in result.outcomes:
        line = f"{o.id}: {o.status} (+{o.added:,} -{o.removed:,} ~{o.updated:,})"
        if o.failed:
            line += f", {o.failed:,} rejected"
        if o.retry:
            line += f", {o.retry:,} to retry next run"
        click.echo(line)
        # an error may quote what a destination answered: its control characters escaped
        if o.error:
            reporter.message(f"  {o.error}")
        elif o.warning:
            reporter.message(f"  warning: {o.warning}")
    if result.interrupted:
        reporter.message("Interrupted: what was sent is recorded; run apply again to finish.")
    else:
        done = sum(1 for o in result.outcomes if o.status == "Complete")
        click.echo(f"Apply finished: {done} of {len(result.outcomes)} activation(s) complete.")
