"""The workspace of tests/test_state_machine.py: its files, profiles and identifier
variants, and small readers of the sandbox and state files."""

from __future__ import annotations

import sys
from pathlib import Path

from destinations.base import DestinationContext
from destinations.sandbox import SandboxConfig, SandboxDestination
from destinations.sandbox.config import SandboxCredentials
from reconciler.workspace.activation_spec import SplitMode
from tests.duckfiles import query
from tests.state_model import CONTROL_PERCENT, Config

N = 5  # profiles
KEYS = [f"c{i:05d}" for i in range(N)]
SANDBOX = ".reconcile/sandbox.duckdb"
EXISTING = "Existing"  # the list `action: remove` works on; other senders' rows in it too
NAMES = {"m": "M", "ap": "AP", "o": "O"}
ACTIONS = {"m": "maintain", "ap": "append", "o": "maintain", "rm": "remove"}
SENDERS = ("m", "ap", "o")  # the activations that send (can be split, deleted, re-added)
EMAILS = {
    "own": "user{i}@example.com",
    "alt": "alt{i}@example.com",
    "shared": "family@example.com",  # a shared inbox when two profiles pick it
    "unusable": "bob@localhost",
    "none": None,
}
PHONES = {
    "national": "04{i:08d}",  # hashes differently in AU and NZ
    "international": "+614{i:08d}",  # the same number as AU national
    "unusable": "12",
    "none": None,
}
FOREIGN = [f"foreign{j}@example.org" for j in range(2)]

RECONCILE_YAML = """\
version: 1
timezone: UTC
source:
  type: duckdb
  path: data/profiles.duckdb
  profiles:
    table: profiles
    key: customer_id
    identifiers: {{email: email, phone: phone}}
    attributes: [first_name]
    default_phone_country: {country}
state:
  path: .reconcile/state.duckdb
  allow_ephemeral: true  # a test's state dies with it, also under CI
suppression: [blocked]
"""
SEGMENTS = {
    "seg-a": "sql: SELECT customer_id FROM profiles WHERE seg_a\n",
    "blocked": "sql: SELECT customer_id FROM profiles WHERE seg_b\n",
}
INTEGRATION = """\
type: sandbox
consent: email_consent
config:
  path: {path}
  identifiers: [email, phone]
  batch_size: 2
  reject_add_keys: {add}
  reject_remove_keys: {remove}
"""


def activation_yaml(aid: str, cfg: Config) -> str:
    lines = ["segments: [seg-a]", "destination: sandbox"]
    if ACTIONS[aid] == "remove":
        lines += ["action: remove", f"list: {{existing: {EXISTING}}}"]
    else:
        lines.append(f"name: {NAMES[aid]}")
    if ACTIONS[aid] == "append":
        lines.append("action: append")
    if cfg.split is not SplitMode.NONE:
        lines.append(f"split: {cfg.split.value}")
    if cfg.split is SplitMode.CONTROL:
        lines.append(f"control_percent: {CONTROL_PERCENT}")
    if cfg.paused:
        lines.append("paused: true")
    if cfg.frequency == "once":
        lines.append("frequency: once")
    if cfg.on_delete == "clear":
        lines.append("on_delete: clear")
    return "\n".join(lines) + "\n"


def email_of(i: int, variant: str) -> str | None:
    value = EMAILS[variant]
    return None if value is None else value.format(i=i)


def phone_of(i: int, variant: str) -> str | None:
    value = PHONES[variant]
    return None if value is None else value.format(i=i)


def sandbox(context: DestinationContext) -> SandboxDestination:
    """The sandbox as another sender sees it (no knobs)."""
    return SandboxDestination(SandboxConfig(path=SANDBOX), SandboxCredentials(), context)


def reconcile_command() -> list[str]:
    script = Path(sys.executable).parent / "reconcile"
    return [str(script)] if script.exists() else [sys.executable, "-m", "reconciler"]


def read(path: Path, sql: str) -> list[tuple]:
    if not path.exists():
        return []
    return query(path, sql)
