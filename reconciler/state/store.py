"""Reading the recorded state: :class:`StateReader` is all planning gets;
:class:`~reconciler.state.writer.StateStore` (apply only) adds writes. The tables are
described in :mod:`reconciler.state.schema`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import duckdb

from reconciler.errors import StateError
from reconciler.state.schema import CATALOG


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

    #: set when this reads the state as of the start of a running apply (what to tell)
    notice: str | None = None

    def __init__(self, con: duckdb.DuckDBPyConnection, catalog: str = CATALOG):
        self.con = con
        self.c = catalog

    def read_every_block(self, schema: bool = False) -> None:
        """Read every value of every table of the state once (DuckDB checks each block's
        checksum as it reads it), raising :class:`StateError` on a damaged one. Opening a
        state reads its catalog only: a command that writes the state first makes the state
        its backup, and a damaged block found later would have replaced the good backup."""
        tables = self.con.execute(
            "SELECT table_name, list(column_name ORDER BY column_index) FROM duckdb_columns() "
            "WHERE database_name = ? GROUP BY table_name ORDER BY table_name",
            [self.c],
        ).fetchall()
        if schema:  # and its tables hold every column (not before a migration)
            self._check_columns(dict(tables))
        for table, columns in tables:
            cols = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
            try:
                self.con.execute(f'SELECT bit_xor(hash({cols})) FROM {self.c}."{table}"').fetchall()
            except duckdb.Error as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise StateError(
                    f"the state is damaged (its table {table!r} cannot be read: {first}); "
                    "nothing was written and its backup was left as it is: `reconcile state restore` "
                    "puts it back (docs/state-recovery.md)"
                ) from exc

    @staticmethod
    def _check_columns(found: dict[str, list[str]]) -> None:
        """Every table and column this release's state has (a state edited by hand, or
        damaged, may lack one: its queries then failed naming no file)."""
        from reconciler.state.schema import DDL

        con = duckdb.connect(":memory:")
        try:
            con.execute("ATTACH ':memory:' AS expected")
            for stmt in DDL:
                con.execute(stmt.format(c="expected"))
            wanted = con.execute(
                "SELECT table_name, list(column_name) FROM duckdb_columns() "
                "WHERE database_name = 'expected' GROUP BY table_name"
            ).fetchall()
        finally:
            con.close()
        for table, columns in sorted(wanted):
            have = set(found.get(table, ()))
            missing = [c for c in columns if c not in have]
            if table not in found or missing:
                what = (
                    f"table {table!r}"
                    if table not in found
                    else (f"column(s) {', '.join(map(repr, missing))} of its table {table!r}")
                )
                raise StateError(
                    f"the state is damaged or was edited: it lacks the {what}; nothing was "
                    "written: `reconcile state restore` puts its backup back "
                    "(docs/state-recovery.md)"
                )

    def lineage(self) -> str | None:
        """The id made with this state (None before the first apply made it)."""
        row = self.con.execute(f"SELECT v FROM {self.c}.meta WHERE k = 'lineage'").fetchone()
        return row[0] if row else None

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

    def rejections(self, activation_id: str, limit: int) -> list[tuple]:
        """(run_id, grp, key, op, record, reason, rejected_at) of the members a destination
        rejected, newest first; none in a state written before rejections were kept."""
        has_table = self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = ?",
            [self.c, "rejections"],
        ).fetchall()[0][0]
        if not has_table:
            return []
        return self.con.execute(
            f"""SELECT run_id, grp, key, op, record, reason, rejected_at
                FROM {self.c}.rejections WHERE activation_id = ?
                ORDER BY rejected_at DESC, run_id DESC, key LIMIT ?""",
            [activation_id, limit],
        ).fetchall()

    def pending_create(self, activation_id: str, grp: str) -> tuple[str, str] | None:
        """The creation key and audience name of an audience creation journaled by a run
        that stopped before recording its outcome, or None."""
        row = self.con.execute(
            f"""SELECT batch_id, detail FROM {self.c}.journal WHERE status = 'intent'
                AND op = 'create' AND activation_id = ? AND grp = ?
                ORDER BY started_at DESC LIMIT 1""",
            [activation_id, grp],
        ).fetchone()
        return (row[0], row[1] or "") if row else None

    # -------------------------------------------------- SQL relations for the engine's diffs
    def any_member(self, activation_id: str) -> bool:
        """Whether any member is recorded for the activation (stops at the first one)."""
        sql = self.members_sql(activation_id)
        return bool(self.con.execute(f"SELECT EXISTS (SELECT 1 FROM {sql})").fetchall()[0][0])

    def in_flight(self, activation_id: str | None = None) -> int:
        """Members of calls a run that died left without a recorded answer (of one activation,
        or of all): the next apply records them as possibly sent before it plans
        (:meth:`~reconciler.state.member_writes.MemberWrites.close_interrupted_batches`)."""
        where = "" if activation_id is None else f"AND j.activation_id = {_lit(activation_id)}"
        try:
            row = self.con.execute(
                f"""SELECT count(*) FROM {self.c}.inflight i JOIN {self.c}.journal j
                    ON j.batch_id = i.batch_id WHERE j.status = 'intent' {where}"""
            ).fetchone()
        except duckdb.CatalogException:  # a state from before calls in flight were kept
            return 0
        return int(row[0]) if row else 0

    def jobs_submitted(self) -> int:
        """Asynchronous jobs a run that died left submitted (polled by the next apply)."""
        try:
            return int(self.con.execute(f"SELECT count(*) FROM {self.c}.jobs").fetchall()[0][0])
        except duckdb.CatalogException:  # a state from before jobs existed
            return 0

    def members_sql(self, activation_id: str) -> str:
        """The recorded members of one activation as a SQL relation
        ``(key, grp, fp, record)`` for the diff queries of the engine session."""
        return (
            f"(SELECT key, grp, fp, record FROM {self.c}.members "
            f"WHERE activation_id = {_lit(activation_id)})"
        )


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


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
