"""`reconcile state show|mv|rm|unlock`."""

from __future__ import annotations

import json

import pytest

from reconciler.state.lock import StateLock
from tests.conftest import cli, plan_json, profile

ACT = "segments: [seg-a]\ndestination: sandbox\nname: A\n"


def test_state_show_mv_rm(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (shown,) = json.loads(cli(ws, "state", "show").output)
    assert shown["id"] == "act" and shown["serial"] == 2  # bumped as the apply starts and ends
    assert shown["audiences"][0]["members"] == 3 and shown["audiences"][0]["name"] == "A"

    res = cli(ws, "state", "mv", "act", "renamed")
    assert res.exit_code == 0
    ws.remove("activations/act.yaml")
    ws.write("activations/renamed.yaml", ACT)
    plan = plan_json(ws)
    assert [(a["id"], a["change"]) for a in plan["activations"]] == [("renamed", "noop")]

    assert cli(ws, "state", "mv", "nope", "x").exit_code == 1
    assert cli(ws, "state", "rm", "renamed").exit_code == 0
    assert json.loads(cli(ws, "state", "show").output) == []
    # the destination was not touched: the audience is still there
    assert len(ws.sandbox_keys()["A"]) == 3


@pytest.mark.parametrize("new", ["Bad Id", "evil\x1b[2J", "x\n", "_x", "a/b", "../x", ""])
def test_state_mv_refuses_an_id_no_file_could_have(workspace, new):
    """The new id gets the rule of activation file stems: no later plan can show it deleted
    under a name no file could have."""
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    res = cli(ws, "state", "mv", "act", new)
    assert res.exit_code == 1
    assert res.stderr.startswith(f"Error: {new!r} is not a valid activation id")
    assert "\x1b" not in res.stderr and res.stderr.count("\n") == 1
    assert [a["id"] for a in json.loads(cli(ws, "state", "show").output)] == ["act"]
    assert cli(ws, "state", "mv", "act", "new-id_2").exit_code == 0


def test_state_unlock_refuses_a_live_holder(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(1, a=True)])
    lock = StateLock(ws.root / ".reconcile" / "state.lock")
    lock.acquire("apply")
    try:
        info = lock.info()
        assert info is not None and info.id
        res = cli(ws, "state", "unlock")  # without an id: who holds it, and its id
        assert res.exit_code == 1 and info.id in res.stderr and "apply" in res.stderr
        res = cli(ws, "state", "unlock", info.id)
        assert res.exit_code == 1 and "live process" in res.stderr
        res = cli(ws, "state", "unlock", "not-the-id")
        assert res.exit_code == 1 and "no lock 'not-the-id'" in res.stderr
        res = cli(ws, "state", "rm", "act")
        assert res.exit_code == 1 and "locked by" in res.stderr
    finally:
        lock.release()
    res = cli(ws, "state", "unlock")
    assert res.exit_code == 0 and "not locked" in res.output


def _plan_saved_then_state_moved_away(workspace, tmp_path):
    """A workspace whose plan was saved against its state, then the state file moved away."""
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=True) for i in range(4)])
    plan = str(tmp_path / "next.plan")
    assert cli(ws, "plan", "--out", plan).exit_code == 0
    state = ws.root / ".reconcile" / "state.duckdb"
    state.rename(state.with_suffix(".old"))
    return ws, plan


def test_a_plan_made_against_another_state_is_refused(workspace, tmp_path):
    # the state is replaced by another one (lost, recreated): a new lineage
    ws, plan = _plan_saved_then_state_moved_away(workspace, tmp_path)
    # the audience is still at the destination: confirm a second one (state loss guard)
    assert cli(ws, "apply", "--auto-approve", "--allow-duplicate-audiences").exit_code == 0
    res = cli(ws, "apply", plan, "--auto-approve")
    assert res.exit_code == 1 and "made against another state" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_plan_made_against_a_state_is_refused_where_there_is_none(workspace, tmp_path):
    """The plan file of a workspace with a state, applied where there is no state (another
    workspace, or the state was deleted): refused, nothing sent."""
    ws, plan = _plan_saved_then_state_moved_away(workspace, tmp_path)
    before = ws.sandbox_keys()
    res = cli(ws, "apply", plan, "--auto-approve")
    assert res.exit_code == 1, res.output + res.stderr
    assert "was made against a state" in res.stderr and "has none" in res.stderr, res.stderr
    assert ws.sandbox_keys() == before


def test_state_show_lists_a_control_group_too(workspace):
    """A control group is recorded, never sent: `state show` lists it with its members."""
    act = (
        "segments: [seg-a]\ndestination: sandbox\nname: Test\nsplit: control\ncontrol_percent: 50\n"
    )
    ws = workspace({"act": act}, profiles=[profile(i, a=True) for i in range(40)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (shown,) = json.loads(cli(ws, "state", "show", "act").output)
    groups = {a["group"]: a for a in shown["audiences"]}
    assert set(groups) == {"experiment", "control"}
    assert groups["control"]["sent"] is False and groups["control"]["members"] > 0
    assert groups["experiment"]["members"] + groups["control"]["members"] == 40


def _backup_bytes(ws) -> bytes:
    return (ws.root / ".reconcile" / "state.duckdb.backup").read_bytes()


def test_a_refused_state_command_keeps_the_backup(workspace):
    """Every write starts by making the current state the backup: a command it then refused
    (a typo'd id, an id taken, an audience recorded already) replaced the backup of the last
    apply for nothing. And on a damaged state the damaged file became the backup — the one
    copy the error message tells the user to restore."""
    ws = workspace(
        {"act": ACT, "other": ACT.replace("name: A", "name: B")},
        profiles=[profile(i, a=True) for i in range(3)],
    )
    for _ in range(2):  # the second apply leaves a backup: the state after the first
        assert cli(ws, "apply", "--auto-approve").exit_code == 0
        ws.set_profiles([profile(i, a=True) for i in range(4)])
    good = _backup_bytes(ws)
    for args in (
        ["state", "rm", "nope"],
        ["state", "mv", "nope", "x"],
        ["state", "mv", "act", "other"],
        ["import", "act"],  # the state records its audience already
        ["import", "nope"],
    ):
        res = cli(ws, *args)
        assert res.exit_code == 1, (args, res.output)
        assert _backup_bytes(ws) == good, args
    state = ws.root / ".reconcile" / "state.duckdb"
    state.write_bytes(state.read_bytes()[:5000])  # damaged
    for args in (["import", "act"], ["state", "rm", "act"], ["state", "mv", "act", "y"]):
        res = cli(ws, *args)
        assert res.exit_code == 1 and "restore" in res.stderr, (args, res.stderr)
        assert _backup_bytes(ws) == good, args
    state.write_bytes(good)  # the documented way back
    assert cli(ws, "status").exit_code == 0


def _damage_members_block(ws) -> None:
    import duckdb

    state = ws.root / ".reconcile" / "state.duckdb"
    con = duckdb.connect(str(state), read_only=True)
    blocks = sorted(
        {
            b
            for (b,) in con.execute(
                "SELECT block_id FROM pragma_storage_info('members') WHERE block_id >= 0"
            ).fetchall()
        }
    )
    con.close()
    assert blocks, "the members are stored in blocks"
    data = bytearray(state.read_bytes())
    at = 3 * 4096 + blocks[0] * 262144 + 64  # inside the block, past its checksum
    data[at : at + 256] = bytes(256)
    state.write_bytes(bytes(data))


def test_a_damaged_state_is_named_not_the_consent_condition(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(200)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    ws.set_profiles([profile(i, a=True) for i in range(150)])
    _damage_members_block(ws)
    res = cli(ws, "plan")
    assert res.exit_code == 1
    assert "consent" not in res.stderr, res.stderr
    assert "the state is damaged" in res.stderr or "restore its backup" in res.stderr, res.stderr


def test_a_damaged_data_block_keeps_the_backup(workspace):
    """A state whose catalog opens but one of whose data blocks is damaged (bit rot, a bad
    copy): opening it read only the catalog, so `state rm` made it the backup, then failed or
    even succeeded; the good backup was gone."""
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(200)])
    for n in (150, 200):  # the second apply leaves a backup
        ws.set_profiles([profile(i, a=True) for i in range(n)])
        assert cli(ws, "apply", "--auto-approve").exit_code == 0
    good = _backup_bytes(ws)
    _damage_members_block(ws)
    for args in (["state", "rm", "act"], ["state", "mv", "act", "y"], ["import", "act"]):
        res = cli(ws, *args)
        assert res.exit_code == 1, (args, res.output)
        assert "damaged" in res.stderr or "restore" in res.stderr, (args, res.stderr)
        assert _backup_bytes(ws) == good, args


def test_import_refuses_an_audience_another_activation_manages(workspace):
    ws = workspace(
        {"act": ACT, "other": ACT.replace("name: A", "name: B")},
        profiles=[profile(i, a=True) for i in range(3)],
    )
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    (taken,) = json.loads(cli(ws, "state", "show", "act").output)
    audience_id = taken["audiences"][0]["resource_id"]
    assert cli(ws, "state", "rm", "other").exit_code == 0
    res = cli(ws, "import", "other", audience_id)
    assert res.exit_code == 1
    assert "is recorded for 'act'" in res.stderr, res.stderr
    assert "other" not in [a["id"] for a in json.loads(cli(ws, "state", "show").output)]


def test_state_restore_puts_the_backup_back_and_resends_what_it_cannot_know(workspace):
    """The backup does not know what the last apply removed: restored by hand (`cp`), those
    members were recorded as present, and when they came back the plan said No changes
    while the destination lacked them. `state restore` has the next apply send every
    recorded member once more."""
    from tests.test_recovery import desired, held

    everyone = [profile(i, a=True) for i in range(6)]
    ws = workspace({"act": ACT}, profiles=everyone)
    assert cli(ws, "state", "restore").exit_code == 1  # no backup yet
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    fewer = [dict(p, seg_a=i < 3) for i, p in enumerate(everyone)]
    ws.set_profiles(fewer)
    assert cli(ws, "apply", "--auto-approve", "--allow-mass-removal").exit_code == 0
    res = cli(ws, "state", "restore")
    assert res.exit_code == 0, res.output + res.stderr
    assert "kept as state.duckdb.before-restore" in res.output
    assert (ws.root / ".reconcile" / "state.duckdb.before-restore").exists()
    ws.set_profiles(everyone)  # the change is reverted: those removed come back
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    assert held(ws) == {"A": desired(everyone)}
    assert "No changes" in cli(ws, "plan").output


def test_state_restore_refuses_a_damaged_backup_and_changes_nothing(workspace):
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(200)])
    for n in (150, 200):  # the second apply leaves a backup
        ws.set_profiles([profile(i, a=True) for i in range(n)])
        assert cli(ws, "apply", "--auto-approve").exit_code == 0
    folder = ws.root / ".reconcile"
    (folder / "state.duckdb").rename(folder / "good.duckdb")
    (folder / "state.duckdb.backup").rename(folder / "state.duckdb")
    _damage_members_block(ws)  # now the would-be backup is damaged
    (folder / "state.duckdb").rename(folder / "state.duckdb.backup")
    (folder / "good.duckdb").rename(folder / "state.duckdb")
    state = (folder / "state.duckdb").read_bytes()
    res = cli(ws, "state", "restore")
    assert res.exit_code == 1
    assert "the backup state.duckdb.backup cannot be read either" in res.stderr, res.stderr
    assert "puts it back" not in res.stderr
    assert (folder / "state.duckdb").read_bytes() == state
    assert not (folder / "state.duckdb.before-restore").exists()


def test_a_state_missing_a_column_is_named_not_the_consent_condition(workspace):
    import duckdb

    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(3)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    con = duckdb.connect(str(ws.root / ".reconcile" / "state.duckdb"))
    con.execute("ALTER TABLE members DROP COLUMN fp")
    con.close()
    res = cli(ws, "plan")
    assert res.exit_code == 1 and "consent" not in res.stderr, res.stderr
    assert "lacks the column(s) 'fp' of its table 'members'" in res.stderr, res.stderr


def test_a_state_file_reached_through_a_link_is_written_through_it(workspace, tmp_path):
    """A CI volume keeps the file and the workspace links to it: the first write renamed its
    new copy over the *link*, so the kept file never changed again and the next runner,
    linking it anew, planned everything already sent."""
    ws = workspace({"act": ACT}, profiles=[profile(i, a=i < 2) for i in range(4)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    kept = tmp_path / "volume" / "state.duckdb"
    kept.parent.mkdir()
    link = ws.root / ".reconcile" / "state.duckdb"
    link.rename(kept)
    link.symlink_to(kept)
    ws.set_profiles([profile(i, a=i < 3) for i in range(4)])
    applied = cli(ws, "apply", "--auto-approve")
    assert applied.exit_code == 0, applied.output + applied.stderr
    assert link.is_symlink() and link.resolve() == kept
    assert (tmp_path / "volume" / "state.duckdb.backup").exists()
    link.unlink()
    link.symlink_to(kept)  # the next runner links the kept file again: nothing to send
    assert cli(ws, "plan", "--detailed-exitcode").exit_code == 0


def test_a_state_folder_that_refuses_writes_is_a_clear_error(workspace, monkeypatch):
    """A full disk (or a read-only folder) was "internal error: OSError ... please report
    it", and left a partial copy filling the disk."""
    import errno

    from reconciler.state import snapshot

    ws = workspace({"act": ACT}, profiles=[profile(i, a=i < 2) for i in range(4)])
    assert cli(ws, "apply", "--auto-approve").exit_code == 0
    before = (ws.root / ".reconcile" / "state.duckdb").read_bytes()

    def full(src, dst):
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(snapshot, "_copy", full)
    res = cli(ws, "state", "rm", "act")
    assert res.exit_code == 1
    assert "internal error" not in res.stderr
    assert "cannot write the state" in res.stderr and "No space left on device" in res.stderr
    assert not list((ws.root / ".reconcile").glob("*.tmp"))
    assert (ws.root / ".reconcile" / "state.duckdb").read_bytes() == before


def test_restoring_twice_keeps_the_state_the_first_restore_put_aside(workspace):
    """The second restore replaced `before-restore` (the newest state there was) with a copy
    of the backup: state, backup and before-restore were then the same file."""
    ws = workspace({"act": ACT}, profiles=[profile(i, a=True) for i in range(6)])
    folder = ws.root / ".reconcile"
    for n in (2, 4):
        ws.set_profiles([profile(i, a=i < n) for i in range(6)])
        assert cli(ws, "apply", "--auto-approve", "--allow-mass-removal").exit_code == 0
    newest = (folder / "state.duckdb").read_bytes()
    assert cli(ws, "state", "restore").exit_code == 0
    assert (folder / "state.duckdb.before-restore").read_bytes() == newest
    assert cli(ws, "state", "restore").exit_code == 0
    kept = [p.read_bytes() for p in folder.glob("state.duckdb.before-restore*")]
    assert len(kept) == 2 and newest in kept
