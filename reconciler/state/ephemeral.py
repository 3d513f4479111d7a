"""Under CI, refuse to apply with a state that dies with the runner.

A state file on a CI runner (the embedded backend) is gone when the job ends, unless the
workflow keeps it somewhere; the next run would then plan from an empty state, create every
audience a second time and send one-time activations again. So ``apply`` (and ``run``) under
``CI=true`` refuses the embedded backend unless ``state: {allow_ephemeral: true}`` is set in
``reconcile.yaml`` or ``RECONCILE_ALLOW_EPHEMERAL_STATE=true`` is in the environment.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.errors import ConfigError
from reconciler.workspace.loader import Workspace

#: backends whose state is a file on the machine that runs the command
EMBEDDED = frozenset({"local", "embedded", "duckdb"})
ENV = "RECONCILE_ALLOW_EPHEMERAL_STATE"


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def check_durable_state(ws: Workspace, environ: Mapping[str, str]) -> None:
    """Raise when running under CI with a state that does not outlive the runner."""
    state = ws.config.state
    if not _true(environ.get("CI")) or getattr(state, "backend", "local") not in EMBEDDED:
        return
    if getattr(state, "allow_ephemeral", False) or _true(environ.get(ENV)):
        return
    path = getattr(state, "path", "the state file")  # only embedded backends get here
    raise ConfigError(
        f"apply refuses the embedded state backend under CI (CI=true): the state file "
        f"{path} lives on this runner and does not outlive it, so the next run would "
        "start from an empty state, create every audience again and re-send one-time "
        "activations. Use the PostgreSQL state backend (docs/state.md), or, if the workflow "
        f"keeps the file itself, set `allow_ephemeral: true` under `state:` (or {ENV}=true; "
        "docs/state-recovery.md)",
        ws.config_location("state"),
    )
