"""What every command shares: the context object, the single error handler and the group
class that applies it to the whole CLI.

Exit codes are 0 (success), 1 (any error, including usage errors and Ctrl-C) and, only for
``plan --detailed-exitcode``, 2 (success with changes) — so click's usage-error code 2 is
mapped to 1 here, once for every command.
"""

from __future__ import annotations

import json
import os
import re
import sys
import traceback
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from reconciler.errors import ReconcileError, is_engine_error, query_interrupted

if TYPE_CHECKING:
    from reconciler.workspace.loader import Workspace


#: set by ``--log-format json``: errors too are one JSON event on standard error
_json_errors = False


class Ctx:
    """The global options: workspace directory, colour, ``-v`` and ``--log-format``."""

    def __init__(
        self,
        directory: str | None,
        color: bool,
        verbose: bool = False,
        log_format: str = "text",
    ):
        self.directory = Path(directory) if directory else Path.cwd()
        self.color = color
        self.verbose = verbose
        self.log_format = log_format
        global _json_errors
        _json_errors = log_format == "json"

    def workspace(self, *, check_credentials: bool = False) -> Workspace:
        """The loaded workspace; ``check_credentials``: every credential's environment
        variable must be set (commands that contact destinations)."""
        from reconciler.workspace.loader import find_root
        from reconciler.workspace.loader import load as load_workspace

        return load_workspace(find_root(self.directory), check_credentials=check_credentials)

    def readable_workspace(self) -> tuple[Workspace, int]:
        """The workspace for commands that only read the state (``status``, ``log``, ``state
        show``, ``state unlock``), and how many problems it has: a broken activation or
        segment file does not stop them (the state says what ran; `validate` says what is
        wrong). A problem in reconcile.yaml does: it says where the state is."""
        from reconciler.errors import ValidationFailed
        from reconciler.workspace.loader import CONFIG_FILE, collect, find_root

        ws, errors = collect(find_root(self.directory))
        if any(e.location is None or e.location.file == CONFIG_FILE for e in errors):
            raise ValidationFailed(errors)
        return ws, len(errors)


def fail(exc: BaseException) -> NoReturn:
    """The single error handler: one `Error: ...` paragraph on stderr, exit 1.

    An exception we did not expect is a bug: it is named (type and message) rather than
    hidden, and ``RECONCILE_DEBUG=1`` prints its traceback too."""
    if isinstance(exc, BrokenPipeError):  # the reader went away (`status | head -1`)
        _quiet_stdout()
        sys.exit(1)
    if isinstance(exc, click.ClickException):  # usage errors: click's own message
        if not _json_errors:
            exc.show()
            sys.exit(1)
        text = exc.format_message()
    elif isinstance(exc, ReconcileError):
        text = str(exc)
    elif isinstance(exc, KeyboardInterrupt | click.Abort) or query_interrupted(exc):
        text = "interrupted"
    elif isinstance(exc, MemoryError):  # the session's memory cap (sources/limits.py)
        text = (
            "out of memory: the process reached its memory cap (3 x `source.memory_limit`, "
            "6 x during an apply, above what it used when the engine started). Nothing more was "
            "done; raise `source.memory_limit` in reconcile.yaml (or set "
            "RECONCILE_MEMORY_CAP=off to run without the cap)"
        )
    elif is_engine_error(exc) and "Corrupt database file" in str(exc):
        text = (
            f"a database file is damaged: {_one_line(exc)}. Nothing more was done. If it is "
            "the state (`reconcile status` fails too), restore its backup "
            "(`reconcile state restore`); if it is the source, restore it from where it came"
        )
    elif is_engine_error(exc):  # one we did not expect: still one paragraph, exit 1
        text = (
            f"the database engine failed: {_one_line(exc)}. Nothing more was done; if it "
            "happens again, report it with the command you ran"
        )
    else:
        if os.environ.get("RECONCILE_DEBUG") == "1":
            traceback.print_exception(exc, file=sys.stderr)
        text = (
            f"internal error: {type(exc).__name__}: {_one_line(exc)}; please report it "
            "(RECONCILE_DEBUG=1 shows the traceback)"
        )
    if _json_errors:  # the pipeline reading the events gets this one as an event too
        at = datetime.now(UTC).isoformat(timespec="milliseconds")
        click.echo(json.dumps({"time": at, "event": "error", "message": text}), err=True)
    else:
        click.echo(f"Error: {text}", err=True)
    sys.exit(1)


def _quiet_stdout() -> None:
    """Point standard output at /dev/null: its reader is gone, and Python would otherwise
    report the failed flush at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _one_line(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip()[:500]


def handle_errors(fn):
    """Run a command under the single error handler."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.exceptions.Exit:  # ctx.exit(code): not an error
            raise
        except (Exception, KeyboardInterrupt) as exc:
            fail(exc)

    return wrapper


class ReconcileGroup(click.Group):
    """The ``reconcile`` group: whatever escapes a command, click's parsing or start-up goes
    through :func:`fail`, so no command can exit 2 on bad usage or print a traceback."""

    def main(self, args: Any = None, prog_name: Any = None, *a: Any, **extra: Any) -> Any:
        global _json_errors
        # until the options are parsed (:class:`Ctx`); seen here too, for a usage error that
        # comes before them (an unknown command)
        given = list(sys.argv[1:] if args is None else args)
        _json_errors = any(
            a == "--log-format=json" or (a == "--log-format" and given[i + 1 : i + 2] == ["json"])
            for i, a in enumerate(given)
        )
        run: Any = super().main  # click's overloads do not cover a forwarded call
        if extra.pop("standalone_mode", True) is False:
            return run(args, prog_name, *a, standalone_mode=False, **extra)
        try:
            code = run(args, prog_name, *a, standalone_mode=False, **extra)
            sys.stdout.flush()  # a reader that went away is found here, not at exit
        except (Exception, KeyboardInterrupt) as exc:
            fail(exc)
        # --help and --version return click's exit code; commands return None
        sys.exit(code if isinstance(code, int) and code in (0, 1) else 0)


def destination_calls(ws: Workspace, plan: Any) -> list[Any]:
    """The requests each destination of ``plan`` needs, from its adapter's declared limits
    (adapters are built without credentials: construction does no I/O)."""
    from reconciler.integrations import Connections
    from reconciler.render import CallLimits
    from reconciler.render import destination_calls as estimate

    wanted = sorted({a.destination for a in plan.activations if a.has_changes})
    limits = {}
    conns = Connections(ws, require_credentials=False)
    try:
        for name in wanted:
            if name not in ws.integrations:
                continue  # a deleted activation whose integration is gone too
            try:
                dest = conns.get(name)
            except ReconcileError:
                continue
            limits[name] = CallLimits(
                type=ws.integrations[name].type,
                members_per_call=dest.limits.members_per_call,
                requests_per_minute=dest.limits.requests_per_minute,
                concurrency=dest.limits.concurrency,
                updates_in_place=dest.capabilities.update,
            )
    finally:
        conns.close()
    return estimate(plan, limits)


def use_color(no_color: bool) -> bool:
    return not no_color and "NO_COLOR" not in os.environ and sys.stdout.isatty()
