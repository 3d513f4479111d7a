"""``reconcile state restore``: put the backup of the state back, safely."""

from __future__ import annotations

from typing import Any

import click

from reconciler.cli.common import handle_errors
from reconciler.cli.lazy import LazyModule
from reconciler.cli.reports import _ws, state

engine: Any = LazyModule("reconciler.engine")


@state.command("restore")
@handle_errors
def state_restore() -> None:
    """Put the backup of the state (the state before the last apply, `state rm|mv` or
    `import`) back in place. Every member it records is then sent again by the next apply
    (once; a no-op where the destination has it): the backup does not know what the last
    apply removed."""
    aside, marked = engine.restore_state(_ws())
    kept = f"; the state it replaced is kept as {aside.name}" if aside else ""
    click.echo(f"Restored the state from its backup{kept}.")
    click.echo(
        f"{marked:,} recorded member(s) will be sent again by the next apply (what the last "
        "apply removed is not in the backup): run `reconcile plan`."
    )
