"""The PostgreSQL state backend end to end, through the CLI against the sandbox destination:
plan/apply, readers during an apply, two applies at once, SIGKILL mid-apply, the server
dropping the connection mid-apply, wrong DSNs, migration from the embedded state, and plans
of another state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psycopg
import pytest

from tests.conftest import EMBEDDED_STATE, RECONCILE_YAML, WS, cli, plan_json, profile
from tests.test_recovery import (
    activation,
    assert_converged,
    audiences,
    desired,
    held,
    reconcile_command,
    sandbox_yaml,
    until_planned,
)

PG_STATE = "state:\n  backend: postgres\n  dsn: ${{env:RECONCILE_STATE_DSN}}\n  schema: {schema}\n"


def pg_yaml(schema: str) -> str:
    text = RECONCILE_YAML.replace(EMBEDDED_STATE, PG_STATE.format(schema=schema))
    assert "backend: postgres" in text
    return text


@pytest.fixture
def pg_ws(workspace, pg_dsn, monkeypatch):
    """make(rows, **workspace kwargs): a workspace whose state is in pg_dsn's schema."""
    monkeypatch.setenv("RECONCILE_STATE_DSN", pg_dsn.base)

    def make(rows, activations=None, **kw) -> WS:
        ws = workspace(
            activations or {"act": activation("A")},
            profiles=rows,
            reconcile_yaml=pg_yaml(pg_dsn.schema),
            **kw,
        )
        ws.schema = pg_dsn.schema  # type: ignore[attr-defined]
        return ws

    return make


def pg_rows(pg_dsn, sql: str) -> list[tuple]:
    with psycopg.connect(pg_dsn.base, autocommit=True) as conn:
        return conn.execute(sql.format(s=pg_dsn.schema)).fetchall()


def recorded_records(pg_dsn) -> set[str]:
    """Every hash the PostgreSQL state says was sent."""
    rows = pg_rows(pg_dsn, "SELECT unnest(record) FROM {s}.members")
    return {r[0] for r in rows}


CRASH_HOOK = """\
import os, signal, sys
import psycopg
from destinations.sandbox import SandboxDestination
method, action = sys.argv[1], sys.argv[2]
real = getattr(SandboxDestination, method)
calls = []
def hooked(self, *args, **kwargs):
    out = real(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == 2:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        # the server drops this process's state connection (an admin, a failover)
        with psycopg.connect(os.environ["RECONCILE_STATE_DSN"], autocommit=True) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE application_name = %s", [f"reconcile {os.getpid()}"])
    return out
setattr(SandboxDestination, method, hooked)
from reconciler.cli.main import main
main(sys.argv[3:], prog_name="reconcile")
"""


def run(ws: WS, *args: str, hook: tuple[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-c", CRASH_HOOK, *hook] if hook else reconcile_command()
    return subprocess.Popen(
        [*cmd, "-C", str(ws.root), "--no-color", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        cwd=ws.root,
    )


# ---------------------------------------------------------------------- the happy path
def test_plan_apply_status_log_on_postgres(pg_ws, pg_dsn):
    rows = [profile(i, a=i % 3 != 0) for i in range(30)]
    ws = pg_ws(rows)
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    # an apply does not take its own lock for another one's (it said so, naming itself)
    assert "is running since" not in res.output + res.stderr, res.output + res.stderr
    assert held(ws) == {"A": desired(rows)}
    assert_converged(ws)
    assert pg_rows(pg_dsn, "SELECT count(*) FROM {s}.members") == [(20,)]
    assert not (ws.root / ".reconcile" / "state.duckdb").exists()  # nothing embedded
    assert "Complete" in cli(ws, "status").output
    assert cli(ws, "log", "act").exit_code == 0
    # members leave and join: the next apply moves only them
    rows[1]["seg_a"], rows[0]["seg_a"] = False, True
    ws.set_profiles(rows)
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"A": desired(rows)}
    assert recorded_records(pg_dsn) == desired(rows)
    assert_converged(ws)


@pytest.mark.parametrize("datestyle", ["SQL, DMY", "German", "Postgres, MDY"])
def test_a_role_or_server_date_style_does_not_break_the_state(pg_ws, monkeypatch, datestyle):
    """A DBA's DateStyle (per database, role or server) changed how the state's times and
    dates were written out: every command then failed reading them back."""
    rows = [profile(i, a=True) for i in range(5)]
    ws = pg_ws(rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    monkeypatch.setenv("PGOPTIONS", f"-c DateStyle={datestyle.replace(' ', '')}")
    for args in (["status"], ["log", "act"]):
        res = cli(ws, *args)
        assert res.exit_code == 0, res.output + res.stderr
    assert_converged(ws)  # plan: no changes
    ws.set_profiles([profile(i, a=True) for i in range(6)])
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"A": desired([profile(i, a=True) for i in range(6)])}


HOLD_LOCK = """
import sys
from reconciler.state.postgres.db import PgDatabase
from reconciler.state.postgres.lock import PostgresLock
lock = PostgresLock(PgDatabase(sys.argv[1], sys.argv[2]))
lock.acquire("apply")
print(lock.lock_id, flush=True)
sys.stdin.read()  # held until the test closes stdin
lock.release()
"""


def test_readers_work_while_an_apply_holds_the_lock(pg_ws, pg_dsn):
    """Another process holds the lock (an apply running elsewhere): readers work and say so;
    a second apply and `state unlock` name its lock."""
    ws = pg_ws([profile(i, a=True) for i in range(5)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, pg_dsn.base, pg_dsn.schema],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    lock_id = holder.stdout.readline().strip()
    assert lock_id, "the lock holder did not start"
    try:
        for args in (("plan",), ("status",), ("log", "act"), ("state", "show")):
            res = cli(ws, *args)
            assert res.exit_code == 0, (args, res.stderr)
        # readers are told that an apply is running and what they see
        status = cli(ws, "status")
        said = " ".join((cli(ws, "plan").output + status.output + status.stderr).split())
        assert said.count("`reconcile apply` (pid") == 2 and "recorded so far" in said, said
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 1 and f"lock {lock_id}" in res.stderr
        res = cli(ws, "state", "unlock")
        assert res.exit_code == 1 and f"reconcile state unlock {lock_id}" in res.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


# ---------------------------------------------------------------------- concurrency
@pytest.mark.slow
def test_two_applies_from_two_processes_exactly_one_proceeds(pg_ws, pg_dsn):
    rows = [profile(i, a=True) for i in range(60)]
    # 12 batches of 0.4 s: the first apply still holds the lock when the second has started,
    # also on a loaded machine
    ws = pg_ws(rows, integration=sandbox_yaml(batch_size=5, delay_per_batch=0.4))
    first = run(ws, "apply", "--auto-approve")
    until_planned(first)  # it holds the lock now
    second = run(ws, "apply", "--auto-approve")
    out2, err2 = second.communicate(timeout=120)
    out1, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, out1 + err1
    assert second.returncode == 1 and "locked by" in err2 and "reconcile apply" in err2
    assert len(audiences(ws)) == 1 and held(ws) == {"A": desired(rows)}
    assert pg_rows(pg_dsn, "SELECT count(*) FROM {s}.runs") == [(1,)]  # one apply's state
    assert recorded_records(pg_dsn) == desired(rows)
    assert_converged(ws)


@pytest.mark.slow
def test_sigkill_mid_apply_converges(pg_ws, pg_dsn):
    rows = [profile(i, a=True) for i in range(40)]
    ws = pg_ws(rows, integration=sandbox_yaml(batch_size=5))
    proc = run(ws, "apply", "--auto-approve", hook=("add", "kill"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, out + err
    sent = held(ws)["A"]
    assert recorded_records(pg_dsn) < sent  # the second batch was sent, not recorded
    # the dead holder's lock row stays; its heartbeat stops, it is broken by its id
    (lock_id,) = [r[0] for r in pg_rows(pg_dsn, "SELECT id FROM {s}.lock")]
    res = cli(ws, "state", "unlock", lock_id)
    assert res.exit_code == 0, res.stderr
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(audiences(ws)) == 1 and held(ws) == {"A": desired(rows)}
    assert recorded_records(pg_dsn) == desired(rows)
    assert pg_rows(pg_dsn, "SELECT count(*) FROM {s}.journal WHERE status = 'intent'") == [(0,)]
    assert_converged(ws)


def test_a_killed_calls_members_who_left_are_removed_on_postgres(pg_ws, pg_dsn):
    """Killed after the destination took a call, before PostgreSQL recorded it; then most
    profiles leave the segment. The call's members were kept in flight in PostgreSQL with
    its intent: the next apply records them as possibly sent and removes those who left."""
    rows = [profile(i, a=True) for i in range(40)]
    ws = pg_ws(rows, integration=sandbox_yaml(batch_size=5))
    proc = run(ws, "apply", "--auto-approve", hook=("add", "kill"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, out + err
    assert pg_rows(pg_dsn, "SELECT count(*) > 0 FROM {s}.inflight") == [(True,)]
    (lock_id,) = [r[0] for r in pg_rows(pg_dsn, "SELECT id FROM {s}.lock")]
    assert cli(ws, "state", "unlock", lock_id).exit_code == 0
    rows = [profile(i, a=i % 10 == 0) for i in range(40)]
    ws.set_profiles(rows)
    res = cli(ws, "apply", "--auto-approve", "--allow-mass-removal")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"A": desired(rows)}
    assert recorded_records(pg_dsn) == desired(rows)
    assert pg_rows(pg_dsn, "SELECT count(*) FROM {s}.inflight") == [(0,)]
    assert_converged(ws)


@pytest.mark.slow
def test_server_drops_the_connection_mid_apply(pg_ws, pg_dsn):
    rows = [profile(i, a=True) for i in range(40)]
    ws = pg_ws(rows, integration=sandbox_yaml(batch_size=5))
    proc = run(ws, "apply", "--auto-approve", hook=("add", "terminate"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "PostgreSQL state" in err and "Traceback" not in err
    # nothing recorded that was not sent; the lock was released on the way out
    assert recorded_records(pg_dsn) <= held(ws)["A"]
    assert pg_rows(pg_dsn, "SELECT count(*) FROM {s}.lock") == [(0,)]
    res = cli(ws, "apply", "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert len(audiences(ws)) == 1 and held(ws) == {"A": desired(rows)}
    assert recorded_records(pg_dsn) == desired(rows)
    assert_converged(ws)


# ---------------------------------------------------------------------- bad input
def test_wrong_or_missing_dsn_is_a_clear_error(pg_ws, monkeypatch):
    ws = pg_ws([profile(1, a=True)])
    monkeypatch.setenv("RECONCILE_STATE_DSN", "postgresql://u:hunter2@127.0.0.1:1/x")
    for args in (("plan",), ("apply", "--auto-approve"), ("status",)):
        res = cli(ws, *args)
        assert res.exit_code == 1, args
        assert (
            "cannot connect to the PostgreSQL state at postgresql://u@127.0.0.1:1/x" in res.stderr
        )
        assert "hunter2" not in res.stderr + res.output and "Traceback" not in res.stderr
    monkeypatch.delenv("RECONCILE_STATE_DSN")
    res = cli(ws, "plan")
    assert res.exit_code == 1 and "reconcile.yaml" in res.stderr
    assert "RECONCILE_STATE_DSN" in res.stderr and "not set" in res.stderr


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:My%Pass99@127.0.0.1:5432/test",  # a bare % in the password
        "postgresql://postgres:My%Pass99@[::1:5432/test",  # and an unclosed IPv6 host
    ],
)
def test_an_unparsable_dsn_never_shows_its_password(pg_ws, monkeypatch, dsn):
    """libpq's parse error quotes the DSN: none of it may reach the output or the log."""
    ws = pg_ws([profile(1, a=True)])
    monkeypatch.setenv("RECONCILE_STATE_DSN", dsn)
    for args in (("plan",), ("status",), ("--log-format", "json", "plan")):
        res = cli(ws, *args)
        assert res.exit_code == 1, args
        assert "Pass99" not in res.stderr + res.output, res.stderr
        assert "not a valid connection string" in res.stderr and "%25" in res.stderr


def test_a_literal_dsn_in_reconcile_yaml_is_refused_without_echoing_it(pg_ws):
    ws = pg_ws([profile(1, a=True)])
    text = (ws.root / "reconcile.yaml").read_text()
    ws.write("reconcile.yaml", text.replace("${env:RECONCILE_STATE_DSN}", "postgresql://u:pw9@h/d"))
    res = cli(ws, "validate")
    assert res.exit_code == 1 and "reconcile.yaml:" in res.stderr and "dsn" in res.stderr
    assert "pw9" not in res.stderr + res.output


# ---------------------------------------------------------------------- plans and migration
def test_a_plan_of_another_state_is_refused(pg_ws, pg_dsn, tmp_path):
    rows = [profile(i, a=True) for i in range(6)]
    ws = pg_ws(rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    rows.append(profile(99, a=True))
    ws.set_profiles(rows)
    plan = str(tmp_path / "plan.zip")
    assert cli(ws, "plan", "--out", plan).exit_code == 0
    # the same workspace pointed at another (new) state: that plan is not for it
    other = pg_dsn.schema + "_other"
    ws.write("reconcile.yaml", pg_yaml(other))
    try:
        # makes it (its audience is at the destination already: the state-loss guard asks)
        res = cli(ws, "apply", "--auto-approve", "-t", "act", "--allow-duplicate-audiences")
        assert res.exit_code == 0, res.stderr
        res = cli(ws, "apply", plan, "--auto-approve")
        assert res.exit_code == 1 and "made against another state" in res.stderr
    finally:
        with psycopg.connect(pg_dsn.base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {other} CASCADE")
    ws.write("reconcile.yaml", pg_yaml(pg_dsn.schema))
    res = cli(ws, "apply", plan, "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr


def test_migrate_from_embedded_then_apply_on_postgres(workspace, pg_dsn, monkeypatch, tmp_path):
    rows = [profile(i, a=True) for i in range(12)]
    ws = workspace({"act": activation("A")}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    plan = str(tmp_path / "plan.zip")
    rows.append(profile(50, a=True))
    ws.set_profiles(rows)
    assert cli(ws, "plan", "--out", plan).exit_code == 0
    monkeypatch.setenv("RECONCILE_STATE_DSN", pg_dsn.base)
    res = cli(ws, "state", "migrate", "--to", "postgres", "--schema", pg_dsn.schema)
    assert res.exit_code == 0, res.output + res.stderr
    assert "both agree" in res.output and "members" in res.output
    # the embedded file is renamed aside: a checkout still configured for it is refused
    # (it planned and applied against a copy PostgreSQL had moved on from, exporting twice)
    assert (ws.root / ".reconcile" / "state.duckdb.migrated").exists()
    for args in (("state", "migrate", "--to", "postgres", "--schema", pg_dsn.schema), ("plan",)):
        res = cli(ws, *args)
        assert res.exit_code == 1 and "was moved to PostgreSQL by" in res.stderr, res.stderr
    ws.write("reconcile.yaml", pg_yaml(pg_dsn.schema))
    # the lineage moved with the state: the plan saved before the move still applies
    res = cli(ws, "apply", plan, "--auto-approve")
    assert res.exit_code == 0, res.output + res.stderr
    assert held(ws) == {"A": desired(rows)}
    assert_converged(ws)


MIGRATE_KILLED = """\
import os, signal, sys
from reconciler.state.postgres import mirror
real, seen = mirror.copy_rows, []
def copy_rows(*args, **kwargs):
    seen.append(1)
    if len(seen) == 4:  # meta, activations, audiences copied; members next
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
mirror.copy_rows = copy_rows
from reconciler.cli.main import main
main(sys.argv[1:], prog_name="reconcile")
"""


@pytest.mark.slow
def test_an_interrupted_migration_leaves_the_target_empty_and_runs_again(
    workspace, pg_dsn, monkeypatch
):
    rows = [profile(i, a=True) for i in range(8)]
    ws = workspace({"act": activation("A")}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    monkeypatch.setenv("RECONCILE_STATE_DSN", pg_dsn.base)
    args = ["-C", str(ws.root), "state", "migrate", "--to", "postgres", "--schema", pg_dsn.schema]
    proc = subprocess.run(
        [sys.executable, "-c", MIGRATE_KILLED, *args],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    for table in ("activations", "audiences", "members", "runs"):
        assert pg_rows(pg_dsn, f"SELECT count(*) FROM {{s}}.{table}") == [(0,)], table
    res = cli(ws, "state", "migrate", "--to", "postgres", "--schema", pg_dsn.schema)
    assert res.exit_code == 0, res.output + res.stderr
    assert pg_rows(pg_dsn, "SELECT count(*) FROM {s}.members") == [(8,)]


def test_attribute_hashes_of_sync_attributes_are_kept_in_postgres(pg_ws, pg_dsn):
    """The per-attribute hashes live in the PostgreSQL state too: after a change of one
    field, the plan counts that field only (without them it counts every mapped field)."""
    from tests.test_sync_attributes import SYNC, attribute_counts

    rows = [profile(i, a=i < 6) for i in range(10)]
    ws = pg_ws(rows, activations={"attrs": SYNC})
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    stored = pg_rows(pg_dsn, "SELECT count(*), count(afp) FROM {s}.member_attributes")
    assert stored == [(6, 6)]
    rows[1] = profile(1, a=True, name="Changed")
    rows[3] = profile(3, a=True) | {"country": "NZ"}
    ws.set_profiles(rows)
    plan = plan_json(ws)
    assert attribute_counts(plan, "attrs") == {"FIRST_NAME": 1, "COUNTRY": 1}
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
    # a renamed activation keeps them
    ws.remove("activations/attrs.yaml")
    ws.write("activations/renamed.yaml", SYNC + "moved_from: attrs\n")
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert pg_rows(pg_dsn, "SELECT DISTINCT activation_id FROM {s}.member_attributes") == [
        ("renamed",)
    ]


@pytest.mark.parametrize("host", ["this", "another-machine"])
def test_a_lock_left_by_a_process_that_exited_here_is_taken_over(pg_ws, pg_dsn, host):
    """An apply that lost its connection could not delete its lock row: once stale, a lock
    of a process of this machine that no longer runs is taken over; one of another machine
    still needs `state unlock` (its process cannot be checked from here)."""
    import socket

    ws = pg_ws([profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that ran here and is gone
    with psycopg.connect(pg_dsn.base, autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {pg_dsn.schema}.lock VALUES ('state', 'deadbeef0001', 'ci', %s, %s, "
            "'reconcile apply', now() - interval '1 hour', now() - interval '1 hour', 10)",
            [socket.gethostname() if host == "this" else host, gone.pid],
        )
    res = cli(ws, "apply", "--auto-approve")
    if host == "this":
        assert res.exit_code == 0, res.stderr
    else:
        assert res.exit_code == 1 and "reconcile state unlock deadbeef0001" in res.stderr
        # stale (no heartbeat for an hour): `state unlock` breaks it, and apply proceeds
        assert cli(ws, "state", "unlock", "deadbeef0001").exit_code == 0
        assert cli(ws, "apply", "--auto-approve").exit_code == 0


def test_a_role_that_may_only_read_gets_a_privilege_hint(pg_ws, pg_dsn, monkeypatch):
    """A read-only role plans; its apply fails on a privilege, and says so (the hint said to
    retry once the server is reachable: it was)."""
    import uuid

    from psycopg import sql

    ws = pg_ws([profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    role = f"ro_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn.base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                sql.Identifier(pg_dsn.schema), sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                sql.Identifier(pg_dsn.schema), sql.Identifier(role)
            )
        )
    try:
        monkeypatch.setenv("RECONCILE_STATE_DSN", f"{pg_dsn.base} user={role}")
        ws.set_profiles([profile(i, a=True) for i in range(4)])
        assert cli(ws, "plan").exit_code == 0
        res = cli(ws, "apply", "--auto-approve")
        assert res.exit_code == 1, res.output + res.stderr
        assert "grant the state's role the privileges it lacks" in res.stderr, res.stderr
        assert "once the server is reachable" not in res.stderr
    finally:
        with psycopg.connect(pg_dsn.base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
