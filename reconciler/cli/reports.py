"""Read-only and housekeeping commands: status, log, lists, segments, state."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import click

from reconciler.cli.common import handle_errors
from reconciler.cli.lazy import LazyModule
from reconciler.errors import ReconcileError, printable

if TYPE_CHECKING:
    from reconciler.workspace.loader import Workspace

engine: Any = LazyModule("reconciler.engine")
rows_of: Any = LazyModule("reconciler.render.reports")
#: the most runs or rejected members `log` lists, and keys `segments` previews
MAX_LOG_LIMIT = 1_000_000
MAX_PREVIEW = 10_000


def _ws() -> Workspace:
    return click.get_current_context().find_root().obj.workspace()


def _readable(fmt: str = "text") -> tuple[Workspace, int]:
    """The workspace for a command that only reads the state, even with broken activation or
    segment files (:meth:`reconciler.cli.common.Ctx.readable_workspace`); in text, a note on
    standard error says how many problems it has."""
    ws, problems = click.get_current_context().find_root().obj.readable_workspace()
    if problems and fmt == "text":
        noun = "problem" if problems == 1 else "problems"
        click.echo(
            f"Note: the workspace has {problems} {noun} (`reconcile validate` lists them); an "
            "activation whose file did not load is shown as the state recorded it.\n",
            err=True,
        )
    return ws, problems


def _local(at: str | None, tz: str) -> str | None:
    """An ISO time the state recorded (UTC) in the workspace's time zone, for the text tables
    (a marketer in Sydney reads the 6 am run as 06:00+10:00; JSON keeps UTC)."""
    if not at:
        return at
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(ZoneInfo(tz)).isoformat(timespec="seconds")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    cells = [[printable(x) for x in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *cells, strict=False)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*headers), *(fmt.format(*r) for r in cells)])


@click.command()
@click.option("--active", is_flag=True, help="Only auto-updating ones.")
@click.option("--inactive", is_flag=True, help="Only one-time and paused.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@handle_errors
def status(active, inactive, fmt) -> None:
    """Activations with their status, last run and last counts."""
    if active and inactive:
        raise click.UsageError(
            "--active and --inactive are mutually exclusive: pass one, or neither for all",
            ctx=click.get_current_context(),
        )
    which = "active" if active else "inactive" if inactive else None
    ws, problems = _readable(fmt)
    with engine.read_state(ws) as state:
        rows = rows_of.activation_rows(ws, state)
        notice = state.notice
    if which:
        rows = [r for r in rows if r["tab"] == which.capitalize()]
    if fmt == "json":
        doc: dict[str, Any] = {"activations": rows}
        if notice:
            doc["state_notice"] = notice
        if problems:
            doc["workspace_problems"] = problems
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    if notice:
        click.echo(f"Note: {notice}.\n")
    for tab in ("Active", "Inactive"):
        tab_rows = [r for r in rows if r["tab"] == tab]
        if not tab_rows:
            continue
        click.echo(f"{tab}:")
        click.echo(
            _table(
                ["ID", "STATUS", "DESTINATION", "LAST RUN", "ADDED", "REMOVED", "UPDATED"],
                [
                    [
                        r["id"],
                        r["status"],
                        r["destination"],
                        _local(r["last_run"], ws.config.timezone) or "never",
                        r["added"],
                        r["removed"],
                        r["updated"],
                    ]
                    for r in tab_rows
                ],
            )
        )
        click.echo("")
    if not rows:
        click.echo("No activations.")


@click.command()
@click.argument("name")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_LOG_LIMIT),
    default=20,
    show_default=True,
    help="Runs (or rejected members) to show, newest first.",
)
@click.option(
    "--rejected",
    is_flag=True,
    help="List the members the destination rejected (hashed identifiers only), newest first.",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@handle_errors
def log(name, limit, rejected, fmt) -> None:
    """Runs of one activation: time, status, counts per audience, errors."""
    ws, problems = _readable(fmt)
    with engine.read_state(ws) as state:
        # one more than shown: whether there are more to say so
        rows = rows_of.log_rows(state, name, limit + 1)
        rejections = rows_of.rejection_rows(state, name, limit + 1) if rejected else []
        notice = state.notice
    more_runs, rows = len(rows) > limit, rows[:limit]
    more_rejected, rejections = len(rejections) > limit, rejections[:limit]
    if notice and fmt == "text":
        click.echo(f"Note: {notice}.\n")
    if not rows and name not in ws.activations:
        raise ReconcileError(f"no activation {name!r} in the workspace or the state")
    if rejected:
        _rejections(name, rejections, fmt, more_rejected, ws.config.timezone)
        return
    if fmt == "json":
        doc: dict[str, Any] = {"activation": name, "runs": rows, "more": more_runs}
        if notice:
            doc["state_notice"] = notice
        if problems:
            doc["workspace_problems"] = problems
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    if not rows:
        click.echo(f"{name}: no runs yet.")
        return
    click.echo(
        _table(
            ["STARTED", "TRIGGER", "STATUS", "ADDED", "REMOVED", "UPDATED", "REJECTED"],
            [
                [
                    _local(r["started_at"], ws.config.timezone) or "",
                    r["trigger"],
                    r["status"],
                    r["added"],
                    r["removed"],
                    r["updated"],
                    r["failed"],
                ]
                for r in rows
            ],
        )
    )
    for r in rows:
        if r["error"]:
            click.echo(f"  {_local(r['started_at'], ws.config.timezone)}: {printable(r['error'])}")
    if more_runs:
        click.echo(_more(len(rows), "runs"))


def _more(shown: int, what: str) -> str:
    return f"... more: the newest {shown:,} {what} are shown; `--limit N` shows more"


def _rejections(name: str, rows: list[dict], fmt: str, more: bool, tz: str) -> None:
    if fmt == "json":
        doc = {"activation": name, "rejected": rows, "more": more}
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    if not rows:
        click.echo(f"{name}: no rejected members.")
        return
    click.echo(
        _table(
            ["REJECTED AT", "RUN", "GROUP", "KEY", "OP", "REASON", "RECORD"],
            [
                [
                    _local(r["rejected_at"], tz) or "",
                    r["run_id"] or "",
                    r["group"],
                    r["key"],
                    r["op"],
                    r["reason"] or "",
                    " ".join(r["record"]),
                ]
                for r in rows
            ],
        )
    )
    if more:
        click.echo(_more(len(rows), "rejected members"))


@click.command()
@click.argument("integration")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@handle_errors
def lists(integration, fmt) -> None:
    """The destination's existing lists (the drop-down of `list: existing`)."""
    from reconciler.integrations import Connections

    ws = _ws()
    if integration not in ws.integrations:
        raise ReconcileError(
            f"unknown integration {integration!r}; known: {', '.join(sorted(ws.integrations))}"
        )
    conns = Connections(ws)
    try:
        found = conns.get(integration).list_audiences()
    finally:
        conns.close()
    if fmt == "json":
        click.echo(
            json.dumps([{"id": a.id, "name": a.name, "size": a.size} for a in found], indent=2)
        )
        return
    click.echo(
        _table(
            ["ID", "NAME", "SIZE"],
            [[a.id, a.name, "" if a.size is None else str(a.size)] for a in found],
        )
    )


@click.command()
@click.argument("name", required=False)
@click.option("--show-pii", is_flag=True, help="Preview e-mail addresses too.")
@click.option(
    "--limit",
    type=click.IntRange(0, MAX_PREVIEW),
    default=5,
    show_default=True,
    help="Keys to preview (0: sizes only).",
)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@handle_errors
def segments(name, show_pii, limit, fmt) -> None:
    """Segment sizes and a preview of their keys."""
    ws = _ws()
    rows = rows_of.segment_rows(ws, name, limit, show_pii)
    if fmt == "json":
        click.echo(json.dumps({"segments": rows}, indent=2, default=str))
        return
    for r in rows:
        click.echo(f"{r['name']}: {r['size']:,} profiles  ({r['file']})")
        for p in r["preview"]:
            click.echo(f"    {printable(p)}")
        if r.get("note"):
            click.echo(f"    ({r['note']})")


# ---------------------------------------------------------------------- state
@click.group()
def state() -> None:
    """Inspect and repair the recorded state."""


@state.command("show")
@click.argument("name", required=False)
@handle_errors
def state_show(name) -> None:
    """Recorded activations (or one), with serials, audiences and member counts (a group
    recorded but never sent, a control group, has members and no audience)."""
    ws, _ = _readable()
    with engine.read_state(ws) as st:
        if st.notice:
            click.echo(f"Note: {st.notice}.", err=True)
        recs = st.activations()
        if name:
            if name not in recs:
                raise ReconcileError(f"no activation {name!r} in the state")
            recs = {name: recs[name]}
        out = []
        for aid, rec in sorted(recs.items()):
            counts = st.member_counts(aid)
            recorded = st.audiences(aid)
            unsent = [
                {"group": g, "name": None, "resource_id": None, "sent": False, "members": n}
                for g, n in sorted(counts.items())
                if g not in recorded
            ]
            out.append(
                {
                    "id": aid,
                    "serial": rec.serial,
                    "status": rec.status,
                    "destination": rec.destination,
                    "spec_digest": rec.spec_digest,
                    "audiences": [
                        {
                            "group": a.grp,
                            "name": a.name,
                            "resource_id": a.resource_id,
                            "sent": a.sent,
                            "members": counts.get(a.grp, 0),
                        }
                        for a in recorded.values()
                    ]
                    + unsent,
                }
            )
    click.echo(json.dumps(out, indent=2, default=str))


@state.command("unlock")
@click.argument("lock_id", required=False)
@handle_errors
def state_unlock(lock_id) -> None:
    """Break the state lock LOCK_ID, left by a process that is gone (without LOCK_ID: show
    who holds the lock)."""
    lock = engine.state_lock(_readable()[0])
    info = lock.info()
    if lock_id is None:
        if info is None:
            click.echo("The state is not locked.")
            return
        advice = (  # a stale holder's description gives this advice already
            ""
            if info.stale
            else f"; if that process is gone, break the lock with `reconcile state unlock {info.id}`"
        )
        raise ReconcileError(f"the state is locked by {info.describe()}{advice}")
    if not lock.force_unlock(lock_id):
        now = f"; the state is locked by {info.describe()}" if info else " (it is not locked)"
        raise ReconcileError(f"no lock {lock_id!r} holds the state{now}")
    click.echo(f"Lock {lock_id} broken.")


def _recorded(st, name: str) -> None:
    if st.activation(name) is None:
        raise ReconcileError(f"no activation {name!r} in the state")


@state.command("rm")
@click.argument("name")
@handle_errors
def state_rm(name) -> None:
    """Stop managing an activation: drop its state (the destination is not touched)."""
    with engine.write_state(_ws(), "state rm", lambda st: _recorded(st, name)) as st:
        st.forget_activation(name)
    click.echo(f"Removed {name!r} from the state.")


@state.command("mv")
@click.argument("old")
@click.argument("new")
@handle_errors
def state_mv(old, new) -> None:
    """Rename an activation in the state (like `moved_from:` in a file)."""
    from reconciler.workspace.spec_base import NAME_RE  # the rule of activation file stems

    if not NAME_RE.fullmatch(new):
        shown = repr(new) if len(new) <= 60 else repr(new[:60]) + "..."
        raise ReconcileError(
            f"{shown} is not a valid activation id: an id is the name of its file "
            "activations/ID.yaml, only lowercase letters, digits, '-' and '_' (starting with a "
            "letter or digit)"
        )

    def check(st) -> None:
        _recorded(st, old)
        if st.activation(new) is not None:
            raise ReconcileError(f"{new!r} already exists in the state")

    with engine.write_state(_ws(), "state mv", check) as st:
        st.move_activation(old, new)
    from reconciler.sources.writeback import rekey_source

    moved = rekey_source(_ws(), old, new)
    click.echo(
        f"Moved {old!r} to {new!r}." + (f" {moved:,} write-back row(s) too." if moved else "")
    )


@state.command("migrate")
@click.option("--to", "to", type=click.Choice(["postgres"]), required=True)
@click.option(
    "--dsn",
    envvar="RECONCILE_STATE_DSN",
    show_envvar=True,
    help="the target server (default: $RECONCILE_STATE_DSN; never printed)",
)
@click.option("--schema", default="reconcile", show_default=True, help="the target schema")
@handle_errors
def state_migrate(to, dsn, schema) -> None:
    """Copy the embedded state to PostgreSQL and check that both agree."""
    from reconciler.state.backend import EmbeddedBackend, open_backend
    from reconciler.state.postgres.backend import PostgresBackend
    from reconciler.state.postgres.migrate import migrate_to_postgres

    ws = _ws()
    source = open_backend(ws)
    if not isinstance(source, EmbeddedBackend):
        raise ReconcileError(
            "the state is already in PostgreSQL; `state migrate` copies an embedded state"
        )
    if not dsn:
        raise ReconcileError("pass --dsn or set RECONCILE_STATE_DSN to the target server")
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ReconcileError(f"--schema {schema!r} is not a plain lower-case schema name")
    target = PostgresBackend(dsn, schema, tmp=ws.path(".reconcile/tmp"))
    checks = migrate_to_postgres(source, target, echo=click.echo)
    for c in checks:
        click.echo(f"  {c.table:<12} {c.rows:>10,} rows  md5 {c.digest}  match")
    click.echo(
        f"Migrated the state to {target.where}; both agree. Point reconcile.yaml at it:\n"
        "state:\n  backend: postgres\n  dsn: ${env:RECONCILE_STATE_DSN}\n"
        f"  schema: {schema}\n"
        f"The embedded state was renamed {source.path.name}.migrated (keep it as a backup): "
        "a checkout still configured for it is refused instead of applying against it."
    )
