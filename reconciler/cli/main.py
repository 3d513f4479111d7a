"""`reconcile` commands: parse, call the engine, render, exit code. Nothing else lives here.

Exit codes: 0 success; 1 error; with ``plan --detailed-exitcode``, 2 = success with changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from reconciler.cli.applying import apply_plan, check_plan, reporter_for
from reconciler.cli.common import (
    Ctx,
    ReconcileGroup,
    destination_calls,
    handle_errors,
    use_color,
)
from reconciler.cli.lazy import LazyModule
from reconciler.errors import ReconcileError, printable

if TYPE_CHECKING:
    pass

# loaded by the commands that use them, not by `reconcile --help`
engine: Any = LazyModule("reconciler.engine")
render: Any = LazyModule("reconciler.render")
FORMATS = ("text", "markdown", "json")


@click.group(cls=ReconcileGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "directory",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Workspace directory (default: the current one or its nearest parent "
    "holding reconcile.yaml).",
)
@click.option("--no-color", is_flag=True, help="Plain output without ANSI colours.")
@click.option(
    "-v", "--verbose", is_flag=True, help="Also show retries, throttle waits and planning steps."
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: progress as one JSON event per line on standard error (for pipelines).",
)
@click.version_option(package_name="activation-reconciler")
@click.pass_context
def main(
    ctx: click.Context, directory: str | None, no_color: bool, verbose: bool, log_format: str
) -> None:
    """Activations as code: plan and apply customer-audience syncs."""
    ctx.obj = Ctx(directory, use_color(no_color), verbose, log_format)


pass_ctx = click.make_pass_decorator(Ctx)
target_option = click.option(
    "-t",
    "--target",
    "targets",
    multiple=True,
    metavar="ID",
    help="Only this activation (repeatable).",
)
format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="text", show_default=True
)


# ---------------------------------------------------------------------- validate / schema
@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="json: one document; github: workflow annotations (::error file=...,line=...::).",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Skip the check that credential and secret variables are set (a pull request's job "
    "has no secrets; `plan --refresh=false` needs none either).",
)
@pass_ctx
@handle_errors
def validate(c: Ctx, fmt: str, offline: bool) -> None:
    """Check every file: schema, cross-references, what each destination can do and that
    every credential's environment variable is set (not with --offline); then segment SQL and
    consent conditions against the source's tables. Problems name file:line: field, sorted."""
    from reconciler.errors import ConfigError, ValidationFailed
    from reconciler.render import problems
    from reconciler.workspace.loader import find_root

    try:
        root = find_root(c.directory)
    except ConfigError as exc:  # no workspace: one problem, in the format asked for
        if fmt == "text":
            raise
        out = problems.render_json([exc], [], {}) if fmt == "json" else None
        click.echo(out or problems.render_github([exc], []))
        sys.exit(1)
    found = engine.validate(root, check_credentials=not offline)
    ws, errors, warnings = found.ws, found.errors, found.warnings
    counts = {
        "activations": len(ws.activations),
        "segments": len(ws.segments),
        "integrations": len(ws.integrations),
    }
    if fmt == "json":
        click.echo(problems.render_json(errors, warnings, counts))
    elif fmt == "github" and (errors or warnings):
        click.echo(problems.render_github(errors, warnings, problems.repository_folder(root)))
    if errors:
        if fmt == "text":
            raise ValidationFailed(errors)
        sys.exit(1)
    for line in problems.warning_lines(warnings) if fmt == "text" else ():
        click.echo(line, err=True)
    if fmt != "json":
        click.echo(
            f"Valid: {len(ws.activations)} activation(s), {len(ws.segments)} segment(s), "
            f"{len(ws.integrations)} integration(s)."
        )


@main.command()
@click.argument(
    "kind", required=False, type=click.Choice(["reconcile", "activation", "segment", "integration"])
)
def schema(kind: str | None) -> None:
    """Print the JSON Schema of the workspace files (for editors)."""
    from reconciler.workspace.schema import json_schema

    click.echo(json.dumps(json_schema(kind), indent=2))


# ---------------------------------------------------------------------- plan
@main.command()
@target_option
@click.option("--out", type=click.Path(dir_okay=False), help="Save the plan for `apply PLANFILE`.")
@format_option
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when there are changes.")
@click.option(
    "--refresh",
    type=click.BOOL,
    default=True,
    show_default=True,
    help="--refresh=false contacts no destination.",
)
@click.option("--due", is_flag=True, help="Only activations the schedule says are due.")
@click.option(
    "--comment-limit",
    type=click.IntRange(min=1000),
    help="Markdown only: keep the output within this many characters (a PR comment).",
)
@click.option("--commit", metavar="SHA", help="Markdown only: name the commit that was planned.")
@pass_ctx
@handle_errors
def plan(c: Ctx, targets, out, fmt, detailed_exitcode, refresh, due, comment_limit, commit):
    """Show what apply would change at each destination. Changes nothing."""
    if (comment_limit or commit) and fmt != "markdown":
        raise ReconcileError("--comment-limit and --commit need --format markdown")
    if commit and not render.markdown.COMMIT.fullmatch(commit):
        raise ReconcileError(f"--commit {commit!r} is not a commit id (7-64 hex digits)")
    if out is not None and not out.strip():  # an unset variable: `--out "$PLANFILE"`
        raise click.UsageError("--out needs a file name (it was given an empty one)")
    if out:  # before planning: --out replaces nothing but an older plan file
        from reconciler.plan.planfile import check_out

        check_out(Path(out))
    ws = c.workspace(check_credentials=refresh)
    reporter = reporter_for(c)
    from reconciler.plan.planner import PlanRequest

    request = PlanRequest(tuple(targets), due_only=due, refresh=refresh, announce=reporter.step)
    try:
        staged = engine.make_plan(ws, request)
    finally:
        reporter.close()
    try:
        check_plan(ws, staged.plan)
        if out:
            engine.save_plan(ws, staged, Path(out))
        calls = destination_calls(ws, staged.plan)
        if fmt == "markdown":
            text = render.render_markdown(
                staged.plan, max_chars=comment_limit, commit=commit, calls=calls
            )
        else:
            text = render.render(staged.plan, fmt, color=c.color, calls=calls)
        click.echo(text)
        if out:
            click.echo(
                f"Saved the plan to {out}; apply it with `reconcile apply {out}`.",
                err=fmt != "text",
            )
        for warning in engine.identifier_key_warnings(ws):  # on stderr: the plan stays clean
            click.echo(f"Warning: {warning}", err=True)
    finally:
        staged.discard()
    if detailed_exitcode and staged.plan.has_changes:
        sys.exit(2)


@main.command()
@click.argument("planfile", type=click.Path(dir_okay=False))
@format_option
@pass_ctx
@handle_errors
def show(c: Ctx, planfile, fmt) -> None:
    """Render a saved plan."""
    if not planfile.strip():  # `show "$PLANFILE"`, PLANFILE unset
        raise click.UsageError("PLANFILE is empty: name the plan file written by `plan --out`")
    ws = c.workspace()
    staged = engine.load_plan(ws, Path(planfile))
    staged.discard()
    calls = destination_calls(ws, staged.plan)
    click.echo(render.render(staged.plan, fmt, color=c.color, calls=calls))


# ---------------------------------------------------------------------- apply / run
def _apply_options(fn):
    for opt in reversed(
        [
            click.option("--auto-approve", is_flag=True, help="Do not ask for confirmation."),
            click.option(
                "--allow-mass-removal",
                is_flag=True,
                help="Allow emptying an audience or removing more than max_removal_share.",
            ),
            click.option(
                "--allow-duplicate-audiences",
                is_flag=True,
                help="Apply although the state is empty and the destination already has "
                "audiences named as the ones to create (a lost state?): creates new ones.",
            ),
            click.option(
                "--lock-timeout",
                type=click.FloatRange(min=0),
                default=0.0,
                show_default=True,
                help="Seconds to wait for the state lock.",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


@main.command()
@click.argument("planfile", type=click.Path(dir_okay=False), required=False)
@target_option
@click.option("--due", is_flag=True, help="Only what the schedule says is due.")
@_apply_options
@pass_ctx
@handle_errors
def apply(
    c: Ctx,
    planfile,
    targets,
    due,
    auto_approve,
    allow_mass_removal,
    allow_duplicate_audiences,
    lock_timeout,
):
    """Plan, confirm, push the changes to the destinations and record them."""
    from reconciler.plan.planner import PlanRequest

    if planfile is not None and not planfile.strip():  # `apply "$PLANFILE"`, PLANFILE unset
        raise click.UsageError(
            "PLANFILE is empty: name the plan file written by `plan --out`, or leave it out "
            "to plan and apply now"
        )
    if planfile and (targets or due):
        chosen = [
            (o, flag)
            for o, flag, on in (("-t/--target", "-t ID", targets), ("--due", "--due", due))
            if on
        ]
        flags = " ".join(flag for _, flag in chosen)
        raise click.UsageError(
            f"{' and '.join(o for o, _ in chosen)} cannot be used with a saved plan file: "
            "`apply PLANFILE` applies exactly what was planned; choose the activations when "
            f"making the plan (`reconcile plan {flags} --out PLANFILE`)",
            ctx=click.get_current_context(),
        )
    ws = c.workspace(check_credentials=True)
    trigger = "schedule" if due else "apply"
    apply_plan(
        c,
        ws,
        planfile,
        PlanRequest(tuple(targets), due_only=due),
        trigger,
        auto_approve,
        allow_mass_removal,
        lock_timeout,
        allow_duplicate_audiences,
    )


@main.command()
@click.argument("name")
@_apply_options
@pass_ctx
@handle_errors
def run(c: Ctx, name, auto_approve, allow_mass_removal, allow_duplicate_audiences, lock_timeout):
    """Re-run one activation now (the Run button), one-time ones included."""
    from reconciler.plan.planner import PlanRequest

    ws = c.workspace(check_credentials=True)
    act = ws.activations.get(name)
    if act is None:
        raise ReconcileError(
            f"unknown activation {name!r}; known: {', '.join(sorted(ws.activations)) or 'none'}"
        )
    if act.paused:
        raise ReconcileError(
            f"activation {name!r} is paused (Stop Updates); set `paused: false` in "
            f"{ws.file_of('activations', name)} to run it"
        )
    apply_plan(
        c,
        ws,
        None,
        PlanRequest((name,), include_inactive=True),
        "run",
        auto_approve,
        allow_mass_removal,
        lock_timeout,
        allow_duplicate_audiences,
    )


# ---------------------------------------------------------------------- reports
from reconciler.cli.importing import import_  # noqa: E402
from reconciler.cli.reports import lists, log, segments, state, status  # noqa: E402
from reconciler.cli.state_restore import state_restore  # noqa: E402, F401  (registers it)

for _cmd in (status, log, lists, segments, state, import_):
    main.add_command(_cmd)


@main.command()
@click.argument("directory", type=click.Path(file_okay=False), default=".")
@click.option(
    "--install",
    metavar="REQUIREMENT",
    help="What the workflows pip-install (default: this version from PyPI), e.g. "
    "'activation-reconciler @ git+https://github.com/OWNER/REPO@v1.2.3'.",
)
@handle_errors
def init(directory: str, install: str | None) -> None:
    """Add a workspace to DIRECTORY (new or in an existing repository) and its GitHub
    workflows to the repository root. Never overwrites a file."""
    from reconciler.workspace.scaffold import scaffold

    try:
        result = scaffold(Path(directory), install=install)
    except OSError as exc:  # e.g. a folder that cannot be created there
        where = "" if exc.filename in (None, directory) else f"{exc.filename}: "
        raise ReconcileError(
            f"cannot create the workspace in {printable(directory)}: {printable(where)}"
            f"{exc.strerror or exc}"
        ) from exc
    for path in result.created:
        click.echo(f"created {printable(path)}")
    if result.gitignore:
        click.echo(f"appended our lines to {printable(result.gitignore)}")
    for path in result.kept:
        click.echo(f"kept {printable(path)} (exists; not overwritten)")


if __name__ == "__main__":  # pragma: no cover
    main()
