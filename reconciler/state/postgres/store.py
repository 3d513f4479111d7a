"""Writing the PostgreSQL state through the session's working copy (reading: :mod:`.reader`).

:class:`PostgresStateStore` is the embedded :class:`StateStore` (the same SQL, run on the
working copy in the engine session, so every read during apply sees what this run wrote)
plus, for each write, the rows it touched pushed to PostgreSQL in one PostgreSQL transaction
that commits before the working copy does. A write that PostgreSQL refuses (server gone, lock
broken) leaves both as they were: nothing is recorded that was not confirmed.

Member rows move in bulk (:func:`~reconciler.state.postgres.mirror.push`: one DELETE of a
batch's keys and one COPY), in the same transaction that closes the batch's journal intent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import psycopg

from reconciler.errors import StateError
from reconciler.state.member_writes import Recovered
from reconciler.state.postgres import mirror
from reconciler.state.postgres.db import PgDatabase
from reconciler.state.postgres.lock import held_lock_id
from reconciler.state.schema import CATALOG
from reconciler.state.writer import StateStore


class PostgresStateStore(StateStore):
    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        db: PgDatabase,
        pg: psycopg.Connection,
        tmp: Path,
        catalog: str = CATALOG,
    ):
        super().__init__(con, catalog)
        self.db, self.pg, self.tmp = db, pg, tmp
        self._depth = 0
        self._pending: list[tuple[str, Mapping[str, Any]]] = []
        self._raw: list[tuple[str, list[Any]]] = []

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._depth:  # joins the enclosing transaction
            yield
            return
        self._depth = 1
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
            self._flush()
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
            self._pending.clear()
            self._raw.clear()
        self.con.execute("COMMIT")

    def _sync(self, table: str, **where: Any) -> None:
        pushes = [(table, where)]
        if table == "journal" and "batch_id" in where:  # a call's members in flight go with it
            pushes.append(("inflight", where))
        # once per (table, rows): batch_id="b" and batch_id=["b"] select the same rows
        for push in pushes:
            key = _push_key(*push)
            if not any(t == push[0] and _push_key(t, w) == key for t, w in self._pending):
                self._pending.append(push)

    def _flush(self) -> None:
        if not self._pending and not self._raw:
            return
        s = self.db.schema
        with self.db.errors("recording the run"), self.pg.transaction():
            lock_id = held_lock_id(self.db)
            if lock_id is not None:
                row = self.pg.execute(
                    f"SELECT 1 FROM {s}.lock WHERE id = %s FOR SHARE", [lock_id]
                ).fetchone()
                if row is None:
                    raise StateError(
                        f"the state lock {lock_id} of this run was broken (`reconcile state "
                        "unlock`); nothing more is recorded — run the command again"
                    )
            for sql, params in self._raw:
                self.pg.execute(sql.format(s=s), params)
            for table, where in self._pending:
                mirror.push(self.pg, s, self.con, self.c, table, where, self.tmp)

    # ------------------------------------------------------------------ activations
    def ensure_activation(
        self, activation_id: str, *, destination: str, frequency: str, date_created: date
    ) -> None:
        with self.transaction():
            super().ensure_activation(
                activation_id,
                destination=destination,
                frequency=frequency,
                date_created=date_created,
            )
            self._sync("activations", id=activation_id)

    def record_spec(self, activation_id: str, *args: Any, **kwargs: Any) -> None:
        with self.transaction():
            super().record_spec(activation_id, *args, **kwargs)
            self._sync("activations", id=activation_id)

    def bump_serial(self, activation_id: str) -> None:
        with self.transaction():
            super().bump_serial(activation_id)
            self._sync("activations", id=activation_id)

    def set_status(self, activation_id: str, *args: Any, **kwargs: Any) -> None:
        with self.transaction():
            super().set_status(activation_id, *args, **kwargs)
            self._sync("activations", id=activation_id)

    def move_activation(self, old: str, new: str) -> None:
        with self.transaction():
            super().move_activation(old, new)
            for table, col in (
                ("activations", "id"),
                ("audiences", "activation_id"),
                ("members", "activation_id"),
                ("runs", "activation_id"),
                ("journal", "activation_id"),
                ("member_attributes", "activation_id"),
            ):
                self._raw.append(
                    (f"UPDATE {{s}}.{table} SET {col} = %s WHERE {col} = %s", [new, old])
                )

    def forget_activation(self, activation_id: str) -> None:
        with self.transaction():
            super().forget_activation(activation_id)
            self._sync("activations", id=activation_id)
            self._sync("audiences", activation_id=activation_id)
            self._sync("members", activation_id=activation_id)
            self._sync("member_attributes", activation_id=activation_id)
            self._sync("journal", activation_id=activation_id)

    def record_attributes(self, activation_id: str, **sql: str) -> int:
        """The embedded rewrite of the activation's per-attribute hashes, then the same rows
        in PostgreSQL (one DELETE and one COPY, in one PostgreSQL transaction)."""
        n = super().record_attributes(activation_id, **sql)
        with self.db.errors("recording the attribute hashes"), self.pg.transaction():
            mirror.push(
                self.pg,
                self.db.schema,
                self.con,
                self.c,
                "member_attributes",
                {"activation_id": activation_id},
                self.tmp,
            )
        return n

    # ------------------------------------------------------------------ audiences
    def record_audience(
        self, activation_id: str, grp: str, name: str, resource_id: str | None, sent: bool
    ) -> None:
        with self.transaction():
            super().record_audience(activation_id, grp, name, resource_id, sent)
            self._sync("audiences", activation_id=activation_id, grp=grp)

    def drop_audience(self, activation_id: str, grp: str) -> None:
        with self.transaction():
            super().drop_audience(activation_id, grp)
            self._sync("audiences", activation_id=activation_id, grp=grp)

    # ------------------------------------------------------------------ journal
    def journal_intent(self, batch_id: str, *args: Any, **kwargs: Any) -> None:
        with self.transaction():
            super().journal_intent(batch_id, *args, **kwargs)
            self._sync("journal", batch_id=batch_id)

    def journal_intents(self, batches: Sequence[tuple[str, int]], *args: Any) -> None:
        with self.transaction():
            super().journal_intents(batches, *args)
            if batches:
                self._sync("journal", batch_id=[b for b, _ in batches])

    def journal_outcome(self, batch_id: str, status: str, detail: str | None = None) -> None:
        with self.transaction():
            super().journal_outcome(batch_id, status, detail)
            self._sync("journal", batch_id=batch_id)

    def journal_inflight(self, batches: Sequence[tuple[str, Any]]) -> None:
        with self.transaction():
            super().journal_inflight(batches)
            self._sync("inflight", batch_id=[batch_id for batch_id, _ in batches])

    def journal_inflight_keys(self, batch_id: str, keys: Sequence[str]) -> None:
        with self.transaction():
            super().journal_inflight_keys(batch_id, keys)
            self._sync("inflight", batch_id=[batch_id])

    def journal_refused(self, batch_id: str) -> None:
        with self.transaction():
            super().journal_refused(batch_id)
            self._sync("inflight", batch_id=[batch_id])

    def close_interrupted_batches(self) -> Recovered:
        ids = [
            r[0]
            for r in self.con.execute(
                f"SELECT batch_id FROM {self.c}.journal WHERE status = 'intent' "
                "AND op NOT IN ('create', 'export')"
            ).fetchall()
        ]
        with self.transaction():
            recovered = super().close_interrupted_batches()
            for aid, grp, keys in recovered:
                self._members(aid, grp, keys)
            if ids:
                self._sync("journal", batch_id=ids)
        return recovered

    # ------------------------------------------------------------------ members
    def confirm_batch(
        self,
        batch_id: str,
        activation_id: str,
        grp: str,
        *,
        run_id: str = "",
        insert: Sequence[tuple[str, Sequence[str], int | None]] = (),
        delete: Sequence[str] = (),
        rejections: Sequence[tuple[str, str, str]] = (),
        **kwargs: Any,
    ) -> None:
        with self.transaction():
            # members that lose their fingerprint with the strings the batch removed
            holders = self.holders_of(activation_id, grp, kwargs.get("removed_strings") or ())
            super().confirm_batch(
                batch_id,
                activation_id,
                grp,
                run_id=run_id,
                insert=insert,
                delete=delete,
                rejections=rejections,
                **kwargs,
            )
            keys = {*delete, *(r[0] for r in insert), *holders}
            self._members(activation_id, grp, keys)
            self._batch(batch_id, run_id)
            self._rejections(run_id, activation_id, grp, [r[0] for r in rejections])

    def record_sent(
        self,
        batch_id: str,
        batch: Any,
        activation_id: str,
        grp: str,
        *,
        run_id: str,
        rejected: Mapping[str, str] | None = None,
        ids: Mapping[str, Sequence[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        with self.transaction():
            super().record_sent(
                batch_id,
                batch,
                activation_id,
                grp,
                run_id=run_id,
                rejected=rejected,
                ids=ids,
                **kwargs,
            )
            keys = set(batch.column("key").to_pylist())
            keys |= set(rejected or {}) | set(ids or {})
            self._members(activation_id, grp, keys)
            self._batch(batch_id, run_id)
            self._rejections(run_id, activation_id, grp, list(rejected or {}))

    def record_sent_batches(
        self,
        parts: Sequence[Any],
        completed: Sequence[tuple[str, str | None]],
        activation_id: str,
        grp: str,
        *,
        run_id: str,
    ) -> None:
        with self.transaction():
            super().record_sent_batches(parts, completed, activation_id, grp, run_id=run_id)
            keys = {k for rows in parts for k in rows.column("key").to_pylist()}
            self._members(activation_id, grp, keys)
            if completed:
                self._sync("journal", batch_id=[batch_id for batch_id, _ in completed])
            if run_id and keys:
                self._sync("runs", run_id=run_id)

    def record_unsendable(self, send: str, activation_id: str, grp: str, *, op: str) -> int:
        with self.transaction():
            n = super().record_unsendable(send, activation_id, grp, op=op)
            keys = [
                r[0]
                for r in self.con.execute(
                    f"SELECT key FROM {send} WHERE op = ? AND NOT sendable", [op]
                ).fetchall()
            ]
            self._members(activation_id, grp, keys)
        return n

    def forget_staged(self, changes: str, activation_id: str, grp: str) -> None:
        keys = [
            r[0]
            for r in self.con.execute(
                f"SELECT key FROM {changes} WHERE activation_id = ? AND grp = ? AND op = 'forget'",
                [activation_id, grp],
            ).fetchall()
        ]
        with self.transaction():
            super().forget_staged(changes, activation_id, grp)
            self._members(activation_id, grp, keys)

    def record_export(
        self, table: str, batch_id: str, activation_id: str, grp: str, **kwargs: Any
    ) -> None:
        keys = [r[0] for r in self.con.execute(f"SELECT key FROM {table}").fetchall()]
        with self.transaction():
            super().record_export(table, batch_id, activation_id, grp, **kwargs)
            self._members(activation_id, grp, keys)
            self._batch(batch_id, kwargs.get("run_id"))

    # ------------------------------------------------------------------ asynchronous jobs
    def submit_job(self, batch_id: str, **kwargs: Any) -> None:
        with self.transaction():
            super().submit_job(batch_id, **kwargs)
            self._sync("jobs", batch_id=batch_id)
            self._sync("journal", batch_id=batch_id)

    def finish_job(self, job: Mapping[str, Any], **kwargs: Any) -> dict[str, int]:
        with self.transaction():
            counts = super().finish_job(job, **kwargs)
            self._members(job["activation_id"], job["grp"], job["keys"])
            self._sync("jobs", batch_id=job["batch_id"])
            self._batch(job["batch_id"], job["run_id"])
            self._rejections(
                job["run_id"], job["activation_id"], job["grp"], list(kwargs.get("rejected", {}))
            )
        return counts

    # ------------------------------------------------------------------ runs
    def start_run(self, run_id: str, activation_id: str, trigger: str) -> None:
        with self.transaction():
            super().start_run(run_id, activation_id, trigger)
            self._sync("runs", run_id=run_id)

    def add_run_note(self, run_id: str, note: str) -> None:
        with self.transaction():
            super().add_run_note(run_id, note)
            self._sync("runs", run_id=run_id)

    def finish_run(self, run_id: str, status: str, **kwargs: Any) -> None:
        with self.transaction():
            super().finish_run(run_id, status, **kwargs)
            self._sync("runs", run_id=run_id)

    # ------------------------------------------------------------------ helpers
    def _members(self, activation_id: str, grp: str, keys) -> None:
        if keys:
            self._sync("members", activation_id=activation_id, grp=grp, key=sorted(keys))

    def _batch(self, batch_id: str, run_id: str | None) -> None:
        if batch_id:
            self._sync("journal", batch_id=batch_id)
        if run_id:
            self._sync("runs", run_id=run_id)

    def _rejections(self, run_id: str | None, activation_id: str, grp: str, keys) -> None:
        if keys:
            # every rejection of these keys (the working copy holds them all)
            self._sync("rejections", activation_id=activation_id, grp=grp, key=sorted(keys))


def _push_key(table: str, where: Mapping[str, Any]) -> tuple:
    """What a push selects, with a single value and a list of it alike."""
    return table, tuple(
        sorted(
            (col, tuple(v) if isinstance(v, list | tuple | set | frozenset) else (v,))
            for col, v in where.items()
        )
    )


#: StateStore methods that only read (or only touch the plan's staging tables): every other
#: public method writes and must be overridden above (tests/test_state_backends.py checks it)
READ_ONLY = frozenset(
    {
        "transaction",
        "pending_jobs",
        "drop_staged",
        "count_staged",
        "iter_removals",
        "records_of",
        "lost_identifiers",
        "shared_records",
        "holders_of",
        "held_by_others",
    }
)
