"""``append_to_profiles: true`` end to end through the CLI: the source's included_in_audience
table follows the activation's members in the same apply, segments can select on it, and the
refusals (read-only source, a loop)."""

from __future__ import annotations

import duckdb
import pytest

from tests.conftest import RECONCILE_YAML, cli, plan_json, profile

WRITABLE = RECONCILE_YAML.replace(
    "  path: data/profiles.duckdb\n", "  path: data/profiles.duckdb\n  writable: true\n"
)

VIP = """\
segments: [seg-a]
destination: sandbox
name: VIP campaign
append_to_profiles: true
"""

WAS_IN_VIP = """\
description: Profiles that were in the VIP campaign
sql: |
  SELECT profile_key FROM included_in_audience WHERE activation_id = 'vip'
"""

SEGMENTS = {
    "seg-a": "sql: SELECT customer_id FROM profiles WHERE seg_a\n",
    "seg-b": "sql: SELECT customer_id FROM profiles WHERE seg_b\n",
    "was-in-vip": WAS_IN_VIP,
}


def rows(ws) -> set[tuple[str, str, str, str]]:
    con = duckdb.connect(str(ws.db), read_only=True)
    try:
        found = con.execute(
            "SELECT profile_key, activation_id, activation_name, grp, since IS NOT NULL "
            "FROM included_in_audience"
        ).fetchall()
    finally:
        con.close()
    assert all(r[4] for r in found)
    return {r[:4] for r in found}


def ok(ws, *args: str) -> str:
    res = cli(ws, *args)
    assert res.exit_code == 0, res.output + res.stderr
    return res.output


def test_included_profiles_carry_the_activation_name_and_leavers_lose_it(workspace):
    ws = workspace(
        {"vip": VIP},
        profiles=[profile(i, a=i < 5) for i in range(8)],
        segments=SEGMENTS,
        reconcile_yaml=WRITABLE,
    )
    assert ok(ws, "validate")
    ok(ws, "apply", "--auto-approve")
    assert rows(ws) == {(f"c{i:05d}", "vip", "VIP campaign", "all") for i in range(5)}
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0

    # 0 and 1 leave under maintain, 6 enters
    ws.set_profiles([profile(i, a=(1 < i < 5) or i == 6) for i in range(8)])
    ok(ws, "apply", "--auto-approve")
    assert rows(ws) == {(f"c{i:05d}", "vip", "VIP campaign", "all") for i in (2, 3, 4, 6)}
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0

    # turned off: its rows go in the same apply
    ws.write("activations/vip.yaml", VIP.replace("append_to_profiles: true\n", ""))
    ok(ws, "apply", "--auto-approve")
    assert rows(ws) == set()


def test_a_segment_selects_the_profiles_of_another_activation(workspace):
    ws = workspace(
        {"vip": VIP},
        profiles=[profile(i, a=i < 5, b=i >= 3) for i in range(8)],
        segments=SEGMENTS,
        reconcile_yaml=WRITABLE,
    )
    ws.write(
        "activations/followup.yaml",
        "segments: [was-in-vip]\ndestination: sandbox\nname: After VIP\n",
    )
    # before the first apply the table exists and is empty: the segment is empty, not an error
    plan = plan_json(ws)
    sizes = {a["id"]: a["segments"][0]["size"] for a in plan["activations"]}
    assert sizes == {"followup": 0, "vip": 5}
    ok(ws, "apply", "--auto-approve")
    plan = plan_json(ws)
    (follow,) = [a for a in plan["activations"] if a["id"] == "followup"]
    assert follow["segments"][0]["size"] == 5
    assert follow["audiences"][0]["add"] == 5
    ok(ws, "apply", "--auto-approve")
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_split_groups_are_written_with_their_group_and_audience_name(workspace):
    ws = workspace(
        {"vip": VIP + "split: control\ncontrol_percent: 50\n"},
        profiles=[profile(i, a=True) for i in range(40)],
        segments=SEGMENTS,
        reconcile_yaml=WRITABLE,
    )
    ok(ws, "apply", "--auto-approve")
    found = rows(ws)
    assert {r[0] for r in found} == {f"c{i:05d}" for i in range(40)}
    groups = {r[3] for r in found}
    assert groups == {"experiment", "control"}
    assert {r[2] for r in found if r[3] == "experiment"} == {"VIP campaign"}


def test_a_killed_write_back_is_planned_and_written_again(workspace):
    ws = workspace(
        {"vip": VIP},
        profiles=[profile(i, a=i < 4) for i in range(6)],
        segments=SEGMENTS,
        reconcile_yaml=WRITABLE,
    )
    ok(ws, "apply", "--auto-approve")
    con = duckdb.connect(str(ws.db))
    try:  # as if the process died after recording the members, before the write-back
        con.execute("DELETE FROM included_in_audience WHERE profile_key = 'c00001'")
        con.execute("INSERT INTO included_in_audience VALUES ('c00005', 'vip', 'x', 'all', now())")
    finally:
        con.close()
    res = cli(ws, "plan", "--detailed-exitcode")
    assert res.exit_code == 2, res.output
    assert "included_in_audience: 1 row(s) to write, 1 to delete" in res.output
    ok(ws, "apply", "--auto-approve")
    assert rows(ws) == {(f"c{i:05d}", "vip", "VIP campaign", "all") for i in range(4)}
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def _fails(ws, *args: str) -> str:
    res = cli(ws, *args)
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.stderr
    return res.stderr


def test_a_segment_reading_its_own_write_back_is_a_loop(workspace):
    loop = "sql: SELECT profile_key FROM included_in_audience\n"
    own = "sql: |\n  SELECT profile_key FROM included_in_audience\n  WHERE activation_id IN ('vip', 'x')\n"
    ws = workspace(
        {"vip": VIP.replace("[seg-a]", "[seg-a, loop]"), "other": VIP.replace("[seg-a]", "[own]")},
        profiles=[profile(1, a=True)],
        segments={**SEGMENTS, "loop": loop, "own": own},
        reconcile_yaml=WRITABLE,
    )
    err = _fails(ws, "validate")
    assert "activations/vip.yaml:1: segments.1: segment 'loop' reads this activation's own " in err
    assert "(a loop)" in err
    assert "activations/other.yaml" not in err  # 'own' names vip and x, not 'other'
    # the same segment used by an activation that does not write back is fine
    ws.write(
        "activations/vip.yaml",
        VIP.replace("[seg-a]", "[seg-a, loop]").replace("append_to_profiles: true\n", ""),
    )
    ws.write("activations/other.yaml", VIP.replace("[seg-a]", "[seg-a]"))
    ok(ws, "validate")


def test_reading_the_write_back_needs_a_writable_source(workspace):
    ws = workspace(
        {"follow": "segments: [was-in-vip]\ndestination: sandbox\n"},
        profiles=[profile(1, a=True)],
        segments=SEGMENTS,
    )
    err = _fails(ws, "validate")
    assert "table 'included_in_audience' is not allowed in segment SQL" in err, err


def test_the_example_workspace_writes_back_and_selects_on_it(tmp_path):
    """The repository's own workspace (smaller demo data): the VIP campaign writes back, the
    example segment selects its profiles, the attribute sync runs, and the re-plan is empty."""
    import shutil
    from pathlib import Path

    from tests.conftest import WS, allow_ephemeral_state

    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "example"
    root.mkdir()
    for folder in ("integrations", "segments", "activations"):
        shutil.copytree(repo / folder, root / folder)
    text = (repo / "reconcile.yaml").read_text()
    (root / "reconcile.yaml").write_text(
        text.replace("demo_profiles: 50000", "demo_profiles: 2000")
    )
    allow_ephemeral_state(root)
    ws = WS(root)
    assert "5 segment(s)" in ok(ws, "validate")
    ok(ws, "apply", "--auto-approve")
    vip = plan_json(ws)
    assert not any(a["change"] != "noop" for a in vip["activations"])
    sent = rows_of(root / ".reconcile/demo.duckdb")
    assert sent and {r[1] for r in sent} == {"vip-ab-test"}
    assert {r[3] for r in sent} == {"A", "B"}
    out = ok(ws, "segments", "was-in-vip-campaign")
    assert out.startswith(f"was-in-vip-campaign: {len(sent)} profiles"), out


def rows_of(db) -> set[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return set(
            con.execute(
                "SELECT profile_key, activation_id, activation_name, grp FROM included_in_audience"
            ).fetchall()
        )
    finally:
        con.close()


def test_an_apply_killed_mid_way_converges_on_the_next_run(workspace):
    """The process dies (SIGKILL-like exit) right after the sandbox applied its third call,
    before the write-back; the next apply finishes the members and writes the rows."""
    import subprocess

    from tests.conftest import SANDBOX_YAML
    from tests.state_workspace import reconcile_command

    ws = workspace(
        {"vip": VIP},
        profiles=[profile(i, a=i < 20) for i in range(25)],
        segments=SEGMENTS,
        reconcile_yaml=WRITABLE,
        integration=SANDBOX_YAML + "  exit_after_calls: 3\n  exit_when: after\n",
    )
    died = subprocess.run(
        [*reconcile_command(), "apply", "--auto-approve"],
        cwd=ws.root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert died.returncode == 137, died.stdout + died.stderr
    assert len(rows(ws)) < 20  # the write-back did not happen
    ws.write("integrations/sandbox.yaml", SANDBOX_YAML)
    ok(ws, "apply", "--auto-approve")
    assert rows(ws) == {(f"c{i:05d}", "vip", "VIP campaign", "all") for i in range(20)}
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


@pytest.mark.parametrize(
    ("where", "loop"),
    [
        ("", True),
        ("WHERE activation_id = 'vip'", True),
        ("WHERE activation_id = 'other'", False),
        ("WHERE 'other' = activation_id", False),
        ("WHERE w.activation_id IN ('a', 'b')", False),
        ("WHERE activation_id IN ('a', 'vip')", True),
        ("WHERE activation_id <> 'other'", True),
        ("WHERE activation_name = 'VIP campaign'", True),
        ("WHERE activation_name = 'Spring sale'", False),
        ("WHERE activation_id IN (SELECT 'other')", True),
        # a restriction that restricts nothing: under OR or NOT, or on one side of a UNION
        ("WHERE activation_id = 'nobody' OR grp = 'all'", True),
        ("WHERE NOT activation_id = 'zzz'", True),
        ("WHERE activation_id = 'other' UNION SELECT profile_key FROM included_in_audience", True),
        ("WHERE grp = 'A' AND (activation_id = 'other')", False),
    ],
)
def test_which_reads_of_the_write_back_are_a_loop(where, loop):
    from reconciler.workspace.goal_rules import reads_own_writeback

    sql = f"SELECT profile_key FROM included_in_audience w {where}"
    assert reads_own_writeback(sql, "vip", "VIP campaign") is loop
    assert not reads_own_writeback("SELECT customer_id FROM profiles", "vip", None)


def test_a_source_locked_by_a_writing_apply_is_named_not_misreported(workspace):
    """An apply that writes back holds the DuckDB source file; a plan meanwhile says so (and
    who holds it) instead of failing to 'create the write-back table'."""
    import subprocess
    import sys

    ws = workspace({"vip": VIP}, profiles=[profile(1, a=True)], reconcile_yaml=WRITABLE)
    assert cli(ws, "plan").exit_code == 0  # the write-back table exists from here on
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ok', flush=True);"
            " time.sleep(60)",
            str(ws.db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        res = cli(ws, "plan")
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert res.exit_code == 1
    assert "is locked by another process" in res.stderr, res.stderr
    assert f"PID {holder.pid}" in res.stderr and "write-back table" not in res.stderr
    assert "Traceback" not in res.stderr


def _since(ws) -> dict[tuple[str, str], object]:
    con = duckdb.connect(str(ws.db), read_only=True)
    try:
        found = con.execute(
            "SELECT profile_key, activation_id, since FROM included_in_audience"
        ).fetchall()
    finally:
        con.close()
    return {(k, a): t for k, a, t in found}


def test_a_renamed_activation_takes_its_write_back_rows_along(workspace):
    """`moved_from:` and `reconcile state mv`: the rows of the old id become the new id's
    (since when each profile is included is kept); none is left behind under the old id,
    where a segment reading it would select stale profiles forever."""
    ws = workspace(
        {"vip": VIP},
        profiles=[profile(i, a=i < 3) for i in range(5)],
        segments=SEGMENTS,
        reconcile_yaml=WRITABLE,
    )
    ok(ws, "apply", "--auto-approve")
    before = _since(ws)
    ws.remove("activations/vip.yaml")
    ws.write("activations/vip-2.yaml", VIP + "moved_from: vip\n")
    ok(ws, "apply", "--auto-approve")
    assert rows(ws) == {(f"c{i:05d}", "vip-2", "VIP campaign", "all") for i in range(3)}
    assert {k: t for (k, _), t in _since(ws).items()} == {k: t for (k, _), t in before.items()}
    # by hand, with the file renamed and the state moved
    ws.remove("activations/vip-2.yaml")
    ws.write("activations/vip-3.yaml", VIP)
    out = ok(ws, "state", "mv", "vip-2", "vip-3")
    assert "3 write-back row(s) too" in out
    assert rows(ws) == {(f"c{i:05d}", "vip-3", "VIP campaign", "all") for i in range(3)}
    assert "members: +0 -0 ~0" in ok(ws, "plan")


def test_a_table_of_that_name_with_other_columns_is_refused_before_anything_is_sent(workspace):
    """A source with its own "included in audience" table: named, nothing sent or written,
    and the table left as it was (it broke every later plan with an engine error)."""
    ws = workspace(
        {"vip": VIP}, profiles=[profile(i, a=True) for i in range(3)], reconcile_yaml=WRITABLE
    )
    ws.alter_profiles(
        "CREATE TABLE included_in_audience (profile_key INTEGER, campaign VARCHAR)",
        "INSERT INTO included_in_audience VALUES (1, 'spring-sale')",
    )
    for command in (["plan"], ["apply", "--auto-approve"]):
        res = cli(ws, *command)
        assert res.exit_code == 1, res.output + res.stderr
        assert "included_in_audience (profile_key INTEGER, campaign VARCHAR)" in res.stderr
        assert "database engine" not in res.stderr
    assert ws.sandbox_keys() == {}
    con = duckdb.connect(str(ws.db), read_only=True)
    assert con.execute("SELECT * FROM included_in_audience").fetchall() == [(1, "spring-sale")]
    con.close()


def test_a_postgresql_source_is_never_written_and_says_so(workspace, monkeypatch):
    """The read-only message sent PostgreSQL users to `source.writable`, an unknown field there."""
    monkeypatch.setenv("PG_SOURCE_DSN", "postgresql://127.0.0.1/test")
    pg = RECONCILE_YAML.replace(
        "  type: duckdb\n  path: data/profiles.duckdb\n",
        "  type: postgres\n  dsn: ${env:PG_SOURCE_DSN}\n",
    )
    assert "type: postgres" in pg
    ws = workspace({"vip": VIP}, profiles=[profile(1, a=True)], reconcile_yaml=pg)
    res = cli(ws, "validate", "--offline")
    assert res.exit_code == 1
    assert "a PostgreSQL source is never written to" in res.output + res.stderr
    assert "set `source.writable" not in res.output + res.stderr
