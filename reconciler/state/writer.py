"""StateStore: the writing side of the state, used only by apply (and ``state`` commands).

Every method is one transaction, so a process killed at any point leaves the state as it
was before or after that step, never in between. The activations, audiences, exports and
runs are written here; the rest comes in layers: ``journal_writes`` (transactions, the
journal of destination calls), ``member_writes`` (members' records) and ``job_writes``
(asynchronous jobs)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import date
from typing import Any

from reconciler.state.job_writes import JobWrites
from reconciler.state.journal_writes import utc_now


class StateStore(JobWrites):
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
            [
                activation_id,
                destination,
                frequency,
                activation_id,
                date_created,
                utc_now(),
                utc_now(),
            ],
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
                utc_now(),
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
        params: list[Any] = [status, error, utc_now()]
        if success:
            sets += ", last_success_at = ?"
            params.append(utc_now())
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
                [utc_now(), activation_id],
            )

    # ------------------------------------------------------------------ audiences
    def record_audience(
        self, activation_id: str, grp: str, name: str, resource_id: str | None, sent: bool
    ) -> None:
        self.con.execute(
            f"""INSERT INTO {self.c}.audiences VALUES (?, ?, ?, ?, ?, ?)
                ON CONFLICT (activation_id, grp) DO UPDATE SET name = excluded.name,
                resource_id = excluded.resource_id, sent = excluded.sent""",
            [activation_id, grp, name, resource_id, sent, utc_now()],
        )

    def drop_audience(self, activation_id: str, grp: str) -> None:
        self.con.execute(
            f"DELETE FROM {self.c}.audiences WHERE activation_id = ? AND grp = ?",
            [activation_id, grp],
        )

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

    # ------------------------------------------------------------------ runs
    def start_run(self, run_id: str, activation_id: str, trigger: str) -> None:
        self.con.execute(
            f"""INSERT INTO {self.c}.runs (run_id, activation_id, trigger, started_at, status,
                added, removed, updated, failed) VALUES (?, ?, ?, ?, 'Running', 0, 0, 0, 0)""",
            [run_id, activation_id, trigger, utc_now()],
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
            [utc_now(), str(status), json.dumps(audiences), error, run_id],
        )
