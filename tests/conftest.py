"""Shared fixtures: small workspaces on real DuckDB files, and the CLI.

``workspace(...)`` builds a workspace in a temp dir with a profiles table the test controls
(``profiles`` rows), so membership histories can be written directly; ``cli(ws, ...)`` runs
a ``reconcile`` command in-process through click's runner.
"""

from __future__ import annotations

import contextlib
import json
import os
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

from reconciler.cli.main import main
from tests.duckfiles import attached, query

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
# on demand: many more and longer histories (docs/testing.md)
settings.register_profile(
    "long",
    max_examples=300,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

PROFILE_COLUMNS = (
    "customer_id VARCHAR, email VARCHAR, phone VARCHAR, first_name VARCHAR, country VARCHAR, "
    "total_spend DOUBLE, email_consent BOOLEAN, seg_a BOOLEAN, seg_b BOOLEAN"
)

RECONCILE_YAML = """\
version: 1
timezone: UTC
source:
  type: duckdb
  path: data/profiles.duckdb
  profiles:
    table: profiles
    key: customer_id
    identifiers: {email: email, phone: phone}
    attributes: [first_name, country, total_spend, email_consent, seg_a, seg_b]
    default_phone_country: AU
state:  # CI keeps no state between runs: tests opt in to a state file that dies with them
  {path: .reconcile/state.duckdb, allow_ephemeral: true}
suppression: []
"""

#: the state section of RECONCILE_YAML (tests that use another backend replace it)
EMBEDDED_STATE = (
    "state:  # CI keeps no state between runs: tests opt in to a state file that dies with them\n"
    "  {path: .reconcile/state.duckdb, allow_ephemeral: true}\n"
)
assert EMBEDDED_STATE in RECONCILE_YAML

SANDBOX_YAML = """\
type: sandbox
consent: email_consent
attributes:
  FIRST_NAME: first_name
  COUNTRY: country
config:
  path: .reconcile/sandbox.duckdb
  identifiers: [email, phone]
  batch_size: 7
"""

SEGMENTS = {
    "seg-a": "sql: SELECT customer_id FROM profiles WHERE seg_a\n",
    "seg-b": "sql: SELECT customer_id FROM profiles WHERE seg_b\n",
}


def profile(
    i: int,
    *,
    a: bool = False,
    b: bool = False,
    consent: bool = True,
    email: str | None = "default",
    name: str | None = None,
    spend: float = 10.0,
) -> dict:
    return {
        "customer_id": f"c{i:05d}",
        "email": f"user{i}@example.com" if email == "default" else email,
        "phone": None,
        "first_name": name or f"Name{i}",
        "country": "AU",
        "total_spend": spend,
        "email_consent": consent,
        "seg_a": a,
        "seg_b": b,
    }


def allow_ephemeral_state(root: Path) -> None:
    """Opt a copied example workspace in to a state file that dies with the test: apply
    refuses one under ``CI=true`` otherwise (the examples themselves do not opt in)."""
    config = root / "reconcile.yaml"
    text = config.read_text()
    line = "  path: .reconcile/state.duckdb\n"
    assert line in text, "the example's state section changed"
    config.write_text(text.replace(line, line + "  allow_ephemeral: true\n", 1))


@dataclass
class WS:
    root: Path

    @property
    def db(self) -> Path:
        return self.root / "data" / "profiles.duckdb"

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def remove(self, relative: str) -> None:
        (self.root / relative).unlink()

    def set_profiles(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        self.db.parent.mkdir(parents=True, exist_ok=True)
        with attached(self.db, read_only=False) as con:
            con.execute(f"CREATE OR REPLACE TABLE profiles ({PROFILE_COLUMNS})")
            if rows:
                cols = list(rows[0])
                con.executemany(
                    f"INSERT INTO profiles ({', '.join(cols)}) VALUES "
                    f"({', '.join('?' for _ in cols)})",
                    [[r[c] for c in cols] for r in rows],
                )

    def alter_profiles(self, *statements: str, timezone: str | None = None) -> None:
        """Run SQL statements on the profiles database (change a column's type, add one),
        in ``timezone`` when given (TIMESTAMPTZ literals)."""
        con = duckdb.connect(str(self.db))
        try:
            if timezone:
                con.execute(f"SET TimeZone = '{timezone}'")
            for statement in statements:
                con.execute(statement)
        finally:
            con.close()

    def sandbox_keys(
        self, audience_name: str | None = None, *, path: str = ".reconcile/sandbox.duckdb"
    ) -> dict[str, set[str]]:
        """Sandbox contents: audience name -> set of match keys (what the destination holds)."""
        path = self.root / path
        if not path.exists():
            return {}
        rows = query(
            path,
            "SELECT a.name, m.match_key FROM audiences a LEFT JOIN members m ON m.audience_id = a.id",
        )
        out: dict[str, set[str]] = {}
        for name, key in rows:
            out.setdefault(name, set())
            if key is not None:
                out[name].add(key)
        return out if audience_name is None else {audience_name: out.get(audience_name, set())}


@pytest.fixture
def workspace(tmp_path: Path):
    def make(
        activations: dict[str, str] | None = None,
        *,
        profiles: Iterable[dict] = (),
        segments: dict[str, str] | None = None,
        integration: str = SANDBOX_YAML,
        reconcile_yaml: str = RECONCILE_YAML,
    ) -> WS:
        ws = WS(tmp_path / "ws")
        ws.write("reconcile.yaml", reconcile_yaml)
        ws.write("integrations/sandbox.yaml", integration)
        for name, text in (segments if segments is not None else SEGMENTS).items():
            ws.write(f"segments/{name}.yaml", text)
        for name, text in (activations or {}).items():
            ws.write(f"activations/{name}.yaml", text)
        ws.set_profiles(profiles)
        return ws

    return make


@pytest.fixture
def saved(workspace, tmp_path) -> tuple[WS, Path]:
    """A workspace with one activation and its plan saved to ``good.plan`` (the plan-file
    tests edit copies of it)."""
    act = "segments: [seg-a]\ndestination: sandbox\nname: Audience A\n"
    ws = workspace({"act": act}, profiles=[profile(i, a=i < 4) for i in range(6)])
    out = tmp_path / "good.plan"
    res = cli(ws, "plan", "--out", str(out))
    assert res.exit_code == 0, res.stderr
    return ws, out


@dataclass
class Result:
    exit_code: int
    output: str
    stderr: str

    def json(self):
        return json.loads(self.output)


@contextlib.contextmanager
def engine_session(root: Path, *, write_state: bool, lock_down: bool) -> Iterator:
    """The workspace at ``root`` loaded and an engine session open on it (its staging file
    removed afterwards), as a command opens one."""
    from reconciler.enginedb import Session, new_staging_path, remove_staging
    from reconciler.sources import open_source
    from reconciler.workspace.loader import load

    loaded = load(root)
    staging = new_staging_path(loaded)
    try:
        with Session(
            loaded,
            open_source(loaded),
            write_state=write_state,
            staging_path=staging,
            lock_down=lock_down,
        ) as session:
            yield session
    finally:
        remove_staging(staging)


def cli(ws: WS, *args: str, input: str | None = None) -> Result:
    runner = CliRunner()
    res = runner.invoke(
        main, ["-C", str(ws.root), "--no-color", *args], input=input, catch_exceptions=False
    )
    return Result(res.exit_code, res.stdout, res.stderr)


def plan_json(ws: WS, *args: str) -> dict:
    res = cli(ws, "plan", "--format", "json", *args)
    assert res.exit_code == 0, res.stderr + res.output
    return res.json()


def audience_counts(plan: dict, activation: str) -> dict[str, tuple[int, int, int]]:
    for a in plan["activations"]:
        if a["id"] == activation:
            return {au["group"]: (au["add"], au["remove"], au["update"]) for au in a["audiences"]}
    raise KeyError(activation)


# PostgreSQL-backed tests: `pg_dsn` (a fresh schema per test; FAILS under CI=true when the
# server cannot be reached, skips with the reason otherwise)
from tests.pg import pg_dsn  # noqa: E402, F401
