"""StateStore: the writing side of the state, used only by apply (and ``state`` commands).

Every method is one transaction, so a process killed at any point leaves the state as it
was before or after that step, never in between."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Any

import duckdb

from reconciler.state.store import StateReader

#: the name a confirmed batch's Arrow rows are scanned under while they are recorded
_BATCH = "__reconcile_confirmed_batch"


def _now() -> datetime:
    return datetime.now(UTC)


class StateStore(StateReader):
    _in_transaction = False

    @contextmanager
    def transaction(self):
        """One transaction; an inner ``transaction()`` joins the enclosing one."""
        if self._in_transaction:
            yield
            return
        self._in_transaction = True
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        finally:
            self._in_transaction = False
        self.con.execute("COMMIT")

    # ------------------------------------------------------------------ activations
    def ensure_activation(
        self, activation_id: str, *, destination: str, frequency: str, date_created: date
    ) -> None:
        """Create the activation's row (status New) if it has none."""
        self.con.execute(
            f"""INSERT OR IGNORE INTO {self.c}.activations
            (id, spec, spec_digest, serial, status, destination, frequency, paused, split_seed,
             date_created, created_at, updated_at, ran)
            VALUES (?, '{{}}', '', 0, 'New', ?, ?, FALSE, ?, ?, ?, ?, FALSE)""",
            [activation_id, destination, frequency, activation_id, date_created, _now(), _now()],
        )

    def record_spec(
        self,
        activation_id: str,
        spec: dict[str, Any],
        spec_digest: str,
        *,
        frequency: str,
        paused: bool,
        destination: str,
    ) -> None:
        self.con.execute(
            f"""UPDATE {self.c}.activations SET spec = ?, spec_digest = ?, frequency = ?,
                paused = ?, destination = ?, updated_at = ? WHERE id = ?""",
            [
                json.dumps(spec, sort_keys=True),
                spec_digest,
                frequency,
                paused,
                destination,
                _now(),
                activation_id,
            ],
        )

    def bump_serial(self, activation_id: str) -> None:
        self.con.execute(
            f"UPDATE {self.c}.activations SET serial = serial + 1 WHERE id = ?", [activation_id]
        )

    def set_status(
        self,
        activation_id: str,
        status: str,
        error: str | None = None,
        *,
        success: bool = False,
        ran: bool = False,
    ) -> None:
        sets = "status = ?, error = ?, last_run_at = ?"
        params: list[Any] = [status, error, _now()]
        if success:
            sets += ", last_success_at = ?"
            params.append(_now())
        if ran:
            sets += ", ran = TRUE"
        self.con.execute(
            f"UPDATE {self.c}.activations SET {sets} WHERE id = ?", [*params, activation_id]
        )

    def move_activation(self, old: str, new: str) -> None:
        with self.transaction():
            for table, col in (
                ("activations", "id"),
                ("audiences", "activation_id"),
                ("members", "activation_id"),
                ("runs", "activation_id"),
                ("journal", "activation_id"),
                ("member_attributes", "activation_id"),
            ):
                self.con.execute(
                    f"UPDATE {self.c}.{table} SET {col} = ? WHERE {col} = ?", [new, old]
                )

    def record_attributes(self, activation_id: str, **sql: str) -> int:
        """Rewrite the per-attribute hashes of a ``sync_attributes`` activation's members
        (:func:`reconciler.state.attributes.record`, whose keywords ``sql`` are); returns
        the rows written."""
        from reconciler.state import attributes

        return attributes.record(self.con, self.c, activation_id, **sql)

    def forget_activation(self, activation_id: str) -> None:
        """Drop an activation from management; its run history stays for `log`. Creations it
        left pending are closed: a re-added activation of the same id is a new generation and
        creates its own audiences."""
        with self.transaction():
            for table in ("members", "audiences", "member_attributes"):
                self.con.execute(
                    f"DELETE FROM {self.c}.{table} WHERE activation_id = ?", [activation_id]
                )
            self.con.execute(f"DELETE FROM {self.c}.activations WHERE id = ?", [activation_id])
            self.con.execute(
                f"""UPDATE {self.c}.journal SET status = 'abandoned', finished_at = ?
                    WHERE activation_id = ? AND status = 'intent'""",
                [_now(), activation_id],
            )

    # ------------------------------------------------------------------ audiences
    def record_audience(
        self, activation_id: str, grp: str, name: str, resource_id: str | None, sent: bool
    ) -> None:
        self.con.execute(
            f"""INSERT INTO {self.c}.audiences VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (activation_id, grp) DO UPDATE SET name = excluded.name,
                resource_id = excluded.resource_id, sent = excluded.sent""",
            [activation_id, grp, name, resource_id, sent, _now()],
        )

    def drop_audience(self, activation_id: str, grp: str) -> None:
        self.con.execute(
            f"DELETE FROM {self.c}.audiences WHERE activation_id = ? AND grp = ?",
            [activation_id, grp],
        )

    # ------------------------------------------------------------------ journal
    def journal_intent(
        self,
        batch_id: str,
        run_id: str,
        activation_id: str,
        grp: str,
        op: str,
        size: int,
        detail: str | None = None,
    ) -> None:
        """Record, before a destination call, that it is about to be made with this batch id
        (its idempotency key). ``detail`` of an audience creation is the audience's name."""
        self.con.execute(
            f"INSERT INTO {self.c}.journal VALUES (?, ?, ?, ?, ?, ?, 'intent', ?, ?, NULL)",
            [batch_id, run_id, activation_id, grp, op, size, detail, _now()],
        )

    def _journal_outcome(self, batch_id: str, status: str, detail: str | None) -> None:
        self.con.execute(
            f"""UPDATE {self.c}.journal SET status = ?, detail = ?, finished_at = ?
                WHERE batch_id = ? AND status = 'intent'""",
            [status, detail, _now(), batch_id],
        )

    def journal_outcome(self, batch_id: str, status: str, detail: str | None = None) -> None:
        self._journal_outcome(batch_id, status, detail)

    def close_interrupted_batches(self) -> int:
        """Member batches whose process died before the destination's answer was recorded:
        their members were not recorded, so the new plan contains them again. Close those
        intents (audience creates stay open: they are resolved by looking the audience up by
        name; so do exports: the next one writes the same files again, see
        ``reconciler.apply.export``)."""
        return self.con.execute(
            f"""UPDATE {self.c}.journal SET status = 'interrupted', finished_at = ?,
                detail = 'the run stopped before the answer was recorded; '
                         || 'its members were planned again'
                WHERE status = 'intent' AND op NOT IN ('create', 'export')""",
            [_now()],
        ).fetchall()[0][0]

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
        detail: str | None = None,
        status: str = "done",
        counts: Mapping[str, int] | None = None,
        rejections: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        """After the destination confirmed a batch: drop the ``delete`` keys' records, add the
        ``insert`` rows (key, record, fingerprint — None when a removal is still owed), close
        the batch's intent and add ``counts`` (added/removed/updated/failed) to the run, in one
        transaction, so a killed run's log counts exactly what was recorded."""
        with self.transaction():
            if delete:
                self._delete_members(activation_id, grp, delete)
            self._insert_members(activation_id, grp, insert)
            if batch_id:
                self._journal_outcome(batch_id, status, detail)
            if run_id and counts and any(counts.values()):
                self._add_run_counts(run_id, counts)
            if rejections:
                self._add_rejections(run_id, activation_id, grp, rejections)

    def record_sent(
        self,
        batch_id: str,
        batch: Any,
        activation_id: str,
        grp: str,
        *,
        run_id: str,
        counts: Mapping[str, int],
        skip: Sequence[str] = (),
        rejected: Mapping[str, str] | None = None,
        ids: Mapping[str, Sequence[str]] | None = None,
        detail: str | None = None,
    ) -> None:
        """Record a confirmed batch of additions straight from its Arrow rows (``key``,
        ``rec``, ``fp``: a batch of the engine's send table) with one ``INSERT ... SELECT``:
        accepted members with their records (or the destination's ``ids``), rejected ones
        with an empty record and their reason; ``skip`` (retry later) is not recorded."""
        rejected = dict(rejected or {})
        ids = dict(ids or {})
        left_out = [*skip, *rejected, *ids]
        sent = _BATCH
        self.con.register(sent, batch)
        try:
            with self.transaction():
                self.con.execute(
                    f"""INSERT INTO {self.c}.members
                        SELECT $aid, $grp, key, rec, fp FROM {sent}
                        WHERE key NOT IN (SELECT unnest($out::VARCHAR[]))""",
                    {"aid": activation_id, "grp": grp, "out": left_out},
                )
                extra = [(k, tuple(v), None) for k, v in ids.items()]
                if extra or rejected:
                    fps = dict(
                        self.con.execute(
                            f"SELECT key, fp FROM {sent} WHERE key IN (SELECT unnest(?::VARCHAR[]))",
                            [[*ids, *rejected]],
                        ).fetchall()
                    )
                    rows = [(k, rec, fps.get(k)) for k, rec, _ in extra]
                    rows += [(k, (), fps.get(k)) for k in rejected]
                    self._insert_members(activation_id, grp, rows)
                if batch_id:
                    self._journal_outcome(batch_id, "done", detail)
                if run_id and any(counts.values()):
                    self._add_run_counts(run_id, counts)
                if rejected:  # with the record the destination refused (from the batch)
                    self.con.execute(
                        f"""INSERT INTO {self.c}.rejections
                            SELECT $run, $aid, $grp, s.key, 'add', s.rec, r.reason, $now
                            FROM {sent} s JOIN (SELECT unnest($keys::VARCHAR[]) AS key,
                                                       unnest($why::VARCHAR[]) AS reason) r
                            ON r.key = s.key""",
                        {
                            "run": run_id or None,
                            "aid": activation_id,
                            "grp": grp,
                            "now": _now(),
                            "keys": list(rejected),
                            "why": list(rejected.values()),
                        },
                    )
        finally:
            self.con.unregister(sent)

    def record_export(
        self,
        table: str,
        batch_id: str,
        activation_id: str,
        grp: str,
        *,
        run_id: str,
        detail: str,
        counts: Mapping[str, int],
    ) -> None:
        """Record a published export (``reconciler.apply.export``) from the engine's export
        ``table`` (``key, op, present, rec, fp``): leavers and the old rows of changed members
        go, entering and changed members still in the source are recorded, the intent closes
        with ``detail`` and the run counts, in one transaction."""
        aid = {"aid": activation_id, "grp": grp}
        with self.transaction():
            self.con.execute(
                f"""DELETE FROM {self.c}.members WHERE activation_id = $aid AND grp = $grp
                    AND key IN (SELECT key FROM {table}
                                WHERE op = 'remove' OR (present AND op = 'update'))""",
                aid,
            )
            self.con.execute(
                f"""INSERT INTO {self.c}.members SELECT $aid, $grp, key, rec, fp FROM {table}
                    WHERE present AND op IN ('add', 'update')""",
                aid,
            )
            self._journal_outcome(batch_id, "done", detail)
            if run_id and any(counts.values()):
                self._add_run_counts(run_id, counts)

    # ------------------------------------------------------------------ asynchronous jobs
    def submit_job(
        self,
        batch_id: str,
        *,
        run_id: str,
        activation_id: str,
        grp: str,
        op: str,
        job: str,
        audience_id: str,
        keys: Sequence[str],
        records: Sequence[Sequence[str]],
        fps: Sequence[int | None],
    ) -> None:
        """A destination accepted a batch as an asynchronous job: keep the job and its members
        and mark the intent submitted, in one transaction."""
        with self.transaction():
            self.con.execute(
                f"INSERT INTO {self.c}.jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    batch_id,
                    run_id,
                    activation_id,
                    grp,
                    op,
                    job,
                    audience_id,
                    list(keys),
                    [list(r) for r in records],
                    list(fps),
                    _now(),
                ],
            )
            self.con.execute(
                f"""UPDATE {self.c}.journal SET status = 'submitted', detail = ?
                    WHERE batch_id = ? AND status = 'intent'""",
                [f"job {job}", batch_id],
            )

    def pending_jobs(self) -> list[dict[str, Any]]:
        """Jobs submitted and not yet recorded (a run that died while they ran)."""
        try:
            rows = self.con.execute(
                f"""SELECT j.batch_id, j.run_id, j.activation_id, j.grp, j.op, j.job,
                       j.audience_id, j.keys, j.records, j.fps, a.destination
                    FROM {self.c}.jobs j LEFT JOIN {self.c}.activations a
                    ON a.id = j.activation_id ORDER BY j.submitted_at"""
            ).fetchall()
        except duckdb.CatalogException:  # a state from before jobs existed (read-only)
            return []
        cols = [
            "batch_id",
            "run_id",
            "activation_id",
            "grp",
            "op",
            "job",
            "audience_id",
            "keys",
            "records",
            "fps",
            "destination",
        ]
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def finish_job(
        self,
        job: Mapping[str, Any],
        *,
        rejected: Mapping[str, str],
        retry: Sequence[str],
        detail: str | None,
    ) -> dict[str, int]:
        """Record a finished job's members like a synchronous batch of its op (``add`` or
        ``remove``) and drop the job, in one transaction. Returns the counts."""
        keys, records, fps = job["keys"], job["records"], job["fps"]
        skip = set(retry) | set(rejected)
        ok = [i for i, k in enumerate(keys) if k not in skip]
        with self.transaction():
            if job["op"] == "remove":
                self._delete_members(job["activation_id"], job["grp"], [keys[i] for i in ok])
                counts = {"removed": len(ok), "failed": len(rejected) + len(retry)}
            else:
                rows = [(keys[i], tuple(records[i] or ()), fps[i]) for i in ok]
                rows += [(k, (), fps[keys.index(k)]) for k in rejected]
                self._insert_members(job["activation_id"], job["grp"], rows)
                counts = {"added": len(ok), "failed": len(rejected)}
            self.con.execute(f"DELETE FROM {self.c}.jobs WHERE batch_id = ?", [job["batch_id"]])
            self._journal_outcome_any(job["batch_id"], detail)
            if job["run_id"]:
                self._add_run_counts(job["run_id"], counts)
            if rejected:
                op = "remove" if job["op"] == "remove" else "add"
                self._add_rejections(
                    job["run_id"],
                    job["activation_id"],
                    job["grp"],
                    [(k, op, r) for k, r in rejected.items()],
                )
        return counts

    def _journal_outcome_any(self, batch_id: str, detail: str | None) -> None:
        self.con.execute(
            f"""UPDATE {self.c}.journal SET status = 'done', detail = ?, finished_at = ?
                WHERE batch_id = ? AND status IN ('intent', 'submitted')""",
            [detail, _now(), batch_id],
        )

    def _delete_members(self, activation_id: str, grp: str, keys: Sequence[str]) -> None:
        self.con.execute(
            f"""DELETE FROM {self.c}.members WHERE activation_id = ? AND grp = ?
                AND key IN (SELECT unnest(?::VARCHAR[]))""",
            [activation_id, grp, list(keys)],
        )

    def _insert_members(
        self, activation_id: str, grp: str, rows: Sequence[tuple[str, Sequence[str], int | None]]
    ) -> None:
        if rows:
            self.con.execute(
                f"""INSERT INTO {self.c}.members
                    SELECT ?, ?, unnest(?::VARCHAR[]), unnest(?::VARCHAR[][]),
                           unnest(?::UBIGINT[])""",
                [
                    activation_id,
                    grp,
                    [r[0] for r in rows],
                    [list(r[1]) for r in rows],
                    [r[2] for r in rows],
                ],
            )

    def drop_staged(
        self, changes: str, activation_id: str, grp: str, op: str, keys: Sequence[str]
    ) -> None:
        """Unstage ``op`` for ``keys`` (recorded meanwhile by a resumed job)."""
        if not self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name || '.' || table_name = ?",
            [changes],
        ).fetchall()[0][0]:
            return
        self.con.execute(
            f"""DELETE FROM {changes} WHERE activation_id = ? AND grp = ? AND op = ?
                AND key IN (SELECT unnest(?::VARCHAR[]))""",
            [activation_id, grp, op, list(keys)],
        )

    def record_unsendable(self, send: str, activation_id: str, grp: str, *, op: str) -> int:
        """Record the members of the send table's ``op`` rows with no usable identifier with
        an empty record (they are not re-sent until their identifiers change). Returns how
        many."""
        return self.con.execute(
            f"""INSERT INTO {self.c}.members
                SELECT ?, ?, key, rec, fp FROM {send} WHERE op = ? AND NOT sendable""",
            [activation_id, grp, op],
        ).fetchall()[0][0]

    def count_staged(self, changes: str, activation_id: str, grp: str, op: str) -> int:
        return self.con.execute(
            f"SELECT count(*) FROM {changes} WHERE activation_id = ? AND grp = ? AND op = ?",
            [activation_id, grp, str(op)],
        ).fetchall()[0][0]

    def _add_rejections(
        self, run_id: str, activation_id: str, grp: str, rows: Sequence[tuple[str, str, str]]
    ) -> None:
        """Keep (key, op, reason) of refused members, with the record recorded for them."""
        self.con.execute(
            f"""INSERT INTO {self.c}.rejections
                SELECT ?, ?, ?, r.key, r.op, m.record, r.reason, ?
                FROM (SELECT unnest(?::VARCHAR[]) AS key, unnest(?::VARCHAR[]) AS op,
                             unnest(?::VARCHAR[]) AS reason) r
                LEFT JOIN {self.c}.members m ON m.activation_id = ? AND m.grp = ?
                    AND m.key = r.key""",
            [
                run_id or None,
                activation_id,
                grp,
                _now(),
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                activation_id,
                grp,
            ],
        )

    def _add_run_counts(self, run_id: str, counts: Mapping[str, int]) -> None:
        cols = [c for c in ("added", "removed", "updated", "failed") if counts.get(c)]
        sets = ", ".join(f"{c} = coalesce({c}, 0) + ?" for c in cols)
        self.con.execute(
            f"UPDATE {self.c}.runs SET {sets} WHERE run_id = ?",
            [*(counts[c] for c in cols), run_id],
        )

    # ------------------------------------------------------------------ members (reads for apply)
    def iter_removals(
        self, cursor, changes: str, activation_id: str, grp: str, op: str, size: int
    ) -> Iterator[list[tuple[str, tuple[str, ...]]]]:
        """Batches of (key, recorded record) of the staged ``op`` changes, streamed on
        ``cursor`` (another connection of the session, so writes can go on meanwhile)."""
        cursor.execute(
            f"""SELECT c.key, m.record FROM {changes} c
                JOIN {self.c}.members m ON m.activation_id = c.activation_id
                 AND m.grp = c.grp AND m.key = c.key
                WHERE c.activation_id = ? AND c.grp = ? AND c.op = ? ORDER BY c.key""",
            [activation_id, grp, op],
        )
        while rows := cursor.fetchmany(size):
            yield [(k, tuple(rec or ())) for k, rec in rows]

    def records_of(
        self, activation_id: str, grp: str, keys: Sequence[str]
    ) -> dict[str, tuple[str, ...]]:
        """The recorded records of ``keys``."""
        rows = self.con.execute(
            f"SELECT key, record FROM {self.c}.members WHERE activation_id = ? AND grp = ? "
            "AND key IN (SELECT unnest(?::VARCHAR[]))",
            [activation_id, grp, list(keys)],
        ).fetchall()
        return {k: tuple(rec or ()) for k, rec in rows}

    def shared_records(self, changes: str, activation_id: str, grp: str) -> set[str]:
        """Records held both by members who leave or change and by members who stay: a hash
        shared with a leaving member (a shared inbox) is not removed while an included profile
        still has it."""
        rows = self.con.execute(
            f"""WITH leaving AS (SELECT key FROM {changes}
                    WHERE activation_id = $1 AND grp = $2 AND op IN ('remove', 'update')),
                mine AS (SELECT key, record FROM {self.c}.members
                    WHERE activation_id = $1 AND grp = $2),
                leaving_r AS (SELECT DISTINCT unnest(record) AS r FROM mine SEMI JOIN leaving
                    USING (key)),
                staying_r AS (SELECT unnest(record) AS r FROM mine ANTI JOIN leaving
                    USING (key))
                SELECT DISTINCT r FROM staying_r SEMI JOIN leaving_r USING (r)""",
            [activation_id, grp],
        ).fetchall()
        return {r[0] for r in rows}

    def held_by_others(
        self, activation_id: str, grp: str, keys: Sequence[str], candidates: Sequence[str]
    ) -> set[str]:
        """Which ``candidates`` a recorded member other than ``keys`` holds now."""
        rows = self.con.execute(
            f"""SELECT DISTINCT r FROM (SELECT unnest(record) AS r FROM {self.c}.members
                    WHERE activation_id = $1 AND grp = $2
                    AND key NOT IN (SELECT unnest($3::VARCHAR[])))
                WHERE r IN (SELECT unnest($4::VARCHAR[]))""",
            [activation_id, grp, list(keys), list(candidates)],
        ).fetchall()
        return {r[0] for r in rows}

    def forget_staged(self, changes: str, activation_id: str, grp: str) -> None:
        """Drop the records of the staged ``forget`` changes (no destination call)."""
        with self.transaction():
            self.con.execute(
                f"""DELETE FROM {self.c}.members WHERE activation_id = ? AND grp = ? AND key IN
                    (SELECT key FROM {changes}
                     WHERE activation_id = ? AND grp = ? AND op = 'forget')""",
                [activation_id, grp, activation_id, grp],
            )

    # ------------------------------------------------------------------ runs
    def start_run(self, run_id: str, activation_id: str, trigger: str) -> None:
        self.con.execute(
            f"""INSERT INTO {self.c}.runs (run_id, activation_id, trigger, started_at, status,
                added, removed, updated, failed) VALUES (?, ?, ?, ?, 'Running', 0, 0, 0, 0)""",
            [run_id, activation_id, trigger, _now()],
        )

    def add_run_note(self, run_id: str, note: str) -> None:
        """Append a note (e.g. a notification that could not be delivered) to a run's log."""
        self.con.execute(
            f"""UPDATE {self.c}.runs SET error = CASE WHEN error IS NULL OR error = '' THEN ?
                ELSE error || '; ' || ? END WHERE run_id = ?""",
            [note, note, run_id],
        )

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        audiences: list[dict[str, Any]],
        error: str | None,
    ) -> None:
        """Close a run. Its counts were added batch by batch (:meth:`confirm_batch`)."""
        self.con.execute(
            f"""UPDATE {self.c}.runs SET finished_at = ?, status = ?, audiences = ?, error = ?
                WHERE run_id = ?""",
            [_now(), str(status), json.dumps(audiences), error, run_id],
        )
