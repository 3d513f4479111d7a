"""The membership diff inside PostgreSQL, next to the data (a PostgreSQL source with
``source.diff: postgres``, the default). Only what changes travels into the engine.

For each activation PostgreSQL computes, in temporary tables of the source connection and
inside the one READ ONLY transaction (statement timeout, search path) every untrusted query
runs in (:mod:`reconciler.sources.pg_transaction`, which also moves rows in and out), what :func:`reconciler.plan.membership.stage_desired` computes in the engine: every
segment key with its exclusion flags, split group and fingerprint — with expressions that
give the engine's values bit for bit (the fingerprint is the low 64 bits of the same MD5 over
the same bytes; proven equal by tests/test_pg_pushdown.py) — and the counts. It compares that
with the recorded members: read from the state's own table when the state lives in the same
PostgreSQL database, otherwise sent there as keys, groups and fingerprints (COPY). A key
whose row is *quiet* — recorded unchanged and still eligible, or neither recorded nor
eligible — cannot produce any change; everything else (entering, leaving, changed, held,
excluded members) travels into the engine: its desired row, its recorded row and its profile
row. The engine then stages the changes with the same SQL as always
(:func:`~reconciler.plan.membership.stage_changes`), so both paths plan the same changes.

An activation whose fingerprint reads a column whose text could differ between PostgreSQL
and the engine (floating point, timestamps, ``char(n)``), or with ``goal: sync_attributes``
(per-attribute hashes), runs in the engine: its segments and all profiles are copied in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import duckdb

from reconciler.sources.pg_keys import profile_key_sql, segment_key_sql
from reconciler.sources.pg_transaction import PushdownTransaction
from reconciler.sources.pg_twins import ident, lo64, quiet_sql, unsigned

if TYPE_CHECKING:
    from reconciler.sources.postgres_source import PostgresProfilesSource


class Pushdown(PushdownTransaction):
    """The PostgreSQL side of one engine session (see the module's docstring)."""

    def __init__(
        self,
        source: PostgresProfilesSource,
        con: duckdb.DuckDBPyConnection,
        columns: dict[str, tuple[str, int | None, int | None]],
        projection: list[str],
        types: dict[str, str],
    ):
        super().__init__(source, con)
        #: the profiles table's PostgreSQL column types (name -> type, precision, scale)
        self.columns = columns
        #: what travels of a profile (select list over ``p``) and its engine types
        self.projection, self.types = projection, types
        #: the profile key's text and a segment key's, one text per value (pg_keys)
        self.key = profile_key_sql(source.profiles.key, columns[source.profiles.key])
        self.key_column = columns[source.profiles.key]
        self.table = ident(source.profiles.table)
        self._segments = 0
        self._all_shipped = False

    # ------------------------------------------------------------------ segments
    def segment(self, sql: str, column: str, where: str, what: str) -> tuple[int, int, int, int]:
        """Materialise a segment's keys in PostgreSQL: (id, rows, non-NULL keys, distinct)."""
        seg = self._segments
        self._segments += 1
        self.run(
            f"INSERT INTO pg_temp.rk_seg SELECT {int(seg)}, "
            f"{segment_key_sql(f'q.{ident(column)}', self.key_column)} FROM (\n{sql}\n) AS q",
            where=where,
            what=what,
            user=sql,
        )
        self.run("ANALYZE pg_temp.rk_seg", where=where, what=what)
        row = self.run(  # one hash aggregate (count(DISTINCT) would sort)
            "SELECT coalesce(sum(n), 0), coalesce(sum(n) FILTER (WHERE k IS NOT NULL), 0), "
            "count(*) FILTER (WHERE k IS NOT NULL) FROM (SELECT k, count(*) AS n "
            "FROM pg_temp.rk_seg WHERE seg = %s GROUP BY k) g",
            [seg],
            where=where,
            what=what,
        ).fetchone()
        assert row is not None
        return seg, int(row[0]), int(row[1]), int(row[2])

    def ship_segment(self, seg: int, table: str) -> None:
        """A segment's distinct keys into the engine (an activation planned there)."""
        self.copy_out(
            f"SELECT DISTINCT k FROM pg_temp.rk_seg WHERE seg = {int(seg)}",
            f"CREATE OR REPLACE TEMP TABLE {table} AS",
            {"k": "VARCHAR"},
        )

    # ------------------------------------------------------------------ profiles
    def ship_all_profiles(self) -> None:
        """Every profile (an activation planned in the engine)."""
        if not self._all_shipped:
            self._ship_profiles("TRUE")
            self._all_shipped = True

    def _ship_profiles(self, condition: str) -> None:
        """Copy the profile rows matching ``condition`` (over ``p``; ``{key}`` is the key as
        text) into the engine; rows of keys copied before (for another activation) are
        skipped there, and all rows of a key (held: several) come in the same copy."""
        if self._all_shipped:
            return
        query = self.source.profiles_query(
            self.projection, f"WHERE {condition.format(key=self.key)}"
        )
        table = f'"{self.source.profiles.table}"'
        key = f'"{self.source.profiles.key}"'
        self.copy_out(
            query,
            f"INSERT INTO {table}",
            self.types,
            f"ANTI JOIN {table} x ON x.{key} = r.{key}",
        )

    def ship_profiles_of(self, keys: str) -> None:
        """An apply's session: only the profiles of ``keys`` (a SQL relation with column
        ``k`` in the engine: the keys of the plan's member changes) — sent to PostgreSQL and
        the matching rows copied back."""
        self.copy_in(f"SELECT DISTINCT k FROM {keys}", "pg_temp.rk_moving", "k")
        self.run("ANALYZE pg_temp.rk_moving", where=self.source._where(), what="copying keys")
        self._ship_profiles("{key} IN (SELECT k FROM pg_temp.rk_moving)")

    # ------------------------------------------------------------------ one activation
    def stage(
        self,
        *,
        segments: Sequence[int],
        key_count: int | None,
        suppression: Sequence[int],
        consent: str,
        bucket_digest: str | None,
        group_label: Callable[[str | None], str],
        fingerprint_digest: str | None,
        matchable: str,
        recorded: str | None,
        recorded_local: str | None,
        gone: Sequence[str],
        mode: str,
        tables: dict[str, str],
        where: str,
    ) -> tuple[dict[str, int], list[str], int]:
        """Compute desired rows, held keys and counts in PostgreSQL and copy the rows of
        the moving keys into the engine's ``tables`` (desired, recorded, suppressed,
        duplicates, moving). ``key_count``: how many distinct keys the one segment has (None:
        several segments, or one that returned a key twice). ``recorded`` is the state's member relation in PostgreSQL
        (``key, grp, fp`` with a signed fingerprint), or None when ``recorded_local`` (the
        engine's) is sent there. Returns (counts, a few held keys, how many held keys)."""
        what = "the audience query (consent condition)"
        run = lambda sql: self.run(sql, where=where, what=what)  # noqa: E731
        for table in (
            "rk_desired",
            "rk_dups",
            "rk_moving",
            "rk_leavers",
            "rk_recorded",
            "rk_members",
        ):
            run(f"DELETE FROM pg_temp.{table}")
        if recorded is None:
            assert recorded_local is not None
            self.copy_in(
                "SELECT key, grp, CAST(CASE WHEN fp >= 9223372036854775808 "
                "THEN fp::HUGEINT - 18446744073709551616 ELSE fp::HUGEINT END AS BIGINT) "
                f"FROM {recorded_local}",
                "pg_temp.rk_recorded",
                "key, grp, fp",
            )
            run("ANALYZE pg_temp.rk_recorded")
            recorded = "pg_temp.rk_recorded"
        segs = ", ".join(str(int(s)) for s in segments)
        supp = ", ".join(str(int(s)) for s in suppression)
        distinct = "" if key_count is not None else "DISTINCT"
        keys = f"(SELECT {distinct} k FROM pg_temp.rk_seg WHERE seg IN ({segs}))"
        suppressed = f"(SELECT DISTINCT k FROM pg_temp.rk_seg WHERE seg IN ({supp}))"
        # the digests in a subquery of their own (OFFSET 0 keeps it one): each is computed
        # once per row, and lo64 reads its bytes
        inserted = run(
            f"""INSERT INTO pg_temp.rk_desired
            SELECT key, FALSE, unknown, suppressed, no_consent, matchable,
                   {group_label("b.gs" if bucket_digest else None)}, fp
            FROM (SELECT a.*, {lo64("a.dg") if bucket_digest else "NULL::bigint"} AS gs,
                         {lo64("a.df") if fingerprint_digest else "0::bigint"} AS fp
                  FROM (SELECT u.k AS key, {self.key} IS NULL AS unknown,
                               {"s.k IS NOT NULL" if supp else "FALSE"} AS suppressed,
                               NOT coalesce(({consent}), FALSE) AS no_consent,
                               coalesce(({matchable}), FALSE) AS matchable,
                               {bucket_digest or "NULL::bytea"} AS dg,
                               {fingerprint_digest or "NULL::bytea"} AS df
                        FROM {keys} u LEFT JOIN {self.table} p ON {self.key} = u.k
                        {f"LEFT JOIN {suppressed} s ON s.k = u.k" if supp else ""}
                        OFFSET 0) a OFFSET 0) b"""
        ).rowcount
        run("ANALYZE pg_temp.rk_desired")
        # the recorded members, one row per key (several: in several groups)
        run(
            f"""INSERT INTO pg_temp.rk_members SELECT key, min(grp), min(fp), count(*)
            FROM {recorded} rr GROUP BY key"""
        )
        run("ANALYZE pg_temp.rk_members")
        # recorded members no segment returns: excluded (suppressed, or consent lost on any
        # of their rows — evaluated over the profile row, NULL-extended when it is gone) and
        # how many profile rows have their key
        run(
            f"""INSERT INTO pg_temp.rk_leavers
            SELECT m.key, bool_or({"s.k IS NOT NULL OR " if supp else ""}
                                  NOT coalesce(({consent}), FALSE)), count({self.key})
            FROM (SELECT r.key FROM pg_temp.rk_members r WHERE NOT EXISTS
                  (SELECT 1 FROM pg_temp.rk_desired d WHERE d.key = r.key)) m
            LEFT JOIN {self.table} p ON {self.key} = m.key
            {f"LEFT JOIN {suppressed} s ON s.k = m.key" if supp else ""}
            GROUP BY m.key"""
        )
        run("ANALYZE pg_temp.rk_leavers")
        # held: a key on several profile rows, among the segments' keys or recorded leavers
        # (one row per key when the join returned as many rows as there are keys)
        twice = (
            "SELECT key FROM pg_temp.rk_desired GROUP BY key HAVING count(*) > 1 UNION ALL "
            if key_count is None or inserted != key_count
            else ""
        )
        run(
            f"""INSERT INTO pg_temp.rk_dups
            {twice}SELECT key FROM pg_temp.rk_leavers WHERE rows > 1"""
        )
        run(
            """WITH d AS (DELETE FROM pg_temp.rk_desired d USING pg_temp.rk_dups x
                          WHERE x.k = d.key RETURNING d.*)
            INSERT INTO pg_temp.rk_desired
            SELECT key, TRUE, FALSE, bool_or(suppressed), TRUE, FALSE, min(grp), NULL
            FROM d GROUP BY key"""
        )
        row = run(
            """SELECT count(*) FILTER (WHERE unknown),
                      count(*) FILTER (WHERE held),
                      count(*) FILTER (WHERE NOT unknown AND NOT held AND suppressed),
                      count(*) FILTER (WHERE NOT unknown AND NOT held AND NOT suppressed
                                       AND no_consent),
                      count(*) FILTER (WHERE NOT unknown AND NOT held AND NOT suppressed
                                       AND NOT no_consent),
                      count(*) FILTER (WHERE NOT unknown AND NOT held AND NOT suppressed
                                       AND NOT no_consent AND matchable)
               FROM pg_temp.rk_desired"""
        ).fetchone()
        assert row is not None
        counts = dict(
            zip(
                ("unknown", "held", "suppression", "consent", "eligible", "matchable"),
                map(int, row),
                strict=True,
            )
        )
        run(
            f"""INSERT INTO pg_temp.rk_moving
            SELECT coalesce(d.key, m.key) FROM pg_temp.rk_desired d
            FULL JOIN pg_temp.rk_members m ON m.key = d.key
            LEFT JOIN pg_temp.rk_leavers l ON l.key = m.key
            WHERE NOT coalesce({quiet_sql(mode, gone)}, FALSE)
               OR coalesce(d.key, m.key) IN (SELECT k FROM pg_temp.rk_dups)"""
        )
        run("ANALYZE pg_temp.rk_moving")
        moving = "IN (SELECT k FROM pg_temp.rk_moving)"
        self.copy_out(
            "SELECT key, held, unknown, suppressed, no_consent, matchable, grp, "
            f"{unsigned('fp')} FROM pg_temp.rk_desired WHERE key {moving}",
            f"CREATE OR REPLACE TEMP TABLE {tables['desired']} AS",
            {
                "key": "VARCHAR",
                "held": "BOOLEAN",
                "unknown": "BOOLEAN",
                "suppressed": "BOOLEAN",
                "no_consent": "BOOLEAN",
                "matchable": "BOOLEAN",
                "grp": "VARCHAR",
                "fp": "UBIGINT",
            },
        )
        if recorded_local is None:  # the recorded rows of the moving keys
            self.copy_out(
                f"SELECT key, grp, {unsigned('fp')} FROM {recorded} rr WHERE key {moving}",
                f"CREATE OR REPLACE TEMP TABLE {tables['recorded']} AS",
                {"key": "VARCHAR", "grp": "VARCHAR", "fp": "UBIGINT"},
            )
        else:  # the engine has them: only the moving keys come back
            self.copy_out(
                "SELECT k FROM pg_temp.rk_moving",
                f"CREATE OR REPLACE TEMP TABLE {tables['moving']} AS",
                {"k": "VARCHAR"},
            )
            self.con.execute(
                f"CREATE OR REPLACE TEMP TABLE {tables['recorded']} AS SELECT r.key, r.grp, "
                f"r.fp FROM {recorded_local} r SEMI JOIN {tables['moving']} x ON x.k = r.key"
            )
        if supp:
            self.copy_out(
                f"SELECT k FROM {suppressed} x WHERE k {moving}",
                f"CREATE OR REPLACE TEMP TABLE {tables['suppressed']} AS",
                {"k": "VARCHAR"},
            )
        self.copy_out(
            "SELECT k FROM pg_temp.rk_dups",
            f"CREATE OR REPLACE TEMP TABLE {tables['duplicates']} AS",
            {"k": "VARCHAR"},
        )
        self._ship_profiles("{key} IN (SELECT k FROM pg_temp.rk_moving)")
        held = [r[0] for r in run("SELECT k FROM pg_temp.rk_dups ORDER BY k LIMIT 3").fetchall()]
        n_held = run("SELECT count(*) FROM pg_temp.rk_dups").fetchone()
        return counts, held, int(n_held[0]) if n_held else 0
