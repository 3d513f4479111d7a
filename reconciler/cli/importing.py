"""``reconcile import ACTIVATION [AUDIENCE_ID] [--group G]``."""

from __future__ import annotations

from typing import Any

import click

from reconciler.cli.common import handle_errors
from reconciler.cli.lazy import LazyModule

engine: Any = LazyModule("reconciler.engine")


@click.command("import")
@click.argument("activation")
@click.argument("audience_id", required=False)
@click.option(
    "--group",
    metavar="G",
    help="Which split group's audience it is (A or B for `split: ab`, experiment for "
    "`split: control`).",
)
@handle_errors
def import_(activation: str, audience_id: str | None, group: str | None) -> None:
    """Record an audience that already exists at the destination as ACTIVATION's own
    (found by AUDIENCE_ID, or by the name the activation gives it): the next apply sends to
    it instead of creating another audience of that name."""
    from reconciler.apply.importing import find_import, record_import

    ws = click.get_current_context().find_root().obj.workspace(check_credentials=True)
    found = []

    def check(st) -> None:  # read-only: a refused import writes nothing, not even the backup
        found.append(find_import(ws, st, activation, group=group, audience_id=audience_id))

    with engine.write_state(ws, "import", check) as st:
        record_import(st, found[0])
    done = found[0]
    group_text = "" if done.group == "all" else f" (group {done.group})"
    click.echo(
        f"Imported audience {done.audience.name!r} (id {done.audience.id}) at "
        f"{done.destination} for {done.activation!r}{group_text}. Run `reconcile plan`: its "
        "members are sent to it by the next apply."
    )
