"""Both state backends pass the one conformance suite (tests/state_conformance.py); plus what
is particular to each: the PostgreSQL lock row and heartbeat, DSN errors, the embedded file."""

from __future__ import annotations

import time

import duckdb
import psycopg
import pytest

from reconciler.errors import StateError
from reconciler.state import versions
from reconciler.state.schema import create_schema
from reconciler.state.writer import StateStore
from tests.state_conformance import (
    StateBackendConformance,
    child,
    failing_steps,
    make_backend,
    wait_for,
)


class TestEmbedded(StateBackendConformance):
    STALE_LOCKS = False

    @pytest.fixture
    def spec(self, tmp_path):
        return {"kind": "embedded", "path": str(tmp_path / "state.duckdb")}

    def _con(self, backend):
        con = duckdb.connect()
        con.execute(f"ATTACH '{backend.path}' AS __reconcile_state")
        return con

    def set_version(self, backend, version, drop_lineage=False):
        con = self._con(backend)
        con.execute(
            "UPDATE __reconcile_state.meta SET v = ? WHERE k = 'schema_version'", [str(version)]
        )
        if drop_lineage:
            con.execute("DELETE FROM __reconcile_state.meta WHERE k = 'lineage'")
        con.close()

    def version(self, backend):
        con = self._con(backend)
        meta = dict(con.execute("SELECT k, v FROM __reconcile_state.meta").fetchall())
        con.close()
        return int(meta["schema_version"]), meta.get("lineage")

    def migrate(self, backend, fail):
        con = self._con(backend)
        try:
            if fail:
                with pytest.raises(duckdb.Error):
                    create_schema(con, steps=failing_steps(versions.EMBEDDED_STEPS))
            else:
                create_schema(con)
        finally:
            con.close()


class TestPostgres(StateBackendConformance):
    STALE_LOCKS = True

    @pytest.fixture
    def spec(self, pg_dsn, tmp_path):
        return {
            "kind": "postgres",
            "dsn": pg_dsn.base,
            "schema": pg_dsn.schema,
            "tmp": str(tmp_path / "tmp"),
            "heartbeat": 0.3,
        }

    def set_version(self, backend, version, drop_lineage=False):
        with psycopg.connect(backend.db.dsn, autocommit=True) as conn:
            s = backend.db.schema
            conn.execute(f"UPDATE {s}.meta SET v = %s WHERE k = 'schema_version'", [str(version)])
            if drop_lineage:
                conn.execute(f"DELETE FROM {s}.meta WHERE k = 'lineage'")

    def version(self, backend):
        with psycopg.connect(backend.db.dsn, autocommit=True) as conn:
            meta = dict(conn.execute(f"SELECT k, v FROM {backend.db.schema}.meta").fetchall())
        return int(meta["schema_version"]), meta.get("lineage")

    def test_a_holder_whose_lock_row_was_broken_records_nothing_more(self, backend, spec, tmp_path):
        """A lock broken from elsewhere (it looked stale: a paused VM, a network partition)
        while its holder still runs: the holder's heartbeat finds the row gone and it refuses
        to write."""
        flag = tmp_path / "held"
        proc = child(spec, "hold-and-write", flag)
        try:
            lock_id = wait_for(flag, proc)
            with psycopg.connect(backend.db.dsn, autocommit=True) as conn:
                conn.execute(f"DELETE FROM {backend.db.schema}.lock WHERE id = %s", [lock_id])
            assert backend.lock().info() is None
            time.sleep(3 * spec["heartbeat"])  # its heartbeat notices
        finally:
            flag.with_suffix(".go").write_text("")
            out, err = proc.communicate(timeout=60)
        assert "refused:" in out and "lock" in out, out + err

    def migrate(self, backend, fail):
        with backend.db.connect() as conn:
            if fail:
                with pytest.raises(StateError):
                    backend.db.ensure_schema(conn, failing_steps(versions.POSTGRES_STEPS))
            else:
                backend.db.ensure_schema(conn)


def test_every_write_of_the_store_reaches_postgresql():
    """A write method the PostgreSQL store does not override would change only the working
    copy: every public StateStore method is either overridden or known to only read."""
    from reconciler.state.postgres.store import READ_ONLY, PostgresStateStore
    from reconciler.state.store import StateReader

    # the writer's own methods and those of the write mixins it is built from (journal,
    # members, jobs): not only vars(StateStore), which misses what the mixins define
    writers = [k for k in StateStore.__mro__ if issubclass(k, StateReader) and k is not StateReader]
    public = {n for k in writers for n in vars(k) if not n.startswith("_")}
    assert {"journal_intents", "record_sent", "record_sent_batches"} <= public
    overridden = {n for n in vars(PostgresStateStore) if not n.startswith("_")}
    assert public - READ_ONLY <= overridden, sorted(public - READ_ONLY - overridden)


def test_wrong_dsn_is_one_clear_error_without_the_password(tmp_path):
    backend = make_backend(
        {
            "kind": "postgres",
            "dsn": "postgresql://someone:s3cret-pw@127.0.0.1:1/nowhere?connect_timeout=3",
            "schema": "reconcile",
            "tmp": str(tmp_path),
        }
    )
    with pytest.raises(StateError) as exc:
        backend.lock().acquire("apply")
    text = str(exc.value)
    assert "s3cret-pw" not in text
    assert "postgresql://someone@127.0.0.1:1/nowhere" in text and "state.dsn" in text


def test_mask_dsn_forms():
    from reconciler.state.postgres.db import mask_dsn

    assert mask_dsn("host=db port=6432 dbname=x user=u password=p") == "postgresql://u@db:6432/x"
    assert mask_dsn("postgresql://u:p@h/d") == "postgresql://u@h/d"
    assert "p@" not in mask_dsn("not a dsn = = p@")


def test_a_calls_members_in_flight_are_pushed_to_postgresql_once(pg_dsn, tmp_path, monkeypatch):
    """An update or removal journals its intent (batch_id "b") and its members in flight
    (batch_id ["b"]) in one transaction: the same rows, pushed once, not once per spelling."""
    from datetime import date

    from reconciler.state.backend import opened
    from reconciler.state.postgres import mirror

    backend = make_backend(
        {"kind": "postgres", "dsn": pg_dsn.base, "schema": pg_dsn.schema, "tmp": str(tmp_path)}
    )
    pushed: list[str] = []
    real = mirror.push
    monkeypatch.setattr(
        mirror,
        "push",
        lambda pg, s, con, c, table, *a: [pushed.append(table), real(pg, s, con, c, table, *a)][1],
    )
    with opened(backend, write=True) as st:
        store = st.store()
        store.ensure_activation("a", destination="x", frequency="daily", date_created=date.today())
        pushed.clear()
        with store.transaction():
            store.journal_intent("b", "r", "a", "all", "remove", 2)
            store.journal_inflight_keys("b", ["k1", "k2"])
        assert sorted(pushed) == ["inflight", "journal"]
        assert st.reader().in_flight("a") == 2
