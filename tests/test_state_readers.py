"""Readers during an apply, and the backup of the previous state (the embedded backend).

An apply runs in its own process, kept going by the sandbox's ``delay_per_batch`` knob, while
``plan``, ``status``, ``log`` and ``state show`` run and succeed on the state as of the
apply's start; the apply never waits for them. Each apply keeps the state it started from as
``<state>.backup``, which restores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from reconciler.state.snapshot import backup_path, begin_write, writing_apply
from tests.conftest import WS, cli, plan_json, profile
from tests.test_recovery import (
    activation,
    assert_converged,
    desired,
    held,
    reconcile_command,
    runs,
    sandbox_yaml,
    start,
    until_planned,
)

STATE = ".reconcile/state.duckdb"
ENV = os.environ | {"PYTHONUNBUFFERED": "1"}


def state_path(ws: WS) -> Path:
    return ws.root / STATE


def wait_until_writing(ws: WS, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    """Wait (on the lock file, not on a clock) until the apply in ``proc`` writes the state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = writing_apply(state_path(ws))
        if info is not None and info["pid"] == proc.pid:
            return info
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the apply never began writing")


def members(path: Path) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM members").fetchone()[0]
    finally:
        con.close()


@pytest.mark.slow
def test_plan_status_log_and_show_work_while_an_apply_writes(workspace):
    first = [profile(i, a=True) for i in range(4)]
    ws = workspace({"act": activation("Slow")}, profiles=first)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    rows = [profile(i, a=True) for i in range(60)]
    ws.set_profiles(rows)
    ws.write("integrations/sandbox.yaml", sandbox_yaml(batch_size=5, delay_per_batch=1.5))

    proc = start(ws, "apply", "--auto-approve")
    until_planned(proc)
    info = wait_until_writing(ws, proc)
    assert info["snapshot"] == "state.duckdb.backup"

    # --refresh=false: the sandbox destination is itself a DuckDB file the apply holds open
    # for writing (a real destination is an HTTP API any number of processes can read)
    res = cli(ws, "plan", "--refresh=false")
    assert res.exit_code == 0, res.stderr
    assert f"pid {proc.pid}" in res.output and "showing the state as of its start" in res.output
    assert "+56" in res.output  # planned against the state before the apply: 4 recorded
    doc = plan_json(ws, "--refresh=false")
    assert f"pid {proc.pid}" in doc["state_notice"]
    res = cli(ws, "plan", "--refresh=false", "--format", "markdown")
    assert res.exit_code == 0 and "> Note: " in res.output

    res = cli(ws, "status")
    assert res.exit_code == 0, res.stderr
    assert res.output.startswith("Note: `reconcile apply` (pid") and "act" in res.output
    status = cli(ws, "status", "--format", "json").json()
    assert "showing the state as of its start" in status["state_notice"]
    assert [r["status"] for r in status["activations"]] == ["Complete"]
    res = cli(ws, "log", "act")
    assert res.exit_code == 0 and "Note: " in res.output
    assert len(cli(ws, "log", "act", "--format", "json").json()["runs"]) == 1
    res = cli(ws, "state", "show")
    assert res.exit_code == 0 and json.loads(res.output)[0]["audiences"][0]["members"] == 4
    assert "showing the state as of its start" in res.stderr

    assert proc.poll() is None, "the apply should still be running (delay_per_batch)"
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert held(ws) == {"Slow": desired(rows)}
    # afterwards the readers see the new state again, without a notice
    res = cli(ws, "status", "--format", "json")
    assert "state_notice" not in res.json()
    assert [r["added"] for r in runs(ws, "act")] == [56, 4]
    assert_converged(ws)


SAVED_PLAN = "saved.plan"


@pytest.mark.slow
def test_a_plan_saved_from_the_snapshot_is_refused_once_the_apply_moved_the_state(workspace):
    ws = workspace({"act": activation("Slow")}, profiles=[profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    rows = [profile(i, a=True) for i in range(40)]
    ws.set_profiles(rows)
    ws.write("integrations/sandbox.yaml", sandbox_yaml(batch_size=5, delay_per_batch=1.0))
    proc = start(ws, "apply", "--auto-approve")
    wait_until_writing(ws, proc)
    res = cli(ws, "plan", "--refresh=false", "--out", str(ws.root / SAVED_PLAN))
    assert res.exit_code == 0, res.stderr
    assert "showing the state as of its start" in res.output and "+37" in res.output
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    res = cli(ws, "apply", str(ws.root / SAVED_PLAN), "--auto-approve")
    assert res.exit_code == 1
    assert "the saved plan is stale: the state of 'act' moved" in res.output + res.stderr
    assert held(ws) == {"Slow": desired(rows)}
    assert_converged(ws)


READER = """\
import sys, time, duckdb
from pathlib import Path
from reconciler.state.schema import registered_reader
state, release = Path(sys.argv[1]), Path(sys.argv[2])
with registered_reader(state, "reconcile plan"):
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{state}' AS s (READ_ONLY)")
    print("holding", flush=True)
    while not release.exists():
        time.sleep(0.01)
    print(con.execute("SELECT count(*) FROM s.members").fetchone()[0], flush=True)
    con.close()
"""


@pytest.mark.slow
def test_apply_does_not_wait_for_a_reader_holding_the_state_file(workspace, tmp_path: Path):
    rows = [profile(i, a=True) for i in range(3)]
    ws = workspace({"act": activation("Held")}, profiles=rows)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([*rows, profile(5, a=True)])
    release = tmp_path / "release"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(state_path(ws)), str(release)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert reader.stdout.readline().strip() == "holding"
    apply = subprocess.run(
        [*reconcile_command(), "-C", str(ws.root), "apply", "--auto-approve"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert apply.returncode == 0, apply.stdout + apply.stderr
    assert "Waiting for" not in apply.stderr
    release.touch()
    out, _ = reader.communicate(timeout=30)
    assert out.split() == ["3"]  # the reader kept its consistent (old) view
    assert members(state_path(ws)) == 4
    assert held(ws) == {"Held": desired([*rows, profile(5, a=True)])}


def test_each_apply_keeps_the_previous_state_as_a_backup_that_restores(workspace):
    rows = [profile(i, a=True) for i in range(3)]
    ws = workspace({"act": activation("Kept")}, profiles=rows)
    backup = backup_path(state_path(ws))
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert backup.exists() is False  # there was no state before the first apply
    more = [*rows, profile(7, a=True)]
    ws.set_profiles(more)
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert members(backup) == 3 and members(state_path(ws)) == 4
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0
    assert not (state_path(ws).parent / "state.duckdb.next").exists()

    # the state is lost; the documented restore brings back the state before the last apply
    state_path(ws).unlink()
    shutil.copyfile(backup, state_path(ws))
    (state_path(ws).parent / "state.duckdb.wal").unlink(missing_ok=True)
    doc = plan_json(ws)
    (act,) = doc["activations"]
    assert act["change"] == "update" and act["audiences"][0]["add"] == 1
    assert act["audiences"][0]["resource_id"]  # the audience is known: not created again
    assert doc["state_loss"] == []
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert held(ws) == {"Kept": desired(more)}
    assert_converged(ws)


def test_a_state_with_a_write_ahead_log_is_backed_up_whole(tmp_path: Path):
    path = tmp_path / "state.duckdb"
    code = f"""
import duckdb, os
con = duckdb.connect({str(path)!r})
con.execute("SET checkpoint_threshold='1TB'")
con.execute("CREATE TABLE members (key VARCHAR)")
con.execute("CHECKPOINT")
con.execute("INSERT INTO members SELECT 'k' || range FROM range(100)")
os._exit(0)  # killed: the insert is only in the write-ahead log
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    wal = path.with_name("state.duckdb.wal")
    assert wal.exists()
    assert begin_write(path) == backup_path(path)
    assert not wal.exists(), "the log is in the new state file"
    assert members(backup_path(path)) == 100 and members(path) == 100
    assert not path.with_name("state.duckdb.backup.wal").exists()


def test_a_next_file_left_by_a_killed_apply_is_installed(tmp_path: Path):
    path = tmp_path / "state.duckdb"
    for name, n in ((path, 1), (path.with_name("state.duckdb.next"), 2)):
        con = duckdb.connect(str(name))
        con.execute(f"CREATE TABLE members AS SELECT range AS key FROM range({n})")
        con.close()
    begin_write(path)
    assert members(path) == 2 and members(backup_path(path)) == 2
