"""The recorded state, kept in DuckDB and attached to the engine session as catalog
``__reconcile_state`` so membership diffs run as SQL next to the source.

:class:`StateReader` is all planning gets; :class:`StateStore` (apply only) adds writes.
Tables (no raw PII anywhere: keys, hashes and destination ids only):

- ``activations``  the spec recorded at the last apply, its digest, a serial bumped by every
  apply that changes the activation, status, split seed, creation date, last runs
- ``audiences``    destination resource ids per (activation, group)
- ``members``      per (activation, group, key): ``record`` (what was sent: hashes or
  destination member ids) and ``fp`` (fingerprint of identifiers + mapped attributes)
- ``journal``      an intent before each destination call, its outcome after
- ``runs``         every run: start, end, status, counts per audience, error
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import duckdb

CATALOG = "__reconcile_state"
SCHEMA_VERSION = "1"

DDL = [
    "CREATE TABLE IF NOT EXISTS {c}.meta (k VARCHAR PRIMARY KEY, v VARCHAR)",
    """CREATE TABLE IF NOT EXISTS {c}.activations (
        id VARCHAR PRIMARY KEY, spec JSON, spec_digest VARCHAR, serial BIGINT,
        status VARCHAR, destination VARCHAR, frequency VARCHAR, paused BOOLEAN,
        split_seed VARCHAR, date_created DATE, created_at TIMESTAMPTZ,
        updated_at TIMESTAMPTZ, last_run_at TIMESTAMPTZ, last_success_at TIMESTAMPTZ,
        ran BOOLEAN, error VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS {c}.audiences (
        activation_id VARCHAR, grp VARCHAR, name VARCHAR, resource_id VARCHAR,
        sent BOOLEAN, created_at TIMESTAMPTZ, PRIMARY KEY (activation_id, grp))""",
    """CREATE TABLE IF NOT EXISTS {c}.members (
        activation_id VARCHAR, grp VARCHAR, key VARCHAR, record VARCHAR[], fp UBIGINT)""",
    """CREATE TABLE IF NOT EXISTS {c}.journal (
        batch_id VARCHAR, run_id VARCHAR, activation_id VARCHAR, grp VARCHAR, op VARCHAR,
        size INTEGER, status VARCHAR, detail VARCHAR, started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ)""",
    """CREATE TABLE IF NOT EXISTS {c}.runs (
        run_id VARCHAR PRIMARY KEY, activation_id VARCHAR, trigger VARCHAR,
        started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, status VARCHAR,
        added BIGINT, removed BIGINT, updated BIGINT, failed BIGINT, audiences JSON,
        error VARCHAR)""",
]


def create_schema(con: duckdb.DuckDBPyConnection, catalog: str = CATALOG) -> None:
    for stmt in DDL:
        con.execute(stmt.format(c=catalog))
    con.execute(
        f"INSERT OR IGNORE INTO {catalog}.meta VALUES ('schema_version', ?)", [SCHEMA_VERSION]
    )


@dataclass(frozen=True)
class RecordedActivation:
    id: str
    spec: dict[str, Any]
    spec_digest: str
    serial: int
    status: str
    destination: str
    frequency: str
    paused: bool
    split_seed: str
    date_created: date
    last_run_at: datetime | None
    last_success_at: datetime | None
    ran: bool
    error: str | None


@dataclass(frozen=True)
class RecordedAudience:
    activation_id: str
    grp: str
    name: str
    resource_id: str | None
    sent: bool


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    activation_id: str
    trigger: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    added: int
    removed: int
    updated: int
    failed: int
    audiences: list[dict[str, Any]]
    error: str | None


_ACT_COLS = (
    "id, spec, spec_digest, serial, status, destination, frequency, paused, split_seed, "
    "date_created, last_run_at, last_success_at, ran, error"
)
_RUN_COLS = (
    "run_id, activation_id, trigger, started_at, finished_at, status, added, removed, "
    "updated, failed, audiences, error"
)


class StateReader:
    """Read-only view of the state through an engine session's connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, catalog: str = CATALOG):
        self.con = con
        self.c = catalog

    def activations(self) -> dict[str, RecordedActivation]:
        rows = self.con.execute(f"SELECT {_ACT_COLS} FROM {self.c}.activations").fetchall()
        return {r[0]: _activation(r) for r in rows}

    def activation(self, activation_id: str) -> RecordedActivation | None:
        row = self.con.execute(
            f"SELECT {_ACT_COLS} FROM {self.c}.activations WHERE id = ?", [activation_id]
        ).fetchone()
        return _activation(row) if row else None

    def audiences(self, activation_id: str) -> dict[str, RecordedAudience]:
        rows = self.con.execute(
            f"SELECT activation_id, grp, name, resource_id, sent FROM {self.c}.audiences "
            "WHERE activation_id = ?",
            [activation_id],
        ).fetchall()
        return {r[1]: RecordedAudience(*r) for r in rows}

    def member_counts(self, activation_id: str) -> dict[str, int]:
        rows = self.con.execute(
            f"SELECT grp, count(*) FROM {self.c}.members WHERE activation_id = ? GROUP BY grp",
            [activation_id],
        ).fetchall()
        return dict(rows)

    def runs(self, activation_id: str, limit: int | None = None) -> list[RunRecord]:
        sql = (
            f"SELECT {_RUN_COLS} FROM {self.c}.runs WHERE activation_id = ? "
            "ORDER BY started_at DESC, run_id DESC"
        )
        params: list[Any] = [activation_id]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_run(r) for r in self.con.execute(sql, params).fetchall()]

    def last_runs(self) -> dict[str, RunRecord]:
        rows = self.con.execute(
            f"SELECT {_RUN_COLS} FROM {self.c}.runs "
            "QUALIFY row_number() OVER (PARTITION BY activation_id "
            "ORDER BY started_at DESC, run_id DESC) = 1"
        ).fetchall()
        return {r[1]: _run(r) for r in rows}

    def pending_intents(self) -> list[tuple[str, str, str, str, str]]:
        """Journal intents without an outcome: (batch_id, run_id, activation, group, op)."""
        return self.con.execute(
            f"SELECT batch_id, run_id, activation_id, grp, op FROM {self.c}.journal "
            "WHERE status = 'intent' ORDER BY started_at"
        ).fetchall()


def _activation(r: tuple) -> RecordedActivation:
    return RecordedActivation(
        id=r[0],
        spec=json.loads(r[1]),
        spec_digest=r[2],
        serial=r[3],
        status=r[4],
        destination=r[5],
        frequency=r[6],
        paused=r[7],
        split_seed=r[8],
        date_created=r[9],
        last_run_at=r[10],
        last_success_at=r[11],
        ran=bool(r[12]),
        error=r[13],
    )


def _run(r: tuple) -> RunRecord:
    return RunRecord(
        run_id=r[0],
        activation_id=r[1],
        trigger=r[2],
        started_at=r[3],
        finished_at=r[4],
        status=r[5],
        added=r[6] or 0,
        removed=r[7] or 0,
        updated=r[8] or 0,
        failed=r[9] or 0,
        audiences=json.loads(r[10]) if r[10] else [],
        error=r[11],
    )
