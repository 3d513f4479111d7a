"""The members' records: what a confirmed batch leaves in the state, and the reads apply makes
of them while it sends (removals, shared records, members held by other activations)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from reconciler.state.journal_writes import JournalWrites, utc_now

#: the name a confirmed batch's Arrow rows are scanned under while they are recorded
CONFIRMED_BATCH = "__reconcile_confirmed_batch"


#: what recovering a killed run's calls changed: (activation id, group, keys recorded anew
#: or changed)
Recovered = list[tuple[str, str, list[str]]]


class MemberWrites(JournalWrites):
    # ------------------------------------------------------------------ a killed run's calls
    def close_interrupted_batches(self) -> Recovered:
        """Member calls a run that died made (or was about to make) without recording the
        answer: the destination may or may not have applied them. Their members (kept in
        ``inflight`` with the intent) are recorded as *possibly sent* — with no fingerprint,
        so the next plan sends them again if they are still wanted and removes them if not:

        - an addition: a member not recorded is recorded with the strings the call sent;
        - an update: the strings it sent are added to the member's record;
        - a removal: the member stays recorded with its strings.

        Then the intents are closed as interrupted, in one transaction. Returns what changed
        per (activation, group)."""
        open_calls = f"""(SELECT j.activation_id, j.grp, j.op, i.key, i.record
            FROM {self.c}.inflight i JOIN {self.c}.journal j ON j.batch_id = i.batch_id
            WHERE j.status = 'intent' AND j.op IN ('add', 'update', 'remove'))"""
        # and the members holding a string such a removal may have removed (a shared inbox):
        # recorded as possibly sent too (see confirm_batch's removed_strings)
        co_holders = f"""(SELECT DISTINCT m.activation_id, m.grp, m.key, NULL AS record,
                'hold' AS op FROM {self.c}.members m JOIN {open_calls} f
                ON f.op = 'remove' AND m.activation_id = f.activation_id AND m.grp = f.grp
                AND NOT EXISTS (SELECT 1 FROM {open_calls} o WHERE o.activation_id =
                    m.activation_id AND o.grp = m.grp AND o.key = m.key)
                JOIN {self.c}.members r ON r.activation_id = f.activation_id AND r.grp = f.grp
                AND r.key = f.key AND list_has_any(m.record, r.record))"""
        open_calls = f"""(SELECT * FROM {open_calls} UNION ALL
            SELECT activation_id, grp, op, key, record FROM {co_holders})"""
        with self.transaction():
            touched = self.con.execute(
                f"""SELECT activation_id, grp, list(DISTINCT key ORDER BY key)
                    FROM {open_calls} GROUP BY ALL ORDER BY ALL"""
            ).fetchall()
            if touched:
                self.con.execute(
                    f"""UPDATE {self.c}.members SET fp = NULL,
                        record = CASE WHEN f.op = 'update' AND f.record IS NOT NULL
                            THEN list_concat(members.record, list_filter(f.record,
                                 lambda r: NOT list_contains(members.record, r)))
                            ELSE members.record END
                        FROM {open_calls} f
                        WHERE f.op IN ('update', 'remove', 'hold') AND members.activation_id =
                          f.activation_id AND members.grp = f.grp AND members.key = f.key"""
                )
                self.con.execute(
                    f"""INSERT INTO {self.c}.members
                        SELECT f.activation_id, f.grp, f.key, f.record, NULL FROM {open_calls} f
                        WHERE f.op = 'add' AND NOT EXISTS (
                            SELECT 1 FROM {self.c}.members m WHERE m.activation_id =
                            f.activation_id AND m.grp = f.grp AND m.key = f.key)"""
                )
            self._close_interrupted()
        return [(aid, grp, list(keys)) for aid, grp, keys in touched]

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
        removed_strings: Sequence[str] = (),
    ) -> None:
        """After the destination confirmed a batch: drop the ``delete`` keys' records, add the
        ``insert`` rows (key, record, fingerprint — None when a removal is still owed), close
        the batch's intent and add ``counts`` (added/removed/updated/failed) to the run, in one
        transaction, so a killed run's log counts exactly what was recorded.

        ``removed_strings``: strings the batch removed that other members still recorded may
        hold (a shared inbox whose holders all leave): those members lose their fingerprint,
        so a plan made before their own removal is recorded (the run stopped, or the
        destination asked to retry it) sends them again if they are still wanted."""
        with self.transaction():
            if delete:
                self._delete_members(activation_id, grp, delete)
            if removed_strings:
                self.con.execute(
                    f"""UPDATE {self.c}.members SET fp = NULL
                        WHERE activation_id = ? AND grp = ? AND fp IS NOT NULL
                        AND list_has_any(record, ?::VARCHAR[])""",
                    [activation_id, grp, list(removed_strings)],
                )
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
        sent = CONFIRMED_BATCH
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
                            "now": utc_now(),
                            "keys": list(rejected),
                            "why": list(rejected.values()),
                        },
                    )
        finally:
            self.con.unregister(sent)

    def record_sent_batches(
        self,
        parts: Sequence[Any],
        completed: Sequence[tuple[str, str | None]],
        activation_id: str,
        grp: str,
        *,
        run_id: str,
    ) -> None:
        """Record confirmed additions that the destination took whole (no member rejected,
        left for later or given an id of its own): ``parts``, Arrow rows of one or several
        calls (``key``, ``rec``, ``fp``), with one ``INSERT``; close the intents of the calls
        in ``completed`` (batch id, detail) — a call whose rows are split over two of these
        stays open until its last rows are recorded; add the rows to the run's count. The
        same rows, intents and counts as :meth:`record_sent` per call, in three statements."""
        import pyarrow as pa

        rows = pa.concat_tables(parts) if parts else None
        name = CONFIRMED_BATCH
        if rows is not None:
            self.con.register(name, rows)
        try:
            with self.transaction():
                if rows is not None and rows.num_rows:
                    self.con.execute(
                        f"INSERT INTO {self.c}.members SELECT $aid, $grp, key, rec, fp FROM {name}",
                        {"aid": activation_id, "grp": grp},
                    )
                if completed:
                    self._journal_done(completed)
                if run_id and rows is not None and rows.num_rows:
                    self._add_run_counts(run_id, {"added": rows.num_rows})
        finally:
            if rows is not None:
                self.con.unregister(name)

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
                utc_now(),
                [r[0] for r in rows],
                [r[1] for r in rows],
                [r[2] for r in rows],
                activation_id,
                grp,
            ],
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

    def lost_identifiers(self, send: str, activation_id: str, grp: str) -> int:
        """Members of the send table's updates with no usable identifier left whose recorded
        record is not empty: the update removes every string sent for them."""
        return self.con.execute(
            f"""SELECT count(*) FROM {send} s JOIN {self.c}.members m
                ON m.activation_id = ? AND m.grp = ? AND m.key = s.key
                WHERE s.op = 'update' AND NOT s.sendable AND len(m.record) > 0""",
            [activation_id, grp],
        ).fetchall()[0][0]

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

    def shared_records(
        self, changes: str, send: str, activation_id: str, grp: str
    ) -> tuple[set[str], set[str]]:
        """Of the records of members who leave or change (``changes``):

        - *protected*: those a member who stays holds — unchanged, or sent again by an update
          or an addition of the send table ``send`` (its ``rec``): a hash shared with a
          leaving member (a shared inbox) is not removed while an included profile has it;
        - *co-held*: the others held by several leaving members: the first removal of one
          removes it for all (see ``confirm_batch``'s ``removed_strings``)."""
        rows = self.con.execute(
            f"""WITH leaving AS (SELECT key FROM {changes}
                    WHERE activation_id = $1 AND grp = $2 AND op IN ('remove', 'update')),
                mine AS (SELECT key, record FROM {self.c}.members
                    WHERE activation_id = $1 AND grp = $2),
                leaving_r AS (SELECT key, unnest(record) AS r FROM mine SEMI JOIN leaving
                    USING (key)),
                lr AS (SELECT r, count(DISTINCT key) AS holders FROM leaving_r GROUP BY r),
                staying_r AS (SELECT unnest(record) AS r FROM mine ANTI JOIN leaving USING (key)
                    UNION ALL SELECT unnest(rec) FROM {send}
                    WHERE op IN ('update', 'add') AND sendable),
                -- probing the few leaving strings, not hashing every staying one
                kept AS (SELECT DISTINCT r FROM staying_r SEMI JOIN lr USING (r))
                SELECT lr.r, kept.r IS NOT NULL FROM lr LEFT JOIN kept USING (r)
                WHERE kept.r IS NOT NULL OR lr.holders > 1""",
            [activation_id, grp],
        ).fetchall()
        return {r for r, kept in rows if kept}, {r for r, kept in rows if not kept}

    def holders_of(self, activation_id: str, grp: str, strings: Sequence[str]) -> list[str]:
        """The recorded members holding any of ``strings``."""
        if not strings:
            return []
        rows = self.con.execute(
            f"""SELECT key FROM {self.c}.members WHERE activation_id = ? AND grp = ?
                AND list_has_any(record, ?::VARCHAR[])""",
            [activation_id, grp, list(strings)],
        ).fetchall()
        return [r[0] for r in rows]

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
